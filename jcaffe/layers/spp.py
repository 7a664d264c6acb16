"""SPP: spatial pyramid pooling (Caffe's SPPLayer).

Level l (0 <= l < pyramid_height) pools with ``bins = 2^l`` per side:
``kernel = ceil(H / bins)``, ``pad = (kernel * bins - H + 1) // 2``, ``stride = kernel``
(same for W), through a Pooling layer with Caffe's rules (so its pad < kernel check
applies, and its ceil rounding may give other than ``bins`` outputs). The levels are
flattened and concatenated along axis 1: top (N, sum_l C * PH_l * PW_l). With
pyramid_height 1 the top is the single level's (N, C, PH, PW), not flattened.

The inner Pooling layers take this layer's phase (Caffe builds them with a fresh
LayerParameter, i.e. phase TRAIN, so STOCHASTIC would sample in TEST nets too).
"""
import jax
import jax.numpy as jnp

from ..blob import shape_count, shape_string
from ..errors import LayerSetupError
from ..layer import JaxLayer, create_layer, register
from ..proto import caffe_pb2

_SPP = caffe_pb2.SPPParameter
_POOL = caffe_pb2.PoolingParameter
_METHOD = {_SPP.MAX: _POOL.MAX, _SPP.AVE: _POOL.AVE, _SPP.STOCHASTIC: _POOL.STOCHASTIC}


@register("SPP")
class SPP(JaxLayer):
    """y = concat over levels of flatten(pool_l(x));  dE/dx = sum over levels of pool_l's backward."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        p = self.p
        self.height = p.pyramid_height
        if self.height < 1:
            self.fail("pyramid_height must be at least 1, got %d", self.height)
        if p.pool not in _METHOD:
            self.fail("Unknown pooling method %d", p.pool)
        self.needs_rng = p.pool == _SPP.STOCHASTIC and self.phase == caffe_pb2.TRAIN
        self.levels = []

    def level_param(self, level, h, w):
        """Caffe's GetPoolingParam for one pyramid level."""
        bins = 2 ** level
        lp = caffe_pb2.LayerParameter(name="%s_level%d" % (self.name, level), type="Pooling",
                                      phase=self.phase)
        pp = lp.pooling_param
        for size, side in ((h, "h"), (w, "w")):
            kernel = -(-size // bins)
            pad = (kernel * bins - size + 1) // 2
            setattr(pp, "kernel_" + side, kernel)
            setattr(pp, "pad_" + side, pad)
            setattr(pp, "stride_" + side, kernel)
        pp.pool = _METHOD[self.p.pool]
        return lp

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 4:
            self.fail("Input must have 4 axes, corresponding to (num, channels, height, "
                      "width); got shape %s", shape_string(shape))
        if shape[2] < 1 or shape[3] < 1:
            self.fail("Input dimensions cannot be zero (shape %s)", shape_string(shape))
        self.levels = []
        for level in range(self.height):
            lp = self.level_param(level, shape[2], shape[3])
            layer = create_layer(lp, self.dtype)
            try:
                layer.layer_setup([shape], 1, self.filler_rng)
            except LayerSetupError as e:
                self.fail("pyramid level %d (kernel %dx%d, pad %dx%d for a %dx%d input): %s",
                          level, lp.pooling_param.kernel_h, lp.pooling_param.kernel_w,
                          lp.pooling_param.pad_h, lp.pooling_param.pad_w, shape[2], shape[3], e)
            layer.param_propagate_down = []
            self.levels.append(layer)
        if self.height == 1:
            return [self.levels[0].top_shapes[0]]
        return [(shape[0], sum(shape_count(l.top_shapes[0], 1) for l in self.levels))]

    def forward(self, params, bottoms, rng):
        x, = bottoms
        outs, saved = [], []
        for i, layer in enumerate(self.levels):
            key = jax.random.fold_in(rng, i) if layer.needs_rng else None
            tops, s = layer.forward([], [x], key)[:2]
            outs.append(tops[0])
            saved.append((tops[0], s))
        if self.height == 1:
            return [outs[0]], saved
        return [jnp.concatenate([o.reshape(o.shape[0], -1) for o in outs], axis=1)], saved

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        dy, = top_diffs
        total, start = None, 0
        for layer, (top, s) in zip(self.levels, saved):
            size = shape_count(top.shape, 1)
            d = dy if self.height == 1 else dy[:, start:start + size].reshape(top.shape)
            start += size
            (dx,), _ = layer.backward([], bottoms, [top], s, [d], (True,))
            total = dx if total is None else total + dx
        return [total], []
