"""InnerProduct, Softmax, Split, Concat, Flatten: forward vs numpy, backward vs jax.vjp."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcaffe.errors import LayerSetupError, ShapeMismatchError
from layer_testing import check_backward, forward, make_layer

GAUSS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def ip_reference(x, w, b, axis, transpose):
    lead = x.shape[:axis]
    x2 = x.reshape(int(np.prod(lead)), -1)
    w_nk = w.T if transpose else w
    y = x2 @ w_nk.T + (0 if b is None else b)
    return y.reshape(lead + (w_nk.shape[0],))


def softmax_reference(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# -- InnerProduct ----------------------------------------------------------------

@pytest.mark.parametrize("axis,transpose,bias", [(1, False, True), (1, True, True),
                                                 (2, False, True), (2, True, False),
                                                 (-1, False, True)])
def test_inner_product(x64, rng, axis, transpose, bias):
    shape = (2, 3, 4, 5)
    snippet = ('type: "InnerProduct" inner_product_param { num_output: 6 axis: %d transpose: %s '
               'bias_term: %s %s }' % (axis, str(transpose).lower(), str(bias).lower(), GAUSS))
    layer = make_layer(snippet, [shape])
    k = int(np.prod(shape[axis:]))
    assert layer.blobs[0].shape == ((k, 6) if transpose else (6, k))
    assert len(layer.blobs) == (2 if bias else 1)
    if bias:
        assert layer.blobs[1].shape == (6,)
    x = rng.standard_normal(shape)
    (y,), _ = forward(layer, [x])
    b = layer.blobs[1].data if bias else None
    expected = ip_reference(x, layer.blobs[0].data, b, axis % 4, transpose)
    assert y.shape == expected.shape == layer.top_shapes[0]
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
    check_backward(layer, [x])


def test_inner_product_float32_keeps_dtype(rng):
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 3 %s }' % GAUSS,
                       [(4, 5)], dtype=np.float32)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    (y,), _ = forward(layer, [x])
    assert y.dtype == jnp.float32 and layer.blobs[0].data.dtype == np.float32
    np.testing.assert_allclose(np.asarray(y), ip_reference(x, layer.blobs[0].data,
                                                           layer.blobs[1].data, 1, False),
                               rtol=1e-5, atol=1e-5)
    top_diffs = [jnp.ones((4, 3), jnp.float32)]
    (dx,), (dw, db) = layer.backward([jnp.asarray(b.data) for b in layer.blobs], [jnp.asarray(x)],
                                     [y], None, top_diffs, (True,))
    assert dx.dtype == dw.dtype == db.dtype == jnp.float32


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_streamed_data_diff_is_the_same_gradient(x64, rng, monkeypatch, transpose):
    """The data gradient of a big weight with few rows, dot(dy^T, W) behind a barrier
    (Eigen's dot on CPU), is dE/dy W like the plain product (thresholds lowered so a
    small layer takes that form; a transposed weight keeps the plain one, and so does
    every weight off the CPU backend)."""
    from jcaffe.layers.common import InnerProduct
    monkeypatch.setattr(InnerProduct, "STREAMED_MIN_BYTES", 0)
    snippet = ('type: "InnerProduct" inner_product_param { num_output: 5 transpose: %s %s }'
               % (str(transpose).lower(), GAUSS))
    layer = make_layer(snippet, [(3, 2, 4)])
    assert layer._streamed(3, layer.blobs[0].data) == (
        not transpose and jax.default_backend() == "cpu")
    check_backward(layer, [rng.standard_normal((3, 2, 4))])


def test_inner_product_streamed_data_diff_takes_eigens_dot():
    """Where dx = dy W is bound by reading a big (N, K) weight (few rows), its dot's left
    operand is contracted over its major axis, which XLA's YNNPACK dots do not take;
    smaller weights and more rows keep the plain product (YNNPACK's where this jaxlib
    has its dots)."""
    import jax
    from jcaffe import xla_options
    from netutil import ynn_dots
    options = xla_options.cpu_options()
    ynn_has_dots = bool((options or {}).get(xla_options.YNN_FUSION_TYPE))
    cases = [((32, 4096), 1024, True),     # 16 MB weight, 32 rows
             ((64, 4096), 1024, False),    # 64 rows under 64 MB of weight
             ((32, 2048), 1024, False)]    # 8 MB
    for shape, n, streamed in cases:
        layer = make_layer('type: "InnerProduct" inner_product_param { num_output: %d }' % n,
                           [shape], dtype=np.float32)
        w = jnp.zeros((n, shape[1]), jnp.float32)
        assert layer._streamed(shape[0], w) == (jax.default_backend() == "cpu" and streamed)
        fn = jax.jit(lambda dy, w: layer._data_diff(dy, [w]), compiler_options=options)
        hlo = fn.lower(jnp.zeros((shape[0], n), jnp.float32), w).compile().as_text()
        dots, in_ynn = ynn_dots(hlo)
        assert dots == 1, hlo
        if ynn_has_dots and jax.default_backend() == "cpu":
            assert in_ynn == (0 if streamed else 1), (shape, n, hlo)


@pytest.mark.parametrize("axis,transpose", [(1, False), (2, False), (1, True)])
def test_inner_product_weight_first_forward_is_the_same_product(x64, rng, monkeypatch, axis,
                                                                 transpose):
    """The forward of a big weight with few rows, (W x^T)^T behind a barrier on CPU, is
    x W^T + b like the plain product (threshold lowered so a small layer takes that form;
    a transposed weight keeps x W)."""
    import jax
    from jcaffe.layers import common
    monkeypatch.setattr(common, "WEIGHT_FIRST_MIN_BYTES", 0)
    shape = (3, 2, 4)
    snippet = ('type: "InnerProduct" inner_product_param { num_output: 5 axis: %d transpose: %s '
               '%s }' % (axis, str(transpose).lower(), GAUSS))
    layer = make_layer(snippet, [shape])
    rows = int(np.prod(shape[:axis]))
    assert common.weight_first(rows, layer.blobs[0].data) == (jax.default_backend() == "cpu")
    x = rng.standard_normal(shape)
    (y,), _ = forward(layer, [x])
    expected = ip_reference(x, layer.blobs[0].data, layer.blobs[1].data, axis, transpose)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
    check_backward(layer, [x])


def test_inner_product_weight_first_forward_reads_the_weight_as_stored():
    """A big (N, K) weight with few rows: the compiled forward's one dot has W as its left
    operand and writes (N, rows), so W is read as stored, never copied transposed (XLA's
    form of x W^T at one row copied CaffeNet's fc6 weight on every call); more rows or a
    smaller weight keep x W^T."""
    import re
    import jax
    from jcaffe import xla_options
    from jcaffe.layers.common import weight_first
    options = xla_options.cpu_options()
    cases = [((1, 4096), 1024, True),      # 16 MB weight, one row
             ((32, 2048), 512, True),      # 4 MB, 32 rows
             ((256, 2048), 1024, False),   # 256 rows
             ((32, 1024), 512, False),     # 2 MB
             ((1, 1024), 512, True),       # 2 MB, one row
             ((1, 512), 256, False)]       # 0.5 MB
    for (rows, k), n, first in cases:
        layer = make_layer('type: "InnerProduct" inner_product_param { num_output: %d }' % n,
                           [(rows, k)], dtype=np.float32)
        first = first and jax.default_backend() == "cpu"
        assert weight_first(rows, jnp.zeros((n, k), jnp.float32)) == first
        fn = jax.jit(lambda x, w, b: layer.forward([w, b], [x], None)[0][0],
                     compiler_options=options)
        hlo = fn.lower(jax.ShapeDtypeStruct((rows, k), jnp.float32),
                       jax.ShapeDtypeStruct((n, k), jnp.float32),
                       jax.ShapeDtypeStruct((n,), jnp.float32)).compile().as_text()
        if first:
            assert re.search(r"= f32\[%d,%d\]\{1,0\} dot\(" % (n, rows), hlo), hlo
            assert "f32[%d,%d]" % (k, n) not in hlo, hlo   # no transposed weight
        else:
            assert "f32[%d,%d]{1,0} dot(" % (n, rows) not in hlo, hlo


def test_inner_product_param_propagate_down_false_gives_none(x64, rng):
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 2 %s }' % GAUSS,
                       [(3, 4)])
    params = [jnp.asarray(b.data) for b in layer.blobs]
    x = jnp.asarray(rng.standard_normal((3, 4)))
    dy = [jnp.ones((3, 2))]
    layer.param_propagate_down = [False, True]
    (dx,), (dw, db) = layer.backward(params, [x], None, None, dy, (True,))
    assert dw is None and db is not None and dx is not None
    layer.param_propagate_down = [True, False]
    (dx,), (dw, db) = layer.backward(params, [x], None, None, dy, (False,))
    assert dx is None and db is None and dw.shape == (2, 4)


def test_inner_product_default_fillers_are_zero():
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 2 }', [(3, 4)])
    assert not layer.blobs[0].data.any() and not layer.blobs[1].data.any()


def test_inner_product_checks_k_on_reshape():
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 2 }', [(3, 4, 5)])
    layer.do_reshape([(7, 20)])  # a new batch size and the same K is fine
    assert layer.top_shapes == ((7, 2),)
    with pytest.raises(LayerSetupError, match="Input size incompatible.*K = 21.*K = 20"):
        layer.do_reshape([(3, 21)])


def test_inner_product_checks_given_weights():
    snippet = ('type: "InnerProduct" inner_product_param { num_output: 2 } '
               'blobs { shape { dim: 2 dim: 5 } %s } blobs { shape { dim: 2 } data: 0 data: 0 }'
               % ("data: 0 " * 10))
    with pytest.raises(ShapeMismatchError, match="param 0 given in the net has shape 2 5 .*expected 2 4"):
        make_layer(snippet, [(3, 4)])


def test_inner_product_axis_out_of_range():
    with pytest.raises(LayerSetupError, match="axis 3 is out of range for a 2-axis bottom"):
        make_layer('type: "InnerProduct" inner_product_param { num_output: 2 axis: 3 }', [(3, 4)])


# -- Softmax ---------------------------------------------------------------------

@pytest.mark.parametrize("axis", [1, 2, -1, 0])
def test_softmax(x64, rng, axis):
    shape = (2, 3, 4)
    layer = make_layer('type: "Softmax" softmax_param { axis: %d }' % axis, [shape])
    x = rng.standard_normal(shape) * 3
    (y,), _ = forward(layer, [x])
    np.testing.assert_allclose(np.asarray(y), softmax_reference(x, axis), rtol=1e-12)
    check_backward(layer, [x])


def test_softmax_default_axis_is_channels(x64, rng):
    layer = make_layer('type: "Softmax"', [(2, 5, 3)])
    x = rng.standard_normal((2, 5, 3))
    (y,), _ = forward(layer, [x])
    np.testing.assert_allclose(np.asarray(y).sum(axis=1), np.ones((2, 3)), rtol=1e-12)


def test_softmax_large_inputs_and_float32(rng):
    layer = make_layer('type: "Softmax"', [(2, 4)], dtype=np.float32)
    x = (rng.standard_normal((2, 4)) * 1000).astype(np.float32)
    (y,), _ = forward(layer, [x])
    assert y.dtype == jnp.float32 and np.isfinite(np.asarray(y)).all()
    np.testing.assert_allclose(np.asarray(y), softmax_reference(x.astype(np.float64), 1),
                               rtol=1e-5, atol=1e-6)


# -- Split -----------------------------------------------------------------------

@pytest.mark.parametrize("num_top", [1, 2, 3])
def test_split(x64, rng, num_top):
    tops = " ".join('top: "t%d"' % i for i in range(num_top))
    layer = make_layer('type: "Split" %s' % tops, [(2, 3)])
    x = rng.standard_normal((2, 3))
    ys, _ = forward(layer, [x])
    assert len(ys) == num_top and layer.top_shapes == ((2, 3),) * num_top
    for y in ys:
        np.testing.assert_array_equal(np.asarray(y), x)
    (dx,), _ = check_backward(layer, [x])
    diffs = [np.full((2, 3), i + 1.0) for i in range(num_top)]
    (dx,), _ = layer.backward([], [jnp.asarray(x)], ys, None, [jnp.asarray(d) for d in diffs], (True,))
    np.testing.assert_array_equal(np.asarray(dx), sum(diffs))


def test_split_refuses_in_place():
    with pytest.raises(LayerSetupError, match="in-place"):
        make_layer('type: "Split" bottom: "x" top: "x" top: "y"', [(2, 3)])


# -- Concat ----------------------------------------------------------------------

@pytest.mark.parametrize("param,axis", [("axis: 0", 0), ("axis: 1", 1), ("", 1), ("axis: -1", 2),
                                        ("concat_dim: 0", 0), ("concat_dim: 2", 2)])
def test_concat(x64, rng, param, axis):
    base = [2, 3, 4]
    shapes = []
    for size in (1, 2, 3):
        s = list(base)
        s[axis] = size
        shapes.append(tuple(s))
    layer = make_layer('type: "Concat" concat_param { %s }' % param, shapes)
    xs = [rng.standard_normal(s) for s in shapes]
    (y,), _ = forward(layer, xs)
    np.testing.assert_array_equal(np.asarray(y), np.concatenate(xs, axis=axis))
    assert layer.top_shapes[0] == y.shape
    check_backward(layer, xs)
    diffs, _ = check_backward(layer, xs, propagate_down=[True, False, True])
    assert diffs[1] is None


def test_concat_single_bottom_is_a_copy(x64, rng):
    layer = make_layer('type: "Concat"', [(2, 3)])
    x = rng.standard_normal((2, 3))
    (y,), _ = forward(layer, [x])
    np.testing.assert_array_equal(np.asarray(y), x)
    check_backward(layer, [x])


def test_concat_float32(rng):
    layer = make_layer('type: "Concat"', [(2, 1), (2, 2)], dtype=np.float32)
    xs = [rng.standard_normal(s).astype(np.float32) for s in [(2, 1), (2, 2)]]
    (y,), _ = forward(layer, xs)
    assert y.dtype == jnp.float32 and y.shape == (2, 3)


def test_concat_shape_mismatch_names_shapes_and_bottom():
    with pytest.raises(LayerSetupError, match=r"bottom 0 has shape 2 3 4 \(24\), bottom 2 has "
                                              r"shape 2 5 4 \(40\) \(axis 1 differs\)"):
        make_layer('type: "Concat" concat_param { axis: 0 }', [(2, 3, 4), (1, 3, 4), (2, 5, 4)])
    with pytest.raises(LayerSetupError, match="same #axes.*bottom 1 has shape 2 3 \\(6\\)"):
        make_layer('type: "Concat"', [(2, 3, 4), (2, 3)])


def test_concat_axis_and_concat_dim_conflict():
    with pytest.raises(LayerSetupError, match="not both"):
        make_layer('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', [(2, 3), (2, 3)])
    with pytest.raises(LayerSetupError, match="concat_dim 2 out of range"):
        make_layer('type: "Concat" concat_param { concat_dim: 2 }', [(2, 3), (2, 3)])


# -- Flatten ---------------------------------------------------------------------

@pytest.mark.parametrize("param,expected", [("", (2, 60)), ("axis: 2", (2, 3, 20)),
                                            ("axis: 1 end_axis: 2", (2, 12, 5)),
                                            ("axis: 0 end_axis: -2", (24, 5)),
                                            ("axis: -1", (2, 3, 4, 5)),
                                            # (Caffe's count(2, 2) = 1: a unit axis)
                                            ("axis: 2 end_axis: 1", (2, 3, 1, 4, 5))])
def test_flatten(x64, rng, param, expected):
    layer = make_layer('type: "Flatten" flatten_param { %s }' % param, [(2, 3, 4, 5)])
    x = rng.standard_normal((2, 3, 4, 5))
    (y,), _ = forward(layer, [x])
    assert layer.top_shapes == (expected,) and y.shape == expected
    np.testing.assert_array_equal(np.asarray(y), x.reshape(expected))
    check_backward(layer, [x])


def test_flatten_errors():
    with pytest.raises(LayerSetupError, match="end_axis 0 comes more than one axis before "
                                              "axis 2 \\(bottom shape 2 3 4 \\(24\\)\\)"):
        make_layer('type: "Flatten" flatten_param { axis: 2 end_axis: 0 }', [(2, 3, 4)])
    with pytest.raises(LayerSetupError, match="in-place"):
        make_layer('type: "Flatten" bottom: "x" top: "x"', [(2, 3)])
