"""One SGD-momentum training step of a 3-d encoder-decoder: jcaffe Solver.step (its 3-d
maps folded into 2-d ones, and unfolded: XLA's 3-d convolution) vs pure JAX vs PyTorch
eager (CPU).

    python benchmarks/bench_conv3d.py [--repeats 5] [--batch 2] [--size 32,64,64]

Caffe's convolutions and deconvolutions take any number of spatial axes (im2col_nd), and
volumes (CT, MRI, video) are where users take them. BVLC's Pooling and PReLU take 4-d
blobs only, so a net BVLC Caffe runs on volumes downsamples by strided convolutions and
uses ReLU: here V-Net's kind (Milletari, Navab & Ahmadi 2016) at a small size, made for
this benchmark, not a published net: one grey channel; 3x3x3 convolutions of 16, 32
and 64 channels; 2x2x2 convolutions of stride 2 down and Deconvolutions of stride 2 up,
each level's features added back (Eltwise SUM) on the way up; a 1x1x1 to two scores
per voxel; SoftmaxWithLoss. The same update as bench_train.py (lr 0.01, momentum 0.9,
weight decay 5e-4); the same initial values in every contender.
"""
import contextlib
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import nets  # noqa: E402

# (name, type, bottoms, num_output, kernel, stride, pad): ReLU after every map but the
# last, in place; "sum" layers add their two bottoms.
LAYERS = [
    ("conv1", "Convolution", ["data"], 16, 3, 1, 1),
    ("conv2", "Convolution", ["conv1"], 16, 3, 1, 1),
    ("down1", "Convolution", ["conv2"], 32, 2, 2, 0),
    ("conv3", "Convolution", ["down1"], 32, 3, 1, 1),
    ("down2", "Convolution", ["conv3"], 64, 2, 2, 0),
    ("conv4", "Convolution", ["down2"], 64, 3, 1, 1),
    ("up2", "Deconvolution", ["conv4"], 32, 2, 2, 0),
    ("sum2", "Eltwise", ["up2", "conv3"], None, None, None, None),
    ("conv5", "Convolution", ["sum2"], 32, 3, 1, 1),
    ("up1", "Deconvolution", ["conv5"], 16, 2, 2, 0),
    ("sum1", "Eltwise", ["up1", "conv2"], None, None, None, None),
    ("conv6", "Convolution", ["sum1"], 16, 3, 1, 1),
    ("score", "Convolution", ["conv6"], 2, 1, 1, 0),
]


def prototxt(batch, size):
    dims = " ".join("dim: %d" % d for d in size)
    out = ['name: "volume"',
           'layer { name: "data" type: "Input" top: "data" top: "label" input_param { '
           'shape { dim: %d dim: 1 %s } shape { dim: %d dim: 1 %s } } }'
           % (batch, dims, batch, dims)]
    for name, typ, bottoms, num, k, s, p in LAYERS:
        bs = " ".join('bottom: "%s"' % b for b in bottoms)
        if typ == "Eltwise":
            out.append('layer { name: "%s" type: "Eltwise" %s top: "%s" }' % (name, bs, name))
            continue
        out.append('layer { name: "%s" type: "%s" %s top: "%s" convolution_param { '
                   'num_output: %d kernel_size: %d stride: %d pad: %d '
                   'weight_filler { type: "msra" } } }' % (name, typ, bs, name, num, k, s, p))
        if name != "score":
            out.append('layer { name: "relu_%s" type: "ReLU" bottom: "%s" top: "%s" }'
                       % (name, name, name))
    out.append('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" '
               'bottom: "label" top: "loss" }')
    return "\n".join(out)


def shapes():
    """{layer: (weight shape, bias shape)}, Caffe's: a Deconvolution's weight is
    (C_in, O, k, k, k)."""
    out, channels = {}, {"data": 1}
    for name, typ, bottoms, num, k, _, _ in LAYERS:
        c = channels[bottoms[0]]
        if typ == "Eltwise":
            channels[name] = c
            continue
        out[name] = (((num, c) if typ == "Convolution" else (c, num)) + (k,) * 3, (num,))
        channels[name] = num
    return out


def initial(seed=0):
    """The same initial values for every contender: MSRA's Gaussians (fan-in, Caffe's
    MSRAFiller), biases 0."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, (w, b) in shapes().items():
        fan_in = w[0] * math.prod(w[2:]) if dict((l[0], l[1]) for l in LAYERS)[name] == \
            "Deconvolution" else math.prod(w[1:])
        out[name] = (rng.standard_normal(w).astype(np.float32) * np.float32(math.sqrt(2 / fan_in)),
                     np.zeros(b, np.float32))
    return out


def inputs(batch, size, seed=1):
    rng = np.random.RandomState(seed)
    return (rng.standard_normal((batch, 1) + size).astype(np.float32),
            rng.randint(0, 2, (batch, 1) + size).astype(np.float32))


def gflop(batch, size):
    """Multiply-adds x2 of one forward (convolutions: outputs x fan-in; deconvolutions:
    inputs x fan-out)."""
    total, spatial = 0, {"data": size}
    for name, typ, bottoms, num, k, s, p in LAYERS:
        here = spatial[bottoms[0]]
        if typ == "Eltwise":
            spatial[name] = here
            continue
        w = shapes()[name][0]
        if typ == "Convolution":
            out = tuple((d + 2 * p - k) // s + 1 for d in here)
            total += 2 * batch * math.prod(out) * math.prod(w)
        else:
            out = tuple((d - 1) * s + k - 2 * p for d in here)
            total += 2 * batch * math.prod(here) * math.prod(w)
        spatial[name] = out
    return total / 1e9


@contextlib.contextmanager
def _unfolded():
    from jcaffe.layers.vision import Convolution
    Convolution.FOLD_DEPTH = False
    try:
        yield
    finally:
        del Convolution.FOLD_DEPTH       # (back to CpuRules's)


def jcaffe_step(batch, size, fold=True):
    def setup():
        import jax

        import jcaffe
        from jcaffe.proto import caffe_pb2 as pb2
        from google.protobuf import text_format
        sp = pb2.SolverParameter(base_lr=nets.LR, momentum=nets.MOMENTUM,
                                 weight_decay=nets.WEIGHT_DECAY, lr_policy="fixed",
                                 max_iter=10 ** 9, display=0, random_seed=1)
        text_format.Parse(prototxt(batch, size), sp.net_param)
        solver = jcaffe.get_solver(sp)
        for name, values in initial().items():
            for blob, value in zip(solver.net.params[name], values):
                blob.data[...] = value
        x, label = inputs(batch, size)
        solver.net.blobs["data"].data[...] = x
        solver.net.blobs["label"].data[...] = label

        def run():
            with (contextlib.nullcontext() if fold else _unfolded()):
                solver.step(1)
            return jax.block_until_ready(solver._losses[-1])
        return run
    return setup


def jax_step(batch, size):
    def setup():
        import jax
        import jax.numpy as jnp
        from jax import lax
        params = {k: tuple(jnp.asarray(v) for v in vs) for k, vs in initial().items()}
        x, label = (jnp.asarray(a) for a in inputs(batch, size))
        spec = ("NCDHW", "OIDHW", "NCDHW")

        def forward(params, x):
            blobs = {"data": x}
            for name, typ, bottoms, num, k, s, p in LAYERS:
                a = blobs[bottoms[0]]
                if typ == "Eltwise":
                    blobs[name] = a + blobs[bottoms[1]]
                    continue
                w, b = params[name]
                if typ == "Convolution":
                    y = lax.conv_general_dilated(a, w, (s,) * 3, [(p, p)] * 3,
                                                 dimension_numbers=spec)
                else:       # Caffe's (C_in, O, k...) weight: the transpose of a convolution
                    y = lax.conv_transpose(a, w, (s,) * 3, [(k - 1 - p, k - 1 - p)] * 3,
                                           dimension_numbers=spec,
                                           transpose_kernel=True)
                y = y + b[None, :, None, None, None]
                blobs[name] = y if name == "score" else jax.nn.relu(y)
            return blobs["score"]

        def loss_fn(params):
            logp = jax.nn.log_softmax(forward(params, x), axis=1)
            picked = jnp.take_along_axis(logp, label.astype(jnp.int32), axis=1)
            return -jnp.mean(picked)

        @jax.jit
        def step(params, history):
            loss, grads = jax.value_and_grad(loss_fn)(params)
            # (no param { } specs in the prototxt: biases learn and decay as weights do)
            history = jax.tree_util.tree_map(
                lambda h, g, w: nets.MOMENTUM * h + nets.LR * (g + nets.WEIGHT_DECAY * w),
                history, grads, params)
            return jax.tree_util.tree_map(lambda w, h: w - h, params, history), history, loss

        state = {"p": params, "h": jax.tree_util.tree_map(jnp.zeros_like, params)}

        def run():
            state["p"], state["h"], loss = step(state["p"], state["h"])
            return loss.block_until_ready()
        return run
    return setup


def torch_step(batch, size):
    def setup():
        import torch
        import torch.nn.functional as F
        params = {k: [torch.tensor(v, requires_grad=True) for v in vs]
                  for k, vs in initial().items()}
        opt = torch.optim.SGD([p for ps in params.values() for p in ps], lr=nets.LR,
                              momentum=nets.MOMENTUM, weight_decay=nets.WEIGHT_DECAY)
        x, label = inputs(batch, size)
        x, label = torch.tensor(x), torch.tensor(label[:, 0]).long()

        def run():
            opt.zero_grad(set_to_none=True)
            blobs = {"data": x}
            for name, typ, bottoms, num, k, s, p in LAYERS:
                a = blobs[bottoms[0]]
                if typ == "Eltwise":
                    blobs[name] = a + blobs[bottoms[1]]
                    continue
                w, b = params[name]
                y = (F.conv3d(a, w, b, s, p) if typ == "Convolution"
                     else F.conv_transpose3d(a, w, b, s, p))
                blobs[name] = y if name == "score" else F.relu(y)
            loss = F.cross_entropy(blobs["score"], label)
            loss.backward()
            opt.step()
            return loss.detach()
        return run
    return setup


def contenders(opts):
    """{label: setup}; each setup's run() takes one step and returns its loss (the loss
    of the params it started from)."""
    size = tuple(int(v) for v in opts.size.split(","))
    out = {"jcaffe Solver.step": jcaffe_step(opts.batch, size),
           "jcaffe, 3-d maps unfolded": jcaffe_step(opts.batch, size, fold=False),
           "pure JAX (jit value_and_grad)": jax_step(opts.batch, size)}
    if harness.has_torch():
        out["PyTorch eager"] = torch_step(opts.batch, size)
    return out


if __name__ == "__main__":
    harness.main("Training step, a 3-d encoder-decoder (V-Net's kind)", contenders,
                 default_repeats=5, default_warmup=1,
                 extra_args=[(("--batch",), {"type": int, "default": 2}),
                             (("--size",), {"default": "32,64,64",
                                            "help": "the volume: depth,height,width"})])
