"""A grouped convolution with few channels per group as fewer, denser convolutions.

On CPU, Convolution runs a grouped convolution as one XLA convolution per piece
(XLA's grouped call is far off its fast path there, see Convolution._split_groups).
With few channels per group (ResNeXt's 32 groups of 4 channels) each piece is a
convolution of a short patch, C/group * prod(kernel) long, which Eigen's kernel
runs at a few GFLOP/s. Here a piece is a *block* of consecutive groups: one
dense convolution whose weight is zero between the block's groups. It multiplies
``groups_per_block`` times the work by zeros, and still ran faster where the
groups are narrow (benchmarks/NOTES.md, ResNeXt shapes).

The zeros are exact for finite values (a product with a zero weight adds +-0).
A non-finite input differs from Caffe's per-group arithmetic: an inf in one
group's channel times a zero weight is a NaN in the other groups of its block.
"""
import jax.numpy as jnp
import numpy as np


def groups_per_block(group, in_per_group, out_per_group, max_channels):
    """The largest divisor s of ``group`` with s * max(C/group, O/group) <= max_channels
    (1: the plain per-group split)."""
    widest = max(in_per_group, out_per_group)
    return max(s for s in range(1, group + 1)
               if group % s == 0 and (s == 1 or s * widest <= max_channels))


def block_diagonal(w, group, s):
    """Weights (O, C/group, k...) of ``group`` groups -> (O, s * C/group, k...): each
    block of ``s`` consecutive groups as one dense weight, zero between its groups."""
    if s == 1:
        return w
    o, cg, k = w.shape[0], w.shape[1], w.shape[2:]
    og = o // group
    w6 = w.reshape((group // s, s, og, 1, cg) + k)
    own = np.eye(s, dtype=bool).reshape((1, s, 1, s, 1) + (1,) * len(k))
    # A select, not a product with the identity: a non-finite weight stays in its group.
    blocks = jnp.where(own, w6, jnp.zeros((), w.dtype))
    return blocks.reshape((o, s * cg) + k)


def own_groups(dw, group, s):
    """The inverse of block_diagonal for a dense weight gradient (O, s * C/group, k...):
    each group's own (O/group, C/group, k...) entries, as (O, C/group, k...)."""
    if s == 1:
        return dw
    o, k = dw.shape[0], dw.shape[2:]
    cg, og = dw.shape[1] // s, o // group
    d = dw.reshape((group // s, s, og, s, cg) + k)
    return jnp.stack([d[:, a, :, a] for a in range(s)], axis=1).reshape((o, cg) + k)
