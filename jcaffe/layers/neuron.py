"""Neuron layers: elementwise y = f(x), one bottom, one top of the same shape.

Each may run in place (top == bottom), so, as in Caffe, a backward uses only
what survives in-place computation: the top, or the bottom when the sign is
all it needs (ReLU).
"""
import jax
import jax.numpy as jnp

from .. import rng as rng_draws
from ..layer import JaxLayer, register


class NeuronLayer(JaxLayer):
    """Caffe's NeuronLayer: exactly one bottom and one top, top shaped like bottom."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    layout_free = True      # (not PReLU, which reads its channel axis; not Dropout)

    def reshape(self, bottom_shapes):
        return [bottom_shapes[0]]


@register("ReLU")
class ReLU(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0);  dE/dx = dE/dy * (1 if x > 0 else negative_slope)."""

    # The top stored once (engine.materialize) where the bottom comes straight from a
    # convolution or an inner product. In place (every zoo net's ReLU) the layer's bottom
    # and top are one blob, and the engine hands the layers after it, the step's returned
    # blob and this backward (its x) the blob's last value: max(x, 0) as an expression,
    # which XLA CPU fused into each of those readers, keeping x (the convolution's raw
    # output) alive from the forward to the backward beside the stored top. GoogLeNet
    # (batch 32, AMD Zen 1 VM): the step's XLA temporaries 559 -> 361 MB, peak RSS 3730
    # -> 3536 MB. Not after a BatchNorm and Scale chain (ResNet-50, MobileNet), whose
    # own input XLA keeps for the BatchNorm's backward anyway: stored there, ResNet-50's
    # step took 1.09-1.11x the time (3 rounds) and MobileNet's peak RSS grew 65 MB.
    # False: the top left to XLA (kept to compare the two).
    STORE_TOP = True
    STORED_AFTER = ("Convolution", "InnerProduct", "Deconvolution")

    def stores_tops_after(self, writers):
        return self.STORE_TOP and all(w is not None and w.type in self.STORED_AFTER
                                      for w in writers)

    def forward(self, params, bottoms, rng):
        x, = bottoms
        slope = self.p.negative_slope
        return [jnp.where(x > 0, x, x * slope) if slope else jnp.maximum(x, 0)], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        x, = bottoms
        dy, = top_diffs
        slope = self.p.negative_slope
        return [jnp.where(x > 0, dy, dy * slope)], []


@register("TanH")
class TanH(NeuronLayer):
    """y = tanh(x);  dE/dx = dE/dy * (1 - y^2)."""

    def forward(self, params, bottoms, rng):
        return [jnp.tanh(bottoms[0])], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        y, = tops
        return [top_diffs[0] * (1 - y * y)], []


@register("Sigmoid")
class Sigmoid(NeuronLayer):
    """y = 1 / (1 + exp(-x));  dE/dx = dE/dy * y * (1 - y)."""

    def forward(self, params, bottoms, rng):
        return [jax.nn.sigmoid(bottoms[0])], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        y, = tops
        return [top_diffs[0] * y * (1 - y)], []


@register("Dropout")
class Dropout(NeuronLayer):
    """TRAIN: y = x * mask / (1 - ratio), mask ~ Bernoulli(1 - ratio); TEST: y = x.

    dE/dx = dE/dy * mask / (1 - ratio) in TRAIN, dE/dy in TEST. The mask is what
    backward keeps (as booleans: a quarter of the bytes of Caffe's unsigned mask, and
    the same products), so in-place dropout is fine.
    """

    needs_rng = True
    layout_free = False     # (its mask is drawn in the top's order: keep Caffe's)

    def setup(self, bottom_shapes):
        ratio = self.p.dropout_ratio
        if not 0.0 <= ratio < 1.0:
            self.fail("dropout_ratio must be in [0, 1), got %g", ratio)

    def _train(self):
        from ..proto import caffe_pb2
        return self.phase == caffe_pb2.TRAIN

    def forward(self, params, bottoms, rng):
        x, = bottoms
        if not self._train():
            return [x], None
        ratio = self.p.dropout_ratio
        keep = rng_draws.bernoulli(rng, 1.0 - ratio, x.shape)
        return [x * self._scaled_mask(keep, x.dtype)], keep

    def _scaled_mask(self, keep, dtype):
        return keep.astype(dtype) * jnp.asarray(1.0 / (1.0 - self.p.dropout_ratio), dtype)

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        dy, = top_diffs
        return [dy if saved is None else dy * self._scaled_mask(saved, dy.dtype)], []
