"""Issue 9's targets, read from one run_all.py run (results.json): the table RESULTS.md
shows under "Targets, measured in this run", rendered with the rest of the file, so it
cannot fall behind the tables above it.

Each row states its rule and the numbers it compares; "met?" is computed from them
("reported" where the issue asks for a figure, not a bound). What the numbers mean and
what is left is benchmarks/NOTES.md's prose, written by hand.
"""
import re

TRAIN_NETS = ("lenet", "cifar10_quick", "cifar10_full", "cifar10_full_sigmoid_bn",
              "mnist_autoencoder", "mnist_siamese", "mtcnn_pnet", "srcnn", "fsrcnn",
              "char_rnn",
              "caffenet", "alexnet", "googlenet",
              "resnet18", "resnet34", "resnet50", "resnet152", "mobilenet", "mobilenet_v2",
              "squeezenet", "nin", "densenet121",
              "se_bn_inception", "inception_v3", "inception_v4", "inception_resnet_v2",
              "xception", "resnext50", "dpn92", "fcn32s", "openpose", "deeplab_largefov",
              "unet", "resnet56_cifar", "colorization", "mtcnn_onet", "lrcn",
              "ptb_lstm", "lightcnn9", "vgg16")
# Nets timed in deploy forwards only (P-Net, SRCNN, FSRCNN and Colorization on a whole
# image: they train on crops).
DEPLOY_NETS = ("mtcnn_pnet_image", "srcnn_image", "fsrcnn_image", "colorization_image")
# The training steps whose peak memory is held against Caffe's count (not the MNIST and
# CIFAR-10 nets': their arrays are 15-60 MB, a tenth of the jax runtime alone; not
# VGG-16's, whose step run_all times without the memory subprocesses).
MEMORY_NETS = TRAIN_NETS[TRAIN_NETS.index("caffenet"):-1]
NAMES = {"lenet": "LeNet", "cifar10_quick": "CIFAR-10 quick", "cifar10_full": "CIFAR-10 full",
         "cifar10_full_sigmoid_bn": "CIFAR-10 full BN",
         "mnist_autoencoder": "MNIST autoencoder", "mnist_siamese": "MNIST siamese",
         "caffenet": "CaffeNet", "alexnet": "AlexNet", "googlenet": "GoogLeNet",
         "resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50",
         "resnet152": "ResNet-152",
         "mobilenet": "MobileNet", "mobilenet_v2": "MobileNet v2",
         "squeezenet": "SqueezeNet", "nin": "NIN",
         "densenet121": "DenseNet-121", "se_bn_inception": "SE-BN-Inception",
         "inception_v3": "Inception-v3", "inception_v4": "Inception-v4",
         "inception_resnet_v2": "Inception-ResNet-v2",
         "xception": "Xception", "resnext50": "ResNeXt-50", "dpn92": "DPN-92",
         "fcn32s": "FCN-32s", "openpose": "OpenPose",
         "deeplab_largefov": "DeepLab-LargeFOV", "unet": "U-Net",
         "resnet56_cifar": "ResNet-56 (CIFAR-10)", "colorization": "Colorization",
         "colorization_image": "Colorization, one image", "mtcnn_onet": "MTCNN O-Net",
         "mtcnn_pnet": "MTCNN P-Net", "mtcnn_pnet_image": "MTCNN P-Net, one image",
         "srcnn": "SRCNN", "srcnn_image": "SRCNN, one image",
         "fsrcnn": "FSRCNN", "fsrcnn_image": "FSRCNN, one image",
         "lrcn": "LRCN", "char_rnn": "char-rnn",
         "ptb_lstm": "PTB LSTM (medium)", "lightcnn9": "Light CNN-9", "vgg16": "VGG-16"}
PURE_JAX = "pure JAX"
PYTORCH = "PyTorch eager"
JTIME_AGREES = (0.8, 1.25)       # `jcaffe time` / forward()+backward(): "within noise"
NOT_RUN = "not measured in this run", "not run"     # a target whose benchmark failed


def _medians(results, key):
    """{contender: median ms} of one benchmark, or None where it did not run."""
    data = results.get(key)
    if not data:
        return None
    return {name: r["median_ms"] for name, r in data["results"].items()}


def _jcaffe(medians):
    return next(ms for name, ms in medians.items() if name.startswith("jcaffe"))


def _other(medians, prefix):
    return next((ms for name, ms in medians.items() if name.startswith(prefix)), None)


def _label(results, net, key):
    """The net's name, with the machine it ran on where ``run_all.py --only`` measured it
    apart from the header's run on another one (``results[key + "_machine"]``)."""
    elsewhere = results.get(key + "_machine")
    return NAMES[net] + (" on " + elsewhere["machine"].split(",")[0] if elsewhere else "")


def _ratios(results, prefix, keys):
    """[(net, label, jcaffe ms, other ms)] over the benchmarks ``keys`` ({net: key}) that
    timed a contender named ``prefix...``."""
    rows = []
    for net, key in keys.items():
        medians = _medians(results, key)
        other = medians and _other(medians, prefix)
        if other:
            rows.append((net, _label(results, net, key), _jcaffe(medians), other))
    return rows


def _verdict(ratios, bound):
    if not ratios:
        return NOT_RUN[1]
    return "yes" if all(mine / other <= bound for _, _, mine, other in ratios) else "**no**"


def _listing(ratios, with_ms):
    return "; ".join("%s %.2fx%s" % (label, mine / other,
                                     " (%.1f vs %.1f ms)" % (mine, other) if with_ms else "")
                     for _, label, mine, other in ratios) or "-"


def _ratio_rows(results, what, keys, bound):
    rows = []
    for prefix, with_ms in ((PURE_JAX, False), (PYTORCH, True)):
        ratios = _ratios(results, prefix, keys)
        timed = {net for net, _, _, _ in ratios}
        missing = [_label(results, net, key) for net, key in keys.items()
                   if results.get(key) and net not in timed]
        listing = _listing(ratios, with_ms)
        if missing:
            listing += "; not timed against it: " + ", ".join(missing)
        rows.append(("%s <= %.1fx %s" % (what, bound, "naive pure JAX" if prefix == PURE_JAX
                                          else prefix), listing, _verdict(ratios, bound)))
    return rows


def _caffe_bridge(results, reference):
    """jcaffe / BVLC Caffe through the issue's quoted figures: our ratio to a contender
    measured here times the issue's ratio of that contender to Caffe."""
    parts, worst = [], 0.0
    for net in ("lenet", "caffenet"):
        medians = _medians(results, "train_" + net)
        ref = reference.get(net)
        if not medians or not ref:
            continue
        for prefix, quoted in ((PYTORCH, "PyTorch eager (issue)"), (PURE_JAX, "naive JAX (issue)")):
            other = _other(medians, prefix)
            if other:
                bridged = _jcaffe(medians) / other * ref[quoted] / ref["BVLC Caffe"]
                worst = max(worst, bridged)
                parts.append("%s via %s %.2fx" % (_label(results, net, "train_" + net), prefix,
                                                  bridged))
    if not parts:
        return None
    return ("train step <= 0.8x BVLC Caffe (bridged through the issue's quoted figures, "
            "not measured)", "; ".join(parts),
            "likely" if worst <= 0.8 else "**no**")


def _memory_row(results, caffe_mb):
    target = ("peak memory <= 1.3x BVLC Caffe (its arrays and its layers' buffers, counted "
              "from the net: Caffe is not run here)")
    parts, worst = [], 0.0
    for net in MEMORY_NETS:
        data = results.get("train_" + net)
        rss = data and data.get("rss_mb", {})
        mine = rss and next((v for n, v in rss.items() if n.startswith("jcaffe")), None)
        if not mine:
            continue
        count, with_buffers = caffe_mb(net)
        worst = max(worst, mine / with_buffers)
        parts.append("%s %.0f MB: %.2fx Caffe's arrays with its layers' buffers (%.0f MB), "
                     "%.2fx the bare count (%.0f MB)"
                     % (_label(results, net, "train_" + net), mine, mine / with_buffers,
                        with_buffers, mine / count, count))
    if not parts:
        return (target,) + NOT_RUN
    return (target, "; ".join(parts), "yes" if worst <= 1.3 else "**no**")


def _pyloop_row(results):
    target = "pycaffe loop <= 1.5x Solver.step (LeNet)"
    medians = _medians(results, "pyloop_lenet")
    if not medians:
        return (target,) + NOT_RUN
    step = medians["jcaffe Solver.step"]
    loop = medians["jcaffe forward()+backward()+apply_update()"]
    return (target, "forward()+backward()+apply_update() %.2fx (%.1f vs %.1f ms)"
            % (loop / step, loop, step),
            "yes" if loop / step <= 1.5 else "**no**")


def _python_layers_row(results):
    """The step with its loss as Python layers (bench_pyloop.py), numpy and JAX, over the
    step with the built-in SoftmaxWithLoss."""
    medians = _medians(results, "pyloop_lenet") or {}
    step = medians.get("jcaffe Solver.step")
    kinds = [(kind, medians.get("jcaffe Solver.step, loss as %s" % label))
             for kind, label in (("numpy", "numpy Python layers"), ("JAX", "Python layers in JAX"))]
    kinds.append(("numpy accuracy at the end (the step's own loss)",
                  medians.get("jcaffe Solver.step, numpy Python accuracy at the end")))
    parts = ["%s %.2fx (%.1f ms)" % (kind, ms / step, ms) for kind, ms in kinds if ms and step]
    if not parts:
        return None
    return ("LeNet's step with its loss as Python layers / with SoftmaxWithLoss (not an issue "
            "target)", "; ".join(parts), "reported")


def _compile_row(results):
    data = results.get("train_caffenet")
    if not data:
        return ("CaffeNet step compile < 30 s",) + NOT_RUN
    first = next(r["compile_s"] for n, r in data["results"].items() if n.startswith("jcaffe"))
    text = "first call %.1f s" % first
    cache = (results.get("compile_cache") or {}).get("rows", {})
    warm = cache.get("caffenet", {}).get("warm cache")
    if warm:
        text += "; %.1f s with a warm compilation cache" % warm["first_s"]
    return ("CaffeNet step compile < 30 s", text, "yes" if first < 30 else "**no**")


def _gflops_row(results, peak, gflop):
    parts = []
    for net in TRAIN_NETS:
        key = "train_" + net
        medians = _medians(results, key)
        if medians:
            rate = gflop(net) / _jcaffe(medians) * 1000
            elsewhere = results.get(key + "_machine")
            own = elsewhere["peak"] if elsewhere else peak
            parts.append((rate / own, "%s %.1f (%.0f%%%s)" % (
                _label(results, net, key), rate, 100 * rate / own,
                " of its %.1f" % own if elsewhere else "")))
    if not parts:
        return None
    return ("training steps' GFLOP/s vs the matmul peak (%.1f GFLOP/s)" % peak,
            "; ".join(p for _, p in sorted(parts, reverse=True)), "reported")


def _jtime_row(results, jtime):
    target = "`jcaffe time` agrees with the benchmark (LeNet; within %.2f-%.2fx)" % JTIME_AGREES
    medians = _medians(results, "pyloop_lenet")
    m = re.search(r"\*\*([0-9.]+) ms\*\*", jtime or "")
    if not medians or not m:         # (a failed `jcaffe time` reports nan ms)
        return (target,) + NOT_RUN
    timed, looped = float(m.group(1)), medians["jcaffe forward()+backward()"]
    low, high = JTIME_AGREES
    return (target, "median forward-backward %.1f ms vs forward()+backward() %.1f ms: %.2fx"
            % (timed, looped, timed / looped),
            "yes" if low <= timed / looped <= high else "**no**")


def _data_row(results):
    parts = []
    for net in ("lenet", "caffenet"):
        medians = _medians(results, "data_" + net)
        if not medians:
            continue
        for steps in ("Solver.step(1)", "Solver.step(10)"):
            once = medians.get("jcaffe %s from Input (fed once)" % steps)
            for source, label in (("Data over LMDB", ""), ("a Python data layer", " Python layer")):
                fed = medians.get("jcaffe %s from %s" % (steps, source))
                if fed and once:
                    parts.append("%s %s%s %.2fx" % (_label(results, net, "data_" + net), steps,
                                                    label, fed / once))
    if not parts:
        return None
    return ("training from LMDB or a Python data layer (not an issue target): the step fed so / "
            "the Input-fed one", "; ".join(parts), "reported")


def rows(state, reference, gflop, caffe_mb):
    """The table's rows: (target, this run's numbers, met?). ``reference``: the issue's
    quoted figures per net; ``gflop(net)``: a training step's GFLOP; ``caffe_mb(net)``:
    (Caffe's arrays by count, with its layers' buffers) in MB."""
    results = state["results"]
    train = {net: "train_" + net for net in TRAIN_NETS}
    forward = {net: "forward_" + net for net in TRAIN_NETS + DEPLOY_NETS}
    one_image = {net: "forward1_" + net for net in TRAIN_NETS}
    out = _ratio_rows(results, "train step", train, 1.0)
    out.append(_caffe_bridge(results, reference))
    out += _ratio_rows(results, "deploy forward", forward, 1.0)
    ratios = _ratios(results, PYTORCH, one_image)
    if ratios:
        out.append(("deploy forward at one image vs PyTorch eager (not an issue target)",
                    _listing(ratios, True), "reported"))
    out += [_pyloop_row(results), _python_layers_row(results), _memory_row(results, caffe_mb),
            _compile_row(results),
            _gflops_row(results, state["peak"], gflop), _jtime_row(results, state.get("jtime")),
            _data_row(results)]
    return [row for row in out if row is not None]


def table(state, reference, gflop, caffe_mb):
    lines = ["| target | this run | met? |", "|---|---|---|"]
    lines += ["| %s | %s | %s |" % row for row in rows(state, reference, gflop, caffe_mb)]
    return "\n".join(lines)
