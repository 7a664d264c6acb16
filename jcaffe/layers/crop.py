"""Crop: cut bottom 0 to the shape of bottom 1 from ``axis`` on (Caffe's CropLayer)."""
import jax.numpy as jnp
from jax import lax

from ..blob import shape_string
from ..layer import JaxLayer, register
from .common import canonical_axis


@register("Crop")
class Crop(JaxLayer):
    """y = x[..., o_a : o_a + s_a, ..., o_n : o_n + s_n]: axes before ``axis`` (default 2)
    are kept, each axis a >= ``axis`` takes bottom 1's size s_a from offset o_a.

    ``offset``: none (all 0), one value (every cropped axis), or one per cropped axis.
    dE/dx = dE/dy placed back at the offsets, 0 elsewhere. Bottom 1 only gives a shape: a
    diff asked of it (force_backward reaches it, as in Caffe) is 0 (Caffe leaves it untouched).
    """

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        start = canonical_axis(self, self.p.axis, shape)
        n = len(self.p.offset)
        if n > 1 and start + n != len(shape):
            self.fail("number of offset values specified must be equal to the number of "
                      "dimensions following axis: axis %d of a %d-axis bottom (shape %s) "
                      "leaves %d dimensions, %d offsets given", start, len(shape),
                      shape_string(shape), len(shape) - start, n)

    def reshape(self, bottom_shapes):
        data, ref = bottom_shapes
        start = self.start = canonical_axis(self, self.p.axis, data)
        if len(ref) != len(data):
            self.fail("bottom 1 (shape %s) must have as many axes as bottom 0 (shape %s)",
                      shape_string(ref), shape_string(data))
        offsets = list(self.p.offset)
        new_shape, self.offsets = [], []
        for i, size in enumerate(data):
            off = 0
            if i >= start:
                size = ref[i]
                if len(offsets) == 1:
                    off = offsets[0]
                elif len(offsets) > 1:
                    off = offsets[i - start]
                if data[i] - off < ref[i]:
                    self.fail("the crop for dimension %d is out-of-bounds with size %d and "
                              "offset %d (bottom 0 has shape %s, bottom 1 has shape %s)",
                              i, ref[i], off, shape_string(data), shape_string(ref))
            new_shape.append(size)
            self.offsets.append(off)
        return [tuple(new_shape)]

    def forward(self, params, bottoms, rng):
        x = bottoms[0]
        top = self.top_shapes[0]
        return [lax.slice(x, self.offsets, [o + s for o, s in zip(self.offsets, top)])], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        x, ref = bottoms
        dy, = top_diffs
        dx = None
        if propagate_down[0]:
            pads = [(o, n - o - s, 0) for o, n, s in zip(self.offsets, x.shape, dy.shape)]
            dx = lax.pad(dy, jnp.zeros((), dy.dtype), pads)
        return [dx, jnp.zeros_like(ref) if propagate_down[1] else None], []
