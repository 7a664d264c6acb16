"""Convolution, Pooling, LRN: forward vs plain numpy loops written from Caffe's rules,
backward vs jax.vjp, Caffe's shape rules and setup errors."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcaffe.errors import LayerSetupError, ShapeMismatchError
from layer_testing import check_backward, forward, make_layer, params_of
from netutil import make_net

FLT_MAX = float(np.finfo(np.float32).max)
FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


# -- numpy references (loops on purpose: they follow the definitions) -------------

def conv_reference(x, w, b, pad, stride, dilation, group, axis=1):
    lead = x.shape[:axis]
    xs = x.reshape((-1,) + x.shape[axis:])
    num, channels, spatial = xs.shape[0], xs.shape[1], xs.shape[2:]
    n = len(spatial)
    kernel = w.shape[2:]
    cg, og = channels // group, w.shape[0] // group
    out = [(spatial[i] + 2 * pad[i] - (dilation[i] * (kernel[i] - 1) + 1)) // stride[i] + 1
           for i in range(n)]
    y = np.zeros((num, w.shape[0]) + tuple(out))
    for o_pos in itertools.product(*[range(o) for o in out]):
        for k_pos in itertools.product(*[range(k) for k in kernel]):
            at = tuple(o_pos[i] * stride[i] - pad[i] + k_pos[i] * dilation[i] for i in range(n))
            if not all(0 <= at[i] < spatial[i] for i in range(n)):
                continue
            for g in range(group):
                xv = xs[(slice(None), slice(g * cg, (g + 1) * cg)) + at]       # (num, cg)
                wv = w[(slice(g * og, (g + 1) * og), slice(None)) + k_pos]     # (og, cg)
                y[(slice(None), slice(g * og, (g + 1) * og)) + o_pos] += xv @ wv.T
    if b is not None:
        y += b.reshape((-1,) + (1,) * n)
    return y.reshape(lead + y.shape[1:])


def pooled_size(size, k, s, p, any_pad, ceil=True):
    n = (math.ceil((size + 2 * p - k) / s) if ceil else (size + 2 * p - k) // s) + 1
    if any_pad and (n - 1) * s >= size + p:
        n -= 1
    return n


def pool_reference(x, method, kernel, stride, pad, ceil=True):
    """(top, mask) as Caffe's CPU loops define them."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    any_pad = ph > 0 or pw > 0
    PH, PW = pooled_size(H, kh, sh, ph, any_pad, ceil), pooled_size(W, kw, sw, pw, any_pad, ceil)
    top = np.zeros((N, C, PH, PW))
    mask = np.full((N, C, PH, PW), -1.0)
    for n, c, i, j in itertools.product(range(N), range(C), range(PH), range(PW)):
        h0, w0 = i * sh - ph, j * sw - pw
        if method == "MAX":
            best = -FLT_MAX
            for h in range(max(h0, 0), min(h0 + kh, H)):
                for w in range(max(w0, 0), min(w0 + kw, W)):
                    if x[n, c, h, w] > best:
                        best, mask[n, c, i, j] = x[n, c, h, w], h * W + w
            top[n, c, i, j] = best
        else:
            h1, w1 = min(h0 + kh, H + ph), min(w0 + kw, W + pw)
            size = (h1 - h0) * (w1 - w0)
            total = x[n, c, max(h0, 0):min(h1, H), max(w0, 0):min(w1, W)].sum()
            top[n, c, i, j] = total / size
    return top, mask


def max_pool_backward_reference(x_shape, mask, dy):
    dx = np.zeros(x_shape)
    N, C, H, W = x_shape
    for n, c, i, j in itertools.product(range(N), range(C), *map(range, mask.shape[2:])):
        idx = int(mask[n, c, i, j])
        dx[n, c, idx // W, idx % W] += dy[n, c, i, j]
    return dx


def lrn_reference(x, size, alpha, beta, k, region):
    return x * lrn_scale_reference(x, size, alpha, k, region) ** -beta


def lrn_scale_reference(x, size, alpha, k, region):
    """Caffe's scale_: k + alpha / n * the sum of x^2 over each element's window."""
    N, C, H, W = x.shape
    half = (size - 1) // 2
    scale = np.zeros_like(x)
    for n, c, h, w in itertools.product(range(N), range(C), range(H), range(W)):
        if region == "ACROSS_CHANNELS":
            s = sum(x[n, cc, h, w] ** 2 for cc in range(max(0, c - half), min(C, c + half + 1)))
            scale[n, c, h, w] = k + alpha / size * s
        else:
            s = (x[n, c, max(0, h - half):h + half + 1, max(0, w - half):w + half + 1] ** 2).sum()
            scale[n, c, h, w] = 1 + alpha * s / (size * size)
    return scale


# -- Convolution -------------------------------------------------------------------

CONV_CASES = [
    # (param text, bottom shape, pad, stride, dilation, group)
    ("kernel_size: 3", (2, 3, 5, 6), (0, 0), (1, 1), (1, 1), 1),
    ("kernel_size: 3 pad: 1 stride: 2", (2, 3, 7, 6), (1, 1), (2, 2), (1, 1), 1),
    ("kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 0 stride_h: 1 stride_w: 3", (1, 2, 5, 8),
     (2, 0), (1, 3), (1, 1), 1),
    ("kernel_size: 3 dilation: 2 pad: 1", (2, 2, 7, 8), (1, 1), (1, 1), (2, 2), 1),
    ("kernel_size: 2 kernel_size: 3 dilation: 1 dilation: 2 stride: 2", (1, 2, 6, 9),
     (0, 0), (2, 2), (1, 2), 1),
    ("kernel_size: 3 pad: 1 group: 2", (2, 4, 5, 5), (1, 1), (1, 1), (1, 1), 2),
    ("kernel_size: 2 stride: 2 pad: 3 group: 3 dilation: 2", (1, 6, 5, 4),
     (3, 3), (2, 2), (2, 2), 3),
    ("kernel_size: 1", (2, 5, 3, 3), (0, 0), (1, 1), (1, 1), 1),                     # 1x1
    ("kernel_size: 3 stride: 2 pad: 1 dilation: 2", (2, 3, 9), (1,), (2,), (2,), 1),  # 1-d
    ("kernel_size: 2 kernel_size: 1 kernel_size: 3 pad: 1 stride: 2 group: 2",        # 3-d
     (1, 4, 4, 3, 5), (1, 1, 1), (2, 2, 2), (1, 1, 1), 2),
]


@pytest.mark.parametrize("param,shape,pad,stride,dilation,group", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_convolution(x64, rng, param, shape, pad, stride, dilation, group, bias):
    num_output = 2 * group
    layer = make_layer('type: "Convolution" convolution_param { num_output: %d bias_term: %s '
                       '%s %s }' % (num_output, str(bias).lower(), param, FILLERS), [shape])
    w = layer.blobs[0].data
    assert w.shape[:2] == (num_output, shape[1] // group) and len(w.shape) == len(shape)
    assert len(layer.blobs) == (2 if bias else 1)
    x = rng.standard_normal(shape)
    (y,), _ = forward(layer, [x])
    b = layer.blobs[1].data if bias else None
    expected = conv_reference(x, w, b, pad, stride, dilation, group)
    assert y.shape == expected.shape == layer.top_shapes[0]
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
    check_backward(layer, [x])


@pytest.mark.parametrize("axis", [2, -3])
def test_convolution_axis_folds_leading_axes_into_the_batch(x64, rng, axis):
    shape = (2, 3, 4, 5, 6)                       # channels = 4, spatial (5, 6)
    layer = make_layer('type: "Convolution" convolution_param { num_output: 3 kernel_size: 2 '
                       'axis: %d %s }' % (axis, FILLERS), [shape])
    assert layer.blobs[0].shape == (3, 4, 2, 2)
    x = rng.standard_normal(shape)
    (y,), _ = forward(layer, [x])
    expected = conv_reference(x, layer.blobs[0].data, layer.blobs[1].data, (0, 0), (1, 1), (1, 1),
                              1, axis=2)
    assert y.shape == (2, 3, 3, 4, 5) == layer.top_shapes[0]
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
    check_backward(layer, [x])


def test_convolution_applies_the_same_weights_to_each_bottom(x64, rng):
    shape = (2, 2, 5, 4)
    layer = make_layer('type: "Convolution" bottom: "a" bottom: "b" top: "c" top: "d" '
                       'convolution_param { num_output: 3 kernel_size: 3 pad: 1 %s }' % FILLERS,
                       [shape, shape])
    xs = [rng.standard_normal(shape) for _ in range(2)]
    tops, _ = forward(layer, xs)
    assert len(tops) == 2 and layer.top_shapes == ((2, 3, 5, 4),) * 2
    for x, y in zip(xs, tops):
        expected = conv_reference(x, layer.blobs[0].data, layer.blobs[1].data, (1, 1), (1, 1),
                                  (1, 1), 1)
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
    # param diffs are the sum of both bottoms' contributions; one bottom may want no diff
    check_backward(layer, xs)
    bottom_diffs, _ = check_backward(layer, xs, propagate_down=[False, True])
    assert bottom_diffs[0] is None and bottom_diffs[1] is not None


@pytest.mark.parametrize("want", [(False, True), (True, False), (False, False)])
def test_convolution_param_propagate_down_false_gives_none(x64, rng, want):
    shape = (2, 2, 4, 4)
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 %s }'
                       % FILLERS, [shape])
    layer.param_propagate_down = list(want)
    x = jnp.asarray(rng.standard_normal(shape))
    (y,), saved = forward(layer, [x])
    (dx,), (dw, db) = layer.backward(params_of(layer), [x], [y], saved, [jnp.ones_like(y)],
                                     (False,))
    assert dx is None
    assert (dw is not None) == want[0] and (db is not None) == want[1]
    if want[1]:
        np.testing.assert_allclose(np.asarray(db), np.full(2, 2 * 2 * 2.0))


def test_convolution_without_bias_returns_one_param_diff(x64, rng):
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 '
                       'bias_term: false %s }' % FILLERS, [(1, 1, 4, 4)])
    x = jnp.asarray(rng.standard_normal((1, 1, 4, 4)))
    (y,), saved = forward(layer, [x])
    (dx,), param_diffs = layer.backward(params_of(layer), [x], [y], saved, [y], (True,))
    assert len(param_diffs) == 1 and param_diffs[0].shape == (2, 1, 3, 3)


def test_convolution_reshape_to_a_new_spatial_size(x64, rng):
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 '
                       'stride: 2 %s }' % FILLERS, [(1, 2, 7, 7)])
    assert layer.do_reshape([(3, 2, 9, 5)]) == ((3, 2, 4, 2),)
    x = rng.standard_normal((3, 2, 9, 5))
    (y,), _ = forward(layer, [x])
    expected = conv_reference(x, layer.blobs[0].data, layer.blobs[1].data, (0, 0), (2, 2), (1, 1),
                              1)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
    check_backward(layer, [x])


def test_convolution_float32_keeps_dtype(rng):
    shape = (2, 4, 6, 5)
    layer = make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
                       'pad: 1 stride: 2 group: 2 %s }' % FILLERS, [shape], dtype=np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    (y,), saved = forward(layer, [x])
    assert y.dtype == jnp.float32 and layer.blobs[0].data.dtype == np.float32
    expected = conv_reference(x.astype(np.float64), layer.blobs[0].data.astype(np.float64),
                              layer.blobs[1].data.astype(np.float64), (1, 1), (2, 2), (1, 1), 2)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-4)
    (dx,), (dw, db) = layer.backward(params_of(layer), [jnp.asarray(x)], [y], saved,
                                     [jnp.ones_like(y)], (True,))
    assert dx.dtype == dw.dtype == db.dtype == jnp.float32
    assert dx.shape == shape and dw.shape == layer.blobs[0].shape


CONV_ERRORS = [
    ("num_output: 4 kernel_size: 3 group: 2", (1, 3, 5, 5), "group 2 must divide"),
    ("num_output: 3 kernel_size: 3 group: 2", (1, 4, 5, 5), "group 2 must divide"),
    ("num_output: 2 kernel_size: 3 group: 0", (1, 4, 5, 5), "group must be positive"),
    ("num_output: 0 kernel_size: 3", (1, 4, 5, 5), "num_output must be positive"),
    ("num_output: 2 kernel_size: 6 pad: 0", (1, 1, 5, 5), "larger than the padded input"),
    ("num_output: 2 kernel_size: 3 dilation: 3", (1, 1, 6, 6), "kernel extent 7"),
    ("num_output: 2", (1, 1, 5, 5), "kernel_size must be given once"),
    ("num_output: 2 kernel_size: 3 kernel_size: 3", (1, 1, 5, 5, 5), "kernel_size must be given"),
    ("num_output: 2 kernel_size: 0", (1, 1, 5, 5), "kernel_size must be positive"),
    ("num_output: 2 kernel_size: 3 stride: 0", (1, 1, 5, 5), "stride must be positive"),
    ("num_output: 2 kernel_size: 3 kernel_h: 3", (1, 1, 5, 5), "either kernel_size or kernel_h"),
    ("num_output: 2 kernel_h: 3 kernel_w: 3", (1, 1, 5, 5, 5), "only be used for 2-d"),
    ("num_output: 2 kernel_size: 3 pad: 1 pad_h: 1", (1, 1, 5, 5), "either pad or pad_h"),
    ("num_output: 2 kernel_size: 3 stride_w: 2", (1, 1, 5), "only be used for 2-d"),
    ("num_output: 2 kernel_size: 3 stride: 1 stride: 1 stride: 1", (1, 1, 5, 5),
     "stride must be given"),
    ("num_output: 2 kernel_size: 1 axis: 3", (1, 1, 5, 5), "at least one spatial axis"),
    ("num_output: 2 kernel_size: 1 axis: 4", (1, 1, 5, 5), "out of range"),
]


@pytest.mark.parametrize("param,shape,message", CONV_ERRORS)
def test_convolution_setup_errors_name_the_layer(param, shape, message):
    with pytest.raises(LayerSetupError, match="Convolution layer 'convolution': .*%s" % message):
        make_layer('type: "Convolution" convolution_param { %s }' % param, [shape])


def test_convolution_bottoms_must_share_a_shape():
    message = r"shape mismatch - bottom\[0\]: 1 2 5 5 .*bottom\[1\]"
    with pytest.raises(LayerSetupError, match=message):
        make_layer('type: "Convolution" bottom: "a" bottom: "b" top: "c" top: "d" '
                   'convolution_param { num_output: 2 kernel_size: 3 }',
                   [(1, 2, 5, 5), (1, 2, 4, 5)])


def test_convolution_reshape_checks_channels():
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }',
                       [(1, 2, 5, 5)])
    with pytest.raises(LayerSetupError, match="set up for 2 channels"):
        layer.do_reshape([(1, 3, 5, 5)])
    with pytest.raises(LayerSetupError, match="num_axes may not change"):
        layer.do_reshape([(1, 2, 5, 5, 5)])


def test_convolution_given_weights_of_the_wrong_shape():
    message = r"param 0 given in the net has shape 2 1 2 2 \(8\), expected 2 1 3 3 \(18\)"
    with pytest.raises(ShapeMismatchError, match=message):
        make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 '
                   'bias_term: false } blobs { shape { dim: 2 dim: 1 dim: 2 dim: 2 } '
                   'data: [1, 2, 3, 4, 5, 6, 7, 8] }', [(1, 1, 5, 5)])


# -- Pooling -----------------------------------------------------------------------

POOL_CASES = [
    # (param text, bottom shape, kernel, stride, pad, expected pooled (H, W))
    ("kernel_size: 2 stride: 2", (2, 2, 6, 6), (2, 2), (2, 2), (0, 0), (3, 3)),
    ("kernel_size: 3 stride: 2", (2, 2, 6, 7), (3, 3), (2, 2), (0, 0), (3, 3)),    # ceil: 6 -> 3
    ("kernel_size: 3 stride: 2 pad: 1", (2, 2, 7, 6), (3, 3), (2, 2), (1, 1), (4, 4)),
    ("kernel_size: 3 stride: 3 pad: 2", (1, 2, 4, 5), (3, 3), (3, 3), (2, 2), (2, 3)),  # clipped
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (2, 2, 6, 5),
     (3, 2), (2, 1), (1, 0), (4, 4)),
    ("kernel_size: 2 stride: 1 pad: 1", (1, 2, 3, 3), (2, 2), (1, 1), (1, 1), (4, 4)),
    ("kernel_size: 5 stride: 3", (1, 2, 4, 4), (5, 5), (3, 3), (0, 0), (1, 1)),  # kernel > input
    ("kernel_size: 4 stride: 2 pad: 3", (2, 1, 5, 5), (4, 4), (2, 2), (3, 3), (4, 4)),
]


@pytest.mark.parametrize("param,shape,kernel,stride,pad,pooled", POOL_CASES)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling(x64, rng, param, shape, kernel, stride, pad, pooled, method):
    layer = make_layer('type: "Pooling" pooling_param { pool: %s %s }' % (method, param), [shape])
    x = rng.standard_normal(shape)
    (y,), saved = forward(layer, [x])
    expected, mask = pool_reference(x, method, kernel, stride, pad)
    assert y.shape == expected.shape == layer.top_shapes[0] == shape[:2] + pooled
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
    bottom_diffs, _ = check_backward(layer, [x])
    if method == "MAX":
        dy = np.random.default_rng(1).standard_normal(y.shape)   # check_backward's top diff
        np.testing.assert_allclose(np.asarray(bottom_diffs[0]),
                                   max_pool_backward_reference(shape, mask, dy), rtol=1e-12)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_floor_round_mode(x64, rng, method):
    shape = (1, 2, 6, 7)
    layer = make_layer('type: "Pooling" pooling_param { pool: %s kernel_size: 3 stride: 2 '
                       'round_mode: FLOOR }' % method, [shape])
    x = rng.standard_normal(shape)
    (y,), _ = forward(layer, [x])
    expected, _ = pool_reference(x, method, (3, 3), (2, 2), (0, 0), ceil=False)
    assert y.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12)
    check_backward(layer, [x])


def test_ave_pooling_divisor_counts_padding_but_stops_at_the_padded_border(x64):
    # H = W = 6, k = 3, s = 2, pad = 1: windows start at -1, 1, 3, 5. The first covers
    # one padded row (divisor 3, two image rows); the last is cut at H + pad = 7
    # (divisor 2, one image row).
    layer = make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 '
                       'pad: 1 }', [(1, 1, 6, 6)])
    (y,), _ = forward(layer, [np.ones((1, 1, 6, 6))])
    per_axis = np.array([2 / 3, 1, 1, 1 / 2])
    np.testing.assert_allclose(np.asarray(y)[0, 0], np.outer(per_axis, per_axis), rtol=1e-12)


def test_max_pooling_ties_take_the_first_maximum_and_padding_never_wins(x64, rng):
    shape = (2, 3, 7, 7)
    x = -rng.integers(1, 3, size=shape).astype(np.float64)       # all negative, many ties
    layer = make_layer('type: "Pooling" top: "y" top: "mask" pooling_param { pool: MAX '
                       'kernel_size: 3 stride: 2 pad: 1 }', [shape])
    (y, mask), saved = forward(layer, [x])
    expected, expected_mask = pool_reference(x, "MAX", (3, 3), (2, 2), (1, 1))
    assert (np.asarray(y) < 0).all()
    np.testing.assert_array_equal(np.asarray(y), expected)
    np.testing.assert_array_equal(np.asarray(mask), expected_mask)
    assert mask.dtype == jnp.float64 and layer.top_shapes == ((2, 3, 4, 4),) * 2
    dy = rng.standard_normal(y.shape)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], [y, mask], saved,
                              [jnp.asarray(dy), jnp.zeros_like(mask)], (True,))
    expected_dx = max_pool_backward_reference(shape, expected_mask, dy)
    np.testing.assert_allclose(np.asarray(dx), expected_dx, rtol=1e-12)


def test_max_pooling_matches_caffes_loops_on_random_geometries(x64):
    """MAX pooling's separable forward and both backward routes (overlapping windows:
    shares + col2im; non-overlapping and single windows: tiles) against Caffe's loops:
    top, mask and the routed diff, on data with many ties, NaN and -inf (never chosen; a
    window of nothing else sends no diff)."""
    rng = np.random.default_rng(7)
    for _ in range(32):
        kh, kw = rng.integers(1, 5, size=2)
        sh, sw = rng.integers(1, 4, size=2)
        ph, pw = rng.integers(0, kh), rng.integers(0, kw)
        shape = (2, 2, int(rng.integers(max(1, kh - 2 * ph), 10)),
                 int(rng.integers(max(1, kw - 2 * pw), 10)))
        x = rng.integers(-2, 3, size=shape).astype(np.float64)
        x[rng.random(shape) < 0.1] = np.nan
        x[rng.random(shape) < 0.1] = -np.inf
        param = ("kernel_h: %d kernel_w: %d stride_h: %d stride_w: %d pad_h: %d pad_w: %d"
                 % (kh, kw, sh, sw, ph, pw))
        layer = make_layer('type: "Pooling" top: "y" top: "mask" pooling_param { pool: MAX %s }'
                           % param, [shape])
        dy = rng.standard_normal(layer.top_shapes[0])

        @jax.jit   # one compile per geometry, not one per op
        def run(x, dy):
            (y, mask), saved = layer.forward([], [x], None)
            (dx,), _ = layer.backward([], [x], [y, mask], saved, [dy, jnp.zeros_like(mask)],
                                      (True,))
            return y, mask, dx
        y, mask, dx = run(jnp.asarray(x), jnp.asarray(dy))
        expected, expected_mask = pool_reference(x, "MAX", (kh, kw), (sh, sw), (ph, pw))
        np.testing.assert_array_equal(np.asarray(y), expected, err_msg=param)
        np.testing.assert_array_equal(np.asarray(mask), expected_mask, err_msg=param)
        routed = np.where(expected_mask >= 0, expected_mask, 0).astype(int)
        expected_dx = max_pool_backward_reference(shape, routed, np.where(expected_mask >= 0, dy, 0))
        np.testing.assert_allclose(np.asarray(dx), expected_dx, rtol=1e-12, atol=1e-12,
                                   err_msg=param)


OVERLAPPING_POOLS = [   # (kernel, stride, pad, bottom H x W): windows that share elements
    ((3, 3), (1, 1), (1, 1), (7, 6)), ((2, 2), (1, 1), (0, 0), (5, 5)),
    ((3, 2), (1, 1), (2, 1), (4, 6)), ((1, 3), (1, 1), (0, 1), (5, 4)),
    ((4, 4), (1, 1), (3, 0), (3, 7)), ((3, 3), (2, 2), (0, 0), (9, 8)),
    ((3, 3), (2, 2), (1, 1), (7, 7)), ((5, 4), (3, 2), (2, 1), (11, 9)),
    ((3, 2), (2, 1), (1, 0), (6, 5)), ((2, 4), (1, 3), (0, 2), (5, 10)),
]


@pytest.mark.parametrize("by_rows", [True, False])
@pytest.mark.parametrize("kernel,stride,pad,hw", OVERLAPPING_POOLS)
def test_max_pooling_backward_of_overlapping_windows_by_rows_and_by_shares(
        x64, monkeypatch, by_rows, kernel, stride, pad, hw):
    """Both routes of MAX pooling's backward where windows overlap (kernel rows added in
    place into the (T, stride) view of the padded diff, and col2im's shares), in one
    program with the forward as in a training step, against Caffe's loops, on data with
    ties, NaN and -inf."""
    from jcaffe.layers.vision import Pooling
    monkeypatch.setattr(Pooling, "ROUTE_BY_ROWS", by_rows)
    rng = np.random.default_rng(sum(kernel) + sum(stride) + sum(hw))
    shape = (2, 3) + hw
    x = rng.integers(-2, 3, size=shape).astype(np.float64)
    x[rng.random(shape) < 0.1] = np.nan
    x[rng.random(shape) < 0.1] = -np.inf
    layer = make_layer('type: "Pooling" top: "y" top: "mask" pooling_param { pool: MAX '
                       'kernel_h: %d kernel_w: %d stride_h: %d stride_w: %d pad_h: %d '
                       'pad_w: %d }' % (kernel + stride + pad), [shape])
    assert layer._tiles() is None
    dy = rng.standard_normal(layer.top_shapes[0])

    @jax.jit
    def run(x, dy):
        (y, mask), saved = layer.forward([], [x], None)
        (dx,), _ = layer.backward([], [x], [y, mask], saved, [dy, jnp.zeros_like(mask)], (True,))
        return mask, dx
    mask, dx = run(jnp.asarray(x), jnp.asarray(dy))
    expected, expected_mask = pool_reference(x, "MAX", kernel, stride, pad)
    np.testing.assert_array_equal(np.asarray(mask), expected_mask)
    routed = np.where(expected_mask >= 0, expected_mask, 0).astype(int)
    expected_dx = max_pool_backward_reference(shape, routed,
                                              np.where(expected_mask >= 0, dy, 0))
    np.testing.assert_allclose(np.asarray(dx), expected_dx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pooling,by_rows", [
    ("kernel_size: 7 stride: 1 pad: 3", True), ("kernel_size: 7 stride: 1 pad: 3", False),
    ("kernel_size: 7 stride: 2 pad: 3", True), ("kernel_size: 7 stride: 2 pad: 3", False),
    ("kernel_size: 13 stride: 13", True)])      # the last: one window, the tiles route
def test_max_pooling_backward_keeps_float32_offsets_exact(rng, monkeypatch, by_rows, pooling):
    """Every backward route passes float offsets through sqrt((o + 1)^2) - 1 (see
    vision._computed_once): in float32 on 7x7 and 13x13 windows, where the argmax takes
    nearly every offset, each diff still goes where Caffe's loops send it."""
    from jcaffe.layers.vision import Pooling
    monkeypatch.setattr(Pooling, "ROUTE_BY_ROWS", by_rows)
    shape = (2, 32, 13, 13)
    layer = make_layer('type: "Pooling" top: "y" top: "mask" pooling_param { pool: MAX %s }'
                       % pooling, [shape])
    x = rng.permutation(64 * 169).reshape(shape).astype(np.float32)
    (y, mask), saved = layer.forward([], [jnp.asarray(x)], None)
    assert saved.dtype == jnp.float32 and len(np.unique(np.asarray(saved))) >= 40
    dy = rng.standard_normal(y.shape).astype(np.float32)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], [y, mask], saved,
                              [jnp.asarray(dy), jnp.zeros_like(mask)], (True,))
    _, expected_mask = pool_reference(x.astype(np.float64), "MAX", tuple(layer.kernel),
                                      tuple(layer.stride), tuple(layer.pad))
    np.testing.assert_array_equal(np.asarray(mask), expected_mask)
    expected_dx = max_pool_backward_reference(shape, expected_mask.astype(int), dy)
    np.testing.assert_allclose(np.asarray(dx), expected_dx, rtol=1e-6, atol=1e-6)


def test_max_pooling_window_outside_the_image_gives_caffes_start_value(x64):
    # H = 4, k = 1, s = 2, no pad: ceil gives 3 windows, the last starts at row 4.
    layer = make_layer('type: "Pooling" top: "y" top: "mask" pooling_param { pool: MAX '
                       'kernel_size: 1 stride: 2 }', [(1, 1, 4, 4)])
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    (y, mask), saved = forward(layer, [x])
    expected, expected_mask = pool_reference(x, "MAX", (1, 1), (2, 2), (0, 0))
    assert np.asarray(y)[0, 0, 2, 0] == -FLT_MAX and np.asarray(mask)[0, 0, 2, 0] == -1
    np.testing.assert_array_equal(np.asarray(y), expected)
    np.testing.assert_array_equal(np.asarray(mask), expected_mask)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], [y, mask], saved,
                              [jnp.ones_like(y), jnp.zeros_like(mask)], (True,))
    assert float(np.asarray(dx).sum()) == 4.0                     # the 4 in-image windows


def test_ave_pooling_window_outside_the_image_divides_by_caffes_pool_size(x64):
    # Same geometry: Caffe's divisor for the last row of windows is 0 (NaN, as in Caffe);
    # backward sends nothing from those windows and stays finite.
    layer = make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 1 stride: 2 }',
                       [(1, 1, 4, 4)])
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    (y,), saved = forward(layer, [x])
    with np.errstate(invalid="ignore"):
        expected, _ = pool_reference(x, "AVE", (1, 1), (2, 2), (0, 0))
    assert np.isnan(np.asarray(y)[0, 0, 2]).all()
    np.testing.assert_array_equal(np.asarray(y), expected)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], [y], saved, [jnp.ones_like(y)], (True,))
    np.testing.assert_array_equal(np.asarray(dx)[0, 0], np.kron(np.ones((2, 2)), [[1, 0], [0, 0]]))


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(x64, rng, method):
    layer = make_layer('type: "Pooling" pooling_param { pool: %s global_pooling: true }' % method,
                       [(2, 3, 5, 4)])
    x = rng.standard_normal((2, 3, 5, 4))
    (y,), _ = forward(layer, [x])
    expected = x.max(axis=(2, 3)) if method == "MAX" else x.mean(axis=(2, 3))
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(np.asarray(y)[:, :, 0, 0], expected, rtol=1e-12)
    check_backward(layer, [x])
    # the kernel follows the bottom on reshape
    assert layer.do_reshape([(1, 3, 7, 2)]) == ((1, 3, 1, 1),)
    x = rng.standard_normal((1, 3, 7, 2))
    (y,), _ = forward(layer, [x])
    expected = x.max(axis=(2, 3)) if method == "MAX" else x.mean(axis=(2, 3))
    np.testing.assert_allclose(np.asarray(y)[:, :, 0, 0], expected, rtol=1e-12)
    check_backward(layer, [x])


@pytest.mark.parametrize("param", ["global_pooling: true", "kernel_size: 4 stride: 4"])
def test_ave_pooling_of_tiling_windows_is_one_sum_and_one_broadcast(rng, param):
    """Windows that tile the map (global pooling, stride = kernel) are summed by one
    reduction and their diff spread by one broadcast: no op per kernel row or column
    (28 + 28 strided views, and 28 x 28 padded pieces in the backward of SE-BN-Inception's
    28x28 global pools, 0.87x its step once gone)."""
    shape = (2, 3, 28, 28)
    layer = make_layer('type: "Pooling" pooling_param { pool: AVE %s }' % param, [shape])
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    (y,), _ = forward(layer, [x])

    def ops(fn, *args):
        return [e.primitive.name for e in jax.make_jaxpr(fn)(*args).eqns]
    forward_ops = ops(lambda x: layer.forward([], [x], None)[0][0], x)
    backward_ops = ops(lambda dy: layer.backward([], [x], [y], None, [dy], (True,))[0][0], y)
    assert forward_ops.count("slice") <= 2 and forward_ops.count("reduce_sum") == 2
    assert backward_ops.count("pad") <= 3
    assert len(backward_ops) < 20, backward_ops


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_propagate_down_false(x64, rng, method):
    layer = make_layer('type: "Pooling" pooling_param { pool: %s kernel_size: 2 }' % method,
                       [(1, 1, 3, 3)])
    x = jnp.asarray(rng.standard_normal((1, 1, 3, 3)))
    (y,), saved = forward(layer, [x])
    assert layer.backward([], [x], [y], saved, [y], (False,)) == ([None], [])


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_float32_keeps_dtype(rng, method):
    shape = (2, 3, 7, 6)
    tops = 'top: "y" top: "mask"' if method == "MAX" else ""
    layer = make_layer('type: "Pooling" %s pooling_param { pool: %s kernel_size: 3 stride: 2 '
                       'pad: 1 }' % (tops, method), [shape], dtype=np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    outs, saved = forward(layer, [x])
    expected, mask = pool_reference(x.astype(np.float64), method, (3, 3), (2, 2), (1, 1))
    assert all(t.dtype == jnp.float32 for t in outs)
    np.testing.assert_allclose(np.asarray(outs[0]), expected, rtol=1e-6, atol=1e-6)
    if method == "MAX":
        np.testing.assert_array_equal(np.asarray(outs[1]), mask)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], outs, saved, [jnp.ones_like(t) for t in outs],
                              (True,))
    assert dx.dtype == jnp.float32 and dx.shape == shape


POOL_ERRORS = [
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", (1, 1, 4, 4),
     "Padding implemented only for average and max pooling"),
    ("kernel_size: 2 pad: 2", (1, 1, 4, 4), "pad \\(2, 2\\) must be smaller than the kernel"),
    ("kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2", (1, 1, 4, 4), "must be smaller than the kernel"),
    ("global_pooling: true kernel_size: 2", (1, 1, 4, 4), "kernel size cannot be specified"),
    ("global_pooling: true stride: 2", (1, 1, 4, 4), "only pad = 0 and stride = 1"),
    ("kernel_size: 2 kernel_h: 2 kernel_w: 2", (1, 1, 4, 4),
     "kernel_size OR kernel_h and kernel_w"),
    ("kernel_h: 2", (1, 1, 4, 4), "kernel_size OR kernel_h and kernel_w"),
    ("stride: 1", (1, 1, 4, 4), "kernel_size OR kernel_h and kernel_w"),
    ("kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1", (1, 1, 4, 4), "pad is pad OR pad_h and pad_w"),
    ("kernel_size: 2 stride_h: 2", (1, 1, 4, 4), "stride is stride OR stride_h and stride_w"),
    ("kernel_size: 2 stride: 0", (1, 1, 4, 4), "stride must be positive"),
    ("kernel_size: 0", (1, 1, 4, 4), "kernel size must be positive"),
    ("kernel_size: 2", (1, 4, 4), "must have 4 axes"),
]


@pytest.mark.parametrize("param,shape,message", POOL_ERRORS)
def test_pooling_setup_errors_name_the_layer(param, shape, message):
    with pytest.raises(LayerSetupError, match="Pooling layer 'pooling': .*%s" % message):
        make_layer('type: "Pooling" pooling_param { %s }' % param, [shape])


def test_pooling_kernel_size_with_one_of_kernel_h_w_is_caffes_kernel_size():
    """Caffe's check refuses kernel_size with both kernel_h and kernel_w, but lets one of
    them through beside kernel_size, and uses kernel_size: so does jcaffe, and says so."""
    from netutil import LogLines
    with LogLines() as logs:
        layer = make_layer('type: "Pooling" pooling_param { kernel_size: 2 kernel_h: 3 }',
                           [(1, 1, 4, 4)])
    assert layer.kernel == (2, 2) and [tuple(t) for t in layer.top_shapes] == [(1, 1, 3, 3)]
    assert "Pooling layer 'pooling': kernel_size 2 is used, its kernel_h 3 is ignored (as in " \
        "Caffe)" in logs.lines


def test_pooling_mask_top_only_for_max():
    make_layer('type: "Pooling" top: "y" top: "m" pooling_param { pool: MAX kernel_size: 2 }',
               [(1, 1, 4, 4)])
    with pytest.raises(LayerSetupError, match="at most 1 top blob"):
        make_layer('type: "Pooling" top: "y" top: "m" pooling_param { pool: AVE kernel_size: 2 }',
                   [(1, 1, 4, 4)])


# -- LRN ---------------------------------------------------------------------------

LRN_CASES = [
    ("local_size: 5", 5, 1.0, 0.75, 1.0),                               # Caffe's defaults
    ("local_size: 3 alpha: 0.5 beta: 0.6 k: 2", 3, 0.5, 0.6, 2.0),
    ("local_size: 1 alpha: 2 beta: 1.5", 1, 2.0, 1.5, 1.0),
    ("local_size: 7 alpha: 0.25", 7, 0.25, 0.75, 1.0),                  # wider than the channels
    ("local_size: 3 alpha: 0.5 beta: 0.5 k: 1.5", 3, 0.5, 0.5, 1.5),     # beta 0.5 and 1:
    ("local_size: 5 alpha: 3 beta: 1 k: 0.5", 5, 3.0, 1.0, 0.5),         # no general power
]


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("param,size,alpha,beta,k", LRN_CASES)
def test_lrn(x64, rng, param, size, alpha, beta, k, region):
    shape = (2, 6, 5, 4)
    layer = make_layer('type: "LRN" lrn_param { norm_region: %s %s }' % (region, param), [shape])
    x = rng.standard_normal(shape)
    (y,), _ = forward(layer, [x])
    as_float32 = [float(np.float32(v)) for v in (alpha, beta, k)]   # the proto stores floats
    expected = lrn_reference(x, size, *as_float32, region)
    assert y.shape == shape == layer.top_shapes[0]
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
    check_backward(layer, [x])


def test_lrn_across_channels_backward_is_caffes_formula(x64, rng):
    shape = (1, 5, 2, 2)
    size, alpha, beta, k = 3, 0.5, 0.75, 2.0
    layer = make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }',
                       [shape])
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    (y,), saved = forward(layer, [x])
    (dx,), _ = layer.backward([], [jnp.asarray(x)], [y], saved, [jnp.asarray(dy)], (True,))
    y = np.asarray(y)
    scale = lrn_scale_reference(x, size, alpha, k, "ACROSS_CHANNELS")
    ratio = dy * y / scale
    expected = np.empty(shape)
    for c in range(5):
        window = ratio[:, max(0, c - 1):c + 2].sum(axis=1)
        expected[:, c] = (dy[:, c] * scale[:, c] ** -beta
                          - 2 * alpha * beta / size * x[:, c] * window)
    np.testing.assert_allclose(np.asarray(dx), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_float32_and_propagate_down_false(rng, region):
    shape = (2, 4, 3, 3)
    layer = make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 norm_region: %s }'
                       % region, [shape], dtype=np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    (y,), saved = forward(layer, [x])
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), lrn_reference(x.astype(np.float64), 3, 0.5, 0.75, 1.0,
                                                            region), rtol=1e-5, atol=1e-6)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], [y], saved, [jnp.ones_like(y)], (True,))
    assert dx.dtype == jnp.float32
    assert layer.backward([], [jnp.asarray(x)], [y], saved, [y], (False,)) == ([None], [])


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_keeps_nothing_for_its_backward_and_computes_the_same(rng, monkeypatch, region):
    """LRN.RECOMPUTE_SCALE: the backward computes the scale again from the bottom, which
    the net keeps anyway, so the forward saves nothing (GoogLeNet, batch 32: Caffe's
    scale_ for norm1 and norm2, about 100 MB kept from each step to the next). The
    diffs are those of the scale kept."""
    from jcaffe.layers.vision import LRN
    shape = (2, 7, 5, 4)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    dxs = {}
    for recompute in (True, False):
        monkeypatch.setattr(LRN, "RECOMPUTE_SCALE", recompute)
        layer = make_layer('type: "LRN" lrn_param { local_size: 5 alpha: 0.5 norm_region: %s }'
                           % region, [shape], dtype=np.float32)
        (y,), saved = forward(layer, [x])
        assert (saved is None) == recompute
        (dxs[recompute],), _ = layer.backward([], [jnp.asarray(x)], [y], saved, [dy], (True,))
    np.testing.assert_allclose(np.asarray(dxs[True]), np.asarray(dxs[False]), rtol=1e-6,
                               atol=1e-7)


@pytest.mark.parametrize("param,shape,message", [
    ("local_size: 4", (1, 4, 3, 3), "local_size must be odd, got 4"),
    ("local_size: 0", (1, 4, 3, 3), "local_size must be odd, got 0"),
    ("local_size: 3", (1, 4, 3), "must have 4 axes"),
])
def test_lrn_setup_errors_name_the_layer(param, shape, message):
    with pytest.raises(LayerSetupError, match="LRN layer 'lrn': .*%s" % message):
        make_layer('type: "LRN" lrn_param { %s }' % param, [shape])


# -- inside a Net --------------------------------------------------------------------

VISION_NET = """
name: "vision"
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 4 dim: 9 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 %(f)s } }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" top: "mask1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 4 kernel_h: 2 kernel_w: 3 dilation: 1 %(f)s } }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2"
  lrn_param { local_size: 3 alpha: 0.5 norm_region: WITHIN_CHANNEL } }
layer { name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool2" top: "ip"
  inner_product_param { num_output: 3 %(f)s } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
""" % {"f": FILLERS}


def test_vision_net_param_diffs_match_jax_grad(tmp_path, x64):
    net = make_net(tmp_path, VISION_NET, dtype=np.float64)
    r = np.random.default_rng(2)
    x, label = r.standard_normal((2, 4, 9, 8)), np.array([0.0, 2.0])
    net.forward(data=x, label=label)
    net.clear_param_diffs()
    net.backward()
    assert net.blobs["pool1"].data.shape == net.blobs["mask1"].data.shape == (2, 6, 4, 4)
    assert net.blobs["pool2"].data.shape == (2, 4, 2, 2)         # ceil, then clipped: 3 -> 2
    names = ["conv1", "norm1", "pool1", "conv2", "norm2", "pool2", "ip"]
    layers = [net.layer_dict[n] for n in names]
    params = {n: [jnp.asarray(b.data) for b in net.params[n]] for n in ("conv1", "conv2", "ip")}

    def loss(params):
        h = jnp.asarray(x)
        for name, layer in zip(names, layers):
            h = layer.forward(params.get(name, []), [h], None)[0][0]
        logp = h - jax.scipy.special.logsumexp(h, axis=1, keepdims=True)
        return -(logp[0, 0] + logp[1, 2]) / 2

    grads = jax.jit(jax.grad(loss))(params)      # jitted: op by op it took 15 s
    for name, diffs in grads.items():
        for blob, g in zip(net.params[name], diffs):
            np.testing.assert_allclose(blob.diff, np.asarray(g), rtol=1e-9, atol=1e-12,
                                       err_msg=name)
