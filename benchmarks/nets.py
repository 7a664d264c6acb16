"""The benchmark nets, and the same architectures written directly in JAX and PyTorch.

The architecture is read from the model-zoo prototxt (tests/data/zoo/): the
reference contenders below are *plain* code a person would write by hand for
that layer list (``jax.lax.conv_general_dilated`` + ``jax.value_and_grad``;
``torch.nn.functional`` + autograd), built by walking the layers once, so all
contenders compute the same architecture on the same shapes. Nothing here
imports jcaffe (or jax, for the torch contender) at module level (only
``jcaffe_solver``, called by jcaffe's contenders, does): the prototxt is parsed with
the generated ``caffe_pb2`` module loaded on its own, so a contender's peak
memory is its own framework's.
"""
import importlib.util
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "tests", "data", "zoo")
if ROOT not in sys.path:        # this checkout's jcaffe, not an installed one
    sys.path.insert(0, ROOT)

# name -> (prototxt, batch, input (C, H, W), final classifier top). A sequence net (input
# None) takes its inputs as its DummyData declares them, (T, N, ...) and (N, ...), with
# its N streams standing for the batch (SEQUENCE_STREAMS: the N written there; the
# streams axis is 1 of a shape that starts with the first top's T, else 0).
NETS = {
    "lenet": ("lenet.prototxt", 64, (1, 28, 28), "ip2"),
    "caffenet": ("caffenet.prototxt", 32, (3, 227, 227), "fc8"),
    # (CaffeNet's original: LRN before each of the first two pools, not after)
    "alexnet": ("alexnet.prototxt", 32, (3, 227, 227), "fc8"),
    "googlenet": ("googlenet.prototxt", 32, (3, 224, 224), "loss3/classifier"),
    "resnet18": ("resnet18.prototxt", 32, (3, 224, 224), "fc1000"),
    "resnet34": ("resnet34.prototxt", 32, (3, 224, 224), "fc1000"),
    "resnet50": ("resnet50.prototxt", 16, (3, 224, 224), "fc1000"),
    # (not in run_all's plan: between ResNet-50 and -152, which are; its slow test uses it)
    "resnet101": ("resnet101.prototxt", 16, (3, 224, 224), "fc1000"),
    # (not in run_all's plan either: ResNet-101 pre-activated; its slow test uses it)
    "resnet101_v2": ("resnet101_v2.prototxt", 16, (3, 224, 224), "classifier"),
    # (nor this one: ResNet-50 twice as wide inside, its pool1 rounding down)
    "wrn50_2": ("wrn50_2.prototxt", 16, (3, 224, 224), "classifier"),
    # (batch 8: its three contenders at 16 would need about 2.6x ResNet-50's 12 GB there)
    "resnet152": ("resnet152.prototxt", 8, (3, 224, 224), "fc1000"),
    "mobilenet": ("mobilenet.prototxt", 32, (3, 224, 224), "fc7"),
    "mobilenet_v2": ("mobilenet_v2.prototxt", 32, (3, 224, 224), "fc7"),
    "resnext50": ("resnext50.prototxt", 16, (3, 224, 224), "fc1000"),
    "fcn32s": ("fcn32s.prototxt", 1, (3, 500, 500), "score"),
    "fcn8s": ("fcn8s.prototxt", 1, (3, 500, 500), "score"),
    # (one image at 368x368, as OpenPose's demo feeds it; the deploy output joins both
    # branches of the last stage)
    "openpose": ("openpose.prototxt", 1, (3, 368, 368), "net_output"),
    # (MTCNN's P-Net: trained on 384 crops of 12x12; deployed on whole images, one of
    # 384x512 here, the first scale of its image pyramid for a 640x480 photo)
    "mtcnn_pnet": ("mtcnn_pnet.prototxt", 384, (3, 12, 12), "conv4-1"),
    "mtcnn_pnet_image": ("mtcnn_pnet.prototxt", 1, (3, 384, 512), "conv4-1"),
    # (SRCNN: trained on 128 sub-images of 33x33, deployed on a whole 512x512 luminance)
    "srcnn": ("srcnn.prototxt", 128, (1, 33, 33), "conv3"),
    "srcnn_image": ("srcnn.prototxt", 1, (1, 512, 512), "conv3"),
    # (FSRCNN 3x: 128 sub-images of 11x11; deployed on a 260x260 image, 768x768 out)
    "fsrcnn": ("fsrcnn.prototxt", 128, (1, 11, 11), "conv3"),
    "fsrcnn_image": ("fsrcnn.prototxt", 1, (1, 260, 260), "conv3"),
    # (256 face crops of 48x48, three heads' losses)
    "mtcnn_onet": ("mtcnn_onet.prototxt", 256, (3, 48, 48), "conv6-1"),
    # (two 321x321 crops, not the 10 of DeepLab's scripts: 3.5 s a step here for jcaffe
    # and PyTorch, 5.2 s for pure JAX)
    "deeplab_largefov": ("deeplab_largefov.prototxt", 2, (3, 321, 321), "fc8_voc12"),
    # (U-Net's release trains on one 572x572 tile at a time, and deploys on such tiles)
    "unet": ("unet.prototxt", 1, (1, 572, 572), "conv_u0d-score"),
    # (four of the release's 40 crops of 176x176 a step; deployed on one 224x224 image)
    "colorization": ("colorization.prototxt", 4, (1, 176, 176), "conv8_313"),
    "colorization_image": ("colorization.prototxt", 1, (1, 224, 224), "conv8_313"),
    # (CIFAR-10's ResNet-56 at its release's batch: 27 basic blocks of 16 to 64 channels)
    "resnet56_cifar": ("resnet56_cifar.prototxt", 128, (3, 32, 32), "fc"),
    "lrcn": ("lrcn.prototxt", 100, None, "predict"),
    "char_rnn": ("char_rnn.prototxt", 50, None, "predict"),
    # (Zaremba et al.'s medium word-level model: 35 timesteps of 20 streams, 10,000 words)
    "ptb_lstm": ("ptb_lstm.prototxt", 20, None, "predict"),
    # (Light CNN-9's Max-Feature-Maps: 128x128 grey faces, its release's batch of 20)
    "lightcnn9": ("lightcnn9.prototxt", 20, (1, 128, 128), "fc2"),
    "cifar10_quick": ("cifar10_quick.prototxt", 100, (3, 32, 32), "ip2"),
    "cifar10_full": ("cifar10_full.prototxt", 100, (3, 32, 32), "ip1"),
    "cifar10_full_sigmoid_bn": ("cifar10_full_sigmoid_bn.prototxt", 100, (3, 32, 32), "ip1"),
    "mnist_autoencoder": ("mnist_autoencoder.prototxt", 100, (1, 28, 28), "decode1"),
    "vgg16": ("vgg16.prototxt", 16, (3, 224, 224), "fc8"),
    "mnist_siamese": ("mnist_siamese.prototxt", 64, (2, 28, 28), "feat"),
    "squeezenet": ("squeezenet.prototxt", 32, (3, 227, 227), "pool10"),
    "nin": ("nin.prototxt", 32, (3, 224, 224), "pool4"),
    "densenet121": ("densenet121.prototxt", 16, (3, 224, 224), "fc6"),
    "se_bn_inception": ("se_bn_inception.prototxt", 32, (3, 224, 224), "classifier"),
    "inception_v3": ("inception_v3.prototxt", 16, (3, 299, 299), "classifier"),
    "inception_v4": ("inception_v4.prototxt", 8, (3, 299, 299), "classifier"),
    "inception_resnet_v2": ("inception_resnet_v2.prototxt", 8, (3, 299, 299), "classifier"),
    # (batch 8: at 16 the three contenders' steps peaked at 10.4, 9.0 and 7.7 GB alone)
    "xception": ("xception.prototxt", 8, (3, 299, 299), "classifier"),
    # (batch 8: at 16, jcaffe's step (11.5 GB peak) and PyTorch's in one process
    # exceeded this 24 GB machine)
    "dpn92": ("dpn92.prototxt", 8, (3, 224, 224), "classifier"),
}
SEQUENCE_STREAMS = {"lrcn": 100, "char_rnn": 50, "ptb_lstm": 20}

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
# The benchmarks' Adam (bench_train.py --solver Adam): Kingma & Ba's rates, Caffe's
# default delta, the same weight decay (added to the gradient, as Caffe's Regularize).
ADAM = {"base_lr": 0.001, "momentum": 0.9, "momentum2": 0.999, "delta": 1e-8}
SOLVERS = ("SGD", "Adam")

_pb2 = None
# Set by the harness in a memory-measuring subprocess of a non-jcaffe contender:
# then the prototxt is parsed without importing jcaffe (and with it jax).
STANDALONE_PROTO = False
# Where the PyTorch contender runs (the harness's --torch-device): "cpu", or "cuda" on a
# GPU machine, where torch_sync() waits for its kernels before a call counts as done.
TORCH_DEVICE = "cpu"


def torch_sync():
    """Eager PyTorch on a GPU returns before its kernels finish: wait for them."""
    if TORCH_DEVICE != "cpu":
        import torch
        torch.cuda.synchronize()


def caffe_pb2():
    """jcaffe's generated caffe_pb2 (standalone: loaded without the jcaffe package; the
    two cannot coexist in one process, protobuf refuses a second caffe.proto)."""
    global _pb2
    if _pb2 is None and not STANDALONE_PROTO:
        from jcaffe.proto import caffe_pb2 as _pb2
    if _pb2 is None:
        path = os.path.join(ROOT, "jcaffe", "proto", "caffe_pb2.py")
        spec = importlib.util.spec_from_file_location("_bench_caffe_pb2", path)
        _pb2 = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_pb2)
    return _pb2


def net_param(name, batch=None, deploy=False):
    """The zoo net with its DummyData replaced by Input layers (data fed once, not
    regenerated per step) and, for ``deploy``, only what the final classifier needs
    (loss/accuracy layers and auxiliary heads removed), as a Caffe deploy file is."""
    from google.protobuf import text_format
    pb = caffe_pb2()
    fname, default_batch, chw, final = NETS[name]
    batch = batch or default_batch
    with open(os.path.join(ZOO, fname)) as f:
        src = text_format.Parse(f.read(), pb.NetParameter())
    out = pb.NetParameter(name=src.name)
    inp = out.layer.add(name="data", type="Input")
    if chw is None:     # a sequence net: its DummyData's tops, the streams set to batch
        dummy = next(l for l in src.layer if l.type == "DummyData")
        shapes = dummy.dummy_data_param.shape
        for top, shape in zip(dummy.top, shapes):
            inp.top.append(top)
            inp.input_param.shape.add(dim=with_streams(shape.dim, shapes[0].dim[0],
                                                       SEQUENCE_STREAMS[name], batch))
    else:   # the image and, in training, the label (if any): the zoo's names and shapes
        dummy = next(l for l in src.layer if l.type == "DummyData")
        inp.top.append(dummy.top[0])
        inp.input_param.shape.add(dim=[batch] + list(chw))
        if not deploy:      # (FCN's label: per pixel; O-Net's box and landmark targets)
            shapes = dummy.dummy_data_param.shape
            for i, top in enumerate(dummy.top[1:], 1):
                inp.top.append(top)
                inp.input_param.shape.add(dim=[batch] + (list(shapes[i].dim[1:])
                                                         if i < len(shapes) else []))
    keep = []
    for layer in src.layer:
        if layer.type in ("DummyData", "Data"):
            continue
        if layer.type == "Accuracy" or any(r.phase == pb.TEST for r in layer.include):
            continue
        if deploy and "Loss" in layer.type:
            continue
        keep.append(layer)
    if deploy:   # the ancestors of the final classifier only
        needed, chosen = {final}, []
        for layer in reversed(keep):
            if set(layer.top) & needed:
                chosen.append(layer)
                needed |= set(layer.bottom)
        keep = list(reversed(chosen))
        if chw is None:     # only the inputs the classifier reads
            shapes = [(t, s) for t, s in zip(inp.top, inp.input_param.shape) if t in needed]
            del inp.top[:]
            del inp.input_param.shape[:]
            for top, shape in shapes:
                inp.top.append(top)
                inp.input_param.shape.add().CopyFrom(shape)
    for layer in keep:
        out.layer.add().CopyFrom(layer)
    return out


def with_streams(dims, steps, streams, batch):
    """A sequence net's input ``dims`` with its ``streams`` set to ``batch``: axis 1 of a
    (T, N, ...) shape (its first dim the net's ``steps``), axis 0 of a static (N, ...) one
    (char-rnn's T and N are both 50)."""
    dims = list(dims)
    axis = 1 if len(dims) > 1 and dims[0] == steps else 0
    if dims[axis] == streams:
        dims[axis] = batch
    return dims


def layer_list(param):
    """(type, name, bottoms, tops, the layer message) of each layer after the Input."""
    return [(l.type, l.name, list(l.bottom), list(l.top), l) for l in param.layer
            if l.type != "Input"]


def _pool_geometry(p, size, ceil=True):
    """Caffe's pooled sizes and (lo, hi) padding that gives them with floor windows
    (``ceil``: Caffe's default round_mode, CEIL; else FLOOR, DenseNet's pool1)."""
    out = []
    for h, (k, s, pad) in zip(size, p):
        n = (-(-(h + 2 * pad - k) // s) if ceil else (h + 2 * pad - k) // s) + 1
        if pad and (n - 1) * s >= h + pad:
            n -= 1
        hi = max(0, (n - 1) * s + k - h - pad)
        out.append((n, (pad, hi)))
    return out


def ave_divisor(geo, k, s, pad, size):
    """Caffe's AVE pooling divisor per output position (numpy, a constant)."""
    sizes = []
    for (n, _), kk, ss, p, h in zip(geo, k, s, pad, size):
        start = np.arange(n) * ss - p
        sizes.append(np.minimum(start + kk, h + p) - start)
    return np.outer(*sizes).astype(np.float32)


def pool_ceil(l):
    """Whether Pooling layer ``l`` rounds its output size up (round_mode CEIL)."""
    return l.pooling_param.round_mode == l.pooling_param.CEIL


def pool_params(l, in_hw):
    p = l.pooling_param
    if p.global_pooling:
        k, s, pad = tuple(in_hw), (1, 1), (0, 0)
    else:
        k = (p.kernel_size,) * 2 if p.HasField("kernel_size") else (p.kernel_h, p.kernel_w)
        s = (p.stride,) * 2 if not p.HasField("stride_h") else (p.stride_h, p.stride_w)
        pad = (p.pad,) * 2 if not p.HasField("pad_h") else (p.pad_h, p.pad_w)
    return k, s, pad


def conv_params(l):
    """(kernel, stride, pad) as (h, w) pairs, whether written once, per axis, or as
    kernel_h/kernel_w, stride_h/stride_w, pad_h/pad_w (Inception-v3's 1x7 and 7x1)."""
    p = l.convolution_param

    def pair(values, h, w, has_h, default):
        values = list(values) or ([h, w] if has_h else [default])
        return tuple(values * 2 if len(values) == 1 else values)
    k = pair(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h"), None)
    s = pair(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h"), 1)
    pad = pair(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h"), 0)
    return k, s, pad, p.group, p.num_output, p.bias_term


def conv_dilation(l):
    """A Convolution's dilation as an (h, w) pair (DeepLab's dilated 3x3s)."""
    d = tuple(l.convolution_param.dilation) or (1,)
    return d * 2 if len(d) == 1 else d


def shared_layers(param):
    """{layer: the earlier layer whose params it shares} (Caffe's sharing by ``param
    { name }``, the siamese towers'): the references keep one copy, under the owner's
    name, and read it at both layers, so its gradient is the sum of the two uses'."""
    owner_of, out = {}, {}
    for l in param.layer:
        names = [p.name for p in l.param]
        owners = {owner_of.get((i, n)) for i, n in enumerate(names) if n}
        if owners - {None}:
            if len(owners) != 1 or not all(names):
                raise NotImplementedError("layer %s shares only some of its params" % l.name)
            out[l.name] = owners.pop()
        else:
            owner_of.update({(i, n): l.name for i, n in enumerate(names) if n})
    return out


def param_shapes(param):
    """({layer name: its params' shapes, in Caffe's order}, {blob: shape}) for the nets'
    learned layers (convolutions, inner products, Scale, Embed, LSTM); a layer that shares
    another's params (:func:`shared_layers`) has none of its own."""
    inp = param.layer[0]
    shapes = {}
    blob_shape = {t: tuple(s.dim) for t, s in zip(inp.top, inp.input_param.shape)}
    for typ, name, bottoms, tops, l in layer_list(param):
        x = blob_shape[bottoms[0]]
        if typ == "Convolution":
            k, s, pad, g, o, bias = conv_params(l)
            d = conv_dilation(l)
            shapes[name] = [(o, x[1] // g) + k] + ([(o,)] if bias else [])
            hw = tuple((x[2 + i] + 2 * pad[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1
                       for i in range(2))
            y = (x[0], o) + hw
        elif typ == "Deconvolution":    # weight (C_in, O / group, k...), Caffe's
            k, s, pad, g, o, bias = conv_params(l)
            shapes[name] = [(x[1], o // g) + k] + ([(o,)] if bias else [])
            y = (x[0], o) + tuple((x[2 + i] - 1) * s[i] - 2 * pad[i] + k[i] for i in range(2))
        elif typ == "Crop":             # FCN's: spatial axes, to the second bottom's size
            y = x[:2] + blob_shape[bottoms[1]][2:]
        elif typ == "Pooling":
            k, s, pad = pool_params(l, x[2:])
            y = x[:2] + tuple(n for n, _ in _pool_geometry(zip(k, s, pad), x[2:],
                                                           pool_ceil(l)))
        elif typ == "InnerProduct":
            p = l.inner_product_param
            axis, o = p.axis % len(x), p.num_output
            shapes[name] = [(o, math.prod(x[axis:]))] + ([(o,)] if p.bias_term else [])
            y = x[:axis] + (o,)
        elif typ == "Embed":
            p = l.embed_param
            shapes[name] = [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term
                                                            else [])
            y = x + (p.num_output,)
        elif typ == "LSTM":   # W_xc, b_c, [W_xc_static], W_hc; gates i, f, o, g
            h = l.recurrent_param.num_output
            static = [(4 * h, math.prod(blob_shape[bottoms[2]][1:]))] if len(bottoms) > 2 else []
            shapes[name] = [(4 * h, math.prod(x[2:])), (4 * h,)] + static + [(4 * h, h)]
            y = x[:2] + (h,)
        elif typ == "PReLU":     # its slopes: one per channel (axis 1), or one shared (0-d)
            shapes[name] = [() if l.prelu_param.channel_shared else (x[1],)]
            y = x
        elif typ == "Scale":
            if len(bottoms) == 1:   # learned, per channel (axis 1, one axis): ResNet's
                shapes[name] = [(x[1],)] + ([(x[1],)] if l.scale_param.bias_term else [])
            y = x
        elif typ == "Reshape":
            y = reshaped(l, x)
        elif typ == "Concat":
            parts = [blob_shape[b] for b in bottoms]
            y = (x[0], sum(p[1] for p in parts)) + x[2:]
        elif typ == "Flatten":
            y = (x[0], math.prod(x[1:]))
        elif typ == "Slice":
            y = [x[:1] + (hi - lo,) + x[2:] for lo, hi in slice_bounds(l, x[1])]
        else:
            y = x
        for t, yt in zip(tops, y if typ == "Slice" else [y] * len(tops)):
            blob_shape[t] = yt
    for name in shared_layers(param):
        shapes.pop(name, None)
    return shapes, blob_shape


def reshaped(l, shape):
    """The shape Reshape ``l`` gives a bottom of ``shape``: its whole shape (axis 0,
    num_axes -1, the nets' only form), 0 copying the bottom's axis, -1 inferred."""
    p = l.reshape_param
    if p.axis != 0 or p.num_axes != -1:
        raise NotImplementedError("Reshape of part of the axes")
    dims = [shape[i] if d == 0 else d for i, d in enumerate(p.shape.dim)]
    if -1 in dims:
        dims[dims.index(-1)] = math.prod(shape) // -math.prod(dims)
    return tuple(dims)


def channel_weights(l, x, w):
    """Scale ``l`` with a second bottom ``w``: x times w, whose (N, C) shape SE blocks'
    axis 0 gives, broadcast over the rest of x's axes."""
    if l.scale_param.axis != 0 or l.scale_param.bias_term:
        raise NotImplementedError("Scale with two bottoms other than axis 0 without bias")
    return x * w.reshape(tuple(w.shape) + (1,) * (x.ndim - w.ndim))


def slice_bounds(l, size):
    """[(start, stop)] of each top of Slice ``l`` along axis 1 (the only axis the nets
    cut)."""
    p = l.slice_param
    if (p.axis if p.HasField("axis") else p.slice_dim if p.HasField("slice_dim") else 1) != 1:
        raise NotImplementedError("Slice along an axis other than 1")
    points = list(p.slice_point) or [size // len(l.top) * (i + 1)
                                     for i in range(len(l.top) - 1)]
    return list(zip([0] + points, points + [size]))


def init_params(param, seed=0):
    """Gaussian weights (:func:`reference_params`; Scale: ones) and zero biases, as float32
    numpy arrays."""
    return dict(reference_params(param, seed))


def reference_params(param, seed=0):
    """(layer, [arrays]) of :func:`init_params`, one layer at a time: each drawn in float32
    (no float64 draw beside it: CaffeNet's fc6 would be a 302 MB transient, which was
    the peak of a contender's process).

    Weights are Gaussian with std 0.01, or as the prototxt's filler draws them where
    0.01 would make the nets' values degenerate:
    * "msra", Gaussian with std sqrt(2 / fan_in) (MobileNet, ResNeXt-50, DenseNet-121):
      at 0.01 MobileNet's 27 convolutions without a skip connection shrink the deploy
      forward's activations 0.03-0.3x each (BatchNorm's running averages do not rescale
      them), to 4e-36 at the classifier, and the benchmark would time float32's
      denormal arithmetic;
    * "xavier", Caffe's uniform in +-sqrt(3 / fan_in) (LeNet, VGG-16, GoogLeNet,
      ResNet-50, SqueezeNet, the FCNs, the MNIST siamese net): at 0.01 the siamese 2-d
      features came out near 1e-4 long, under the 1e-4 that Caffe's ContrastiveLoss
      backward adds to the distance, and three steps left the loss where it was;
    * "uniform", in its [min, max] (LRCN)."""
    rng = np.random.default_rng(seed)
    shapes, _ = param_shapes(param)
    layers = {l.name: l for l in param.layer}
    for name, s in shapes.items():
        layer = layers[name]
        if layer.type == "Scale":
            yield name, [np.ones(s[0], np.float32)] + [np.zeros(b, np.float32) for b in s[1:]]
            continue
        if layer.type == "PReLU":       # (Caffe's default filler: constant 0.25)
            filler = layer.prelu_param.filler
            yield name, [np.full(s[0], filler.value if filler.HasField("value") else 0.25,
                                 np.float32)]
            continue
        filler = _layer_param(layer).weight_filler
        arrays = []
        for i, shape in enumerate(s):
            if _is_bias(layer, i):
                arrays.append(np.zeros(shape, np.float32))
            elif filler.type in ("uniform", "xavier"):     # (drawn in float32: see above)
                if filler.type == "xavier":     # (Caffe's default variance_norm, FAN_IN)
                    hi = math.sqrt(3 / math.prod(shape[1:]))
                    lo = -hi
                else:
                    lo, hi = filler.min, filler.max
                arrays.append(rng.random(shape, dtype=np.float32))
                arrays[-1] *= np.float32(hi - lo)
                arrays[-1] += np.float32(lo)
            else:
                std = math.sqrt(2 / math.prod(shape[1:])) if filler.type == "msra" else 0.01
                arrays.append(rng.standard_normal(shape, dtype=np.float32))
                arrays[-1] *= np.float32(std)
        yield name, arrays


def _layer_param(layer):
    """The message of ``layer``'s own parameters (its fillers)."""
    return {"Convolution": layer.convolution_param, "Deconvolution": layer.convolution_param,
            "InnerProduct": layer.inner_product_param, "Embed": layer.embed_param,
            "LSTM": layer.recurrent_param}[layer.type]


def _is_bias(layer, i):
    """Whether param ``i`` of ``layer`` is a bias (LSTM's b_c is its second; the others'
    bias follows their one weight)."""
    return i == 1 if layer.type == "LSTM" else i > 0


def frozen_layers(param):
    """Layers whose every param has lr_mult 0 (FCN's bilinear upsampling): Caffe neither
    updates them nor computes their weight gradients, and neither do the references."""
    return {l.name for l in param.layer if l.param and all(p.lr_mult == 0 for p in l.param)}


def crop(l, x, like):
    """Caffe's Crop of the spatial axes (axis 2, FCN's) to ``like``'s size, in any
    framework's arrays."""
    p = l.crop_param
    if p.axis != 2:
        raise NotImplementedError("Crop axis %d" % p.axis)
    off = list(p.offset) * 2 if len(p.offset) == 1 else list(p.offset) or [0, 0]
    h, w = like.shape[2:]
    return x[:, :, off[0]:off[0] + h, off[1]:off[1] + w]


def loss_divisor(l, valid_count, batch, count):
    """SoftmaxWithLoss's normalization (``normalize: false`` is BATCH_SIZE, Caffe's)."""
    p = l.loss_param
    mode = ((p.VALID if p.normalize else p.BATCH_SIZE) if p.HasField("normalize")
            else p.normalization)
    return {p.VALID: valid_count, p.BATCH_SIZE: batch, p.FULL: count, p.NONE: 1}[mode]


def init_stats(param):
    """BatchNorm's running statistics {layer: (mean, variance)}, not learned: zeros and
    ones (Caffe keeps their sums and a scale factor; the references keep the averages)."""
    _, blob_shape = param_shapes(param)
    return {name: (np.zeros(blob_shape[bottoms[0]][1], np.float32),
                   np.ones(blob_shape[bottoms[0]][1], np.float32))
            for typ, name, bottoms, tops, l in layer_list(param) if typ == "BatchNorm"}


def feeds(param, seed=1):
    """{input blob: numpy array}, float32, each as the layers that read it take it:
    Gaussian data; labels, ints below 10 (every classifier is wider); an Embed's
    indices, ints below its input_dim; a recurrent layer's cont, 0 at t = 0 and 1 after
    (each stream one sequence, as the references' zero initial state has it). Labels
    shaped as a cont (T, N) are sequences: where the loss has an ignore_label, every
    other stream ends 5 timesteps early, its last labels the ignored one (padding)."""
    rng = np.random.RandomState(seed)
    inp = param.layer[0]
    shapes = {t: tuple(s.dim) for t, s in zip(inp.top, inp.input_param.shape)}
    _, blob_shape = param_shapes(param)
    role = {}       # input blob: (type, bottom index, layer) of its first reader
    for typ, name, bottoms, tops, l in layer_list(param):
        for i, b in enumerate(bottoms):
            if b in shapes:
                role.setdefault(b, (typ, i, l))

    def is_cont(top):
        return role.get(top, (None,))[0] in ("LSTM", "RNN") and role[top][1] == 1
    cont_shapes = {shapes[top] for top in shapes if is_cont(top)}
    out = {}
    for top, shape in shapes.items():
        typ, i, l = role.get(top, (None, 0, None))
        if typ == "Embed":
            out[top] = rng.randint(0, l.embed_param.input_dim, size=shape).astype(np.float32)
        elif is_cont(top):
            out[top] = np.ones(shape, np.float32)
            out[top][0] = 0
        elif typ == "ContrastiveLoss" and i == 2:      # similar (1) or not (0)
            out[top] = rng.randint(0, 2, size=shape).astype(np.float32)
        elif typ == "SoftmaxWithLoss" and i == 1:
            classes = blob_shape[l.bottom[0]][l.softmax_param.axis]
            label = rng.randint(0, min(10, classes), size=shape).astype(np.float32)
            if l.loss_param.HasField("ignore_label") and shape in cont_shapes:
                label[-5:, ::2] = l.loss_param.ignore_label
            out[top] = label
        else:
            out[top] = rng.randn(*shape).astype(np.float32)
    return out


def contrastive_margin(l):
    """ContrastiveLoss's margin (the current form only: Caffe's legacy_version squares
    nothing and is not written here)."""
    if l.contrastive_loss_param.legacy_version:
        raise NotImplementedError("ContrastiveLoss legacy_version")
    return l.contrastive_loss_param.margin


def contrastive_distance(d_sq, sqrt, stop_gradient):
    """sqrt(d_sq) whose derivative is Caffe's, 1 / (2 (sqrt(d_sq) + 1e-4)): Caffe's
    ContrastiveLoss backward puts 1e-4 beside the distance it divides by, so a
    dissimilar pair's diff is the formula's times dist / (dist + 1e-4). The references
    differentiate this (the value is the distance; the rest has value 0) and compute
    Caffe's diffs, in any framework (``sqrt`` and ``stop_gradient`` its own)."""
    dist = stop_gradient(sqrt(d_sq))
    return dist + (d_sq - stop_gradient(d_sq)) / (2 * (dist + 1e-4))


def eltwise(l, xs, maximum):
    """Eltwise SUM with its coefficients, PROD (OpenPose's masks) or MAX (Light CNN's
    Max-Feature-Maps): the operations the zoo nets use, in whichever framework's arrays
    ``xs`` are (``maximum``: its elementwise max of two)."""
    p = l.eltwise_param
    if p.operation == p.MAX:
        out = xs[0]
        for v in xs[1:]:
            out = maximum(out, v)
        return out
    if p.operation == p.PROD:
        out = xs[0]
        for v in xs[1:]:
            out = out * v
        return out
    if p.operation != p.SUM:
        raise NotImplementedError("Eltwise %s" % p.operation)
    coeffs = list(p.coeff) or [1.0] * len(xs)
    return sum(c * v if c != 1 else v for c, v in zip(coeffs, xs))


# ---------------------------------------------------------------------------
# pure JAX, written the direct way
# ---------------------------------------------------------------------------
def jax_forward_fn(param, train):
    """f(params, feeds, key, stats) -> (loss, outputs, new stats) with lax convolutions
    and a ``lax.scan`` per LSTM (``feeds``: {input blob: array}, :func:`feeds`;
    ``stats``: BatchNorm's running averages, :func:`init_stats`)."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    layers = layer_list(param)
    shared = shared_layers(param)

    def per_channel(v):
        return v[None, :, None, None]

    def f(params, feeds, key, stats=None):
        params = {**params, **{n: params[o] for n, o in shared.items()}}
        env = dict(feeds)
        new_stats = {}
        loss = 0.0
        for i, (typ, name, bottoms, tops, l) in enumerate(layers):
            xs = [env[b] for b in bottoms]
            x = xs[0]
            if typ == "Convolution":
                k, s, pad, g, o, bias = conv_params(l)
                w = params[name][0]
                y = lax.conv_general_dilated(x, w, s, [(p, p) for p in pad],
                                             rhs_dilation=conv_dilation(l),
                                             feature_group_count=g)
                if bias:
                    y = y + params[name][1][None, :, None, None]
            elif typ == "Deconvolution":   # the transpose of a convolution with Caffe's
                k, s, pad, g, o, bias = conv_params(l)   # weight as its (O, I, k...) kernel
                if g != 1:
                    raise NotImplementedError("grouped Deconvolution")
                y = lax.conv_transpose(x, params[name][0], s,
                                       [(kk - 1 - p, kk - 1 - p) for kk, p in zip(k, pad)],
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                       transpose_kernel=True)
                if bias:
                    y = y + params[name][1][None, :, None, None]
            elif typ == "Crop":
                y = crop(l, x, xs[1])
            elif typ == "InnerProduct":
                axis = l.inner_product_param.axis % x.ndim
                y = x.reshape(x.shape[:axis] + (-1,)) @ params[name][0].T
                if len(params[name]) > 1:
                    y = y + params[name][1]
            elif typ == "Embed":
                y = params[name][0][x.astype(jnp.int32)]
                if len(params[name]) > 1:
                    y = y + params[name][1]
            elif typ == "LSTM":
                y = jax_lstm(params[name], x, xs[1], xs[2] if len(xs) > 2 else None)
            elif typ == "ReLU":
                y = jnp.maximum(x, 0)
            elif typ == "PReLU":     # max(x, 0) + slope * min(x, 0), a slope per channel
                a = params[name][0].reshape((1, -1) + (1,) * (x.ndim - 2))
                y = jnp.maximum(x, 0) + a * jnp.minimum(x, 0)
            elif typ == "Sigmoid":
                y = jax.nn.sigmoid(x)
            elif typ == "Flatten":
                y = x.reshape(x.shape[0], -1)
            elif typ in ("SigmoidCrossEntropyLoss", "EuclideanLoss"):   # per image (BATCH_SIZE)
                t = xs[1].reshape(x.shape)
                if typ == "EuclideanLoss":
                    term = jnp.sum((x - t) ** 2) / 2 / x.shape[0]
                else:
                    term = jnp.sum(jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x))))
                    term = term / x.shape[0]
                loss = loss + (l.loss_weight[0] if l.loss_weight else 1.0) * term
                y = term
            elif typ == "ContrastiveLoss":
                d_sq = jnp.sum((x - xs[1]).reshape(x.shape[0], -1) ** 2, axis=1)
                dist = contrastive_distance(d_sq, jnp.sqrt, lax.stop_gradient)
                term = jnp.sum(jnp.where(xs[2].astype(jnp.int32) != 0, d_sq, jnp.maximum(
                    contrastive_margin(l) - dist, 0) ** 2)) / x.shape[0] / 2
                loss = loss + (l.loss_weight[0] if l.loss_weight else 1.0) * term
                y = term
            elif typ == "Slice":
                y = [x[:, lo:hi] for lo, hi in slice_bounds(l, x.shape[1])]
            elif typ == "Pooling":
                k, s, pad = pool_params(l, x.shape[2:])
                geo = _pool_geometry(zip(k, s, pad), x.shape[2:], pool_ceil(l))
                padding = ((0, 0), (0, 0)) + tuple(p for _, p in geo)
                if l.pooling_param.pool == 0:   # MAX
                    y = lax.reduce_window(x, -jnp.inf, lax.max, (1, 1) + k, (1, 1) + s, padding)
                else:   # AVE: Caffe's divisor counts the padding, not the overhang
                    y = lax.reduce_window(x, 0.0, lax.add, (1, 1) + k, (1, 1) + s, padding)
                    y = y / ave_divisor(geo, k, s, pad, x.shape[2:])
            elif typ == "LRN":
                p = l.lrn_param
                half = (p.local_size - 1) // 2
                if p.norm_region == p.WITHIN_CHANNEL:   # 1 + alpha * the window's mean
                    sq = lax.reduce_window(x * x, 0.0, lax.add, (1, 1) + (p.local_size,) * 2,
                                           (1,) * 4, ((0, 0), (0, 0)) + ((half, half),) * 2)
                    y = x * (1 + p.alpha / p.local_size ** 2 * sq) ** -p.beta
                else:
                    sq = lax.reduce_window(x * x, 0.0, lax.add, (1, p.local_size, 1, 1),
                                           (1,) * 4, ((0, 0), (half, half), (0, 0), (0, 0)))
                    y = x * (p.k + p.alpha / p.local_size * sq) ** -p.beta
            elif typ == "Dropout":
                if train:
                    ratio = l.dropout_param.dropout_ratio
                    keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1 - ratio, x.shape)
                    y = jnp.where(keep, x / (1 - ratio), 0)
                else:
                    y = x
            elif typ == "BatchNorm":   # batch statistics in training, as Caffe's TRAIN
                p = l.batch_norm_param
                mean, var = stats[name]
                if train:
                    m = x.size // x.shape[1]
                    mean, var = jnp.mean(x, axis=(0, 2, 3)), jnp.var(x, axis=(0, 2, 3))
                    maf = p.moving_average_fraction
                    new_stats[name] = (maf * stats[name][0] + (1 - maf) * mean,
                                       maf * stats[name][1] + (1 - maf) * var * m / (m - 1))
                y = (x - per_channel(mean)) * per_channel(lax.rsqrt(var + p.eps))
            elif typ == "Scale" and len(xs) == 2:
                y = channel_weights(l, x, xs[1])
            elif typ == "Scale":
                y = x * per_channel(params[name][0])
                if len(params[name]) > 1:
                    y = y + per_channel(params[name][1])
            elif typ == "Reshape":
                y = x.reshape(reshaped(l, x.shape))
            elif typ == "Eltwise":
                y = eltwise(l, xs, jnp.maximum)
            elif typ == "Concat":
                y = jnp.concatenate(xs, axis=1)
            elif typ == "SoftmaxWithLoss":   # per image, pixel (FCN) or timestep (LRCN)
                axis = l.softmax_param.axis % x.ndim
                logp = jax.nn.log_softmax(x, axis=axis)
                lab = xs[1].astype(jnp.int32).reshape(x.shape[:axis] + (1,) + x.shape[axis + 1:])
                valid = (lab != l.loss_param.ignore_label if l.loss_param.HasField(
                    "ignore_label") else jnp.ones(lab.shape, bool))
                picked = jnp.take_along_axis(logp, jnp.where(valid, lab, 0), axis=axis)
                term = -jnp.sum(jnp.where(valid, picked, 0)) / loss_divisor(
                    l, jnp.maximum(jnp.sum(valid, dtype=x.dtype), 1), math.prod(x.shape[:axis]),
                    lab.size)
                weight = l.loss_weight[0] if l.loss_weight else 1.0
                loss = loss + weight * term
                y = term
            elif typ == "Softmax":
                y = jax.nn.softmax(x, axis=1)
            else:
                raise NotImplementedError(typ)
            for t, yt in zip(tops, y if typ == "Slice" else [y] * len(tops)):
                env[t] = yt
        return loss, env, new_stats

    return f


def jax_lstm(params, x, cont, static):
    """Caffe's LSTM over (T, N, D): gates (i, f, o, g) = W_xc x_t + b_c [+ W_xc_static
    x_static] + W_hc (cont_t h_{t-1}); c_t = cont_t f c_{t-1} + i g; h_t = o tanh(c_t);
    from zero state, one ``lax.scan`` step per timestep."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    w_x, b, w_h = params[0], params[1], params[-1]
    h = w_h.shape[1]
    pre = x.reshape(x.shape[:2] + (-1,)) @ w_x.T + b
    if static is not None:
        pre = pre + (static.reshape(static.shape[0], -1) @ params[2].T)[None]

    def step(state, inputs):
        h_prev, c_prev = state
        pre_t, cont_t = inputs
        cont_t = cont_t[:, None]
        g = pre_t + (cont_t * h_prev) @ w_h.T
        i, f, o = (jax.nn.sigmoid(g[:, k * h:(k + 1) * h]) for k in range(3))
        c = cont_t * f * c_prev + i * jnp.tanh(g[:, 3 * h:])
        h_t = o * jnp.tanh(c)
        return (h_t, c), h_t

    zero = jnp.zeros((x.shape[1], h), x.dtype)
    return lax.scan(step, (zero, zero), (pre, cont))[1]


def jcaffe_solver(name, batch, solver="SGD"):
    """jcaffe's ``solver`` (SGD or Adam) for net ``name`` (the same update as the
    references), its input blobs filled once."""
    import jcaffe
    from jcaffe.proto import caffe_pb2 as pb2
    param = net_param(name, batch)
    rates = ADAM if solver == "Adam" else {"base_lr": LR, "momentum": MOMENTUM}
    sp = pb2.SolverParameter(weight_decay=WEIGHT_DECAY, lr_policy="fixed", max_iter=10 ** 9,
                             display=0, random_seed=1, type=solver, **rates)
    sp.net_param.CopyFrom(param)
    solver = jcaffe.get_solver(sp)
    load_reference_params(solver.net, param)
    for top, value in feeds(param).items():
        solver.net.blobs[top].data[...] = value
    return solver


def load_reference_params(net, param):
    """Give jcaffe's ``net`` the references' values: :func:`init_params` and, for each
    BatchNorm, running averages :func:`init_stats` (Caffe's sums, scale factor 1). The
    fillers' zero statistics would make a TEST-phase BatchNorm divide by sqrt(eps)."""
    for name, values in reference_params(param):
        for blob, value in zip(net.params[name], values):
            blob.data[...] = value
    for name, (mean, var) in init_stats(param).items():
        blobs = net.params[name]
        blobs[0].data[...], blobs[1].data[...], blobs[2].data[...] = mean, var, 1.0


def param_mults(param):
    """{layer: [(lr_mult, decay_mult) of each of its params]}, Caffe's defaults (1, 1)
    where the prototxt names none."""
    shapes, _ = param_shapes(param)
    layers = {l.name: l for l in param.layer}
    return {name: [((layers[name].param[i].lr_mult, layers[name].param[i].decay_mult)
                    if i < len(layers[name].param) else (1.0, 1.0)) for i in range(len(s))]
            for name, s in shapes.items()}


def jax_history(params, solver="SGD"):
    """The pure JAX step's history for ``solver``: (momentum,) or Adam's (m, v), zeros
    shaped as ``params``."""
    import jax
    import jax.numpy as jnp
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return (zeros, jax.tree_util.tree_map(jnp.zeros_like, params)) if solver == "Adam" \
        else (zeros,)


def jax_train_step(param, solver="SGD"):
    """jit(value_and_grad + the update, SGD momentum or Adam, with weight decay; each
    param's lr_mult and decay_mult), Caffe's update order: step(params, history, stats,
    inputs, key, t) -> (params, history,
    stats, loss), ``history`` as :func:`jax_history` makes it, ``inputs`` as
    :func:`feeds` gives them (jax arrays), ``t`` the iteration (Adam's bias correction)."""
    import jax
    import jax.numpy as jnp
    f = jax_forward_fn(param, train=True)
    frozen = frozen_layers(param)
    mults = param_mults(param)
    lr_mult = {k: [m[0] for m in v] for k, v in mults.items()}

    def loss_fn(trained, fixed, inputs, key, stats):
        loss, _, new_stats = f({**trained, **fixed}, inputs, key, stats)
        return loss, new_stats

    def regularized(g, params):     # (Caffe's Regularize: decay_mult per param)
        return {k: [gi + WEIGHT_DECAY * m[1] * p for gi, p, m in zip(g[k], params[k], mults[k])]
                for k in params}

    def sgd(params, g, history, t):
        g = regularized(g, params)
        mom = {k: [MOMENTUM * m + LR * r * gi for m, gi, r in zip(history[0][k], g[k], lr_mult[k])]
               for k in params}
        return jax.tree_util.tree_map(lambda p, m: p - m, params, mom), (mom,)

    def adam(params, g, history, t):
        b1, b2, delta = ADAM["momentum"], ADAM["momentum2"], ADAM["delta"]
        g = regularized(g, params)
        m = jax.tree_util.tree_map(lambda m, gi: b1 * m + (1 - b1) * gi, history[0], g)
        v = jax.tree_util.tree_map(lambda v, gi: b2 * v + (1 - b2) * gi * gi, history[1], g)
        step = (t + 1).astype(jnp.float32)
        rate = ADAM["base_lr"] * jnp.sqrt(1 - b2 ** step) / (1 - b1 ** step)
        params = {k: [p - rate * r * (mi / (jnp.sqrt(vi) + delta))
                      for p, mi, vi, r in zip(params[k], m[k], v[k], lr_mult[k])]
                  for k in params}
        return params, (m, v)
    update = adam if solver == "Adam" else sgd

    @jax.jit
    def step(params, history, stats, inputs, key, t):
        fixed = {k: v for k, v in params.items() if k in frozen}
        params = {k: v for k, v in params.items() if k not in frozen}
        (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(
            params, fixed, inputs, key, stats)
        held = [{k: v for k, v in h.items() if k in frozen} for h in history]
        params, history = update(params, g, tuple({k: h[k] for k in params} for h in history), t)
        return ({**params, **fixed}, tuple({**h, **kept} for h, kept in zip(history, held)),
                stats, loss)

    return step


def jax_deploy_forward(param, final):
    """jit(f(params, stats, inputs) -> the ``final`` blob), ``inputs`` as :func:`feeds`
    gives them (jax arrays)."""
    import jax
    f = jax_forward_fn(param, train=False)
    return jax.jit(lambda params, stats, inputs: f(params, inputs, None, stats)[1][final])


# ---------------------------------------------------------------------------
# PyTorch eager
# ---------------------------------------------------------------------------
def torch_params(param):
    """:func:`init_params` laid out for PyTorch: each LSTM as ``torch.nn.LSTM`` keeps
    it, [W_ih, W_hh, b_ih] with the gates' rows in torch's order (i, f, g, o; Caffe's is
    i, f, o, g) and a static input's weight joined to W_ih's columns (the forward feeds
    it beside x_t). The same values, so the same arithmetic."""
    layers = {l.name: l for l in param.layer}
    out = {}
    for name, arrays in init_params(param).items():
        if layers[name].type == "LSTM":
            h = arrays[-1].shape[1]
            order = np.concatenate([np.arange(k * h, (k + 1) * h) for k in (0, 1, 3, 2)])
            w_ih = np.concatenate([arrays[0]] + arrays[2:-1], axis=1)
            arrays = [w_ih[order], arrays[-1][order], arrays[1][order]]
        out[name] = arrays
    return out


def torch_forward_fn(param, train):
    """f(params, inputs, stats) -> (loss, outputs), ``params`` as :func:`torch_params`
    lays them out, ``inputs`` as :func:`feeds` gives them (tensors). An LSTM runs as
    ``torch.nn.LSTM`` from zero state: its cont is not read, which is Caffe's arithmetic
    for the cont :func:`feeds` makes (0 at t = 0 only)."""
    import torch
    import torch.nn.functional as F
    layers = layer_list(param)
    shared = shared_layers(param)
    lstms = {}

    def lstm(name, ps, x, static):
        w_ih, w_hh, b_ih = ps
        if name not in lstms:       # (its own weights unused: functional_call's are)
            lstms[name] = (torch.nn.LSTM(w_ih.shape[1], w_hh.shape[1]).to(w_ih.device),
                           torch.zeros_like(b_ih))
        module, b_hh = lstms[name]
        x = x.reshape(x.shape[:2] + (-1,))
        if static is not None:
            static = static.reshape(static.shape[0], -1)
            x = torch.cat([x, static[None].expand(x.shape[0], -1, -1)], dim=2)
        return torch.func.functional_call(module, {
            "weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih,
            "bias_hh_l0": b_hh}, (x,))[0]

    def f(params, inputs, stats=None):
        """-> (loss, outputs); ``stats``: {BatchNorm layer: (mean, var) tensors},
        updated in place in training."""
        params = {**params, **{n: params[o] for n, o in shared.items()}}
        env = dict(inputs)
        loss = 0.0
        for typ, name, bottoms, tops, l in layers:
            xs = [env[b] for b in bottoms]
            x = xs[0]
            if typ == "Convolution":
                k, s, pad, g, o, bias = conv_params(l)
                ps = params[name]
                y = F.conv2d(x, ps[0], ps[1] if bias else None, s, pad, conv_dilation(l),
                             groups=g)
            elif typ == "Deconvolution":
                k, s, pad, g, o, bias = conv_params(l)
                ps = params[name]
                y = F.conv_transpose2d(x, ps[0], ps[1] if bias else None, s, pad, groups=g)
            elif typ == "Crop":
                y = crop(l, x, xs[1])
            elif typ == "InnerProduct":
                ps = params[name]
                axis = l.inner_product_param.axis % x.dim()
                y = F.linear(x.reshape(x.shape[:axis] + (-1,)), ps[0],
                             ps[1] if len(ps) > 1 else None)
            elif typ == "Embed":
                ps = params[name]
                y = F.embedding(x.long(), ps[0])
                if len(ps) > 1:
                    y = y + ps[1]
            elif typ == "LSTM":
                y = lstm(name, params[name], x, xs[2] if len(xs) > 2 else None)
            elif typ == "ReLU":
                y = F.relu(x)
            elif typ == "PReLU":
                y = F.prelu(x, params[name][0].reshape(-1))
            elif typ == "Sigmoid":
                y = torch.sigmoid(x)
            elif typ == "Flatten":
                y = x.reshape(x.shape[0], -1)
            elif typ in ("SigmoidCrossEntropyLoss", "EuclideanLoss"):   # per image (BATCH_SIZE)
                t = xs[1].reshape(x.shape)
                if typ == "EuclideanLoss":
                    term = ((x - t) ** 2).sum() / 2 / x.shape[0]
                else:
                    term = F.binary_cross_entropy_with_logits(x, t, reduction="sum") / x.shape[0]
                loss = loss + (l.loss_weight[0] if l.loss_weight else 1.0) * term
                y = term
            elif typ == "ContrastiveLoss":
                d_sq = ((x - xs[1]).reshape(x.shape[0], -1) ** 2).sum(1)
                dist = contrastive_distance(d_sq, torch.sqrt, torch.Tensor.detach)
                term = torch.where(xs[2].int() != 0, d_sq, torch.clamp(
                    contrastive_margin(l) - dist, min=0) ** 2).sum() / x.shape[0] / 2
                loss = loss + (l.loss_weight[0] if l.loss_weight else 1.0) * term
                y = term
            elif typ == "Slice":
                y = [x[:, lo:hi] for lo, hi in slice_bounds(l, x.shape[1])]
            elif typ == "Pooling":
                k, s, pad = pool_params(l, x.shape[2:])
                if l.pooling_param.pool == 0:
                    y = F.max_pool2d(x, k, s, pad, ceil_mode=pool_ceil(l))
                else:
                    y = F.avg_pool2d(x, k, s, pad, ceil_mode=pool_ceil(l),
                                     count_include_pad=True)
            elif typ == "LRN":
                p = l.lrn_param
                if p.norm_region == p.WITHIN_CHANNEL:   # the mean counts the padding
                    mean = F.avg_pool2d(x * x, p.local_size, 1, (p.local_size - 1) // 2,
                                        count_include_pad=True)
                    y = x * (1 + p.alpha * mean) ** -p.beta
                else:
                    y = F.local_response_norm(x, p.local_size, p.alpha, p.beta, p.k)
            elif typ == "Dropout":
                y = F.dropout(x, l.dropout_param.dropout_ratio, training=train)
            elif typ == "BatchNorm":
                p = l.batch_norm_param
                y = F.batch_norm(x, *stats[name], training=train,
                                 momentum=1 - p.moving_average_fraction, eps=p.eps)
            elif typ == "Scale" and len(xs) == 2:
                y = channel_weights(l, x, xs[1])
            elif typ == "Reshape":
                y = x.reshape(reshaped(l, tuple(x.shape)))
            elif typ == "Scale":
                ps = params[name]
                y = x * ps[0].view(1, -1, 1, 1)
                if len(ps) > 1:
                    y = y + ps[1].view(1, -1, 1, 1)
            elif typ == "Eltwise":
                y = eltwise(l, xs, torch.maximum)
            elif typ == "Concat":
                y = torch.cat(xs, dim=1)
            elif typ == "SoftmaxWithLoss":   # per image, pixel (FCN) or timestep (LRCN)
                axis = l.softmax_param.axis % x.dim()
                x = x.movedim(axis, 1)      # (cross_entropy's classes: axis 1)
                lab = xs[1].long().reshape((x.shape[0],) + tuple(x.shape[2:]))
                ignore = (l.loss_param.ignore_label if l.loss_param.HasField("ignore_label")
                          else -100)
                valid = int((lab != ignore).sum()) if ignore != -100 else lab.numel()
                term = F.cross_entropy(x, lab, ignore_index=ignore, reduction="sum") / \
                    loss_divisor(l, max(valid, 1), math.prod(xs[0].shape[:axis]), lab.numel())
                loss = loss + (l.loss_weight[0] if l.loss_weight else 1.0) * term
                y = term
            elif typ == "Softmax":
                y = F.softmax(x, dim=1)
            else:
                raise NotImplementedError(typ)
            for t, yt in zip(tops, y if typ == "Slice" else [y] * len(tops)):
                env[t] = yt
        return loss, env

    return f
