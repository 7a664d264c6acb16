"""The persistent compilation cache: XLA executables kept on disk between runs.

Caffe has no compile step; jcaffe compiles each net's fused step once per process
(GoogLeNet's training step, batch 32: about 27 s of XLA compile on a 2-core CPU, of a
first call of 35-40 s). JAX's persistent compilation cache stores the compiled
executables on disk, keyed on the lowered program, the compile options, the XLA flags,
the backend and jaxlib's version, so the next run of the same net (same shapes) loads
them instead of compiling again. Tracing and lowering still run (GoogLeNet: about 3 s).
Measured (benchmarks/bench_compile_cache.py, fresh processes, 2-core CPU), the first
training step: LeNet 2.2 -> 0.35 s, CaffeNet 10.0 -> 2.7 s, GoogLeNet 35.5 -> 9.4 s; a
loaded step runs as fast as a compiled one (LeNet, interleaved A/B: 1.003).

* The ``jcaffe`` command line turns it on by default, in ``$JCAFFE_COMPILATION_CACHE``
  or else ``$XDG_CACHE_HOME/jcaffe/xla`` (``~/.cache/jcaffe/xla``), capped at
  ``DEFAULT_MAX_BYTES`` (least recently used entries go first). ``-compilation_cache
  off`` or ``JCAFFE_COMPILATION_CACHE=off`` turns it off; a cache set up through JAX's
  own ``JAX_COMPILATION_CACHE_DIR`` is used as it is.
* ``import jcaffe`` leaves JAX's settings alone unless ``JCAFFE_COMPILATION_CACHE``
  names a directory; ``caffe.set_compilation_cache(path)`` turns it on from Python.
* Only programs whose compile took at least ``MIN_COMPILE_S`` (0.1 s) are written: the
  smallest programs (a random key's fold-in, 0.05 s) are not worth a file. JAX's own
  threshold (``jax_persistent_cache_min_compile_time_secs``) is 1 s, which left out the
  programs of small nets: the README's digits LeNet compiles its step in 0.7 s and its
  two forwards (test net, deploy) in 0.3-0.4 s each, so a 200-iteration ``jcaffe train``
  spent 1.5 s of its 2.5 s compiling, run after run; with them cached, 1.1 s. Setting
  ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` (or the JAX option) keeps yours.

The cache is trusted code: as JAX warns, whoever can write to its directory can make
the process run what they put there. The default directory is created private (0700).
"""
import logging
import os

import jax

log = logging.getLogger("jcaffe")

ENV = "JCAFFE_COMPILATION_CACHE"
OFF = ("off", "0", "false", "no", "none")
DEFAULT_MAX_BYTES = 4 << 30
MIN_COMPILE_S = 0.1             # write programs that took at least this long to compile
_JAX_MIN_COMPILE_S = 1.0        # JAX's own default for it
_THRESHOLD_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"

_stats = {"hits": 0, "writes": 0, "saved_s": 0.0}
_listening = False


def default_dir():
    """``$XDG_CACHE_HOME/jcaffe/xla``, or ``~/.cache/jcaffe/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jcaffe", "xla")


def compilation_cache_dir():
    """The directory JAX's persistent cache uses now (None: no persistent cache)."""
    return jax.config.jax_compilation_cache_dir or None


def set_compilation_cache(path="default", max_bytes=DEFAULT_MAX_BYTES):
    """Keep compiled programs in ``path`` across runs (``"default"``: ``default_dir()``);
    ``None`` or ``"off"`` stops using a persistent cache. ``max_bytes`` caps the
    directory (least recently used entries are evicted; -1: no cap). Takes effect for
    the next compile, also after earlier ones. Returns the directory, or None."""
    from jax.experimental.compilation_cache import compilation_cache as cc
    if path is not None and str(path).strip().lower() in OFF:
        path = None
    if path == "default":
        path = default_dir()
    if path is not None:
        path = os.path.abspath(os.path.expanduser(str(path)))
        os.makedirs(path, mode=0o700, exist_ok=True)
        _listen()
    jax.config.update("jax_compilation_cache_dir", path)
    if path is not None:
        jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
        # jcaffe's threshold, unless JAX's was set (the environment, or not its default)
        if (_THRESHOLD_ENV not in os.environ and
                jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_MIN_COMPILE_S):
            jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    cc.reset_cache()   # JAX settles the cache at its first compile; make it look again
    return path


def from_environment(default_on=False, flag=""):
    """Set the cache from the ``-compilation_cache`` flag, else ``$JCAFFE_COMPILATION_CACHE``;
    with neither, and ``default_on`` (the command line), the default directory unless JAX
    already has one. Returns the directory in use, or None."""
    choice = flag or os.environ.get(ENV, "")
    if choice:
        return set_compilation_cache(choice)
    if default_on and compilation_cache_dir() is None:
        return set_compilation_cache("default")
    if compilation_cache_dir() is not None:
        _listen()
    return compilation_cache_dir()


def stats():
    """Since the cache was turned on in this process: programs loaded from it ("hits"),
    programs compiled and written to it ("writes"), and the compile seconds the hits saved
    (as JAX records them: the original compile time less the time to load)."""
    return dict(_stats)


def _listen():
    global _listening
    if _listening:
        return
    _listening = True
    from jax import monitoring

    def event(name, **kwargs):
        if name == "/jax/compilation_cache/cache_hits":
            _stats["hits"] += 1
        elif name == "/jax/compilation_cache/cache_misses":   # JAX's name for a write
            _stats["writes"] += 1

    def duration(name, secs, **kwargs):
        if name == "/jax/compilation_cache/compile_time_saved_sec":
            _stats["saved_s"] += secs

    monitoring.register_event_listener(event)
    monitoring.register_event_duration_secs_listener(duration)


def log_summary():
    """One log line on what the cache did in this run (nothing when it is off)."""
    path = compilation_cache_dir()
    if path is None:
        return
    s = _stats
    log.info("Compilation cache %s: %d compiled program(s) loaded (%.1f s of compiling saved), "
             "%d written", path, s["hits"], s["saved_s"], s["writes"])
