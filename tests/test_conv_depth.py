"""3-d convolutions as 2-d ones (jcaffe.layers.conv_depth): on CPU a 3-d map's depth taps
are folded into the channels and the 2-d rules pick its formulation. The fold is exact:
checked here against XLA's own 3-d convolution (the map unfolded) and against jax.vjp,
forward and backward, in float64, for convolutions and deconvolutions.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcaffe.layers import conv_depth
from jcaffe.layers.vision import Convolution
from layer_testing import check_backward, make_layer, params_of
from test_conv_formulations import _same_maps

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


@pytest.mark.parametrize("k,stride,pad,dilation,depth", [
    (3, 1, 1, 1, 5), (2, 2, 0, 1, 6), (3, 2, 1, 2, 9), (1, 3, 0, 1, 7), (4, 3, 2, 1, 8)])
def test_unfold_is_the_adjoint_of_fold(x64, rng, k, stride, pad, dilation, depth):
    """<fold(x), g> = <x, unfold(g)>: the data gradient's unfold adds each tap's planes
    back where the fold read them, and drops the padding."""
    out = (depth + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    x = jnp.asarray(rng.standard_normal((2, 3, depth, 4, 5)))
    folded = conv_depth.fold(x, k, stride, pad, dilation, out)
    assert folded.shape == (2 * out, 3 * k, 4, 5)
    g = jnp.asarray(rng.standard_normal(folded.shape))
    back = conv_depth.unfold(g, 2, k, stride, pad, dilation, depth)
    assert back.shape == x.shape
    np.testing.assert_allclose(float(jnp.vdot(folded, g)), float(jnp.vdot(x, back)),
                               rtol=1e-12)


# (layer type, convolution_param, bottom shape): stride, padding and dilation along the
# depth, anisotropic kernels, groups, a depth kernel of 1, V-Net's 2x2x2 down- and
# up-convolutions of stride 2, a deconvolution whose kernel overlaps its neighbours'
CASES = [
    ("Convolution", "num_output: 4 kernel_size: 3 pad: 1", (2, 3, 5, 6, 4)),
    ("Convolution", "num_output: 4 kernel_size: 3 kernel_size: 2 kernel_size: 3 stride: 2 "
     "pad: 1 dilation: 2 dilation: 1 dilation: 1", (1, 2, 9, 5, 6)),
    ("Convolution", "num_output: 6 kernel_size: 3 pad: 1 group: 2", (2, 4, 4, 5, 5)),
    ("Convolution", "num_output: 3 kernel_size: 1 kernel_size: 3 kernel_size: 3 pad: 1",
     (1, 2, 3, 5, 4)),
    ("Convolution", "num_output: 4 kernel_size: 2 stride: 2", (1, 3, 6, 4, 8)),
    ("Deconvolution", "num_output: 3 kernel_size: 2 stride: 2", (1, 4, 3, 2, 4)),
    ("Deconvolution", "num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2", (2, 2, 3, 4, 3)),
]


@pytest.mark.parametrize("typ,param,shape", CASES)
def test_folded_maps_are_xlas_3d_convolution(x64, rng, monkeypatch, typ, param, shape):
    """The forward, data gradient, weight gradient and bias gradient with the depth
    folded agree with XLA's 3-d convolution (FOLD_DEPTH off), and the folded backward
    with jax.vjp of the folded forward."""
    layer = make_layer('type: "%s" convolution_param { %s %s }' % (typ, param, FILLERS),
                       [shape])
    x = jnp.asarray(rng.standard_normal(shape))
    channels_per_group = params_of(layer)[0].shape[1]

    def fold(on):
        monkeypatch.setattr(Convolution, "FOLD_DEPTH", on)
        assert layer._folds_depth(channels_per_group) == (on and jax.default_backend() == "cpu")
    _same_maps(layer, x, fold)
    check_backward(layer, [np.asarray(x)])


def test_fold_is_taken_on_cpu_and_not_for_depthwise_maps(monkeypatch):
    """On CPU each of a 3-d map's three computations folds its input; a depthwise 3-d map
    keeps conv_depthwise (any number of spatial axes), and a 2-d map is untouched."""
    cpu = jax.default_backend() == "cpu"
    calls = []
    fold = conv_depth.fold
    monkeypatch.setattr(conv_depth, "fold", lambda *a: calls.append(a[1:]) or fold(*a))
    layer = make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
                       'pad: 1 %s }' % FILLERS, [(1, 2, 4, 5, 6)])
    w, b = params_of(layer)
    x = jnp.zeros((1, 2, 4, 5, 6), jnp.float32)
    (y,), _ = layer.forward([w, b], [x], None)
    layer.backward([w, b], [x], [y], None, [y], (True,))
    assert calls == ([(3, 1, 1, 1, 4)] * 2 if cpu else [])     # forward, weight gradient
    depthwise = make_layer('type: "Convolution" convolution_param { num_output: 4 '
                           'kernel_size: 3 pad: 1 group: 4 %s }' % FILLERS, [(1, 4, 4, 5, 6)])
    assert not depthwise._folds_depth(1)
    flat = make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
                      '%s }' % FILLERS, [(1, 2, 5, 6)])
    assert not flat._folds_depth(2)


VOLUME = """
name: "volume"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 1 dim: 2 dim: 4 dim: 6 dim: 6 }
                      shape { dim: 1 dim: 1 dim: 4 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "msra" }
                            bias_filler { type: "gaussian" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "down" type: "Convolution" bottom: "conv1" top: "down"
        convolution_param { num_output: 4 kernel_size: 2 stride: 2 weight_filler { type: "msra" } } }
layer { name: "relu2" type: "ReLU" bottom: "down" top: "down" }
layer { name: "up" type: "Deconvolution" bottom: "down" top: "up"
        convolution_param { num_output: 3 kernel_size: 2 stride: 2 weight_filler { type: "msra" }
                            bias_filler { type: "gaussian" } } }
layer { name: "sum" type: "Eltwise" bottom: "up" bottom: "conv1" top: "sum" }
layer { name: "score" type: "Convolution" bottom: "sum" top: "score"
        convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "msra" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def test_volume_net_backward_is_jax_grads_in_float64(tmp_path):
    """A small 3-d encoder-decoder (bench_conv3d's pattern, V-Net's kind): a 3x3x3, a
    2x2x2 down-convolution of stride 2, a 2x2x2 Deconvolution of stride 2 back, a
    residual Eltwise, a 1x1x1 to a per-voxel SoftmaxWithLoss. The whole net's backward,
    in float64, against jax.grad of its composed forward and finite differences
    (gradcheck.check_net)."""
    import gradcheck
    path = tmp_path / "volume.prototxt"
    path.write_text(VOLUME)
    report = gradcheck.check_net(str(path), samples=6).assert_ok()
    names = {c.name for c in report.checks}
    assert {"param conv1[0]", "param down[0]", "param up[0]", "param up[1]",
            "param score[0]"} <= names, names
