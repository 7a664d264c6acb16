"""Give the XLA compiler's working memory back to the OS once a long compile ends.

Compiling a big net's step (CaffeNet: about 20 s) uses a few hundred MB of heap that
the compiler frees when it is done. glibc's malloc keeps freed heap pages mapped, so
that memory stayed resident for the life of the process, under the step's own buffers:
measured on CaffeNet (batch 32), RSS between training steps 1650-1750 MB, and 1100 MB
after a ``malloc_trim``. jcaffe listens for jax's "backend compile finished" event
(it comes before the compiled program first runs) and, after a compile of at least
``MIN_COMPILE_S``, calls ``malloc_trim(0)``: it costs milliseconds, next to seconds of
compiling. Elsewhere than glibc it does nothing. ``JCAFFE_MALLOC_TRIM=0`` turns it off.
"""
import ctypes
import os
import sys

from jax import monitoring

MIN_COMPILE_S = 0.5
_EVENT = "/jax/core/compile/backend_compile_duration"
_state = {"trim": None, "installed": False}


def _malloc_trim():
    """glibc's malloc_trim, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def _after_compile(event, duration, **kwargs):
    if event == _EVENT and duration >= MIN_COMPILE_S and _state["trim"] is not None:
        _state["trim"](0)


def install():
    """Register the listener (once per process)."""
    if _state["installed"] or os.environ.get("JCAFFE_MALLOC_TRIM", "1") == "0":
        return
    _state["trim"] = _malloc_trim()
    if _state["trim"] is not None:
        monitoring.register_event_duration_secs_listener(_after_compile)
    _state["installed"] = True
