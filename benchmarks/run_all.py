"""Run every benchmark and regenerate benchmarks/RESULTS.md.

    python benchmarks/run_all.py [--quick] [--notes FILE]

Each comparison runs in its own script (all its contenders in one process,
interleaved; peak memory from one subprocess per contender). --quick: fewer
repeats, no CaffeNet/GoogLeNet (to check that everything runs).
--notes FILE: a markdown file appended verbatim (the analysis of the numbers).
The raw numbers go to benchmarks/results.json; --render rewrites RESULTS.md from
it (and the notes) without measuring again; --only KEYS measures those entries of the
plan again (e.g. ``--only host``; ``jtime``: `jcaffe time`'s paragraph), merges them
into results.json and renders: their sections then say when they were measured, apart
from the run in the header.
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench_conv3d  # noqa: E402
import harness  # noqa: E402
import nets  # noqa: E402
import targets  # noqa: E402

# BVLC Caffe (OpenBLAS) and the issue's own figures on a 2-core CPU; quoted from issue 9,
# not measured here.
REFERENCE = {
    "lenet": {"BVLC Caffe": 23.0, "PyTorch eager (issue)": 12.0, "naive JAX (issue)": 25.0},
    "caffenet": {"BVLC Caffe": 1361.0, "PyTorch eager (issue)": 941.0,
                 "naive JAX (issue)": 4111.0},
}


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def load():
    return sh("uptime")


def versions():
    out = {"python": platform.python_version()}
    for mod in ("jax", "jaxlib", "numpy", "torch"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


def machine():
    model = sh("grep -m1 'model name' /proc/cpuinfo").split(":")[-1].strip()
    mem = sh("grep MemTotal /proc/meminfo").split(":")[-1].strip()
    return "%s, %d cores (os.cpu_count), %s RAM, %s" % (model, os.cpu_count(), mem,
                                                      platform.platform())


def matmul_peak(repeats=20):
    """Best float32 GFLOP/s of a 2048^2 matmul through XLA (jax.jit) on this machine."""
    import jax
    import jax.numpy as jnp
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


# Deploy nets also timed at batch 1 (their names in the tables: targets.NAMES).
SINGLE_IMAGE_NETS = ("caffenet", "googlenet", "resnet18", "resnet50", "resnet152",
                     "mobilenet", "mobilenet_v2", "squeezenet", "nin", "se_bn_inception",
                     "inception_v3", "inception_v4", "inception_resnet_v2", "xception",
                     "deeplab_largefov")
# Caffe's small examples, (net, repeats, warm-up calls) of their steps and forwards
# (their memory is the jax runtime's: not measured)
SMALL_NETS = (("cifar10_quick", "15", "2"), ("cifar10_full", "15", "2"),
              ("cifar10_full_sigmoid_bn", "15", "2"), ("mnist_autoencoder", "30", "3"),
              ("mnist_siamese", "30", "3"), ("mtcnn_pnet", "30", "3"), ("srcnn", "30", "3"),
              ("fsrcnn", "30", "3"), ("char_rnn", "30", "3"))


def products(key):
    """What forward_gflop counts for benchmark ``key``, in words."""
    net = key.split("_", 1)[1]
    if net == "volume":             # (bench_conv3d.py's)
        return "convolutions and deconvolutions"
    if net not in nets.NETS:        # (train_caffenet_adam: CaffeNet's)
        net = net.rsplit("_", 1)[0]
    if net in nets.SEQUENCE_STREAMS:
        return "inner products and LSTMs"
    layers = nets.net_param(net).layer
    return ("convolutions, deconvolutions and inner products"
            if any(l.type == "Deconvolution" for l in layers)
            else "convolutions and inner products")


def forward_gflop(name, deploy, batch=None):
    """Multiply-adds x2 of the products of one forward: convolutions and inner products
    (each output times its weight's fan-in), deconvolutions (each input times its
    weight's fan-out: FCN's upsampling, U-Net's up-convolutions) and LSTMs (each
    timestep's W_xc x_t and W_hc h_{t-1}, and the static input's W_xc_static x_static
    once)."""
    param = nets.net_param(name, batch, deploy=deploy)
    shapes, blob_shape = nets.param_shapes(param)
    owner = nets.shared_layers(param)        # (the siamese towers' second: the first's)
    total = 0
    for typ, lname, bottoms, tops, l in nets.layer_list(param):
        if typ in ("Convolution", "InnerProduct"):
            weight = shapes[owner.get(lname, lname)][0]
            total += 2 * math.prod(blob_shape[tops[0]]) * math.prod(weight[1:])
        elif typ == "Deconvolution":     # weight (C_in, O / group, k...)
            total += 2 * math.prod(blob_shape[bottoms[0]]) * math.prod(shapes[lname][0][1:])
        elif typ == "LSTM":
            steps, streams = blob_shape[bottoms[0]][:2]
            w = shapes[lname]
            total += 2 * steps * streams * (math.prod(w[0]) + math.prod(w[-1]))
            if len(bottoms) > 2:
                total += 2 * streams * math.prod(w[2])
    return total / 1e9


def caffe_memory_mb(name):
    """BVLC Caffe's own arrays for one SGD-momentum training step of net ``name``, by
    count (float32): every param's data, diff and momentum; every blob's data and diff
    (in-place tops counted once); the data layer's 4 prefetched batches
    (DataParameter.prefetch; a sequence net's inputs come from HDF5Data, which keeps
    one). Not counted: the process and its libraries, im2col buffers, pooling masks, LRN
    scales, dropout masks, an LSTM's unrolled net, so Caffe's RSS is above this."""
    shapes, blob_shape = nets.param_shapes(nets.net_param(name))
    params = sum(math.prod(s) for ps in shapes.values() for s in ps)
    blobs = sum(math.prod(s) for s in blob_shape.values())
    prefetch = 4 * math.prod(blob_shape["data"]) if "data" in blob_shape else 0
    return 4 * (3 * params + 2 * blobs + prefetch) / 2 ** 20


def caffe_layer_buffers_mb(name):
    """BVLC Caffe's arrays beyond :func:`caffe_memory_mb`'s count, by count (float32 or
    int32), as its layers' Reshape makes them (read from its sources): each
    Convolution's col_buffer_ (one image's columns; none for 1x1 kernels at stride 1
    without padding), MAX pooling's max_idx_ (top sized), LRN's scale_, Dropout's
    rand_vec_, BatchNorm's x_norm_ and temp_, an in-place Scale's temp_, SoftmaxWithLoss's
    prob_ (each bottom sized), PReLU's multiplier_ and backward_buff_ (one image's
    size) and, in place, its bottom_memory_ (a copy of the bottom's data), the diffs of
    the split tops Caffe inserts where a blob feeds several layers (their data is the
    bottom's), and each LSTM's unrolled net (:func:`caffe_lstm_blobs`)."""
    param = nets.net_param(name)
    _, blob_shape = nets.param_shapes(param)
    total, version, readers = 0, {}, {}
    for typ, lname, bottoms, tops, l in nets.layer_list(param):
        for b in bottoms:
            key = (b, version.get(b, 0))
            readers[key] = readers.get(key, 0) + 1
        for t in tops:
            version[t] = version.get(t, 0) + 1
        x = math.prod(blob_shape[bottoms[0]]) if bottoms else 0
        if typ == "Convolution":
            k, st, pad = nets.conv_params(l)[:3]
            if not (all(v == 1 for v in k + st) and not any(pad)):
                total += (blob_shape[bottoms[0]][1] * math.prod(k)
                          * math.prod(blob_shape[tops[0]][2:]))
        elif typ == "Pooling" and l.pooling_param.pool == l.pooling_param.MAX:
            total += math.prod(blob_shape[tops[0]])
        elif typ in ("LRN", "Dropout", "SoftmaxWithLoss") or (
                typ == "Scale" and bottoms[0] == tops[0]):
            total += x
        elif typ == "BatchNorm":
            total += 2 * x
        elif typ == "PReLU":    # multiplier_, backward_buff_ (one image); in place, a copy
            total += 2 * x // blob_shape[bottoms[0]][0] + (x if bottoms[0] == tops[0] else 0)
        elif typ == "LSTM":
            total += caffe_lstm_blobs(blob_shape[bottoms[0]][:2], l.recurrent_param.num_output,
                                      len(bottoms) > 2)
    for (b, _), n in readers.items():
        if n > 1 and b in blob_shape:       # (not the labels: a few floats)
            total += n * math.prod(blob_shape[b])
    return 4 * total / 2 ** 20


def caffe_lstm_blobs(steps_streams, hidden, static):
    """Floats in BVLC Caffe's unrolled net of one LSTM layer (lstm_layer.cpp builds it;
    recurrent_layer.cpp shares x, x_static and the top h with the outer net's blobs, so
    those are not counted here): data and diff of W_xc_x (T, N, 4H), of its Slice's T
    tops, and per timestep of h_conted_{t-1} (N, H), W_hc_h_{t-1} (N, 4H), gate_input_t
    (N, 4H), c_t and h_t (N, H each); c_0 and h_0; each LSTMUnit's X_acts_ (data only);
    the diffs of h_t's two split tops (t < T: the next step's and the concat's); with a
    static input its transform (N, 4H, data and diff) and the diffs of its T split tops
    (one per gate_input_t)."""
    steps, streams = steps_streams
    g = 4 * hidden
    per_step = 2 * (g + g + hidden + g + g + 2 * hidden) + g + (g if static else 0)
    total = steps * per_step + 2 * 2 * hidden + (steps - 1) * 2 * hidden
    if static:
        total += 2 * g
    return streams * total


def run(script, args, out_json):
    cmd = [sys.executable, os.path.join(HERE, script)] + args + ["--json", out_json]
    print("$ " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd),
          flush=True)
    t0 = time.time()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    sys.stdout.write(res.stdout[-3000:])
    if res.returncode:
        sys.stderr.write(res.stderr[-3000:])
        return None
    print("  (%.0fs)" % (time.time() - t0), flush=True)
    with open(out_json) as f:
        return json.load(f)


def fmt_table(data, gflop=None, refs=None, base="jcaffe"):
    res, rss = data["results"], data.get("rss_mb", {})
    names = list(res)
    base = next(n for n in names if n.startswith(base))
    lines = ["| contender | median ms | min ms | max ms | jcaffe / this | first call s | "
             "second call s | peak RSS MB |%s" % (" GFLOP/s |" if gflop else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|%s" % ("---:|" if gflop else "")]
    for n in names:
        r = res[n]
        ratio = res[base]["median_ms"] / r["median_ms"]
        mem = "%.0f" % rss[n] if n in rss else "-"
        g = " %.1f |" % (gflop / r["median_ms"] * 1000) if gflop else ""
        lines.append("| %s | %.1f | %.1f | %.1f | %.2f | %.2f | %s | %s |%s" % (
            n, r["median_ms"], r["min_ms"], r["max_ms"], ratio, r["compile_s"],
            harness.second_call(r), mem, g))
    for n, ms in (refs or {}).items():
        lines.append("| %s (quoted, not measured here) | %.0f | | | %.2f | | | |%s"
                     % (n, ms, res[base]["median_ms"] / ms, " |" if gflop else ""))
    return "\n".join(lines)


def data_table(data):
    """bench_data.py's table: each Data-fed row over the Input-fed row of the same steps."""
    res, rss = data["results"], data.get("rss_mb", {})
    lines = ["| contender | median ms | min ms | max ms | this / Input-fed, same steps | first call s "
             "| second call s | peak RSS MB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in res.items():
        steps = n.split(" from ")[0]
        base = res.get(steps + " from Input (fed once)")
        ratio = "%.2fx" % (r["median_ms"] / base["median_ms"]) if base and " from " in n else "-"
        lines.append("| %s | %.1f | %.1f | %.1f | %s | %.2f | %s | %s |" % (
            n, r["median_ms"], r["min_ms"], r["max_ms"], ratio, r["compile_s"],
            harness.second_call(r), "%.0f" % rss[n] if n in rss else "-"))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--notes", default=os.path.join(HERE, "NOTES.md"))
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated plan keys to measure again")
    opts = ap.parse_args()
    raw = os.path.join(HERE, "results.json")
    if opts.render:
        with open(raw) as f:
            render(json.load(f), opts)
        return
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = load()
    q = ["--repeats", "3", "--warmup", "1"] if opts.quick else []
    plan = [
        ("train_lenet", "bench_train.py", ["--net", "lenet"] + (q or ["--repeats", "30"])),
        ("pyloop_lenet", "bench_pyloop.py", ["--net", "lenet"] + (q or ["--repeats", "30"])),
        ("forward_lenet", "bench_forward.py", ["--net", "lenet"] + (q or ["--repeats", "30"])),
        ("data_lenet", "bench_data.py", ["--net", "lenet"] + (q or ["--repeats", "30"])),
        ("compile_cache", "bench_compile_cache.py",
         ["--nets", "lenet" if opts.quick else "lenet,caffenet,googlenet"]),
        ("host", "bench_host.py", ["--nets", "lenet" if opts.quick else "lenet,googlenet,resnet50"]),
    ]

    def runs(kind, script, rows, *extra):
        """One entry per (net, repeats, warm-up calls) of ``rows``, keyed kind_net."""
        return [("%s_%s" % (kind, net), script,
                 ["--net", net, "--repeats", repeats, "--warmup", warmup] + list(extra))
                for net, repeats, warmup in rows]
    if not opts.quick:
        # (peak memory: every training step but the small nets', VGG-16's and Adam's, one
        # fresh process per contender, about 10 minutes of the run; of the forwards,
        # LeNet's only)
        plan += runs("train", "bench_train.py", SMALL_NETS, "--no-memory") + runs(
            "train", "bench_train.py",
            [("caffenet", "7", "1"), ("alexnet", "7", "1"), ("googlenet", "3", "1"),
             ("resnet18", "5", "1"), ("resnet34", "3", "1"), ("resnet50", "3", "1"),
             ("resnet152", "3", "1"), ("mobilenet", "3", "1"), ("mobilenet_v2", "3", "1"),
             ("squeezenet", "5", "1"), ("nin", "5", "1"), ("densenet121", "3", "1"),
             ("se_bn_inception", "3", "1"), ("inception_v3", "3", "1"),
             ("inception_v4", "3", "1"), ("inception_resnet_v2", "3", "1")]) + runs(
            # (pure JAX's ResNeXt step takes 103 s, XLA's grouped weight gradients; timed
            # once, benchmarks/NOTES.md, not in every run; Xception's depthwise ones too)
            "train", "bench_train.py",
            [("resnext50", "3", "1"), ("dpn92", "3", "1"), ("xception", "3", "1")],
            "--only", "jcaffe Solver.step,PyTorch eager") + runs(
            "train", "bench_train.py", [("fcn32s", "3", "1"), ("openpose", "3", "1"),
                                        ("deeplab_largefov", "3", "1"),
                                        ("unet", "3", "1"),
                                        ("resnet56_cifar", "5", "1"),
                                        ("colorization", "3", "1"),
                                        ("mtcnn_onet", "15", "2"),
                                        ("lrcn", "3", "1"),
                                        ("ptb_lstm", "5", "1"),
                                        ("lightcnn9", "5", "1")]) + runs(
            "train", "bench_train.py", [("vgg16", "3", "1")], "--no-memory") + [
            ("train_caffenet_adam", "bench_train.py",
             ["--net", "caffenet", "--solver", "Adam", "--repeats", "5", "--warmup", "1",
              "--no-memory"]),
            # (a 3-d net: batch 2, a 32x64x64 volume; its 3-d maps also unfolded)
            ("train_volume", "bench_conv3d.py", ["--repeats", "5", "--warmup", "1"]),
            ("data_caffenet", "bench_data.py",
             ["--net", "caffenet", "--repeats", "5", "--warmup", "1", "--only",
              "jcaffe Solver.step(1) from Input (fed once),jcaffe Solver.step(1) from Data over LMDB,"
              "jcaffe Solver.step(1) from a Python data layer,jcaffe Data.load_batch() alone"]),
        ] + runs("forward", "bench_forward.py", SMALL_NETS, "--no-memory") + runs(
            "forward", "bench_forward.py",
            [("caffenet", "9", "1"), ("alexnet", "9", "1"), ("googlenet", "7", "1"),
             ("resnet18", "7", "1"), ("resnet34", "5", "1"), ("resnet50", "5", "1"),
             ("resnet152", "5", "1"), ("mobilenet", "5", "1"), ("mobilenet_v2", "5", "1"),
             ("squeezenet", "7", "1"),
             ("nin", "7", "1"), ("densenet121", "5", "1"), ("se_bn_inception", "5", "1"),
             ("inception_v3", "5", "1"), ("inception_v4", "5", "1"),
             ("inception_resnet_v2", "5", "1"),
             ("xception", "5", "1"), ("resnext50", "5", "1"), ("dpn92", "5", "1"),
             ("vgg16", "5", "1"),
             ("fcn32s", "3", "1"), ("openpose", "3", "1"), ("deeplab_largefov", "5", "1"),
             ("unet", "5", "1"), ("resnet56_cifar", "7", "1"),
             ("mtcnn_onet", "15", "2"), ("mtcnn_pnet_image", "30", "3"),
             ("srcnn_image", "30", "3"), ("fsrcnn_image", "30", "3"),
             ("colorization_image", "5", "1"), ("ptb_lstm", "7", "1"),
             ("lightcnn9", "7", "1")],
            "--no-memory")
        # one image at a time, as a classification script feeds a deploy net
        plan += [("forward1_%s" % name, "bench_forward.py",
                  ["--net", name, "--batch", "1", "--repeats", "15", "--warmup", "2",
                   "--no-memory"]) for name in SINGLE_IMAGE_NETS]
    if opts.only:
        return remeasure(plan, opts.only.split(","), raw, opts)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, script, args in plan:
            results[key] = run(script, args, os.path.join(tmp, key + ".json"))
            results[key + "_cmd"] = "python benchmarks/%s %s" % (script, " ".join(args))
        layers_cmd = ["--repeats", "5"] + (["--only", "ReLU,Pooling"] if opts.quick else [])
        results["layers"] = run("bench_layers.py", layers_cmd, os.path.join(tmp, "layers.json"))
        results["layers_cmd"] = "python benchmarks/bench_layers.py " + " ".join(layers_cmd)
        conv_args = (["--repeats", "2"] + (["--torch"] if harness.has_torch() else [])
                     + (["--only", "lenet"] if opts.quick else []))
        conv = subprocess.run([sys.executable, os.path.join(HERE, "bench_conv.py")] + conv_args,
                              cwd=ROOT, capture_output=True, text=True).stdout
        results["conv_cmd"] = "python benchmarks/bench_conv.py " + " ".join(conv_args)
        jtime = jcaffe_time(tmp)
    peak = matmul_peak()
    load_after = load()
    finished = datetime.datetime.now(datetime.timezone.utc)
    state = {"results": results, "conv": conv, "jtime": jtime, "peak": peak,
             "load_before": load_before, "load_after": load_after, "quick": opts.quick,
             "started": started.strftime("%Y-%m-%d %H:%M"), "finished": finished.strftime("%H:%M"),
             "machine": machine(), "versions": versions()}
    if not opts.quick:
        with open(raw, "w") as f:
            json.dump(state, f, indent=1)
    render(state, opts)


def remeasure(plan, keys, raw, opts):
    """Measure the plan's entries ``keys`` again into results.json (each with the time
    it was measured: ``results[key + "_measured"]``; on another machine than the
    header's run, with that machine and its matmul peak: ``results[key + "_machine"]``)
    and render."""
    by_key = {key: (script, args) for key, script, args in plan}
    unknown = [k for k in keys if k not in by_key and k != JTIME_KEY]
    if unknown:
        raise SystemExit("--only: no plan entries %s (there are %s)"
                         % (", ".join(unknown), ", ".join(list(by_key) + [JTIME_KEY])))
    with open(raw) as f:
        state = json.load(f)
    results = state["results"]
    here = machine()
    elsewhere = {"machine": here, "peak": matmul_peak()} if here != state["machine"] else None
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            started, before = datetime.datetime.now(datetime.timezone.utc), load()
            if key == JTIME_KEY:            # (`jcaffe time`'s paragraph, not a table)
                state[JTIME_KEY] = jcaffe_time(tmp)
            else:
                script, args = by_key[key]
                results[key] = run(script, args, os.path.join(tmp, key + ".json"))
                results[key + "_cmd"] = "python benchmarks/%s %s" % (script, " ".join(args))
            results[key + "_measured"] = "%s to %s UTC, load before: `%s`" % (
                started.strftime("%Y-%m-%d %H:%M"),
                datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M"), before)
            results.pop(key + "_machine", None)
            if elsewhere:
                results[key + "_machine"] = elsewhere
            with open(raw, "w") as f:         # (after each: a long re-measure keeps its part)
                json.dump(state, f, indent=1)
    if elsewhere:
        # (the machine's peak, measured again after the runs: a neighbour's load once
        # held the best of 20 matmuls before them to 135 GFLOP/s, 181-186 just after)
        elsewhere["peak"] = max(elsewhere["peak"], matmul_peak())
        with open(raw, "w") as f:
            json.dump(state, f, indent=1)
    render(state, opts)


def measured_apart(results, key):
    """The line saying when ``key`` was measured, where it was not in the header's run."""
    when = results.get(key + "_measured")
    if not when:
        return []
    elsewhere = results.get(key + "_machine")
    where = (", on another machine: %s (float32 matmul peak %.1f GFLOP/s)"
             % (elsewhere["machine"], elsewhere["peak"]) if elsewhere else "")
    return ["Measured apart from the run in the header: %s%s." % (when, where), ""]


def render(state, opts):
    results, conv, jtime, peak = state["results"], state["conv"], state["jtime"], state["peak"]
    out = ["# Benchmarks", "",
           "Regenerated by `python benchmarks/run_all.py%s` (%s to %s UTC)."
           % (" --quick" if state["quick"] else "", state["started"], state["finished"]), "",
           "* Machine: %s" % state["machine"],
           "* Versions: %s" % ", ".join("%s %s" % kv for kv in state["versions"].items()),
           "* Load (`uptime`) before: `%s`" % state["load_before"],
           "* Load (`uptime`) after: `%s`" % state["load_after"],
           "* Measured float32 matmul peak (XLA, 2048x2048): **%.1f GFLOP/s**" % peak,
           ] + ([
           "* Some tables were measured apart from this run on another machine (`run_all.py "
           "--only`): the line under each such title names it; the contenders in a table "
           "ran side by side there, and the targets table names the machine beside those "
           "nets."] if any(k.endswith("_machine") for k in results) else []) + [
           "",
           "Ratios are *jcaffe's median / the contender's median* measured side by side in one "
           "process (so < 1 means jcaffe is faster). BVLC Caffe and the issue's figures are "
           "quoted from issue 9 (2-core machine, unloaded), not measured here. Peak RSS: one "
           "fresh process per contender (setup, first call, five more calls; VmHWM). First "
           "call: tracing, compiling and running the first call; second call: the next one, "
           "where jcaffe's deploy forward compiles its second, slim program (it returns "
           "only the outputs: README, 'Every blob can be read after forward()'); '-': not "
           "timed.", ""]
    sections = [
        ("Training step, LeNet (batch 64, 1x28x28)", "train_lenet",
         forward_gflop("lenet", False) * 3, REFERENCE["lenet"]),
        ("Training step, CIFAR-10 quick (batch 100, 3x32x32; Caffe's examples/cifar10)",
         "train_cifar10_quick", forward_gflop("cifar10_quick", False) * 3, None),
        ("Training step, a 3-d encoder-decoder (batch 2, 1x32x64x64; V-Net's kind, made for "
         "bench_conv3d.py: 3x3x3 convolutions of 16-64 channels, 2x2x2 ones of stride 2 "
         "down and Deconvolutions up, Eltwise sums, SoftmaxWithLoss per voxel; jcaffe also "
         "with its 3-d maps unfolded, on XLA's 3-d convolution; not an issue target)",
         "train_volume", bench_conv3d.gflop(2, (32, 64, 64)) * 3, None),
        ("Training step, CIFAR-10 full (batch 100, 3x32x32; LRN within a channel)",
         "train_cifar10_full", forward_gflop("cifar10_full", False) * 3, None),
        ("Training step, CIFAR-10 full with BatchNorm and Sigmoid (batch 100, 3x32x32; "
         "Caffe's cifar10_full_sigmoid_train_test_bn, batch statistics)",
         "train_cifar10_full_sigmoid_bn", forward_gflop("cifar10_full_sigmoid_bn", False) * 3,
         None),
        ("Training step, MNIST autoencoder (batch 100, 784-1000-500-250-30 and back; "
         "Sigmoid, SigmoidCrossEntropyLoss; Caffe's examples/mnist)", "train_mnist_autoencoder",
         forward_gflop("mnist_autoencoder", False) * 3, None),
        ("Training step, MNIST siamese (batch 64 pairs, 2x28x28 cut by a Slice; two LeNet-style "
         "towers sharing their params by name, ContrastiveLoss; Caffe's examples/siamese)",
         "train_mnist_siamese", forward_gflop("mnist_siamese", False) * 3, None),
        ("Training step, MTCNN's P-Net (batch 384 crops, 3x12x12; three 3x3 convolutions "
         "with PReLUs, two 1x1 heads: SoftmaxWithLoss and EuclideanLoss)", "train_mtcnn_pnet",
         forward_gflop("mtcnn_pnet", False) * 3, None),
        ("Training step, SRCNN (batch 128 sub-images, 1x33x33; unpadded 9x9, 1x1 and 5x5 "
         "convolutions to one channel, EuclideanLoss against the 21x21 centres)", "train_srcnn",
         forward_gflop("srcnn", False) * 3, None),
        ("Training step, FSRCNN 3x (batch 128 sub-images, 1x11x11; a 5x5 of 56, a 1x1 to 12, "
         "four 3x3s of 12, a 1x1 to 56, PReLUs, a 9x9 Deconvolution of stride 3 to one "
         "channel, EuclideanLoss at 21x21)", "train_fsrcnn",
         forward_gflop("fsrcnn", False) * 3, None),
        ("Training step, char-rnn (50 timesteps x 50 streams; an Embed of 65 characters, "
         "two LSTMs of 128 units, a classifier at each timestep, SoftmaxWithLoss)",
         "train_char_rnn", forward_gflop("char_rnn", False) * 3, None),
        ("Training step, CaffeNet (batch 32, 3x227x227)", "train_caffenet",
         forward_gflop("caffenet", False) * 3, REFERENCE["caffenet"]),
        ("Training step, AlexNet (batch 32, 3x227x227; CaffeNet's layers with each LRN "
         "before its pool, as the original)", "train_alexnet",
         forward_gflop("alexnet", False) * 3, None),
        ("Training step, GoogLeNet (batch 32, 3x224x224; three losses, two of them the "
         "auxiliary heads)", "train_googlenet", forward_gflop("googlenet", False) * 3, None),
        ("Training step, ResNet-18 (batch 32, 3x224x224; basic blocks, two 3x3s each, two to "
         "a stage)", "train_resnet18", forward_gflop("resnet18", False) * 3, None),
        ("Training step, ResNet-34 (batch 32, 3x224x224; ResNet-18's basic blocks 3, 4, 6 "
         "and 3 to a stage)", "train_resnet34", forward_gflop("resnet34", False) * 3, None),
        ("Training step, ResNet-50 (batch 16, 3x224x224; BatchNorm with batch statistics, "
         "Scale, Eltwise)", "train_resnet50", forward_gflop("resnet50", False) * 3, None),
        ("Training step, ResNet-152 (batch 8, 3x224x224; ResNet-50's bottlenecks 3, 8, 36 and "
         "3 to a stage, as its Caffe release)", "train_resnet152",
         forward_gflop("resnet152", False) * 3, None),
        ("Training step, MobileNet (batch 32, 3x224x224; 13 depthwise convolutions, "
         "group = channels)", "train_mobilenet", forward_gflop("mobilenet", False) * 3, None),
        ("Training step, MobileNet v2 (batch 32, 3x224x224; 17 inverted residual blocks, a "
         "1x1 expansion, a depthwise 3x3 and a linear 1x1 each, 10 of them summed with "
         "their input)", "train_mobilenet_v2", forward_gflop("mobilenet_v2", False) * 3, None),
        ("Training step, SqueezeNet v1.1 (batch 32, 3x227x227; eight Fire modules, a 1x1 "
         "squeeze expanded by a 1x1 and a 3x3 side by side and joined by Concat)",
         "train_squeezenet", forward_gflop("squeezenet", False) * 3, None),
        ("Training step, Network in Network (batch 32, 3x224x224; four blocks of a "
         "convolution and two 1x1 ones, a 6x6 AVE pool over the class maps)", "train_nin",
         forward_gflop("nin", False) * 3, None),
        ("Training step, DenseNet-121 (batch 16, 3x224x224; four dense blocks of 6-24 "
         "BN-Scale-ReLU-conv pairs, each joined to a running Concat)", "train_densenet121",
         forward_gflop("densenet121", False) * 3, None),
        ("Training step, SE-BN-Inception (batch 32, 3x224x224; BN-Inception's ten modules, "
         "BatchNorm and Scale after every convolution, each module's channels weighted per "
         "image by a squeeze-and-excitation block: a Scale with two bottoms)",
         "train_se_bn_inception", forward_gflop("se_bn_inception", False) * 3, None),
        ("Training step, Inception-v3 (batch 16, 3x299x299; BatchNorm and Scale after every "
         "convolution, 7x7s factored into 1x7 and 7x1, and 1x3 and 3x1 side by side)",
         "train_inception_v3", forward_gflop("inception_v3", False) * 3, None),
        ("Training step, Inception-v4 (batch 8, 3x299x299; a stem of three joins, 14 "
         "Inception modules and two reductions, BatchNorm and Scale after each of its 149 "
         "convolutions, 7x7s factored into 1x7 and 7x1)", "train_inception_v4",
         forward_gflop("inception_v4", False) * 3, None),
        ("Training step, Inception-ResNet-v2 (batch 8, 3x299x299; 40 residual blocks of "
         "Inception branches, each joined, taken back by a 1x1 and added to the trunk by an "
         "Eltwise SUM with coeff 0.1-0.2)", "train_inception_resnet_v2",
         forward_gflop("inception_resnet_v2", False) * 3, None),
        ("Training step, Xception (batch 8, 3x299x299; 34 separable convolutions, each a "
         "depthwise 3x3 with group = channels, 64 to 1536 of them, then a 1x1; residual "
         "blocks whose stride-2 MAX pools rely on Caffe's ceil; pure JAX not timed, as "
         "ResNeXt-50's)", "train_xception",
         forward_gflop("xception", False) * 3, None),
        ("Training step, ResNeXt-50 32x4d (batch 16, 3x224x224; 16 grouped 3x3 convolutions, "
         "32 groups of 4-32 channels; pure JAX not timed in every run: 103 s a step, see "
         "NOTES.md)", "train_resnext50", forward_gflop("resnext50", False) * 3, None),
        ("Training step, DPN-92 (batch 8, 3x224x224; pre-activation blocks with 3x3 "
         "convolutions in 32 groups, each block's last 1x1 cut by a Slice into a residual "
         "Eltwise path and a dense Concat path; pure JAX not timed, as ResNeXt-50's)",
         "train_dpn92", forward_gflop("dpn92", False) * 3, None),
        ("Training step, FCN-32s (batch 1, 3x500x500; VGG-16 padded by 100, a 64x64 stride-32 "
         "Deconvolution with lr_mult 0, Crop, per-pixel SoftmaxWithLoss)", "train_fcn32s",
         forward_gflop("fcn32s", False) * 3, None),
        ("Training step, OpenPose (batch 1, 3x368x368; CMU's COCO body model: VGG-19's "
         "first ten convolutions, six stages of two branches with five 7x7s each past the "
         "first, twelve masked EuclideanLosses)", "train_openpose",
         forward_gflop("openpose", False) * 3, None),
        ("Training step, DeepLab-LargeFOV (batch 2, 3x321x321; VGG-16 with stride 1 from "
         "pool4, conv5's 3x3s dilated by 2, fc6 a 3x3 dilated by 12 with 1024 outputs, "
         "per-pixel SoftmaxWithLoss at 41x41 ignoring label 255)", "train_deeplab_largefov",
         forward_gflop("deeplab_largefov", False) * 3, None),
        ("Training step, MTCNN's O-Net (batch 256, 3x48x48; four convolutions and an "
         "InnerProduct, each followed by a PReLU with a slope per channel, three heads: "
         "SoftmaxWithLoss and two EuclideanLosses)", "train_mtcnn_onet",
         forward_gflop("mtcnn_onet", False) * 3, None),
        ("Training step, U-Net (batch 1, 1x572x572; its release's phseg_v5: unpadded 3x3s, "
         "four 2x2 up-convolutions of stride 2 (Deconvolution), each joined to the level's "
         "cropped features by a Concat, SoftmaxWithLoss at 388x388)", "train_unet",
         forward_gflop("unet", False) * 3, None),
        ("Training step, Colorization (batch 4, 1x176x176; its release's net: 3x3s halving to "
         "22x22, two blocks dilated by 2 on 512 channels, BatchNorm without Scale, a learned "
         "4x4 Deconvolution of stride 2, SoftmaxWithLoss over 313 colour bins at 44x44)",
         "train_colorization", forward_gflop("colorization", False) * 3, None),
        ("Training step, ResNet-56 for CIFAR-10 (batch 128, 3x32x32; a Caffe release's: 27 "
         "basic blocks 16, 32 and 64 wide at 32x32, 16x16 and 8x8, BatchNorm and Scale after "
         "each convolution, 1x1 projections of stride 2)", "train_resnet56_cifar",
         forward_gflop("resnet56_cifar", False) * 3, None),
        ("Training step, LRCN captioning (20 timesteps x 100 streams; Embed, two LSTMs of "
         "1000 units, the second with 1000 image features as its static input, a classifier "
         "over 8801 words at each timestep, SoftmaxWithLoss ignoring padding)", "train_lrcn",
         forward_gflop("lrcn", False) * 3, None),
        ("Training step, a word-level LSTM language model (Zaremba et al.'s medium: 35 "
         "timesteps x 20 streams; an Embed of 10,000 words to 650, two LSTMs of 650 units, "
         "Dropout 0.5 between layers, a classifier over 10,000 words at each timestep)",
         "train_ptb_lstm", forward_gflop("ptb_lstm", False) * 3, None),
        ("Training step, Light CNN-9 (batch 20, 1x128x128 faces; a Max-Feature-Map, Slice "
         "of the channels and Eltwise MAX, after each of nine products; a 10,575-way "
         "classifier)", "train_lightcnn9", forward_gflop("lightcnn9", False) * 3, None),
        ("Training step, VGG-16 (batch 16, 3x224x224; thirteen 3x3 convolutions)",
         "train_vgg16", forward_gflop("vgg16", False) * 3, None),
        ("Training step with Adam, CaffeNet (batch 32; jcaffe's AdamSolver, the same update "
         "in pure JAX, torch.optim.Adam; not an issue target)", "train_caffenet_adam",
         forward_gflop("caffenet", False) * 3, None),
        ("Forward (deploy, TEST), LeNet", "forward_lenet", forward_gflop("lenet", True), None),
        ("Forward (deploy, TEST), CIFAR-10 quick (batch 100)", "forward_cifar10_quick",
         forward_gflop("cifar10_quick", True), None),
        ("Forward (deploy, TEST), CIFAR-10 full (batch 100)", "forward_cifar10_full",
         forward_gflop("cifar10_full", True), None),
        ("Forward (deploy, TEST), CIFAR-10 full with BatchNorm and Sigmoid (batch 100)",
         "forward_cifar10_full_sigmoid_bn", forward_gflop("cifar10_full_sigmoid_bn", True), None),
        ("Forward (deploy, TEST), MNIST autoencoder (batch 100)", "forward_mnist_autoencoder",
         forward_gflop("mnist_autoencoder", True), None),
        ("Forward (deploy, TEST), MNIST siamese (batch 64 pairs; one tower, to the 2-d "
         "feature)", "forward_mnist_siamese", forward_gflop("mnist_siamese", True), None),
        ("Forward (deploy, TEST), MTCNN's P-Net (batch 384 crops, 3x12x12)",
         "forward_mtcnn_pnet", forward_gflop("mtcnn_pnet", True), None),
        ("Forward (deploy, TEST), SRCNN (batch 128 sub-images, 1x33x33)", "forward_srcnn",
         forward_gflop("srcnn", True), None),
        ("Forward (deploy, TEST), FSRCNN (batch 128 sub-images, 1x11x11)", "forward_fsrcnn",
         forward_gflop("fsrcnn", True), None),
        ("Forward (deploy, TEST), char-rnn (50 timesteps x 50 streams)", "forward_char_rnn",
         forward_gflop("char_rnn", True), None),
        ("Forward (deploy, TEST), CaffeNet", "forward_caffenet",
         forward_gflop("caffenet", True), None),
        ("Forward (deploy, TEST), AlexNet (batch 32, 3x227x227)", "forward_alexnet",
         forward_gflop("alexnet", True), None),
        ("Forward (deploy, TEST), GoogLeNet (batch 32, 3x224x224)", "forward_googlenet",
         forward_gflop("googlenet", True), None),
        ("Forward (deploy, TEST), ResNet-18 (batch 32, 3x224x224)", "forward_resnet18",
         forward_gflop("resnet18", True), None),
        ("Forward (deploy, TEST), ResNet-34 (batch 32, 3x224x224)", "forward_resnet34",
         forward_gflop("resnet34", True), None),
        ("Forward (deploy, TEST), ResNet-50 (batch 16, 3x224x224)", "forward_resnet50",
         forward_gflop("resnet50", True), None),
        ("Forward (deploy, TEST), ResNet-152 (batch 8, 3x224x224)", "forward_resnet152",
         forward_gflop("resnet152", True), None),
        ("Forward (deploy, TEST), MobileNet (batch 32, 3x224x224)", "forward_mobilenet",
         forward_gflop("mobilenet", True), None),
        ("Forward (deploy, TEST), MobileNet v2 (batch 32, 3x224x224)", "forward_mobilenet_v2",
         forward_gflop("mobilenet_v2", True), None),
        ("Forward (deploy, TEST), SqueezeNet v1.1 (batch 32, 3x227x227)", "forward_squeezenet",
         forward_gflop("squeezenet", True), None),
        ("Forward (deploy, TEST), Network in Network (batch 32, 3x224x224)", "forward_nin",
         forward_gflop("nin", True), None),
        ("Forward (deploy, TEST), DenseNet-121 (batch 16, 3x224x224)", "forward_densenet121",
         forward_gflop("densenet121", True), None),
        ("Forward (deploy, TEST), SE-BN-Inception (batch 32, 3x224x224)",
         "forward_se_bn_inception", forward_gflop("se_bn_inception", True), None),
        ("Forward (deploy, TEST), Inception-v3 (batch 16, 3x299x299)",
         "forward_inception_v3", forward_gflop("inception_v3", True), None),
        ("Forward (deploy, TEST), Inception-v4 (batch 8, 3x299x299)",
         "forward_inception_v4", forward_gflop("inception_v4", True), None),
        ("Forward (deploy, TEST), Inception-ResNet-v2 (batch 8, 3x299x299)",
         "forward_inception_resnet_v2", forward_gflop("inception_resnet_v2", True), None),
        ("Forward (deploy, TEST), Xception (batch 8, 3x299x299)", "forward_xception",
         forward_gflop("xception", True), None),
        ("Forward (deploy, TEST), ResNeXt-50 (batch 16, 3x224x224)", "forward_resnext50",
         forward_gflop("resnext50", True), None),
        ("Forward (deploy, TEST), DPN-92 (batch 8, 3x224x224)", "forward_dpn92",
         forward_gflop("dpn92", True), None),
        ("Forward (deploy, TEST), FCN-32s (batch 1, 3x500x500)", "forward_fcn32s",
         forward_gflop("fcn32s", True), None),
        ("Forward (deploy, TEST), OpenPose (batch 1, 3x368x368; to net_output, both "
         "branches of the last stage)", "forward_openpose", forward_gflop("openpose", True),
         None),
        ("Forward (deploy, TEST), DeepLab-LargeFOV (batch 2, 3x321x321)",
         "forward_deeplab_largefov", forward_gflop("deeplab_largefov", True), None),
        ("Forward (deploy, TEST), MTCNN's O-Net (batch 256, 3x48x48; to conv6-1, the face "
         "scores)", "forward_mtcnn_onet", forward_gflop("mtcnn_onet", True), None),
        ("Forward (deploy, TEST), MTCNN's P-Net on one image (3x384x512; to conv4-1, the "
         "face scores of 187x251 windows)", "forward_mtcnn_pnet_image",
         forward_gflop("mtcnn_pnet_image", True), None),
        ("Forward (deploy, TEST), SRCNN on one image (1x512x512; to conv3, the 500x500 "
         "sharpened luminance)", "forward_srcnn_image", forward_gflop("srcnn_image", True),
         None),
        ("Forward (deploy, TEST), FSRCNN on one image (1x260x260; to conv3, the 768x768 "
         "upscaled luminance)", "forward_fsrcnn_image", forward_gflop("fsrcnn_image", True),
         None),
        ("Forward (deploy, TEST), U-Net (batch 1, 1x572x572)", "forward_unet",
         forward_gflop("unet", True), None),
        ("Forward (deploy, TEST), Colorization on one image (1x224x224; to conv8_313, the "
         "313 colour-bin scores at 56x56)", "forward_colorization_image",
         forward_gflop("colorization_image", True), None),
        ("Forward (deploy, TEST), ResNet-56 for CIFAR-10 (batch 128, 3x32x32)",
         "forward_resnet56_cifar", forward_gflop("resnet56_cifar", True), None),
        ("Forward (deploy, TEST), the word-level LSTM language model (35 timesteps x 20 "
         "streams, 10,000 words)", "forward_ptb_lstm", forward_gflop("ptb_lstm", True), None),
        ("Forward (deploy, TEST), Light CNN-9 (batch 20, 1x128x128)", "forward_lightcnn9",
         forward_gflop("lightcnn9", True), None),
        ("Forward (deploy, TEST), VGG-16 (batch 16, 3x224x224)", "forward_vgg16",
         forward_gflop("vgg16", True), None),
    ] + [("Forward (deploy, TEST), %s, one image (batch 1)" % targets.NAMES[name], "forward1_" + name,
          forward_gflop(name, True, 1), None) for name in SINGLE_IMAGE_NETS] + [
        ("pycaffe loop vs Solver.step, LeNet", "pyloop_lenet", None, None),
        ("Training step fed by a Data layer over LMDB, LeNet (1x28x28 records, scale)",
         "data_lenet", None, None),
        ("Training step fed by a Data layer over LMDB, CaffeNet (3x256x256 records, random "
         "227 crops, mirror, mean values)", "data_caffenet", None, None),
    ]
    for title, key, gflop, refs in sections:
        if key not in results:
            continue
        out.append("## " + title)
        out.append("")
        out += measured_apart(results, key)
        if results[key] is None:
            out.append("(failed; see the run's log)")
        else:
            out.append(data_table(results[key]) if key.startswith("data_")
                       else fmt_table(results[key], gflop, refs))
            if gflop:
                out.append("")
                out.append("GFLOP/s: %.2f GFLOP per call (%s%s) "
                           "/ median time." % (gflop, products(key), "; training step = 3x forward"
                                               if key.startswith("train") else ""))
            rss = results[key].get("rss_mb", {})
            mine = next((v for n, v in rss.items() if n.startswith("jcaffe")), None)
            net = key.split("_", 1)[1]
            if key.startswith("train_") and net in targets.MEMORY_NETS and mine:
                count, buffers = caffe_memory_mb(net), caffe_layer_buffers_mb(net)
                out.append("")
                sequence = net in nets.SEQUENCE_STREAMS
                out.append("Memory: BVLC Caffe's arrays for this step, by count, %.0f MB (params "
                           "x3: data, diff, momentum; every blob's data and diff; %s), and %.0f "
                           "MB with its layers' own buffers (%s); not its process or "
                           "libraries. jcaffe's peak RSS / those: %.2fx and %.2fx."
                           % (count, "one batch, HDF5Data's" if sequence else
                              "4 prefetched batches", count + buffers,
                              "each LSTM's unrolled net, the softmax's probabilities, split "
                              "tops' diffs" if sequence else
                              "im2col columns, pooling indices, LRN scales, dropout masks, "
                              "BatchNorm's and an in-place Scale's copies, split tops' diffs",
                              mine / count, mine / (count + buffers)))
        if key.startswith("data_") and results[key] is not None:
            out.append("")
            out.append("Solver.step(1) waits for each step's loss, so the host's work for the "
                       "next batch cannot overlap the step; Solver.step(10) rows time ten steps "
                       "per call, the host reading each batch while the step before computes, as "
                       "`jcaffe train` does.")
        out.append("")
        out.append("`%s`" % results[key + "_cmd"])
        out.append("")
    if results.get("compile_cache"):
        import bench_compile_cache
        out += ["## First call with the persistent compilation cache", "",
                "One fresh process per run: setup (`nets.jcaffe_solver`), the first "
                "`Solver.step(1)` (trace, lower, XLA compile or load from the cache, run) and "
                "the second. No cache; a cold cache (an empty directory: compile, then write); "
                "a warm cache (the same directory in the next process: load). The `jcaffe` "
                "command line keeps this cache by default (`jcaffe/compile_cache.py`). 'XLA "
                "compile' sums JAX's backend compile events of the first step (with a warm "
                "cache: the programs under the cache's 0.1 s threshold, which are not written).",
                ""] + measured_apart(results, "compile_cache") + [
                bench_compile_cache.table(results["compile_cache"]["rows"]), "",
                "`%s`" % results["compile_cache_cmd"], ""]
    if results.get("host"):
        import bench_host
        out += ["## Host work per call (what an accelerator's step waits for)", "",
                "The Python thread's CPU time per call (`time.thread_time()`, each call after "
                "the previous one finished), batch %d, medians over rounds alternating between "
                "the contenders, a fresh process for each net and kind of call: jcaffe's `Solver.step(1)` and deploy `Net.forward()` against "
                "pure JAX's jitted step and forward. jcaffe's jitted call is shown apart, with "
                "the arrays it passes and gets back (params, solver history, the blob buffers "
                "it recycles; the runtime spends a few microseconds on each). On a GPU this is "
                "the time a call that waits for its result spends outside the device's work "
                "(benchmarks/NOTES.md, thirty-first and thirty-second sessions)."
                % results["host"]["batch"], ""] + measured_apart(results, "host") + [
                bench_host.table(results["host"]["rows"]), "", "`%s`" % results["host_cmd"], ""]
    if results.get("layers"):
        import bench_layers
        out += ["## Layer catalog: each layer's backward vs `jax.vjp` of its own forward", "",
                "One jitted call per contender on the same float32 arrays (batch 32, 64x28x28 "
                "maps, 1000 classes, sequences of 20): the forward alone; forward + the "
                "layer's hand-written backward; forward under `jax.vjp` + its pullback. "
                "Medians; explicit / autodiff above 1 means jax's derivative of the same "
                "forward is faster. Tops and diffs are each call's outputs, so layers that "
                "only move memory (Reshape, Split, Flatten) time a copy of them. A case "
                "above %.2fx is set up and measured again after the pass (the last "
                "column; '-': not above the line, or measured before the column existed)."
                % bench_layers.RECHECK_ABOVE, "",
                bench_layers.render(results["layers"]["rows"]), "",
                "`%s`" % results["layers_cmd"], ""]
    out += ["## Convolution formulations (jcaffe's Convolution layer, float32)", "",
            conv.strip(), "", "`%s`" % results.get("conv_cmd", "python benchmarks/bench_conv.py"),
            ""]
    out += (["## `jcaffe time` vs the benchmark (LeNet, batch 64)", ""]
            + measured_apart(results, JTIME_KEY) + [jtime, ""])
    if not state["quick"]:
        out += ["## Targets, measured in this run", "",
                "Issue 9's targets, computed from the tables above by `benchmarks/targets.py` "
                "(each row names its rule; ratios are jcaffe's median over the other's, from "
                "the same table). What the numbers mean, and what is left, is in the notes "
                "below.", "",
                targets.table(state, REFERENCE, lambda net: forward_gflop(net, False) * 3,
                              lambda net: (caffe_memory_mb(net),
                                           caffe_memory_mb(net) + caffe_layer_buffers_mb(net))),
                ""]
    if opts.notes and os.path.exists(opts.notes):
        with open(opts.notes) as f:
            out += [f.read().strip(), ""]
    with open(opts.out, "w") as f:
        f.write("\n".join(out))
    print("wrote", opts.out)


JTIME_ITERATIONS = 50
JTIME_KEY = "jtime"     # (--only's name for `jcaffe time`'s paragraph, and its state key)


def jcaffe_time(tmp):
    """`jcaffe time` on the LeNet train net (Input layers): the median of its timed
    iterations' forward-backward (the benchmarks' statistic), and its average (Caffe's)."""
    path = os.path.join(tmp, "lenet_bench.prototxt")
    from google.protobuf import text_format
    with open(path, "w") as f:
        f.write(text_format.MessageToString(nets.net_param("lenet")))
    cmd = [sys.executable, "-m", "jcaffe.cli", "time", "-model", path,
           "-iterations", str(JTIME_ITERATIONS)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    text = res.stdout + res.stderr
    m = re.search(r"Average Forward-Backward: ([0-9.e+-]+) ms", text)
    mean = float(m.group(1)) if m else float("nan")
    each = [float(t) for t in re.findall(r"forward-backward time: ([0-9.e+-]+) ms", text)]
    median = statistics.median(each) if each else float("nan")
    return ("`jcaffe time -model <lenet train net> -iterations %d`: forward-backward, median "
            "of its iterations **%.1f ms** (min %.1f, max %.1f; its Average Forward-Backward, "
            "Caffe's statistic, %.1f ms). Compare `forward()+backward()` in the pycaffe-loop "
            "table above; `jcaffe time` syncs the outputs after forward and every param diff "
            "after backward, as Caffe's timer does." % (
                JTIME_ITERATIONS, median, min(each, default=float("nan")),
                max(each, default=float("nan")), mean))


if __name__ == "__main__":
    main()
