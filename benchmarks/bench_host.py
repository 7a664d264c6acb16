"""Host work per call: the Python thread's CPU time for a training step and a deploy
forward, jcaffe against pure JAX, at a small batch.

    python benchmarks/bench_host.py [--nets lenet,googlenet,resnet50] [--batch 2]
                                    [--calls 30] [--rounds 3] [--json F]

On an accelerator both contenders run about the same kernels; what differs is the
host's work around each call (preparing the arguments, dispatching, setting what comes
back), and a call that waits for its result (a benchmark's step, a display iteration,
a deploy forward whose output is read) pays it in full. On the lent H200 (thirty-first
session, benchmarks/NOTES.md) jcaffe's steps and forwards spent up to twice pure JAX's
wall time around GPU work of about the same length. This measures that host work
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
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import nets  # noqa: E402


def _leaves(tree):
    import jax
    return len(jax.tree_util.tree_leaves(tree))


def jcaffe_step(name, batch, record):
    """run() of one Solver.step(1); ``record`` gets (thread s of the jitted call, arrays
    in, arrays out) per call."""
    import jax
    solver = nets.jcaffe_solver(name, batch)
    solver.step(1)
    jax.block_until_ready(solver._losses[-1])
    if solver._fused is None:
        raise SystemExit("%s: the solver did not fuse its step" % name)
    seg, fn = solver._fused[:2]

    def timed(params, history, recycled, spec, *rest):
        t = time.thread_time()
        out = fn(params, history, recycled, spec, *rest)
        record.append((time.thread_time() - t,
                       _leaves((params, history, recycled, rest)), _leaves(out)))
        return out
    solver._fused = (seg, timed) + solver._fused[2:]

    def run():
        solver.step(1)
        jax.block_until_ready(solver._losses[-1])
    return run


def jax_step(name, batch, record):
    import jax
    import jax.numpy as jnp
    param = nets.net_param(name, batch)
    step = nets.jax_train_step(param)
    params = jax.tree_util.tree_map(jnp.asarray, nets.init_params(param))
    state = {"p": params, "m": jax.tree_util.tree_map(jnp.zeros_like, params), "i": 0,
             "s": jax.tree_util.tree_map(jnp.asarray, nets.init_stats(param))}
    data, label = (jnp.asarray(a) for a in nets.inputs(param))
    key = jax.random.PRNGKey(0)

    def run():
        state["i"] += 1
        args = (state["p"], state["m"], state["s"], data, label,
                jax.random.fold_in(key, state["i"]))
        t = time.thread_time()
        out = step(*args)
        record.append((time.thread_time() - t, _leaves(args), _leaves(out)))
        state["p"], state["m"], state["s"], loss = out
        loss.block_until_ready()
    return run


def jcaffe_forward(name, batch, record):
    import jcaffe
    param = nets.net_param(name, batch, deploy=True)
    net = jcaffe.Net(param, jcaffe.TEST)
    nets.load_reference_params(net, param)
    net.blobs["data"].data[...] = nets.inputs(param)[0]
    final = nets.NETS[name][3]
    for _ in range(2):          # the full program, then the slim one
        net.forward()
    segments = list(net._segments.values())
    if len(segments) != 1 or segments[0]._slim is None:
        raise SystemExit("%s: the deploy forward is not one slim program" % name)
    seg = segments[0]
    returned, fn = seg._slim

    def timed(*args):
        t = time.thread_time()
        out = fn(*args)
        record.append((time.thread_time() - t, _leaves(args), _leaves(out)))
        return out
    seg._slim = (returned, timed)

    def run():
        net.forward()[final]
    return run


def jax_forward(name, batch, record):
    import jax
    import jax.numpy as jnp
    import numpy as np
    param = nets.net_param(name, batch, deploy=True)
    f = nets.jax_deploy_forward(param, nets.NETS[name][3])
    params = jax.tree_util.tree_map(jnp.asarray, nets.init_params(param))
    stats = jax.tree_util.tree_map(jnp.asarray, nets.init_stats(param))
    data = jnp.asarray(nets.inputs(param)[0])

    def run():
        t = time.thread_time()
        out = f(params, stats, data)
        record.append((time.thread_time() - t, _leaves((params, stats, data)), 1))
        np.asarray(out)
    return run


CONTENDERS = {"step": (jcaffe_step, jax_step), "forward": (jcaffe_forward, jax_forward)}


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def measure(name, batch, what, calls, rounds):
    """{"jcaffe": {...}, "pure JAX": {...}} of one net and call kind: ms per call (the
    thread's CPU time, median over the rounds' medians), of it the jitted call, and the
    arrays passed and returned."""
    import jax
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
            totals[who].append(_median(times))
        jax.effects_barrier()
    out = {}
    for who in runs:
        rec = records[who]
        out[who] = {"ms": 1e3 * _median(totals[who]),
                    "rounds_ms": [1e3 * t for t in totals[who]],
                    "call_ms": 1e3 * _median([r[0] for r in rec]) if rec else None,
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
