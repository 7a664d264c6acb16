"""Convolution as im2col + GEMM (Caffe's own formulation), in batch chunks.

XLA's CPU convolutions are far from its matmul speed on several shapes Caffe
nets use (benchmarks/bench_conv.py): the weight gradient above all (CaffeNet's
conv1 and grouped conv2 ran 3-4x slower than im2col + one matrix product), a
forward with few input channels and a large or strided kernel (conv1), and the
data gradient of a convolution with few input channels (LeNet's conv1). These
functions compute the three linear maps of a convolution the way Caffe does,
with columns built by strided slices (no gather) and one ``dot_general`` per
chunk of images, the groups as the dot's batch dimension.

Columns are channel-major: ``x`` transposed to (C, B, spatial...) gives the
column array (C, K, B, out...) with K = prod(kernel) in row-major kernel
order (Caffe's im2col order), so (C/g * K, B * out) per group is a reshape,
not a copy. Work is split over the batch so each chunk's columns stay near
``CHUNK_BYTES`` (measured: 4-16 MB chunks ran 1.3-2x faster than one
whole-batch column array, which leaves the caches). The chunk split depends
only on the shapes, so results are deterministic; the weight gradient sums the
chunks in batch order. A data gradient small enough skips the columns: it is
computed a kernel row at a time and accumulated in place (``by_rows``, below).

``geo`` is a ``Geometry`` (Convolution.geometry(): Deconvolution's "virtual
convolution" fits the same description). The three maps are jitted with it as a
static argument: inside a compiled net they inline; called eagerly (layer tests,
gradcheck) they run as one compiled call instead of dozens of small ones. They are
jitted ``inline=True``, traced into the caller's jaxpr: a called jit's ops are named
inside it only ("dot_general"), these carry the layer's name scope
("conv2.forward/dot_general") into profiles and HLO dumps. XLA inlines a call anyway:
the compiled program is the same (LeNet's step, HLO compared but for names).
"""
import collections
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CHUNK_BYTES = 8 << 20      # columns per chunk

Geometry = collections.namedtuple(
    "Geometry", "kernel stride pad dilation in_spatial out_spatial")   # tuples of ints


def _high_pads(geo):
    """Padding after each spatial axis so every kernel offset's strided slice fits."""
    out = []
    for size, o, k, s, p, d in zip(geo.in_spatial, geo.out_spatial, geo.kernel, geo.stride,
                                   geo.pad, geo.dilation):
        out.append(max(0, (o - 1) * s + (k - 1) * d + 1 - size - p))
    return out


def _offsets(geo):
    return list(itertools.product(*[range(k) for k in geo.kernel]))


def _per_chunk(batch, channels, geo, itemsize):
    """Images per chunk: the columns about CHUNK_BYTES (one chunk, no loop, below that)."""
    per_image = channels * int(np.prod(geo.kernel)) * int(np.prod(geo.out_spatial)) * itemsize
    return max(1, min(CHUNK_BYTES // max(per_image, 1), batch))


def single_chunk(batch, channels, geo, itemsize):
    """Whether the column array of ``batch`` images is built in one chunk (no loop)."""
    return _per_chunk(batch, channels, geo, itemsize) >= batch


def _chunks(batch, channels, geo, itemsize):
    """[(start, stop)] over the batch, in the order the maps visit them."""
    per = _per_chunk(batch, channels, geo, itemsize)
    return [(s, min(s + per, batch)) for s in range(0, batch, per)]


# The chunks run as a loop (lax.map / lax.scan over whole chunks, the remainder after
# it), not unrolled: unrolled, CaffeNet's conv1 (32 chunks of 121 slices) took minutes
# to compile, and the loop ran faster too.
def _split_batch(arrays, per):
    """(whole chunks, each array as (n, per, ...), or None for a single chunk; the
    remainder, each array's last batch % per images, or None)."""
    n, rem = divmod(arrays[0].shape[0], per)
    if n == 1 and rem == 0:
        return None, None
    whole = [a[:n * per].reshape((n, per) + a.shape[1:]) for a in arrays]
    return whole, ([a[n * per:] for a in arrays] if rem else None)


def _map_batch(one, arrays, per):
    """concatenate([one(*chunk) for chunk over the batch axis]) for (B, ...) arrays."""
    whole, rest = _split_batch(arrays, per)
    if whole is None:
        return one(*arrays)
    out = lax.map(lambda chunk: one(*chunk), whole)
    out = out.reshape((-1,) + out.shape[2:])
    return out if rest is None else jnp.concatenate([out, one(*rest)])


def _sum_batch(one, arrays, per):
    """sum(one(*chunk) for chunk over the batch axis), added in batch order."""
    whole, rest = _split_batch(arrays, per)
    if whole is None:
        return one(*arrays)
    total = one(*[a[0] for a in whole])
    if whole[0].shape[0] > 1:
        total, _ = lax.scan(lambda acc, chunk: (acc + one(*chunk), None), total,
                            [a[1:] for a in whole])
    return total if rest is None else total + one(*rest)


def padded(x, geo):
    """x (A, B, in...) zero-padded so every kernel offset's strided slice fits."""
    config = [(0, 0, 0), (0, 0, 0)] + [(p, h, 0) for p, h in zip(geo.pad, _high_pads(geo))]
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def padded_last(x, geo):
    """x (B, in..., C), channels-last, zero-padded as :func:`padded` pads (B, C, in...)."""
    config = [(0, 0, 0)] + [(p, h, 0) for p, h in zip(geo.pad, _high_pads(geo))] + [(0, 0, 0)]
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _sum_row_chunks(chunk, out_rows, rows):
    """sum of chunk(first, count) over output rows [0, out_rows) in chunks of ``rows``,
    added in row order: the whole chunks in a lax.scan, then the shorter last one."""
    whole, rest = divmod(out_rows, rows)
    total = chunk(0, rows)
    if whole > 1:
        total, _ = lax.scan(lambda acc, i: (acc + chunk(i * rows, rows), None), total,
                            jnp.arange(1, whole))
    return total + chunk(whole * rows, rest) if rest else total


def columns(xc, geo):
    """(C, B, in...) -> (C, K, B, out...): entry [c, k, b, o] = x[b, c, o*stride - pad +
    offset(k)*dilation], 0 in the padding.

    Built one spatial axis at a time, the last first: each stage stacks that axis's
    kernel offsets (strided slices) as a new axis after C. Slicing all the offsets of
    every axis at once copies runs of one output row (LeNet's conv2: 8 floats) and ran
    1.6x slower; staged, the later stages copy whole (out rows x out width) blocks.
    """
    x = padded(xc, geo)                     # (C, B, in...) padded
    n = len(geo.kernel)
    for axis in reversed(range(n)):
        k, s, d, o = geo.kernel[axis], geo.stride[axis], geo.dilation[axis], geo.out_spatial[axis]
        at = x.ndim - n + axis              # this axis's position in x: (C, k.., B, ...)
        pieces = []
        for j in range(k):
            start = [0] * x.ndim
            limit = list(x.shape)
            strides = [1] * x.ndim
            start[at], limit[at], strides[at] = j * d, j * d + (o - 1) * s + 1, s
            pieces.append(lax.slice(x, start, limit, strides))
        x = jnp.stack(pieces, axis=1)       # (C, k_axis, k_later.., B, ...)
    c, b = x.shape[0], x.shape[1 + n]
    return x.reshape((c, -1, b) + tuple(geo.out_spatial))


def interleave_phases(phases, stride):
    """Stride phases back into positions: ``phases`` (one per residue tuple, in
    itertools.product order), each (A, B, t_1 .. t_n), where phase (r_1 .. r_n) holds
    positions t * stride + r -> (A, B, t_1 * s_1, ..., t_n * s_n). One transpose."""
    return _interleave(jnp.stack(phases).reshape(tuple(stride) + phases[0].shape), stride)


def _interleave(grid, stride):
    """The phases as one array (s_1 .. s_n, A, B, t_1 .. t_n) -> (A, B, t_1 * s_1, ...)."""
    n = len(stride)
    # (s_1 .. s_n, A, B, t_1 .. t_n) -> (A, B, t_1, s_1, ..., t_n, s_n)
    order = (n, n + 1) + sum(((n + 2 + a, a) for a in range(n)), ())
    return jnp.transpose(grid, order).reshape(
        grid.shape[n:n + 2] + tuple(t * s for t, s in zip(grid.shape[n + 2:], stride)))


def _phase_spans(geo):
    """Each phase's extent per spatial axis: output positions plus the kernel's reach."""
    return [o + ((k - 1) * d) // s for o, k, d, s in
            zip(geo.out_spatial, geo.kernel, geo.dilation, geo.stride)]


def _crop_to_input(full, geo, first):
    """The padded positions (spatial axes at ``first``) cut back to the input: zeros
    for positions no window reaches, the padding dropped."""
    n = len(geo.kernel)
    short = [max(0, p + size - f) for p, size, f in
             zip(geo.pad, geo.in_spatial, full.shape[first:first + n])]
    if any(short):
        full = jnp.pad(full, [(0, 0)] * first + [(0, h) for h in short]
                       + [(0, 0)] * (full.ndim - first - n))
    start = [0] * full.ndim
    limit = list(full.shape)
    for a, (p, size) in enumerate(zip(geo.pad, geo.in_spatial)):
        start[first + a], limit[first + a] = p, p + size
    return lax.slice(full, start, limit)


# Above this many kernel offsets (and without dilation) col2im sums whole taps, not
# offsets: FCN-32s's 64x64 stride-32 upsampling (4096 offsets, 1024 phases) took 20.4 s
# to compile offset by offset, by taps (4 pieces) 0.5 s, and ran 1.2x slower alone
# (fwd+bwd 180 vs 149 ms). Below it the offsets' form stays: it was measured on
# CaffeNet's, GoogLeNet's and ResNet-50's strided shapes.
COL2IM_MAX_OFFSETS = 256


def by_taps(geo):
    """Whether col2im sums whole taps (more than COL2IM_MAX_OFFSETS offsets, no dilation)."""
    return int(np.prod(geo.kernel)) > COL2IM_MAX_OFFSETS and all(d == 1 for d in geo.dilation)


def col2im(dcols, geo):
    """The adjoint of ``columns``: (A, K, B, out...) -> (A, B, in...), each entry added
    back where it was read (A, B: any two leading axes, e.g. channels and batch).

    No strided placement: the padded positions of each axis split by their residue
    modulo the stride (phase r holds positions t * stride + r); kernel offset j lands,
    for output o, on t = o + (j * dilation) // stride of phase (j * dilation) % stride,
    a plain shift. Each phase sums the shifted pieces of its kernel offsets, and one
    transpose interleaves the phases. (MAX pooling's backward is this map too.)
    """
    if by_taps(geo):
        return _col2im_by_taps(dcols, geo)
    spans = _phase_spans(geo)
    zero = jnp.zeros((), dcols.dtype)
    phases = {}
    for i, off in enumerate(_offsets(geo)):
        residue, shifts = phase_of(off, geo)
        config = [(0, 0, 0), (0, 0, 0)] + [(q, t - o - q, 0) for q, t, o in
                                           zip(shifts, spans, geo.out_spatial)]
        piece = lax.pad(dcols[:, i], zero, config)
        phases[residue] = piece if residue not in phases else phases[residue] + piece
    return assemble_phases(phases, dcols.shape[:1] + dcols.shape[2:3], dcols.dtype, geo)


def _col2im_by_taps(dcols, geo):
    """col2im without dilation, all phases at once: kernel offset j = t * stride + r
    (tap t, residue r) lands on phase r, shifted by t. The kernel axes, padded to whole
    taps, split into (taps, stride); each tap combination is one piece holding every
    phase, shifted and summed; one transpose interleaves the phases."""
    n = len(geo.kernel)
    a, b = dcols.shape[0], dcols.shape[2]
    x = dcols.reshape((a,) + tuple(geo.kernel) + (b,) + tuple(geo.out_spatial))
    taps = [-(-k // s) for k, s in zip(geo.kernel, geo.stride)]
    x = jnp.pad(x, [(0, 0)] + [(0, t * s - k) for t, s, k in
                               zip(taps, geo.stride, geo.kernel)] + [(0, 0)] * (n + 1))
    x = x.reshape((a,) + sum(((t, s) for t, s in zip(taps, geo.stride)), ()) + x.shape[n + 1:])
    total = None
    for tap in itertools.product(*[range(t) for t in taps]):
        index = (slice(None),) + sum(((t, slice(None)) for t in tap), ())
        piece = jnp.pad(x[index], [(0, 0)] * (n + 2) + [(t, count - 1 - t) for t, count in
                                                        zip(tap, taps)])
        total = piece if total is None else total + piece   # (A, s.., B, spans..)
    # (the two transposes are one: XLA composes them)
    grid = jnp.moveaxis(total, tuple(range(1, n + 1)), tuple(range(n)))
    return _crop_to_input(_interleave(grid, geo.stride), geo, 2)


def phase_of(offset, geo):
    """Where a kernel offset's products land in col2im's stride phases: (the residue of
    its phase, per axis; its shift q per axis: output o goes to phase position o + q)."""
    shifts = [divmod(j * d, s) for j, d, s in zip(offset, geo.dilation, geo.stride)]
    return tuple(r for _, r in shifts), tuple(q for q, _ in shifts)


def assemble_phases(phases, lead, dtype, geo):
    """{residue: (A, B, spans...)} -> (A, B, in...): the phases no offset reaches are
    zeros; interleaved (one transpose) and cut to the input."""
    spans = tuple(_phase_spans(geo))
    full = interleave_phases(
        [phases.get(r, jnp.zeros(tuple(lead) + spans, dtype))
         for r in itertools.product(*[range(s) for s in geo.stride])], geo.stride)
    return _crop_to_input(full, geo, 2)


def _channels_first(a):
    return jnp.swapaxes(a, 0, 1)      # (B, C, ...) <-> (C, B, ...)


def _grouped_cols(cols, group):
    """(C, K, b, out...) -> (g, C/g * K, b * prod(out))."""
    c, k = cols.shape[:2]
    return cols.reshape(group, (c // group) * k, -1)


# -- 1x1 kernels without padding: the input is its own columns ------------------------
# No im2col, no batch chunks: each map is one dot (strided: of the strided slice).
# Against the chunked columns, on GoogLeNet's 1x1 shapes at batch 32 (ms): forward
# 1.1-2.4x faster (64x56x56 -> 64: 20.8 vs 50.3), weight gradients 1.0-2.2x, data
# gradients 1.1-2.3x except the two smallest (7x7, 24 outputs: 0.8-0.9x).
# The dot takes one of two forms by the number of output positions P:
# * P >= PER_IMAGE_MIN_POSITIONS: per image, as Caffe computes it (the batch as the
#   dot's batch dimension). Every operand and result keeps Caffe's (B, C, P) layout,
#   contracted over its minor axis or over C, so XLA copies nothing.
# * smaller P: one GEMM over the whole batch, channel-major: (O, C) x (C, B * P), the
#   operands and result permuted between (B, C, P) and (C, B * P) (runs of P contiguous
#   values; per-image GEMMs are too small to pay at 14x14 and below). This replaced
#   (B * P, C) x (C, O), the form XLA picks for a plain einsum, whose result is read
#   across its layout by every reader: in ResNet-50's step, BatchNorm's backward
#   recomputed the normalized value from the (B * P, O) result at a stride of O floats
#   (512 to 2048: the same cache sets), about 105 ms per 28x28 map, 2.1 s a step in
#   such transposing fusions (XLA trace; Intel Xeon with AVX-512, 2026-12-02). Channel-
#   major / batch-major (benchmarks/ab_step.py, 4 rounds of 6 steps, 2026-12-02, that
#   machine): ResNet-50's step 0.932 (every round 0.88-0.95), GoogLeNet's 0.931
#   (0.92-0.98); deploy forwards ResNet-50 0.979, GoogLeNet 1.036 (its result read
#   once, not twice). Channel-major in the backward alone, the forward batch-major:
#   ResNet-50 1.064 against channel-major throughout. (On the AMD machine of the
#   fifteenth session the same form measured 1.015 and 1.073, noisy: NOTES.md.)
# Alone, per image / whole batch (ms ratios, 2026-12-01, against the batch-major whole
# batch), ResNet-50's 1x1 shapes at
# batch 16: at 56x56 forward (with an elementwise reader) 0.39-0.74, weight gradients
# 0.30-0.37, data gradients 0.32-0.57; at 28x28 0.59-0.99 / 0.90-1.25 / 0.70-0.81; at
# 14x14 0.79-1.27 / 2.3-3.1 / 0.69-1.53; at 7x7 2.0-3.3 / 8-13 / 4.3-6.4. In whole
# steps (two solvers in one process, steps alternated), per image from 56x56 against
# never: ResNet-50 0.94, GoogLeNet (batch 32) 0.97 and 1.02. From 28x28: ResNet-50
# 0.93-0.99 over four runs (1.00 against from 56x56), GoogLeNet 1.02 and 1.03 (both
# construction orders). Hence 56x56. (Those one-process A/Bs may have timed one
# variant's code twice: benchmarks/NOTES.md, fifteenth session. Measured again with
# benchmarks/ab_step.py, one process per variant, 2026-12-02: never per image took
# 1.14x and 1.21x the time of from 56x56 on ResNet-50's step, 1.18x over 12 steps;
# against the channel-major whole batch, 1.046 over 4 rounds of 6 steps, every round
# 1.01-1.08, on the Intel machine.)
PER_IMAGE_MIN_POSITIONS = 3136


def pointwise(geo):
    return all(k == 1 for k in geo.kernel) and not any(geo.pad)


def per_image(geo):
    """Whether a pointwise map takes the per-image form (above)."""
    return int(np.prod(geo.out_spatial)) >= PER_IMAGE_MIN_POSITIONS


def _sampled(x, geo):
    """x (B, C, in...) at the output positions: (B, C, out...)."""
    n = len(geo.kernel)
    if all(s == 1 for s in geo.stride):
        return x
    limit = x.shape[:2] + tuple((o - 1) * s + 1 for o, s in zip(geo.out_spatial, geo.stride))
    return lax.slice(x, (0,) * (n + 2), limit, (1, 1) + tuple(geo.stride))


def _per_image_weights(w, b, group):
    """w (O, C/g, 1...) as (B, g, O/g, C/g): the same matrix for each image."""
    o, cg = w.shape[:2]
    return jnp.broadcast_to(w.reshape(group, o // group, cg), (b, group, o // group, cg))


_BATCH_GROUP = ((0, 1), (0, 1))     # dot_general batch dimensions (image, group)


def _channel_major(a):
    """(B, g, n, P) -> (g, n, B * P): each channel's positions over the whole batch."""
    b, g, n, p = a.shape
    return jnp.transpose(a, (1, 2, 0, 3)).reshape(g, n, b * p)


def _batch_major(a, b):
    """(g, n, B * P) -> (B, g, n, P)."""
    g, n, bp = a.shape
    return jnp.transpose(a.reshape(g, n, b, bp // b), (2, 0, 1, 3))


def _pointwise_forward(x, w, group, geo):
    b, c, o = x.shape[0], x.shape[1], w.shape[0]
    xs = _sampled(x, geo).reshape(b, group, c // group, -1)
    if per_image(geo):
        y = lax.dot_general(_per_image_weights(w, b, group), xs, (((3,), (2,)), _BATCH_GROUP))
    else:
        y = _batch_major(lax.dot_general(w.reshape(group, o // group, c // group),
                                         _channel_major(xs), (((2,), (1,)), ((0,), (0,)))), b)
    return y.reshape((b, o) + tuple(geo.out_spatial))


def _pointwise_data_diff(dy, w, group, geo):
    b, (o, cg) = dy.shape[0], w.shape[:2]
    d = dy.reshape(b, group, o // group, -1)
    # W^T (g, C/g, O/g) written once (small), so that the dot contracts its left
    # operand's minor axis: XLA's YNNPACK dots take no other (W itself, contracted over
    # O, went to Eigen: per image at 56x56, alone, 12.5 vs 16.8 ms for 256 -> 64
    # channels, 15.2 vs 26.4 for 256 -> 128; but ResNet-50's whole step, where Eigen's
    # dot ran beside other work, 1.001 over 4 rounds of ab_step: no gain there).
    wg = w.reshape(group, o // group, cg)
    if not per_image(geo) and (o + cg * group) * b * d.shape[-1] < o * cg:
        # W bigger than dy and dx together (FCN's fc7, 4096 x 4096 on 16x16): transpose
        # those instead, dx^T = dy^T W, W contracted over its major axis (alone: 41 vs
        # 157 ms; 2026-12-03).
        dt = lax.optimization_barrier(jnp.swapaxes(_channel_major(d), 1, 2))  # (g, B*P, O/g)
        dx = lax.dot_general(dt, wg, (((2,), (1,)), ((0,), (0,))))
        dx = _batch_major(jnp.swapaxes(dx, 1, 2), b)
    else:
        wt = lax.optimization_barrier(jnp.swapaxes(wg, 1, 2))
        if per_image(geo):
            dx = lax.dot_general(jnp.broadcast_to(wt, (b,) + wt.shape), d,
                                 (((3,), (2,)), _BATCH_GROUP))
        else:
            dx = _batch_major(lax.dot_general(wt, _channel_major(d),
                                              (((2,), (1,)), ((0,), (0,)))), b)
    dx = dx.reshape((b, cg * group) + tuple(geo.out_spatial))
    if all(s == 1 for s in geo.stride):
        return dx
    return lax.pad(dx, jnp.zeros((), dx.dtype), [(0, 0, 0), (0, 0, 0)] + [
        (0, size - (o - 1) * s - 1, s - 1)
        for size, o, s in zip(geo.in_spatial, geo.out_spatial, geo.stride)])


def _pointwise_weight_diff(x, dy, group, geo):
    b, c, o = x.shape[0], x.shape[1], dy.shape[1]
    xs = _sampled(x, geo).reshape(b, group, c // group, -1)
    d = dy.reshape(b, group, o // group, -1)
    if per_image(geo):     # each image's (g, O/g, C/g), then their sum
        dw = jnp.sum(lax.dot_general(d, xs, (((3,), (3,)), _BATCH_GROUP)), axis=0)
    else:
        dw = lax.dot_general(_channel_major(d), _channel_major(xs), (((2,), (2,)), ((0,), (0,))))
    return dw.reshape((o, c // group) + tuple(geo.kernel))



# Channels-last pointwise maps (ungrouped), on arrays held (B, spatial..., C) as the
# engine hands a layer in a channels-last run: the input is already the (positions, C)
# matrix, so each map is one dot over the whole batch, with no per-image or
# channel-major arrangement. Alone (AMD EPYC, 2 cores, 2026-12-04, ms, Caffe's order /
# channels-last): forward 0.65 / 0.53 (512 -> 512 at 14x14, one image), 46 / 40 (32 ->
# 64 at 112x112, batch 32), 21 / 16 (512 at 14x14, batch 32); data gradient 41 / 35 (128
# at 56x56, batch 32), 20 / 16 (512); the weight gradient contracts the positions, the
# major axis of both operands: 14 / 20 and 23 / 29 on the large maps, level on the small.
def _sampled_last(x, geo):
    if all(s == 1 for s in geo.stride):
        return x
    n = len(geo.kernel)
    limit = ((x.shape[0],) + tuple((o - 1) * s + 1 for o, s in zip(geo.out_spatial, geo.stride))
             + (x.shape[-1],))
    return lax.slice(x, (0,) * (n + 2), limit, (1,) + tuple(geo.stride) + (1,))


@functools.partial(jax.jit, inline=True, static_argnums=(2,))
def pointwise_forward_last(x, w, geo):
    """y = W x for x (B, in..., C), w (O, C, 1...) -> (B, out..., O)."""
    o, c = w.shape[:2]
    xs = _sampled_last(x, geo)
    y = lax.dot_general(xs.reshape(-1, c), w.reshape(o, c), (((1,), (1,)), ((), ())))
    return y.reshape(xs.shape[:-1] + (o,))


@functools.partial(jax.jit, inline=True, static_argnums=(2,))
def pointwise_data_diff_last(dy, w, geo):
    """dE/dx for dy (B, out..., O) -> (B, in..., C): dy W, zeros between strided samples."""
    o, c = w.shape[:2]
    dx = lax.dot_general(dy.reshape(-1, o), w.reshape(o, c), (((1,), (0,)), ((), ())))
    dx = dx.reshape(dy.shape[:-1] + (c,))
    if all(s == 1 for s in geo.stride):
        return dx
    return lax.pad(dx, jnp.zeros((), dx.dtype), [(0, 0, 0)] + [
        (0, size - (out - 1) * s - 1, s - 1)
        for size, out, s in zip(geo.in_spatial, geo.out_spatial, geo.stride)] + [(0, 0, 0)])


@functools.partial(jax.jit, inline=True, static_argnums=(2,))
def pointwise_weight_diff_last(x, dy, geo):
    """dE/dW for x (B, in..., C), dy (B, out..., O) -> (O, C, 1...)."""
    o, c = dy.shape[-1], x.shape[-1]
    xs = _sampled_last(x, geo)
    dw = lax.dot_general(dy.reshape(-1, o), xs.reshape(-1, c), (((0,), (0,)), ((), ())))
    return dw.reshape((o, c) + tuple(geo.kernel))

# ``last`` (ungrouped maps): the forward's product is written position-major, (B * out,
# O), i.e. channels-last, and the weight gradient reads dy so: for a convolution whose
# top the engine keeps channels-last (Convolution._gemm_top_last: FCN's conv1_1). The
# bias is then added before the product is reordered to Caffe's axes, so that the
# engine's reorder back (its channels-last run) cancels this one. Added after it, the
# sum sat between the two, and XLA made a reduction of the run (ResNet-50's bn_conv1:
# the batch mean and variance) read the sum in Caffe's order, written out so first:
# two transposed copies of a 16x64x112x112 map a step.
@functools.partial(jax.jit, inline=True, static_argnums=(2, 3, 4))
def forward(x, w, group, geo, last=False, bias=None):
    """y = W * x (+ bias, per output channel) for x (B, C, in...), w (O, C/g, k...)
    -> (B, O, out...)."""
    if pointwise(geo):
        return add_bias(_pointwise_forward(x, w, group, geo), bias)
    o = w.shape[0]
    wg = w.reshape(group, o // group, -1)

    def one(xb):
        cols = _grouped_cols(columns(_channels_first(xb), geo), group)
        if last:
            y = lax.dot_general(cols[0], wg[0], (((0,), (1,)), ((), ())))   # (b*out, O)
            y = y.reshape((xb.shape[0],) + tuple(geo.out_spatial) + (o,))
            return add_bias(y, bias, y.ndim - 1)
        y = lax.dot_general(wg, cols, (((2,), (1,)), ((0,), (0,))))     # (g, O/g, b*out)
        return add_bias(_channels_first(y.reshape((o, xb.shape[0]) + tuple(geo.out_spatial))),
                        bias)
    assert not last or group == 1, "channels-last GEMM products are ungrouped"
    # The bias is added to each chunk's product, inside the loop: added after it, the
    # sum was a pass of its own over the whole map (ResNet-50's conv1 at batch 16: 13.5
    # of its forward's 95 ms, 2026-12-06, AMD EPYC VM; inside, the loop's in-place
    # write adds it). The steps were level (ab_step.py --interleave, inside / after:
    # ResNet-50 1.003, pairs 0.99-1.02; CaffeNet 1.001, 0.99-1.01).
    y = _map_batch(one, [x], _per_chunk(x.shape[0], x.shape[1], geo, x.dtype.itemsize))
    return jnp.moveaxis(y, -1, 1) if last else y


def add_bias(y, bias, axis=1):
    """y + bias along ``axis`` (None: y)."""
    if bias is None:
        return y
    shape = [1] * y.ndim
    shape[axis] = -1
    return y + bias.reshape(shape)


# -- the data gradient by kernel rows --------------------------------------------------
# At stride 1, when one kernel row's products for the whole batch fit in ROW_BYTES, the
# data gradient skips the column array: one GEMM per offset along the first kernel
# axis gives that row's products (g, K_rest * C/g, out..., B); the row's pieces are
# summed at their shifts (one fusion), and the sum is added in place
# (dynamic_update_slice) at the row's shift. The layout is spatial-major,
# (C, in..., B): the shifts move runs of out_width * B floats, where the channel-major
# col2im above moves runs of out_width. And the in-place adds materialize the sum: by
# columns, XLA fused col2im's 25-piece sum into each of its consumers (LeNet's pool1
# backward read it four times: a 62 ms step instead of 19).
# Measured alone (batch 32/64, 2026-12-01, ms: rows / columns / XLA's convolution):
# LeNet's conv2 4.3 / 6.1 / 7.6; GoogLeNet's 5x5 convolutions at 14x14 and 7x7 and 3x3
# at 7x7 (rows of 1-3.8 MB) 2.8-15.0 / 3.6-17.2 / 3.8-23.9; but with a 7.7 MB row
# (GoogLeNet's inception_3a 5x5) 24.8 / 13.0 / 11.3, hence the limit. Strided, rows
# lost to columns (3x3 stride 2, 2.3 MB rows: 6.5 vs 5.9; Deconvolution 4x4 stride 2:
# 10.5 vs 7.7), so strided maps keep the columns. One image at a time, rows lost to
# columns on every shape measured (2026-12-03, ms: GoogLeNet's and ResNet-50's 3x3/5x5
# at 7x7-28x28 0.49-5.8 / 0.38-2.2; FCN's fc6, 7x7 512 -> 4096 on 22x22, 441 / 181):
# each row's GEMM is then small and the weight's transposed copy outweighs the rows.
ROW_BYTES = 4 << 20


def _row_bytes(dy_shape, w_shape, group, geo, itemsize):
    """Bytes of one kernel row's products for the whole batch."""
    rest = int(np.prod(geo.kernel[1:]))
    return rest * w_shape[1] * group * int(np.prod(geo.out_spatial)) * dy_shape[0] * itemsize


def by_rows(dy_shape, w_shape, group, geo, itemsize):
    """Whether ``data_diff`` takes the kernel-rows form for these shapes."""
    return (dy_shape[0] > 1 and all(s == 1 for s in geo.stride) and not pointwise(geo)
            and _row_bytes(dy_shape, w_shape, group, geo, itemsize) <= ROW_BYTES)


def _data_diff_by_rows(dy, w, group, geo):
    """data_diff at stride 1 in one piece, a GEMM per offset along the first kernel
    axis (above)."""
    assert all(s == 1 for s in geo.stride), geo
    n = len(geo.kernel)
    b, (o, cg) = dy.shape[0], w.shape[:2]
    k0, rest = geo.kernel[0], list(itertools.product(*[range(k) for k in geo.kernel[1:]]))
    # w (O, C/g, k0, rest...) -> per first-axis offset: (g, O/g, rest * C/g)
    wt = jnp.transpose(w.reshape(group, o // group, cg, k0, len(rest)), (3, 0, 1, 4, 2))
    wt = wt.reshape(k0, group, o // group, len(rest) * cg)
    d = jnp.transpose(dy, (1,) + tuple(range(2, 2 + n)) + (0,))      # (O, out..., B)
    d = d.reshape(group, o // group, -1)
    spans = _phase_spans(geo)                                        # padded input
    zero = jnp.zeros((), dy.dtype)
    acc = jnp.zeros((group, cg) + tuple(spans) + (b,), dy.dtype)
    for i0 in range(k0):
        row = lax.dot_general(wt[i0], d, (((1,), (1,)), ((0,), (0,))))   # (g, rest*C/g, N)
        row = row.reshape((group, len(rest), cg) + tuple(geo.out_spatial) + (b,))
        total = None
        for j, off in enumerate(rest):
            config = [(0, 0, 0)] * 3 + [
                (k * dil, t - out - k * dil, 0) for k, dil, out, t in
                zip(off, geo.dilation[1:], geo.out_spatial[1:], spans[1:])] + [(0, 0, 0)]
            piece = lax.pad(row[:, j], zero, config)
            total = piece if total is None else total + piece
        start = (0, 0, i0 * geo.dilation[0]) + (0,) * n
        acc = lax.dynamic_update_slice(
            acc, lax.dynamic_slice(acc, start, total.shape) + total, start)
    full = _crop_to_input(acc.reshape((group * cg,) + tuple(spans) + (b,)), geo, 1)
    return jnp.transpose(full, (n + 1,) + tuple(range(n + 1)))         # (B, C, in...)


@functools.partial(jax.jit, inline=True, static_argnums=(2, 3))
def data_diff(dy, w, group, geo):
    """dE/dx = col2im(W^T dE/dy) for dy (B, O, out...), w (O, C/g, k...) -> (B, C, in...):
    by kernel rows where they fit in ROW_BYTES, else by columns in batch chunks."""
    if pointwise(geo):
        return _pointwise_data_diff(dy, w, group, geo)
    if by_rows(dy.shape, w.shape, group, geo, dy.dtype.itemsize):
        return _data_diff_by_rows(dy, w, group, geo)
    return _data_diff_by_columns(dy, w, group, geo)


def _data_diff_by_columns(dy, w, group, geo):
    """data_diff in batch chunks: the columns' gradient in one GEMM, then col2im."""
    o, cg = w.shape[:2]
    k = int(np.prod(geo.kernel))
    wg = w.reshape(group, o // group, cg * k)

    def one(dyb):
        d = _channels_first(dyb).reshape(group, o // group, -1)
        dcols = lax.dot_general(wg, d, (((1,), (1,)), ((0,), (0,))))    # (g, C/g*K, b*out)
        dcols = dcols.reshape((cg * group, k, dyb.shape[0]) + tuple(geo.out_spatial))
        return _channels_first(col2im(dcols, geo))
    return _map_batch(one, [dy], _per_chunk(dy.shape[0], cg * group, geo, dy.dtype.itemsize))


@functools.partial(jax.jit, inline=True, static_argnums=(2, 3, 4))
def weight_diff(x, dy, group, geo, last=False):
    """dE/dW = dE/dy columns(x)^T, summed over the batch in chunks -> (O, C/g, k...)."""
    if pointwise(geo):
        return _pointwise_weight_diff(x, dy, group, geo)
    o, c = dy.shape[1], x.shape[1]
    assert not last or group == 1, "channels-last GEMM products are ungrouped"

    def one(xb, dyb):
        cols = _grouped_cols(columns(_channels_first(xb), geo), group)
        if last:
            d = jnp.moveaxis(dyb, 1, -1).reshape(-1, o)                     # (b*out, O)
            return lax.dot_general(d, cols[0], (((0,), (1,)), ((), ())))[None]
        d = _channels_first(dyb).reshape(group, o // group, -1)
        return lax.dot_general(d, cols, (((2,), (2,)), ((0,), (0,))))   # (g, O/g, C/g*K)
    dw = _sum_batch(one, [x, dy], _per_chunk(x.shape[0], c, geo, x.dtype.itemsize))
    return dw.reshape((o, c // group) + tuple(geo.kernel))


# -- the weight gradient of one image by output rows, channels-last ------------------
# One image's map (FCN's batch-1 VGG convolutions, 64-512 channels at 44x44-698x698)
# has no batch to chunk: its whole column array (conv1_2's: 1.1 GB) leaves the caches,
# and XLA's own convolution ran their weight gradients at 58-123 GFLOP/s here (the
# larger the map, the slower; its forwards on the same maps 142-198). So the
# columns are built a few output rows at a time (about CHUNK_BYTES), position-major
# from the channels-last input, (rows * out_rest, K * C), and each chunk's product
# dy^T . cols (O, K * C) is added in row order (lax.scan). Channels-last because
# inside a step these maps' inputs and top diffs mostly are (jcaffe.engine's
# channels-last runs: XLA cancels the transposes here against its own).
def _rows_per_chunk(x_channels, geo, itemsize):
    """Output rows per chunk: columns of about CHUNK_BYTES, at least one row."""
    row = x_channels * int(np.prod(geo.kernel)) * int(np.prod(geo.out_spatial[1:])) * itemsize
    return max(1, min(CHUNK_BYTES // max(row, 1), geo.out_spatial[0]))


@functools.partial(jax.jit, inline=True, static_argnums=(2,))
def weight_diff_by_rows(x, dy, geo):
    """dE/dW of an ungrouped convolution, (O, C, k...), from x (B, C, in...) and
    dy (B, O, out...): per image, columns of a few output rows at a time."""
    o, c = dy.shape[1], x.shape[1]
    xl = padded_last(jnp.moveaxis(x, 1, -1), geo)       # (B, in..., C)
    dl = jnp.moveaxis(dy, 1, -1)                        # (B, out..., O)
    rows = _rows_per_chunk(c, geo, x.dtype.itemsize)
    s0, d0, k0 = geo.stride[0], geo.dilation[0], geo.kernel[0]

    def chunk(xb, db, first, count):
        """The product of output rows [first, first + count) of one image."""
        xs = lax.dynamic_slice_in_dim(xb, first * s0, (count - 1) * s0 + (k0 - 1) * d0 + 1, 0)
        ds = lax.dynamic_slice_in_dim(db, first, count, 0)
        extents = (count,) + tuple(geo.out_spatial[1:])
        pieces = []
        for offset in _offsets(geo):
            start = [j * d for j, d in zip(offset, geo.dilation)] + [0]
            limit = [s + (e - 1) * st + 1 for s, e, st in zip(start, extents, geo.stride)] + [c]
            pieces.append(lax.slice(xs, start, limit, tuple(geo.stride) + (1,)))
        cols = jnp.stack(pieces, axis=-2).reshape(-1, len(pieces) * c)    # (P, K * C)
        return lax.dot_general(ds.reshape(-1, o), cols, (((0,), (0,)), ((), ())))

    def image(xb, db):
        return _sum_row_chunks(lambda first, count: chunk(xb, db, first, count),
                               geo.out_spatial[0], rows)

    total = image(xl[0], dl[0])
    if x.shape[0] > 1:
        total, _ = lax.scan(lambda acc, b: (acc + image(*b), None), total, (xl[1:], dl[1:]))
    return jnp.moveaxis(total.reshape((o,) + tuple(geo.kernel) + (c,)), -1, 1)


# -- the weight gradient of one image from shifted copies, channels-last -------------
# At stride 1, dW[o, c, i, j] = sum over positions (h, w) of dy[h, w, o] *
# x_pad[h + i*d, w + j*d, c]. Read over the padded width Wp = out_w + (kw - 1) * d
# rather than the output width, that sum splits into kernel rows and kernel columns:
# kh copies of x's padded rows (row i's copy starts at row i*d; each is a slice of
# whole rows, stacked along the channels) and kw copies of dy placed at column j*d of a
# zero row of width Wp (stacked likewise). One product (kw*O, positions) x (positions,
# kh*C) then holds every (j, o, i, c). Its columns are kh + kw copies of the map, not
# the kh*kw of im2col's, for (Wp / out_w) times the products (1.13x for 7x7 at 46x46).
# Built a few output rows at a time (about CHUNK_BYTES of x's copies), as
# weight_diff_by_rows builds its columns.
def _shifted_rows_per_chunk(batch, x_channels, geo, itemsize):
    """Output rows per chunk of weight_diff_shifted: kh copies of about CHUNK_BYTES."""
    wp = geo.out_spatial[1] + (geo.kernel[1] - 1) * geo.dilation[1]
    row = batch * wp * geo.kernel[0] * x_channels * itemsize
    return max(1, min(CHUNK_BYTES // max(row, 1), geo.out_spatial[0]))


@functools.partial(jax.jit, inline=True, static_argnums=(2,))
def weight_diff_shifted(x, dy, geo):
    """dE/dW of an ungrouped 2-d convolution at stride 1, (O, C, kh, kw), from x (B, C,
    H, W) and dy (B, O, out_h, out_w): the shifted copies above, summed over the batch
    and over chunks of output rows in row order (lax.scan)."""
    assert len(geo.kernel) == 2 and all(s == 1 for s in geo.stride), geo
    o, c, b = dy.shape[1], x.shape[1], x.shape[0]
    (kh, kw), (dh, dw), (oh, ow) = geo.kernel, geo.dilation, geo.out_spatial
    wp = ow + (kw - 1) * dw
    xl = padded_last(jnp.moveaxis(x, 1, -1), geo)       # (B, H, W, C), padded
    xl = lax.slice_in_dim(xl, 0, wp, axis=2)
    dl = jnp.moveaxis(dy, 1, -1)            # (B, out_h, out_w, O)
    rows = _shifted_rows_per_chunk(b, c, geo, x.dtype.itemsize)

    def chunk(first, count):
        xs = jnp.concatenate([lax.dynamic_slice_in_dim(xl, first + i * dh, count, 1)
                              for i in range(kh)], axis=-1)                # (B, n, Wp, kh*C)
        ds = lax.dynamic_slice_in_dim(dl, first, count, 1)
        ds = jnp.concatenate([lax.pad(ds, jnp.zeros((), dy.dtype), [(0, 0, 0), (0, 0, 0),
                                      (j * dw, (kw - 1 - j) * dw, 0), (0, 0, 0)])
                              for j in range(kw)], axis=-1)                # (B, n, Wp, kw*O)
        return lax.dot_general(ds.reshape(-1, kw * o), xs.reshape(-1, kh * c),
                               (((0,), (0,)), ((), ())))                   # (kw*O, kh*C)

    total = _sum_row_chunks(chunk, oh, rows)
    return total.reshape(kw, o, kh, c).transpose(1, 3, 2, 0)
