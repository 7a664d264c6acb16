"""jcaffe's deploy forward against the benchmarks' pure-JAX reference, on published
deploy prototxts: every blob both compute, one image, the same weights.

    python benchmarks/check_ports.py 'PORTS/cls/*/deploy_*.prototxt' [--train]

Each file's input (``input:``/``input_shape``, or an Input layer) is fed one Gaussian
image; its last Softmax is dropped (the reference stops at the scores). Both sides get
nets.py's reference weights and BatchNorm statistics. A line per file: OK or DIFF (the
largest difference of any blob, relative to that blob's largest magnitude, against
TOLERANCE), or FAIL with the error (a layer the reference does not write, a fork's layer
type). A fork's ``ceil_mode`` is read as BVLC's round_mode (jcaffe/forks.py), and the
line says so. Exit status 1 if any file is not OK.

``--train`` checks the backward instead, in float64 on both sides: two images and
labels, a SoftmaxWithLoss on the last top, BatchNorm on batch statistics
(``use_global_stats`` cleared, as Caffe's TRAIN default), Dropout's ratio 0; a float64
jcaffe net's ``forward()`` + ``backward()`` against ``jax.grad`` of the reference's
loss, every learned param's diff relative to its own largest magnitude, and the loss.
Float64, because these gradients are ill-conditioned in float32: batch statistics of
two images after the reference's small weights. On AIR-50 both float32 computations,
jcaffe's and the reference's, were 5-20% off float64 in some Scale biases, while the two
float64 ones agreed to 1e-13 (benchmarks/NOTES.md, fifty-fourth session). A param with
lr_mult 0 is not compared: Caffe computes no diff for it (it stays zero in jcaffe, as in
Caffe), while jax.grad differentiates every param; many converted ports freeze their
convolutions so. A diff is measured against at least ZERO_FLOOR times the net's largest
diff: a convolution's bias before a BatchNorm on batch statistics has a gradient of
zero, which both sides compute as rounding noise (ResNet-50's conv1, VGG-16-BN's).

The fifty-fourth session ran it on soeaver/caffe-model (commit 49dc8e0), 58
classification prototxts: 57 OK (largest difference 4.8e-6, VGG-19's fc6), one FAIL
(xception-dw's fork layer, ConvolutionDepthwise). 18 minutes on 2 cores. ``--train`` on
11 of them (ResNet-18/50, AIR-50, DenseNet-121, DPN-68, Inception-v1/v2/v3, Xception,
VGG-16-BN): OK, largest difference 3.3e-9, 30 s to 5 minutes each. The fifty-fifth ran
seven more: Inception-v4, Inception-ResNet-v2, ResNet-101-v2, ResNet-152, ResNeXt-50,
DPN-92 and WRN-50-2, OK, largest difference 1.1e-11, 51-158 s each.
"""
import glob
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nets  # noqa: E402

TOLERANCE = 1e-3           # float32 forwards
TRAIN_TOLERANCE = 1e-8     # float64 gradients (they agree to 1e-13 where right)
ZERO_FLOOR = 1e-6


def deploy_param(text):
    """(NetParameter with an Input layer of batch 1 and no final Softmax, its last top,
    whether a fork's ceil_mode was read as round_mode)."""
    from google.protobuf import text_format
    from jcaffe.proto import caffe_pb2 as pb
    forked = bool(re.search(r"ceil_mode:", text))
    text = re.sub(r"ceil_mode:\s*false", "round_mode: FLOOR", text)
    text = re.sub(r"ceil_mode:\s*true", "round_mode: CEIL", text)
    src = text_format.Parse(text, pb.NetParameter())
    out = pb.NetParameter(name=src.name)
    inp = out.layer.add(name="data", type="Input")
    if src.input:
        inp.top.append(src.input[0])
        dims = list(src.input_shape[0].dim) if src.input_shape else list(src.input_dim[:4])
    else:
        first = next(l for l in src.layer if l.type == "Input")
        inp.top.append(first.top[0])
        dims = list(first.input_param.shape[0].dim)
    inp.input_param.shape.add(dim=[1] + dims[1:])
    layers = [l for l in src.layer if l.type != "Input"]
    if layers and layers[-1].type == "Softmax":
        layers.pop()
    for layer in layers:
        out.layer.add().CopyFrom(layer)
    return out, layers[-1].top[0], forked


def train_param(param, final, batch=2):
    """The deploy ``param`` made a training net: ``batch`` images and labels, a
    SoftmaxWithLoss on ``final``, BatchNorm on batch statistics, Dropout's ratio 0."""
    from jcaffe.proto import caffe_pb2 as pb
    out = pb.NetParameter()
    out.CopyFrom(param)
    inp = out.layer[0]
    inp.input_param.shape[0].dim[0] = batch
    inp.top.append("label")
    inp.input_param.shape.add(dim=[batch])
    for layer in out.layer:
        if layer.type == "BatchNorm":
            layer.batch_norm_param.ClearField("use_global_stats")
        elif layer.type == "Dropout":
            layer.dropout_param.dropout_ratio = 0
    out.layer.add(name="loss", type="SoftmaxWithLoss", bottom=[final, "label"], top=["loss"])
    return out


def _both(param, phase, dtype):
    """(jcaffe's net in ``phase`` and ``dtype`` with the reference's weights and inputs,
    the reference's params, BatchNorm statistics and inputs as jax arrays in ``dtype``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import jcaffe
    net = jcaffe.Net(param, phase, dtype=dtype)
    nets.load_reference_params(net, param)
    inputs = nets.feeds(param)
    for name, value in inputs.items():
        net.blobs[name].data[...] = value

    def cast(a):        # (integer inputs, labels and indices, keep their type)
        return jnp.asarray(a, dtype if a.dtype == np.float32 else a.dtype)
    params = jax.tree_util.tree_map(cast, nets.init_params(param))
    stats = jax.tree_util.tree_map(cast, nets.init_stats(param))
    return net, params, stats, {k: cast(v) for k, v in inputs.items()}


def compare_train(param):
    """(the largest relative difference of any learned param's diff, its name, diffs
    compared), the losses' relative difference counted as one of them; float64."""
    import jax
    import numpy as np
    import jcaffe
    with jax.enable_x64(True):
        net, params, stats, feeds = _both(param, jcaffe.TRAIN, np.float64)
        loss = float(net.forward()["loss"])
        net.backward()
        forward = nets.jax_forward_fn(param, train=True)
        ref_loss, grads = jax.jit(jax.value_and_grad(
            lambda p: forward(p, feeds, jax.random.PRNGKey(0), stats)[0]))(params)
    worst, where = abs(loss - float(ref_loss)) / abs(float(ref_loss)), "loss"
    count = 1
    mults = nets.param_mults(param)
    learned = [(name, i, np.asarray(ref)) for name, diffs in grads.items()
               for i, ref in enumerate(diffs) if mults[name][i][0] != 0]
    floor = ZERO_FLOOR * max(np.abs(ref).max() for _, _, ref in learned)
    for name, i, ref in learned:
        scale = max(np.abs(ref).max(), floor)
        err = float(np.abs(net.params[name][i].diff - ref).max() / scale)
        count += 1
        if err > worst:
            worst, where = err, "%s[%d]" % (name, i)
    return worst, where, count


def compare(param):
    """(the largest relative difference of any blob, its name, blobs compared)."""
    import jax
    import numpy as np
    import jcaffe
    net, params, stats, feeds = _both(param, jcaffe.TEST, np.float32)
    net.forward()
    forward = nets.jax_forward_fn(param, train=False)
    blobs = jax.jit(lambda p, s, i: forward(p, i, None, s)[1])(params, stats, feeds)
    worst, where, count = 0.0, None, 0
    for name, ref in blobs.items():
        if name not in net.blobs:
            continue
        ref, ours = np.asarray(ref), net.blobs[name].data
        if ref.shape != ours.shape:
            return np.inf, "%s (shape %s, reference %s)" % (name, ours.shape, ref.shape), count
        scale = np.abs(ref).max()
        if scale == 0:
            continue
        count += 1
        err = float(np.abs(ours - ref).max() / scale)
        if err > worst:
            worst, where = err, name
    return worst, where, count


def main(pattern, train=False):
    import jax
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit("no file matches %r" % pattern)
    bad = 0
    for path in paths:
        start = time.time()
        try:
            with open(path) as f:
                param, final, forked = deploy_param(f.read())
            if train:
                worst, where, count = compare_train(train_param(param, final))
            else:
                worst, where, count = compare(param)
            ok = worst < (TRAIN_TOLERANCE if train else TOLERANCE)
            print("%s %s: %d %s, largest difference %.2e (%s)%s, %.0f s" % (
                "OK  " if ok else "DIFF", path, count, "diffs" if train else "blobs", worst,
                where,
                "; ceil_mode read as round_mode" if forked else "", time.time() - start),
                flush=True)
        except Exception as e:      # (one line per file; the run goes on)
            ok = False
            print("FAIL %s: %s: %s" % (path, type(e).__name__, str(e).splitlines()[0][:300]),
                  flush=True)
        bad += not ok
        jax.clear_caches()
    print("%d of %d OK" % (len(paths) - bad, len(paths)))
    return 1 if bad else 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--train"]
    if len(args) != 1:
        raise SystemExit(__doc__)
    sys.exit(main(args[0], train="--train" in sys.argv))
