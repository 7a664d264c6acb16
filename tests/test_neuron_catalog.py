"""The neuron catalog (PReLU, ELU, AbsVal, Power, Exp, Log, BNLL, Threshold, Swish, Clip) and
Scale/Bias: forward vs numpy versions of Caffe's formulas, backward vs jax.vjp, defaults,
param shapes, Caffe's special cases and errors, and in-place use inside a Net."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import text_format

import jcaffe
from jcaffe.errors import BackwardError, LayerSetupError
from jcaffe.proto import caffe_pb2
from layer_testing import check_backward, forward, make_layer

F = lambda v: float(np.float32(v))   # noqa: E731  (proto floats are float32)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


NEURONS = [
    ('type: "ELU"', lambda x: np.where(x > 0, x, np.exp(x) - 1)),
    ('type: "ELU" elu_param { alpha: 0.3 }', lambda x: np.where(x > 0, x, F(0.3) * (np.exp(x) - 1))),
    ('type: "AbsVal"', np.abs),
    ('type: "Power"', lambda x: x),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', lambda x: (1 + 0.5 * x) ** 2),
    ('type: "Power" power_param { power: 3 scale: -2 }', lambda x: (-2 * x) ** 3),
    ('type: "Power" power_param { power: 0.5 scale: 0.5 shift: 6 }', lambda x: np.sqrt(6 + 0.5 * x)),
    ('type: "Power" power_param { power: -1 shift: 6 }', lambda x: 1 / (6 + x)),
    ('type: "Exp"', np.exp),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', lambda x: 2.0 ** (1 + 0.5 * x)),
    ('type: "Log" log_param { shift: 6 }', lambda x: np.log(6 + x)),
    ('type: "Log" log_param { base: 10 scale: 0.5 shift: 6 }', lambda x: np.log10(6 + 0.5 * x)),
    ('type: "BNLL"', lambda x: np.where(x > 0, x + np.log1p(np.exp(-x)), np.log1p(np.exp(x)))),
    ('type: "Swish"', lambda x: x * _sigmoid(x)),
    ('type: "Swish" swish_param { beta: 2 }', lambda x: x * _sigmoid(2 * x)),
    ('type: "Clip" clip_param { min: -0.5 max: 0.75 }', lambda x: np.clip(x, -0.5, 0.75)),
    ('type: "PReLU"', lambda x: np.where(x > 0, x, 0.25 * x)),
    ('type: "PReLU" prelu_param { channel_shared: true }', lambda x: np.where(x > 0, x, 0.25 * x)),
]


def _away_from_kinks(shape, rng):
    """Normal values kept away from 0 and from Clip's bounds."""
    x = rng.standard_normal(shape)
    for k in (0.0, -0.5, 0.75):
        x = np.where(np.abs(x - k) < 0.05, k + 0.3, x)
    return x


@pytest.mark.parametrize("snippet,reference", NEURONS)
def test_forward_matches_caffe_formula_and_backward_matches_vjp(x64, rng, snippet, reference):
    x = _away_from_kinks((2, 3, 4, 5), rng)
    layer = make_layer(snippet, [x.shape])
    assert layer.reshape([x.shape]) == [x.shape]
    tops, _ = forward(layer, [x])
    np.testing.assert_allclose(np.asarray(tops[0]), reference(x), rtol=1e-12, atol=1e-14)
    check_backward(layer, [x])


@pytest.mark.parametrize("snippet,reference", NEURONS)
def test_float32_keeps_dtype(snippet, reference):
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    layer = make_layer(snippet, [x.shape], dtype=np.float32)
    tops, _ = forward(layer, [x])
    assert tops[0].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(tops[0]), reference(x.astype(np.float64)), rtol=2e-5,
                               atol=2e-6)
    params = [jnp.asarray(b.data) for b in layer.blobs]
    saved = layer.forward(params, [jnp.asarray(x)], None)[1]
    (dx,), pdiffs = layer.backward(params, [jnp.asarray(x)], tops, saved, [jnp.ones_like(tops[0])],
                                   (True,))
    assert dx.dtype == jnp.float32 and all(d.dtype == jnp.float32 for d in pdiffs)


# ---------------------------------------------------------------------------
# PReLU

def test_prelu_slopes_default_and_shapes():
    layer = make_layer('type: "PReLU"', [(2, 5, 3)])
    assert [b.shape for b in layer.blobs] == [(5,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)
    shared = make_layer('type: "PReLU" prelu_param { channel_shared: true '
                        'filler { type: "constant" value: 0.1 } }', [(2, 5, 3)])
    assert shared.blobs[0].shape == () and shared.blobs[0].count == 1
    np.testing.assert_allclose(shared.blobs[0].data, F(0.1))


@pytest.mark.parametrize("shared", ["false", "true"])
def test_prelu_slope_diff_and_per_channel_forward(x64, rng, shared):
    x = _away_from_kinks((3, 4, 2, 2), rng)
    layer = make_layer('type: "PReLU" prelu_param { channel_shared: %s filler { type: "gaussian" } }'
                       % shared, [x.shape])
    a = np.asarray(layer.blobs[0].data)
    tops, _ = forward(layer, [x])
    a_b = a if shared == "true" else a.reshape(1, 4, 1, 1)
    np.testing.assert_allclose(np.asarray(tops[0]), np.where(x > 0, x, a_b * x), rtol=1e-12)
    dy = rng.standard_normal(x.shape)
    (dx,), (da,) = layer.backward([jnp.asarray(a)], [jnp.asarray(x)], tops, None,
                                  [jnp.asarray(dy)], (True,))
    g = dy * x * (x <= 0)
    np.testing.assert_allclose(np.asarray(da), g.sum() if shared == "true" else g.sum(axis=(0, 2, 3)),
                               rtol=1e-12)
    np.testing.assert_allclose(np.asarray(dx), dy * np.where(x > 0, 1, a_b), rtol=1e-12)
    check_backward(layer, [x])


def test_prelu_needs_two_axes():
    with pytest.raises(LayerSetupError, match="PReLU layer 'prelu'.*>=2"):
        make_layer('type: "PReLU"', [(5,)])


def test_prelu_rejects_more_than_four_axes_as_bvlc_does():
    """BVLC's PReLU reads its channels through the legacy 4-axis accessor, which stops
    Caffe on a volume; jcaffe says so, and the way round it: a 3-axis view (Flatten
    from axis 2), which BVLC's PReLU takes, with the same slopes per channel."""
    with pytest.raises(LayerSetupError) as err:
        make_layer('type: "PReLU"', [(2, 3, 4, 5, 6)])
    text = str(err.value)
    assert "PReLU layer 'prelu': bottom 0 has 5 axes (shape 2 3 4 5 6 (720))" in text
    assert "more than 4 axes" in text and "Flatten" in text
    volume = np.random.RandomState(0).standard_normal((2, 3, 4, 5, 6))
    layer = make_layer('type: "PReLU" prelu_param { filler { type: "gaussian" } }',
                       [(2, 3, 120)])
    tops, _ = forward(layer, [volume.reshape(2, 3, 120)])
    a = np.asarray(layer.blobs[0].data).reshape(1, 3, 1, 1, 1)
    np.testing.assert_allclose(np.asarray(tops[0]).reshape(volume.shape),
                               np.where(volume > 0, volume, a * volume), rtol=1e-6)


# ---------------------------------------------------------------------------
# Power, Exp, Log special cases and errors

@pytest.mark.parametrize("snippet,value", [
    ('power_param { power: 0 scale: 3 shift: 2 }', 1.0),      # power 0: ones
    ('power_param { power: 3 scale: 0 shift: 2 }', 8.0),      # scale 0: shift^power
])
def test_power_constant_cases_have_zero_diff(x64, rng, snippet, value):
    x = rng.standard_normal((3, 4))
    layer = make_layer('type: "Power" ' + snippet, [x.shape])
    tops, saved = forward(layer, [x])
    np.testing.assert_array_equal(np.asarray(tops[0]), value)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], tops, saved, [jnp.ones(x.shape)], (True,))
    np.testing.assert_array_equal(np.asarray(dx), 0.0)


def test_power_one_is_affine_with_constant_diff(x64, rng):
    x = rng.standard_normal((3, 4))
    layer = make_layer('type: "Power" power_param { scale: -1.5 shift: 2 }', [x.shape])
    tops, saved = forward(layer, [x])
    np.testing.assert_allclose(np.asarray(tops[0]), -1.5 * x + 2)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], tops, saved, [jnp.full(x.shape, 2.0)], (True,))
    np.testing.assert_allclose(np.asarray(dx), -3.0)


def test_power_diff_is_exact_where_the_base_is_zero(x64):
    # Caffe divides y by (shift + scale x) and gets 0/0 there; the derivative is 0.
    layer = make_layer('type: "Power" power_param { power: 3 }', [(3,)])
    x = np.array([0.0, 1.0, -2.0])
    tops, saved = forward(layer, [x])
    (dx,), _ = layer.backward([], [jnp.asarray(x)], tops, saved, [jnp.ones(3)], (True,))
    np.testing.assert_allclose(np.asarray(dx), [0.0, 3.0, 12.0])


@pytest.mark.parametrize("snippet,match", [
    ('type: "Exp" exp_param { base: -2 }', "base must be strictly positive"),
    ('type: "Exp" exp_param { base: 0 }', "base must be strictly positive"),
    ('type: "Log" log_param { base: -3 }', "base must be strictly positive"),
    ('type: "Log" log_param { base: 1 }', "1/log"),
])
def test_exp_log_bad_base(snippet, match):
    with pytest.raises(LayerSetupError, match=match):
        make_layer(snippet, [(2, 3)])


def test_exp_base_minus_one_means_e_and_shift_scales_outside(x64, rng):
    x = rng.standard_normal((4,))
    layer = make_layer('type: "Exp" exp_param { shift: 1 scale: 2 }', [x.shape])
    np.testing.assert_allclose(np.asarray(forward(layer, [x])[0][0]), np.e * np.exp(2 * x), rtol=1e-12)


def test_clip_min_above_max_gives_min_like_caffe(x64):
    layer = make_layer('type: "Clip" clip_param { min: 1 max: -1 }', [(3,)])
    np.testing.assert_array_equal(np.asarray(forward(layer, [np.array([-2.0, 0.0, 2.0])])[0][0]), 1.0)


def test_clip_diff_passes_inside_the_closed_range(x64):
    """Caffe's mask min <= x <= max: bounds included, NaN and infinities outside; with
    min > max nothing passes, not even x == min (where the top equals the bottom)."""
    for param, x, expected in [
            ("min: -1 max: 1", [-2.0, -1.0, 0.0, 1.0, 2.0, np.nan, -np.inf, np.inf],
             [0, 1, 1, 1, 0, 0, 0, 0]),
            ("min: -1 max: inf", [-2.0, -1.0, 3.0, np.inf, np.nan], [0, 1, 1, 1, 0]),
            ("min: 1 max: -1", [1.0, -1.0, 0.0], [0, 0, 0])]:
        x = np.array(x)
        layer = make_layer('type: "Clip" clip_param { %s }' % param, [x.shape])
        tops, saved = forward(layer, [x])
        (dx,), _ = jax.jit(lambda x, t, s: layer.backward([], [x], t, s, [jnp.ones(len(x))],
                                                          (True,)))(jnp.asarray(x), tops, saved)
        np.testing.assert_array_equal(np.asarray(dx), expected, err_msg=param)


def test_absval_refuses_in_place_like_caffe():
    with pytest.raises(LayerSetupError, match="AbsVal layer 'a'.*in-place"):
        make_layer('name: "a" type: "AbsVal" bottom: "x" top: "x"', [(2, 3)])


def test_threshold_forward():
    layer = make_layer('type: "Threshold" threshold_param { threshold: 0.5 }', [(4,)])
    tops, _ = forward(layer, [np.array([0.2, 0.5, 0.6, -1.0])])
    np.testing.assert_array_equal(np.asarray(tops[0]), [0, 0, 1, 0])


# ---------------------------------------------------------------------------
# inside a Net: in-place use, Threshold's missing backward

def _net(body, n=3, c=4, phase=jcaffe.TRAIN, force_backward=False):
    text = """
    %s
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: %d dim: %d dim: 2 } } }
    layer { name: "t" type: "Input" top: "t" input_param { shape { dim: %d dim: %d dim: 2 } } }
    %s
    """ % ("force_backward: true" if force_backward else "", n, c, n, c, body)
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    return jcaffe.Net(param, phase, dtype=np.float64)


def _grads(net, x, t):
    net.blobs["x"].data[...] = x
    net.blobs["t"].data[...] = t
    net.clear_param_diffs()
    net.forward()
    net.backward()
    return {name: [b.diff.copy() for b in blobs] for name, blobs in net.params.items()}


_IN_PLACE = ['type: "PReLU" prelu_param { filler { type: "gaussian" } }', 'type: "ELU"',
             'type: "Power" power_param { power: 2 shift: 0.5 }', 'type: "Exp" exp_param { scale: 0.3 }',
             'type: "Log" log_param { shift: 6 }', 'type: "BNLL"', 'type: "Swish"',
             'type: "Clip" clip_param { min: -0.3 max: 0.4 }',
             'type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } }',
             'type: "Bias" bias_param { filler { type: "gaussian" } }']


@pytest.mark.parametrize("snippet", _IN_PLACE)
def test_in_place_gives_the_same_gradients(x64, snippet):
    """scale (a Scale) -> layer -> Scale, each in place or not: same loss and diffs, even with
    the following in-place Scale overwriting the layer's top."""
    def body(in_place):
        mid = "a" if in_place else "m"
        out = "a" if in_place else "o"
        return """
        layer { name: "a" type: "Scale" bottom: "x" top: "a" param { lr_mult: 1 }
                scale_param { filler { type: "gaussian" } } }
        layer { name: "n" %s bottom: "a" top: "%s" }
        layer { name: "s" type: "Scale" bottom: "%s" top: "%s"
                scale_param { filler { type: "gaussian" } } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "%s" bottom: "t" top: "loss" }
        """ % (snippet, mid, mid, out, out)
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 2))
    jcaffe.set_random_seed(1)
    ref = _net(body(False))
    jcaffe.set_random_seed(1)
    net = _net(body(True))
    for name in ref.params:
        for a, b in zip(ref.params[name], net.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    g_ref, g = _grads(ref, x, t), _grads(net, x, t)
    assert net.blobs["loss"].data == pytest.approx(float(ref.blobs["loss"].data), rel=1e-12)
    for name in g_ref:
        for a, b in zip(g_ref[name], g[name]):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12, err_msg=name)


def test_threshold_backward_error_only_when_a_diff_must_cross_it(x64):
    needed = """
    layer { name: "s" type: "Scale" bottom: "x" top: "s" }
    layer { name: "th" type: "Threshold" bottom: "s" top: "th" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "th" bottom: "t" top: "loss" }
    """
    net = _net(needed)
    net.forward()
    with pytest.raises(BackwardError, match="Threshold layer 'th' has no backward"):
        net.backward()
    declined = needed.replace('top: "th" }', 'top: "th" propagate_down: false }')
    net = _net(declined)
    net.forward()
    net.backward()     # nothing asks Threshold for a diff: fine
    nothing_below = """
    layer { name: "th" type: "Threshold" bottom: "x" top: "th" }
    layer { name: "s" type: "Scale" bottom: "th" top: "s" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "t" top: "loss" }
    """
    net = _net(nothing_below)
    net.blobs["x"].data[...] = 1.0
    net.forward()
    net.backward()
    assert np.any(net.params["s"][0].diff != 0)


# ---------------------------------------------------------------------------
# Scale and Bias

def test_scale_defaults_and_blob_order():
    layer = make_layer('type: "Scale"', [(2, 3, 4)])
    assert [b.shape for b in layer.blobs] == [(3,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 1.0)
    layer = make_layer('type: "Scale" scale_param { bias_term: true }', [(2, 3, 4)])
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    np.testing.assert_array_equal(layer.blobs[1].data, 0.0)
    # scale as bottom 1: only the bias is a blob (Caffe's bias_param_id_ = 0)
    layer = make_layer('type: "Scale" scale_param { bias_term: true axis: 0 }', [(2, 3, 4), (2, 3)])
    assert [b.shape for b in layer.blobs] == [(2, 3)]
    bias = make_layer('type: "Bias"', [(2, 3, 4)])
    assert [b.shape for b in bias.blobs] == [(3,)]
    np.testing.assert_array_equal(bias.blobs[0].data, 0.0)


@pytest.mark.parametrize("opts,shape", [
    ("", (3,)), ("axis: 0 num_axes: 2", (2, 3)), ("num_axes: -1", (3, 4, 5)),
    ("axis: -1", (5,)), ("num_axes: 0", ()), ("axis: 2 num_axes: 2", (4, 5)),
])
def test_scale_and_bias_param_shapes_and_forward(x64, rng, opts, shape):
    x = rng.standard_normal((2, 3, 4, 5))
    filler = 'filler { type: "gaussian" }'
    scale = make_layer('type: "Scale" scale_param { %s %s bias_term: true '
                       'bias_filler { type: "gaussian" } }' % (opts, filler), [x.shape])
    bias = make_layer('type: "Bias" bias_param { %s %s }' % (opts, filler), [x.shape])
    assert scale.blobs[0].shape == shape and bias.blobs[0].shape == shape
    axis = {"": 1, "axis: 0 num_axes: 2": 0, "num_axes: -1": 1, "axis: -1": 3, "num_axes: 0": 0,
            "axis: 2 num_axes: 2": 2}[opts]
    bshape = (1,) * axis + shape + (1,) * (4 - axis - len(shape))
    s, b = scale.blobs[0].data.reshape(bshape), scale.blobs[1].data.reshape(bshape)
    np.testing.assert_allclose(np.asarray(forward(scale, [x])[0][0]), x * s + b, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(forward(bias, [x])[0][0]),
                               x + bias.blobs[0].data.reshape(bshape), rtol=1e-12)
    check_backward(scale, [x])
    check_backward(bias, [x])


def test_scale_with_second_bottom_and_scalar(x64, rng):
    x, s = rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 4))
    layer = make_layer('type: "Scale"', [x.shape, s.shape])
    assert layer.blobs == []
    np.testing.assert_allclose(np.asarray(forward(layer, [x, s])[0][0]), x * s[None], rtol=1e-12)
    check_backward(layer, [x, s], [True, True])
    scalar = np.array(1.7)
    layer = make_layer('type: "Scale" scale_param { axis: 2 bias_term: true }', [x.shape, ()])
    assert [b.shape for b in layer.blobs] == [()]
    np.testing.assert_allclose(np.asarray(forward(layer, [x, scalar])[0][0]), 1.7 * x, rtol=1e-12)
    check_backward(layer, [x, scalar], [True, True])


@pytest.mark.parametrize("snippet,shapes,match", [
    ('type: "Scale"', [(2, 3), (4,)], r"dimension mismatch between bottom\[0\]->shape\(1\) = 3 and "
                                      r"scale->shape\(0\) = 4"),
    ('type: "Bias" bias_param { axis: 2 }', [(2, 3, 4), (4, 5)], "extends past"),
    ('type: "Scale" scale_param { num_axes: 3 }', [(2, 3, 4)], "extends past"),
    ('type: "Scale" scale_param { num_axes: -2 }', [(2, 3, 4)], "num_axes must be non-negative"),
    ('type: "Bias" bias_param { axis: 3 }', [(2, 3, 4)], "axis 3 is out of range"),
])
def test_scale_bias_shape_errors_name_the_layer(snippet, shapes, match):
    with pytest.raises(LayerSetupError, match=match) as e:
        make_layer(snippet, shapes)
    assert "layer '%s'" % snippet.split('"')[1].lower() in str(e.value)
