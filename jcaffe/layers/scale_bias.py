"""Scale and Bias: multiply / add a blob broadcast over bottom 0 (Caffe's ScaleLayer, BiasLayer).

The scale (or bias) has the shape of bottom 0's axes ``axis .. axis + num_axes - 1``
(``num_axes: -1``: to the last axis; ``0``: a scalar) and is either a learned
param (one bottom) or bottom 1. It is broadcast over the other axes, and its
diff sums over them. Scale may add a learned bias too (``bias_term``).
"""
import contextlib
import math

import jax.numpy as jnp

from ..blob import shape_string
from ..layer import JaxLayer, register
from ..proto import caffe_pb2
from .common import canonical_axis


class _Broadcast(JaxLayer):
    """Shared geometry: where the scale/bias blob sits along bottom 0."""

    min_bottom_blobs = 1
    max_bottom_blobs = 2
    exact_num_top_blobs = 1
    what = "scale"

    @property
    def in_place(self):
        lp = self.layer_param
        return bool(lp.bottom) and bool(lp.top) and lp.bottom[0] == lp.top[0]

    def param_shape(self, shape, num_axes):
        """Caffe's LayerSetUp: the learned blob's shape for bottom 0 of ``shape``."""
        axis = canonical_axis(self, self.p.axis, shape)
        if num_axes < -1:
            self.fail("num_axes must be non-negative, or -1 to extend to the end of bottom[0] "
                      "(got %d)", num_axes)
        if num_axes >= 0 and len(shape) < axis + num_axes:
            self.fail("%s blob's shape extends past bottom[0]'s shape %s when applied starting "
                      "with bottom[0] axis = %d (num_axes %d)", self.what, shape_string(shape),
                      axis, num_axes)
        return tuple(shape[axis:] if num_axes == -1 else shape[axis:axis + num_axes])

    def place(self, shape, s_shape):
        """Caffe's Reshape: the axis where a blob of ``s_shape`` applies (0 for a scalar)."""
        axis = 0 if len(s_shape) == 0 else canonical_axis(self, self.p.axis, shape)
        if len(shape) < axis + len(s_shape):
            self.fail("%s blob's shape %s extends past bottom[0]'s shape %s when applied starting "
                      "with bottom[0] axis = %d", self.what, shape_string(s_shape),
                      shape_string(shape), axis)
        for i, d in enumerate(s_shape):
            if shape[axis + i] != d:
                self.fail("dimension mismatch between bottom[0]->shape(%d) = %d and %s->shape(%d) "
                          "= %d (bottom 0 %s, %s %s)", axis + i, shape[axis + i], self.what, i, d,
                          shape_string(shape), self.what, shape_string(s_shape))
        return axis

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        s_shape = bottom_shapes[1] if len(bottom_shapes) > 1 else self.blobs[0].shape
        self.axis = self.place(shape, tuple(s_shape))
        self.s_ndim = len(s_shape)
        return [shape]

    # The engine may hand a 4-d bottom 0 held channels-last, (N, H, W, C) (jcaffe.engine,
    # "channels-last runs"), where the blob is per channel (one bottom, axis 1, one axis:
    # ResNet's and MobileNet's Scale after each BatchNorm) and then sits on axis 3, or per
    # image and channel ((N, C) as bottom 1, axis 0: an SE block's excitation) and then
    # sits on axes 0 and 3; bottom 1 comes as it is. In Caffe's order an SE block's Scale
    # read its Concat transposed and the next module's convolutions transposed its top
    # back (SE-BN-Inception, benchmarks/NOTES.md, fifty-first session).
    _s_axes = None          # (set for a channels-last call)

    def _channels_last_axes(self):
        if len(self.bottom_shapes[0]) != 4:
            return None
        if len(self.bottom_shapes) == 1 and self.axis == 1 and self.s_ndim == 1:
            return (3,)
        if len(self.bottom_shapes) == 2 and self.axis == 0 and self.s_ndim == 2:
            return (0, 3)
        return None

    def channels_last_ok(self):
        return self._channels_last_axes() is not None

    @contextlib.contextmanager
    def channels_last_context(self):
        self._s_axes = self._channels_last_axes()
        try:
            yield
        finally:
            del self._s_axes

    def s_axes(self):
        """The axes of bottom 0 that the scale/bias spans, in its order."""
        return self._s_axes or tuple(range(self.axis, self.axis + self.s_ndim))

    def expand(self, s, ndim):
        """The scale/bias reshaped to broadcast against a bottom of ``ndim`` axes."""
        shape = [1] * ndim
        for axis, d in zip(self.s_axes(), s.shape):
            shape[axis] = d
        return jnp.reshape(s, shape)

    def reduce(self, g):
        """Sum ``g`` (bottom 0 shaped) over every axis the scale/bias is broadcast along."""
        keep = self.s_axes()
        return jnp.sum(g, axis=tuple(i for i in range(g.ndim) if i not in keep))


@register("Bias")
class Bias(_Broadcast):
    """y = x + b (b broadcast);  dE/dx = dE/dy;  dE/db = dE/dy summed over the broadcast axes."""

    what = "bias"

    def setup(self, bottom_shapes):
        if len(bottom_shapes) == 1:
            shape = self.param_shape(bottom_shapes[0], self.p.num_axes)
            self.init_params([(shape, self.p.filler)], self.filler_rng)

    def forward(self, params, bottoms, rng):
        x = bottoms[0]
        b = params[0] if len(bottoms) == 1 else bottoms[1]
        return [x + self.expand(b, x.ndim)], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        dy, = top_diffs
        dx = dy if propagate_down[0] else None
        if len(bottoms) == 1:
            return [dx], [self.reduce(dy) if self.wants_param_diff(0) else None]
        return [dx, self.reduce(dy) if propagate_down[1] else None], []


@register("Scale")
class Scale(_Broadcast):
    """y = x * s (+ b with bias_term), s and b broadcast;  dE/dx = dE/dy s;
    dE/ds = (dE/dy x) summed over the broadcast axes;  dE/db = dE/dy summed likewise.

    Blobs, as Caffe: [scale, bias] with one bottom, [bias] with two (s is bottom 1).
    In place, the bottom is saved for dE/ds, like Caffe's ``temp_``.
    """

    def setup(self, bottom_shapes):
        p = self.p
        x_shape = bottom_shapes[0]
        specs = []
        if len(bottom_shapes) == 1:
            filler = p.filler if p.HasField("filler") else \
                caffe_pb2.FillerParameter(type="constant", value=1)
            specs.append((self.param_shape(x_shape, p.num_axes), filler))
        if p.bias_term:
            # Caffe sets up a Bias layer with num_axes = scale's (bottom 1's axes with 2 bottoms).
            num_axes = len(bottom_shapes[1]) if len(bottom_shapes) > 1 else p.num_axes
            specs.append((self.param_shape(x_shape, num_axes), p.bias_filler))
        self.has_scale_param = len(bottom_shapes) == 1
        self.bias_index = 1 if self.has_scale_param else 0
        self.init_params(specs, self.filler_rng)

    def reshape(self, bottom_shapes):
        tops = super().reshape(bottom_shapes)
        if self.p.bias_term:
            b_shape = self.blobs[self.bias_index].shape
            if math.prod(b_shape) != math.prod(bottom_shapes[0][self.axis:self.axis + self.s_ndim]):
                self.fail("bias shape %s does not match the scale's place in bottom 0 %s",
                          shape_string(b_shape), shape_string(bottom_shapes[0]))
        return tops

    def _scale(self, params, bottoms):
        return params[0] if self.has_scale_param else bottoms[1]

    def forward(self, params, bottoms, rng):
        x = bottoms[0]
        s = self._scale(params, bottoms)
        y = x * self.expand(s, x.ndim)
        if self.p.bias_term:
            b = jnp.reshape(params[self.bias_index], s.shape)
            y = y + self.expand(b, x.ndim)
        return [y], (x if self.in_place else None)

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        x = bottoms[0] if saved is None else saved
        dy, = top_diffs
        s = self._scale(params, bottoms)
        ds = None
        want_ds = self.wants_param_diff(0) if self.has_scale_param else propagate_down[1]
        if want_ds:
            ds = jnp.reshape(self.reduce(dy * x), s.shape)
        dx = dy * self.expand(s, dy.ndim) if propagate_down[0] else None
        param_diffs = []
        if self.has_scale_param:
            param_diffs.append(ds)
        if self.p.bias_term:
            b_shape = self.blobs[self.bias_index].shape
            db = None
            if self.wants_param_diff(self.bias_index):
                db = jnp.reshape(self.reduce(dy), b_shape)
            param_diffs.append(db)
        bottom_diffs = [dx] if self.has_scale_param else [dx, ds]
        return bottom_diffs, param_diffs
