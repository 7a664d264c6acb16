"""Deconvolution, Im2col, SPP, Crop and STOCHASTIC pooling: forward vs numpy loops written from
Caffe's code, Deconvolution as the adjoint of Convolution, backward vs jax.vjp, Caffe's shape
rules and errors, and a net with all of them going forward and backward."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import jcaffe
from gradcheck import check_net, strategies
from jcaffe.errors import LayerSetupError
from jcaffe.proto import caffe_pb2
from layer_testing import check_backward, forward, make_layer, params_of
from netutil import make_net
from test_vision_layers import conv_reference, pool_reference

FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def one(layer, bottoms, key=None):
    tops, _ = forward(layer, bottoms, key)
    return np.asarray(tops[0])


# -- Deconvolution ---------------------------------------------------------------------

def deconv_reference(x, w, b, pad, stride, dilation, group):
    """Caffe's deconvolution as a scatter: each input value adds w * x at o*s - p + k*d."""
    num, cin = x.shape[:2]
    spatial = x.shape[2:]
    kernel = w.shape[2:]
    og = w.shape[1]
    cout = og * group
    n = len(spatial)
    out = [stride[i] * (spatial[i] - 1) + dilation[i] * (kernel[i] - 1) + 1 - 2 * pad[i]
           for i in range(n)]
    y = np.zeros((num, cout) + tuple(out))
    cg = cin // group
    for pos in itertools.product(*[range(s) for s in spatial]):
        for kpos in itertools.product(*[range(k) for k in kernel]):
            at = tuple(pos[i] * stride[i] - pad[i] + kpos[i] * dilation[i] for i in range(n))
            if not all(0 <= at[i] < out[i] for i in range(n)):
                continue
            for g in range(group):
                xv = x[(slice(None), slice(g * cg, (g + 1) * cg)) + pos]          # (num, cg)
                wv = w[(slice(g * cg, (g + 1) * cg), slice(None)) + kpos]         # (cg, og)
                y[(slice(None), slice(g * og, (g + 1) * og)) + at] += xv @ wv
    if b is not None:
        y += b.reshape((-1,) + (1,) * n)
    return y


DECONV_CASES = [
    # (param text, bottom shape, pad, stride, dilation, group)
    ("kernel_size: 3", (2, 3, 4, 5), (0, 0), (1, 1), (1, 1), 1),
    ("kernel_size: 4 stride: 2 pad: 1", (2, 2, 3, 3), (1, 1), (2, 2), (1, 1), 1),
    ("kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 1 pad_h: 1 pad_w: 0", (1, 2, 3, 4),
     (1, 0), (3, 1), (1, 1), 1),
    ("kernel_size: 3 dilation: 2 stride: 2 group: 2", (2, 4, 3, 2), (0, 0), (2, 2), (2, 2), 2),
    ("kernel_size: 2 stride: 2", (2, 3, 5), (0,), (2,), (1,), 1),                   # 1-d
    ("kernel_size: 2 stride: 2 pad: 1 group: 2", (1, 2, 2, 3, 2), (1, 1, 1), (2, 2, 2),
     (1, 1, 1), 2),                                                                    # 3-d
]


@pytest.mark.parametrize("param,shape,pad,stride,dilation,group", DECONV_CASES)
def test_deconvolution_matches_caffe(x64, rng, param, shape, pad, stride, dilation, group):
    bias = len(shape) != 4 or group == 1           # with and without bias among the cases
    snippet = ('type: "Deconvolution" convolution_param { num_output: %d %s bias_term: %s %s }'
               % (2 * group, param, str(bias).lower(), FILLERS))
    layer = make_layer(snippet, [shape])
    w = layer.blobs[0].data
    assert w.shape == (shape[1], 2) + w.shape[2:]                # (C_in, num_output / group, k...)
    x = rng.standard_normal(shape)
    ref = deconv_reference(x, w, layer.blobs[1].data if bias else None, pad, stride, dilation, group)
    assert layer.top_shapes == (ref.shape,)
    np.testing.assert_allclose(one(layer, [x]), ref, rtol=1e-10, atol=1e-12)
    check_backward(layer, [x])


@pytest.mark.parametrize("conv_param,shape,group", [
    ("kernel_size: 3 stride: 2 pad: 1", (2, 3, 7, 5), 1),
    ("kernel_size: 2 stride: 3 dilation: 2", (1, 2, 9, 6), 1),
    ("kernel_h: 3 kernel_w: 1 pad_h: 2 pad_w: 0 stride_h: 1 stride_w: 2 group: 2", (2, 4, 4, 5), 2),
    ("kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 3, 5), 1),
])
def test_deconvolution_is_the_transpose_of_convolution(x64, rng, conv_param, shape, group):
    """<conv_W(x), y> == <x, deconv_W(y)> for the same W (no bias): the adjoint."""
    cout = 2 * group
    conv = make_layer('type: "Convolution" convolution_param { num_output: %d %s bias_term: false '
                      '%s }' % (cout, conv_param, FILLERS), [shape])
    y_shape = conv.top_shapes[0]
    deconv = make_layer('type: "Deconvolution" convolution_param { num_output: %d %s '
                        'bias_term: false %s }' % (shape[1], conv_param, FILLERS), [y_shape])
    assert deconv.blobs[0].shape == conv.blobs[0].shape
    deconv.blobs[0].data[...] = conv.blobs[0].data
    x = rng.standard_normal(shape)
    y = rng.standard_normal(y_shape)
    cx = one(conv, [x])
    dy_full = np.asarray(deconv.forward(params_of(deconv), [jnp.asarray(y)], None)[0][0])
    # the deconvolution's top may be larger than x when the stride does not divide evenly
    dy = dy_full[tuple(slice(0, s) for s in shape)]
    np.testing.assert_allclose(np.vdot(cx, y), np.vdot(x, dy), rtol=1e-10)
    # and convolution's data diff is exactly the deconvolution's forward
    (dx,), _ = conv.backward(params_of(conv), [jnp.asarray(x)], [jnp.asarray(cx)], None,
                             [jnp.asarray(y)], (True,))
    np.testing.assert_allclose(np.asarray(dx), dy, rtol=1e-10, atol=1e-12)


def test_deconvolution_fillers_see_caffes_weight_shape(rng):
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 4 '
                       'group: 3 weight_filler { type: "xavier" } }', [(1, 3, 5, 5)],
                       dtype=np.float32)
    w = layer.blobs[0].data
    assert w.shape == (3, 2, 4, 4) and layer.blobs[1].shape == (6,)
    limit = np.sqrt(3.0 / (2 * 4 * 4))                          # fan_in = count / shape[0]
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.5 * limit
    # a bilinear upsampling kernel (the classic FCN use) doubles a constant image exactly
    up = make_layer('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 4 '
                    'stride: 2 pad: 1 group: 2 bias_term: false weight_filler { type: "bilinear" } }',
                    [(1, 2, 4, 4)])
    y = one(up, [np.ones((1, 2, 4, 4))])
    assert y.shape == (1, 2, 8, 8)
    np.testing.assert_allclose(y[:, :, 1:-1, 1:-1], 1.0, rtol=1e-12)


def test_deconvolution_errors_name_the_layer():
    with pytest.raises(LayerSetupError, match="Deconvolution layer 'deconvolution': output size "
                                              "-1 along spatial axis 0 is not positive"):
        make_layer('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 1 pad: 1 }',
                   [(1, 1, 1, 3)])
    with pytest.raises(LayerSetupError, match="group 2 must divide"):
        make_layer('type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 1 '
                   'group: 2 }', [(1, 2, 3, 3)])
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 2 }',
                       [(1, 3, 3, 3)])
    with pytest.raises(LayerSetupError, match="set up for 3 channels"):
        layer.do_reshape([(1, 4, 3, 3)])


# -- Im2col ----------------------------------------------------------------------------

def im2col_reference(x, kernel, pad, stride, dilation):
    """Caffe's im2col_nd_cpu for one image (C, *spatial) -> (C * K, *out)."""
    channels, spatial = x.shape[0], x.shape[1:]
    n = len(spatial)
    out = [(spatial[i] + 2 * pad[i] - (dilation[i] * (kernel[i] - 1) + 1)) // stride[i] + 1
           for i in range(n)]
    K = int(np.prod(kernel))
    cols = np.zeros((channels * K,) + tuple(out))
    for c in range(channels):
        for k, kpos in enumerate(itertools.product(*[range(v) for v in kernel])):
            for o in itertools.product(*[range(v) for v in out]):
                at = tuple(o[i] * stride[i] - pad[i] + kpos[i] * dilation[i] for i in range(n))
                if all(0 <= at[i] < spatial[i] for i in range(n)):
                    cols[(c * K + k,) + o] = x[(c,) + at]
    return cols


def col2im_reference(cols, x_shape, kernel, pad, stride, dilation):
    channels, spatial = x_shape[0], x_shape[1:]
    n = len(spatial)
    K = int(np.prod(kernel))
    out = cols.shape[1:]
    dx = np.zeros(x_shape)
    for c in range(channels):
        for k, kpos in enumerate(itertools.product(*[range(v) for v in kernel])):
            for o in itertools.product(*[range(v) for v in out]):
                at = tuple(o[i] * stride[i] - pad[i] + kpos[i] * dilation[i] for i in range(n))
                if all(0 <= at[i] < spatial[i] for i in range(n)):
                    dx[(c,) + at] += cols[(c * K + k,) + o]
    return dx


IM2COL_CASES = [
    ("kernel_size: 3", (2, 2, 4, 5), (3, 3), (0, 0), (1, 1), (1, 1)),
    ("kernel_size: 3 pad: 1 stride: 2", (1, 3, 5, 6), (3, 3), (1, 1), (2, 2), (1, 1)),
    ("kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2 dilation: 2",
     (2, 1, 5, 7), (2, 3), (1, 0), (1, 2), (2, 2)),
    ("kernel_size: 2 stride: 2", (2, 2, 5), (2,), (0,), (2,), (1,)),
    ("kernel_size: 2 pad: 1 dilation: 2", (1, 2, 3, 3, 4), (2, 2, 2), (1, 1, 1), (1, 1, 1),
     (2, 2, 2)),
]


@pytest.mark.parametrize("param,shape,kernel,pad,stride,dilation", IM2COL_CASES)
def test_im2col_matches_caffes_column_order(x64, rng, param, shape, kernel, pad, stride, dilation):
    layer = make_layer('type: "Im2col" convolution_param { %s }' % param, [shape])
    x = rng.standard_normal(shape)
    ref = np.stack([im2col_reference(xi, kernel, pad, stride, dilation) for xi in x])
    assert layer.top_shapes == (ref.shape,)
    np.testing.assert_array_equal(one(layer, [x]), ref)       # a copy: exact
    dy = rng.standard_normal(ref.shape)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], None, None, [jnp.asarray(dy)], (True,))
    ref_dx = np.stack([col2im_reference(d, shape[1:], kernel, pad, stride, dilation) for d in dy])
    np.testing.assert_allclose(np.asarray(dx), ref_dx, rtol=1e-12, atol=1e-14)
    check_backward(layer, [x])


def test_im2col_times_weights_is_convolution(x64, rng):
    """The column order is the one Convolution's weights use: W (O, C*K) @ cols == conv."""
    conv_param = "kernel_size: 3 stride: 2 pad: 1 dilation: 1"
    x = rng.standard_normal((2, 3, 6, 5))
    cols = one(make_layer('type: "Im2col" convolution_param { %s }' % conv_param, [x.shape]), [x])
    w = rng.standard_normal((4, 3, 3, 3))
    y = np.einsum("ok,nkhw->nohw", w.reshape(4, -1), cols)
    np.testing.assert_allclose(y, conv_reference(x, w, None, (1, 1), (2, 2), (1, 1), 1), rtol=1e-10)


def test_im2col_axis_keeps_leading_axes_and_nan_stays_put(rng):
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 2 axis: 2 }',
                       [(2, 3, 2, 4, 4)], dtype=np.float32)
    assert layer.top_shapes == ((2, 3, 8, 3, 3),)
    x = np.ones((2, 3, 2, 4, 4), np.float32)
    x[0, 0, 0, 0, 0] = np.nan
    y = one(layer, [x])
    assert np.isnan(y).sum() == 1                              # only the one column reading it


def test_im2col_needs_a_kernel():
    with pytest.raises(LayerSetupError, match="Im2col layer 'im2col': kernel_size must be given"):
        make_layer('type: "Im2col" convolution_param { stride: 2 }', [(1, 1, 4, 4)])
    with pytest.raises(LayerSetupError, match="kernel_h & kernel_w can only be used for 2-d"):
        make_layer('type: "Im2col" convolution_param { kernel_h: 2 kernel_w: 2 }', [(1, 1, 4)])


# -- SPP ---------------------------------------------------------------------------------

def spp_level_params(size, level):
    bins = 2 ** level
    kernel = int(np.ceil(size / bins))
    return kernel, (kernel * bins - size + 1) // 2


@pytest.mark.parametrize("pool,height,hw", [("MAX", 1, (5, 3)), ("AVE", 1, (4, 4)),
                                             ("AVE", 2, (6, 7)),
                                             pytest.param("MAX", 3, (8, 6), marks=pytest.mark.slow),
                                             ("AVE", 3, (13, 9))])
def test_spp_matches_caffe(x64, rng, pool, height, hw):
    shape = (2, 3) + hw
    layer = make_layer('type: "SPP" spp_param { pyramid_height: %d pool: %s }' % (height, pool),
                       [shape])
    x = rng.standard_normal(shape)
    parts = []
    for level in range(height):
        (kh, ph), (kw, pw) = spp_level_params(hw[0], level), spp_level_params(hw[1], level)
        inner = layer.levels[level].p
        assert (inner.kernel_h, inner.kernel_w, inner.pad_h, inner.pad_w, inner.stride_h,
                inner.stride_w) == (kh, kw, ph, pw, kh, kw)
        top, _ = pool_reference(x, pool, (kh, kw), (kh, kw), (ph, pw))
        parts.append(top)
    ref = parts[0] if height == 1 else np.concatenate([p.reshape(2, -1) for p in parts], axis=1)
    assert layer.top_shapes == (ref.shape,)
    np.testing.assert_allclose(one(layer, [x]), ref, rtol=1e-12)
    check_backward(layer, [x])


def test_spp_default_shape_and_errors():
    layer = make_layer('type: "SPP" spp_param { pyramid_height: 3 }', [(2, 4, 16, 16)])
    assert layer.top_shapes == ((2, 4 * (1 + 4 + 16)),)
    with pytest.raises(LayerSetupError, match="SPP layer 'spp': pyramid level 2 .*pad 2x0 for a "
                                              "5x4 input.*must be smaller than the kernel"):
        make_layer('type: "SPP" spp_param { pyramid_height: 3 }', [(1, 1, 5, 4)])
    with pytest.raises(LayerSetupError, match="Input must have 4 axes"):
        make_layer('type: "SPP" spp_param { pyramid_height: 2 }', [(1, 4, 4)])
    with pytest.raises(LayerSetupError, match="pyramid_height must be at least 1"):
        make_layer('type: "SPP"', [(1, 1, 4, 4)])


# -- Crop --------------------------------------------------------------------------------

@pytest.mark.parametrize("param,shapes,index", [
    ("", [(2, 3, 6, 5), (2, 3, 4, 2)], np.s_[:, :, 0:4, 0:2]),                       # axis 2
    ("axis: 1 offset: 1", [(2, 3, 6, 5), (9, 2, 4, 2)], np.s_[:, 1:3, 1:5, 1:3]),
    ("axis: -2 offset: 2 offset: 1", [(2, 3, 6, 5), (1, 1, 3, 4)], np.s_[:, :, 2:5, 1:5]),
    ("axis: 0 offset: 1 offset: 0 offset: 2", [(3, 2, 5), (2, 2, 3)], np.s_[1:3, 0:2, 2:5]),
])
def test_crop_matches_caffe(x64, rng, param, shapes, index):
    layer = make_layer('type: "Crop" crop_param { %s }' % param, shapes)
    x, ref = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    expected = x[index]
    assert layer.top_shapes == (expected.shape,)
    np.testing.assert_array_equal(one(layer, [x, ref]), expected)
    dy = rng.standard_normal(expected.shape)
    (dx, dref), _ = layer.backward([], [jnp.asarray(x), jnp.asarray(ref)], None, None,
                                   [jnp.asarray(dy)], (True, True))
    want = np.zeros_like(x)
    want[index] = dy
    np.testing.assert_array_equal(np.asarray(dx), want)
    np.testing.assert_array_equal(np.asarray(dref), 0)
    check_backward(layer, [x, ref], propagate_down=[True, False])


def test_crop_errors_name_the_layer():
    with pytest.raises(LayerSetupError, match="Crop layer 'crop': number of offset values .* 2 "
                                              "offsets given"):
        make_layer('type: "Crop" crop_param { axis: 1 offset: 1 offset: 2 }', [(2, 3, 6, 5), (2, 3, 4, 4)])
    with pytest.raises(LayerSetupError, match="the crop for dimension 3 is out-of-bounds with size "
                                              "4 and offset 2"):
        make_layer('type: "Crop" crop_param { offset: 2 }', [(2, 3, 6, 5), (2, 3, 4, 4)])
    with pytest.raises(LayerSetupError, match="exactly 2 bottom"):
        make_layer('type: "Crop"', [(2, 3, 6, 5)])


# -- Pooling STOCHASTIC --------------------------------------------------------------------

STO = 'type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: %d stride: %d }'


def sto_test_reference(x, k, s):
    N, C, H, W = x.shape
    PH = int(np.ceil((H - k) / s)) + 1
    PW = int(np.ceil((W - k) / s)) + 1
    y = np.zeros((N, C, PH, PW))
    for n, c, i, j in itertools.product(range(N), range(C), range(PH), range(PW)):
        win = x[n, c, i * s:min(i * s + k, H), j * s:min(j * s + k, W)]
        y[n, c, i, j] = (win * win).sum() / win.sum() if win.sum() > 0 else 0
    return y


def test_stochastic_pooling_test_phase_is_the_weighted_average(x64, rng):
    x = rng.uniform(0, 1, (2, 2, 7, 6))
    x[0, 0, :3, :3] = 0                                          # an all-zero window -> 0
    layer = make_layer(STO % (3, 2), [x.shape], phase=caffe_pb2.TEST)
    assert not layer.needs_rng
    ref = sto_test_reference(x, 3, 2)
    assert layer.top_shapes == (ref.shape,)
    np.testing.assert_allclose(one(layer, [x]), ref, rtol=1e-12)
    check_backward(layer, [x])


def test_stochastic_pooling_train_samples_in_proportion(x64):
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    layer = make_layer(STO % (2, 2), [x.shape])
    assert layer.needs_rng and layer.top_shapes == ((1, 1, 1, 1),)
    run = jax.jit(lambda key: layer.forward([], [jnp.asarray(x)], key)[:2])
    picks = []
    for i in range(2000):
        (top,), index = run(jax.random.PRNGKey(i))
        assert float(top[0, 0, 0, 0]) == x.ravel()[int(index[0, 0, 0, 0])]
        picks.append(int(index[0, 0, 0, 0]))
    freq = np.bincount(picks, minlength=4) / len(picks)
    np.testing.assert_allclose(freq, x.ravel() / x.sum(), atol=0.04)


def test_stochastic_pooling_train_backward_routes_to_the_sample(x64, rng):
    x = rng.uniform(0.1, 1, (2, 3, 5, 7))
    layer = make_layer(STO % (3, 2), [x.shape])
    key = jax.random.PRNGKey(3)
    (top,), index = layer.forward([], [jnp.asarray(x)], key)
    index = np.asarray(index)
    assert index.min() >= 0
    np.testing.assert_array_equal(np.asarray(top), np.take_along_axis(
        x.reshape(2, 3, -1), index.reshape(2, 3, -1), axis=2).reshape(index.shape))
    dy = rng.standard_normal(index.shape)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], [top], jnp.asarray(index), [jnp.asarray(dy)],
                              (True,))
    want = np.zeros((2, 3, 35))
    for n, c in itertools.product(range(2), range(3)):
        np.add.at(want[n, c], index[n, c].ravel(), dy[n, c].ravel())
    np.testing.assert_allclose(np.asarray(dx), want.reshape(x.shape), rtol=1e-12)
    # each sampled position lies in its own window
    PH, PW = index.shape[2:]
    h, w = index // 7, index % 7
    assert np.all((h >= np.arange(PH)[:, None] * 2) & (h < np.arange(PH)[:, None] * 2 + 3))
    assert np.all((w >= np.arange(PW) * 2) & (w < np.arange(PW) * 2 + 3))


def test_stochastic_pooling_rules():
    with pytest.raises(LayerSetupError, match="Pooling layer 'pooling': Padding implemented only"):
        make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }',
                   [(1, 1, 4, 4)])
    with pytest.raises(LayerSetupError, match="at most 1 top"):
        make_layer('type: "Pooling" top: "a" top: "b" pooling_param { pool: STOCHASTIC '
                   'kernel_size: 2 }', [(1, 1, 4, 4)])
    layer = make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC global_pooling: true }',
                       [(1, 2, 3, 3)])
    assert layer.top_shapes == ((1, 2, 1, 1),) and type(layer).__name__ == "StochasticPooling"
    assert type(make_layer('type: "Pooling" pooling_param { kernel_size: 2 }',
                           [(1, 1, 4, 4)])).__name__ == "Pooling"


@pytest.mark.parametrize("phase", [pytest.param("TRAIN", marks=pytest.mark.slow), "TEST"])
def test_stochastic_pooling_gradcheck_property(phase):
    want = getattr(caffe_pb2, phase)

    @settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(strategies.SPECS["Pooling/STOCHASTIC"].filter(lambda c: c.check_kwargs["phase"] == want))
    def check(case):
        report = strategies.check_case(case)
        assert report.ok, "%s\n%s" % (case, report)
    check()


# -- in a net ------------------------------------------------------------------------------

NET = """
name: "vision_catalog"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 2 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "pool" top: "up"
  convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 2
    weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "crop" type: "Crop" bottom: "data" bottom: "up" top: "crop"
  crop_param { axis: 2 offset: 1 } }
layer { name: "sum" type: "Concat" bottom: "crop" bottom: "up" top: "both" }
layer { name: "cols" type: "Im2col" bottom: "both" top: "cols"
  convolution_param { kernel_size: 2 stride: 2 } }
layer { name: "spp" type: "SPP" bottom: "cols" top: "spp" spp_param { pyramid_height: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "spp" top: "score"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def test_vision_layers_in_a_net(tmp_path, rng):
    jcaffe.set_random_seed(5)
    net = make_net(tmp_path, NET)
    assert net.blobs["up"].shape == (2, 2, 6, 6)
    assert net.blobs["crop"].shape == (2, 2, 6, 6)
    assert net.blobs["cols"].shape == (2, 16, 3, 3)
    assert net.blobs["spp"].shape == (2, 16 * 5)
    net.blobs["data"].data[...] = rng.standard_normal((2, 2, 8, 8))
    net.blobs["label"].data[...] = [0, 2]
    first = float(net.forward()["loss"])
    pool1 = net.blobs["pool"].data.copy()
    net.backward()
    for layer in ("conv", "up", "ip"):
        d = net.params[layer][0].diff
        assert np.any(d) and np.all(np.isfinite(d)), layer
    # TRAIN: stochastic pooling draws new samples on each forward (the net's RNG)
    draws = [net.blobs["pool"].data.copy() for _ in range(4) if net.forward() is not None]
    assert any(not np.array_equal(pool1, d) for d in draws)
    assert np.isfinite(first)
    test_net = make_net(tmp_path, NET, phase=jcaffe.TEST)
    test_net.blobs["data"].data[...] = net.blobs["data"].data
    test_net.blobs["label"].data[...] = [0, 2]
    a = test_net.forward()["loss"].copy()
    b = test_net.forward()["loss"].copy()
    assert a == b                                              # TEST: deterministic


def test_vision_net_gradient_check(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    report = check_net(str(path), jcaffe.TEST, samples=4,
                       inputs={"data": np.random.default_rng(1).uniform(0.1, 1, (2, 2, 8, 8)),
                               "label": np.array([0.0, 2.0])})
    assert report.ok, str(report)
