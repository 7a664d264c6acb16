"""Im2col: the column buffer of Caffe's convolution, as a layer.

Top channel ``(c * kh + i) * kw + j`` (generally: c, then the kernel offsets in
row-major order) at output position ``o`` holds the bottom at
``o * stride - pad + (i, j) * dilation`` (0 outside the image): Caffe's
im2col / im2col_nd order. Leading axes before ``axis`` are kept.
"""
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..layer import register
from .vision import Convolution


def _positions(size, out, k, s, p, d):
    """(out, k) input coordinates of each output position / kernel offset, and the padding
    (lo, hi) that makes them all valid indices of the padded axis."""
    pos = (np.arange(out) * s)[:, None] + np.arange(k) * d         # in padded coordinates
    hi = max(0, int(pos.max()) + 1 - size - p) if pos.size else 0
    return pos.astype(np.int32), (p, hi)


@register("Im2col")
class Im2col(Convolution):
    """y[c*K + k, o] = x[c, o * stride - pad + offset(k) * dilation] (0 in the padding),
    K = prod(kernel);  dE/dx = col2im(dE/dy): each dE/dy added back where it was read.

    Options: convolution_param's kernel/stride/pad/dilation (once, per axis, or _h/_w)
    and axis; num_output, group and bias are not used.
    """

    param_field = "convolution_param"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        self._setup_geometry(bottom_shapes[0])
        self.group = 1

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        # Channels may change between reshapes (Caffe recomputes them); the kernel may not.
        if len(shape) == self.axis + 1 + self.num_spatial:
            self.channels = shape[self.axis]
            self.num_output = self.channels * int(np.prod(self.kernel))
        return Convolution.reshape(self, bottom_shapes)

    def _plan(self):
        return [_positions(*a) for a in zip(self.in_spatial, self.out_spatial, self.kernel,
                                            self.stride, self.pad, self.dilation)]

    def forward(self, params, bottoms, rng):
        x, = bottoms
        xb = self._batched(x)
        plan = self._plan()
        n = self.num_spatial
        xp = jnp.pad(xb, [(0, 0), (0, 0)] + [pad for _, pad in plan])
        for i, (pos, _) in enumerate(plan):       # axis 2 + 2i becomes (out_i, k_i)
            xp = jnp.take(xp, pos, axis=2 + 2 * i)
        # (B, C, o1, k1, ..., on, kn) -> (B, C, k1..kn, o1..on)
        order = (0, 1) + tuple(3 + 2 * i for i in range(n)) + tuple(2 + 2 * i for i in range(n))
        cols = jnp.transpose(xp, order).reshape((xb.shape[0], self.num_output) + self.out_spatial)
        return [cols.reshape(x.shape[:self.axis] + cols.shape[1:])], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        x, = bottoms
        dy = self._batched(top_diffs[0])
        n = self.num_spatial
        plan = self._plan()
        d = dy.reshape((dy.shape[0], self.channels) + tuple(self.kernel) + self.out_spatial)
        # (B, C, k1..kn, o1..on) -> (B, C, o1, k1, ..., on, kn)
        order = (0, 1) + sum(((2 + n + i, 2 + i) for i in range(n)), ())
        d = jnp.transpose(d, order)
        for i in reversed(range(n)):              # (out_i, k_i) at axes a, a+1 -> padded axis
            pos, (lo, hi) = plan[i]
            size = self.in_spatial[i]
            onehot = (np.arange(size + lo + hi)[:, None, None] == pos[None]).astype(d.dtype)
            a = 2 + 2 * i
            summed = jnp.tensordot(onehot, d, axes=([1, 2], [a, a + 1]),
                                   precision=lax.Precision.HIGHEST)   # exact sums of 0/1 terms
            d = jnp.moveaxis(summed, 0, a)
            d = lax.slice_in_dim(d, lo, lo + size, axis=a)
        return [d.reshape(x.shape)], []
