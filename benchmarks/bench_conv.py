"""Per-shape convolution formulations on this machine: jcaffe's Convolution forward,
data gradient and weight gradient as (a) jcaffe's CPU choice per map (im2col + GEMM
from conv_gemm, or XLA's convolution, per group when grouped; the cell says which),
(b) XLA's convolution only, per group, (c) XLA's convolution as ONE grouped call.
Each is compiled with the options jcaffe's own jits take (jcaffe.xla_options: on CPU,
convolutions on XLA's kernels, not YNNPACK's); ``--xla-defaults`` compiles with XLA's.

    python benchmarks/bench_conv.py [--batch 32] [--repeats 3] [--only googlenet] [--torch]

Shapes: CaffeNet's five convolutions (batch 32), LeNet's two (batch 64), CIFAR-10's
three (batch 100), the kernels larger than 1x1 of GoogLeNet (batch 32) and ResNet-50
(batch 16), by size, two of DenseNet-121's 3x3s (batch 16), Inception-v4's stride-2
3x3s (batch 8), DeepLab-LargeFOV's (batch 2, two of them dilated), OpenPose's and
FCN-32s's VGG convolutions at batch 1 (FCN's: 500x500 padded by 100);
``--batch`` sets one batch for all. Each timing: min over repeats.
"""
import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nets  # noqa: E402,F401  (puts this checkout's jcaffe first on sys.path)

SHAPES = {   # name: (bottom shape without batch, convolution_param)
    "caffenet conv1": ((3, 227, 227), "num_output: 96 kernel_size: 11 stride: 4"),
    "caffenet conv2": ((96, 27, 27), "num_output: 256 kernel_size: 5 pad: 2 group: 2"),
    "caffenet conv3": ((256, 13, 13), "num_output: 384 kernel_size: 3 pad: 1"),
    "caffenet conv4": ((384, 13, 13), "num_output: 384 kernel_size: 3 pad: 1 group: 2"),
    "caffenet conv5": ((384, 13, 13), "num_output: 256 kernel_size: 3 pad: 1 group: 2"),
    "lenet conv1": ((1, 28, 28), "num_output: 20 kernel_size: 5"),
    "lenet conv2": ((20, 12, 12), "num_output: 50 kernel_size: 5"),
    "cifar10 conv1": ((3, 32, 32), "num_output: 32 kernel_size: 5 pad: 2"),
    "cifar10 conv2": ((32, 16, 16), "num_output: 32 kernel_size: 5 pad: 2"),
    "cifar10 conv3": ((32, 8, 8), "num_output: 64 kernel_size: 5 pad: 2"),
    "googlenet conv1/7x7_s2": ((3, 224, 224), "num_output: 64 kernel_size: 7 stride: 2 pad: 3"),
    "googlenet conv2/3x3": ((64, 56, 56), "num_output: 192 kernel_size: 3 pad: 1"),
    "googlenet inception_3a/3x3": ((96, 28, 28), "num_output: 128 kernel_size: 3 pad: 1"),
    "googlenet inception_3a/5x5": ((16, 28, 28), "num_output: 32 kernel_size: 5 pad: 2"),
    "googlenet inception_4a/3x3": ((96, 14, 14), "num_output: 208 kernel_size: 3 pad: 1"),
    "googlenet inception_4b/5x5": ((24, 14, 14), "num_output: 64 kernel_size: 5 pad: 2"),
    "googlenet inception_4e/5x5": ((32, 14, 14), "num_output: 128 kernel_size: 5 pad: 2"),
    "googlenet inception_5a/3x3": ((160, 7, 7), "num_output: 320 kernel_size: 3 pad: 1"),
    "googlenet inception_5b/3x3": ((192, 7, 7), "num_output: 384 kernel_size: 3 pad: 1"),
    "densenet121 conv4_1/x2": ((128, 14, 14), "num_output: 32 kernel_size: 3 pad: 1"),
    "densenet121 conv5_1/x2": ((128, 7, 7), "num_output: 32 kernel_size: 3 pad: 1"),
    "resnet50 conv1": ((3, 224, 224), "num_output: 64 kernel_size: 7 stride: 2 pad: 3"),
    "resnet50 res2a_branch2b": ((64, 56, 56), "num_output: 64 kernel_size: 3 pad: 1"),
    "resnet50 res3a_branch2b": ((128, 28, 28), "num_output: 128 kernel_size: 3 pad: 1"),
    "resnet50 res4a_branch2b": ((256, 14, 14), "num_output: 256 kernel_size: 3 pad: 1"),
    "resnet50 res5a_branch2b": ((512, 7, 7), "num_output: 512 kernel_size: 3 pad: 1"),
    "mobilenet conv1": ((3, 224, 224), "num_output: 32 kernel_size: 3 stride: 2 pad: 1"),
    "inception_v4 conv1_3x3_s2": ((3, 299, 299), "num_output: 32 kernel_size: 3 stride: 2"),
    "inception_v4 inception_stem1_3x3_s2": ((64, 147, 147),
                                            "num_output: 96 kernel_size: 3 stride: 2"),
    "inception_v4 inception_stem3_3x3_s2": ((192, 71, 71),
                                            "num_output: 192 kernel_size: 3 stride: 2"),
    "inception_v4 reduction_a_3x3": ((384, 35, 35), "num_output: 384 kernel_size: 3 stride: 2"),
    "inception_v4 reduction_b_3x3": ((192, 17, 17), "num_output: 192 kernel_size: 3 stride: 2"),
    "openpose conv1_2": ((64, 368, 368), "num_output: 64 kernel_size: 3 pad: 1"),
    "openpose conv3_2": ((256, 92, 92), "num_output: 256 kernel_size: 3 pad: 1"),
    "openpose conv4_2": ((512, 46, 46), "num_output: 512 kernel_size: 3 pad: 1"),
    "openpose conv5_1_CPM": ((128, 46, 46), "num_output: 128 kernel_size: 3 pad: 1"),
    "openpose Mconv1": ((185, 46, 46), "num_output: 128 kernel_size: 7 pad: 3"),
    "openpose Mconv2": ((128, 46, 46), "num_output: 128 kernel_size: 7 pad: 3"),
    "pnet conv1": ((3, 384, 512), "num_output: 10 kernel_size: 3"),
    "pnet conv2": ((10, 191, 255), "num_output: 16 kernel_size: 3"),
    "pnet conv3": ((16, 189, 253), "num_output: 32 kernel_size: 3"),
    "deeplab conv1_2": ((64, 321, 321), "num_output: 64 kernel_size: 3 pad: 1"),
    "deeplab conv3_2": ((256, 81, 81), "num_output: 256 kernel_size: 3 pad: 1"),
    "deeplab conv4_2": ((512, 41, 41), "num_output: 512 kernel_size: 3 pad: 1"),
    "deeplab conv5_2": ((512, 41, 41), "num_output: 512 kernel_size: 3 pad: 2 dilation: 2"),
    "deeplab fc6": ((512, 41, 41), "num_output: 1024 kernel_size: 3 pad: 12 dilation: 12"),
    "fcn conv1_1": ((3, 500, 500), "num_output: 64 kernel_size: 3 pad: 100"),
    "fcn conv1_2": ((64, 698, 698), "num_output: 64 kernel_size: 3 pad: 1"),
    "fcn conv2_1": ((64, 349, 349), "num_output: 128 kernel_size: 3 pad: 1"),
    "fcn conv2_2": ((128, 349, 349), "num_output: 128 kernel_size: 3 pad: 1"),
    "fcn conv3_2": ((256, 175, 175), "num_output: 256 kernel_size: 3 pad: 1"),
    "fcn conv4_2": ((512, 88, 88), "num_output: 512 kernel_size: 3 pad: 1"),
    "fcn conv5_2": ((512, 44, 44), "num_output: 512 kernel_size: 3 pad: 1"),
    "fcn fc6": ((512, 22, 22), "num_output: 4096 kernel_size: 7"),
    "colorization conv3_2": ((256, 56, 56), "num_output: 256 kernel_size: 3 pad: 1"),
    "colorization conv4_2": ((512, 28, 28), "num_output: 512 kernel_size: 3 pad: 1"),
    "colorization conv5_2": ((512, 28, 28),
                             "num_output: 512 kernel_size: 3 pad: 2 dilation: 2"),
    "colorization conv8_2": ((256, 56, 56), "num_output: 256 kernel_size: 3 pad: 1"),
    "resnet56 first_conv": ((3, 32, 32), "num_output: 16 kernel_size: 3 pad: 1"),
    "resnet56 group0 3x3": ((16, 32, 32), "num_output: 16 kernel_size: 3 pad: 1"),
    "resnet56 group1_block0_conv0": ((16, 32, 32),
                                     "num_output: 32 kernel_size: 3 stride: 2 pad: 1"),
    "resnet56 group1 3x3": ((32, 16, 16), "num_output: 32 kernel_size: 3 pad: 1"),
    "resnet56 group2_block0_conv0": ((32, 16, 16),
                                     "num_output: 64 kernel_size: 3 stride: 2 pad: 1"),
    "resnet56 group2 3x3": ((64, 8, 8), "num_output: 64 kernel_size: 3 pad: 1"),
}
# (CaffeNet's: 32)
BATCH = {"cifar10": 100, "lenet": 64, "googlenet": 32, "densenet121": 16, "resnet50": 16,
         "inception_v4": 8, "fcn": 1, "openpose": 1, "deeplab": 2, "pnet": 1,
         "resnet56": 128, "colorization": 1}


def timed(f, args, repeats):
    import jax
    jax.block_until_ready(f(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=None,
                    help="batch of every shape (default: CaffeNet's 32, the others their net's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--torch", action="store_true",
                    help="add a row for PyTorch's conv2d (CPU build, aten's convolution_backward "
                         "for the two gradients), in this process after jcaffe's rows")
    ap.add_argument("--gemm", action="store_true",
                    help="add a row with every map on im2col + GEMM (conv_gemm)")
    ap.add_argument("--xla-defaults", action="store_true",
                    help="compile with XLA's default options, not jcaffe's")
    opts = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from google.protobuf import text_format
    from jcaffe.layer import create_layer
    from jcaffe.layers import conv_gemm
    from jcaffe.layers.vision import Convolution
    from jcaffe.proto import caffe_pb2
    from jcaffe import xla_options
    options = None if opts.xla_defaults else xla_options.cpu_options()
    if opts.xla_defaults:      # jcaffe's choice as it is where its option is not in effect
        xla_options.own_convolutions = lambda: False
    jit = functools.partial(jax.jit, compiler_options=options)

    original = Convolution._split_groups, Convolution._gemm
    print("| shape | formulation | forward ms | data grad ms | weight grad ms | GFLOP (fwd) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (chw, text) in SHAPES.items():
        if opts.only and opts.only not in name:
            continue
        shape = (opts.batch or BATCH.get(name.split()[0], 32),) + chw
        lp = text_format.Parse('name: "c" type: "Convolution" convolution_param { %s '
                               'weight_filler { type: "gaussian" std: 0.01 } }' % text,
                               caffe_pb2.LayerParameter())
        layer = create_layer(lp, np.float32)
        layer.layer_setup([shape], 1, np.random.default_rng(0))
        x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
        params = [jnp.asarray(b.data) for b in layer.blobs]
        cg = layer.channels // layer.group
        macs = shape[0] * int(np.prod(layer.out_spatial)) * layer.num_output * cg \
            * int(np.prod(layer.kernel))
        rows = conv_gemm.by_rows((shape[0], layer.num_output) + tuple(layer.out_spatial),
                                 params[0].shape, layer.group, layer.geometry(), 4)
        picks = ["XLA" if not original[1](layer, which, cg, macs, by_rows=rows,
                                          batch=shape[0]) else
                 "GEMM by rows" if which == "data" and rows else "GEMM"
                 for which in ("forward", "data", "weight")]
        choices = [("jcaffe's choice (%s)" % "/".join(picks), True, None),
                   ("XLA convolution" + (" per group" if layer.group > 1 else ""), True, False)]
        if layer.group > 1:
            choices.append(("XLA, one grouped convolution", False, False))
        if opts.gemm:
            choices.append(("im2col + GEMM" + (" by rows" if rows else ""), True, True))
        for label, split, gemm in choices:
            Convolution._split_groups = (lambda s, split=split: split and s.group > 1)
            Convolution._gemm = (original[1] if gemm is None else
                                 (lambda s, which, cg, macs, gemm=gemm, **_: gemm))
            fwd = jit(lambda p, x: layer.forward(p, [x], None)[0][0])
            y = fwd(params, x)
            dy = jnp.ones_like(y)
            dx = jit(lambda p, x, dy: layer._data_diff(layer._batched(dy), p[0]))
            dw = jit(lambda p, x, dy: layer._weight_diff(layer._batched(x),
                                                             layer._batched(dy)))
            gflop = 2 * np.prod(y.shape) * np.prod(params[0].shape[1:]) / 1e9
            print("| %s | %s | %.1f | %.1f | %.1f | %.2f |" % (
                name, label, timed(fwd, (params, x), opts.repeats),
                timed(dx, (params, x, dy), opts.repeats),
                timed(dw, (params, x, dy), opts.repeats), gflop), flush=True)
        if opts.torch:
            print("| %s | PyTorch conv2d | %.1f | %.1f | %.1f | %.2f |" % (
                (name,) + torch_times(layer, np.asarray(x), np.asarray(params[0]),
                                      opts.repeats) + (gflop,)), flush=True)
    Convolution._split_groups, Convolution._gemm = original


def torch_times(layer, x, w, repeats):
    """PyTorch's forward, input gradient and weight gradient of the layer's map (ms, min)."""
    import numpy as np
    import torch
    x, w = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(w))
    kw = dict(stride=tuple(layer.stride), padding=tuple(layer.pad),
              dilation=tuple(layer.dilation), groups=layer.group)
    with torch.no_grad():
        y = torch.nn.functional.conv2d(x, w, **kw)
        dy = torch.ones_like(y)
        out = []
        for f in (lambda: torch.nn.functional.conv2d(x, w, **kw),
                  lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, **kw),
                  lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, **kw)):
            f()
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                f()
                best = min(best, time.perf_counter() - t0)
            out.append(best * 1000)
    return tuple(out)


if __name__ == "__main__":
    main()
