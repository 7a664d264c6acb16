"""Im2col: the column buffer of Caffe's convolution, as a layer.

Top channel ``(c * kh + i) * kw + j`` (generally: c, then the kernel offsets in
row-major order) at output position ``o`` holds the bottom at
``o * stride - pad + (i, j) * dilation`` (0 outside the image): Caffe's
im2col / im2col_nd order. Leading axes before ``axis`` are kept.
"""
import jax.numpy as jnp
import numpy as np

from ..layer import register
from . import conv_gemm
from .vision import Convolution


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

    # The column buffer is conv_gemm's (Caffe's order), moved to (B, C*K, out...).
    def forward(self, params, bottoms, rng):
        x, = bottoms
        xb = self._batched(x)
        cols = conv_gemm.columns(jnp.swapaxes(xb, 0, 1), self.geometry())   # (C, K, B, out)
        cols = jnp.moveaxis(cols, 2, 0).reshape((xb.shape[0], self.num_output) + self.out_spatial)
        return [cols.reshape(x.shape[:self.axis] + cols.shape[1:])], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        x, = bottoms
        dy = self._batched(top_diffs[0])
        d = dy.reshape((dy.shape[0], self.channels, -1) + self.out_spatial)
        dx = conv_gemm.col2im(jnp.moveaxis(d, 0, 2), self.geometry())           # (C, B, in)
        return [jnp.swapaxes(dx, 0, 1).reshape(x.shape)], []
