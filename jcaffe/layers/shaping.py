"""Blob-shaping layers: Slice, Reshape, Tile, Silence, Parameter, BatchReindex, Filter.

Shapes and errors follow Caffe's slice/reshape/tile/... layers. Index-like
bottoms (BatchReindex's indices, Filter's selector) are floats holding
integers, as in Caffe; they take no diff (``allow_force_backward`` is false
for them, see :func:`index_bottom` below) and a backward asked for one
raises :class:`BackwardError`, as Caffe's CHECK does.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..blob import shape_count, shape_string
from ..errors import BackwardError, LayerSetupError
from ..layer import JaxLayer, Layer, register
from .common import Concat, _slice, axis_or_legacy, canonical_axis


def refuse_index_diff(layer, propagate_down, index, what):
    """Caffe's CHECK(!propagate_down[index]) as a BackwardError naming the layer."""
    if propagate_down[index]:
        raise BackwardError("%s layer '%s' cannot backpropagate to its %s (bottom %d); set "
                            "propagate_down: false for it" % (layer.type, layer.name, what, index))


def check_indices(layer, what, values, upper):
    """Raise (from inside compiled code, via a host callback) when ``values`` are not
    integers in [0, upper). Caffe only checks this in debug builds; a bad index there
    reads out of bounds. The error reaches the caller as a JaxRuntimeError whose text
    holds this layer's message."""
    bad = jnp.any((values < 0) | (values >= upper) | (values != jnp.floor(values)))
    lo = jnp.min(values) if values.size else jnp.zeros((), values.dtype)
    hi = jnp.max(values) if values.size else jnp.zeros((), values.dtype)

    def raise_bad(lo, hi):
        raise LayerSetupError("%s layer '%s': %s must be integers in [0, %d); got values in "
                              "[%g, %g]" % (layer.type, layer.name, what, upper,
                                            np.min(lo), np.max(hi)))
    # The host callback only where an index is bad: called on every forward it cost
    # about 200 us a call (char-rnn's Embed alone, jitted: 336 us against 139; the
    # net's deploy forward 0.944x, benchmarks/ab_step.py --interleave, 0.923-0.965).
    lax.cond(bad, lambda: jax.debug.callback(raise_bad, lo, hi), lambda: None)


@register("Slice")
class Slice(JaxLayer):
    """y_i = x[..., p_i:p_{i+1}, ...] along ``axis``;  dE/dx = the dE/dy_i joined back.

    ``slice_point`` gives the cuts (one fewer than the tops); without it the
    axis is split in equal parts. ``slice_dim`` is the legacy form of ``axis``.
    """

    exact_num_bottom_blobs = 1
    min_top_blobs = 1

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis = self.axis = axis_or_legacy(self, "slice_dim", shape)
        dim, n = shape[axis], self.num_top
        points = list(self.p.slice_point)
        if points:
            if len(points) != n - 1:
                self.fail("%d slice_point values given for %d tops; give one fewer than the tops",
                          len(points), n)
            if n > dim:
                self.fail("%d tops but the slice axis %d has only %d elements (bottom shape %s)",
                          n, axis, dim, shape_string(shape))
            bounds = [0] + points + [dim]
            for a, b in zip(bounds[:-2], bounds[1:-1]):
                if b <= a:
                    self.fail("slice_point values must increase and be > 0: %s", points)
            if bounds[-1] < bounds[-2]:
                self.fail("slice_point %d is beyond the slice axis %d of size %d (bottom shape %s)",
                          points[-1], axis, dim, shape_string(shape))
            sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        else:
            if dim % n:
                self.fail("Number of top blobs (%d) should evenly divide input slice axis (%d) "
                          "(axis %d of bottom shape %s)", n, dim, axis, shape_string(shape))
            sizes = [dim // n] * n
        self.starts = list(np.cumsum([0] + sizes[:-1]))
        self.sizes = sizes
        return [shape[:axis] + (s,) + shape[axis + 1:] for s in sizes]

    def forward(self, params, bottoms, rng):
        x, = bottoms
        return [_slice(x, self.axis, int(a), int(a) + s)
                for a, s in zip(self.starts, self.sizes)], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        if len(top_diffs) == 1:
            return [top_diffs[0]], []
        return [jnp.concatenate(top_diffs, axis=self.axis)], []

    # 4-d bottoms held channels-last (jcaffe.engine, "channels-last runs"), as Concat's:
    # DPN's blocks cut each last 1x1 convolution's channels between their residual
    # (Eltwise) and dense (Concat) paths. In a deploy forward that keeps the blocks
    # channels-last from one grouped 3x3 (XLA's kernel) to the next: DPN-92's forward
    # took 0.927x the time (benchmarks/ab_step.py --forward --interleave, 10 pairs,
    # 0.908-0.945). In a training step it took 1.049x (1.013-1.086, 8 pairs): not this
    # layer's backward, but the 1x1 convolutions the run then takes channels-last, whose
    # weight gradients contract the positions, both operands' major axis (the blocks'
    # first 1x1 in the third stage, 850 against 575 ms a step). So where a backward runs,
    # a Slice computes in Caffe's order (benchmarks/NOTES.md, fifty-second session).
    _AXIS_LAST = Concat._AXIS_LAST
    channels_last_context = Concat.channels_last_context

    def channels_last_ok(self):
        return len(self.bottom_shapes[0]) == 4

    def channels_last_backward_ok(self):
        return False


@register("Reshape")
class Reshape(JaxLayer):
    """y = x with axes ``axis``..``axis + num_axes`` replaced by ``shape`` (0: copy the
    bottom's dim, -1: inferred);  dE/dx = dE/dy reshaped back. Never in place."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        lp = self.layer_param
        if lp.bottom and lp.top and lp.top[0] == lp.bottom[0]:
            self.fail("Reshape Layer does not allow in-place computation (top '%s' is its bottom)",
                      lp.top[0])
        self.copy_axes, self.inferred_axis, self.constant_count = [], -1, 1
        for i, d in enumerate(self.p.shape.dim):
            if d == 0:
                self.copy_axes.append(i)
            elif d == -1:
                if self.inferred_axis != -1:
                    self.fail("new shape contains multiple -1 dims; at most a single (1) value "
                              "of -1 may be specified")
                self.inferred_axis = i
            elif d < -1:
                self.fail("shape dim %d is %d: dims must be positive, 0 (copy the bottom's) or "
                          "-1 (inferred)", i, d)
            else:
                self.constant_count *= d

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        n = len(shape)
        p = self.p
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if start < 0:
            self.fail("axis %d out of range", p.axis)
        if start > n:
            self.fail("axis %d out of range for %d-D input blob (bottom shape %s)",
                      p.axis, n, shape_string(shape))
        if p.num_axes < -1:
            self.fail("num_axes must be >= 0, or -1 for all (got %d)", p.num_axes)
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            self.fail("end_axis = axis + num_axes is out of range: axis %d + num_axes %d > %d "
                      "axes of bottom shape %s", start, p.num_axes, n, shape_string(shape))
        top = list(shape[:start]) + list(p.shape.dim) + list(shape[end:])
        for i in self.copy_axes:
            if start + i >= n:
                self.fail("new shape contains a 0, but there was no corresponding bottom axis to "
                          "copy (shape dim %d, bottom shape %s)", i, shape_string(shape))
            top[start + i] = shape[start + i]
        count = shape_count(shape)
        if self.inferred_axis >= 0:
            explicit = self.constant_count * shape_count(shape, 0, start) * shape_count(shape, end)
            for i in self.copy_axes:
                explicit *= top[start + i]
            if explicit == 0 or count % explicit:
                self.fail("bottom count (%d) must be divisible by the product of the specified "
                          "dimensions (%d) (bottom shape %s)", count, explicit, shape_string(shape))
            top[start + self.inferred_axis] = count // explicit
        if shape_count(top) != count:
            self.fail("output count must match input count: bottom shape %s, top shape %s",
                      shape_string(shape), shape_string(top))
        return [tuple(top)]

    def forward(self, params, bottoms, rng):
        return [bottoms[0].reshape(self.top_shapes[0])], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        return [top_diffs[0].reshape(bottoms[0].shape)], []


@register("Tile")
class Tile(JaxLayer):
    """y = ``tiles`` copies of x joined along ``axis``;  dE/dx = the sum of the copies' diffs."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        p = self.p
        self.axis = canonical_axis(self, p.axis, shape)
        if not p.HasField("tiles"):
            self.fail("Number of tiles must be specified")
        if p.tiles <= 0:
            self.fail("Number of tiles must be positive (got %d)", p.tiles)
        a = self.axis
        return [shape[:a] + (shape[a] * p.tiles,) + shape[a + 1:]]

    def forward(self, params, bottoms, rng):
        x, = bottoms
        reps = [1] * x.ndim
        reps[self.axis] = self.p.tiles
        return [jnp.tile(x, reps)], None

    # Up to this many tiles the copies' diffs are summed as slices (one elementwise
    # loop reading each copy) rather than reduced over a tiles axis: on CPU, batch 32,
    # 64x28x28, axis 1, alone (2026-12-02, median of 60-200): 4 tiles 1.09 vs 1.43 ms,
    # 8 tiles 2.0 vs 4.7 ms, 32 tiles 13.5 vs 14.5 ms (jax.vjp of the forward: as the
    # reduction).
    SLICES_MAX_TILES = 32

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        x, = bottoms
        a, tiles, n = self.axis, self.p.tiles, x.shape[self.axis]
        dy = top_diffs[0]
        if tiles <= self.SLICES_MAX_TILES:
            dx = lax.slice_in_dim(dy, 0, n, axis=a)
            for t in range(1, tiles):
                dx = dx + lax.slice_in_dim(dy, t * n, (t + 1) * n, axis=a)
            return [dx], []
        dy = dy.reshape(x.shape[:a] + (tiles,) + x.shape[a:])
        return [jnp.sum(dy, axis=a)], []


@register("Silence")
class Silence(JaxLayer):
    """No tops: swallows its bottoms. Backward (only under force_backward, as nothing
    reaches a loss through it) sets the bottom diffs to 0, as Caffe does."""

    min_bottom_blobs = 1
    exact_num_top_blobs = 0

    def reshape(self, bottom_shapes):
        return []

    def forward(self, params, bottoms, rng):
        return [], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        return [jnp.zeros_like(x) if pd else None for x, pd in zip(bottoms, propagate_down)], []


@register("Parameter")
class Parameter(JaxLayer):
    """y = the layer's one param blob (shape ``parameter_param.shape``, zeros as in Caffe,
    which gives it no filler);  dE/dparam = dE/dy."""

    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        self.init_params([(tuple(self.p.shape.dim), None)], self.filler_rng)

    def reshape(self, bottom_shapes):
        return [tuple(self.blobs[0].shape)]

    def forward(self, params, bottoms, rng):
        return [params[0]], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        return [], [top_diffs[0] if self.wants_param_diff(0) else None]


@register("BatchReindex")
class BatchReindex(JaxLayer):
    """y[i] = x[idx[i]] (idx: bottom 1, one axis of float indices in [0, N));
    dE/dx[n] = sum of dE/dy[i] over the i with idx[i] = n. No diff for idx."""

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def reshape(self, bottom_shapes):
        x, idx = bottom_shapes
        if len(idx) != 1:
            self.fail("the index bottom (bottom 1) must have exactly one axis; it has shape %s",
                      shape_string(idx))
        if not x:
            self.fail("the data bottom (bottom 0) needs at least one axis")
        return [(idx[0],) + tuple(x[1:])]

    def forward(self, params, bottoms, rng):
        x, idx = bottoms
        check_indices(self, "indices (bottom 1)", idx, x.shape[0])
        return [jnp.take(x, idx.astype(jnp.int32), axis=0, mode="fill", fill_value=jnp.nan)], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        refuse_index_diff(self, propagate_down, 1, "index input")
        if not propagate_down[0]:
            return [None, None], []
        x, idx = bottoms
        dx = jnp.zeros_like(x).at[idx.astype(jnp.int32)].add(top_diffs[0])
        return [dx, None], []


@register("Filter")
class Filter(Layer):
    """y_k = the items (along axis 0) of x_k whose selector (the last bottom) is nonzero;
    dE/dx_k = dE/dy_k scattered back to those items, 0 elsewhere. No diff for the selector.

    The top's batch size depends on the selector's *values*, which a compiled
    (shape-static) computation cannot express. So Filter is a host layer, like a
    Python layer: the Net runs it between compiled segments on real Blobs, it
    reads the selector on the host (one device-to-host copy per forward) and
    reshapes its tops; the layers after it are re-traced once for each new batch
    size they see (jax.jit caches every shape, so a repeated size costs nothing).
    As in Caffe, the tops have the full batch size until the first forward.
    """

    min_bottom_blobs = 2
    min_top_blobs = 1

    def __init__(self, layer_param, dtype=np.float32):
        Layer.__init__(self, layer_param)
        self.dtype = np.dtype(dtype)

    def allow_force_backward(self, bottom_index):
        return bottom_index != len(self.layer_param.bottom) - 1

    def _fail(self, message, *args):
        raise LayerSetupError("Filter layer '%s': %s" % (self.name, message % args))

    def setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            self._fail("needs one top per filtered bottom: %d bottoms (the last is the selector) "
                       "and %d tops", len(bottom), len(top))
        self.first_reshape = True
        self.indices = np.zeros(0, np.int64)

    def reshape(self, bottom, top):
        selector = bottom[-1]
        if any(d != 1 for d in selector.shape[1:]):
            self._fail("Selector blob dimensions must be singletons (1), except the first; the "
                       "selector (bottom %d) has shape %s", len(bottom) - 1, selector.shape_string())
        for i, b in enumerate(bottom[:-1]):
            if not b.shape or b.shape[0] != selector.shape[0]:
                self._fail("Each bottom should have the same 0th dimension as the selector blob: "
                           "bottom %d has shape %s, the selector has shape %s",
                           i, b.shape_string(), selector.shape_string())
        self.indices = np.flatnonzero(selector.host_data().reshape(-1))
        n = len(self.indices)
        if self.first_reshape:
            n, self.first_reshape = selector.shape[0], False
        for b, t in zip(bottom, top):
            t.reshape((n,) + tuple(b.shape[1:]))

    def forward(self, bottom, top):
        for b, t in zip(bottom, top):
            t.reshape((len(self.indices),) + tuple(b.shape[1:]))  # the setup-time full batch
            t.data[...] = b.host_data()[self.indices]

    def backward(self, top, propagate_down, bottom):
        refuse_index_diff(self, propagate_down, len(bottom) - 1, "selector")
        for t, pd, b in zip(top, propagate_down, bottom):
            if pd:
                diff = np.zeros(b.shape, b.dtype)
                diff[self.indices] = t.host_diff()
                b.diff[...] = diff
