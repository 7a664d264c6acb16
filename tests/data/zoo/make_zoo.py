"""Writes the model-zoo prototxts in this folder from the published architectures.

Run ``python tests/data/zoo/make_zoo.py`` after editing; the .prototxt files are
committed so tests and users read them directly. Data layers are DummyData
(Gaussian images, constant labels) with each net's published input size and
batch; the tests shrink batch and, where the architecture allows, image size.
Built with jcaffe's NetSpec, as pycaffe users write nets. The nets written from a
published Caffe port are checked against it layer for layer by compare_port.py.
"""
import functools
import os

from jcaffe import NetSpec, layers as L, params as P

HERE = os.path.dirname(os.path.abspath(__file__))
GAUSS = dict(type="gaussian", std=0.01)
XAVIER = dict(type="xavier")
ZERO = dict(type="constant", value=0)
LEARN = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]


def data(n, batch, shape, classes=1000):
    n.data, n.label = L.DummyData(
        shape=[dict(dim=[batch] + list(shape)), dict(dim=[batch])],
        data_filler=[dict(type="gaussian", std=1), dict(type="constant", value=classes // 2)],
        ntop=2)


def conv(bottom, num, k, stride=1, pad=0, group=1, filler=XAVIER, bias=True, bias_value=0,
         dilation=1):
    kw = dict(num_output=num, kernel_size=k, weight_filler=filler)
    if stride != 1:
        kw["stride"] = stride
    if pad:
        kw["pad"] = pad
    if dilation != 1:
        kw["dilation"] = dilation
    if group != 1:
        kw["group"] = group
    if bias:
        kw["bias_filler"] = dict(type="constant", value=bias_value)
        return L.Convolution(bottom, param=LEARN, **kw)
    return L.Convolution(bottom, param=[dict(lr_mult=1, decay_mult=1)], bias_term=False, **kw)


def fc(bottom, num, filler=XAVIER, bias_value=0):
    return L.InnerProduct(bottom, num_output=num, param=LEARN, weight_filler=filler,
                          bias_filler=dict(type="constant", value=bias_value))


def relu(bottom):
    return L.ReLU(bottom, in_place=True)


def max_pool(bottom, k, s, pad=0):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=k, stride=s, **({"pad": pad} if pad else {}))


def ave_pool(bottom, k, s):
    return L.Pooling(bottom, pool=P.Pooling.AVE, kernel_size=k, stride=s)


def lrn(bottom, size=5, alpha=1e-4, beta=0.75, region=None):
    kw = dict(local_size=size, alpha=alpha, beta=beta)
    if region is not None:
        kw["norm_region"] = region
    return L.LRN(bottom, **kw)


def heads(n, top, with_accuracy=True):
    if with_accuracy:
        n.accuracy = L.Accuracy(top, n.label, include=dict(phase=1))
    n.loss = L.SoftmaxWithLoss(top, n.label)


def _bn_relu(n, name, bottom, relu_after=True, eps=None, top_name=None, maf=None,
             rates=False):
    """A port's normalization, soeaver/caffe-model's names: BatchNorm in place as
    ``name``_bn (or, with ``top_name``, out of place into a top and layer of that
    name), Scale with bias ``name``_scale and (``relu_after``) ReLU ``name``_relu, both
    in place. ``eps``, ``maf`` (moving_average_fraction): BatchNorm's, where the port
    writes them; ``rates``: the port writes BatchNorm's three blobs at rate 0 and
    Scale's at LEARN's."""
    bn = {k: v for k, v in (("eps", eps), ("moving_average_fraction", maf)) if v is not None}
    kw = dict(batch_norm_param=bn) if bn else {}
    scale = {}
    if rates:
        kw["param"] = [dict(lr_mult=0, decay_mult=0)] * 3
        scale["param"] = LEARN
    if top_name:
        n[top_name] = top = L.BatchNorm(bottom, **kw)
    else:
        n[name + "_bn"] = top = L.BatchNorm(bottom, in_place=True, **kw)
    n[name + "_scale"] = L.Scale(top, bias_term=True, in_place=True, **scale)
    if relu_after:
        n[name + "_relu"] = relu(top)
    return top


def lenet():
    n = NetSpec()
    data(n, 64, (1, 28, 28), classes=10)
    n.conv1 = conv(n.data, 20, 5)
    n.pool1 = max_pool(n.conv1, 2, 2)
    n.conv2 = conv(n.pool1, 50, 5)
    n.pool2 = max_pool(n.conv2, 2, 2)
    n.ip1 = fc(n.pool2, 500)
    n.relu1 = relu(n.ip1)
    n.ip2 = fc(n.ip1, 10)
    heads(n, n.ip2)
    return n


def cifar10_quick():
    n = NetSpec()
    data(n, 100, (3, 32, 32), classes=10)
    n.conv1 = conv(n.data, 32, 5, pad=2, filler=dict(type="gaussian", std=1e-4))
    n.pool1 = max_pool(n.conv1, 3, 2)
    n.relu1 = relu(n.pool1)
    n.conv2 = conv(n.pool1, 32, 5, pad=2, filler=GAUSS)
    n.relu2 = relu(n.conv2)
    n.pool2 = ave_pool(n.conv2, 3, 2)
    n.conv3 = conv(n.pool2, 64, 5, pad=2, filler=GAUSS)
    n.relu3 = relu(n.conv3)
    n.pool3 = ave_pool(n.conv3, 3, 2)
    n.ip1 = fc(n.pool3, 64, filler=dict(type="gaussian", std=0.1))
    n.ip2 = fc(n.ip1, 10, filler=dict(type="gaussian", std=0.1))
    heads(n, n.ip2)
    return n


def cifar10_full():
    n = NetSpec()
    data(n, 100, (3, 32, 32), classes=10)
    within = P.LRN.WITHIN_CHANNEL
    n.conv1 = conv(n.data, 32, 5, pad=2, filler=dict(type="gaussian", std=1e-4))
    n.pool1 = max_pool(n.conv1, 3, 2)
    n.relu1 = relu(n.pool1)
    n.norm1 = lrn(n.pool1, 3, 5e-5, 0.75, within)
    n.conv2 = conv(n.norm1, 32, 5, pad=2, filler=GAUSS)
    n.relu2 = relu(n.conv2)
    n.pool2 = ave_pool(n.conv2, 3, 2)
    n.norm2 = lrn(n.pool2, 3, 5e-5, 0.75, within)
    n.conv3 = conv(n.norm2, 64, 5, pad=2, filler=GAUSS)
    n.relu3 = relu(n.conv3)
    n.pool3 = ave_pool(n.conv3, 3, 2)
    n.ip1 = L.InnerProduct(n.pool3, num_output=10,
                           param=[dict(lr_mult=1, decay_mult=250), dict(lr_mult=2, decay_mult=0)],
                           weight_filler=GAUSS, bias_filler=ZERO)
    heads(n, n.ip1)
    return n


def cifar10_full_sigmoid_bn():
    """Caffe's examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt: CIFAR-10
    full's three 5x5 convolutions (no biases) each followed by BatchNorm (batch
    statistics in TRAIN, the running averages in TEST; its three blobs at lr_mult 0)
    and a Sigmoid, no LRN, the classifier's bias at lr_mult 1."""
    n = NetSpec()
    data(n, 100, (3, 32, 32), classes=10)
    stats = [dict(lr_mult=0)] * 3
    n.conv1 = conv(n.data, 32, 5, pad=2, filler=dict(type="gaussian", std=1e-4), bias=False)
    n.pool1 = max_pool(n.conv1, 3, 2)
    n.bn1 = L.BatchNorm(n.pool1, param=stats)
    n.Sigmoid1 = L.Sigmoid(n.bn1)
    n.conv2 = conv(n.Sigmoid1, 32, 5, pad=2, filler=GAUSS, bias=False)
    n.bn2 = L.BatchNorm(n.conv2, param=stats)
    n.Sigmoid2 = L.Sigmoid(n.bn2)
    n.pool2 = ave_pool(n.Sigmoid2, 3, 2)
    n.conv3 = conv(n.pool2, 64, 5, pad=2, filler=GAUSS, bias=False)
    n.bn3 = L.BatchNorm(n.conv3, param=stats)
    n.Sigmoid3 = L.Sigmoid(n.bn3)
    n.pool3 = ave_pool(n.Sigmoid3, 3, 2)
    n.ip1 = L.InnerProduct(n.pool3, num_output=10,
                           param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=1, decay_mult=0)],
                           weight_filler=GAUSS, bias_filler=ZERO)
    heads(n, n.ip1)
    return n


def mnist_autoencoder():
    """Caffe's examples/mnist autoencoder (Hinton & Salakhutdinov 2006): 784-1000-500-250-30
    and back through sigmoids, SigmoidCrossEntropyLoss against the input itself, and the
    Euclidean error reported with loss_weight 0. Sparse Gaussian fillers (15 inputs per
    unit), biases learned at the weights' rate without decay."""
    n = NetSpec()
    n.data = L.DummyData(shape=dict(dim=[100, 1, 28, 28]),
                         data_filler=dict(type="uniform", min=0, max=1))
    n.flatdata = L.Flatten(n.data)
    learn = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=1, decay_mult=0)]
    sparse = dict(type="gaussian", std=1, sparse=15)
    top = n.data
    for name, num in (("encode1", 1000), ("encode2", 500), ("encode3", 250), ("encode4", 30),
                      ("decode4", 250), ("decode3", 500), ("decode2", 1000), ("decode1", 784)):
        top = L.InnerProduct(top, num_output=num, param=learn, weight_filler=sparse,
                             bias_filler=ZERO)
        setattr(n, name, top)
        if name not in ("encode4", "decode1"):       # (the code and the output: linear)
            top = L.Sigmoid(top)
            setattr(n, name + "neuron", top)
    n.loss = L.SigmoidCrossEntropyLoss(n.decode1, n.flatdata)
    n.decode1neuron = L.Sigmoid(n.decode1)
    n.l2_error = L.EuclideanLoss(n.decode1neuron, n.flatdata, loss_weight=0)
    return n

def mnist_siamese():
    """Caffe's examples/siamese (Hadsell, Chopra & LeCun 2006): a pair of MNIST digits
    stacked as 2 channels, cut apart by a Slice; each goes through the same LeNet-style
    tower (conv 20 and 50, 5x5, MAX pools, ip 500 with ReLU, ip 10, feat 2), the second
    tower's layers sharing the first's params by name (conv1_w, conv1_b, ...);
    ContrastiveLoss (margin 1) of the two 2-d features against sim, 1 for a pair of the
    same digit. Biases at twice the weights' rate, no decay_mult (Caffe's prototxt)."""
    n = NetSpec()
    n.pair_data, n.sim = L.DummyData(
        shape=[dict(dim=[64, 2, 28, 28]), dict(dim=[64])],
        data_filler=[dict(type="uniform", min=0, max=1), dict(type="constant", value=1)],
        ntop=2)
    n.data, n.data_p = L.Slice(n.pair_data, ntop=2, slice_param=dict(slice_dim=1,
                                                                      slice_point=1))

    def shared(name):
        return [dict(name=name + "_w", lr_mult=1), dict(name=name + "_b", lr_mult=2)]

    def tower(x, s):
        kw = dict(weight_filler=XAVIER, bias_filler=dict(type="constant"))
        setattr(n, "conv1" + s, L.Convolution(x, param=shared("conv1"), num_output=20,
                                              kernel_size=5, stride=1, **kw))
        setattr(n, "pool1" + s, max_pool(getattr(n, "conv1" + s), 2, 2))
        setattr(n, "conv2" + s, L.Convolution(getattr(n, "pool1" + s), param=shared("conv2"),
                                              num_output=50, kernel_size=5, stride=1, **kw))
        setattr(n, "pool2" + s, max_pool(getattr(n, "conv2" + s), 2, 2))
        top = getattr(n, "pool2" + s)
        for name, num in (("ip1", 500), ("ip2", 10), ("feat", 2)):
            top = L.InnerProduct(top, param=shared(name), num_output=num, **kw)
            setattr(n, name + s, top)
            if name == "ip1":
                setattr(n, "relu1" + s, relu(top))
        return top
    feat, feat_p = tower(n.data, ""), tower(n.data_p, "_p")
    n.loss = L.ContrastiveLoss(feat, feat_p, n.sim, contrastive_loss_param=dict(margin=1))
    return n


def nin():
    """Network in Network (Lin, Chen & Yan 2014) for ImageNet, as its authors' Caffe
    prototxt (the model zoo's nin_imagenet) has it: four mlpconv blocks, each a
    convolution (11x11 stride 4, 5x5, 3x3, 3x3) and two 1x1 "cccp" convolutions, every
    one followed by an in-place ReLU; MAX pools 3/2 between the blocks and Dropout on
    the third pool; the last 1x1 gives the 1000 classes, through its ReLU, to a 6x6 AVE
    pool. Gaussian weights (std 0.01 or 0.05), zero biases; the Accuracy layer in TEST,
    the loss in TRAIN only. Layer names as published: no relu4 (relu3 is followed by
    relu5), and the last block's layers named "conv4-1024" and so on, their tops
    "conv4"."""
    n = NetSpec()
    data(n, 64, (3, 224, 224))
    wide = dict(type="gaussian", std=0.05)
    blocks = [("conv1", "cccp1", "cccp2", "pool0", 96, 11, 4, 0, GAUSS),
              ("conv2", "cccp3", "cccp4", "pool2", 256, 5, 1, 2, wide),
              ("conv3", "cccp5", "cccp6", "pool3", 384, 3, 1, 1, GAUSS),
              ("conv4", "cccp7", "cccp8", None, 1024, 3, 1, 1, wide)]
    relus = iter(["relu0", "relu1", "relu2", "relu3", "relu5", "relu6", "relu7", "relu8",
                  "relu9", "relu10", "relu11", "relu12"])
    top = n.data
    for first, second, third, pool, num, k, stride, pad, filler in blocks:
        suffix = "-1024" if first == "conv4" else ""
        for name, width, size, s, p, f in (
                (first, num, k, stride, pad, filler), (second, num, 1, 1, 0, wide),
                (third, 1000 if first == "conv4" else num, 1, 1, 0,
                 GAUSS if first == "conv4" else wide)):
            kw = dict(num_output=width, kernel_size=size, stride=s, weight_filler=f,
                      bias_filler=ZERO, param=LEARN)
            if p:
                kw["pad"] = p
            if suffix:
                kw["name"] = name + suffix
            n[name] = top = L.Convolution(top, **kw)
            n[next(relus)] = relu(top)
        if pool:
            n[pool] = top = max_pool(top, 3, 2)
        if pool == "pool3":
            n.drop = top = L.Dropout(top, in_place=True, dropout_ratio=0.5)
    n.pool4 = L.Pooling(n.cccp8, pool=P.Pooling.AVE, kernel_size=6, stride=1)
    n.accuracy = L.Accuracy(n.pool4, n.label, include=dict(phase=1))
    n.loss = L.SoftmaxWithLoss(n.pool4, n.label, include=dict(phase=0))
    return n


def squeezenet():
    """SqueezeNet v1.1 (Iandola et al. 2016; DeepScale's Caffe train_val.prototxt): a 3x3
    stride-2 conv1, then eight Fire modules (a 1x1 squeeze to 16-64 channels, expanded
    by a 1x1 and a padded 3x3 convolution side by side, their ReLUs, a Concat), MAX
    pools 3/2 after conv1, fire3 and fire5, Dropout, a 1x1 conv10 to the 1000 classes
    and global AVE pooling into SoftmaxWithLoss. Xavier weights (conv10: Gaussian
    0.01), default biases and multipliers (no param specs), as published."""
    n = NetSpec()
    data(n, 32, (3, 227, 227))

    def conv_relu(name, bottom, num, k, stride=1, pad=0, filler=XAVIER):
        kw = dict(num_output=num, kernel_size=k, weight_filler=filler)
        if stride != 1:
            kw["stride"] = stride
        if pad:
            kw["pad"] = pad
        top = L.Convolution(bottom, **kw)
        setattr(n, name, top)
        relu_name = name.replace("/", "/relu_") if "/" in name else "relu_" + name
        setattr(n, relu_name, relu(top))
        return top

    top = conv_relu("conv1", n.data, 64, 3, stride=2)
    n.pool1 = top = max_pool(top, 3, 2)
    for i, squeeze in zip(range(2, 10), (16, 16, 32, 32, 48, 48, 64, 64)):
        name = "fire%d/" % i
        s = conv_relu(name + "squeeze1x1", top, squeeze, 1)
        e1 = conv_relu(name + "expand1x1", s, 4 * squeeze, 1)
        e3 = conv_relu(name + "expand3x3", s, 4 * squeeze, 3, pad=1)
        top = L.Concat(e1, e3)
        setattr(n, name + "concat", top)
        if i in (3, 5):
            top = max_pool(top, 3, 2)
            setattr(n, "pool%d" % i, top)
    n.drop9 = L.Dropout(top, dropout_ratio=0.5, in_place=True)
    top = conv_relu("conv10", top, 1000, 1, filler=GAUSS)
    n.pool10 = L.Pooling(top, pool=P.Pooling.AVE, global_pooling=True)
    n.loss = L.SoftmaxWithLoss(n.pool10, n.label)
    n.accuracy = L.Accuracy(n.pool10, n.label)
    n.accuracy_top5 = L.Accuracy(n.pool10, n.label, top_k=5)
    return n


def densenet121():
    """DenseNet-121 (Huang et al. 2017) as its Caffe port (shicai/DenseNet-Caffe) writes
    it: a 7x7 stride-2 conv1 without bias, BatchNorm + Scale + ReLU, a 3x3 stride-2 MAX
    pool with pad 1 and round_mode FLOOR; four dense blocks of 6, 12, 24 and 16 layers,
    each layer BN-Scale-ReLU-conv 1x1 (128) then BN-Scale-ReLU-conv 3x3 (32), its output
    joined to the block's running Concat; between blocks a BN-Scale-ReLU-conv 1x1 that
    halves the channels and a 2x2 AVE pool; global AVE pooling and fc6, a 1x1
    convolution to the 1000 classes, into SoftmaxWithLoss. The port is a deploy file
    with no fillers: the weights here are msra (He et al.'s, the paper's), fc6's bias
    zero; the DummyData, loss and accuracy are added as for the other nets."""
    n = NetSpec()
    data(n, 16, (3, 224, 224))
    msra = dict(type="msra")

    def bn_relu(name, relu_name, bottom):
        n[name + "/bn"] = top = L.BatchNorm(bottom, batch_norm_param=dict(eps=1e-5))
        n[name + "/scale"] = L.Scale(top, bias_term=True, in_place=True)
        n[relu_name] = relu(top)
        return top

    def plain_conv(name, bottom, num, k, pad=0):
        kw = dict(num_output=num, bias_term=False, kernel_size=k, weight_filler=msra)
        if pad:
            kw["pad"] = pad
        n[name] = top = L.Convolution(bottom, **kw)
        return top

    n.conv1 = L.Convolution(n.data, num_output=64, bias_term=False, pad=3, kernel_size=7,
                            stride=2, weight_filler=msra)
    top = bn_relu("conv1", "relu1", n.conv1)
    n.pool1 = top = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=2, pad=1,
                              round_mode=P.Pooling.FLOOR)
    channels = 64
    for block, layers in zip(range(2, 6), (6, 12, 24, 16)):
        for i in range(1, layers + 1):
            name = "conv%d_%d" % (block, i)
            x = bn_relu(name + "/x1", "relu%d_%d/x1" % (block, i), top)
            x = plain_conv(name + "/x1", x, 128, 1)
            x = bn_relu(name + "/x2", "relu%d_%d/x2" % (block, i), x)
            x = plain_conv(name + "/x2", x, 32, 3, pad=1)
            n["concat_%d_%d" % (block, i)] = top = L.Concat(top, x)
            channels += 32
        x = bn_relu("conv%d_blk" % block, "relu%d_blk" % block, top)
        if block == 5:
            break
        channels //= 2
        x = plain_conv("conv%d_blk" % block, x, channels, 1)
        n["pool%d" % block] = top = ave_pool(x, 2, 2)
    n.pool5 = L.Pooling(x, pool=P.Pooling.AVE, global_pooling=True)
    n.fc6 = L.Convolution(n.pool5, num_output=1000, kernel_size=1, weight_filler=msra,
                          bias_filler=ZERO)
    heads(n, n.fc6)
    return n


def se_bn_inception():
    """SE-BN-Inception (Hu, Shen & Sun 2018, the ILSVRC 2017 winners' Caffe release,
    hujie-frank/SENet's SE-BN-Inception.prototxt): BN-Inception (Ioffe & Szegedy 2015;
    every convolution without bias, then BatchNorm, Scale with bias and ReLU, all in
    place), its ten Inception modules each a 1x1, a 3x3 after a 1x1 reduce, two 3x3s
    after a 1x1 reduce, and a pool with a 1x1 projection (3c and 4e: stride-2 3x3s and a
    MAX pool instead, no 1x1), joined by Concat; after each module a squeeze-and-
    excitation block: global AVE pooling, a 1x1 convolution to a sixteenth of the
    channels, ReLU, a 1x1 back to all of them, Sigmoid, Reshape to (N, C), and a Scale
    with two bottoms and axis 0 that multiplies each image's channels by their weight.
    A 7x7 AVE pool and the classifier end it. Layer names as published. The release is
    a deploy file (Input, BatchNorm with use_global_stats) with no fillers: here
    BatchNorm takes Caffe's default by phase (batch statistics in TRAIN), the weights
    are msra and the biases zero; the DummyData, loss and accuracy are added as for the
    other nets."""
    n = NetSpec()
    data(n, 32, (3, 224, 224))
    msra = dict(type="msra")

    def conv_bn(name, relu_name, bottom, num, k, stride=1, pad=0):
        kw = dict(num_output=num, bias_term=False, kernel_size=k, weight_filler=msra)
        if stride != 1:
            kw["stride"] = stride
        if pad:
            kw["pad"] = pad
        n[name] = top = L.Convolution(bottom, **kw)
        n[name + "/bn"] = L.BatchNorm(top, in_place=True)
        n[name + "/bn/scale"] = L.Scale(top, bias_term=True, in_place=True)
        n[relu_name] = relu(top)
        return top

    def module(name, bottom, c1, c3r, c3, d3r, d3, pool, proj, squeeze):
        """One Inception module and its SE block; c1 None: a stride-2 reduction."""
        stride = 2 if c1 is None else 1
        pad = dict(pad=1) if stride == 1 else {}
        branches = [] if c1 is None else [
            conv_bn(name + "/1x1", name + "/relu_1x1", bottom, c1, 1)]
        x = conv_bn(name + "/3x3_reduce", name + "/relu_3x3_reduce", bottom, c3r, 1)
        branches.append(conv_bn(name + "/3x3", name + "/relu_3x3", x, c3, 3, stride, 1))
        x = conv_bn(name + "/double3x3_reduce", name + "/relu_double3x3_reduce", bottom,
                    d3r, 1)
        x = conv_bn(name + "/double3x3a", name + "/relu_double3x3a", x, d3, 3, pad=1)
        branches.append(conv_bn(name + "/double3x3b", name + "/relu_double3x3b", x, d3, 3,
                                stride, 1))
        if c1 is None:
            n[name + "/pool/3x3_s2"] = x = max_pool(bottom, 3, 2)
            branches.append(x)
        else:
            n[name + "/pool"] = x = L.Pooling(bottom, pool=pool, kernel_size=3, stride=1,
                                              **pad)
            branches.append(conv_bn(name + "/pool_proj", name + "/relu_pool_proj", x, proj, 1))
        n[name + "/concat"] = cat = L.Concat(*branches)
        se = name.replace("/", "_")
        n[se + "_global_pool"] = x = L.Pooling(cat, pool=P.Pooling.AVE,
                                               engine=P.Pooling.CAFFE, global_pooling=True)
        n[se + "_1x1_down"] = x = conv(x, squeeze[0], 1, filler=msra)
        n[se + "_1x1_down/relu"] = relu(x)
        n[se + "_1x1_up"] = x = conv(x, squeeze[1], 1, filler=msra)
        n[se + "_prob"] = L.Sigmoid(x, in_place=True)
        n[se + "_prob_reshape"] = x = L.Reshape(x, reshape_param=dict(shape=dict(dim=[0, 0])))
        n[name + "/output"] = top = L.Scale(cat, x, axis=0, bias_term=False,
                                             name=se + "_scale")
        return top

    top = conv_bn("conv1/7x7_s2", "conv1/relu_7x7", n.data, 64, 7, 2, 3)
    n["pool1/3x3_s2"] = top = max_pool(top, 3, 2)
    top = conv_bn("conv2/3x3_reduce", "conv2/relu_3x3_reduce", top, 64, 1)
    top = conv_bn("conv2/3x3", "conv2/relu_3x3", top, 192, 3, pad=1)
    n["pool2/3x3_s2"] = top = max_pool(top, 3, 2)
    ave, mx = P.Pooling.AVE, P.Pooling.MAX
    for name, *widths in (
            ("3a", 64, 64, 64, 64, 96, ave, 32, (16, 256)),
            ("3b", 64, 64, 96, 64, 96, ave, 64, (20, 320)),
            ("3c", None, 128, 160, 64, 96, None, None, (36, 576)),
            ("4a", 224, 64, 96, 96, 128, ave, 128, (36, 576)),
            ("4b", 192, 96, 128, 96, 128, ave, 128, (36, 576)),
            ("4c", 160, 128, 160, 128, 160, ave, 128, (38, 608)),
            ("4d", 96, 128, 192, 160, 192, ave, 128, (38, 608)),
            ("4e", None, 128, 192, 192, 256, None, None, (66, 1056)),
            ("5a", 352, 192, 320, 160, 224, ave, 128, (64, 1024)),
            ("5b", 352, 192, 320, 192, 224, mx, 128, (64, 1024))):
        top = module("inception_" + name, top, *widths)
    n["pool5/7x7_s1"] = top = ave_pool(top, 7, 1)
    n.classifier = top = fc(top, 1000, filler=GAUSS)
    heads(n, top)
    return n


def _inception_conv(n, name, bottom, num, k, stride=1, pad=0, relu_name=None):
    """The TensorFlow-converted Inception ports' unit: a convolution without bias, then
    BatchNorm (eps 0.001), Scale with bias and ReLU, all in place. ``k`` and ``pad``: one
    number, or (h, w) for the factored kernels (kernel_h/kernel_w, pad_h/pad_w)."""
    kw = dict(num_output=num, bias_term=False, weight_filler=XAVIER,
              param=[dict(lr_mult=1, decay_mult=1)])
    if isinstance(k, tuple):
        kw.update(kernel_h=k[0], kernel_w=k[1], pad_h=pad[0], pad_w=pad[1])
    else:
        kw.update(kernel_size=k, pad=pad)
    n[name] = top = L.Convolution(bottom, stride=stride, **kw)
    n[name + "_bn"] = L.BatchNorm(top, batch_norm_param=dict(eps=0.001), in_place=True)
    n[name + "_scale"] = L.Scale(top, bias_term=True, in_place=True)
    n[relu_name or name + "_relu"] = relu(top)
    return top


def _inception_pool(n, name, bottom, kind, stride, pad=0):
    """The Inception ports' 3x3 pooling (``kind``: MAX or AVE), named ``name``."""
    kw = dict(pad=pad) if pad else {}
    n[name] = top = L.Pooling(bottom, pool=kind, kernel_size=3, stride=stride, **kw)
    return top


def inception_v3():
    """Inception-v3 (Szegedy et al. 2016) as its Caffe port writes it (soeaver/caffe-model,
    cls/inception/deploy_inception-v3.prototxt, converted from TensorFlow's release): a
    stem of five convolutions and two stride-2 MAX pools from 299x299 to 35x35; three
    35x35 modules (a 1x1, a 5x5 after a 1x1, two 3x3s after a 1x1, an AVE pool with a
    1x1 projection); a reduction to 17x17 (a stride-2 3x3, two 3x3s ending at stride 2,
    a MAX pool); four 17x17 modules whose 7x7s are factored into 1x7 and 7x1
    convolutions (kernel_h/kernel_w with pad_h/pad_w: one pair, and two pairs one after
    the other); a reduction to 8x8 through a 1x7, 7x1 and stride-2 3x3; two 8x8 modules
    whose 1x3 and 3x1 convolutions read the same bottom side by side (the last one's
    pool MAX); global AVE pooling, Dropout 0.2 and the classifier. Every convolution is
    without bias and followed by BatchNorm (eps 0.001), Scale with bias and ReLU, all in
    place. Layer names as published. The port is a deploy file (BatchNorm with
    use_global_stats): here BatchNorm takes Caffe's default by phase, the weights keep
    its xavier filler; the DummyData, loss and accuracy are added as for the other
    nets."""
    n = NetSpec()
    data(n, 16, (3, 299, 299))

    conv_bn, pool = functools.partial(_inception_conv, n), functools.partial(_inception_pool, n)

    ave, mx = P.Pooling.AVE, P.Pooling.MAX
    r17, r71 = (1, 7), (7, 1)
    p17, p71 = (0, 3), (3, 0)
    top = conv_bn("conv1_3x3_s2", n.data, 32, 3, 2, relu_name="conv1_3x3_relu")
    top = conv_bn("conv2_3x3_s1", top, 32, 3, relu_name="conv2_3x3_relu")
    top = conv_bn("conv3_3x3_s1", top, 64, 3, pad=1, relu_name="conv3_3x3_relu")
    top = pool("pool1_3x3_s2", top, mx, 2)
    top = conv_bn("conv4_3x3_reduce", top, 80, 1, relu_name="conv4_relu_3x3_reduce")
    top = conv_bn("conv4_3x3", top, 192, 3, relu_name="conv4_relu_3x3")
    top = pool("pool2_3x3_s2", top, mx, 2)
    for i, proj in zip((1, 2, 3), (32, 64, 64)):
        m = "inception_a%d_" % i
        a = conv_bn(m + "1x1", top, 64, 1)
        b = conv_bn(m + "5x5", conv_bn(m + "5x5_reduce", top, 48, 1), 64, 5, pad=2)
        c = conv_bn(m + "3x3_reduce", top, 64, 1)
        c = conv_bn(m + "3x3_2", conv_bn(m + "3x3_1", c, 96, 3, pad=1), 96, 3, pad=1)
        d = conv_bn(m + "pool_proj", pool(m + "pool", top, ave, 1, 1), proj, 1)
        n[m + "output"] = top = L.Concat(a, b, c, d)
    m = "reduction_a_"
    a = conv_bn(m + "3x3", top, 384, 3, 2)
    b = conv_bn(m + "3x3_2", conv_bn(m + "3x3_2_reduce", top, 64, 1), 96, 3, pad=1)
    b = conv_bn(m + "3x3_3", b, 96, 3, 2)
    n[m + "concat"] = top = L.Concat(a, b, pool(m + "pool", top, mx, 2))
    for i, c7 in zip((1, 2, 3, 4), (128, 160, 160, 192)):
        m = "inception_b%d_" % i
        a = conv_bn(m + "1x1_2", top, 192, 1)
        b = conv_bn(m + "1x7", conv_bn(m + "1x7_reduce", top, c7, 1), c7, r17, pad=p17)
        b = conv_bn(m + "7x1", b, 192, r71, pad=p71)
        c = conv_bn(m + "7x1_2", conv_bn(m + "7x1_reduce", top, c7, 1), c7, r71, pad=p71)
        c = conv_bn(m + "1x7_2", c, c7, r17, pad=p17)
        c = conv_bn(m + "7x1_3", c, c7, r71, pad=p71)
        c = conv_bn(m + "1x7_3", c, 192, r17, pad=p17)
        d = conv_bn(m + "1x1", pool(m + "pool_ave", top, ave, 1, 1), 192, 1)
        n[m + "concat"] = top = L.Concat(a, b, c, d)
    m = "reduction_b_"
    a = conv_bn(m + "3x3", conv_bn(m + "3x3_reduce", top, 192, 1), 320, 3, 2)
    b = conv_bn(m + "1x7", conv_bn(m + "1x7_reduce", top, 192, 1), 192, r17, pad=p17)
    b = conv_bn(m + "3x3_2", conv_bn(m + "7x1", b, 192, r71, pad=p71), 192, 3, 2)
    n[m + "concat"] = top = L.Concat(a, b, pool(m + "pool", top, mx, 2))
    for i, kind in zip((1, 2), (ave, mx)):
        m = "inception_c%d_" % i
        a = conv_bn(m + "1x1_2", top, 320, 1)
        x = conv_bn(m + "1x3_reduce", top, 384, 1)
        b = [conv_bn(m + "1x3", x, 384, (1, 3), pad=(0, 1)),
             conv_bn(m + "3x1", x, 384, (3, 1), pad=(1, 0))]
        x = conv_bn(m + "3x3", conv_bn(m + "3x3_reduce", top, 448, 1), 384, 3, pad=1)
        c = [conv_bn(m + "1x3_2", x, 384, (1, 3), pad=(0, 1)),
             conv_bn(m + "3x1_2", x, 384, (3, 1), pad=(1, 0))]
        d = conv_bn(m + "1x1", pool(m + "pool", top, kind, 1, 1), 192, 1)
        n[m + "concat"] = top = L.Concat(a, *b, *c, d)
    n.pool_8x8_s1 = L.Pooling(top, pool=ave, global_pooling=True)
    n.pool_8x8_s1_drop = L.Dropout(n.pool_8x8_s1, dropout_ratio=0.2)
    n.classifier = top = fc(n.pool_8x8_s1_drop, 1000)
    heads(n, top)
    return n


def inception_v4():
    """Inception-v4 (Szegedy et al. 2016) as its Caffe port writes it (soeaver/caffe-model,
    cls/inception/deploy_inception-v4.prototxt, converted from TensorFlow's release): a
    stem of three 3x3s from 299x299 to 147x147, then three joins, each of a stride-2 or
    side-by-side pair (a MAX pool beside a stride-2 3x3 to 73x73; a 1x1 and 3x3 beside a
    1x1, 1x7, 7x1 and 3x3 to 71x71; a stride-2 3x3 beside a MAX pool to 35x35; the first
    join puts the pool first, the last one after the convolution); four 35x35 modules (a
    1x1, a 3x3 after a 1x1, two 3x3s after a 1x1, an AVE pool with a 1x1); a reduction
    to 17x17 (a stride-2 3x3, a 1x1, 3x3 and stride-2 3x3, a MAX pool); seven 17x17
    modules whose 7x7s are factored into 1x7 and 7x1 convolutions (kernel_h/kernel_w
    with pad_h/pad_w: one pair, and two pairs one after the other); a reduction to 8x8
    (a 1x1 and stride-2 3x3; a 1x1, 1x7, 7x1 and stride-2 3x3; a MAX pool); three 8x8
    modules whose 1x3 and 3x1 convolutions read the same bottom side by side, six
    branches joined; global AVE pooling, Dropout 0.2 and the classifier. Every
    convolution is without bias and followed by BatchNorm (eps 0.001), Scale with bias
    and ReLU, all in place. Layer names as published. The port is a deploy file
    (BatchNorm with use_global_stats): here BatchNorm takes Caffe's default by phase, the
    weights keep its xavier filler; the DummyData, loss and accuracy are added as for
    the other nets."""
    n = NetSpec()
    data(n, 8, (3, 299, 299))

    conv_bn, pool = functools.partial(_inception_conv, n), functools.partial(_inception_pool, n)

    ave, mx = P.Pooling.AVE, P.Pooling.MAX
    r13, r31, r17, r71 = (1, 3), (3, 1), (1, 7), (7, 1)
    p13, p31, p17, p71 = (0, 1), (1, 0), (0, 3), (3, 0)
    top = conv_bn("conv1_3x3_s2", n.data, 32, 3, 2)
    top = conv_bn("conv2_3x3_s1", top, 32, 3)
    top = conv_bn("conv3_3x3_s1", top, 64, 3, pad=1)
    m = "inception_stem1"
    b = conv_bn(m + "_3x3_s2", top, 96, 3, 2)
    n[m] = top = L.Concat(pool(m + "_pool", top, mx, 2), b)
    m = "inception_stem2"
    a = conv_bn(m + "_3x3", conv_bn(m + "_3x3_reduce", top, 64, 1), 96, 3)
    b = conv_bn(m + "_1x7", conv_bn(m + "_1x7_reduce", top, 64, 1), 64, r17, pad=p17)
    b = conv_bn(m + "_3x3_2", conv_bn(m + "_7x1", b, 64, r71, pad=p71), 96, 3)
    n[m] = top = L.Concat(a, b)
    m = "inception_stem3"
    a = conv_bn(m + "_3x3_s2", top, 192, 3, 2)
    n[m] = top = L.Concat(a, pool(m + "_pool", top, mx, 2))
    for i in range(1, 5):
        m = "inception_a%d_" % i
        a = conv_bn(m + "1x1_2", top, 96, 1)
        b = conv_bn(m + "3x3", conv_bn(m + "3x3_reduce", top, 64, 1), 96, 3, pad=1)
        c = conv_bn(m + "3x3_2", conv_bn(m + "3x3_2_reduce", top, 64, 1), 96, 3, pad=1)
        c = conv_bn(m + "3x3_3", c, 96, 3, pad=1)
        d = conv_bn(m + "1x1", pool(m + "pool_ave", top, ave, 1, 1), 96, 1)
        n[m + "concat"] = top = L.Concat(a, b, c, d)
    m = "reduction_a_"
    a = conv_bn(m + "3x3", top, 384, 3, 2)
    b = conv_bn(m + "3x3_2", conv_bn(m + "3x3_2_reduce", top, 192, 1), 224, 3, pad=1)
    b = conv_bn(m + "3x3_3", b, 256, 3, 2)
    n[m + "concat"] = top = L.Concat(a, b, pool(m + "pool", top, mx, 2))
    for i in range(1, 8):
        m = "inception_b%d_" % i
        a = conv_bn(m + "1x1_2", top, 384, 1)
        b = conv_bn(m + "1x7", conv_bn(m + "1x7_reduce", top, 192, 1), 224, r17, pad=p17)
        b = conv_bn(m + "7x1", b, 256, r71, pad=p71)
        c = conv_bn(m + "7x1_2", conv_bn(m + "7x1_2_reduce", top, 192, 1), 192, r71,
                    pad=p71)
        c = conv_bn(m + "1x7_2", c, 224, r17, pad=p17)
        c = conv_bn(m + "7x1_3", c, 224, r71, pad=p71)
        c = conv_bn(m + "1x7_3", c, 256, r17, pad=p17)
        d = conv_bn(m + "1x1", pool(m + "pool_ave", top, ave, 1, 1), 128, 1)
        n[m + "concat"] = top = L.Concat(a, b, c, d)
    m = "reduction_b_"
    a = conv_bn(m + "3x3", conv_bn(m + "3x3_reduce", top, 192, 1), 192, 3, 2)
    b = conv_bn(m + "1x7", conv_bn(m + "1x7_reduce", top, 256, 1), 256, r17, pad=p17)
    b = conv_bn(m + "3x3_2", conv_bn(m + "7x1", b, 320, r71, pad=p71), 320, 3, 2)
    n[m + "concat"] = top = L.Concat(a, b, pool(m + "pool", top, mx, 2))
    for i in range(1, 4):
        m = "inception_c%d_" % i
        a = conv_bn(m + "1x1_2", top, 256, 1)
        x = conv_bn(m + "1x1_3", top, 384, 1)
        b = [conv_bn(m + "1x3", x, 256, r13, pad=p13),
             conv_bn(m + "3x1", x, 256, r31, pad=p31)]
        x = conv_bn(m + "3x1_2", conv_bn(m + "1x1_4", top, 384, 1), 448, r31, pad=p31)
        x = conv_bn(m + "1x3_2", x, 512, r13, pad=p13)
        c = [conv_bn(m + "1x3_3", x, 256, r13, pad=p13),
             conv_bn(m + "3x1_3", x, 256, r31, pad=p31)]
        d = conv_bn(m + "1x1", pool(m + "pool_ave", top, ave, 1, 1), 256, 1)
        n[m + "concat"] = top = L.Concat(a, *b, *c, d)
    n.pool_8x8_s1 = L.Pooling(top, pool=ave, global_pooling=True)
    n.pool_8x8_s1_drop = L.Dropout(n.pool_8x8_s1, dropout_ratio=0.2)
    n.classifier = top = fc(n.pool_8x8_s1_drop, 1000)
    heads(n, top)
    return n


def inception_resnet_v2():
    """Inception-ResNet-v2 (Szegedy et al. 2016) as its Caffe port writes it
    (soeaver/caffe-model, cls/inception/deploy_inception-resnet-v2.prototxt, converted
    from TensorFlow's release): a stem from 299x299 to 35x35 (three 3x3s, a MAX pool, a
    1x1 and a 3x3, a MAX pool) and a first module of four branches (a 1x1, a 5x5, two
    3x3s, an AVE pool with a 1x1) joined to 320 channels; then residual blocks: 10 at
    35x35, 20 at 17x17 (a 1x7 and a 7x1, kernel_h/kernel_w), 10 at 8x8 (a 1x3 and a
    3x1), each branch set joined by a Concat and taken back to the trunk's width by a
    1x1 with bias (filled 0.2), added to the trunk by an Eltwise SUM whose coeff scales
    the branch (0.17, 0.1, 0.2; the last block 1 and no ReLU after it); two reductions
    (stride-2 3x3s beside a MAX pool); a 1x1 to 1536 channels, global AVE pooling,
    Dropout 0.2 and the classifier. Every other convolution is without bias and followed
    by BatchNorm (eps 0.001), Scale with bias and ReLU, all in place. Layer names as
    published. The port is a deploy file (BatchNorm with use_global_stats): here
    BatchNorm takes Caffe's default by phase, the weights keep its xavier filler; the
    DummyData, loss and accuracy are added as for the other nets."""
    n = NetSpec()
    data(n, 8, (3, 299, 299))

    conv_bn = functools.partial(_inception_conv, n)

    def residual(m, trunk, branches, width, scale, last=False):
        n[m + "concat"] = joined = L.Concat(*branches)
        n[m + "up"] = up = conv(joined, width, 1, bias_value=0.2)
        coeff = dict(coeff=[1, scale]) if scale != 1 else {}
        n[m + "residual_eltwise"] = top = L.Eltwise(
            trunk, up, eltwise_param=dict(operation=P.Eltwise.SUM, **coeff))
        if not last:
            n[m + "residual_eltwise_relu"] = relu(top)
        return top

    top = conv_bn("conv1_3x3_s2", n.data, 32, 3, 2, relu_name="conv1_3x3_relu")
    top = conv_bn("conv2_3x3_s1", top, 32, 3, relu_name="conv2_3x3_relu")
    top = conv_bn("conv3_3x3_s1", top, 64, 3, pad=1, relu_name="conv3_3x3_relu")
    n.pool1_3x3_s2 = top = max_pool(top, 3, 2)
    top = conv_bn("conv4_3x3_reduce", top, 80, 1)
    top = conv_bn("conv4_3x3", top, 192, 3, relu_name="conv4_relu_3x3")
    n.pool2_3x3_s2 = top = max_pool(top, 3, 2)
    a = conv_bn("conv5_1x1", top, 96, 1)
    b = conv_bn("conv5_5x5", conv_bn("conv5_5x5_reduce", top, 48, 1), 64, 5, pad=2)
    c = conv_bn("conv5_3x3", conv_bn("conv5_3x3_reduce", top, 64, 1), 96, 3, pad=1)
    c = conv_bn("conv5_3x3_2", c, 96, 3, pad=1)
    n.ave_pool = L.Pooling(top, pool=P.Pooling.AVE, kernel_size=3, stride=1, pad=1)
    d = conv_bn("conv5_1x1_ave", n.ave_pool, 64, 1)
    n.stem_concat = top = L.Concat(a, b, c, d)
    for i in range(1, 11):
        m = "inception_resnet_v2_a%d_" % i
        a = conv_bn(m + "1x1", top, 32, 1)
        b = conv_bn(m + "3x3", conv_bn(m + "3x3_reduce", top, 32, 1), 32, 3, pad=1)
        c = conv_bn(m + "3x3_2", conv_bn(m + "3x3_2_reduce", top, 32, 1), 48, 3, pad=1)
        c = conv_bn(m + "3x3_3", c, 64, 3, pad=1)
        top = residual(m, top, (a, b, c), 320, 0.17)
    m = "reduction_a_"
    a = conv_bn(m + "3x3", top, 384, 3, 2)
    b = conv_bn(m + "3x3_2", conv_bn(m + "3x3_2_reduce", top, 256, 1), 256, 3, pad=1)
    b = conv_bn(m + "3x3_3", b, 384, 3, 2)
    n[m + "pool"] = pool = max_pool(top, 3, 2)
    n[m + "concat"] = top = L.Concat(a, b, pool)
    for i in range(1, 21):
        m = "inception_resnet_v2_b%d_" % i
        a = conv_bn(m + "1x1", top, 192, 1)
        b = conv_bn(m + "1x7", conv_bn(m + "1x7_reduce", top, 128, 1), 160, (1, 7),
                    pad=(0, 3))
        b = conv_bn(m + "7x1", b, 192, (7, 1), pad=(3, 0))
        top = residual(m, top, (a, b), 1088, 0.1)
    m = "reduction_b_"
    a = conv_bn(m + "3x3", conv_bn(m + "3x3_reduce", top, 256, 1), 384, 3, 2)
    b = conv_bn(m + "3x3_2", conv_bn(m + "3x3_2_reduce", top, 256, 1), 288, 3, 2)
    c = conv_bn(m + "3x3_3", conv_bn(m + "3x3_3_reduce", top, 256, 1), 288, 3, pad=1)
    c = conv_bn(m + "3x3_4", c, 320, 3, 2)
    n[m + "pool"] = pool = max_pool(top, 3, 2)
    n[m + "concat"] = top = L.Concat(a, b, c, pool)
    for i in range(1, 11):
        m = "inception_resnet_v2_c%d_" % i
        a = conv_bn(m + "1x1", top, 192, 1)
        b = conv_bn(m + "1x3", conv_bn(m + "1x3_reduce", top, 192, 1), 224, (1, 3),
                    pad=(0, 1))
        b = conv_bn(m + "3x1", b, 256, (3, 1), pad=(1, 0))
        top = residual(m, top, (a, b), 2080, 1 if i == 10 else 0.2, last=i == 10)
    top = conv_bn("conv6_1x1", top, 1536, 1)
    n.pool_8x8_s1 = L.Pooling(top, pool=P.Pooling.AVE, global_pooling=True)
    n.pool_8x8_s1_drop = L.Dropout(n.pool_8x8_s1, dropout_ratio=0.2)
    n.classifier = top = fc(n.pool_8x8_s1_drop, 1000)
    heads(n, top)
    return n


def xception():
    """Xception (Chollet 2017) as its Caffe port writes it (soeaver/caffe-model,
    cls/inception/deploy_xception.prototxt): every separable convolution a depthwise 3x3
    (a Convolution with group = channels, 64 to 1536 of them) then a 1x1, each pair
    followed by BatchNorm (eps 0.001) and Scale with bias, all convolutions without bias.
    Two 3x3s from 299x299 to 147x147; three entry blocks (two separable convolutions, a
    3x3 stride-2 MAX pool, added to a stride-2 1x1 "match" convolution of the block's
    input), whose pools rely on Caffe's ceil (74x74 -> 37x37 with pad 0, as the match's
    stride 2); eight middle blocks of three separable convolutions at 19x19 added to
    their input; an exit block like the entry ones to 1024 channels at 10x10; two more
    separable convolutions to 2048, global AVE pooling and the classifier. A block's
    ReLU on its input writes a new top (not in place), so the sum reads the input as it
    was. Layer names as published. The port is a deploy file with no fillers:
    BatchNorm takes Caffe's default by phase here, the convolutions' weights are msra;
    the DummyData, loss and accuracy are added as for the other nets."""
    n = NetSpec()
    data(n, 16, (3, 299, 299))
    msra = dict(type="msra")

    def bn_scale(name, top, relu_after=True):
        return _bn_relu(n, name, top, relu_after, eps=0.001)

    def separable(name, bottom, channels, num, relu_after=True):
        n[name + "_1"] = top = conv(bottom, channels, 3, pad=1, group=channels, filler=msra,
                                    bias=False)
        n[name + "_2"] = top = conv(top, num, 1, filler=msra, bias=False)
        return bn_scale(name, top, relu_after)

    def match(name, bottom, num):
        n[name + "_match_conv"] = top = conv(bottom, num, 1, 2, filler=msra, bias=False)
        return bn_scale(name + "_match_conv", top, relu_after=False)

    n.conv1 = top = conv(n.data, 32, 3, 2, filler=msra, bias=False)
    n.conv2 = top = conv(bn_scale("conv1", top), 64, 3, filler=msra, bias=False)
    top = bn_scale("conv2", top)
    channels = 64
    for block, (num, pad) in enumerate(((128, 1), (256, 0), (728, 1), (1024, 1)), 1):
        block = 12 if block == 4 else block
        name = "xception%d" % block
        shortcut = match(name, top, num)
        if block > 1:
            n[name + "_relu"] = top = L.ReLU(top)
        inner = 728 if block == 12 else num
        top = separable(name + "_conv1", top, channels, inner)
        top = separable(name + "_conv2", top, inner, num, relu_after=False)
        n[name + "_pool"] = top = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3,
                                            stride=2, pad=pad)
        n[name + "_elewise"] = top = L.Eltwise(shortcut, top)
        channels = num
        if block == 3:
            for middle in range(4, 12):
                name = "xception%d" % middle
                n[name + "_relu"] = x = L.ReLU(top)
                for i in (1, 2, 3):
                    x = separable(name + "_conv%d" % i, x, 728, 728, relu_after=i < 3)
                n[name + "_elewise"] = top = L.Eltwise(top, x)
    top = separable("conv3", top, 1024, 1536)
    top = separable("conv4", top, 1536, 2048)
    n.pool_ave = L.Pooling(top, pool=P.Pooling.AVE, global_pooling=True)
    n.classifier = top = fc(n.pool_ave, 1000)
    heads(n, top)
    return n


def dpn92():
    """DPN-92 (Dual Path Networks, Chen et al. 2017) as its Caffe port writes it
    (soeaver/caffe-model, cls/dpn/deploy_dpn92.prototxt): a 7x7 stride-2 conv1 and a 3x3
    stride-2 MAX pool (pad 1, rounded down: the port's ``ceil_mode: false``, BVLC's
    round_mode FLOOR), then 3, 4, 20 and 3 pre-activation blocks (BatchNorm, Scale and
    ReLU on the block's input, a 1x1, a 3x3 with 32 groups, a 1x1), every convolution
    without bias. Each block's last 1x1 is cut by a Slice: its first channels are added
    to the residual path (Eltwise SUM), the rest joined to the densely connected path
    (Concat), and the two paths are concatenated as the next block's input. The first
    block of each stage makes both paths from its input with a "match" 1x1 (stride 2 from
    the second stage on, as is the stage's grouped 3x3), sliced the same way. A last
    BatchNorm, Scale, ReLU, global AVE pool, Flatten and the classifier. Layer names as
    published. The port is a deploy file with no fillers: BatchNorm (eps 0.001) takes
    Caffe's default by phase here, the convolutions' weights are msra; the DummyData,
    loss and accuracy are added as for the other nets."""
    n = NetSpec()
    data(n, 16, (3, 224, 224))
    msra = dict(type="msra")

    def bn_relu(name, bottom, bn_name=None):
        return _bn_relu(n, name, bottom, eps=0.001, top_name=bn_name)

    def plain_conv(name, bottom, num, k, stride=1, pad=0, group=1):
        n[name] = top = conv(bottom, num, k, stride, pad, group, filler=msra, bias=False)
        return top

    def sliced(name, bottom, point):
        n[name + "_split1"], n[name + "_split2"] = tops = L.Slice(
            bottom, slice_param=dict(axis=1, slice_point=[point]), ntop=2,
            name=name + "_Slice")
        return tops

    plain_conv("conv1", n.data, 64, 7, 2, 3)
    top = bn_relu("conv1", n.conv1)
    n.pool1 = top = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=2, pad=1,
                              round_mode=P.Pooling.FLOOR)
    block = 0
    residual = dense = None
    for stage, (blocks, inner, width, inc) in enumerate(
            ((3, 96, 256, 16), (4, 192, 512, 32), (20, 384, 1024, 24),
             (3, 768, 2048, 128))):
        stride = 1 if stage == 0 else 2
        for i in range(blocks):
            block += 1
            name = "dpn%d" % block
            if residual is not None:
                n[name + "_concat_input"] = top = L.Concat(residual, dense)
            if i == 0:
                x = bn_relu(name + "_match", top, bn_name=name + "_match_bn")
                x = plain_conv(name + "_match_conv", x, width + 2 * inc, 1, stride)
                residual, dense = sliced(name + "_match_conv", x, width)
            x = bn_relu(name, top, bn_name=name + "_bn")
            x = bn_relu(name + "_conv1", plain_conv(name + "_conv1", x, inner, 1))
            x = plain_conv(name + "_conv2", x, inner, 3, stride if i == 0 else 1, 1, 32)
            x = bn_relu(name + "_conv2", x)
            x = plain_conv(name + "_conv3", x, width + inc, 1)
            new_residual, new_dense = sliced(name + "_conv3", x, width)
            n[name + "_elewise"] = residual = L.Eltwise(residual, new_residual)
            n[name + "_concat"] = dense = L.Concat(dense, new_dense)
    n.pool_ave_concat_input = top = L.Concat(residual, dense)
    top = bn_relu("pool_ave_concat", top, bn_name="pool_ave_concat_bn")
    n.pool_ave = L.Pooling(top, pool=P.Pooling.AVE, global_pooling=True)
    n.pool_ave_flat = L.Flatten(n.pool_ave)
    n.classifier = top = fc(n.pool_ave_flat, 1000)
    heads(n, top)
    return n


def _alex_body(n, caffenet):
    """CaffeNet pools before normalizing; AlexNet (as published) normalizes first."""
    n.conv1 = conv(n.data, 96, 11, stride=4, filler=GAUSS)
    n.relu1 = relu(n.conv1)
    if caffenet:
        n.pool1 = max_pool(n.conv1, 3, 2)
        n.norm1 = lrn(n.pool1)
        below2 = n.norm1
    else:
        n.norm1 = lrn(n.conv1)
        n.pool1 = max_pool(n.norm1, 3, 2)
        below2 = n.pool1
    n.conv2 = conv(below2, 256, 5, pad=2, group=2, filler=GAUSS, bias_value=0.1)
    n.relu2 = relu(n.conv2)
    if caffenet:
        n.pool2 = max_pool(n.conv2, 3, 2)
        n.norm2 = lrn(n.pool2)
        below3 = n.norm2
    else:
        n.norm2 = lrn(n.conv2)
        n.pool2 = max_pool(n.norm2, 3, 2)
        below3 = n.pool2
    n.conv3 = conv(below3, 384, 3, pad=1, filler=GAUSS)
    n.relu3 = relu(n.conv3)
    n.conv4 = conv(n.conv3, 384, 3, pad=1, group=2, filler=GAUSS, bias_value=0.1)
    n.relu4 = relu(n.conv4)
    n.conv5 = conv(n.conv4, 256, 3, pad=1, group=2, filler=GAUSS, bias_value=0.1)
    n.relu5 = relu(n.conv5)
    n.pool5 = max_pool(n.conv5, 3, 2)
    n.fc6 = fc(n.pool5, 4096, filler=dict(type="gaussian", std=0.005), bias_value=0.1)
    n.relu6 = relu(n.fc6)
    n.drop6 = L.Dropout(n.fc6, dropout_ratio=0.5, in_place=True)
    n.fc7 = fc(n.fc6, 4096, filler=dict(type="gaussian", std=0.005), bias_value=0.1)
    n.relu7 = relu(n.fc7)
    n.drop7 = L.Dropout(n.fc7, dropout_ratio=0.5, in_place=True)
    n.fc8 = fc(n.fc7, 1000, filler=GAUSS)
    heads(n, n.fc8)
    return n


def caffenet():
    n = NetSpec()
    data(n, 256, (3, 227, 227))
    return _alex_body(n, caffenet=True)


def alexnet():
    n = NetSpec()
    data(n, 256, (3, 227, 227))
    return _alex_body(n, caffenet=False)


def vgg16():
    n = NetSpec()
    data(n, 64, (3, 224, 224))
    bottom = n.data
    for stage, (width, reps) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1):
        for r in range(1, reps + 1):
            name = "conv%d_%d" % (stage, r)
            setattr(n, name, conv(bottom, width, 3, pad=1))
            setattr(n, "relu%d_%d" % (stage, r), relu(getattr(n, name)))
            bottom = getattr(n, name)
        setattr(n, "pool%d" % stage, max_pool(bottom, 2, 2))
        bottom = getattr(n, "pool%d" % stage)
    n.fc6 = fc(bottom, 4096)
    n.relu6 = relu(n.fc6)
    n.drop6 = L.Dropout(n.fc6, dropout_ratio=0.5, in_place=True)
    n.fc7 = fc(n.fc6, 4096)
    n.relu7 = relu(n.fc7)
    n.drop7 = L.Dropout(n.fc7, dropout_ratio=0.5, in_place=True)
    n.fc8 = fc(n.fc7, 1000)
    heads(n, n.fc8)
    return n


def _inception(n, name, bottom, c1, c3r, c3, c5r, c5, pp):
    def unit(suffix, b, num, k, pad=0):
        top = conv(b, num, k, pad=pad, bias_value=0.2)
        setattr(n, "%s/%s" % (name, suffix), top)
        setattr(n, "%s/relu_%s" % (name, suffix), relu(top))
        return top
    one = unit("1x1", bottom, c1, 1)
    three = unit("3x3", unit("3x3_reduce", bottom, c3r, 1), c3, 3, pad=1)
    five = unit("5x5", unit("5x5_reduce", bottom, c5r, 1), c5, 5, pad=2)
    pool = max_pool(bottom, 3, 1, pad=1)
    setattr(n, name + "/pool", pool)
    proj = unit("pool_proj", pool, pp, 1)
    out = L.Concat(one, three, five, proj)
    setattr(n, name + "/output", out)
    return out


def _aux_head(n, name, bottom):
    n[name + "/ave_pool"] = ave_pool(bottom, 5, 3)
    n[name + "/conv"] = conv(n[name + "/ave_pool"], 128, 1, bias_value=0.2)
    n[name + "/relu_conv"] = relu(n[name + "/conv"])
    n[name + "/fc"] = fc(n[name + "/conv"], 1024, bias_value=0.2)
    n[name + "/relu_fc"] = relu(n[name + "/fc"])
    n[name + "/drop_fc"] = L.Dropout(n[name + "/fc"], dropout_ratio=0.7, in_place=True)
    n[name + "/classifier"] = fc(n[name + "/fc"], 1000)
    n[name + "/loss"] = L.SoftmaxWithLoss(n[name + "/classifier"], n.label, loss_weight=0.3)


def googlenet():
    n = NetSpec()
    data(n, 32, (3, 224, 224))
    n["conv1/7x7_s2"] = conv(n.data, 64, 7, stride=2, pad=3, bias_value=0.2)
    n["conv1/relu_7x7"] = relu(n["conv1/7x7_s2"])
    n["pool1/3x3_s2"] = max_pool(n["conv1/7x7_s2"], 3, 2)
    n["pool1/norm1"] = lrn(n["pool1/3x3_s2"])
    n["conv2/3x3_reduce"] = conv(n["pool1/norm1"], 64, 1, bias_value=0.2)
    n["conv2/relu_3x3_reduce"] = relu(n["conv2/3x3_reduce"])
    n["conv2/3x3"] = conv(n["conv2/3x3_reduce"], 192, 3, pad=1, bias_value=0.2)
    n["conv2/relu_3x3"] = relu(n["conv2/3x3"])
    n["conv2/norm2"] = lrn(n["conv2/3x3"])
    n["pool2/3x3_s2"] = max_pool(n["conv2/norm2"], 3, 2)
    x = _inception(n, "inception_3a", n["pool2/3x3_s2"], 64, 96, 128, 16, 32, 32)
    x = _inception(n, "inception_3b", x, 128, 128, 192, 32, 96, 64)
    n["pool3/3x3_s2"] = max_pool(x, 3, 2)
    x = _inception(n, "inception_4a", n["pool3/3x3_s2"], 192, 96, 208, 16, 48, 64)
    _aux_head(n, "loss1", x)
    x = _inception(n, "inception_4b", x, 160, 112, 224, 24, 64, 64)
    x = _inception(n, "inception_4c", x, 128, 128, 256, 24, 64, 64)
    x = _inception(n, "inception_4d", x, 112, 144, 288, 32, 64, 64)
    _aux_head(n, "loss2", x)
    x = _inception(n, "inception_4e", x, 256, 160, 320, 32, 128, 128)
    n["pool4/3x3_s2"] = max_pool(x, 3, 2)
    x = _inception(n, "inception_5a", n["pool4/3x3_s2"], 256, 160, 320, 32, 128, 128)
    x = _inception(n, "inception_5b", x, 384, 192, 384, 48, 128, 128)
    n["pool5/7x7_s1"] = ave_pool(x, 7, 1)
    n["pool5/drop_7x7_s1"] = L.Dropout(n["pool5/7x7_s1"], dropout_ratio=0.4, in_place=True)
    n["loss3/classifier"] = fc(n["pool5/7x7_s1"], 1000)
    n["loss3/loss3"] = L.SoftmaxWithLoss(n["loss3/classifier"], n.label, loss_weight=1)
    return n


def _bn_scale(n, name, bottom, relu_after):
    n["bn" + name] = L.BatchNorm(bottom, in_place=True)
    n["scale" + name] = L.Scale(bottom, bias_term=True, in_place=True)
    if relu_after:
        n["res%s_relu" % name] = relu(bottom)


def _shortcut(n, name, bottom, outer, stride, project, filler):
    """A residual block's shortcut: ``bottom`` itself, or with ``project`` the Caffe
    release's branch1, a 1x1 convolution carrying the stride, with BatchNorm and Scale."""
    if not project:
        return bottom
    n["res%s_branch1" % name] = conv(bottom, outer, 1, stride=stride, filler=filler,
                                     bias=False)
    _bn_scale(n, "%s_branch1" % name, n["res%s_branch1" % name], False)
    return n["res%s_branch1" % name]


def _bottleneck(n, name, bottom, inner, outer, stride, project, group=1, filler=XAVIER):
    """ResNet's bottleneck (stride on the first 1x1, as the Caffe release has it) or, with
    ``group`` > 1, ResNeXt's (grouped 3x3 carrying the stride, as in the paper)."""
    shortcut = _shortcut(n, name, bottom, outer, stride, project, filler)
    stride_a, stride_b = (stride, 1) if group == 1 else (1, stride)
    a = n["res%s_branch2a" % name] = conv(bottom, inner, 1, stride=stride_a, filler=filler,
                                          bias=False)
    _bn_scale(n, "%s_branch2a" % name, a, True)
    b = n["res%s_branch2b" % name] = conv(a, inner, 3, stride=stride_b, pad=1, group=group,
                                          filler=filler, bias=False)
    _bn_scale(n, "%s_branch2b" % name, b, True)
    c = n["res%s_branch2c" % name] = conv(b, outer, 1, filler=filler, bias=False)
    _bn_scale(n, "%s_branch2c" % name, c, False)
    out = n["res" + name] = L.Eltwise(shortcut, c)
    n["res%s_relu" % name] = relu(out)
    return out


def _basic_block(n, name, bottom, width, stride, project, filler=XAVIER):
    """ResNet's basic block (He et al. 2016, for ResNet-18 and -34): two 3x3s, the first
    carrying the stride, named as the Caffe release names a bottleneck's branches."""
    shortcut = _shortcut(n, name, bottom, width, stride, project, filler)
    a = n["res%s_branch2a" % name] = conv(bottom, width, 3, stride=stride, pad=1,
                                          filler=filler, bias=False)
    _bn_scale(n, "%s_branch2a" % name, a, True)
    b = n["res%s_branch2b" % name] = conv(a, width, 3, pad=1, filler=filler, bias=False)
    _bn_scale(n, "%s_branch2b" % name, b, False)
    out = n["res" + name] = L.Eltwise(shortcut, b)
    n["res%s_relu" % name] = relu(out)
    return out


def _resnet(inner, expansion, group=1, filler=XAVIER, conv1_bias=True, blocks=(3, 4, 6, 3),
            numbered="", basic=False):
    """ResNet's layout in its Caffe release (He et al. 2016, KaimingHe/deep-residual-networks):
    ``blocks`` bottlenecks in stages 2-5, the first stage ``inner`` wide. A stage named in
    ``numbered`` calls its blocks a, b1, b2, ... (ResNet-101's and -152's stages 3 and 4),
    the others a, b, c, ... With ``basic``, basic blocks in place of bottlenecks (then
    stage 2's first block keeps the identity shortcut: its width is conv1's)."""
    n = NetSpec()
    data(n, 32, (3, 224, 224))
    n.conv1 = conv(n.data, 64, 7, stride=2, pad=3, filler=filler, bias=conv1_bias)
    _bn_scale(n, "_conv1", n.conv1, False)
    n.conv1_relu = relu(n.conv1)
    n.pool1 = max_pool(n.conv1, 3, 2)
    x = n.pool1
    for i, (stage, count) in enumerate(zip("2345", blocks)):
        width = inner << i
        for b in range(count):
            if stage in numbered:
                name = stage + ("a" if b == 0 else "b%d" % b)
            else:
                name = stage + "abcdefghijklmnopqrstuvwxyz"[b]
            stride = 2 if b == 0 and stage != "2" else 1
            if basic:
                x = _basic_block(n, name, x, width, stride, (stride == 2), filler)
                continue
            x = _bottleneck(n, name, x, width, width * expansion, stride, project=(b == 0),
                            group=group, filler=filler)
    n.pool5 = ave_pool(x, 7, 1)
    n.fc1000 = fc(n.pool5, 1000, filler=filler)
    heads(n, n.fc1000)
    return n


def resnet18():
    """ResNet-18 (He et al. 2016, Table 1): basic blocks, two to a stage. Its authors
    released no Caffe model of it; written in their ResNet-50 release's layout and names,
    conv1 without a bias, with torchvision's resnet18's learnable params."""
    return _resnet(64, 1, conv1_bias=False, blocks=(2, 2, 2, 2), basic=True)


def resnet34():
    """ResNet-34: basic blocks, 3, 4, 6 and 3 to a stage, otherwise as ResNet-18."""
    return _resnet(64, 1, conv1_bias=False, blocks=(3, 4, 6, 3), basic=True)


def resnet50():
    return _resnet(64, 4)


def resnet101():
    """ResNet-101 as its Caffe release writes it (KaimingHe/deep-residual-networks; the
    same layer for layer as soeaver/caffe-model's cls/resnet/deploy_resnet101.prototxt):
    3, 4, 23 and 3 bottlenecks, stages 3 and 4 numbered (res3b1-res3b3, res4b1-res4b22),
    conv1 without a bias."""
    return _resnet(64, 4, conv1_bias=False, blocks=(3, 4, 23, 3), numbered="34")


def resnet152():
    """ResNet-152 as its Caffe release writes it (KaimingHe/deep-residual-networks; the
    same layer for layer as soeaver/caffe-model's cls/resnet/deploy_resnet152.prototxt):
    3, 8, 36 and 3 bottlenecks, stages 3 and 4 numbered (res3b1-res3b7, res4b1-res4b35),
    conv1 without a bias (ResNet-50's has one)."""
    return _resnet(64, 4, conv1_bias=False, blocks=(3, 8, 36, 3), numbered="34")


def _numbered_resnet(blocks, inner, preact, pool1, sum_name):
    """soeaver/caffe-model's layout of a bottleneck ResNet: blocks res1, res2, ...
    numbered through the stages (``blocks`` to a stage, ``inner << stage`` wide, 4x
    ``inner`` out of the first stage), their convolutions resN_conv1-3 with the stride on
    the 3x3, a stage's first block projecting through resN_match_conv, the sum
    resN_``sum_name``. ``preact``: ResNet-v2's order (above the blocks after the first,
    no BatchNorm after conv3 or the projection, no ReLU after the sum, the last sum
    normalized before the pooling); else each convolution followed by its BatchNorm
    and Scale, the sum by a ReLU. ``pool1``: the keywords of the stem's MAX pooling."""
    n = NetSpec()
    data(n, 32, (3, 224, 224))
    n.conv1 = conv(n.data, 64, 7, stride=2, pad=3, bias=False)
    _bn_relu(n, "conv1", n.conv1)
    x = n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=3, stride=2, **pool1)
    block = 0
    for stage, count in enumerate(blocks):
        width, outer = inner << stage, 256 << stage
        for b in range(count):
            block += 1
            name = "res%d" % block
            # (ResNet-v2's pre-activation, out of place: the sum keeps x as it is)
            inp = (_bn_relu(n, name, x, top_name=name + "_bn") if preact and block > 1
                   else x)
            stride = 2 if b == 0 and stage > 0 else 1
            top = inp
            for i, (k, num, s) in enumerate(((1, width, 1), (3, width, stride),
                                             (1, outer, 1)), 1):
                top = n["%s_conv%d" % (name, i)] = conv(top, num, k, stride=s, pad=k // 2,
                                                        bias=False)
                if i < 3 or not preact:
                    _bn_relu(n, "%s_conv%d" % (name, i), top, i < 3)
            shortcut = x
            if b == 0:
                shortcut = n[name + "_match_conv"] = conv(inp, outer, 1, stride=stride,
                                                          bias=False)
                if not preact:
                    _bn_relu(n, name + "_match_conv", shortcut, False)
            x = n["%s_%s" % (name, sum_name)] = L.Eltwise(shortcut, top)
            if not preact:
                n["%s_%s_relu" % (name, sum_name)] = relu(x)
    return n, x, block


def resnet101_v2():
    """Pre-activation ResNet-101 (He et al. 2016, "Identity Mappings in Deep Residual
    Networks") as soeaver/caffe-model's cls/resnet-v2/deploy_resnet101-v2.prototxt writes
    it, layer for layer: blocks res1-res33 (3, 4, 23 and 3 to a stage); each after the
    first normalizes its input into resN_bn (BatchNorm, Scale, ReLU, not in place: the
    Eltwise sum takes the input itself), then 1x1, 3x3 (carrying a stage's stride), 1x1
    without a BatchNorm after the last; a stage's first block projects (resN_match_conv)
    from the normalized input, the first block from pool1. The sum of the last block is
    normalized before the global pooling."""
    n, x, block = _numbered_resnet((3, 4, 23, 3), 64, True, {}, "eletwise")
    last = _bn_relu(n, "res%d_eletwise" % block, x, top_name="res%d_eletwise_bn" % block)
    n.pool5 = L.Pooling(last, pool=P.Pooling.AVE, global_pooling=True)
    n.classifier = fc(n.pool5, 1000)
    heads(n, n.classifier)
    return n


def wrn50_2():
    """Wide ResNet-50-2 (Zagoruyko & Komodakis 2016; torchvision's wide_resnet50_2) as
    soeaver/caffe-model's cls/wider-resnet/deploy_wrn50-2.prototxt writes it, layer for
    layer: ResNet-50's bottlenecks with their inner 1x1 and 3x3 twice as wide (128 to
    1024 channels), the stride on the 3x3, blocks res1-res16 numbered through. Its
    pool1 is padded by 1 and rounds down (the port's fork field ``ceil_mode: false``,
    BVLC's ``round_mode: FLOOR``), as torchvision's does: 56x56 either way at 224."""
    n, x, _ = _numbered_resnet((3, 4, 6, 3), 128, False,
                               dict(pad=1, round_mode=P.Pooling.FLOOR), "elewise")
    n.pool_ave = L.Pooling(x, pool=P.Pooling.AVE, global_pooling=True)
    n.classifier = fc(n.pool_ave, 1000)
    heads(n, n.classifier)
    return n


def resnext50():
    """ResNeXt-50 (32x4d; Xie et al. 2017) in ResNet-50's Caffe layout: each bottleneck's
    3x3 is a Convolution with 32 groups (4 channels each in the first stage), twice
    ResNet-50's inner width; He's (msra) fillers, as its training code draws them."""
    return _resnet(128, 2, group=32, filler=dict(type="msra"), conv1_bias=False)


def _fcn_body(n, size):
    """FCN's VGG-16 trunk (Long, Shelhamer & Darrell 2015, fcn.berkeleyvision.org): conv1_1
    padded by 100, fc6/fc7 as convolutions, the 21 PASCAL VOC class scores; DummyData
    images with a per-pixel label map."""
    n.data, n.label = L.DummyData(
        shape=[dict(dim=[1, 3, size, size]), dict(dim=[1, 1, size, size])],
        data_filler=[dict(type="gaussian", std=1), dict(type="constant", value=7)], ntop=2)
    bottom = n.data
    for stage, (width, reps) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1):
        for r in range(1, reps + 1):
            name = "conv%d_%d" % (stage, r)
            n[name] = conv(bottom, width, 3, pad=100 if name == "conv1_1" else 1)
            n["relu%d_%d" % (stage, r)] = relu(n[name])
            bottom = n[name]
        bottom = n["pool%d" % stage] = max_pool(bottom, 2, 2)
    n.fc6 = conv(bottom, 4096, 7)
    n.relu6 = relu(n.fc6)
    n.drop6 = L.Dropout(n.fc6, dropout_ratio=0.5, in_place=True)
    n.fc7 = conv(n.fc6, 4096, 1)
    n.relu7 = relu(n.fc7)
    n.drop7 = L.Dropout(n.fc7, dropout_ratio=0.5, in_place=True)
    n.score_fr = conv(n.fc7, 21, 1)
    return n.score_fr


def _upscore(bottom, k, stride):
    """FCN's fixed bilinear upsampling: a Deconvolution without bias, lr_mult 0 (FCN sets
    the weights by net surgery; the bilinear filler stands in)."""
    return L.Deconvolution(bottom, param=[dict(lr_mult=0)], convolution_param=dict(
        num_output=21, kernel_size=k, stride=stride, bias_term=False,
        weight_filler=dict(type="bilinear")))


def _fcn_loss(n):
    n.loss = L.SoftmaxWithLoss(n.score, n.label, loss_param=dict(normalize=False,
                                                                  ignore_label=255))


def fcn32s():
    """FCN-32s: the class scores upsampled 32x in one Deconvolution (64x64 kernel)."""
    n = NetSpec()
    score_fr = _fcn_body(n, 500)
    n.upscore = _upscore(score_fr, 64, 32)
    n.score = L.Crop(n.upscore, n.data, crop_param=dict(axis=2, offset=19))
    _fcn_loss(n)
    return n


def fcn8s():
    """FCN-8s: 2x upsampled scores fused with pool4's and pool3's (1x1 score layers,
    cropped), then upsampled 8x."""
    n = NetSpec()
    score_fr = _fcn_body(n, 500)
    n.upscore2 = _upscore(score_fr, 4, 2)
    n.score_pool4 = conv(n.pool4, 21, 1)
    n.score_pool4c = L.Crop(n.score_pool4, n.upscore2, crop_param=dict(axis=2, offset=5))
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore_pool4 = _upscore(n.fuse_pool4, 4, 2)
    n.score_pool3 = conv(n.pool3, 21, 1)
    n.score_pool3c = L.Crop(n.score_pool3, n.upscore_pool4, crop_param=dict(axis=2, offset=9))
    n.fuse_pool3 = L.Eltwise(n.upscore_pool4, n.score_pool3c, operation=P.Eltwise.SUM)
    n.upscore8 = _upscore(n.fuse_pool3, 16, 8)
    n.score = L.Crop(n.upscore8, n.data, crop_param=dict(axis=2, offset=31))
    _fcn_loss(n)
    return n


def deeplab_largefov():
    """DeepLab-LargeFOV (Chen et al. 2015, as DeepLab's Caffe train.prototxt writes it):
    VGG-16 with 3x3 pools (stride 2, padded by 1) and stride 1 from pool4 on, so the
    321x321 crops come out at 41x41, 1/8 of the input; conv5's 3x3s dilated by 2; a 3x3
    AVE pool5a; fc6 a 3x3 dilated by 12 with 1024 outputs, fc7 a 1x1, fc8_voc12 the 21
    PASCAL VOC scores (learning rate x10). DeepLab's own data layer and its Interp
    (shrink_factor 8) of the label are not BVLC Caffe's: DummyData gives the 41x41
    label directly. SoftmaxWithLoss ignores label 255; BVLC's Accuracy (which also
    ignores it) stands for DeepLab's SegAccuracy. A batch of 10, as DeepLab's scripts
    write it."""
    n = NetSpec()
    n.data, n.label = L.DummyData(
        shape=[dict(dim=[10, 3, 321, 321]), dict(dim=[10, 1, 41, 41])],
        data_filler=[dict(type="gaussian", std=1), dict(type="constant", value=7)], ntop=2)
    x = n.data
    stages = [(64, 2, 1, 2), (128, 2, 1, 2), (256, 3, 1, 2), (512, 3, 1, 1), (512, 3, 2, 1)]
    for stage, (width, reps, dilation, pool_stride) in enumerate(stages, 1):
        for r in range(1, reps + 1):
            name = "conv%d_%d" % (stage, r)
            x = n[name] = conv(x, width, 3, pad=dilation, dilation=dilation)
            n["relu%d_%d" % (stage, r)] = relu(x)
        x = n["pool%d" % stage] = max_pool(x, 3, pool_stride, pad=1)
    n.pool5a = L.Pooling(x, pool=P.Pooling.AVE, kernel_size=3, stride=1, pad=1)
    x = n.fc6 = conv(n.pool5a, 1024, 3, pad=12, dilation=12)
    n.relu6 = relu(x)
    n.drop6 = L.Dropout(x, dropout_ratio=0.5, in_place=True)
    x = n.fc7 = conv(x, 1024, 1)
    n.relu7 = relu(x)
    n.drop7 = L.Dropout(x, dropout_ratio=0.5, in_place=True)
    n.fc8_voc12 = L.Convolution(
        x, num_output=21, kernel_size=1, weight_filler=GAUSS, bias_filler=ZERO,
        param=[dict(lr_mult=10, decay_mult=1), dict(lr_mult=20, decay_mult=0)])
    n.accuracy = L.Accuracy(n.fc8_voc12, n.label, accuracy_param=dict(ignore_label=255),
                            include=dict(phase=1))
    n.loss = L.SoftmaxWithLoss(n.fc8_voc12, n.label, loss_param=dict(ignore_label=255))
    return n


def srcnn():
    """SRCNN (Dong, Loy, He & Tang 2014), its authors' 9-1-5 net as their Caffe release's
    SRCNN_net.prototxt writes it: on the luminance of an image already upscaled by
    bicubic interpolation, an unpadded 9x9 of 64 outputs, a 1x1 of 32, a 5x5 to the one
    output channel, ReLUs after the first two, an EuclideanLoss against the sharp
    image's centre. Gaussian fillers of std 0.001, conv3 and every bias learning at 0.1.
    Trained on 33x33 sub-images, 128 a batch (the release reads them from HDF5Data;
    DummyData here), whose 21x21 centres are the labels; deployed on whole images."""
    n = NetSpec()
    n.data, n.label = L.DummyData(
        shape=[dict(dim=[128, 1, 33, 33]), dict(dim=[128, 1, 21, 21])],
        data_filler=[dict(type="uniform", min=0, max=1), dict(type="uniform", min=0, max=1)],
        ntop=2)
    std = dict(type="gaussian", std=0.001)
    x = n.data
    for i, (num, k, lr) in enumerate(((64, 9, 1), (32, 1, 1), (1, 5, 0.1)), 1):
        x = n["conv%d" % i] = L.Convolution(
            x, param=[dict(lr_mult=lr), dict(lr_mult=0.1)], num_output=num, kernel_size=k,
            stride=1, pad=0, weight_filler=std, bias_filler=ZERO)
        if i < 3:
            n["relu%d" % i] = relu(x)
    n.loss = L.EuclideanLoss(x, n.label)
    return n


def fsrcnn():
    """FSRCNN(56, 12, 4) for 3x upscaling (Dong, Loy & Tang 2016), as the paper describes
    it: on the low-resolution luminance itself (no bicubic upscaling first), a 5x5 of 56
    outputs (unpadded, as the release's conv1), a 1x1 shrinking to 12, four 3x3s of 12
    (padded by 1), a 1x1 expanding to 56, each followed by a PReLU with a slope per
    channel, and a 9x9 Deconvolution of stride 3 to the one output channel, learning at
    0.1. Its padding (3: the output is 3x the map it reads) and the 11x11 sub-images
    (21x21 labels) are this zoo's choices; the release reads its sub-images from
    HDF5Data, 128 a batch, DummyData here. MSRA fillers for the convolutions (the
    paper's He et al. initialization), a Gaussian of std 0.001 for the deconvolution."""
    n = NetSpec()
    n.data, n.label = L.DummyData(
        shape=[dict(dim=[128, 1, 11, 11]), dict(dim=[128, 1, 21, 21])],
        data_filler=[dict(type="uniform", min=0, max=1), dict(type="uniform", min=0, max=1)],
        ntop=2)
    msra = dict(type="msra")
    learn = [dict(lr_mult=1), dict(lr_mult=0.1)]
    x = n.data
    for name, num, k in (("conv1", 56, 5), ("conv2", 12, 1), ("conv22", 12, 3),
                         ("conv23", 12, 3), ("conv24", 12, 3), ("conv25", 12, 3),
                         ("conv26", 56, 1)):
        x = n[name] = L.Convolution(x, param=learn, num_output=num, kernel_size=k,
                                    pad=1 if k == 3 else 0, weight_filler=msra,
                                    bias_filler=ZERO)
        n["relu" + name[4:]] = L.PReLU(x, in_place=True)
    n.conv3 = L.Deconvolution(x, param=[dict(lr_mult=0.1), dict(lr_mult=0.1)],
                              convolution_param=dict(
                                  num_output=1, kernel_size=9, stride=3, pad=3,
                                  weight_filler=dict(type="gaussian", std=0.001),
                                  bias_filler=ZERO))
    n.loss = L.EuclideanLoss(n.conv3, n.label)
    return n


def mtcnn_pnet():
    """MTCNN's P-Net as its released det1.prototxt writes it: three 3x3 convolutions
    (10, 16, 32 outputs) each followed by a PReLU in place (named PReLU1-3), a 2x2 MAX
    pool after the first, and two 1x1 heads, conv4-1 face or not (2) and conv4-2 the
    box's offsets (4). Fully convolutional: it is trained on 12x12 crops (one output
    each) and run on whole images, one output per 12x12 window at stride 2. Biases
    learn at twice the rate, without weight decay, as det1 sets. Training as the paper
    weighs P-Net's tasks here: SoftmaxWithLoss 1, the box's EuclideanLoss 0.5. A batch of
    384 crops."""
    n = NetSpec()
    n.data, n.label, n.roi = L.DummyData(
        shape=[dict(dim=[384, 3, 12, 12]), dict(dim=[384]), dict(dim=[384, 4])],
        data_filler=[dict(type="gaussian", std=1), dict(type="constant", value=1),
                     dict(type="gaussian", std=0.1)],
        ntop=3)
    x = n.data
    for i, num in enumerate((10, 16, 32), 1):
        x = n["conv%d" % i] = L.Convolution(x, param=LEARN, num_output=num, kernel_size=3,
                                            weight_filler=XAVIER, bias_filler=ZERO)
        n["PReLU%d" % i] = L.PReLU(x, in_place=True)
        if i == 1:
            x = n.pool1 = max_pool(x, 2, 2)
    heads = {}
    for head, num in (("conv4-1", 2), ("conv4-2", 4)):
        heads[head] = n[head] = L.Convolution(x, param=LEARN, num_output=num, kernel_size=1,
                                              weight_filler=XAVIER, bias_filler=ZERO)
    n.cls_loss = L.SoftmaxWithLoss(heads["conv4-1"], n.label)
    n.accuracy = L.Accuracy(heads["conv4-1"], n.label, include=dict(phase=1))
    n.roi_loss = L.EuclideanLoss(heads["conv4-2"], n.roi, loss_weight=0.5)
    return n


def mtcnn_onet():
    """MTCNN's O-Net (Zhang, Zhang, Li & Qiao 2016) as its released det3.prototxt writes
    it: four convolutions (3x3, 3x3, 3x3, 2x2) each followed by a PReLU (learned slopes
    per channel, in place), MAX pools rounding up (48x48 -> 46 -> 23 -> 21 -> 10 -> 8 ->
    4 -> 3), an InnerProduct of 256 with Dropout 0.25 before its PReLU, and three heads:
    conv6-1 face or not (2), conv6-2 the box's offsets (4), conv6-3 five landmarks (10).
    Biases learn at twice the rate, with weight decay, as det3 sets. Training as the
    paper weighs O-Net's three tasks: SoftmaxWithLoss 1, the box's EuclideanLoss 0.5,
    the landmarks' 1. (MTCNN's own training feeds each crop with the tasks it has a
    label for, from its data layer; DummyData here gives every crop all three.) A batch
    of 256 crops."""
    n = NetSpec()
    n.data, n.label, n.roi, n.pts = L.DummyData(
        shape=[dict(dim=[256, 3, 48, 48]), dict(dim=[256]), dict(dim=[256, 4]),
               dict(dim=[256, 10])],
        data_filler=[dict(type="gaussian", std=1), dict(type="constant", value=1),
                     dict(type="gaussian", std=0.1), dict(type="gaussian", std=0.1)],
        ntop=4)
    decayed = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=1)]
    x = n.data
    for i, (num, k, pool) in enumerate([(32, 3, (3, 2)), (64, 3, (3, 2)), (64, 3, (2, 2)),
                                        (128, 2, None)], 1):
        x = n["conv%d" % i] = L.Convolution(x, param=decayed, num_output=num, kernel_size=k,
                                            weight_filler=XAVIER, bias_filler=ZERO)
        n["prelu%d" % i] = L.PReLU(x, in_place=True)
        if pool:
            x = n["pool%d" % i] = max_pool(x, *pool)
    x = n.conv5 = L.InnerProduct(x, param=decayed, num_output=256, weight_filler=XAVIER,
                                 bias_filler=ZERO)
    n.drop5 = L.Dropout(x, dropout_ratio=0.25, in_place=True)
    n.prelu5 = L.PReLU(x, in_place=True)
    heads = {}
    for head, num in (("conv6-1", 2), ("conv6-2", 4), ("conv6-3", 10)):
        heads[head] = n[head] = L.InnerProduct(x, param=decayed, num_output=num,
                                               weight_filler=XAVIER, bias_filler=ZERO)
    n.cls_loss = L.SoftmaxWithLoss(heads["conv6-1"], n.label)
    n.accuracy = L.Accuracy(heads["conv6-1"], n.label, include=dict(phase=1))
    n.roi_loss = L.EuclideanLoss(heads["conv6-2"], n.roi, loss_weight=0.5)
    n.pts_loss = L.EuclideanLoss(heads["conv6-3"], n.pts, loss_weight=1)
    return n


def unet():
    """U-Net (Ronneberger, Fischer & Brox 2015) as its authors' Caffe release writes it
    (phseg_v5, their layer names): one grey channel in, unpadded 3x3s, four 2x2 MAX
    pools down to 1024 channels at 28x28 for a 572x572 tile, Dropout on the two
    deepest levels, then four 2x2 up-convolutions of stride 2 (Deconvolution, each
    followed by a ReLU, the last one with 128 outputs), each joined by a Concat to the
    matching level's features cropped to its size, and a 1x1 to two class scores at
    388x388. MSRA fillers (the paper's Gaussians of std sqrt(2/N)). The release crops
    at the centre in its own Crop layer; BVLC's Crop takes the offsets (4, 16, 40 and
    88 at 572x572). Its SoftmaxWithLoss takes a third bottom, a per-pixel weight map,
    which BVLC's has not: the loss here is unweighted. One tile a batch, as the
    release trains."""
    n = NetSpec()
    msra = dict(type="msra")
    n.data, n.label = L.DummyData(
        shape=[dict(dim=[1, 1, 572, 572]), dict(dim=[1, 1, 388, 388])],
        data_filler=[dict(type="gaussian", std=1), dict(type="constant", value=1)], ntop=2)

    def unit(name, bottom, num):
        top = n["conv_" + name] = conv(bottom, num, 3, filler=msra)
        n["relu_" + name[:2] + name[-1]] = relu(top)
        return top

    x, skips = n.data, []
    for level, width in enumerate((64, 128, 256, 512, 1024)):
        x = unit("d%da-b" % level, x, width)
        x = unit("d%db-c" % level, x, width)
        if level >= 3:
            n["dropout_d%dc" % level] = L.Dropout(x, dropout_ratio=0.5, in_place=True)
        if level < 4:
            skips.append(x)
            x = n["pool_d%dc-%da" % (level, level + 1)] = max_pool(x, 2, 2)
    source = "d4c"
    for level, width, offset in ((3, 512, 4), (2, 256, 16), (1, 128, 40), (0, 128, 88)):
        up = n["upconv_%s_u%da" % (source, level)] = L.Deconvolution(
            x, param=LEARN, convolution_param=dict(
                num_output=width, kernel_size=2, stride=2, weight_filler=msra,
                bias_filler=ZERO))
        n["relu_u%da" % level] = relu(up)
        crop = n["crop_d%dc-d%dcc" % (level, level)] = L.Crop(
            skips[level], up, crop_param=dict(axis=2, offset=offset))
        x = n["concat_d%dcc_u%da-b" % (level, level)] = L.Concat(up, crop)
        width = min(width, 64 << level)
        x = unit("u%db-c" % level, x, width)
        x = unit("u%dc-d" % level, x, width)
        source = "u%dd" % level
    n["conv_u0d-score"] = conv(x, 2, 1, filler=msra)
    n.loss = L.SoftmaxWithLoss(n["conv_u0d-score"], n.label)
    return n


def colorization():
    """Colorful Image Colorization (Zhang, Isola & Efros 2016) as its authors' Caffe
    release writes the net (richzhang/colorization at 4aa459f,
    colorization_train_val_v2.prototxt, its layer names): the lightness channel in, eight
    blocks of 3x3s with ReLUs, the first three ending in a stride-2 3x3, blocks 1-7 in a
    BatchNorm (out of place, its three blobs at rate 0, no Scale after it), blocks 5 and
    6 dilated by 2 on 512 channels at 1/8 of the input, block 8 opening with a learned
    4x4 Deconvolution of stride 2 (1/4 of the input), and a 1x1 to 313 scores per pixel,
    the quantized ab colour bins. The release names no fillers (it initialised its
    weights apart): MSRA here. Its loss is its fork's SoftmaxCrossEntropyLoss on soft
    encodings of the true colours, rebalanced by Python layers; BVLC's SoftmaxWithLoss on
    one bin per pixel stands for it, and DummyData for the Python layers that make the
    lightness and the bins from an image. The deploy net (colorization_deploy_v2) ends
    in a Scale by 2.606, a Softmax and a 1x1 to the two ab channels, left out here.
    Batch 40 of 176x176 crops, as the release trains."""
    n = NetSpec()
    msra = dict(type="msra")
    n.data_l, n.label = L.DummyData(
        shape=[dict(dim=[40, 1, 176, 176]), dict(dim=[40, 1, 44, 44])],
        data_filler=[dict(type="gaussian", std=1), dict(type="constant", value=156)],
        ntop=2)

    def unit(name, bottom, num, stride=1, dilation=1, layer=None):
        top = n[name] = L.Convolution(bottom, num_output=num, kernel_size=3, pad=dilation,
                                      stride=stride, dilation=dilation, weight_filler=msra,
                                      name=layer or name)
        n["relu" + name[4:]] = relu(top)
        return top

    x = unit("conv1_1", n.data_l, 64, layer="bw_conv1_1")
    blocks = [(1, 64, 2, 2, 1), (2, 128, 2, 2, 1), (3, 256, 3, 2, 1), (4, 512, 3, 1, 1),
              (5, 512, 3, 1, 2), (6, 512, 3, 1, 2), (7, 512, 3, 1, 1)]
    for block, width, count, last_stride, dilation in blocks:
        for i in range(2 if block == 1 else 1, count + 1):
            x = unit("conv%d_%d" % (block, i), x, width,
                     stride=last_stride if i == count else 1, dilation=dilation)
        x = n["conv%d_%dnorm" % (block, count)] = L.BatchNorm(
            x, param=[dict(lr_mult=0, decay_mult=0)] * 3)
    x = n.conv8_1 = L.Deconvolution(x, convolution_param=dict(
        num_output=256, kernel_size=4, pad=1, dilation=1, stride=2, weight_filler=msra))
    n.relu8_1 = relu(x)
    x = unit("conv8_2", x, 256)
    x = unit("conv8_3", x, 256)
    n.conv8_313 = L.Convolution(x, num_output=313, kernel_size=1, stride=1, dilation=1,
                                weight_filler=msra)
    n.loss8_313 = L.SoftmaxWithLoss(n.conv8_313, n.label)
    return n


def resnet56_cifar():
    """ResNet-56 for CIFAR-10 (He et al. 2016, section 4.2) as a Caffe release writes it
    (ethanhe42/resnet-cifar10-caffe at a0751f6, resnet-56/trainval.prototxt: its layer
    names, and the name its generator gives every depth): a 3x3 of 16 with a bias, then
    three groups of nine basic blocks, 16, 32 and 64 wide at 32x32, 16x16 and 8x8, their
    3x3s without bias. Every convolution is followed by BatchNorm (moving average
    fraction 0.9) and Scale with a bias in place, and a ReLU but on a block's second
    3x3; a ReLU follows each block's Eltwise sum. The first block of groups 1 and 2
    takes stride 2 on its first 3x3 and projects its shortcut with a 1x1 of stride 2
    (with BatchNorm and Scale). MSRA weights. Global average pooling, a 10-way
    InnerProduct, SoftmaxWithLoss; a Softmax feeds an Accuracy that runs in both phases.
    Batch 128."""
    n = NetSpec()
    msra = dict(type="msra")
    data(n, 128, (3, 32, 32), classes=10)

    def unit(name, bottom, num, k, stride, pad, relu_after, bias=False):
        rates = LEARN if bias else LEARN[:1]
        extra = dict(bias_filler=ZERO) if bias else dict(bias_term=False)
        top = n[name] = L.Convolution(bottom, param=rates, num_output=num, pad=pad,
                                      kernel_size=k, stride=stride, weight_filler=msra,
                                      **extra)
        return _bn_relu(n, name, top, relu_after, maf=0.9, rates=True)

    x = unit("first_conv", n.data, 16, 3, 1, 1, True, bias=True)
    for group, width in enumerate((16, 32, 64)):
        for block in range(9):
            name = "group%d_block%d" % (group, block)
            stride = 2 if group and not block else 1
            a = unit(name + "_conv0", x, width, 3, stride, 1, True)
            b = unit(name + "_conv1", a, width, 3, 1, 1, False)
            if stride == 2:
                proj = unit(name + "_proj", x, width, 1, 2, 0, False)
                x = n[name + "_sum"] = L.Eltwise(proj, b, operation=P.Eltwise.SUM)
            else:
                x = n[name + "_sum"] = L.Eltwise(b, x, operation=P.Eltwise.SUM)
            n[name + "_relu"] = relu(x)
    n.global_avg_pool = L.Pooling(x, pool=P.Pooling.AVE, global_pooling=True)
    n.fc = L.InnerProduct(n.global_avg_pool, num_output=10, param=LEARN,
                          weight_filler=msra, bias_filler=ZERO)
    n.loss = L.SoftmaxWithLoss(n.fc, n.label)
    n.softmax = L.Softmax(n.fc)
    n.Accuracy = L.Accuracy(n.softmax, n.label)
    return n


def _conv_bn(n, name, bottom, num, k, stride=1, group=1, relu_after=True):
    """MobileNet's unit: convolution without bias, BatchNorm, Scale, ReLU (in place;
    none after MobileNet v2's linear bottlenecks)."""
    top = n[name] = conv(bottom, num, k, stride=stride, pad=(k - 1) // 2, group=group,
                         filler=dict(type="msra"), bias=False)
    n[name + "/bn"] = L.BatchNorm(top, in_place=True)
    n[name + "/scale"] = L.Scale(top, bias_term=True, in_place=True)
    if relu_after:
        n["relu" + name[4:]] = relu(top)
    return top


def mobilenet():
    """MobileNet v1 (Howard et al. 2017) as its Caffe port writes it: each depthwise
    3x3 is a Convolution with group = channels; the classifier an InnerProduct."""
    n = NetSpec()
    data(n, 32, (3, 224, 224))
    x = _conv_bn(n, "conv1", n.data, 32, 3, stride=2)
    channels = 32
    blocks = [("2_1", 64, 1), ("2_2", 128, 2), ("3_1", 128, 1), ("3_2", 256, 2),
              ("4_1", 256, 1), ("4_2", 512, 2)] + [("5_%d" % i, 512, 1) for i in range(1, 6)] \
        + [("5_6", 1024, 2), ("6", 1024, 1)]
    for name, out, stride in blocks:
        x = _conv_bn(n, "conv%s/dw" % name, x, channels, 3, stride=stride, group=channels)
        x = _conv_bn(n, "conv%s/sep" % name, x, out, 1)
        channels = out
    n.pool6 = ave_pool(x, 7, 1)
    n.fc7 = fc(n.pool6, 1000, filler=dict(type="msra"))
    heads(n, n.fc7)
    return n

def mobilenet_v2():
    """MobileNet v2 (Sandler et al. 2018) as its Caffe port (shicai/MobileNet-Caffe)
    names it: 17 inverted residual blocks, each a 1x1 expansion (6x the channels; 1x in
    the first), a depthwise 3x3 (group = channels) carrying the stride and a linear 1x1
    projection without ReLU, joined to the block's input by an Eltwise SUM where the
    stride is 1 and the channels agree (block_3_1 ...); then a 1x1 to 1280 channels, a
    global AVE pool and the classifier as a 1x1 Convolution with bias."""
    n = NetSpec()
    data(n, 32, (3, 224, 224))
    x = _conv_bn(n, "conv1", n.data, 32, 3, stride=2)
    # (the paper's table: expansion t, channels c, repeats, first stride), with the
    # port's block names: conv2_1 ... conv6_3, numbered on across the stages
    stages = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1)]
    names = ["2_1", "2_2", "3_1", "3_2", "4_1", "4_2", "4_3", "4_4", "4_5", "4_6", "4_7",
             "5_1", "5_2", "5_3", "6_1", "6_2", "6_3"]
    channels, blocks = 32, iter(names)
    for t, c, repeats, first_stride in stages:
        for i in range(repeats):
            name, stride = next(blocks), first_stride if i == 0 else 1
            e = _conv_bn(n, "conv%s/expand" % name, x, channels * t, 1)
            d = _conv_bn(n, "conv%s/dwise" % name, e, channels * t, 3, stride=stride,
                         group=channels * t)
            y = _conv_bn(n, "conv%s/linear" % name, d, c, 1, relu_after=False)
            if stride == 1 and c == channels:
                y = n["block_" + name] = L.Eltwise(x, y)
            x, channels = y, c
    x = _conv_bn(n, "conv6_4", x, 1280, 1)
    n.pool6 = L.Pooling(x, pool=P.Pooling.AVE, global_pooling=True)
    n.fc7 = conv(n.pool6, 1000, 1, filler=dict(type="msra"))
    heads(n, n.fc7)
    return n


def openpose():
    """OpenPose's COCO body model (Cao et al. 2017, CMU's pose_train_test and
    pose_deploy_linevec prototxts, their layer names): VGG-19's first ten convolutions
    and two more (conv4_3_CPM, conv4_4_CPM) at a 46x46 map for a 368x368 image, then
    six stages of two branches, part affinity fields (L1, 38 maps) and part heatmaps
    (L2, 19 maps). Stage 1's branches are three 3x3s and two 1x1s; stages 2-6 read
    the Concat of the last stage's two outputs and the trunk's features (185 channels)
    through five 7x7s and two 1x1s. CMU trains from its own data layer (CPMData, not
    BVLC's); here a DummyData gives the image and a label of 114 maps, cut by a Slice
    into the two branches' masks and targets as CMU's prototxt cuts its label. Each
    stage's outputs are masked (Eltwise PROD) and compared with the masked targets by
    an EuclideanLoss, twelve losses. The deploy output is CMU's: concat_stage7 joins
    the last stage's heatmaps and fields into net_output. The learning-rate
    multipliers are this zoo's usual 1 and 2, not CMU's."""
    n = NetSpec()
    gauss = dict(type="gaussian", std=0.01)
    n.data, n.label = L.DummyData(
        shape=[dict(dim=[1, 3, 368, 368]), dict(dim=[1, 114, 46, 46])],
        data_filler=[dict(type="gaussian", std=1), dict(type="uniform", min=0, max=1)],
        ntop=2)
    n.vec_weight, n.heat_weight, n.vec_temp, n.heat_temp = L.Slice(
        n.label, slice_param=dict(axis=1, slice_point=[38, 57, 95]), ntop=4)
    n.vec_label = L.Eltwise(n.vec_weight, n.vec_temp, operation=P.Eltwise.PROD)
    n.heat_label = L.Eltwise(n.heat_weight, n.heat_temp, operation=P.Eltwise.PROD)

    def unit(name, bottom, num, k, relu_after=True):
        top = n[name] = conv(bottom, num, k, pad=(k - 1) // 2, filler=gauss)
        if relu_after:
            n[name.replace("conv", "relu", 1).replace("Mconv", "Mrelu", 1)] = relu(top)
        return top

    x = n.data
    trunk = [("1_1", 64), ("1_2", 64), "pool1_stage1", ("2_1", 128), ("2_2", 128),
             "pool2_stage1", ("3_1", 256), ("3_2", 256), ("3_3", 256), ("3_4", 256),
             "pool3_stage1", ("4_1", 512), ("4_2", 512), ("4_3_CPM", 256), ("4_4_CPM", 128)]
    for item in trunk:
        if isinstance(item, str):
            x = n[item] = max_pool(x, 2, 2)
        else:
            x = unit("conv" + item[0], x, item[1], 3)
    features, outs = x, {}
    for branch, maps in (("L1", 38), ("L2", 19)):
        y = features
        for i, (num, k) in enumerate([(128, 3), (128, 3), (128, 3), (512, 1), (maps, 1)], 1):
            y = unit("conv5_%d_CPM_%s" % (i, branch), y, num, k, relu_after=i < 5)
        outs[branch] = y
    for stage in range(2, 8):
        previous = [outs["L1"], outs["L2"]]
        for branch, weight, target in (("L1", n.vec_weight, n.vec_label),
                                       ("L2", n.heat_weight, n.heat_label)):
            masked = n["weight_stage%d_%s" % (stage - 1, branch)] = L.Eltwise(
                outs[branch], weight, operation=P.Eltwise.PROD)
            n["loss_stage%d_%s" % (stage - 1, branch)] = L.EuclideanLoss(masked, target)
        if stage == 7:
            break
        joined = n["concat_stage%d" % stage] = L.Concat(*(previous + [features]), axis=1)
        for branch, maps in (("L1", 38), ("L2", 19)):
            y = joined
            for i, (num, k) in enumerate([(128, 7)] * 5 + [(128, 1), (maps, 1)], 1):
                y = unit("Mconv%d_stage%d_%s" % (i, stage, branch), y, num, k,
                         relu_after=i < 7)
            outs[branch] = y
    n.net_output = L.Concat(outs["L2"], outs["L1"], axis=1, name="concat_stage7")
    return n


def lrcn():
    """An LRCN-style captioning net (Donahue et al. 2015, the "factored" form): words
    through an Embed and a first LSTM; a second LSTM takes that and, as its static input,
    the image's features (a CNN's 1000 outputs, given here, not computed); a classifier
    over the vocabulary at each timestep (InnerProduct, axis 2); SoftmaxWithLoss along
    axis 2 that ignores label -1 (the padding after a sentence's end). 20 timesteps of
    100 streams, a vocabulary of 8801 words, 1000 units throughout. DummyData stands
    for the sequence data, constant where it holds word indices (Embed takes integers
    only): input words 1, target words 2, cont 1 (no stream restarts), features
    Gaussian."""
    T, N, V, H = 20, 100, 8801, 1000
    uniform = dict(type="uniform", min=-0.08, max=0.08)
    n = NetSpec()
    n.input_sentence, n.cont_sentence, n.target_sentence, n.image_features = L.DummyData(
        shape=[dict(dim=[T, N]), dict(dim=[T, N]), dict(dim=[T, N]), dict(dim=[N, 1000])],
        data_filler=[dict(type="constant", value=1), dict(type="constant", value=1),
                     dict(type="constant", value=2),
                     dict(type="gaussian", std=1)],
        ntop=4)
    n.embedded_input_sentence = L.Embed(n.input_sentence, input_dim=V, num_output=H,
                                        bias_term=False, weight_filler=uniform,
                                        param=[dict(lr_mult=1)])
    recurrent = dict(num_output=H, weight_filler=uniform, bias_filler=ZERO)
    n.lstm1 = L.LSTM(n.embedded_input_sentence, n.cont_sentence, recurrent_param=recurrent)
    n.lstm2 = L.LSTM(n.lstm1, n.cont_sentence, n.image_features, recurrent_param=recurrent)
    n.predict = L.InnerProduct(n.lstm2, num_output=V, axis=2, param=LEARN,
                               weight_filler=uniform, bias_filler=ZERO)
    n.cross_entropy_loss = L.SoftmaxWithLoss(n.predict, n.target_sentence, loss_weight=20,
                                             loss_param=dict(ignore_label=-1),
                                             softmax_param=dict(axis=2))
    return n



def _lstm_language_model(token, T, N, V, H, init, bias_filler, dropout=None):
    """Tokens through an Embed of H, two LSTMs of H and a V-way classifier at each of T
    timesteps (InnerProduct and SoftmaxWithLoss along axis 2), N streams; weights from
    ``init``; ``dropout``: a ratio for Dropouts in place after the Embed and each LSTM.
    DummyData stands for the sequences: input tokens 1, targets 2, cont 1. Blobs are
    named by ``token`` (input_chars, embedded_chars, ...)."""
    n = NetSpec()
    inputs, targets, embedded = "input_" + token, "target_" + token, "embedded_" + token
    n[inputs], n.cont, n[targets] = L.DummyData(
        shape=[dict(dim=[T, N])] * 3,
        data_filler=[dict(type="constant", value=1), dict(type="constant", value=1),
                     dict(type="constant", value=2)],
        ntop=3)
    x = n[embedded] = L.Embed(n[inputs], input_dim=V, num_output=H, bias_term=False,
                              weight_filler=init)
    recurrent = dict(num_output=H, weight_filler=init, bias_filler=bias_filler)
    for k in range(3):
        if dropout is not None:
            x = n["drop%d" % k] = L.Dropout(x, dropout_ratio=dropout, in_place=True)
        if k < 2:
            x = n["lstm%d" % (k + 1)] = L.LSTM(x, n.cont, recurrent_param=recurrent)
    n.predict = L.InnerProduct(x, num_output=V, axis=2, weight_filler=init,
                               bias_filler=bias_filler)
    n.loss = L.SoftmaxWithLoss(n.predict, n[targets], softmax_param=dict(axis=2))
    return n


def char_rnn():
    """A character-level language model with char-rnn's defaults (Karpathy 2015: two
    LSTMs of 128 units, sequences of 50 characters, 50 of them a batch, no dropout),
    written with BVLC's layers: an Embed of the characters (char-rnn feeds them one-hot,
    the same product as an Embed into the first LSTM's input weights; here an Embed of
    128), two LSTMs, a classifier over the characters at each timestep (InnerProduct,
    axis 2) and SoftmaxWithLoss along axis 2. 65 characters (tiny Shakespeare's).
    DummyData stands for the sequences: input characters 1, targets 2, cont 1."""
    return _lstm_language_model("chars", 50, 50, 65, 128,
                                dict(type="uniform", min=-0.08, max=0.08), ZERO)


def ptb_lstm():
    """A word-level language model with Zaremba, Sutskever & Vinyals' "medium" settings
    (2014, Penn Treebank): a vocabulary of 10,000 words, an Embed of 650, two LSTMs of
    650 units, 35 timesteps of 20 streams a batch, Dropout of 0.5 on the connections
    between layers (not the recurrent ones), weights uniform in [-0.05, 0.05], and a
    classifier over the 10,000 words at each timestep (InnerProduct, axis 2) into
    SoftmaxWithLoss along axis 2. The paper's solver (plain SGD at rate 1, gradients
    clipped to norm 5) is the solver's business, not the net's. DummyData stands for the
    sequences: input words 1, targets 2, cont 1."""
    uniform = dict(type="uniform", min=-0.05, max=0.05)
    return _lstm_language_model("words", 35, 20, 10000, 650, uniform, uniform, dropout=0.5)


def lightcnn9():
    """Light CNN-9 (Wu, He, Sun & Tan 2015, "LightenedCNN_B" in the authors'
    face_verification_experiment release) as its prototxt writes it: after every
    convolution and after fc1 a Max-Feature-Map, a Slice of the channels into two
    halves and an Eltwise MAX of them (the release's layers are named etlwise*); 1x1
    convolutions between the 3x3s (conv2a to conv5a); MAX pools of 2 (128x128 grey faces
    -> 64 -> 32 -> 16 -> 8); xavier weights, biases 0.1 at twice the rate without decay
    (fc2's at Caffe's defaults, as the release leaves them); Dropout 0.75 after fc1's
    MFM; fc2 over CASIA-WebFace's 10,575 identities. Training
    as its release's (deploy) net ends, with SoftmaxWithLoss for its Softmax and the
    Accuracy in TEST; a batch of 20, its input_dim."""
    n = NetSpec()
    data(n, 20, (1, 128, 128), classes=10575)
    rates = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
    bias = dict(type="constant", value=0.1)

    def mfm(x, suffix):
        halves = L.Slice(x, name="slice" + suffix, slice_param=dict(slice_dim=1), ntop=2)
        n["slice%s_1" % suffix], n["slice%s_2" % suffix] = halves
        out = n["eltwise" + suffix] = L.Eltwise(*halves, name="etlwise" + suffix,
                                                operation=P.Eltwise.MAX)
        return out

    x = n.data
    for name, num, k, pad, pool in [("1", 96, 5, 2, True), ("2a", 96, 1, 0, False),
                                    ("2", 192, 3, 1, True), ("3a", 192, 1, 0, False),
                                    ("3", 384, 3, 1, True), ("4a", 384, 1, 0, False),
                                    ("4", 256, 3, 1, False), ("5a", 256, 1, 0, False),
                                    ("5", 256, 3, 1, True)]:
        kw = dict(pad=pad) if pad else {}
        x = n["conv" + name] = L.Convolution(x, param=rates, num_output=num, kernel_size=k,
                                             stride=1, weight_filler=XAVIER,
                                             bias_filler=bias, **kw)
        x = mfm(x, name)
        if pool:
            x = n["pool%d" % {"1": 1, "2": 2, "3": 3, "5": 4}[name]] = max_pool(x, 2, 2)
    x = n.fc1 = L.InnerProduct(x, param=rates, num_output=512, weight_filler=XAVIER,
                               bias_filler=bias)
    x = mfm(x, "_fc1")
    n.drop1 = L.Dropout(x, dropout_ratio=0.75, in_place=True)
    n.fc2 = L.InnerProduct(x, num_output=10575, weight_filler=XAVIER, bias_filler=bias)
    heads(n, n.fc2)
    return n

NETS = {
    "lenet": (lenet, "LeNet"),
    "cifar10_quick": (cifar10_quick, "CIFAR10_quick"),
    "cifar10_full": (cifar10_full, "CIFAR10_full"),
    "caffenet": (caffenet, "CaffeNet"),
    "alexnet": (alexnet, "AlexNet"),
    "vgg16": (vgg16, "VGG_ILSVRC_16_layers"),
    "googlenet": (googlenet, "GoogleNet"),
    "resnet18": (resnet18, "ResNet-18"),
    "resnet34": (resnet34, "ResNet-34"),
    "resnet50": (resnet50, "ResNet-50"),
    "resnet101": (resnet101, "ResNet-101"),
    "resnet152": (resnet152, "ResNet-152"),
    "resnet101_v2": (resnet101_v2, "ResNet-101-v2"),
    "wrn50_2": (wrn50_2, "WRN-50-2"),
    "mobilenet": (mobilenet, "MobileNet"),
    "mobilenet_v2": (mobilenet_v2, "MobileNet-v2"),
    "openpose": (openpose, "OpenPose-COCO"),
    "squeezenet": (squeezenet, "SqueezeNet_v1.1"),
    "nin": (nin, "nin_imagenet"),
    "densenet121": (densenet121, "DENSENET_121"),
    "se_bn_inception": (se_bn_inception, "SE-BN-Inception"),
    "inception_v3": (inception_v3, "Inception-v3"),
    "inception_v4": (inception_v4, "Inception-v4"),
    "inception_resnet_v2": (inception_resnet_v2, "Inception-ResNet-v2"),
    "xception": (xception, "Xception"),
    "dpn92": (dpn92, "DPN-92"),
    "resnext50": (resnext50, "ResNeXt-50-32x4d"),
    "fcn32s": (fcn32s, "FCN-32s"),
    "fcn8s": (fcn8s, "FCN-8s"),
    "deeplab_largefov": (deeplab_largefov, "DeepLab-LargeFOV"),
    "unet": (unet, "phseg_v5"),
    "resnet56_cifar": (resnet56_cifar, "resnet9-cifar10"),
    "colorization": (colorization, "LtoAB"),
    "srcnn": (srcnn, "SRCNN"),
    "fsrcnn": (fsrcnn, "FSRCNN"),
    "mtcnn_pnet": (mtcnn_pnet, "PNet"),
    "mtcnn_onet": (mtcnn_onet, "ONet"),
    "lrcn": (lrcn, "LRCN"),
    "char_rnn": (char_rnn, "char-rnn"),
    "ptb_lstm": (ptb_lstm, "PTB-LSTM-medium"),
    "lightcnn9": (lightcnn9, "DeepFace_set003_net"),
    "mnist_autoencoder": (mnist_autoencoder, "MNISTAutoencoder"),
    "mnist_siamese": (mnist_siamese, "mnist_siamese_train_test"),
    "cifar10_full_sigmoid_bn": (cifar10_full_sigmoid_bn, "CIFAR10_full"),
}


def main():
    for key, (build, title) in NETS.items():
        proto = build().to_proto()
        proto.name = title
        path = os.path.join(HERE, key + ".prototxt")
        with open(path, "w") as f:
            f.write("# %s, written from the published architecture by make_zoo.py.\n" % title)
            f.write(str(proto))
        print("wrote", path, len(proto.layer), "layers")


if __name__ == "__main__":
    main()
