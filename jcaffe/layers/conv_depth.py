"""A 3-d convolution as a 2-d one: the depth taps folded into the channels.

Caffe's N-d convolution (im2col_nd + GEMM) sums over a kernel of kd x kh x kw taps.
Each output plane at depth o reads the kd input planes at depth o*stride + j*dilation
- pad (j = 0 .. kd-1, zero outside). Stacking those planes along the channels gives a
2-d map of C * kd channels per output plane, and the 2-d convolution of that map by the
weight (O, C/g, kd, kh, kw) read as (O, C/g * kd, kh, kw) is the 3-d one: the same sums
of the same products. Channel c's tap j is channel c * kd + j, so each group's channels
stay together and the weight is a reshape, not a transpose. The output planes become
the 2-d map's batch: (B, C, D, H, W) -> (B * D_out, C * kd, H, W).

The fold is linear, so the three maps go through it: the forward folds x; the weight
gradient folds x and reads dy plane by plane; the data gradient of the 2-d map is
unfolded back (:func:`unfold`, the fold's adjoint: each tap's planes added at the
depths they were read from).
"""
import jax.numpy as jnp
from jax import lax


def fold(x, k, stride, pad, dilation, out):
    """(B, C, D, H, W) -> (B * out, C * k, H, W): plane ``o`` of the result holds, at
    channel c * k + j, x's plane o * stride + j * dilation - pad of channel c (zeros
    where that is outside x). ``out`` is the output depth (Caffe's)."""
    b, c = x.shape[:2]
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (0, 0, 0), (pad, pad, 0),
                                               (0, 0, 0), (0, 0, 0)])
    taps = [lax.slice_in_dim(xp, j * dilation, j * dilation + (out - 1) * stride + 1, stride,
                             axis=2) for j in range(k)]
    planes = jnp.stack(taps, axis=2)                          # (B, C, k, out, H, W)
    return planes.transpose(0, 3, 1, 2, 4, 5).reshape((b * out, c * k) + x.shape[3:])


def unfold(g, batch, k, stride, pad, dilation, depth):
    """The adjoint of :func:`fold`: (B * out, C * k, H, W) -> (B, C, depth, H, W), each
    tap's planes added back at the input depths :func:`fold` read them from (the
    padding's dropped)."""
    out = g.shape[0] // batch
    c = g.shape[1] // k
    planes = g.reshape((batch, out, c, k) + g.shape[2:]).transpose(0, 2, 3, 1, 4, 5)
    padded = depth + 2 * pad
    total = None
    for j in range(k):
        start = j * dilation
        end = start + (out - 1) * stride + 1
        placed = lax.pad(planes[:, :, j], jnp.zeros((), g.dtype),
                         [(0, 0, 0), (0, 0, 0), (start, padded - end, stride - 1),
                          (0, 0, 0), (0, 0, 0)])
        total = placed if total is None else total + placed
    return lax.slice_in_dim(total, pad, pad + depth, axis=2)


def planes(y):
    """(B, O, out, H, W) -> (B * out, O, H, W): a 3-d map's output planes as a batch."""
    b, o, out = y.shape[:3]
    return y.transpose(0, 2, 1, 3, 4).reshape((b * out, o) + y.shape[3:])


def from_planes(y, batch):
    """The inverse of :func:`planes`: (B * out, O, H, W) -> (B, O, out, H, W)."""
    out = y.shape[0] // batch
    return y.reshape((batch, out) + y.shape[1:]).transpose(0, 2, 1, 3, 4)


def weight_2d(w):
    """(O, C/g, kd, kh, kw) -> (O, C/g * kd, kh, kw): channel c's tap j at c * kd + j."""
    return w.reshape((w.shape[0], w.shape[1] * w.shape[2]) + w.shape[3:])


def weight_3d(w2, k):
    """The inverse of :func:`weight_2d`."""
    return w2.reshape((w2.shape[0], w2.shape[1] // k, k) + w2.shape[2:])
