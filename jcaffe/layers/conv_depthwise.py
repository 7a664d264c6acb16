"""Depthwise convolution (one input channel per group) as shifted slices, on CPU.

Caffe writes a depthwise convolution as a Convolution with ``group`` equal to its
input channels (MobileNet's 3x3 "dw" layers; FCN's per-class bilinear upsampling
is the Deconvolution form). Each output channel o reads one input channel,
o // m (m = num_output / group outputs per channel), so a product has no sum over
channels: prod(kernel) multiply-adds per output and no data reuse for a matrix
kernel to exploit. XLA's CPU backend runs it badly either way jcaffe otherwise
would: one grouped convolution (``feature_group_count`` = C) took 30-700 ms where
this takes 1-20 ms (MobileNet's shapes, batch 16, below), and one convolution per
group (what Convolution does for a few groups) compiles C convolutions per map: a
net with one 256-channel depthwise layer took 9.9 s to compile its step and 43 ms a
step (this form: 0.45 s and 4.5 ms), and MobileNet's step had not compiled after 14
minutes.

Here each map is one fused loop over the kernel's offsets, each a strided slice
of the padded input (``geo``: conv_gemm.Geometry of the convolution):

* forward:  y[b, c*m + j, p] = sum_k w[c*m + j, k] x_pad[b, c, p*stride + k*dilation];
* data:     by stride phases (as conv_gemm.col2im): each offset's w_k * dy (summed
  over j), a shifted slice of one padded dy, added into its phase; no zeros multiplied;
* weight:   dw[c*m + j, k] = sum over b, p of dy[b, c*m + j, p] x_pad[b, c, p*stride +
  k*dilation], all offsets in one variadic reduction, so x and dy are read once
  (one reduction per offset read them prod(kernel) times: 3-7x slower).

Measured alone (Intel Xeon, AVX-512, 2 cores, 2026-12-02; batch 16, 3x3 pad 1, ms,
forward / data / weight): 32 channels at 112x112 11 / 10 / 13 against XLA's grouped
convolution 227 / 233 / 56; 512 at 14x14 1.5 / 2.3 / 2.3 against 63 / 64 / 54;
stride 2, 64 at 112x112: 19 / 20 / 19 against 222 / 716 / 54 (benchmarks/NOTES.md,
eighteenth session). The number of slices grows with the kernel: Convolution takes
this form up to MAX_TAPS offsets and keeps its per-group convolutions beyond.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
from jax import lax

from . import conv_gemm

MAX_TAPS = 64   # kernel offsets unrolled (8x8): a bound on the loop's size, not a measured
                # crossover; larger kernels (FCN-32s' 64x64 upsampling) keep convolutions


def _tap(xp, offset, geo):
    """The padded input read by kernel ``offset``: (B, C, out...)."""
    start = (0, 0) + tuple(j * d for j, d in zip(offset, geo.dilation))
    limit = xp.shape[:2] + tuple(a + (o - 1) * s + 1 for a, o, s in
                                 zip(start[2:], geo.out_spatial, geo.stride))
    return lax.slice(xp, start, limit, (1, 1) + tuple(geo.stride))


def _per_channel(w, channels):
    """w (C*m, 1, k...) -> (C, m, K), and a reshape of one offset's (C, m) weights
    that broadcasts against (B, C, m, out...)."""
    wk = w.reshape(channels, w.shape[0] // channels, -1)
    n = w.ndim - 2
    return wk, lambda i: wk[:, :, i].reshape(wk.shape[:2] + (1,) * n)


# Jitted with the geometry static, as conv_gemm's maps: inside a compiled net they
# inline (into the caller's jaxpr, named by its layer: conv_gemm's doc); called eagerly
# (layer tests, gradcheck) each is one compiled call.
@functools.partial(jax.jit, inline=True, static_argnums=(2,))
def forward(x, w, geo):
    """y = W * x for x (B, C, in...), w (C*m, 1, k...), group C -> (B, C*m, out...)."""
    b, c = x.shape[:2]
    _, weight = _per_channel(w, c)
    xp = conv_gemm.padded(x, geo)
    y = None
    for i, offset in enumerate(conv_gemm._offsets(geo)):
        term = _tap(xp, offset, geo)[:, :, None] * weight(i)
        y = term if y is None else y + term
    return y.reshape((b, w.shape[0]) + tuple(geo.out_spatial))


@functools.partial(jax.jit, inline=True, static_argnums=(2, 3))
def data_diff(dy, w, channels, geo):
    """dE/dx for dy (B, C*m, out...), w (C*m, 1, k...), ``channels`` = C -> (B, C, in...).

    By stride phases, as conv_gemm.col2im (its phase_of, assemble_phases): offset j's
    products w_j dy land at phase position o + q_j. All offsets read shifted slices of
    one padded dy, so the loop that sums a phase is the only reader of the pad (one pad
    per offset made XLA keep nine padded copies of dy in a training step: the solver's
    update probes one element of each data gradient, a second reader of each pad,
    which XLA would not duplicate into both)."""
    b = dy.shape[0]
    wk, weight = _per_channel(w, channels)
    spans = conv_gemm._phase_spans(geo)
    reach = [t - o for t, o in zip(spans, geo.out_spatial)]      # the largest shift q
    d = dy.reshape((b, channels, wk.shape[1]) + dy.shape[2:])
    dp = lax.pad(d, jnp.zeros((), dy.dtype), [(0, 0, 0)] * 3 + [(q, q, 0) for q in reach])
    size = d.shape[:3] + tuple(spans)
    phases = {}
    for i, offset in enumerate(conv_gemm._offsets(geo)):
        residue, shifts = conv_gemm.phase_of(offset, geo)
        start = [0, 0, 0] + [q_max - q for q_max, q in zip(reach, shifts)]
        shifted = lax.slice(dp, start, [a + t for a, t in zip(start, size)])
        piece = jnp.sum(shifted * weight(i), axis=2)
        phases[residue] = piece if residue not in phases else phases[residue] + piece
    return conv_gemm.assemble_phases(phases, (b, channels), dy.dtype, geo)


@functools.partial(jax.jit, inline=True, static_argnums=(2,))
def weight_diff(x, dy, geo):
    """dE/dW for x (B, C, in...), dy (B, C*m, out...) -> (C*m, 1, k...)."""
    b, c = x.shape[:2]
    m = dy.shape[1] // c
    d = dy.reshape((b, c, m) + dy.shape[2:])
    xp = conv_gemm.padded(x, geo)
    products = [_tap(xp, offset, geo)[:, :, None] * d for offset in conv_gemm._offsets(geo)]
    zero = jnp.zeros((), x.dtype)
    sums = lax.reduce(products, [zero] * len(products),
                      lambda acc, new: [u + v for u, v in zip(acc, new)],
                      (0,) + tuple(range(3, d.ndim)))          # each (C, m)
    return jnp.stack(sums, axis=-1).reshape((c * m, 1) + tuple(geo.kernel))


# -- channels-last ----------------------------------------------------------------------
# The same three maps on arrays held (B, spatial..., C), as the engine hands a layer in a
# channels-last run (jcaffe.engine, "channels-last runs"): a kernel offset's slice then
# moves whole rows of channels, the weights of an offset are one vector along the
# channels, and a strided slice skips whole channel vectors rather than single floats.
# MobileNet's forward in this order, written by hand under jcaffe's options, took 8.2-10
# ms at one image against 15.5-16.6 in Caffe's (330 vs 480 ms at batch 32; 2026-12-04).
# Output channel c*m + j reads input channel c (_repeated): the same numbering as Caffe's.
def _tap_last(xp, offset, geo):
    """The padded channels-last input read by kernel ``offset``: (B, out..., C)."""
    start = (0,) + tuple(j * d for j, d in zip(offset, geo.dilation)) + (0,)
    limit = ((xp.shape[0],) + tuple(a + (o - 1) * s + 1 for a, o, s in
                                    zip(start[1:-1], geo.out_spatial, geo.stride))
             + (xp.shape[-1],))
    return lax.slice(xp, start, limit, (1,) + tuple(geo.stride) + (1,))


def _offset_major(w):
    """w (C*m, 1, k...) as (K, C*m), stored so: each offset's weights one contiguous
    vector. Read in Caffe's layout, an offset's weights are every K-th float, and XLA
    gathered them for each output element inside the loop (MobileNet's first depthwise
    loop at one image, 32 channels at 112x112: 1.07 ms, 0.42 ms from the stored copy)."""
    # (flat through the barrier: a 1-d array has one layout, so the transposing copy is
    # made before it; a 2-d one left XLA free to transpose by layout after the barrier,
    # and to fuse that copy into the loop again)
    flat = lax.optimization_barrier(jnp.transpose(w.reshape(w.shape[0], -1)).reshape(-1))
    return flat.reshape(-1, w.shape[0])


def _repeated(a, m):
    """(..., C) -> (..., C*m): each channel m times, as output channels c*m + j read it.
    (The arrays stay (..., C*m): with a trailing axis of m, XLA's loops had a minor
    dimension of one element for MobileNet's m = 1; its 512-channel loops at 14x14 took
    0.15 ms each that way, 0.12 ms so, in one trace each.)"""
    return a if m == 1 else jnp.repeat(a, m, axis=-1)


@functools.partial(jax.jit, inline=True, static_argnums=(2,))
def forward_last(x, w, geo):
    """forward for x (B, in..., C) -> (B, out..., C*m)."""
    m = w.shape[0] // x.shape[-1]
    wk = _offset_major(w)                               # (K, C*m)
    xp = conv_gemm.padded_last(x, geo)
    y = None
    for i, offset in enumerate(conv_gemm._offsets(geo)):
        term = _repeated(_tap_last(xp, offset, geo), m) * wk[i]
        y = term if y is None else y + term
    return y


@functools.partial(jax.jit, inline=True, static_argnums=(2, 3))
def data_diff_last(dy, w, channels, geo):
    """data_diff for dy (B, out..., C*m) -> (B, in..., C): by stride phases, each
    phase (B, spans..., C) the sum of its offsets' shifted slices of one padded dy."""
    b, n = dy.shape[0], len(geo.kernel)
    m = w.shape[0] // channels
    wk = _offset_major(w)                               # (K, C*m)
    spans = conv_gemm._phase_spans(geo)
    reach = [t - o for t, o in zip(spans, geo.out_spatial)]
    dp = lax.pad(dy, jnp.zeros((), dy.dtype),
                 [(0, 0, 0)] + [(q, q, 0) for q in reach] + [(0, 0, 0)])
    size = (b,) + tuple(spans) + (dy.shape[-1],)
    phases = {}
    for i, offset in enumerate(conv_gemm._offsets(geo)):
        residue, shifts = conv_gemm.phase_of(offset, geo)
        start = [0] + [q_max - q for q_max, q in zip(reach, shifts)] + [0]
        piece = lax.slice(dp, start, [a + t for a, t in zip(start, size)]) * wk[i]
        if m > 1:
            piece = jnp.sum(piece.reshape(piece.shape[:-1] + (channels, m)), axis=-1)
        phases[residue] = piece if residue not in phases else phases[residue] + piece
    grid = jnp.stack([phases.get(r, jnp.zeros((b,) + tuple(spans) + (channels,), dy.dtype))
                      for r in itertools.product(*[range(s) for s in geo.stride])])
    # (s_1 .. s_n, B, t_1 .. t_n, C) -> (B, t_1, s_1, ..., t_n, s_n, C)
    grid = grid.reshape(tuple(geo.stride) + grid.shape[1:])
    order = (n,) + sum(((n + 1 + a, a) for a in range(n)), ()) + (2 * n + 1,)
    full = jnp.transpose(grid, order).reshape(
        (b,) + tuple(t * s for t, s in zip(spans, geo.stride)) + (channels,))
    return conv_gemm._crop_to_input(full, geo, 1)


@functools.partial(jax.jit, inline=True, static_argnums=(2,))
def weight_diff_last(x, dy, geo):
    """weight_diff for x (B, in..., C), dy (B, out..., C*m) -> (C*m, 1, k...).

    A column reduction (the positions summed with the channels minor), 4-6x slower in
    XLA's CPU loops than weight_diff's row reductions: the engine runs a depthwise map
    channels-last only where this gradient is not asked for
    (Convolution.channels_last_backward_ok); here for the layer's own
    backward_channels_last, which computes every diff it is asked for."""
    m = dy.shape[-1] // x.shape[-1]
    xp = conv_gemm.padded_last(x, geo)
    products = [_repeated(_tap_last(xp, offset, geo), m) * dy
                for offset in conv_gemm._offsets(geo)]
    zero = jnp.zeros((), x.dtype)
    sums = lax.reduce(products, [zero] * len(products),
                      lambda acc, new: [u + v for u, v in zip(acc, new)],
                      tuple(range(dy.ndim - 1)))                # each (C*m,)
    return jnp.stack(sums, axis=-1).reshape((dy.shape[-1], 1) + tuple(geo.kernel))
