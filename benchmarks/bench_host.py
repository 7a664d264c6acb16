"""Host work per call: the Python thread's CPU time for a training step and a deploy
forward, jcaffe against pure JAX, at a small batch.

    python benchmarks/bench_host.py [--nets lenet,googlenet,resnet50] [--batch 2]
                                    [--calls 30] [--rounds 3] [--json F]

On an accelerator both contenders run about the same kernels; what differs is the
host's work around each call (preparing the arguments, dispatching, setting what comes
back), and a call that waits for its result (a benchmark's step, a display iteration,
a deploy forward whose output is read) pays it in full. On the lent H200 (thirty-first
session, benchmarks/NOTES.md) a GoogLeNet deploy forward kept the GPU busy 1.43 ms in
jcaffe and 1.49 ms in pure JAX, and took 5.9 against 2.8 ms. This measures that host work
without a GPU: ``time.thread_time()`` around each call, made after the previous one
finished (no waiting is counted), the medians of ``calls`` calls per round, rounds
alternating between the contenders, a fresh process for each net and kind of call. A
small batch keeps the XLA:CPU work that runs on the calling thread (allocating the
outputs that are not donated buffers) small.

jcaffe's step is split into its jitted call (the arrays it passes and gets back:
params, solver history, the blobs' buffers it recycles; each costs the runtime a few
microseconds) and the Python around it. Pure JAX's step (benchmarks/nets.py) passes the
params, momentum and BatchNorm statistics and returns only the loss beside them.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_forward  # noqa: E402
import bench_train  # noqa: E402
import nets  # noqa: E402


def _leaves(tree):
    """The arrays in ``tree`` (not a static argument's names and shapes)."""
    import jax
    return sum(hasattr(x, "dtype") for x in jax.tree_util.tree_leaves(tree))


def _timed(fn, record):
    """``fn`` (a jitted callable) recording (thread s of each call, arrays in, arrays out)."""
    def timed(*args):
        t = time.thread_time()
        out = fn(*args)
        record.append((time.thread_time() - t, _leaves(args), _leaves(out)))
        return out
    return timed


def _patched(module, attr, wrap, setup):
    """``setup()`` while ``module.attr`` (a maker) gives ``wrap(what it made)``."""
    real = getattr(module, attr)
    setattr(module, attr, lambda *a, **k: wrap(real(*a, **k)))
    try:
        return setup()
    finally:
        setattr(module, attr, real)


def jcaffe_step(name, batch, record):
    """bench_train's jcaffe contender, its fused step's jitted call timed."""
    import jcaffe
    solvers = []
    run = _patched(jcaffe, "get_solver", lambda s: solvers.append(s) or s,
                   bench_train.jcaffe_step(name, batch))
    run()
    solver = solvers[0]
    if solver._fused is None:
        raise SystemExit("%s: the solver did not fuse its step" % name)
    solver._fused = (solver._fused[0], _timed(solver._fused[1], record)) + solver._fused[2:]
    return run


def jax_step(name, batch, record):
    """bench_train's pure JAX contender, its jitted step timed."""
    return _patched(nets, "jax_train_step", lambda f: _timed(f, record),
                    bench_train.jax_step(name, batch))


def jcaffe_forward(name, batch, record):
    """bench_forward's jcaffe contender, the jitted call of its slim program timed."""
    import jcaffe
    made = []
    run = _patched(jcaffe, "Net", lambda n: made.append(n) or n,
                   bench_forward.jcaffe_forward(name, batch))
    for _ in range(2):          # the full program, then the slim one
        run()
    segments = list(made[0]._segments.values())
    if len(segments) != 1 or segments[0]._slim is None:
        raise SystemExit("%s: the deploy forward is not one slim program" % name)
    seg = segments[0]
    seg._slim = (seg._slim[0], _timed(seg._slim[1], record))
    return run


def jax_forward(name, batch, record):
    """bench_forward's pure JAX contender, its jitted forward timed."""
    return _patched(nets, "jax_deploy_forward", lambda f: _timed(f, record),
                    bench_forward.jax_forward(name, batch))


CONTENDERS = {"step": (jcaffe_step, jax_step), "forward": (jcaffe_forward, jax_forward)}


def measure(name, batch, what, calls, rounds):
    """{"jcaffe": {...}, "pure JAX": {...}} of one net and call kind: ms per call (the
    thread's CPU time, median over the rounds' medians), of it the jitted call, and the
    arrays passed and returned."""
    records = {"jcaffe": [], "pure JAX": []}
    runs = {who: make(name, batch, records[who])
            for who, make in zip(records, CONTENDERS[what])}
    for run in runs.values():        # compile, warm
        for _ in range(3):
            run()
    totals = {who: [] for who in runs}
    for who in records:
        records[who].clear()
    for _ in range(rounds):
        for who, run in runs.items():
            times = []
            for _ in range(calls):
                t = time.thread_time()
                run()
                times.append(time.thread_time() - t)
            totals[who].append(statistics.median(times))
    out = {}
    for who in runs:
        rec = records[who]
        out[who] = {"ms": 1e3 * statistics.median(totals[who]),
                    "rounds_ms": [1e3 * t for t in totals[who]],
                    "call_ms": 1e3 * statistics.median([r[0] for r in rec]) if rec else None,
                    "arrays_in": rec[-1][1] if rec else None,
                    "arrays_out": rec[-1][2] if rec else None}
    return out


def table(rows):
    lines = ["| net | call | jcaffe ms | of it the jitted call ms | its arrays in / out | "
             "pure JAX ms | its arrays in / out | jcaffe / pure JAX |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, r in rows.items():
        net, what = key.split(":")
        j, p = r["jcaffe"], r["pure JAX"]

        def arrays(c):
            return "%d / %d" % (c["arrays_in"], c["arrays_out"]) if c["arrays_in"] else "-"
        lines.append("| %s | %s | %.2f | %s | %s | %.2f | %s | %.2f |" % (
            net, "training step" if what == "step" else "deploy forward", j["ms"],
            "%.2f" % j["call_ms"] if j["call_ms"] is not None else "-", arrays(j),
            p["ms"], arrays(p), j["ms"] / p["ms"]))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="lenet,googlenet,resnet50")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default="")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.child:
        import logging
        logging.getLogger("jcaffe").setLevel(logging.WARNING)
        name, what = opts.child.split(":")
        print(json.dumps(measure(name, opts.batch, what, opts.calls, opts.rounds)))
        return
    rows = {}
    for name in opts.nets.split(","):
        for what in ("step", "forward"):
            # a fresh process each: the heap a previous net left behind (Python's
            # collections walk it) moved a ResNet-50 forward from 1.5 to 2.2 ms
            key = "%s:%s" % (name, what)
            res = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", key,
                                  "--batch", str(opts.batch), "--calls", str(opts.calls),
                                  "--rounds", str(opts.rounds)], capture_output=True, text=True)
            if res.returncode:
                sys.stderr.write(res.stderr[-3000:])
                raise SystemExit("bench_host: %s failed" % key)
            rows[key] = json.loads(res.stdout.strip().splitlines()[-1])
            print(key, json.dumps(rows[key]), flush=True)
    print(table(rows))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"rows": rows, "batch": opts.batch, "argv": sys.argv}, f, indent=1)


if __name__ == "__main__":
    main()
