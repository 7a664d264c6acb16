"""The convolution formulations the engine picks per backend/shape agree with plain
``lax.conv_general_dilated`` (and its jax.vjp) in float64, forward and backward.

On CPU a grouped convolution is computed as one ungrouped convolution per group
(XLA's CPU grouped kernels are several times slower), or per block of narrow groups
with zero weights between them (conv_blocks), and the weight gradient (and
the forward / data gradient of short-column shapes) as im2col + GEMM in batch chunks
(conv_gemm); elsewhere the grouped XLA call is used. Every path is checked here on
every machine by forcing the choice.
"""
import re
import sys

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jcaffe.layers.vision import Convolution
from layer_testing import check_backward, make_layer, params_of
from netutil import ynn_dots

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'

# (convolution_param text, bottom shape, num spatial axes) -- grouped, strided, dilated,
# padded, 1-d and 3-d, and CaffeNet's conv1/conv2 patterns at a small size.
CASES = [
    ("num_output: 4 kernel_size: 3 pad: 1 group: 2", (2, 4, 6, 5)),
    ("num_output: 6 kernel_size: 2 stride: 2 pad: 1 group: 3 dilation: 2", (2, 6, 7, 6)),
    ("num_output: 4 kernel_size: 5 stride: 3 group: 1", (2, 3, 13, 11)),          # conv1-like
    ("num_output: 8 kernel_size: 5 pad: 2 group: 2", (2, 8, 7, 7)),               # conv2-like
    ("num_output: 4 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 group: 4",
     (1, 4, 6, 5)),
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2", (2, 4, 9)),          # 1-d
    # stride phases of the data gradient: taps every 2nd (dilation 3, stride 2), and a
    # kernel shorter than the stride (phases no tap reaches)
    ("num_output: 3 kernel_size: 3 stride: 2 dilation: 3 pad: 2", (2, 2, 13, 12)),
    ("num_output: 2 kernel_size: 2 stride: 3 pad: 1", (1, 3, 10, 9)),
    ("num_output: 4 kernel_size: 2 kernel_size: 1 kernel_size: 3 pad: 1 stride: 2 group: 2",
     (1, 4, 4, 5, 6)),                                                            # 3-d
    # dilated at stride 1 (conv_gemm's kernel-rows data gradient shifts by offset x
    # dilation): square grouped, and a rectangular kernel
    ("num_output: 4 kernel_size: 3 pad: 2 dilation: 2 group: 2", (2, 4, 7, 6)),
    ("num_output: 3 kernel_h: 2 kernel_w: 3 pad_w: 1 dilation: 2", (2, 2, 6, 7)),
]
# A strided kernel with more offsets than conv_gemm.COL2IM_MAX_OFFSETS (17x17 stride 8,
# FCN's upsampling form; 2-d and a 3-d one): col2im by whole taps.
MANY_OFFSETS = [
    ("num_output: 2 kernel_size: 17 stride: 8 pad: 3", (1, 2, 36, 35)),
    ("num_output: 2 kernel_size: 7 stride: 3 pad: 1", (1, 2, 10, 11, 9)),
]
CASES += MANY_OFFSETS
# 1x1 kernels without padding (conv_gemm's pointwise path): plain, strided past the
# last row, grouped 1-d, dilated (no effect), 3-d
POINTWISE = [
    ("num_output: 3 kernel_size: 1", (2, 4, 5, 6)),
    ("num_output: 4 kernel_size: 1 stride: 2 group: 2", (2, 6, 7, 6)),
    ("num_output: 6 kernel_size: 1 stride: 3 group: 3", (2, 3, 11)),
    ("num_output: 2 dilation: 2 stride_h: 2 stride_w: 1 kernel_h: 1 kernel_w: 1",
     (1, 2, 5, 4)),
    ("num_output: 2 kernel_size: 1 stride: 2", (1, 3, 3, 4, 5)),
    # weights bigger than dy and dx together (FCN's fc7): the data gradient as dy^T W
    ("num_output: 16 kernel_size: 1", (1, 12, 2, 2)),
    ("num_output: 16 kernel_size: 1 stride: 2 group: 2", (1, 16, 2, 3)),
]
CASES += POINTWISE


def _layer(param, shape):
    return make_layer('type: "Convolution" convolution_param { %s %s }' % (param, FILLERS),
                      [shape])


def _plain(layer, x, w, b):
    """The reference: one grouped lax.conv_general_dilated, as written by hand."""
    n = layer.num_spatial
    y = lax.conv_general_dilated(x, w, layer.stride, [(p, p) for p in layer.pad],
                                 rhs_dilation=layer.dilation, feature_group_count=layer.group)
    return y + b.reshape((-1,) + (1,) * n)


# Depthwise (one input channel per group): conv_depthwise's shifted slices, with one
# or more outputs per channel, strided, dilated, rectangular, 1-d and 3-d, a kernel
# shorter than the stride, dilation 3 at stride 2 (phases every second tap).
DEPTHWISE = [
    ("num_output: 4 kernel_size: 3 pad: 1 group: 4", (2, 4, 6, 5)),                # MobileNet's
    ("num_output: 3 kernel_size: 3 pad: 1 stride: 2 group: 3", (2, 3, 7, 8)),
    ("num_output: 6 kernel_size: 3 stride: 2 dilation: 2 pad: 1 group: 3", (2, 3, 9, 8)),
    ("num_output: 4 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 group: 4",
     (1, 4, 6, 5)),
    ("num_output: 6 kernel_size: 3 pad: 1 stride: 2 group: 2", (2, 2, 9)),          # 1-d, m = 3
    ("num_output: 2 kernel_size: 2 kernel_size: 1 kernel_size: 3 pad: 1 stride: 2 group: 2",
     (1, 2, 4, 5, 6)),                                                            # 3-d
    ("num_output: 3 kernel_size: 2 stride: 3 pad: 1 group: 3", (1, 3, 10, 9)),
    ("num_output: 2 kernel_size: 3 stride: 2 dilation: 3 pad: 2 group: 2", (2, 2, 13, 12)),
]
# Narrow groups split into blocks of groups (conv_blocks; at most 4 channels a block
# below): two blocks of two groups, strided blocks of two groups with two outputs per
# channel, and (in CASES) whole convolutions as one block.
BLOCKS = [
    ("num_output: 8 kernel_size: 3 pad: 1 group: 4", (2, 8, 6, 5)),
    ("num_output: 12 kernel_size: 3 stride: 2 pad: 1 group: 6", (2, 6, 7, 8)),
    ("num_output: 8 kernel_size: 2 stride: 2 dilation: 2 group: 4", (1, 8, 9)),       # 1-d
]
# name -> (one convolution per piece, im2col + GEMM, depthwise slices, channels a block)
FORMULATIONS = {"per-group": (True, False, False, 1), "blocks": (True, False, False, 4),
                "grouped": (False, False, False, 1), "gemm": (False, True, False, 1),
                "depthwise": (False, False, True, 1), "rows-as-channels": (False, False, False, 1)}


def _grouped(param):
    return int(re.search(r"group: (\d+)", param).group(1)) > 1 if "group:" in param else False


def _rows_fold(param, shape):
    """Whether the rows-as-channels forward applies: ungrouped 2-d, kernel height > 1."""
    layer = _layer(param, shape)
    return layer.group == 1 and layer.num_spatial == 2 and layer.kernel[0] > 1


# per-group and blocks split only grouped convolutions: on the others they are "grouped"
@pytest.mark.parametrize("formulation,param,shape", [
    (f, p, s) for f in FORMULATIONS
    for p, s in {"depthwise": DEPTHWISE, "blocks": CASES + BLOCKS}.get(f, CASES)
    if (f not in ("per-group", "blocks") or _grouped(p))
    and (f != "rows-as-channels" or _rows_fold(p, s))])
def test_formulation_matches_lax_conv_forward_and_backward(x64, rng, monkeypatch, param, shape,
                                                           formulation):
    layer = _layer(param, shape)
    split, gemm, depthwise, block_channels = FORMULATIONS[formulation]
    assert not depthwise or layer.channels == layer.group > 1
    monkeypatch.setattr(Convolution, "_split_groups", lambda self: split and self.group > 1)
    monkeypatch.setattr(Convolution, "SPLIT_BLOCK_CHANNELS", block_channels)
    monkeypatch.setattr(Convolution, "_gemm", lambda self, which, cg, macs, **_: gemm)
    monkeypatch.setattr(Convolution, "_depthwise", lambda self, cg: depthwise)
    rows = formulation == "rows-as-channels"      # (the forward; any channel count here)
    monkeypatch.setattr(Convolution, "_rows_as_channels", lambda self, cg: rows)
    x = jnp.asarray(rng.standard_normal(shape))
    w, b = params_of(layer)
    # jitted: the GEMM path is dozens of small ops, slow to dispatch one by one
    (y,), _ = jax.jit(lambda w, b, x: layer.forward([w, b], [x], None))(w, b, x)
    ref, vjp = jax.vjp(lambda x, w, b: _plain(layer, x, w, b), x, w, b)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-10, atol=1e-10)
    dy = jnp.asarray(rng.standard_normal(ref.shape))
    rx, rw, rb = vjp(dy)
    (dx,), (dw, db) = jax.jit(lambda w, b, x, y, dy: layer.backward(
        [w, b], [x], [y], None, [dy], (True,)))(w, b, x, y, dy)
    for got, want, what in ((dx, rx, "dx"), (dw, rw, "dw"), (db, rb, "db")):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-10,
                                   err_msg=what)
    # and jax.vjp of the formulation's own forward (layer_testing.check_backward's
    # comparison, jitted: run op by op, the GEMM path's forward and backward took
    # about a third of this test's time)
    own = jax.jit(lambda w, b, x, dy: jax.vjp(
        lambda x, w, b: layer.forward([w, b], [x], None)[0][0], x, w, b)[1](dy))(w, b, x, dy)
    for got, want, what in zip((dx, dw, db), own, ("dx", "dw", "db")):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-8,
                                   err_msg=what + " vs vjp of the formulation's forward")


def test_rows_as_channels_choice(monkeypatch):
    """On CPU, where convolutions run on XLA's own kernels, the XLA forward folds the
    kernel rows into the channels for ungrouped 2-d maps at stride 1 of at most
    ROWS_AS_CHANNELS_MAX input channels (CIFAR-10's conv1: 3) with a kernel taller than
    one row (not CaffeNet's conv1, stride 4); and the layer's XLA forward takes it."""
    from jcaffe import xla_options
    cifar = _layer("num_output: 8 kernel_size: 5 pad: 2", (2, 3, 8, 8))
    monkeypatch.setattr(xla_options, "own_convolutions", lambda: False)
    assert not cifar._rows_as_channels(3)
    monkeypatch.setattr(xla_options, "own_convolutions", lambda: True)
    cpu = jax.default_backend() == "cpu"
    limit = Convolution.ROWS_AS_CHANNELS_MAX
    assert cifar._rows_as_channels(3) == cpu and cifar._rows_as_channels(limit) == cpu
    assert not cifar._rows_as_channels(limit + 1)
    assert not _layer("num_output: 4 kernel_size: 3 group: 2", (1, 4, 5, 5))._rows_as_channels(2)
    assert not _layer("num_output: 4 kernel_h: 1 kernel_w: 3", (1, 3, 5, 5))._rows_as_channels(3)
    assert not _layer("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 9))._rows_as_channels(3)
    caffenet_conv1 = _layer("num_output: 4 kernel_size: 11 stride: 4", (1, 3, 15, 15))
    assert not caffenet_conv1._rows_as_channels(3)
    vision = sys.modules[Convolution.__module__]
    calls = []
    monkeypatch.setattr(vision, "_forward_rows_as_channels",
                        lambda *a: calls.append(a[2]) or vision.lax.conv_general_dilated(
                            a[0], a[1], (1, 1), [(2, 2)] * 2))
    monkeypatch.setattr(Convolution, "_gemm", lambda self, which, cg, macs, **_: False)
    w, b = params_of(cifar)
    cifar.forward([w, b], [jnp.zeros((2, 3, 8, 8), jnp.float32)], None)
    assert calls == ([cifar.geometry()] if cpu else [])


def test_cpu_splits_groups_and_keeps_single_group_convolutions(x64):
    grouped = _layer("num_output: 4 kernel_size: 3 group: 2", (1, 4, 5, 5))
    single = _layer("num_output: 4 kernel_size: 3", (1, 4, 5, 5))
    assert not single._split_groups()
    assert grouped._split_groups() == (jax.default_backend() == "cpu")


def test_groups_per_block():
    """Blocks of consecutive groups at most SPLIT_BLOCK_CHANNELS (24) channels wide, in or
    out, whole divisors of the groups; groups that wide or wider stay one a piece."""
    from jcaffe.layers import conv_blocks
    for param, shape, blocks in [
            ("num_output: 128 kernel_size: 3 pad: 1 group: 32", (1, 128, 5, 5), 4),  # ResNeXt
            ("num_output: 256 kernel_size: 3 pad: 1 group: 32", (1, 256, 5, 5), 2),
            ("num_output: 512 kernel_size: 3 pad: 1 group: 32", (1, 512, 5, 5), 1),
            ("num_output: 96 kernel_size: 3 pad: 1 group: 32", (1, 96, 5, 5), 8),    # DPN-92
            ("num_output: 192 kernel_size: 3 pad: 1 group: 32", (1, 192, 5, 5), 4),
            ("num_output: 384 kernel_size: 3 pad: 1 group: 32", (1, 384, 5, 5), 2),
            ("num_output: 768 kernel_size: 3 pad: 1 group: 32", (1, 768, 5, 5), 1),
            ("num_output: 63 kernel_size: 3 group: 3", (1, 6, 5, 5), 1),             # 21 out
            ("num_output: 6 kernel_size: 3 group: 3", (1, 30, 5, 5), 1),             # 10 in
            ("num_output: 12 kernel_size: 3 group: 6", (1, 12, 5, 5), 6),
            ("num_output: 20 kernel_size: 3 group: 5", (1, 10, 5, 5), 5),            # 20 wide
            ("num_output: 35 kernel_size: 3 group: 5", (1, 10, 5, 5), 1),            # 5 prime
            ("num_output: 256 kernel_size: 5 pad: 2 group: 2", (1, 96, 5, 5), 1)]:   # CaffeNet
        assert _layer(param, shape)._groups_per_block() == blocks, param
    assert conv_blocks.groups_per_block(12, 2, 3, 9) == 3


def test_block_diagonal_keeps_a_non_finite_weight_in_its_group(x64):
    """Zeros between the groups of a block are selected, not multiplied in: an inf or NaN
    weight stays in its own group's block (and own_groups takes each group back)."""
    from jcaffe.layers import conv_blocks
    w = np.arange(4 * 2 * 3, dtype=np.float64).reshape(4, 2, 3) + 1       # 2 groups, 1-d k
    w[0, 1, 2], w[3, 0, 0] = np.inf, np.nan
    wb = np.asarray(conv_blocks.block_diagonal(jnp.asarray(w), 2, 2))
    assert wb.shape == (4, 4, 3)
    np.testing.assert_array_equal(wb[:2, :2], w[:2])
    np.testing.assert_array_equal(wb[2:, 2:], w[2:])
    assert not wb[:2, 2:].any() and not wb[2:, :2].any()
    np.testing.assert_array_equal(np.asarray(conv_blocks.own_groups(jnp.asarray(wb), 2, 2)), w)


def test_depthwise_choice():
    """On CPU every convolution with one input channel per group, more than one group and
    at most MAX_TAPS kernel offsets takes conv_depthwise's form; a single group with one
    channel (LeNet's conv1), two channels per group and larger kernels keep theirs."""
    from jcaffe.layers import conv_depthwise
    cpu = jax.default_backend() == "cpu"
    for param, shape, depthwise in [
            ("num_output: 8 kernel_size: 3 pad: 1 group: 8", (1, 8, 5, 5), cpu),
            ("num_output: 16 kernel_size: 3 stride: 2 group: 8", (1, 8, 5, 5), cpu),
            ("num_output: 4 kernel_size: 8 group: 4", (1, 4, 9, 9), cpu),               # 64 taps
            ("num_output: 4 kernel_size: 9 group: 4", (1, 4, 9, 9), False),             # 81
            ("num_output: 20 kernel_size: 5", (1, 1, 9, 9), False),
            ("num_output: 4 kernel_size: 3 group: 2", (1, 4, 5, 5), False)]:
        layer = _layer(param, shape)
        assert layer._depthwise(layer.channels // layer.group) == depthwise, param
    assert conv_depthwise.MAX_TAPS == 64


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation")
def test_depthwise_maps_compile_to_fused_loops_without_convolutions(x64):
    """MobileNet's 3x3 depthwise layer (32 channels, one per group): forward and backward
    compile to no convolution (XLA's grouped one ran the forward and data gradient
    15-50x slower; one per group compiled 32 of each map), and the weight gradient is
    one reduction reading x and dy once for all 9 offsets (one per offset read them 9
    times: 3-7x slower)."""
    layer = _layer("num_output: 32 kernel_size: 3 pad: 1 stride: 2 group: 32", (2, 32, 9, 9))
    w, b = params_of(layer)
    x = jnp.ones((2, 32, 9, 9))
    dy = jnp.ones((2, 32, 5, 5))
    step = jax.jit(lambda w, b, x, dy: layer.backward(
        [w, b], [x], layer.forward([w, b], [x], None)[0], None, [dy], (True,)))
    hlo = step.lower(w, b, x, dy).compile().as_text()
    assert " convolution(" not in hlo
    reduces = [line for line in hlo.splitlines() if " reduce(" in line and "f64[32,1]" in line]
    assert len(reduces) == 1, "\n".join(reduces)
    # The data gradient pads dy once and slices it per offset: a pad per offset made
    # XLA keep nine padded copies of dy in MobileNet's step (the solver's update probe
    # is a second reader of each).
    from jcaffe.layers import conv_depthwise
    jaxpr = jax.make_jaxpr(lambda dy, w: conv_depthwise.data_diff(dy, w, 32, layer.geometry()))(
        dy, w)
    assert [e.primitive.name for e in _equations(jaxpr.jaxpr)].count("pad") == 1


@pytest.mark.parametrize("kernel,stride,pad,size", [
    ((17, 16), (8, 8), (3, 0), (36, 35)), ((5, 4), (2, 3), (1, 2), (9, 11)),
    ((2, 2), (3, 3), (0, 0), (8, 8)),                   # phases no tap reaches
    ((6,), (3,), (2,), (13,)), ((4, 5, 2), (2, 2, 1), (1, 0, 1), (7, 8, 3))])
def test_col2im_by_taps_matches_by_offsets(x64, rng, kernel, stride, pad, size):
    """col2im's two sums (per kernel offset, below COL2IM_MAX_OFFSETS; per whole tap,
    above it) add every column entry back to the same input position."""
    from jcaffe.layers import conv_gemm
    out = tuple((i + 2 * p - k) // s + 1 for i, p, k, s in zip(size, pad, kernel, stride))
    geo = conv_gemm.Geometry(kernel, stride, pad, (1,) * len(kernel), size, out)
    dcols = jnp.asarray(rng.standard_normal((3, int(np.prod(kernel)), 2) + out))
    by_taps = conv_gemm._col2im_by_taps(dcols, geo)
    offsets = [e.primitive.name for e in _equations(
        jax.make_jaxpr(lambda d: conv_gemm.col2im(d, geo))(dcols).jaxpr)].count("pad")
    limit = conv_gemm.COL2IM_MAX_OFFSETS
    assert (offsets >= int(np.prod(kernel))) == (int(np.prod(kernel)) <= limit)
    conv_gemm.COL2IM_MAX_OFFSETS = 10 ** 9
    try:
        by_offsets = conv_gemm.col2im(dcols, geo)
    finally:
        conv_gemm.COL2IM_MAX_OFFSETS = limit
    np.testing.assert_array_equal(np.asarray(by_taps), np.asarray(by_offsets))


def test_many_offsets_data_gradient_compiles_by_taps(x64):
    """FCN-32s's upsampling (Deconvolution 21 -> 21, 64x64 kernel, stride 32): its
    forward, the virtual convolution's data gradient, goes to GEMM at any size and
    col2im sums 4 taps, not 4096 offsets (20 s of compile) nor 1024 phase convolutions."""
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 21 '
                       'kernel_size: 64 stride: 32 bias_term: false }', [(1, 21, 2, 2)])
    assert layer._many_phases()
    assert layer._gemm("data", 21, 1) == (jax.default_backend() == "cpu")
    w, = params_of(layer)
    x = jnp.ones((1, 21, 2, 2))
    jaxpr = jax.make_jaxpr(lambda w, x: layer.forward([w], [x], None)[0])(w, x)
    names = [e.primitive.name for e in _equations(jaxpr.jaxpr)]
    if jax.default_backend() == "cpu":
        assert names.count("pad") <= 8 and "conv_general_dilated" not in names, names


@pytest.mark.parametrize("param,shape", CASES[:4])
def test_gemm_batch_chunks_agree_with_one_chunk(x64, rng, monkeypatch, param, shape):
    """Columns split into chunks of 2 images (the last one shorter) give the same maps
    (the forward with its bias, which each chunk adds)."""
    from jcaffe.layers import conv_gemm
    shape = (5,) + shape[1:]
    layer = _layer(param, shape)
    x = jnp.asarray(rng.standard_normal(shape))
    w, b = params_of(layer)
    b = jnp.asarray(rng.standard_normal(b.shape))
    dy = jnp.asarray(rng.standard_normal((5, layer.num_output) + layer.out_spatial))
    geo = layer.geometry()

    def maps(x, w, dy):
        return [conv_gemm.forward(x, w, layer.group, geo, bias=b),
                conv_gemm.data_diff(dy, w, layer.group, geo),
                conv_gemm.weight_diff(x, dy, layer.group, geo)]
    whole = jax.jit(maps)(x, w, dy)
    per_image = int(np.prod(layer.kernel)) * int(np.prod(layer.out_spatial)) * 8
    monkeypatch.setattr(conv_gemm, "CHUNK_BYTES", 2 * per_image * layer.channels)
    assert [len(conv_gemm._chunks(5, layer.channels, geo, 8))] == [3]
    jax.clear_caches()      # the maps are jitted with the chunk size read at trace time
    chunked = jax.jit(maps)(x, w, dy)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("param,shape", [CASES[i] for i in (2, 6, 7, 10)])   # ungrouped
def test_gemm_channels_last_products_match_caffes_order(x64, rng, monkeypatch, param, shape):
    """conv_gemm's forward written channels-last and its weight gradient reading dy so
    (``last``) give the maps of Caffe's order, in batch chunks of 2 images too (the
    forward with its bias)."""
    from jcaffe.layers import conv_gemm
    shape = (5,) + shape[1:]
    layer = _layer(param, shape)
    x = jnp.asarray(rng.standard_normal(shape))
    w, bias = params_of(layer)
    bias = jnp.asarray(rng.standard_normal(bias.shape))
    dy = jnp.asarray(rng.standard_normal((5, layer.num_output) + layer.out_spatial))
    geo = layer.geometry()
    for chunk in (None, 2 * int(np.prod(layer.kernel)) * int(np.prod(layer.out_spatial)) * 8
                  * layer.channels):
        if chunk:
            monkeypatch.setattr(conv_gemm, "CHUNK_BYTES", chunk)
        jax.clear_caches()
        got = [jax.jit(lambda x, w, dy: [conv_gemm.forward(x, w, 1, geo, last, bias),
                                         conv_gemm.weight_diff(x, dy, 1, geo, last)])(x, w, dy)
               for last in (False, True)]
        for a, b, what in zip(*got, ("y", "dw")):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-12,
                                       err_msg=what)


@pytest.mark.parametrize("param,shape", CASES)
def test_data_gradient_by_rows_and_by_columns_match_lax(x64, rng, param, shape):
    """Both GEMM forms of the data gradient (conv_gemm: per kernel row, accumulated in
    place, at stride 1; or the column array and col2im, in batch chunks) are the
    adjoint of the convolution, whichever one data_diff picks for a shape."""
    from jcaffe.layers import conv_gemm
    layer = _layer(param, shape)
    geo = layer.geometry()
    x = jnp.asarray(rng.standard_normal(shape))
    w, b = params_of(layer)
    y, vjp = jax.vjp(lambda x: _plain(layer, x, w, b), x)
    dy = jnp.asarray(rng.standard_normal(y.shape))
    (want,) = vjp(dy)
    forms = [conv_gemm._data_diff_by_columns]
    if all(s == 1 for s in geo.stride):
        forms.append(conv_gemm._data_diff_by_rows)
    for form in forms:
        got = jax.jit(lambda dy, w: form(dy, w, layer.group, geo))(dy, w)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-10,
                                   err_msg=form.__name__)


def test_data_gradient_form_by_shape():
    """By rows when one kernel row's products for the whole batch fit in ROW_BYTES
    (LeNet's conv2, batch 64: 1.6 MB), else by columns (CaffeNet's conv2, batch 32:
    43 MB a row); strided maps, 1x1 kernels without padding and single images take
    neither."""
    from jcaffe.layers import conv_gemm
    lenet2 = conv_gemm.Geometry((5, 5), (1, 1), (0, 0), (1, 1), (12, 12), (8, 8))
    caffenet2 = conv_gemm.Geometry((5, 5), (1, 1), (2, 2), (1, 1), (27, 27), (27, 27))
    one = conv_gemm.Geometry((1, 1), (1, 1), (0, 0), (1, 1), (7, 7), (7, 7))
    assert conv_gemm.by_rows((64, 50, 8, 8), (50, 20, 5, 5), 1, lenet2, 4)
    assert not conv_gemm.by_rows((32, 256, 27, 27), (256, 48, 5, 5), 2, caffenet2, 4)
    assert not conv_gemm.by_rows((2, 4, 7, 7), (4, 3, 1, 1), 1, one, 4)
    assert conv_gemm.by_rows((2, 50, 8, 8), (50, 20, 5, 5), 1, lenet2, 4)
    assert not conv_gemm.by_rows((1, 50, 8, 8), (50, 20, 5, 5), 1, lenet2, 4)
    strided = lenet2._replace(stride=(2, 2), out_spatial=(4, 4))
    assert not conv_gemm.by_rows((64, 50, 4, 4), (50, 20, 5, 5), 1, strided, 4)


@pytest.mark.parametrize("param,shape,rows_bytes", [
    (p, s, rows_bytes) for p, s in CASES if not _grouped(p)
    for rows_bytes in ([None] if (p, s) in MANY_OFFSETS else [None, 1])])
def test_weight_gradient_by_rows_matches_lax(x64, rng, monkeypatch, param, shape, rows_bytes):
    """conv_gemm.weight_diff_by_rows (columns of a few output rows at a time, channels-
    last, summed over chunks and images) is the weight gradient, with one chunk per
    image and with one output row per chunk (CHUNK_BYTES 1: a scan and no remainder,
    or more rows than one chunk and a shorter last one). The two kernels of many
    offsets (17x17, 7x7x7) only in one chunk: row by row they compiled 15-18 s each,
    and the small kernels cover the loop."""
    from jcaffe.layers import conv_gemm
    if rows_bytes is not None:
        monkeypatch.setattr(conv_gemm, "CHUNK_BYTES", rows_bytes)
    layer = _layer(param, shape)
    geo = layer.geometry()
    x = jnp.asarray(rng.standard_normal(shape))
    w, b = params_of(layer)
    y, vjp = jax.vjp(lambda w: _plain(layer, x, w, b), w)
    dy = jnp.asarray(rng.standard_normal(y.shape))
    (want,) = vjp(dy)
    jax.clear_caches()      # the chunk size is read at trace time
    got = conv_gemm.weight_diff_by_rows(x, dy, geo)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-10)


def _backward_through(layer, form, rng, monkeypatch):
    """The layer's backward (one Gaussian bottom of its shape) against jax.vjp of its own
    forward, dx, dW and db; returns the geometries conv_gemm.``form`` was called with."""
    from jcaffe.layers import conv_gemm
    calls = []
    original = getattr(conv_gemm, form)
    monkeypatch.setattr(conv_gemm, form, lambda *a: calls.append(a[2]) or original(*a))
    x = jnp.asarray(rng.standard_normal(layer.bottom_shapes[0]))
    p = params_of(layer)
    y, vjp = jax.vjp(lambda p, x: layer.forward(p, [x], None)[0][0], p, x)
    dy = jnp.asarray(rng.standard_normal(y.shape))
    rp, rx = vjp(dy)
    (dx,), (dw, db) = layer.backward(p, [x], [y], None, [dy], (True,))
    for got, want, what in ((dx, rx, "dx"), (dw, rp[0], "dw"), (db, rp[1], "db")):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-10,
                                   err_msg=what)
    return calls


def test_weight_gradient_by_rows_choice_and_layer(x64, rng, monkeypatch):
    """One image, ungrouped, a map of more than 28x28 outputs with columns of 513 and
    more (FCN's conv1_2: 64 * 9) takes the weight gradient by rows; a second image,
    groups, short columns (conv1_1's 3 * 9), small maps (fc6's 16x16, on the batch-1
    GEMM), 1x1 kernels, or fewer than GEMM_MIN_MACS multiply-adds do not. The layer's
    backward on that path is the vjp of the convolution."""
    cpu = jax.default_backend() == "cpu"
    big = Convolution.GEMM_MIN_MACS
    conv1_2 = _layer("num_output: 40 kernel_size: 3 pad: 1", (1, 64, 30, 30))
    cases = ((conv1_2, 1, big, True), (conv1_2, 2, big, False), (conv1_2, 1, big - 1, False),
             (_layer("num_output: 4 kernel_size: 3 pad: 1 group: 2", (1, 128, 30, 30)), 1, big,
              False),
             (_layer("num_output: 4 kernel_size: 3", (1, 3, 40, 40)), 1, big, False),
             (_layer("num_output: 8 kernel_size: 7", (1, 64, 22, 22)), 1, big, False),
             (_layer("num_output: 8 kernel_size: 1", (1, 600, 30, 30)), 1, big, False))
    for layer, batch, macs, want in cases:
        cg = layer.channels // layer.group
        assert layer._weight_by_rows(batch, cg, macs) == (cpu and want), layer.p
    if cpu:
        assert _backward_through(conv1_2, "weight_diff_by_rows", rng, monkeypatch) == [
            conv1_2.geometry()]


# conv_gemm.weight_diff_shifted: 2-d, ungrouped, stride 1 (CASES' and OpenPose's 7x7 at
# 10x10, rectangular and dilated ones, two images)
SHIFTED = [(p, s) for p, s in CASES if not _grouped(p) and len(s) == 4
           and "stride" not in p] + [
    ("num_output: 3 kernel_size: 7 pad: 3", (1, 4, 10, 10)),
    ("num_output: 2 kernel_h: 5 kernel_w: 3 pad_h: 2 dilation: 2", (2, 3, 11, 8)),
]


@pytest.mark.parametrize("param,shape,rows_bytes", [
    (p, s, rows_bytes) for p, s in SHIFTED for rows_bytes in (None, 1)])
def test_weight_gradient_shifted_matches_lax(x64, rng, monkeypatch, param, shape, rows_bytes):
    """conv_gemm.weight_diff_shifted (kh copies of x's padded rows against kw copies of dy
    placed at each kernel column, over the padded width) is the weight gradient: in one
    chunk, and one output row per chunk (CHUNK_BYTES 1: the scan, and a remainder
    where the rows do not divide)."""
    from jcaffe.layers import conv_gemm
    if rows_bytes is not None:
        monkeypatch.setattr(conv_gemm, "CHUNK_BYTES", rows_bytes)
    layer = _layer(param, shape)
    x = jnp.asarray(rng.standard_normal(shape))
    w, b = params_of(layer)
    y, vjp = jax.vjp(lambda w: _plain(layer, x, w, b), w)
    dy = jnp.asarray(rng.standard_normal(y.shape))
    (want,) = vjp(dy)
    jax.clear_caches()      # the chunk size is read at trace time
    got = conv_gemm.weight_diff_shifted(x, dy, layer.geometry())
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-10)


def test_weight_gradient_shifted_choice_and_layer(x64, rng, monkeypatch):
    """Of the one-image weight gradients taken by rows, those at stride 1 with 5x5 or
    more kernel offsets (OpenPose's 7x7s) run from shifted copies; 3x3 (FCN's VGG maps)
    and strided ones stay by rows. The layer's backward on that path is the vjp of
    the convolution."""
    cpu = jax.default_backend() == "cpu"
    big = Convolution.GEMM_MIN_MACS
    mconv = _layer("num_output: 24 kernel_size: 7 pad: 3", (1, 16, 30, 30))     # (GEMM_MIN_MACS)
    cases = ((mconv, True), (_layer("num_output: 8 kernel_size: 5 pad: 2", (1, 24, 30, 30)), True),
             (_layer("num_output: 8 kernel_size: 3 pad: 1", (1, 64, 30, 30)), False),
             (_layer("num_output: 8 kernel_size: 7 stride: 2 pad: 3", (1, 16, 60, 60)), False))
    for layer, want in cases:
        cg = layer.channels // layer.group
        assert layer._weight_by_rows(1, cg, big) == cpu, layer.p
        assert layer._weight_shifted() == want, layer.p
    if cpu:
        assert _backward_through(mconv, "weight_diff_shifted", rng, monkeypatch) == [
            mconv.geometry()]


def test_deconvolution_weight_gradient_shifted_matches_vjp(x64, rng, monkeypatch):
    """A Deconvolution at one image, stride 1, 7x7, whose virtual convolution (top to
    bottom) is a large map: its weight gradient takes the shifted copies too, with the
    roles of x and dy swapped, and is the vjp of its forward."""
    if jax.default_backend() != "cpu":
        pytest.skip("the shifted form is a CPU rule")
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 16 kernel_size: 7 '
                       'pad: 3 %s }' % FILLERS, [(1, 32, 40, 40)])
    assert len(_backward_through(layer, "weight_diff_shifted", rng, monkeypatch)) == 1


def test_weight_gradient_gemm_for_a_large_diff_in_caffes_order(x64, rng, monkeypatch):
    """On CPU, with convolutions on XLA's own kernels, a top diff of
    WEIGHT_GEMM_MIN_DIFF_BYTES or more in Caffe's order (MobileNet's and CaffeNet's
    conv1) has its weight gradient from GEMM, not from XLA's convolution, which would
    transpose the whole diff; not a smaller diff, a grouped map, columns longer than
    GEMM_MAX_COLUMN, fewer than GEMM_MIN_MACS multiply-adds, a batch's stride-1 map from
    XLA_MIN_STRIDE1_MACS (CIFAR-10's conv1, whose forward is XLA's too), or a diff the
    engine holds channels-last (backward_top_last). Both backwards are the vjp of the
    convolution."""
    from jcaffe import xla_options
    from jcaffe.layers import conv_gemm
    monkeypatch.setattr(xla_options, "own_convolutions", lambda: True)
    conv1 = _layer("num_output: 4 kernel_size: 3 stride: 2", (2, 3, 15, 15))      # 27
    x = jnp.asarray(rng.standard_normal((2, 3, 15, 15)))
    w, b = params_of(conv1)
    y, vjp = jax.vjp(lambda x, w, b: _plain(conv1, x, w, b), x, w, b)
    dy = jnp.asarray(rng.standard_normal(y.shape))
    monkeypatch.setattr(Convolution, "WEIGHT_GEMM_MIN_DIFF_BYTES", dy.size * 8)
    big = Convolution.GEMM_MIN_MACS
    cpu = jax.default_backend() == "cpu"
    assert conv1._weight_gemm_in_caffe_order(dy, 3, big) == cpu
    assert not conv1._weight_gemm_in_caffe_order(dy[:, :, :-1], 3, big)
    assert not conv1._weight_gemm_in_caffe_order(dy, 3, big - 1)
    with conv1._flag("_top_diff_last"):
        assert not conv1._weight_gemm_in_caffe_order(dy, 3, big)
    grouped = _layer("num_output: 6 kernel_size: 3 stride: 2 group: 3", (2, 3, 15, 15))
    long = _layer("num_output: 4 kernel_size: 3 stride: 2", (2, 57, 15, 15))       # 513
    assert not grouped._weight_gemm_in_caffe_order(dy, 1, big)
    assert not long._weight_gemm_in_caffe_order(dy, 57, big)
    cifar = _layer("num_output: 4 kernel_size: 5 pad: 2", (2, 3, 15, 15))             # 75
    many = Convolution.XLA_MIN_STRIDE1_MACS
    assert cifar._weight_gemm_in_caffe_order(dy, 3, many - 1) == cpu
    assert not cifar._weight_gemm_in_caffe_order(dy, 3, many)
    assert conv1._weight_gemm_in_caffe_order(dy, 3, many) == cpu           # (strided)
    monkeypatch.setattr(Convolution, "WEIGHT_GEMM_MIN_DIFF_BYTES", dy[:1].size * 8)
    assert cifar._weight_gemm_in_caffe_order(dy[:1], 3, many) == cpu       # (one image)
    monkeypatch.setattr(Convolution, "WEIGHT_GEMM_MIN_DIFF_BYTES", dy.size * 8)
    if not cpu:
        return
    monkeypatch.setattr(Convolution, "GEMM_MIN_MACS", 1)
    calls = []
    original = conv_gemm.weight_diff
    monkeypatch.setattr(conv_gemm, "weight_diff", lambda *a: calls.append(a[3]) or original(*a))
    rx, rw, rb = vjp(dy)
    for backward, gemm in ((conv1.backward, True), (conv1.backward_top_last, False)):
        del calls[:]
        (dx,), (dw, db) = backward([w, b], [x], [y], None, [dy], (True,))
        assert calls == ([conv1.geometry()] if gemm else []), backward
        for got, want, what in ((dx, rx, "dx"), (dw, rw, "dw"), (db, rb, "db")):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10,
                                       atol=1e-10, err_msg=what)


@pytest.mark.parametrize("spec, channels, rows", [
    ("num_output: 64 kernel_size: 5 pad: 2", 32, False),     # CIFAR-10's conv3
    ("num_output: 64 kernel_size: 5", 32, True),             # pad 0: a full-padded gradient
    ("num_output: 64 kernel_size: 5 pad: 2", 16, True),      # too few channels
    ("num_output: 64 kernel_size: 5 pad: 1", 32, True),      # not same-padded
    ("num_output: 64 kernel_size: 3 pad: 2 dilation: 2", 32, False),
    ("num_output: 64 kernel_size: 3 pad: 1 group: 2", 64, False),  # 32 a group
    ("num_output: 64 kernel_size: 3 pad: 1 group: 4", 64, True),   # 16 a group
])
def test_kernel_rows_data_gradient_not_for_same_padded_wide_maps(monkeypatch, spec, channels,
                                                                 rows):
    """Where convolutions run on XLA's own kernels, a stride-1 data gradient that
    conv_gemm's kernel-rows form would take goes to XLA's convolution instead when the
    forward is same-padded (pad = dilation * (k - 1) / 2) with SAME_XLA_MIN_CHANNELS or
    more input channels a group; the rows form keeps pad-0 maps (LeNet's conv2), narrow
    ones and other paddings."""
    from jcaffe import xla_options
    monkeypatch.setattr(xla_options, "own_convolutions", lambda: True)
    layer = _layer(spec, (1, channels, 8, 8))
    cg = layer.channels // layer.group
    big = Convolution.GEMM_MIN_MACS
    assert layer._gemm("data", cg, big, by_rows=True) == (
        jax.default_backend() == "cpu" and rows)
    monkeypatch.setattr(xla_options, "own_convolutions", lambda: False)
    assert layer._gemm("data", cg, big, by_rows=True) == (jax.default_backend() == "cpu")


@pytest.mark.parametrize("own_convolutions", [True, False])
def test_cpu_gemm_choice_per_map_and_shape(x64, monkeypatch, own_convolutions):
    """On CPU, from GEMM_MIN_MACS multiply-adds on: every map of a 1x1 kernel without
    padding; the weight gradients of larger kernels unless the compiles run convolutions
    on XLA's own kernels (xla_options); the forward for short columns (C/group *
    prod(kernel) <= 512), but for strided ones from 256 on only where convolutions run
    on YNNPACK (CaffeNet's conv1) and for grouped ones (ResNeXt's) not where convolutions run
    on XLA's own kernels; every strided data gradient; the data gradient at stride 1
    where it takes conv_gemm's kernel-rows form, or from GEMM_MIN_MACS_DATA on unless
    the compiles run convolutions on XLA's own kernels (where those run it, not for a
    same-padded map of 32 or more input channels a group). Smaller maps keep XLA's
    convolution. At batch 1: every map up to 28x28 outputs, and the weight gradient of
    short columns; on larger maps at stride 1, a forward with columns of 64 or more
    (MTCNN's P-Net on an image) only where convolutions run on YNNPACK. From
    XLA_MIN_STRIDE1_MACS on, a batch's short-column forward at stride 1 takes GEMM only
    where convolutions run on YNNPACK.
    """
    from jcaffe import xla_options
    monkeypatch.setattr(xla_options, "own_convolutions", lambda: own_convolutions)
    lenet2 = _layer("num_output: 50 kernel_size: 5", (1, 20, 12, 12))          # 20*25 = 500
    strided = _layer("num_output: 4 kernel_size: 5 stride: 2", (1, 3, 13, 13))  # 75
    long = _layer("num_output: 4 kernel_size: 3 pad: 1 group: 2", (1, 128, 6, 6))  # 64*9
    pointwise = _layer("num_output: 4 kernel_size: 1", (1, 832, 3, 3))
    long_strided = _layer("num_output: 4 kernel_size: 3 stride: 2", (1, 64, 7, 7))
    conv1 = _layer("num_output: 4 kernel_size: 11 stride: 4", (1, 3, 15, 15))  # 363
    narrow = _layer("num_output: 8 kernel_size: 3 pad: 1 group: 4", (1, 8, 6, 6))  # 18
    cpu = jax.default_backend() == "cpu"
    for layer, fwd, strided_data in ((lenet2, True, False), (strided, True, True),
                                     (long, False, False), (pointwise, True, True),
                                     (long_strided, False, True),
                                     (conv1, not own_convolutions, True),
                                     (narrow, not own_convolutions, False)):
        cg = layer.channels // layer.group
        big, big_data = Convolution.GEMM_MIN_MACS, Convolution.GEMM_MIN_MACS_DATA
        assert big < big_data
        assert layer._gemm("weight", cg, big) == (cpu and (
            layer is pointwise or not own_convolutions))
        assert layer._gemm("forward", cg, big) == (cpu and fwd)
        assert layer._gemm("data", cg, big) == (cpu and strided_data)
        assert layer._gemm("data", cg, big_data - 1) == (cpu and strided_data)
        assert layer._gemm("data", cg, big_data) == (cpu and (
            strided_data or not own_convolutions))
        # (the kernel-rows form but for same-padded maps of 32 channels or more a group,
        # on XLA's own kernels: `long`)
        assert layer._gemm("data", cg, big, by_rows=True) == (cpu and not (
            own_convolutions and layer is long))
        assert not layer._gemm("data", cg, big - 1, by_rows=True)
        assert not any(layer._gemm(which, cg, big - 1) for which in ("forward", "data", "weight"))
    # A batch's short-column forward at stride 1 goes to XLA's own convolution from
    # XLA_MIN_STRIDE1_MACS (CIFAR-10's conv1 at batch 100); strided ones (GoogLeNet's and
    # ResNet's conv1) and one image (FCN's conv1_1) keep GEMM there.
    many = Convolution.XLA_MIN_STRIDE1_MACS
    assert Convolution.GEMM_MIN_MACS < many
    for layer, batch, fwd in ((lenet2, 100, not own_convolutions),
                              (lenet2, None, not own_convolutions), (lenet2, 1, True),
                              (strided, 100, True)):
        cg = layer.channels // layer.group
        assert layer._gemm("forward", cg, many, batch=batch) == (cpu and fwd), (layer, batch)
        assert layer._gemm("forward", cg, many - 1, batch=batch) == cpu
    # One image: every map of at most 28x28 outputs (FCN's fc6), and on larger maps the
    # weight gradient of short columns (FCN's conv1_1: 3 * 9); not conv1_2's 64 * 9.
    fc6 = _layer("num_output: 8 kernel_size: 7", (1, 16, 22, 22))                  # 16x16 out
    conv1_1 = _layer("num_output: 4 kernel_size: 3", (1, 3, 40, 40))
    conv1_2 = _layer("num_output: 4 kernel_size: 3 pad: 1", (1, 64, 40, 40))
    for layer, small in ((fc6, True), (conv1_1, False), (conv1_2, False), (lenet2, True)):
        cg, big = layer.channels // layer.group, Convolution.GEMM_MIN_MACS
        short = cg * int(np.prod(layer.kernel)) <= Convolution.GEMM_MAX_COLUMN
        assert layer._gemm("weight", cg, big, batch=1) == (cpu and (
            small or short or not own_convolutions))
        assert layer._gemm("forward", cg, big, batch=1) == (cpu and (small or short))
        assert layer._gemm("data", cg, big, batch=1) == (cpu and small)
        assert layer._gemm("weight", cg, big, batch=2) == (cpu and not own_convolutions)
        assert not layer._gemm("data", cg, big, batch=2)    # stride 1, < GEMM_MIN_MACS_DATA
        assert not any(layer._gemm(which, cg, big - 1, batch=1)
                       for which in ("forward", "data", "weight"))
    # One image on a large map at stride 1: a forward of columns from 64 (16 * 9) goes to
    # XLA's own convolution; 3 * 9 (conv1_1 above) and strided maps keep GEMM, as does
    # a batch of two below XLA_MIN_STRIDE1_MACS.
    pnet3 = _layer("num_output: 4 kernel_size: 3", (1, 16, 40, 40))                # 38x38 out
    pnet3_strided = _layer("num_output: 4 kernel_size: 3 stride: 2", (1, 16, 80, 80))
    assert Convolution.ONE_IMAGE_XLA_MIN_COLUMN == 64
    big = Convolution.GEMM_MIN_MACS
    assert pnet3._gemm("forward", 16, big, batch=1) == (cpu and not own_convolutions)
    assert pnet3._gemm("forward", 16, big, batch=2) == cpu
    assert pnet3_strided._gemm("forward", 16, big, batch=1) == cpu
    assert pnet3._gemm("weight", 16, big, batch=1) == cpu          # (short columns)


@pytest.mark.parametrize("param,shape", [
    ("num_output: 3 kernel_size: 4 stride: 2 pad: 1 group: 1", (2, 4, 5, 6)),
    ("num_output: 4 kernel_size: 3 stride: 1 pad: 1 group: 2 dilation: 2", (2, 4, 6, 5)),
])
def test_deconvolution_gemm_matches_xla(x64, rng, monkeypatch, param, shape):
    """Deconvolution runs Convolution's maps on its virtual convolution (top -> bottom):
    its GEMM path agrees with the XLA one, forward and backward, in float64."""
    layer = make_layer('type: "Deconvolution" convolution_param { %s %s }' % (param, FILLERS),
                       [shape])
    x = jnp.asarray(rng.standard_normal(shape))

    def gemm(on):
        monkeypatch.setattr(Convolution, "_gemm", lambda self, which, cg, macs, **_: on)
    _same_maps(layer, x, gemm)


def _same_maps(layer, x, choose):
    """The layer's y, dx, dw, db with ``choose(False)`` and with ``choose(True)`` (each
    patching the formulation choice) agree in float64."""
    w, b = params_of(layer)
    results = []
    for on in (False, True):
        choose(on)
        (y,), _ = jax.jit(lambda w, b, x: layer.forward([w, b], [x], None))(w, b, x)
        dy = jnp.asarray(np.random.default_rng(3).standard_normal(y.shape))
        (dx,), (dw, db) = jax.jit(lambda w, b, x, y, dy: layer.backward(
            [w, b], [x], [y], None, [dy], (True,)))(w, b, x, y, dy)
        results.append((y, dx, dw, db))
    for off, on, what in zip(results[0], results[1], ("y", "dx", "dw", "db")):
        np.testing.assert_allclose(np.asarray(on), np.asarray(off), rtol=1e-10, atol=1e-10,
                                   err_msg=what)


@pytest.mark.parametrize("param,shape", [
    ("num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 4", (2, 4, 5, 6)),     # FCN's upsampling
    ("num_output: 3 kernel_size: 3 stride: 2 group: 3", (1, 6, 4, 3)),            # 2 outputs/channel
])
def test_deconvolution_depthwise_matches_grouped(x64, rng, monkeypatch, param, shape):
    """A Deconvolution with group = num_output (FCN's per-class bilinear upsampling) has a
    depthwise virtual convolution: conv_depthwise's maps agree with the grouped XLA ones,
    forward and backward, in float64."""
    layer = make_layer('type: "Deconvolution" convolution_param { %s %s }' % (param, FILLERS),
                       [shape])
    assert layer.num_output == layer.group
    x = jnp.asarray(rng.standard_normal(shape))
    monkeypatch.setattr(Convolution, "_gemm", lambda self, which, cg, macs, **_: False)
    monkeypatch.setattr(Convolution, "_split_groups", lambda self: False)

    def depthwise(on):
        monkeypatch.setattr(Convolution, "_depthwise", lambda self, cg: on)
    _same_maps(layer, x, depthwise)
    check_backward(layer, [np.asarray(x)])


@pytest.mark.parametrize("param,shape", [
    ("num_output: 4 kernel_size: 3 kernel_size: 2 stride: 2 pad: 1 group: 2", (1, 2, 2, 3)),
    ("num_output: 2 kernel_size: 3 kernel_size: 2 stride: 2 pad: 1", (1, 1, 2, 3)),
])
def test_deconvolution_where_xla_lhs_dilation_aborted(x64, rng, param, shape):
    """XLA's algebraic simplifier (jaxlib 0.10.2) aborted the whole process on these
    (a convolution with lhs_dilation whose kernel covers the dilated input: found by the
    Deconvolution gradcheck property). The strided data gradient now dilates and pads
    explicitly; forward and backward still match jax.vjp."""
    layer = make_layer('type: "Deconvolution" convolution_param { %s %s }' % (param, FILLERS),
                       [shape])
    check_backward(layer, [rng.standard_normal(shape)])


@pytest.mark.parametrize("form", ["per image", "whole batch"])
@pytest.mark.parametrize("param,shape", POINTWISE)
def test_pointwise_forms_match_lax(x64, rng, monkeypatch, param, shape, form):
    """A 1x1 kernel's three maps, per image (a dot batched over images and groups) or
    as one GEMM over the whole batch, whichever the output size picks, are the
    convolution, its data gradient and its weight gradient."""
    from jcaffe.layers import conv_gemm
    layer = _layer(param, shape)
    geo = layer.geometry()
    assert conv_gemm.pointwise(geo)
    monkeypatch.setattr(conv_gemm, "PER_IMAGE_MIN_POSITIONS", 0 if form == "per image" else 10 ** 9)
    jax.clear_caches()      # the maps are jitted with the form chosen at trace time
    assert conv_gemm.per_image(geo) == (form == "per image")
    x = jnp.asarray(rng.standard_normal(shape))
    w, b = params_of(layer)
    y, vjp = jax.vjp(lambda x, w: _plain(layer, x, w, 0 * b), x, w)
    dy = jnp.asarray(rng.standard_normal(y.shape))
    want = [y, *vjp(dy)]
    got = [conv_gemm.forward(x, w, layer.group, geo), conv_gemm.data_diff(dy, w, layer.group, geo),
           conv_gemm.weight_diff(x, dy, layer.group, geo)]
    for g, r, what in zip(got, want, ("forward", "data gradient", "weight gradient")):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-10, atol=1e-10,
                                   err_msg=what)
    jax.clear_caches()


def test_pointwise_form_by_output_size():
    """Per image from 56x56 outputs (ResNet-50's res2 1x1 convolutions), one GEMM over
    the batch at 28x28 and below."""
    from jcaffe.layers import conv_gemm

    def geo(size, stride=1):
        return conv_gemm.Geometry((1, 1), (stride, stride), (0, 0), (1, 1),
                                  (size * stride, size * stride), (size, size))
    assert conv_gemm.per_image(geo(56)) and conv_gemm.per_image(geo(56, stride=2))
    assert not conv_gemm.per_image(geo(28)) and not conv_gemm.per_image(geo(14, stride=2))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiles")
@pytest.mark.parametrize("form", ["per image", "whole batch"])
def test_pointwise_maps_are_dots_over_the_left_operands_minor_axis(monkeypatch, form):
    """Each 1x1 map is one dot whose left operand is contracted over its minor axis (the
    only form XLA's YNNPACK dots take: the data gradient uses W^T, written once). Below
    PER_IMAGE_MIN_POSITIONS the dot is over the whole batch, channel-major: the output
    (or, for the data gradient, input) channels by the batch's positions, (g, n, B * P).
    The batch-major whole batch (B * P, C) x (C, O), whose result every reader read
    across its layout, fails this, and so does a data gradient contracting W over O."""
    from jcaffe import xla_options
    from jcaffe.layers import conv_gemm
    monkeypatch.setattr(conv_gemm, "PER_IMAGE_MIN_POSITIONS", 0 if form == "per image" else 10 ** 9)
    jax.clear_caches()      # the maps are jitted with the form chosen at trace time
    layer = _layer("num_output: 32 kernel_size: 1 group: 2", (4, 16, 6, 6))
    geo = layer.geometry()
    assert conv_gemm.pointwise(geo) and conv_gemm.per_image(geo) == (form == "per image")
    x = jnp.ones((4, 16, 6, 6), jnp.float32)
    w = jnp.ones((32, 8, 1, 1), jnp.float32)
    dy = jnp.ones((4, 32, 6, 6), jnp.float32)
    maps = {"forward": (lambda x, w, dy: conv_gemm.forward(x, w, 2, geo), (2, 16, 144)),
            "data": (lambda x, w, dy: conv_gemm.data_diff(dy, w, 2, geo), (2, 8, 144)),
            "weight": (lambda x, w, dy: conv_gemm.weight_diff(x, dy, 2, geo), (2, 16, 8))}
    for which, (fn, shape) in maps.items():
        jaxpr = jax.make_jaxpr(fn)(x, w, dy)
        dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
        assert len(dots) == 1, which
        (lhs_contracting, _), _ = dots[0].params["dimension_numbers"]
        assert tuple(lhs_contracting) == (dots[0].invars[0].aval.ndim - 1,), which
        if form == "whole batch":
            assert dots[0].outvars[0].aval.shape == shape, which
    # and each dot stays on YNNPACK where this jaxlib has its dots
    options = xla_options.cpu_options()
    if (options or {}).get(xla_options.YNN_FUSION_TYPE):
        for which, (fn, _) in maps.items():
            hlo = jax.jit(fn, compiler_options=options).lower(x, w, dy).compile().as_text()
            dots, in_ynn = ynn_dots(hlo)
            assert in_ynn == dots == 1, (which, hlo)
    jax.clear_caches()


def _equations(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for sub in jax.extend.core.jaxprs_in_params(e.params):
            yield from _equations(sub)
