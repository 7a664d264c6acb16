"""Deconvolution: the transpose of Convolution (Caffe's DeconvolutionLayer).

Caffe runs a deconvolution as the data-gradient pass of a convolution whose
input is the deconvolution's top: its weight is (C_in, num_output / group,
k...) (``reverse_dimensions``), its output size is
``stride * (in - 1) + dilation * (k - 1) + 1 - 2 * pad``. Here the same
"virtual convolution" is kept explicitly, so Convolution's helpers apply as
they are: ``in_spatial`` is the virtual convolution's input (this layer's
top) and ``out_spatial`` its output (this layer's bottom).

  forward:  y = W^T * x      (Convolution._data_diff of x)
  backward: dE/dx = W * dE/dy (a plain convolution of the top diff),
            dE/dW = Convolution._weight_diff(dE/dy, x), dE/db = sum dE/dy.
"""
from ..layer import register
from . import conv_gemm
from .vision import Convolution


@register("Deconvolution")
class Deconvolution(Convolution):
    """y = W^T * x + b: a strided "fractional" convolution, the adjoint of Convolution's data map.

    Weight (C_in, num_output / group, k...), bias (num_output,). Options as Convolution
    (kernel/stride/pad/dilation per axis or _h/_w, group, axis, bias_term, fillers).
    """

    param_field = "convolution_param"

    def init_params(self, specs, rng):
        # Convolution.setup asks for (num_output, C_in / group, k...); Caffe's deconvolution
        # weight is (C_in, num_output / group, k...) and its fillers see that shape.
        (shape, filler), rest = specs[0], list(specs[1:])
        shape = (self.channels, self.num_output // self.group) + tuple(shape[2:])
        super().init_params([(shape, filler)] + rest, rng)

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        self._check_bottoms(bottom_shapes)
        bottom_spatial = tuple(shape[self.axis + 1:])
        top_spatial = []
        for i, size in enumerate(bottom_spatial):
            extent = self.dilation[i] * (self.kernel[i] - 1) + 1
            o = self.stride[i] * (size - 1) + extent - 2 * self.pad[i]
            if o < 1:
                self.fail("output size %d along spatial axis %d is not positive: stride %d * "
                          "(input %d - 1) + kernel extent %d - 2 * pad %d", o, i,
                          self.stride[i], size, extent, self.pad[i])
            top_spatial.append(o)
        # The virtual convolution runs from this layer's top to its bottom.
        self.in_spatial, self.out_spatial = tuple(top_spatial), bottom_spatial
        top_shape = tuple(shape[:self.axis]) + (self.num_output,) + self.in_spatial
        return [top_shape] * len(bottom_shapes)

    def channels_last_top(self):
        return False    # (its forward is a data gradient: GEMM and col2im, or phases)

    gemm_top_last = False

    # forward and backward are Convolution's, over the transposed maps
    def _forward_map(self, x, w, bias=None):
        return conv_gemm.add_bias(self._data_diff(x, w), bias)      # y = W^T * x (+ bias)

    def _backward_map(self, dy, w):
        return self._conv_forward(dy, w)      # dE/dx = W * dE/dy

    def _weight_grad(self, x, dy):
        return self._weight_diff(dy, x)       # the virtual convolution's input is the top
