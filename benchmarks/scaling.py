"""Data-parallel scaling of jcaffe's Solver.step (jcaffe.parallel) on 1, 2, 4 devices.

    python benchmarks/scaling.py                      # forced host devices, writes benchmarks/SCALING.md
    python benchmarks/scaling.py --devices 1,2 --iters 10 --repeats 3 --out -

Each configuration runs in its own subprocess, started with
XLA_FLAGS=--xla_force_host_platform_device_count=<largest N> (on a machine whose JAX
backend has several real devices, pass --real to use them instead). The net is LeNet
(tests/data/zoo/lenet.prototxt, DummyData generated on each device, so no host input
traffic), SGD with momentum. Two measures:

* weak scaling (Caffe's -gpu semantics): batch_size per device fixed at --batch, the
  effective batch grows with N; efficiency = images/s(N) / (N x images/s(1)).
* strong scaling: the global batch fixed at --batch, each device gets --batch/N;
  efficiency = speedup / N.

Forced host devices are N logical XLA devices sharing the same CPU cores: on a machine
with fewer cores than devices they measure the overhead of the data-parallel step
(sharding, the all-reduce, one program per device), not real parallel hardware.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LENET = os.path.join(ROOT, "tests", "data", "zoo", "lenet.prototxt")


def child(devices, batch, iters, repeats, ordinary):
    """Time one configuration; print one JSON line."""
    sys.path.insert(0, ROOT)
    import jax
    import jcaffe
    from jcaffe import protoio
    from jcaffe.proto import caffe_pb2
    from google.protobuf import text_format

    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" '
                      'random_seed: 1 display: 0', param)
    param.net_param.CopyFrom(protoio.read_net_param(LENET))
    for shape in param.net_param.layer[0].dummy_data_param.shape:
        shape.dim[0] = batch
    solver = jcaffe.get_solver(param, devices=None if ordinary else devices)
    t0 = time.perf_counter()
    solver.step(1)
    solver.net._learnable[0].device_data().block_until_ready()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        solver.step(iters)
        solver.net._learnable[0].device_data().block_until_ready()
        times.append((time.perf_counter() - t0) / iters)
    print(json.dumps({"devices": devices, "batch": batch, "compile_s": compile_s,
                      "step_s": times, "backend": jax.default_backend(),
                      "device_kind": jax.devices()[0].device_kind,
                      "jax": jax.__version__}), flush=True)


def run_child(args, devices, batch, ordinary=False):
    env = dict(os.environ)
    if not args.real:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=%d"
                            % max(args.devices)).strip()
        env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(devices), str(batch),
           str(args.iters), str(args.repeats), "1" if ordinary else "0"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        raise SystemExit("configuration devices=%d batch=%d failed:\n%s"
                         % (devices, batch, out.stderr[-3000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return cpu, os.cpu_count(), load


def loaded_note(load_before, cores):
    """A warning for the table when other work was running: the one-minute load average
    at the core count or above before the run (the load after it counts the run's own
    children, so it does not tell)."""
    if load_before[0] >= cores:
        return " (more load than cores: other jobs shared this machine; timings are noisy)"
    return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="1,2,4")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--real", action="store_true", help="use the backend's own devices (GPUs)")
    ap.add_argument("--out", default=os.path.join(HERE, "SCALING.md"), help="'-' for stdout only")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        d, b, i, r, o = (int(x) for x in args.child)
        return child(d, b, i, r, bool(o))
    args.devices = [int(x) for x in args.devices.split(",")]
    load_before = machine()[2]
    rows = []
    base = run_child(args, 1, args.batch, ordinary=True)
    rows.append(("ordinary solver", 1, args.batch, args.batch, base))
    for mode in ("weak", "strong"):
        for n in args.devices:
            per = args.batch if mode == "weak" else args.batch // n
            rows.append((mode, n, per, per * n, run_child(args, n, per)))
            print("%s N=%d done" % (mode, n), file=sys.stderr, flush=True)
    cpu, cores, load_after = machine()
    ref = {}
    lines = []
    for mode, n, per, total, res in rows:
        step, best = statistics.median(res["step_s"]), min(res["step_s"])
        ips, ips_best = total / step, total / best
        if n == 1 and mode != "ordinary solver":
            ref[mode] = (ips, ips_best)
        if mode in ref:     # weak and strong alike: images/s(N) / (N x images/s(1))
            eff = "%.0f%% | %.0f%%" % (100 * ips / (n * ref[mode][0]),
                                       100 * ips_best / (n * ref[mode][1]))
        else:
            eff = "- | -"
        lines.append("| %s | %d | %d | %d | %.1f | %.1f-%.1f | %.0f | %s | %.1f |" % (
            mode, n, per, total, step * 1000, best * 1000, max(res["step_s"]) * 1000, ips, eff,
            res["compile_s"]))
    label = ("real devices (%s)" % base["device_kind"]) if args.real else (
        "forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=%d) on a %d-core "
        "CPU box, NOT real parallel hardware: all devices share the same %d cores"
        % (max(args.devices), cores, cores))
    text = "\n".join([
        "# Data-parallel scaling (jcaffe.parallel)",
        "",
        "**%s.**" % label,
        "",
        "LeNet (tests/data/zoo/lenet.prototxt, DummyData on each device), SGD momentum, "
        "`Solver.step`; median of %d repeats of %d iterations after one warm-up (compile) "
        "iteration; each row a fresh subprocess." % (args.repeats, args.iters),
        "Weak scaling: batch per device fixed (Caffe's `-gpu` semantics), efficiency = "
        "images/s(N) / (N x images/s(1)). Strong scaling: global batch fixed, efficiency = "
        "speedup / N. The N=1 rows already run the data-parallel (shard_map) step; "
        "'ordinary solver' is the plain one-device fused step. 'efficiency (min)' uses the "
        "fastest repeat of each row, the less load-sensitive estimate on a shared machine.",
        "",
        "| scaling | devices | batch/device | global batch | ms/iter (median) | min-max | "
        "images/s (median) | efficiency (median) | efficiency (min) | first step (compile) s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ] + lines + [
        "",
    ] + ([] if args.real else [
        "How to read this: N forced host devices are N XLA programs sharing the same %d cores, "
        "so the total work per image is unchanged and the best achievable here is flat "
        "images/s, i.e. efficiency about 1/N (50%% at 2, 25%% at 4). Rows near that line mean "
        "the data-parallel step (sharding the batch, one program per device, the gradient "
        "all-reduce) adds little on top of the arithmetic; they say nothing about speed-ups on "
        "real parallel hardware, which this box does not have. No multi-GPU machine was "
        "available for this run." % cores,
        "",
    ]) + [
        "Machine: %s, %d cores; jax %s, backend %s. Load average before/after: %s / %s%s." % (
            cpu, cores, base["jax"], base["backend"],
            " ".join("%.1f" % x for x in load_before), " ".join("%.1f" % x for x in load_after),
            loaded_note(load_before, cores)),
        "Date: %s UTC." % time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "Command: `python benchmarks/scaling.py %s`" % " ".join(sys.argv[1:]),
        "",
    ])
    print(text)
    if args.out != "-":
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
