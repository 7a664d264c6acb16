"""XLA options of jcaffe's own compiles (``jax.jit(..., compiler_options=...)``).

On CPU, jaxlib 0.10's XLA hands three kinds of op to YNNPACK: dots, reductions and
(individual) convolutions. Its YNNPACK convolution ran the long-column convolutions
jcaffe leaves to XLA (3x3 and 5x5 kernels over many channels: CaffeNet's conv2-5,
GoogLeNet's, ResNet-50's) slower than XLA's own convolution (Eigen's): CaffeNet's
conv2-5 forwards 0.67-0.89x the time without it, alone; interleaved A/Bs of whole
training steps (2026-12-02, two runs each): CaffeNet 0.94 and 0.96x, GoogLeNet 0.86 and
0.96x, ResNet-50 0.97 and 1.02x, LeNet unchanged (none of its convolutions goes to XLA's
convolution); deploy forwards CaffeNet 0.75x, GoogLeNet 0.96x. XLA's own
convolution was also the more accurate of the two in float32 (largest error against
float64 0.3e-6 vs 1.2e-6 of the output's largest value, on CaffeNet's and ResNet-50's
3x3/5x5 shapes). So jcaffe keeps YNNPACK's dots and reductions and leaves convolutions
to XLA. (benchmarks/NOTES.md, thirteenth session.)

The environment is the user's: an ``xla_cpu_experimental_ynn_fusion_type`` in
``$XLA_FLAGS`` is left to apply, and a jaxlib that rejects the option (it is
experimental; names change) compiles without it, with one log line saying so.
"""
import functools
import logging
import os

import jax
import numpy as np

log = logging.getLogger("jcaffe")

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
# What jcaffe asks for: YNNPACK dots and reductions, not convolutions.
YNN_FUSION_TYPES = "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"


@functools.lru_cache(maxsize=None)
def accepted(name, value):
    """Whether this jaxlib's CPU compiler takes ``name=value`` (compiles a scalar add)."""
    try:
        jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(
            compiler_options={name: value})
    except Exception as e:   # jaxlib raises XlaRuntimeError / JaxRuntimeError / ValueError
        log.info("XLA option %s=%s not taken by this jaxlib (%s); compiling without it",
                 name, value, str(e).splitlines()[0][:200])
        return False
    return True


def cpu_options(**extra):
    """The compiler options for a jcaffe jit on the CPU backend: ``extra`` plus the
    YNNPACK fusion choice above (unless ``$XLA_FLAGS`` sets it or this jaxlib rejects
    it). None on other backends, and when there is nothing to pass."""
    if jax.default_backend() != "cpu":
        return None
    options = dict(extra)
    if (YNN_FUSION_TYPE not in os.environ.get("XLA_FLAGS", "")
            and accepted(YNN_FUSION_TYPE, YNN_FUSION_TYPES)):
        options[YNN_FUSION_TYPE] = YNN_FUSION_TYPES
    return options or None


def jit(fn, **kwargs):
    """``jax.jit(fn, **kwargs)`` with :func:`cpu_options` as its compiler options."""
    return jax.jit(fn, compiler_options=cpu_options(), **kwargs)


def own_convolutions():
    """Whether jcaffe's CPU compiles run convolutions on XLA's own kernels (the option
    above in effect), which decides some of Convolution's formulations."""
    options = cpu_options() or {}
    return options.get(YNN_FUSION_TYPE) == YNN_FUSION_TYPES
