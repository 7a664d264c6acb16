"""jcaffe's in-step random draws (jcaffe/rng.py: the classic threefry) against JAX's
default (partitionable threefry), in one process on the default backend: compile time of
a jitted draw and its run time, per draw and shape, the two kinds interleaved.

    python benchmarks/bench_rng.py [--repeats 20]

Shapes: a small DummyData (2x3x12x12), CaffeNet's fc6 Dropout (32x4096), an ImageNet batch
(64x3x224x224). A compile is timed on a fresh jit after jax.clear_caches(); the run times
are medians of ``--repeats`` calls, the two kinds alternating call by call.
"""
import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jcaffe import rng  # noqa: E402

SHAPES = [(2, 3, 12, 12), (32, 4096), (64, 3, 224, 224)]
DRAWS = {
    "bernoulli": (lambda k, s: rng.bernoulli(k, 0.5, s),
                  lambda k, s: jax.random.bernoulli(k, 0.5, s)),
    "normal": (lambda k, s: rng.normal(k, s, np.float32),
               lambda k, s: jax.random.normal(k, s, np.float32)),
}


def compile_s(fn, key):
    jax.clear_caches()
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(key).compile()
    return time.perf_counter() - start, compiled


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    key = jax.random.PRNGKey(0)
    print("backend %s, jax %s, JAX's jax_threefry_partitionable=%s"
          % (jax.default_backend(), jax.__version__, jax.config.jax_threefry_partitionable))
    print("| draw | shape | compile s, jcaffe.rng | compile s, JAX default | run ms, jcaffe.rng "
          "| run ms, JAX default | run, jcaffe / JAX |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (ours, default) in DRAWS.items():
        for shape in SHAPES:
            c_ours, f_ours = compile_s(lambda k: ours(k, shape), key)
            c_default, f_default = compile_s(lambda k: default(k, shape), key)
            for f in (f_ours, f_default):
                f(key).block_until_ready()
            times = ([], [])
            for _ in range(args.repeats):
                for f, t in zip((f_ours, f_default), times):
                    start = time.perf_counter()
                    f(key).block_until_ready()
                    t.append(time.perf_counter() - start)
            r_ours, r_default = (1e3 * np.median(t) for t in times)
            print("| %s | %s | %.2f | %.2f | %.3f | %.3f | %.2f |"
                  % (name, "x".join(map(str, shape)), c_ours, c_default, r_ours, r_default,
                     r_ours / r_default))


if __name__ == "__main__":
    main()
