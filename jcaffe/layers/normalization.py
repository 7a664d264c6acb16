"""Normalization layers: BatchNorm (Caffe's, statistics only; a Scale layer adds the affine
part) and MVN (mean-variance normalization)."""
import contextlib

import jax.numpy as jnp

from .. import engine
from ..layer import JaxLayer, register
from .common import FLATTEN_PER_CHANNEL, legacy_shape


def _centred_for_reduction(x, mean):
    """x - mean for a reduction's input, written x + (-mean): the same numbers (negation
    is exact in IEEE arithmetic), but XLA does not merge it with the x - mean of the
    layer's output. Merged, the centred array has two readers and XLA writes it to
    memory (with YNNPACK's reductions on CPU, see xla_options); apart, it fuses into
    the reduction. ResNet-50's training step (batch 16, 53 BatchNorms) lost 52 such
    writes, with the same loss to the bit; MVN's forward and backward alone
    (32x64x28x28) ran in 0.90x the time. The whole step's gain is not shown: 0.92-0.98x
    in one-process A/Bs that may have timed one variant twice, then 1.02x and 1.01x by
    round with benchmarks/ab_step.py (one process per variant; benchmarks/NOTES.md,
    fifteenth session), within this machine's noise."""
    return x + (-mean)



@register("BatchNorm")
class BatchNorm(JaxLayer):
    """y = (x - mean) / sqrt(var + eps), per channel (axis 1), over batch and spatial axes.

    Blobs, as Caffe: running mean sum (C,), running variance sum (C,), and the scale
    factor (1,); the statistics are mean = blob0 / blob2, var = blob1 / blob2 (0 when
    blob2 is 0). They are not learned: setup adds ``param { lr_mult: 0 }`` for each
    blob the prototxt gives no spec for, and refuses a spec with lr_mult != 0.

    ``use_global_stats`` (default: phase == TEST) uses the stored statistics:
    dE/dx = dE/dy / sqrt(var + eps). Otherwise the batch statistics, and forward
    returns the updated blobs (Caffe's moving average):
    blob2 = maf * blob2 + 1;  blob0 = maf * blob0 + mean;
    blob1 = maf * blob1 + m / (m - 1) * var  (m = count / C, the unbiased correction);
    dE/dx = (dE/dy - mean(dE/dy) - mean(dE/dy y) y) / sqrt(var + eps).
    Forward saves y and sqrt(var + eps) (Caffe's x_norm_ and temp_), so in place is fine.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    updates_params_in_forward = True
    # With the batch's statistics, the bottom diff is stored once (engine.materialize),
    # as Caffe stores every diff. It is an elementwise expression of dE/dy and two of its
    # reductions, and XLA CPU fused it into each reader that reads an element more than
    # once: in Caffe's CIFAR-10 BatchNorm example, into each of pool1's backward fusions
    # (per kernel offset: 11.4 ms of the step, 5.2 ms behind a ReLU in cifar10_full).
    # Steps, stored against fused (benchmarks/ab_step.py --interleave, 2026-12-06, AMD
    # EPYC Zen 1 VM; pairs' geometric mean and interval): that net 0.92x (3 rounds of
    # 20, 0.90-0.95), ResNet-50 0.94x (3 rounds of 4, 0.90-0.97), MobileNet 0.88x (2
    # rounds of 3, 0.82-0.94), DenseNet-121 0.96x (2 rounds of 4, 0.94-0.99). Peak
    # RSS: ResNet-50 4043 MB against 4006, MobileNet 2770 both ways, DenseNet-121
    # 7942-8200 against 7658-7803 (two runs each; each BatchNorm's bottom there is a
    # block's running Concat; still under Caffe's count, 8336). False: left to XLA (to
    # compare).
    STORE_BOTTOM_DIFF = True

    def setup(self, bottom_shapes):
        from ..proto import caffe_pb2
        p = self.p
        shape = bottom_shapes[0]
        self.maf = p.moving_average_fraction
        self.use_global_stats = (p.use_global_stats if p.HasField("use_global_stats")
                                 else self.phase == caffe_pb2.TEST)
        if len(shape) == 0:
            self.fail("bottom must have at least one axis")
        self.channels = 1 if len(shape) == 1 else shape[1]
        self.eps = p.eps
        c = self.channels
        self.init_params([((c,), None), ((c,), None), ((1,), None)], self.filler_rng)
        # Mask the statistics from optimization (Caffe's LayerSetUp): lr_mult 0.
        lp = self.layer_param
        for i in range(len(self.blobs)):
            if len(lp.param) == i:
                lp.param.add().lr_mult = 0.0
            elif lp.param[i].lr_mult != 0:
                self.fail("Cannot configure batch normalization statistics as layer parameters "
                          "(param %d has lr_mult %g; BatchNorm's blobs are running statistics, "
                          "add a Scale layer for a learned scale and bias)", i, lp.param[i].lr_mult)

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) == 0:
            self.fail("bottom must have at least one axis")
        if len(shape) >= 2 and shape[1] != self.channels:
            self.fail("bottom has %d channels (axis 1 of %s), the layer was set up for %d",
                      shape[1], shape, self.channels)
        return [shape]

    # The channel axis of the arrays: 1, or 3 where the engine hands a 4-d bottom held
    # channels-last (jcaffe.engine, "channels-last runs"): between the convolutions of
    # ResNet's and MobileNet's blocks, which read and write that order.
    _c = 1

    def channels_last_ok(self):
        return True

    @contextlib.contextmanager
    def channels_last_context(self):
        self._c = 3
        try:
            yield
        finally:
            del self._c

    def _axes(self, x):
        return tuple(i for i in range(x.ndim) if i != self._c) if x.ndim > 1 else (0,)

    def _per_channel(self, v, x):
        if x.ndim <= 1:
            return jnp.reshape(v, (1,))
        shape = [1] * x.ndim
        shape[self._c] = -1
        return jnp.reshape(v, shape)

    def forward(self, params, bottoms, rng):
        x, = bottoms
        axes = self._axes(x)
        if self.use_global_stats:
            sf = params[2][0]
            factor = jnp.where(sf == 0, jnp.zeros((), sf.dtype), 1 / jnp.where(sf == 0, 1, sf))
            mean, var = factor * params[0], factor * params[1]
            new_params = [None, None, None]
        else:
            mean = jnp.mean(x, axis=axes)
            centred = _centred_for_reduction(x, self._per_channel(mean, x))
            var = jnp.mean(centred * centred, axis=axes)
            m = x.size // self.channels
            correction = m / (m - 1) if m > 1 else 1.0
            maf = self.maf
            new_params = [mean + maf * params[0], correction * var + maf * params[1],
                          params[2] * maf + 1]
        std = jnp.sqrt(var + self.eps)
        y = (x - self._per_channel(mean, x)) / self._per_channel(std, x)
        return [y], (y, std), new_params

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], [None, None, None]
        y, std = saved
        dy, = top_diffs
        std = self._per_channel(std, dy)
        if self.use_global_stats:
            return [dy / std], [None, None, None]
        axes = self._axes(dy)
        mean_dy = jnp.mean(dy, axis=axes, keepdims=True)
        mean_dyy = jnp.mean(dy * y, axis=axes, keepdims=True)
        dx = (dy - mean_dy - mean_dyy * y) / std
        return [engine.materialize(dx) if self.STORE_BOTTOM_DIFF else dx], [None, None, None]


@register("MVN")
class MVN(JaxLayer):
    """y = (x - mean) / (std + eps) (or just x - mean without normalize_variance), the
    statistics over each (n, c) slice, or each n with across_channels. As Caffe, eps is
    added to the standard deviation, not to the variance.

    dE/dx = (dE/dy - mean(dE/dy) - y mean(dE/dy y) (std + eps) / std) / (std + eps):
    the exact gradient (Caffe's drops the factor (std + eps) / std, a 1e-9 relative
    difference at the default eps); without normalize_variance dE/dx = dE/dy - mean(dE/dy).
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) == 0:
            self.fail("bottom must have at least one axis")
        legacy_shape(self, shape, 0, FLATTEN_PER_CHANNEL)   # (BVLC's num(), channels())
        return [shape]

    def _rows(self, x):
        n = x.shape[0]
        if not self.p.across_channels:
            n *= x.shape[1] if x.ndim > 1 else 1
        return jnp.reshape(x, (n, -1))

    def forward(self, params, bottoms, rng):
        x, = bottoms
        rows = self._rows(x)
        mean = jnp.mean(rows, axis=1, keepdims=True)
        c = rows - mean
        if not self.p.normalize_variance:
            return [jnp.reshape(c, x.shape)], None
        cr = _centred_for_reduction(rows, mean)
        sigma = jnp.sqrt(jnp.mean(cr * cr, axis=1, keepdims=True))
        y = c / (sigma + self.p.eps)
        return [jnp.reshape(y, x.shape)], (y, sigma)

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        dy_in, = top_diffs
        dy = self._rows(dy_in)
        g = dy - jnp.mean(dy, axis=1, keepdims=True)
        if self.p.normalize_variance:
            y, sigma = saved
            s = sigma + self.p.eps
            ratio = jnp.where(sigma > 0, s / jnp.where(sigma > 0, sigma, 1), 0)
            g = (g - y * jnp.mean(dy * y, axis=1, keepdims=True) * ratio) / s
        return [jnp.reshape(g, dy_in.shape)], []
