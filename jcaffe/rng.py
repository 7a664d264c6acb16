"""The random draws layers make inside a compiled step (Dropout's mask, DummyData's
gaussian and uniform fillers, stochastic pooling's thresholds).

They are JAX's threefry draws, made with ``jax_threefry_partitionable`` off while they
are traced: the classic threefry, which splits its counters in two halves, instead of
JAX's default since 0.5 (one counter per element, so that a sharded array draws its
shards without communication, which jcaffe never asks for: data parallel training gives
each device its own key). On the CPU the default compiled slowly and ran slower
(jaxlib 0.10.2, AMD EPYC 2-core VM, 2026-12-05):

* compiling ``jax.random.bits``: the classic one takes 0.2-0.25 s whatever the shape;
  the default as much for 1-d shapes and (2, 432) or (6, 144), but 0.5 s for
  (2, 3, 144), 1.1 s for (64, 10), 0.8 s for (64, 1, 28, 28), 0.9 s for
  (64, 3, 224, 224), 3.1 s for (2, 3, 12, 12) and 3.4 s for (2, 3, 4, 5, 6). (The
  first iteration of a three-layer net with a 2x3x12x12 gaussian DummyData: 3.7 s
  against 0.8 s.) ``benchmarks/bench_rng.py`` measures it on any backend;
* running (medians of interleaved calls, bench_rng.py): bernoulli 32x4096 0.99 against
  2.11 ms, normal 64x3x224x224 135 against 210 ms.

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
