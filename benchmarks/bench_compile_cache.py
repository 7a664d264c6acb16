"""First call of a training step with and without the persistent compilation cache.

    python benchmarks/bench_compile_cache.py [--nets lenet,caffenet,googlenet] [--json F]

Each run is a fresh process (a cache only helps a new process): build the solver, time
its first ``Solver.step(1)`` (trace, lower, compile or load, run) and a second one.
Three runs per net: no persistent cache; a cold cache (an empty directory: compile and
write); a warm cache (the same directory again: load). The ``jcaffe`` command line
turns the cache on by default (jcaffe/compile_cache.py); the library does when asked.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def child(net, cache_dir):
    import jax
    import jcaffe
    from jcaffe import compile_cache
    import nets
    if cache_dir:
        jcaffe.set_compilation_cache(cache_dir)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compiles.append(secs)
        if name == "/jax/core/compile/backend_compile_duration" else None)
    t0 = time.perf_counter()
    solver = nets.jcaffe_solver(net, nets.NETS[net][1])
    t1 = time.perf_counter()
    solver.step(1)
    jax.block_until_ready(solver._losses[-1])
    t2 = time.perf_counter()
    solver.step(1)
    jax.block_until_ready(solver._losses[-1])
    t3 = time.perf_counter()
    stats = compile_cache.stats()
    print(json.dumps({"setup_s": t1 - t0, "first_s": t2 - t1, "second_s": t3 - t2,
                      "xla_compile_s": sum(compiles), "loaded": stats["hits"],
                      "written": stats["writes"], "saved_s": stats["saved_s"]}))


def run_child(net, cache_dir):
    env = {k: v for k, v in os.environ.items() if k != "JCAFFE_COMPILATION_CACHE"}
    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", net,
                          cache_dir or ""], capture_output=True, text=True, env=env)
    if res.returncode:
        sys.stderr.write(res.stderr[-3000:])
        raise SystemExit("child run of %s failed" % net)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    files = [os.path.join(cache_dir, f) for f in os.listdir(cache_dir)] if cache_dir else []
    out["cache_mb"] = sum(os.path.getsize(f) for f in files) / 2 ** 20
    return out


def table(rows):
    lines = ["| net | run | setup s | first step s | of it XLA compile s | second step s | "
             "programs loaded / written | cache MB | first step / no cache |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for net, runs in rows.items():
        base = runs["no cache"]["first_s"]
        for label, r in runs.items():
            lines.append("| %s | %s | %.1f | %.1f | %.1f | %.2f | %d / %d | %s | %.2f |" % (
                net, label, r["setup_s"], r["first_s"], r["xla_compile_s"], r["second_s"],
                r["loaded"], r["written"], "%.1f" % r["cache_mb"] if r["cache_mb"] else "-",
                r["first_s"] / base))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="lenet,caffenet,googlenet")
    ap.add_argument("--json", default="")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.child:
        return child(*opts.child)
    rows = {}
    for net in opts.nets.split(","):
        with tempfile.TemporaryDirectory() as cache:
            rows[net] = {"no cache": run_child(net, None),
                         "cold cache": run_child(net, cache),
                         "warm cache": run_child(net, cache)}
        print(net, json.dumps(rows[net]), flush=True)
    print(table(rows))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"rows": rows, "argv": sys.argv}, f, indent=1)


if __name__ == "__main__":
    main()
