"""The benchmark's contenders compute the same thing: benchmarks/nets.py writes each zoo
net again in plain JAX and PyTorch, and jcaffe gets their params (load_reference_params).
Their deploy outputs and jcaffe's must agree, and so must the first training loss, or
the benchmark would time different work."""
import os
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import bench_forward  # noqa: E402
import nets  # noqa: E402


def _check_deploy(name, batch):
    outs = {label: np.asarray(setup()()) for label, setup in
            bench_forward.contenders(name, batch).items()}
    first, *others = outs
    scale = np.abs(outs[first]).max()
    assert scale > 0
    for label in others:
        np.testing.assert_allclose(outs[label], outs[first], rtol=0, atol=1e-4 * scale,
                                   err_msg="%s vs %s" % (label, first))


def _check(name, batch):
    _check_deploy(name, batch)
    solver = nets.jcaffe_solver(name, batch)
    solver.step(1)
    param = nets.net_param(name, batch)
    params = jax.tree_util.tree_map(jnp.asarray, nets.init_params(param))
    stats = jax.tree_util.tree_map(jnp.asarray, nets.init_stats(param))
    inputs = {k: jnp.asarray(v) for k, v in nets.feeds(param).items()}
    loss = nets.jax_train_step(param)(params, nets.jax_history(params), stats, inputs,
                                      jax.random.PRNGKey(0), jnp.int32(0))[3]
    np.testing.assert_allclose(float(solver._losses[-1]), float(loss), rtol=1e-4)


def _steps_agree(name, batch, solver="SGD", steps=3, moves_rtol=1e-3):
    """jcaffe's solver and the pure JAX reference's step, from the same params: the
    losses of the first ``steps`` steps agree (the first is the params' own; the next
    follow the updates), the params moved, and their moves agree (SGD: each element
    within ``moves_rtol`` of the param's largest move)."""
    jc = nets.jcaffe_solver(name, batch, solver)
    param = nets.net_param(name, batch)
    step = nets.jax_train_step(param, solver)
    params = jax.tree_util.tree_map(jnp.asarray, nets.init_params(param))
    history = nets.jax_history(params, solver)
    stats = jax.tree_util.tree_map(jnp.asarray, nets.init_stats(param))
    inputs = {k: jnp.asarray(v) for k, v in nets.feeds(param).items()}
    losses = []
    for t in range(steps):
        jc.step(1)
        params, history, stats, loss = step(params, history, stats, inputs,
                                            jax.random.PRNGKey(0), jnp.int32(t))
        losses.append(float(jc._losses[-1]))
        np.testing.assert_allclose(losses[-1], float(loss), rtol=1e-4)
    assert steps == 1 or abs(losses[-1] - losses[0]) > 1e-3      # (the params moved)
    start = nets.init_params(param)
    largest = max(float(np.abs(np.asarray(v) - start[layer][i]).max())
                  for layer, values in params.items() for i, v in enumerate(values))
    for layer, values in params.items():
        for i, value in enumerate(values):
            moved = np.asarray(value) - start[layer][i]
            mine = jc.net.params[layer][i].data - start[layer][i]
            what = "%s param %d" % (layer, i)
            if np.abs(moved).max() < 1e-5 * largest:
                # a gradient that is zero but for rounding (a bias just before a
                # BatchNorm, which takes its mean away): both moves are noise, both tiny
                assert np.abs(mine).max() < 1e-5 * largest, what
            elif solver == "Adam":
                # Adam's step is m / (sqrt(v) + 1e-8), about sign(g) where |g| is well
                # above 1e-8, but a ratio of roundings where |g| is near it: a different
                # summation order moves such an element by a few percent (7 of LeNet's
                # 400000 ip1 weights, seen). So the change as a whole, within 0.1% by norm.
                assert np.linalg.norm(mine - moved) <= 1e-3 * np.linalg.norm(moved) + 1e-12, what
            else:
                # each element's change, within 0.1% of the largest, or two float32 ulps
                # of the param: a move is read as the difference of two rounded params, so
                # a weight of 0.02 shows it to 1.9e-9 only (the autoencoder's encode1 moves
                # by 1.4e-6 at most: 0.1% of that is below one ulp of its weights)
                bound = (moves_rtol * np.abs(moved).max() + 1e-12
                         + 2 * np.spacing(np.abs(start[layer][i]).astype(np.float32)))
                err = np.abs(mine - moved)
                at = np.unravel_index(np.argmax(err - bound), err.shape)
                assert np.all(err <= bound), "%s: %d elements off; at %s %g against %g (%g)" % (
                    what, np.sum(err > bound), at, mine[at], moved[at], bound[at])


def test_lenet_contenders_agree():
    _check("lenet", 4)


@pytest.mark.parametrize("name", ["cifar10_quick", "cifar10_full"])
def test_cifar10_contenders_agree(name):
    """Caffe's CIFAR-10 tutorial nets: 5x5 convolutions on 32x32 maps, AVE pooling whose
    last window overhangs (Caffe's ceil), cifar10_full's LRN within a channel (the
    references' own: a 3x3 mean of the squares counting the zero border) and its ip1
    weight's decay_mult 250 (the losses of three steps: the updates too)."""
    _check_deploy(name, 4)
    _steps_agree(name, 4)


def test_cifar10_sigmoid_bn_contenders_agree():
    """Caffe's CIFAR-10 full with BatchNorm and Sigmoid (cifar10_full_sigmoid_train_test_bn):
    the deploy outputs (BatchNorm from its running averages) and three steps (from the
    batch's statistics, the averages' blobs at lr_mult 0 left out of the moves)."""
    _check_deploy("cifar10_full_sigmoid_bn", 4)
    _steps_agree("cifar10_full_sigmoid_bn", 4)


def test_mnist_autoencoder_contenders_agree():
    """Caffe's MNIST autoencoder: InnerProducts through Sigmoids, Flatten, the
    SigmoidCrossEntropyLoss of the output against the input (per image: Caffe's
    BATCH_SIZE normalization when the prototxt names none) and an EuclideanLoss with
    loss_weight 0 (computed, no gradient); no label input. Biases with lr_mult 1 and
    decay_mult 0 (the losses of three steps, and the params' moves)."""
    param = nets.net_param("mnist_autoencoder", 4)
    assert list(param.layer[0].top) == ["data"]
    _check_deploy("mnist_autoencoder", 4)
    _steps_agree("mnist_autoencoder", 4)


def test_mnist_siamese_contenders_agree():
    """Caffe's siamese example: a Slice cuts each pair's 2 channels apart, the two
    towers share every param by name (the references hold one copy, read twice, so
    its gradient sums both uses, as Caffe's shared diff does), ContrastiveLoss of the
    2-d features against 0/1 similarity labels. The deploy output is one tower's feat;
    three steps' losses and the params' moves. (The top two layers' biases do not move:
    a shift of both towers' features leaves their distance as it was, so the two uses'
    gradients cancel, in every contender.)"""
    param = nets.net_param("mnist_siamese", 4)
    assert list(param.layer[0].top) == ["pair_data", "sim"]
    assert nets.shared_layers(param) == {"conv1_p": "conv1", "conv2_p": "conv2",
                                         "ip1_p": "ip1", "ip2_p": "ip2", "feat_p": "feat"}
    _check_deploy("mnist_siamese", 4)
    _steps_agree("mnist_siamese", 4)


def test_contrastive_distance_has_caffes_derivative():
    """The references' ContrastiveLoss differentiates to Caffe's backward, whose
    divisor is the distance plus 1e-4 (at a distance of 1e-4, half the formula's)."""
    grad = jax.grad(lambda d: nets.contrastive_distance(d, jnp.sqrt, jax.lax.stop_gradient))
    for d_sq in (1e-8, 0.25, 4.0):
        dist = np.sqrt(d_sq)
        assert float(nets.contrastive_distance(jnp.float32(d_sq), jnp.sqrt,
                                               jax.lax.stop_gradient)) == pytest.approx(dist)
        assert float(grad(jnp.float32(d_sq))) == pytest.approx(1 / (2 * (dist + 1e-4)),
                                                               rel=1e-5)


def test_squeezenet_contenders_agree():
    """SqueezeNet v1.1: Fire modules (a 1x1 squeeze read by a 1x1 and a padded 3x3
    expand, a Concat of the two), MAX pools whose last window overhangs (Caffe's ceil),
    global AVE pooling. The deploy outputs only: Dropout draws its masks from each
    contender's own random stream."""
    _check_deploy("squeezenet", 2)


@pytest.mark.slow
def test_densenet121_contenders_agree():
    """DenseNet-121: 58 Concats, each joining a layer's 32 new channels to its block's
    running map, BatchNorm (batch statistics) and Scale before every convolution, MAX
    pooling with round_mode FLOOR (the references' too), global AVE pooling into a
    1x1-convolution classifier. Slow: three compiles of a 550-layer step."""
    _check("densenet121", 1)


@pytest.mark.slow
def test_se_bn_inception_contenders_agree():
    """SE-BN-Inception: BatchNorm (batch statistics) and Scale after every convolution,
    AVE and MAX pool branches, and the squeeze-and-excitation blocks' Scale with two
    bottoms (axis 0: each image's channels times their Sigmoid weights, reshaped to
    (N, C)). The deploy outputs and the first training loss. Not the steps after it:
    with BatchNorm over two images, float32 gradients of this net are ill-conditioned
    (pure JAX's own float32 gradients differ from its float64 ones by up to 16% of a
    layer's largest element, jcaffe's by up to 9%); test_model_zoo checks an SE block's
    backward in float64."""
    _check("se_bn_inception", 2)


@pytest.mark.slow
def test_inception_v3_contenders_agree(monkeypatch):
    """Inception-v3: its 7x7s factored into 1x7 and 7x1 convolutions (kernel_h/kernel_w,
    pad_h/pad_w, which the references read as Caffe does), 1x3 and 3x1 side by side on
    one bottom, BatchNorm (batch statistics) and Scale after every convolution, AVE
    pools with pad 1 (Caffe's divisor counts the padding), MAX pools. The deploy outputs
    and the first training loss with its Dropout's ratio set to 0 (each contender draws
    its masks from its own random stream). Slow: 90 s, three compiles at 299x299."""
    _without_dropout(monkeypatch)
    _check("inception_v3", 2)


def _without_dropout(monkeypatch):
    """The benchmark nets with every Dropout's ratio set to 0, so the contenders, each
    drawing masks from its own random stream, compute the same losses."""
    net_param = nets.net_param

    def without_dropout(*args, **kwargs):
        param = net_param(*args, **kwargs)
        for layer in param.layer:
            if layer.type == "Dropout":
                layer.dropout_param.dropout_ratio = 0
        return param
    monkeypatch.setattr(nets, "net_param", without_dropout)


@pytest.mark.slow
def test_inception_resnet_v2_contenders_agree(monkeypatch):
    """Inception-ResNet-v2: 40 residual blocks whose branches, joined and taken back by
    a 1x1 with bias, are added to the trunk by an Eltwise SUM with coeff (0.17, 0.1,
    0.2; the references scale the branch as Caffe does), BatchNorm (batch statistics)
    and Scale after every other convolution. The deploy outputs and the first training
    loss, Dropout's ratio set to 0. Slow: three compiles of a 989-layer net."""
    _without_dropout(monkeypatch)
    _check("inception_resnet_v2", 2)


@pytest.mark.slow
def test_inception_v4_contenders_agree(monkeypatch):
    """Inception-v4: its stem's joins of a MAX pool and a stride-2 convolution (the pool
    first in one Concat, last in the other), 1x7 and 7x1 convolutions, 1x3 and 3x1 side
    by side, BatchNorm (batch statistics) and Scale after each of its 149 convolutions.
    The deploy outputs and the first training loss, Dropout's ratio set to 0. Slow:
    three compiles at 299x299."""
    _without_dropout(monkeypatch)
    _check("inception_v4", 2)


@pytest.mark.slow
def test_xception_contenders_agree():
    """Xception: 34 depthwise 3x3s (group = channels, up to 1536: jcaffe's shifted
    slices against the references' grouped convolutions), stride-2 MAX pools whose last
    windows overhang (Caffe's ceil, which the references reproduce), ReLUs writing new
    tops before each block so its sum reads the input as it was. Slow: three compiles
    at 299x299."""
    _check("xception", 2)


def test_nin_contenders_agree():
    """Network in Network: 11x11 stride 4, 5x5 and 3x3 convolutions each followed by two
    1x1 ones on the same map, MAX pools (pool0's last window overhanging: Caffe's ceil),
    a ReLU on the class scores before the 6x6 AVE pool. The deploy outputs only
    (Dropout)."""
    _check_deploy("nin", 2)


@pytest.mark.slow
def test_vgg16_contenders_agree():
    """VGG-16 (Caffe's VGG_ILSVRC_16_layers): thirteen 3x3 convolutions, conv1_1 on the
    image's 3 channels (at batch 1 on GEMM; batched, the rows-as-channels form), five
    MAX pools, three InnerProducts. The deploy outputs only: Dropout draws its masks
    from each contender's own random stream. Slow: 15 GFLOP an image, three compiles."""
    _check_deploy("vgg16", 1)


@pytest.mark.slow
def test_mobilenet_contenders_agree():
    """Depthwise convolutions (group = channels): jcaffe's shifted slices against the
    references' grouped convolutions. Slow (the suite's slowest test, 40 s on 2 cores):
    the default suite checks depthwise convolutions against lax (test_conv_formulations)
    and MobileNet's blocks and whole net (test_channels_last, test_model_zoo)."""
    _check("mobilenet", 2)


@pytest.mark.slow
def test_mobilenet_v2_contenders_agree():
    """MobileNet v2: depthwise 3x3s between 1x1s, the linear 1x1s without ReLU summed with
    their blocks' inputs (BatchNorm with batch statistics in training, the running
    averages in TEST)."""
    _check("mobilenet_v2", 2)


@pytest.mark.slow
def test_resnext50_contenders_agree():
    """Grouped 3x3 convolutions, 32 groups of 4-32 channels: jcaffe's blocks of groups
    against the references' grouped convolutions."""
    _check("resnext50", 2)


@pytest.mark.slow
def test_dpn92_contenders_agree():
    """DPN-92: Slices cutting each block's last 1x1 between an Eltwise residual path and
    a Concat dense path, 3x3 convolutions in 32 groups, BatchNorm (batch statistics)
    and Scale before every convolution, a MAX pool rounded down (FLOOR). The deploy
    outputs and the first training loss."""
    _check("dpn92", 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn32s", "fcn8s"])
def test_fcn_contenders_agree(name):
    """Deconvolution (FCN's fixed upsampling, lr_mult 0: no reference differentiates or
    updates it), Crop, Eltwise and the per-pixel SoftmaxWithLoss (normalize: false)."""
    _check(name, 1)


@pytest.mark.slow
def test_openpose_contenders_agree():
    """OpenPose: a label cut by a Slice into masks and targets, Eltwise PROD, six stages'
    Concats of both branches and the trunk's features, 7x7 convolutions, twelve
    EuclideanLosses. The deploy outputs and the first training loss. (Not the params'
    moves, as _steps_agree holds them: with losses of 363k, 31 biases' first moves,
    sums of 2116 large diffs that mostly cancel, differ by up to 0.8% of their largest
    between the contenders in float32, and after a second step some weights' too; the
    same under either weight-gradient form. The 7x7s' weight gradient at one image is
    held to jax.vjp in float64 in test_conv_formulations.)"""
    _check("openpose", 1)


@pytest.mark.slow
def test_deeplab_largefov_contenders_agree():
    """DeepLab-LargeFOV: 3x3 convolutions dilated by 2 and by 12 (fc6: on a 41x41 map,
    most of its outer taps read padding), 3x3 MAX pools of stride 2 and 1 padded by 1
    (Caffe's ceil), an AVE pool of stride 1 whose divisor counts the padding. The
    deploy outputs only: Dropout draws its masks from each contender's own random
    stream."""
    _check_deploy("deeplab_largefov", 1)


def test_mtcnn_pnet_contenders_agree():
    """MTCNN's P-Net: PReLUs after 3x3 convolutions, two 1x1 heads on a 1x1 map, a
    SoftmaxWithLoss and an EuclideanLoss weighted 0.5, trained on crops (three steps:
    losses and every param's move); deployed on a 384x512 image (187x251 windows)."""
    _steps_agree("mtcnn_pnet", 8)
    _check_deploy("mtcnn_pnet_image", 1)


def test_mtcnn_onet_contenders_agree():
    """MTCNN's O-Net: PReLUs with a slope per channel after convolutions and after an
    InnerProduct, MAX pools rounding up. The deploy outputs only: Dropout draws its
    masks from each contender's own random stream."""
    _check_deploy("mtcnn_onet", 4)


def test_srcnn_contenders_agree():
    """SRCNN: unpadded 9x9, 1x1 and 5x5 convolutions to one output channel, biases and
    conv3 at lr_mult 0.1, an EuclideanLoss; trained on sub-images (three steps: losses
    and every param's move); deployed on a 512x512 image."""
    _steps_agree("srcnn", 8)
    _check_deploy("srcnn_image", 1)


def test_fsrcnn_contenders_agree():
    """FSRCNN: PReLUs after thin convolutions (12 channels), a 9x9 Deconvolution of
    stride 3 to one channel; trained on sub-images (three steps: losses and every
    param's move); deployed on a 260x260 image (768x768 out)."""
    _steps_agree("fsrcnn", 8)
    _check_deploy("fsrcnn_image", 1)


@pytest.mark.slow
def test_unet_contenders_agree():
    """U-Net: unpadded 3x3s, 2x2 Deconvolutions of stride 2 with biases and ReLUs, Crops
    at the centre by offset, Concats of the up-convolution and the cropped skip. The
    deploy outputs only (Dropout's masks are each contender's own)."""
    _check_deploy("unet", 1)


@pytest.mark.slow
def test_resnet18_contenders_agree():
    """ResNet-18: basic blocks, identity shortcuts in stage 2 and 1x1 projections where
    a stage halves the map."""
    _check("resnet18", 2)


@pytest.mark.slow
def test_colorization_contenders_agree():
    """Colorization: stride-2 3x3s, BatchNorm out of place with no Scale (batch
    statistics in training), 3x3s dilated by 2 on 512 channels, a learned 4x4
    Deconvolution of stride 2 and pad 1, SoftmaxWithLoss over 313 bins per pixel. The
    deploy outputs on a 224x224 image and on a crop, and the first step's loss. Not the
    moves: in float32 its gradients are mostly rounding in places, at the references'
    Gaussian weights (nets.init_params). Params perturbed by 1e-7 of themselves change
    the pure JAX step's first move of conv6_2 by 29% of its largest, and jcaffe's moves
    differ from pure JAX's as much. The pattern's backward is checked in float64
    (test_model_zoo's norm_upconv_bins)."""
    _check_deploy("colorization_image", 1)
    _check("colorization", 1)


@pytest.mark.slow
def test_resnet56_cifar_contenders_agree():
    """ResNet-56 for CIFAR-10: 27 basic blocks, BatchNorm's batch statistics in training,
    a ReLU after each sum, 1x1 projections of stride 2, global average pooling; its
    Softmax and Accuracy beside the loss (the references leave the Accuracy out). The
    deploy outputs, and one step's loss and moves against the pure JAX step's: not
    three, as for the other nets. Its loss falls from 6.6 to 1.8 in three steps at the
    benchmarks' rate, and the steps after the first are chaotic: params perturbed by
    1e-7 of themselves (float32's rounding) change the pure JAX step's second moves by
    up to 7% of a layer's largest (its first moves by 0.08%) and its third loss by 1.5%
    (jcaffe's first moves are within 0.02% of the pure JAX step's)."""
    _check_deploy("resnet56_cifar", 4)
    _steps_agree("resnet56_cifar", 4, steps=1)


@pytest.mark.slow
def test_resnet34_contenders_agree():
    """ResNet-34: ResNet-18's basic blocks 3, 4, 6 and 3 to a stage."""
    _check("resnet34", 2)


@pytest.mark.slow
def test_resnet50_contenders_agree():
    """BatchNorm (batch statistics in training, the running averages in TEST), Scale,
    Eltwise: the layers the other nets do not have."""
    _check("resnet50", 2)


@pytest.mark.slow
def test_resnet101_contenders_agree():
    """ResNet-101: stages of 3, 4, 23 and 3 bottlenecks, conv1 without a bias. The
    deploy outputs and the first training loss after 104 BatchNorms."""
    _check("resnet101", 2)


@pytest.mark.slow
def test_resnet101_v2_contenders_agree():
    """Pre-activation ResNet-101: BatchNorm out of place into each block's own top, the
    block's input split between it and the sum."""
    _check("resnet101_v2", 2)


@pytest.mark.slow
def test_wrn50_2_contenders_agree():
    """WRN-50-2: pool1 padded by 1 with round_mode FLOOR (BVLC's field for the ports'
    ``ceil_mode: false``), 3x3s of up to 1024 channels."""
    _check("wrn50_2", 2)


@pytest.mark.slow
def test_resnet152_contenders_agree():
    """ResNet-152: ResNet-50's bottleneck fifty times over (stages of 3, 8, 36 and 3),
    conv1 without a bias. The deploy outputs and the first training loss after 155
    BatchNorms. Slow: three compiles of a 672-layer net."""
    _check("resnet152", 2)


def test_lrcn_contenders_agree():
    """The sequence net: Embed, two LSTMs (Caffe's gates i, f, o, g, and cont; the second
    with a static input), an InnerProduct and SoftmaxWithLoss along axis 2 that ignores
    the padding. jcaffe's scans against the pure JAX scan and torch.nn.LSTM (its gates
    reordered, the static input's weight joined to W_ih); the feeds' labels hold padding."""
    param = nets.net_param("lrcn", 2)
    label = nets.feeds(param)["target_sentence"]
    assert (label == -1).any() and (label >= 0).any()
    _check("lrcn", 2)


def test_char_rnn_contenders_agree():
    """char-rnn's defaults: 50 timesteps of 50 streams (the streams are axis 1 of the
    (T, N) inputs: at batch 4 the sequences keep their 50 steps), an Embed, two LSTMs
    without a static input, a classifier at each timestep. The deploy outputs (jcaffe's
    scans, the pure JAX scan, torch.nn.LSTM), and three steps' losses and moves against
    the pure JAX step's."""
    param = nets.net_param("char_rnn", 4)
    assert [list(s.dim) for s in param.layer[0].input_param.shape] == [[50, 4]] * 3
    _check_deploy("char_rnn", 4)
    _steps_agree("char_rnn", 4)


def test_lightcnn9_contenders_agree(monkeypatch):
    """Light CNN-9: Max-Feature-Maps (Slice of the channels, Eltwise MAX) after every
    product, 128x128 grey faces, a 10,575-way classifier. The deploy outputs, and the
    first step's loss and moves against the pure JAX step's with its Dropout's ratio
    set to 0 (each contender draws its own mask). The moves within 1% of each param's
    largest: each MAX sends an element's diff to the half that won, and in float32 near
    ties flip with rounding; params perturbed by 1e-7 of themselves move pure JAX's own
    conv1, conv2a and conv2 moves by 0.1-0.3% of their largest (measured), the later
    layers' by 1e-6."""
    _without_dropout(monkeypatch)
    _check_deploy("lightcnn9", 2)
    _steps_agree("lightcnn9", 2, steps=1, moves_rtol=1e-2)


def test_ptb_lstm_contenders_agree(monkeypatch):
    """Zaremba et al.'s medium model at 3 streams (35 timesteps each): an Embed of
    10,000 words, two LSTMs of 650, a 10,000-way classifier at each timestep. The deploy
    outputs, and three steps' losses and moves against the pure JAX step's with its
    Dropouts' ratio set to 0 (each contender draws its own masks)."""
    _without_dropout(monkeypatch)
    param = nets.net_param("ptb_lstm", 3)
    assert [list(s.dim) for s in param.layer[0].input_param.shape] == [[35, 3]] * 3
    _check_deploy("ptb_lstm", 3)
    _steps_agree("ptb_lstm", 3)


def test_lrcn_gflop_counts_every_product():
    """run_all's GFLOP of LRCN's forward: per timestep and stream each LSTM's W_xc x_t and
    W_hc h_{t-1} (4000 x 1000 each), the classifier (8801 x 1000); the static input's
    W_xc_static x_static (4000 x 1000) once per stream; Embed none."""
    import run_all
    T, N = 20, 100
    lstm = 2 * T * N * (4000 * 1000 + 4000 * 1000)
    expected = 2 * lstm + 2 * N * 4000 * 1000 + 2 * T * N * 8801 * 1000
    assert run_all.forward_gflop("lrcn", False) == pytest.approx(expected / 1e9, rel=1e-12)


def test_only_naming_no_contender_lists_the_names():
    """--only with a name that matches no contender stops with the names there are (it
    once measured nothing and died dividing by zero)."""
    import subprocess
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench_train.py"), "--net",
                           "lenet", "--only", "jcaffe,jcaffe Solver.step", "--no-memory"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    named, listed = proc.stderr.split("; the contenders are: ")
    assert named.endswith("no contender named 'jcaffe'")     # (the known name is not listed)
    assert "'jcaffe Solver.step'" in listed


def test_caffenet_contenders_agree():
    """Grouped maps (group 2), LRN, overlapping MAX pooling: jcaffe's groups split into
    XLA's convolutions and joined channels-last, its LRNs and pools between them
    channels-last, against the references' grouped convolutions in their own orders.
    (The deploy outputs only: the training nets' Dropout draws its masks from each
    contender's own random stream, so their first losses differ, by 2e-4 here.)"""
    _check_deploy("caffenet", 2)


@pytest.mark.slow
def test_alexnet_contenders_agree():
    """AlexNet: CaffeNet's layers with each LRN before its pool (the deploy outputs only,
    as CaffeNet's: Dropout's masks differ between the contenders)."""
    _check_deploy("alexnet", 2)


def test_adam_contenders_agree():
    """bench_train.py --solver Adam: jcaffe's AdamSolver and the pure JAX reference's
    Adam (Caffe's update order, bias correction by the iteration, each param's lr_mult
    and decay_mult: LeNet's biases have 2 and 0) move LeNet's params alike: the losses
    of the first three steps agree (the first is the params' own; the next two follow
    the updates)."""
    import bench_train
    _steps_agree("lenet", 4, "Adam")
    assert set(bench_train.contenders("lenet", 4, solver_type="Adam")) >= {
        "jcaffe Solver.step", "pure JAX (jit value_and_grad)"}


def test_volume_contenders_agree():
    """bench_conv3d's 3-d encoder-decoder at a small volume: the losses of three steps
    (the first the initial params', the next two after each contender's updates) agree
    between jcaffe (its 3-d maps folded and unfolded), pure JAX and PyTorch."""
    import argparse
    import bench_conv3d
    setups = bench_conv3d.contenders(argparse.Namespace(batch=2, size="4,4,8"))
    losses = {}
    for label, setup in setups.items():
        run = setup()
        losses[label] = [float(run()) for _ in range(3)]
    first, *others = losses
    assert losses[first][0] > 0 and losses[first][2] != losses[first][0]
    for label in others:
        np.testing.assert_allclose(losses[label], losses[first], rtol=2e-4,
                                   err_msg="%s vs %s" % (label, first))
