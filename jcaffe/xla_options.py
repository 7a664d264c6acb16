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

Each dot goes to YNNPACK alone (``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``), not as a
fusion with the elementwise ops around it (``LIBRARY_FUSION_TYPE_DOT``): YNNPACK
evaluated those producers and consumers inside its tiles, and the nets whose products
sit between memory-bound chains paid for it: MobileNet's pointwise convolutions, fed
by the depthwise convolution, BatchNorm, Scale and ReLU, ran at a third of their speed
alone. Interleaved A/Bs of the two (benchmarks/ab_step.py, 2026-12-03, AMD EPYC VM,
individual / fused): deploy forwards MobileNet 0.539 (batch 32) and 0.489 (batch 1),
ResNet-50 0.843 (batch 16) and 0.813 (batch 1), ResNeXt-50 0.835 (batch 1), GoogLeNet
1.004 (32) and 0.942 (1), CaffeNet 0.985; training steps LeNet 0.872, CaffeNet 0.940,
MobileNet 0.879, GoogLeNet 0.946, ResNeXt-50 0.975, FCN-32s 0.984, ResNet-50 1.060 and
0.971 (two runs). A jaxlib without the individual kind gets the fused one.

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
# What jcaffe asks for: YNNPACK dots, each alone, and reductions, not convolutions;
# then, where this jaxlib has no individual dots, YNNPACK's fused dots.
YNN_FUSION_CHOICES = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
                      "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE")
YNN_FUSION_TYPES = YNN_FUSION_CHOICES[0]


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
    if YNN_FUSION_TYPE not in os.environ.get("XLA_FLAGS", ""):
        choice = ynn_fusion_types()
        if choice:
            options[YNN_FUSION_TYPE] = choice
    return options or None


def ynn_fusion_types():
    """The first of YNN_FUSION_TYPES and YNN_FUSION_CHOICES this jaxlib takes (None:
    neither)."""
    for value in (YNN_FUSION_TYPES,) + YNN_FUSION_CHOICES:
        if accepted(YNN_FUSION_TYPE, value):
            return value
    return None


def jit(fn, **kwargs):
    """``jax.jit(fn, **kwargs)`` with :func:`cpu_options` as its compiler options."""
    return jax.jit(fn, compiler_options=cpu_options(), **kwargs)


def own_convolutions():
    """Whether jcaffe's CPU compiles run convolutions on XLA's own kernels (the option
    above in effect), which decides some of Convolution's formulations."""
    options = cpu_options() or {}
    return options.get(YNN_FUSION_TYPE) in (YNN_FUSION_TYPES,) + YNN_FUSION_CHOICES
