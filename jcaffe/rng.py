"""The random draws layers make inside a compiled step (Dropout's mask, DummyData's
gaussian and uniform fillers, stochastic pooling's thresholds).

They are JAX's threefry draws, made with ``jax_threefry_partitionable`` off while they
are traced: the classic threefry, which splits its counters in two halves, instead of
JAX's default since 0.5 (one counter per element, so that a sharded array draws its
shards without communication, which jcaffe never asks for: data parallel training gives
each device its own key). On the CPU the default compiled slowly and ran slower
(jaxlib 0.10.2, AMD EPYC 2-core VM, 2026-12-05):

* compiling ``jax.random.bits`` of a 2x3x12x12 array: 3.1 s against 0.25 s (the step
  of a three-layer net with a gaussian DummyData: 3.7 s against 0.47 s for its first
  iteration); of a 64x3x224x224 array, 0.9 s against 0.25 s;
* running: bernoulli 32x4096 1.70 against 0.91 ms, normal 64x3x224x224 216 against
  139 ms.

The setting is jcaffe's alone: it applies while these functions trace, and the user's
JAX code, Python layers in JAX included, keeps JAX's configuration. The streams are
JAX's, not Caffe's (Caffe draws with its own generators): a seed reproduces a jcaffe
run, not a Caffe one.
"""
import contextlib

import jax

_classic = getattr(jax, "threefry_partitionable", None)


def _classic_threefry():
    return _classic(False) if _classic is not None else contextlib.nullcontext()


def bernoulli(key, p, shape):
    with _classic_threefry():
        return jax.random.bernoulli(key, p, shape)


def uniform(key, shape, dtype, minval=0.0, maxval=1.0):
    with _classic_threefry():
        return jax.random.uniform(key, shape, dtype, minval, maxval)


def normal(key, shape, dtype):
    with _classic_threefry():
        return jax.random.normal(key, shape, dtype)
