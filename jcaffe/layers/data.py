"""Data-less input layers: Input (blobs the user fills) and DummyData (fillers)."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from .. import fillers
from .. import rng as rng_draws
from ..blob import shape_string
from ..errors import LayerSetupError
from ..layer import JaxLayer, register


def _shapes_from(shape_msgs, num_top, layer, what):
    """One BlobShape for all tops, one per top (Caffe's rule for Input/DummyData)."""
    shapes = [tuple(int(d) for d in s.dim) for s in shape_msgs]
    if len(shapes) not in (0, 1, num_top):
        layer.fail("%s must be given once, once per top blob (%d), or not at all; got %d",
                   what, num_top, len(shapes))
    if len(shapes) == 1:
        shapes = shapes * num_top
    return shapes


@register("Input")
class Input(JaxLayer):
    """The net's input blobs: shaped by ``input_param.shape``, filled by the user.

    Forward does nothing and Reshape keeps whatever shape the user gave the
    blob (``net.blobs['data'].reshape(...)`` then ``net.reshape()``), as in Caffe.
    """

    exact_num_bottom_blobs = 0
    min_top_blobs = 1
    forward_writes_tops = False

    def layer_setup(self, bottom_shapes, num_top, rng):
        self.check_blob_counts(len(bottom_shapes), num_top)
        self.top_shapes = tuple(_shapes_from(self.p.shape, num_top, self, "input_param.shape"))
        self.set_loss_weights(num_top)
        return self.top_shapes

    def reshape(self, bottom_shapes):
        return self.top_shapes

    def forward(self, params, bottoms, rng):
        raise AssertionError("Input layers are not run")

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        return [], []


def _draw(f, shape, key, dtype):
    """A random filler's values on the device (fillers.fill's formulas; key: this top's)."""
    if f.type == "uniform":
        return rng_draws.uniform(key, shape, dtype, f.min, f.max)
    if f.type == "xavier":
        scale = math.sqrt(3.0 / fillers.fan(f, shape))
        return rng_draws.uniform(key, shape, dtype, -scale, scale)
    if f.type == "msra":
        return math.sqrt(2.0 / fillers.fan(f, shape)) * rng_draws.normal(key, shape, dtype)
    if f.type == "positive_unitball":
        rows = rng_draws.uniform(key, shape, dtype).reshape(shape[0], -1)
        return (rows / jnp.sum(rows, axis=1, keepdims=True)).reshape(shape)
    value = f.mean + f.std * rng_draws.normal(key, shape, dtype)
    if f.sparse >= 0:       # each value kept with probability sparse / shape[0]
        keep = rng_draws.bernoulli(jax.random.fold_in(key, 1),
                                   fillers.keep_probability(f, shape), shape)
        value = jnp.where(keep, value, jnp.zeros((), dtype))
    return value


@register("DummyData")
class DummyData(JaxLayer):
    """Tops filled by ``data_filler`` on every forward (constant 0 by default).

    Shapes come from ``shape`` (or the legacy num/channels/height/width lists);
    fillers are given once for all tops or once per top, any of Caffe's: constant
    and bilinear values are computed once, at setup; the random ones (uniform,
    gaussian, sparse gaussian, xavier, msra, positive_unitball) are drawn on the
    device with the net's random key, again at every forward, as Caffe refills them.
    """

    exact_num_bottom_blobs = 0
    min_top_blobs = 1
    needs_rng = True

    def setup(self, bottom_shapes):
        p = self.p
        num_top = len(self.layer_param.top)
        legacy = [len(p.num), len(p.channels), len(p.height), len(p.width)]
        if p.shape and any(legacy):
            self.fail("give either shape or num/channels/height/width, not both")
        if any(legacy):
            # (Caffe's rule: each of the four once, or once per top, independently)
            for name, n in zip(("num", "channels", "height", "width"), legacy):
                if n not in (1, num_top):
                    self.fail("Must specify '%s' once, or once per top blob (%d); specified %d",
                              name, num_top, n)
            pick = (lambda lst, i: lst[i if len(lst) > 1 else 0])
            self.shapes = [(pick(p.num, i), pick(p.channels, i), pick(p.height, i), pick(p.width, i))
                           for i in range(num_top)]
        else:
            self.shapes = _shapes_from(p.shape, num_top, self, "shape")
            if not self.shapes:
                self.fail("needs a shape for its tops")
        fl = list(p.data_filler)
        if len(fl) not in (0, 1, num_top):
            self.fail("data_filler must be given once, once per top (%d), or not at all; got %d",
                      num_top, len(fl))
        self.fillers = [fl[0] if len(fl) == 1 else fl[i] if fl else None for i in range(num_top)]
        self.fixed = {}     # top index: its values where they never change
        for i, (shape, f) in enumerate(zip(self.shapes, self.fillers)):
            if f is None:
                continue
            try:
                fillers.check(f, shape)
            except LayerSetupError as e:
                self.fail("data_filler of top %d (shape %s): %s", i, shape_string(shape), e)
            if f.type == "bilinear":
                self.fixed[i] = fillers.fill(f, shape, None, np.dtype(self.dtype))

    def reshape(self, bottom_shapes):
        return self.shapes

    def forward(self, params, bottoms, rng):
        tops = []
        for i, (shape, f) in enumerate(zip(self.shapes, self.fillers)):
            if f is None or f.type == "constant":
                value = 0.0 if f is None else f.value
                tops.append(jnp.full(shape, value, self.dtype))
            elif i in self.fixed:
                tops.append(jnp.asarray(self.fixed[i]))
            else:
                tops.append(_draw(f, shape, jax.random.fold_in(rng, i), self.dtype))
        return tops, None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        return [], []
