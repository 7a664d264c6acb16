"""Where a step's time goes, jcaffe against pure JAX, on whatever device JAX has (made
for a lent GPU machine: benchmarks/device_check.sh times, this one explains).

    python benchmarks/device_profile.py --net googlenet --forward --out DIR
    python benchmarks/device_profile.py --net resnet50 --out DIR

For each contender: the compile events of its first call (jax.monitoring's durations;
with JAX_LOG_COMPILES=1 the log names each jitted function), then ``--calls`` steady
calls under ``jax.profiler`` (a Perfetto trace per contender) and the optimized HLO of
its programs (XLA's dump), all under DIR. Read the traces off the machine with
``benchmarks/device_kernels.py DIR``; a kernel's name is its HLO instruction's, whose
op_name in the dump names the layer (``<layer>.forward`` / ``.backward`` / ``.update``):
``--layers N`` sums the kernels by it. It runs on the CPU too (the kernels are then
XLA's thunks).
"""
import argparse
import logging
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default="googlenet")
    ap.add_argument("--forward", action="store_true", help="deploy forward, not a train step")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--batch", type=int, default=None, help="default: the net's benchmark batch")
    ap.add_argument("--jcaffe-only", action="store_true",
                    help="profile jcaffe alone (pure JAX's step takes 4-8x as long on a CPU)")
    ap.add_argument("--out", required=True)
    opts = ap.parse_args()
    tag = "%s_%s%s" % (opts.net, "forward" if opts.forward else "train",
                        "_batch%d" % opts.batch if opts.batch else "")
    dump = os.path.join(opts.out, "hlo_" + tag)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_dump_to=%s --xla_dump_hlo_as_text" % dump)
    import jax
    sys.path.insert(0, HERE)
    import nets
    if opts.forward:
        import bench_forward as bench
    else:
        import bench_train as bench
    logging.getLogger("jcaffe").setLevel(logging.WARNING)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: compiles.append((event, secs)) if "compil" in event
        or "lower" in event or "trace" in event else None)
    batch = opts.batch or nets.NETS[opts.net][1]
    contenders = bench.contenders(opts.net, batch)
    contenders.pop("PyTorch eager", None)
    if opts.jcaffe_only:
        contenders = {k: v for k, v in contenders.items() if k.startswith("jcaffe")}
    for name, setup in contenders.items():
        short = "jcaffe" if name.startswith("jcaffe") else "purejax"
        del compiles[:]
        t0 = time.perf_counter()
        run = setup()
        t1 = time.perf_counter()
        run()
        t2 = time.perf_counter()
        run()
        t3 = time.perf_counter()
        events = {}
        for event, secs in compiles:
            events.setdefault(event, []).append(secs)
        print("%s: setup %.2f s, first call %.2f s, second %.2f s" % (name, t1 - t0, t2 - t1,
                                                                    t3 - t2))
        for event, secs in sorted(events.items()):
            print("  %-60s n=%3d total %.2f s max %.2f s" % (event, len(secs), sum(secs),
                                                             max(secs)))
        for _ in range(3):
            run()
        trace_dir = os.path.join(opts.out, "trace_%s_%s" % (tag, short))
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(opts.calls):
                run()
        times = []
        for _ in range(10):
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1000)
        print("  steady: median %.2f ms, min %.2f ms" % (sorted(times)[5], min(times)))


if __name__ == "__main__":
    main()
