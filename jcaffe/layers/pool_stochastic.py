"""Pooling with ``pool: STOCHASTIC`` (Zeiler & Fergus), as Caffe's GPU kernels define it
(Caffe's CPU path is NOT_IMPLEMENTED).

Windows start at ``i * stride`` (no padding: Caffe refuses pad with STOCHASTIC) and are cut
at the image border; the pooled size follows Pooling's rules. The inputs are meant to be
non-negative (after a ReLU): they act as unnormalized probabilities.

* TRAIN: per window draw u ~ U[0, 1) from the net's RNG (the layer's key), and pick the
  first position (row-major) whose running sum reaches u * (window sum); y = x there.
  Backward routes dE/dy to that position (summing where windows overlap), as
  StoPoolBackward does. A window where no position qualifies (an empty window, or
  negative inputs) gives y = 0 and no diff (Caffe leaves such a top value unwritten).
* TEST: y = sum(x^2) / sum(x) over the window (0 where sum(x) <= 0), the
  probability-weighted average. Caffe's backward in TEST reuses the indices of the
  last TRAIN pass; here it is the derivative of this forward,
  dE/dx = sum over covering windows with sum(x) > 0 of dE/dy * (2x - y) / sum(x).
"""
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import rng as rng_draws
from ..proto import caffe_pb2
from .vision import Pooling, _window_sum, _zero

_POOL = caffe_pb2.PoolingParameter


class StochasticPooling(Pooling):
    """Pooling's STOCHASTIC method (built by Pooling(...) for ``pool: STOCHASTIC``)."""

    methods = (_POOL.STOCHASTIC,)

    def setup(self, bottom_shapes):
        Pooling.setup(self, bottom_shapes)
        if self.pad != (0, 0):
            self.fail("Padding implemented only for average and max pooling (pool: STOCHASTIC "
                      "with pad %s)", self.pad)
        self.train = self.phase == caffe_pb2.TRAIN
        self.needs_rng = self.train

    def _windows(self, x):
        """(win (N, C, PH, PW, K) with 0 outside the image, valid (PH, PW, K))."""
        (H, PH, kh, sh, _), (W, PW, kw, sw, _) = self._axes()
        hs, ws = (np.arange(PH) * sh).astype(np.int32), (np.arange(PW) * sw).astype(np.int32)
        rows = hs[:, None] + np.arange(kh)                       # (PH, kh)
        cols = ws[:, None] + np.arange(kw)                       # (PW, kw)
        xp = jnp.pad(x, ((0, 0), (0, 0), (0, max(0, int(rows.max()) + 1 - H)),
                         (0, max(0, int(cols.max()) + 1 - W))))
        win = xp[:, :, rows[:, None, :, None], cols[None, :, None, :]]
        valid = (rows < H)[:, None, :, None] & (cols < W)[None, :, None, :]
        k = kh * kw
        win = win.reshape(win.shape[:4] + (k,))
        valid = valid.reshape(PH, PW, k)
        return jnp.where(valid, win, _zero(x)), valid

    def forward(self, params, bottoms, rng):
        x, = bottoms
        if self.train:
            top, index = self._train_forward(x, rng)
            return [top], index
        top, s1 = self._test_forward(x)
        return [top], (top, s1)

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        if self.train:
            return [self._max_backward(saved, top_diffs[0])], []
        return [self._test_backward(bottoms[0], saved, top_diffs[0])], []

    # -- TRAIN -----------------------------------------------------------------
    def _train_forward(self, x, rng):
        win, valid = self._windows(x)
        u = rng_draws.uniform(rng, win.shape[:4], x.dtype)
        thres = u * jnp.sum(win, axis=-1)
        hit = valid & (jnp.cumsum(win, axis=-1) >= thres[..., None])
        found = jnp.any(hit, axis=-1)
        first = jnp.argmax(hit, axis=-1).astype(jnp.int32)      # first qualifying position
        picked = jnp.take_along_axis(win, first[..., None], axis=-1)[..., 0]
        top = jnp.where(found, picked, _zero(x))
        return top, self._flat_index(jnp.where(found, first, -1))   # Caffe's rand_idx

    # -- TEST ------------------------------------------------------------------
    def _window_sums(self, a):
        (H, PH, kh, sh, _), (W, PW, kw, sw, _) = self._axes()
        hi_h = max(0, (PH - 1) * sh + kh - H)
        hi_w = max(0, (PW - 1) * sw + kw - W)
        sums = lax.reduce_window(a, _zero(a), lax.add, (1, 1, kh, kw), (1, 1, sh, sw),
                                 ((0, 0), (0, 0), (0, hi_h), (0, hi_w)))
        return sums[:, :, :PH, :PW]

    def _test_forward(self, x):
        s1, s2 = self._window_sums(x), self._window_sums(x * x)
        positive = s1 > 0
        safe = jnp.where(positive, s1, jnp.ones_like(s1))
        return jnp.where(positive, s2 / safe, _zero(x)), s1

    def _spread(self, g):
        """Adjoint of the window sum: each position gets the sum of g over its windows."""
        padding = [(0, 0, 0), (0, 0, 0)]
        for size, pooled, k, s, _ in self._axes():
            padding.append((k - 1, size - 1 - (pooled - 1) * s, s - 1))
        spread = lax.pad(g, _zero(g), padding)
        return _window_sum(spread, (1, 1) + tuple(self.kernel), ((0, 0),) * 4)

    def _test_backward(self, x, saved, dy):
        top, s1 = saved
        positive = s1 > 0
        g = jnp.where(positive, dy / jnp.where(positive, s1, jnp.ones_like(s1)), _zero(dy))
        return 2 * x * self._spread(g) - self._spread(g * top)


Pooling.method_classes[_POOL.STOCHASTIC] = StochasticPooling
