"""Eltwise, Reduction, ArgMax: forward vs numpy references of Caffe's formulas, shapes and
defaults, errors naming the layer, backward vs jax.vjp, in-place use and propagate_down."""
import jax.numpy as jnp
import numpy as np
import pytest

from jcaffe.errors import BackwardError, LayerSetupError
from layer_testing import check_backward, forward, make_layer
from netutil import make_net


# -- Eltwise ---------------------------------------------------------------------

def eltwise_max_reference(xs):
    """Caffe's loop: bottoms 0/1 by a > b (else b), then strictly greater wins."""
    top = np.where(xs[0] > xs[1], xs[0], xs[1])
    mask = np.where(xs[0] > xs[1], 0, 1)
    for i, x in enumerate(xs[2:], start=2):
        mask = np.where(x > top, i, mask)
        top = np.where(x > top, x, top)
    return top, mask


@pytest.mark.parametrize("k", [2, 3])
def test_eltwise_sum_default_and_coeffs(x64, rng, k):
    xs = [rng.standard_normal((2, 3, 4)) for _ in range(k)]
    layer = make_layer('type: "Eltwise"', [x.shape for x in xs])   # SUM is the default
    (y,), _ = forward(layer, xs)
    np.testing.assert_allclose(np.asarray(y), sum(xs), rtol=1e-12)
    coeffs = [1.0, -0.5, 2.0][:k]
    layer = make_layer('type: "Eltwise" eltwise_param { operation: SUM %s }'
                       % " ".join("coeff: %g" % c for c in coeffs), [x.shape for x in xs])
    (y,), _ = forward(layer, xs)
    np.testing.assert_allclose(np.asarray(y), sum(c * x for c, x in zip(coeffs, xs)), rtol=1e-12)
    bottom_diffs, _ = check_backward(layer, xs)
    np.testing.assert_allclose(np.asarray(bottom_diffs[1]) / np.asarray(bottom_diffs[0]),
                               np.full(xs[0].shape, coeffs[1]), rtol=1e-12)


@pytest.mark.parametrize("stable", ["true", "false"])
def test_eltwise_prod(x64, rng, stable):
    xs = [rng.standard_normal((3, 4)) for _ in range(3)]
    layer = make_layer('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: %s }'
                       % stable, [x.shape for x in xs])
    (y,), _ = forward(layer, xs)
    np.testing.assert_allclose(np.asarray(y), xs[0] * xs[1] * xs[2], rtol=1e-12)
    check_backward(layer, xs)


def test_eltwise_prod_stable_vs_unstable_at_zero(x64):
    """Caffe's two formulas: the product of the others (finite at 0) vs y / x_i (0/0)."""
    xs = [np.array([0.0, 2.0]), np.array([3.0, 5.0])]
    diffs = {}
    for stable in ("true", "false"):
        layer = make_layer('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: %s }'
                           % stable, [(2,), (2,)])
        tops, saved = forward(layer, xs)
        diffs[stable], _ = layer.backward([], [jnp.asarray(x) for x in xs], tops, saved,
                                          [jnp.ones(2)], (True, True))
    np.testing.assert_allclose(np.asarray(diffs["true"][0]), [3.0, 5.0])
    assert np.isnan(np.asarray(diffs["false"][0])[0])
    np.testing.assert_allclose(np.asarray(diffs["false"][0])[1], 5.0)


def test_eltwise_max_ties_and_mask(x64, rng):
    a = np.array([1.0, 2.0, 3.0, 0.0])
    b = np.array([1.0, 1.0, 4.0, 0.0])
    c = np.array([0.0, 2.0, 4.0, 0.5])
    top, mask = eltwise_max_reference([a, b, c])
    np.testing.assert_array_equal(mask, [1, 0, 1, 2])   # tie 0/1 -> 1; later ties keep earlier
    dy = np.array([10.0, 20.0, 30.0, 40.0])
    # out of place nothing is saved (the backward finds the winners again from the
    # bottoms); in place (top = bottom 0) the winners are saved, as bytes
    for text, saves in [('', False), ('bottom: "a" bottom: "b" bottom: "c" top: "a"', True)]:
        layer = make_layer('type: "Eltwise" eltwise_param { operation: MAX } ' + text,
                           [(4,)] * 3)
        tops, saved = forward(layer, [a, b, c])
        np.testing.assert_array_equal(np.asarray(tops[0]), top)
        if saves:
            assert saved.dtype == np.uint8
            np.testing.assert_array_equal(np.asarray(saved), mask)
        else:
            assert saved is None
        diffs, _ = layer.backward([], [jnp.asarray(x) for x in (a, b, c)], tops, saved,
                                  [jnp.asarray(dy)], (True, True, True))
        for i in range(3):
            np.testing.assert_array_equal(np.asarray(diffs[i]), np.where(mask == i, dy, 0))
    xs = [rng.standard_normal((2, 5)) for _ in range(3)]
    layer = make_layer('type: "Eltwise" eltwise_param { operation: MAX }', [(2, 5)] * 3)
    check_backward(layer, xs)


def test_eltwise_propagate_down_selects_bottoms(x64, rng):
    xs = [rng.standard_normal((2, 3)) for _ in range(2)]
    for op in ("SUM", "PROD", "MAX"):
        layer = make_layer('type: "Eltwise" eltwise_param { operation: %s }' % op, [(2, 3)] * 2)
        tops, saved = forward(layer, xs)
        diffs, params = layer.backward([], [jnp.asarray(x) for x in xs], tops, saved,
                                       [jnp.ones((2, 3))], (False, True))
        assert diffs[0] is None and diffs[1] is not None and params == []


@pytest.mark.parametrize("snippet,shapes,match", [
    ("", [(2, 3), (2, 4)], "all bottoms must have the same shape: bottom 0 has shape 2 3 \\(6\\), "
                           "bottom 1 has shape 2 4 \\(8\\)"),
    ("", [(2, 3), (2, 3), (3, 2)], "bottom 2 has shape 3 2"),
    ("eltwise_param { coeff: 1 }", [(2,), (2,)], "one coefficient per bottom blob"),
    ("eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [(2,), (2,)],
     "only takes coefficients for summation"),
])
def test_eltwise_errors_name_layer_and_shapes(snippet, shapes, match):
    with pytest.raises(LayerSetupError, match="Eltwise layer 'eltwise': .*" + match):
        make_layer('type: "Eltwise" ' + snippet, shapes)


def test_eltwise_needs_two_bottoms():
    with pytest.raises(LayerSetupError, match="at least 2 bottom"):
        make_layer('type: "Eltwise"', [(2,)])


@pytest.mark.parametrize("op", ["PROD", "MAX", "SUM"])
def test_eltwise_in_place_then_relu_in_place_gives_exact_gradients(tmp_path, rng, op):
    """top = bottom 0 (in place), then an in-place ReLU overwrites that blob again: the
    backward must still use the values from before (what forward saved)."""
    from gradcheck import check_net
    text = """
        force_backward: true
        layer { name: "in" type: "Input" top: "a" top: "b"
                input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
        layer { name: "ipa" type: "InnerProduct" bottom: "a" top: "pa"
                inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.7 }
                                      bias_filler { type: "gaussian" std: 0.7 } } }
        layer { name: "ipb" type: "InnerProduct" bottom: "b" top: "pb"
                inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.7 }
                                      bias_filler { type: "gaussian" std: 0.7 } } }
        layer { name: "elt" type: "Eltwise" bottom: "pa" bottom: "pb" top: "pa"
                eltwise_param { operation: %s stable_prod_grad: false } }
        layer { name: "relu" type: "ReLU" bottom: "pa" top: "pa" }
        layer { name: "loss" type: "Reduction" bottom: "pa" top: "loss" loss_weight: 1
                reduction_param { operation: SUMSQ } }
    """ % op
    path = tmp_path / "n.prototxt"
    path.write_text(text)
    report = check_net(str(path), seed=3)
    assert report.ok, report


# -- Reduction -------------------------------------------------------------------

REDUCE_REF = {
    "SUM": lambda x: x.sum(axis=1),
    "ASUM": lambda x: np.abs(x).sum(axis=1),
    "SUMSQ": lambda x: (x * x).sum(axis=1),
    "MEAN": lambda x: x.mean(axis=1),
}


@pytest.mark.parametrize("op", sorted(REDUCE_REF))
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_reduction(x64, rng, op, axis):
    shape = (2, 3, 4)
    coeff = -1.5
    layer = make_layer('type: "Reduction" reduction_param { operation: %s axis: %d coeff: %g }'
                       % (op, axis, coeff), [shape])
    a = axis % 3
    assert layer.top_shapes == (shape[:a],)
    x = rng.standard_normal(shape)
    (y,), _ = forward(layer, [x])
    expected = coeff * REDUCE_REF[op](x.reshape(int(np.prod(shape[:a])), -1)).reshape(shape[:a])
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12)
    check_backward(layer, [x])


def test_reduction_defaults_sum_all_to_a_scalar(x64, rng):
    layer = make_layer('type: "Reduction"', [(2, 3)])
    assert layer.top_shapes == ((),)
    x = rng.standard_normal((2, 3))
    (y,), _ = forward(layer, [x])
    np.testing.assert_allclose(np.asarray(y), x.sum(), rtol=1e-12)


def test_reduction_asum_gradient_is_zero_at_zero(x64):
    layer = make_layer('type: "Reduction" reduction_param { operation: ASUM }', [(3,)])
    (dx,), _ = layer.backward([], [jnp.asarray([-2.0, 0.0, 3.0])], None, None,
                              [jnp.asarray(2.0)], (True,))
    np.testing.assert_array_equal(np.asarray(dx), [-2.0, 0.0, 2.0])


def test_reduction_errors():
    with pytest.raises(LayerSetupError, match="Reduction layer 'reduction': axis 3 is out of range"):
        make_layer('type: "Reduction" reduction_param { axis: 3 }', [(2, 3)])
    with pytest.raises(LayerSetupError, match="exactly 1 bottom"):
        make_layer('type: "Reduction"', [(2,), (2,)])


def test_reduction_as_a_loss_in_a_net(tmp_path, rng):
    net = make_net(tmp_path, """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
        layer { name: "loss" type: "Reduction" bottom: "y" top: "loss" loss_weight: 0.5
                reduction_param { operation: MEAN axis: 1 } }
    """)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    net.blobs["x"].data[...] = x
    out = net.forward()
    y = x @ net.params["ip"][0].data.T + net.params["ip"][1].data
    # (atol: a mean of terms that cancel; an H200 summed them in another order, 4e-5 off
    # relative to a -5e-4 mean of terms near 1)
    np.testing.assert_allclose(out["loss"], y.mean(axis=1), rtol=1e-5,
                               atol=1e-6 * np.abs(y).max())
    net.backward()
    np.testing.assert_allclose(net.params["ip"][1].diff, np.full(2, 0.5 * 2 / 2), rtol=1e-6)


# -- ArgMax ----------------------------------------------------------------------

def argmax_reference(x, top_k, out_max_val, axis=None):
    """Caffe's partial_sort of (value, index) pairs with std::greater."""
    if axis is None:
        flat = x.reshape(x.shape[0], -1)
        idx = np.array([sorted(range(flat.shape[1]), key=lambda j: (row[j], j), reverse=True)[:top_k]
                        for row in flat])
        vals = np.take_along_axis(flat, idx, axis=1)
        num_axes = max(x.ndim, 3)
        shape = [1] * num_axes
        shape[0], shape[2] = x.shape[0], top_k
        if out_max_val:
            shape[1] = 2
            return np.stack([idx, vals], axis=1).reshape(shape)
        return idx.astype(float).reshape(shape)
    moved = np.moveaxis(x, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    idx = np.array([sorted(range(flat.shape[1]), key=lambda j: (row[j], j), reverse=True)[:top_k]
                    for row in flat])
    out = np.take_along_axis(flat, idx, axis=1) if out_max_val else idx.astype(float)
    return np.moveaxis(out.reshape(moved.shape[:-1] + (top_k,)), -1, axis)


@pytest.mark.parametrize("params,kw", [
    ("", dict(top_k=1, out_max_val=False)),
    ("top_k: 3", dict(top_k=3, out_max_val=False)),
    ("top_k: 2 out_max_val: true", dict(top_k=2, out_max_val=True)),
    ("axis: 1 top_k: 2", dict(top_k=2, out_max_val=False, axis=1)),
    ("axis: -1 top_k: 3 out_max_val: true", dict(top_k=3, out_max_val=True, axis=2)),
    ("axis: 0", dict(top_k=1, out_max_val=False, axis=0)),
])
def test_argmax(x64, rng, params, kw):
    x = rng.standard_normal((2, 3, 4))
    x[0, 0, :2] = 5.0    # a tie: Caffe puts the larger index first
    layer = make_layer('type: "ArgMax" argmax_param { %s }' % params, [x.shape])
    (y,), _ = forward(layer, [x])
    expected = argmax_reference(x, **kw)
    assert layer.top_shapes[0] == expected.shape == np.shape(y)
    np.testing.assert_array_equal(np.asarray(y), expected)


def test_argmax_shapes_without_axis_have_at_least_3_axes():
    assert make_layer('type: "ArgMax"', [(5, 7)]).top_shapes == ((5, 1, 1),)
    assert make_layer('type: "ArgMax" argmax_param { out_max_val: true top_k: 2 }',
                      [(5, 2, 3, 4)]).top_shapes == ((5, 2, 2, 1),)


@pytest.mark.parametrize("params,shape,match", [
    ("top_k: 0", (2, 3), "top k must not be less than 1"),
    ("top_k: 4", (2, 3), "top_k must be less than or equal to the dimension of the flattened"),
    ("axis: 0 top_k: 3", (2, 3), "top_k must be less than or equal to the dimension of the axis"),
    ("axis: 2", (2, 3), "axis 2 is out of range"),
])
def test_argmax_errors(params, shape, match):
    with pytest.raises(LayerSetupError, match="ArgMax layer 'argmax': " + match):
        make_layer('type: "ArgMax" argmax_param { %s }' % params, [shape])


def test_argmax_backward_only_errors_when_a_diff_is_wanted(x64):
    layer = make_layer('type: "ArgMax"', [(2, 3)])
    diffs, params = layer.backward([], [jnp.zeros((2, 3))], None, None, [jnp.zeros((2, 1, 1))],
                                   (False,))
    assert diffs == [None] and params == []
    with pytest.raises(BackwardError, match="ArgMax layer 'argmax' has no backward"):
        layer.backward([], [jnp.zeros((2, 3))], None, None, [jnp.zeros((2, 1, 1))], (True,))


ARGMAX_NET = """
    %s
    layer { name: "in" type: "Input" top: "x" top: "label"
            input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "score"
            inner_product_param { num_output: 5 weight_filler { type: "gaussian" } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
    layer { name: "argmax" type: "ArgMax" bottom: "score" top: "pred" }
"""


def test_argmax_beside_a_loss_trains_without_error(tmp_path, rng):
    net = make_net(tmp_path, ARGMAX_NET % "")
    assert not net.layer_need_backward["argmax"]
    net.blobs["x"].data[...] = rng.standard_normal((4, 3))
    net.blobs["label"].data[...] = [0, 1, 2, 3]
    out = net.forward()
    np.testing.assert_array_equal(out["pred"].reshape(4),
                                  np.argmax(net.blobs["score"].data, axis=1))
    net.backward()


def test_argmax_under_force_backward_raises_clearly(tmp_path):
    net = make_net(tmp_path, ARGMAX_NET % "force_backward: true")
    net.blobs["label"].data[...] = [0, 1, 2, 3]
    net.forward()
    with pytest.raises(BackwardError, match="ArgMax layer 'argmax' has no backward"):
        net.backward()
