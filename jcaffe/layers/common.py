"""Common layers: InnerProduct, Softmax, and the blob plumbing Split, Concat, Flatten.

Shapes follow Caffe's axis conventions: an ``axis`` may be negative (counted
from the end) and the dimensions from an axis on are "flattened" by taking
their product (Caffe's ``Blob::count(axis)``).
"""
import contextlib

import jax
import jax.numpy as jnp
from jax import lax

from .. import engine
from ..blob import shape_count, shape_string
from ..layer import JaxLayer, register


def canonical_axis(layer, axis, shape, what="axis"):
    """Caffe's CanonicalAxisIndex for a bottom of this shape; the error names the layer."""
    n = len(shape)
    if not -n <= axis < n:
        layer.fail("%s %d is out of range for a %d-axis bottom of shape %s",
                   what, axis, n, shape_string(shape))
    return axis + n if axis < 0 else axis


def legacy_shape(layer, shape, bottom, instead):
    """``shape`` as Caffe's legacy accessors num(), channels(), height() and width() read
    it: 4 axes, 1 past its last. A BVLC layer that reads a bottom through them stops
    Caffe on a blob of more than 4 axes; so does this, naming the layer, the bottom and
    its shape, and saying ``instead``: what a net for BVLC's Caffe writes."""
    if len(shape) > 4:
        layer.fail("bottom %d has %d axes (shape %s): BVLC's %s reads it through Blob's "
                   "legacy accessors num(), channels(), height() and width(), which stop "
                   "Caffe on a blob of more than 4 axes ('Cannot use legacy accessors on "
                   "Blobs with > 4 axes'). %s", bottom, len(shape), shape_string(shape),
                   layer.type, instead)
    return tuple(shape) + (1,) * (4 - len(shape))


# A view of a bottom past 4 axes that BVLC's legacy-accessor layers take: the words of
# legacy_shape's errors
FLATTEN_FOR_LOSS = ("Flatten it to 2 axes first (a Flatten layer: N and the rest); the "
                    "loss is the same.")
FLATTEN_PER_CHANNEL = ("On a volume, give it a 3-axis view: a Flatten with flatten_param "
                       "{ axis: 2 } before it (N, C and D*H*W: the same result per "
                       "channel) and a Reshape back after it.")


def axis_or_legacy(layer, legacy, shape):
    """The ``axis`` of ``layer.p``, or its legacy uint32 field ``legacy`` (concat_dim,
    slice_dim) when that is set; giving both is an error, as in Caffe."""
    p = layer.p
    if not p.HasField(legacy):
        return canonical_axis(layer, p.axis, shape)
    if p.HasField("axis"):
        layer.fail("Either axis or %s should be specified; not both.", legacy)
    value = getattr(p, legacy)      # unsigned: never negative
    if value >= len(shape):
        layer.fail("%s %d out of range for a %d-axis bottom of shape %s (%s must satisfy "
                   "0 <= %s < num_axes)", legacy, value, len(shape), shape_string(shape),
                   legacy, legacy)
    return value


def _not_in_place(layer):
    """Split and Flatten refuse top == bottom, as in Caffe."""
    lp = layer.layer_param
    if lp.bottom and lp.top and lp.bottom[0] in lp.top:
        layer.fail("does not allow in-place computation (top '%s' is its bottom)", lp.bottom[0])


# The forward y = x W^T of a big stored (N, K) weight and few rows is bound by reading
# W too. In that form XLA CPU either copies W transposed on every call (one row: a
# GEMV on W^T; CaffeNet's fc6 at batch 1, 89 ms of a 170 ms deploy forward) or
# hands it to YNNPACK with W as the right operand, which it repacks whole on each
# call. Taken as (W x^T)^T, W is the left operand, read along its rows once (one
# row: Eigen's GEMV); the barrier keeps XLA from folding the transpose back into the
# dot. Measured alone (AMD EPYC Zen 4, 2 cores, 2026-12-03, ms, x W^T / (W x^T)^T,
# min of 15): 4096 x 9216 at 1/4/16/32/64/128/256 rows 94/3.9, 18.3/5.1, 20.0/8.3,
# 30.2/12.7, 38.8/23.4, 60.1/48.6, 109/109; 4096 x 25088 at 1/32/64 230/9.7,
# 73.2/34.2, 108/62.2; 4096 x 4096 40.5/1.9, 10.3/5.7, 15.4/11.5 (1/32/64 rows);
# 1000 x 4096 6.6/0.27, 2.3/1.5 (1/32 rows); 1000 x 2048 and 1000 x 1024 at 16-64
# rows 0.4-1.6 / 0.3-1.4; below 4 MB of weight (500 x 800) no form won throughout.
# PyTorch's F.linear on the same shapes: 8.1 ms (4096 x 9216, 1 row), 28.8 (32
# rows). A transposed weight (K, N) keeps x W: as W's left product it was slower
# (9216 x 4096 at 32 rows 74 vs 18.8 ms).
# The LSTM's and RNN's hidden-to-hidden products, N rows at each time step, take the
# same form (jcaffe.layers.recurrent): an LSTM layer of 1024 hidden units (W_hc 16 MB),
# 16 streams, 20 steps, alone: forward 41-47 -> 25-28 ms, forward + backward 98-113 ->
# 76-93 ms (fastest of 9 calls, 5 processes each); at 64 streams of 512 no change.
# One row takes that form from a smaller weight: inside a net XLA still copied a 1000 x
# 1024 classifier transposed (MobileNet's, GoogLeNet's: about 1.2 ms a forward), and
# deploy forwards at one image, ab_step.py, 1 MB / 4 MB: MobileNet 0.882, GoogLeNet 0.849.
# Without AVX-512 the form pays off at fewer rows (AMD EPYC Zen 1, AVX2, 2 vCPUs,
# 2026-12-06, ms, x W^T / (W x^T)^T, median of 15): 4096 x 9216 at 64/72/80/96/100/
# 112/120/128 rows 32.2/28.6, 34.2/35.6, 39.9/36.5, 43.1/42.3, 45.6/57.9, 50.3/56.7,
# 52.8/62.1, 57.4/57.8; 4000 x 1000 (an LSTM's W_hc) at 8/32/64 rows 0.86/0.54,
# 2.32/1.64, 3.52/3.20 and at 100/112 5.18/6.05, 6.79/7.67; 4096 x 4096, 2048 x 2048
# and 8801 x 1000 alike (won to 64 rows, lost at 100). There the rows stop at 64:
# LRCN's step (two LSTMs of 1000 over 100 streams; ab_step.py --interleave, 2 rounds
# of 6 pairs) took 0.974x the time (interval 0.956-0.994).
WEIGHT_FIRST_MIN_BYTES = 4 << 20    # weight bytes from which ...
WEIGHT_FIRST_ONE_ROW_MIN_BYTES = 1 << 20    # and one row from this many bytes


def _has_avx512():
    """Whether this CPU has AVX-512 (Linux's /proc/cpuinfo; elsewhere assumed, as the
    rows' bound was first measured with it)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return True


WEIGHT_FIRST_MAX_ROWS = 128 if _has_avx512() else 64    # at most this many rows take it


def weight_first(rows, w):
    """Whether x W^T (``rows`` rows of x, W stored (N, K)) runs as (W x^T)^T."""
    nbytes = w.size * w.dtype.itemsize
    return jax.default_backend() == "cpu" and (
        (rows <= WEIGHT_FIRST_MAX_ROWS and nbytes >= WEIGHT_FIRST_MIN_BYTES)
        or (rows == 1 and nbytes >= WEIGHT_FIRST_ONE_ROW_MIN_BYTES))


def times_weight_t(x2, w):
    """x2 (M, K) times the transpose of a weight stored (N, K): (M, N)."""
    if weight_first(x2.shape[0], w):
        return lax.optimization_barrier(lax.dot_general(w, x2, (((1,), (1,)), ((), ())))).T
    return x2 @ w.T


@register("InnerProduct")
class InnerProduct(JaxLayer):
    """y = x W^T + b, x flattened to (M, K) from ``axis`` on, W (N, K) ((K, N) if transpose).

    dE/dx = dE/dy W;  dE/dW = dE/dy^T x;  dE/db = sum over M of dE/dy.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        p = self.p
        shape = bottom_shapes[0]
        self.N = p.num_output
        self.K = shape_count(shape, canonical_axis(self, p.axis, shape))
        weight_shape = (self.K, self.N) if p.transpose else (self.N, self.K)
        specs = [(weight_shape, p.weight_filler)]
        if p.bias_term:
            specs.append(((self.N,), p.bias_filler))
        self.init_params(specs, self.filler_rng)


    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        axis = canonical_axis(self, self.p.axis, shape)
        new_k = shape_count(shape, axis)
        if new_k != self.K:
            self.fail("Input size incompatible with inner product parameters: bottom shape %s "
                      "gives K = %d from axis %d on, but the weights were set up for K = %d",
                      shape_string(shape), new_k, axis, self.K)
        self.axis = axis
        return [tuple(shape[:axis]) + (self.N,)]

    def _weight_nk(self, params):
        """The weight as (N, K), whatever way it is stored."""
        return params[0].T if self.p.transpose else params[0]

    def _as_matrix(self, a, cols):
        """(M, cols) view: the axes before ``axis`` become M."""
        return a.reshape(shape_count(a.shape, 0, self.axis), cols)

    def forward(self, params, bottoms, rng):
        x, = bottoms
        x2 = self._as_matrix(x, self.K)
        y = x2 @ params[0] if self.p.transpose else times_weight_t(x2, params[0])
        if self.p.bias_term:
            y = y + params[1]
        return [y.reshape(x.shape[:self.axis] + (self.N,))], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        x, = bottoms
        x2 = self._as_matrix(x, self.K)
        dy2 = self._as_matrix(top_diffs[0], self.N)
        dw = db = dx = None
        if self.wants_param_diff(0):
            dw = x2.T @ dy2 if self.p.transpose else dy2.T @ x2
        if self.p.bias_term and self.wants_param_diff(1):
            db = jnp.sum(dy2, axis=0)
        if propagate_down[0]:
            dx = self._data_diff(dy2, params).reshape(x.shape)
        param_diffs = [dw, db] if self.p.bias_term else [dw]
        return [dx], param_diffs

    # The data gradient dx = dy W of a big stored (N, K) weight and few rows: the product
    # is bound by reading W (contracted over its major axis), and XLA's YNNPACK dot, which
    # takes every dot whose left operand is contracted over its minor axis, read it at
    # 3-11 GB/s where Eigen's dot reads it at 11-18. So dx is taken as
    # dot(dy^T, W) with dy^T materialized behind an optimization barrier (else XLA folds
    # the transpose back into the dot): a left operand contracted over its major axis
    # goes to Eigen. Measured alone (Intel Xeon, AVX-512, 2 cores, 2026-12-02, ms,
    # YNNPACK / Eigen): 4096 x 9216 at 8/32/64 rows 13.4/8.4, 34.4/13.7, 23.8/19.8;
    # 4096 x 4096 3.5/2.3, 8.8/6.2, 10.5/8.9; 1000 x 4096 0.7/0.5, 1.8/1.5, 2.1/2.2;
    # 2048 x 2048 1.0/0.5, 2.2/1.7, 2.4/3.0; at 256 rows and more YNNPACK won or tied
    # on every shape, and below 16 MB of weight the winner changed from shape to shape.
    # CaffeNet's step (fc6, fc7; benchmarks/ab_step.py, 4 rounds of 6 steps, twice):
    # 0.968 (rounds 0.94-0.99) and 0.955 (0.92-0.98). A transposed weight (K, N) is
    # contracted over its minor axis, which YNNPACK reads fast (9216 x 4096, 32 rows:
    # 12.7 vs 84.9 ms on Eigen): kept.
    STREAMED_MIN_BYTES = 16 << 20       # weight bytes from which ...
    STREAMED_MAX_ROWS = 32              # ... at most this many rows take Eigen's dot,
    STREAMED_MAX_ROWS_HUGE = 64         # and this many from STREAMED_HUGE_BYTES
    STREAMED_HUGE_BYTES = 64 << 20

    def _streamed(self, rows, w):
        """Whether dx = dy W (``rows`` rows of dy, W stored (N, K)) takes Eigen's dot."""
        if self.p.transpose or jax.default_backend() != "cpu":
            return False
        nbytes = w.size * w.dtype.itemsize
        return ((nbytes >= self.STREAMED_MIN_BYTES and rows <= self.STREAMED_MAX_ROWS)
                or (nbytes >= self.STREAMED_HUGE_BYTES and rows <= self.STREAMED_MAX_ROWS_HUGE))

    def _data_diff(self, dy2, params):
        """dE/dx = dE/dy W for dy2 (M, N): (M, K)."""
        w = self._weight_nk(params)
        if self._streamed(dy2.shape[0], w):
            dy_t = lax.optimization_barrier(dy2.T)
            return lax.dot_general(dy_t, w, (((0,), (0,)), ((), ())))
        return dy2 @ w

    # The weight diff by rows (jcaffe.engine.RowBlocks): a fused solver step updates a
    # big weight a block at a time and never holds its whole diff.
    row_blocked_params = (0,)

    def param_diff_rows(self, params, bottoms, top_diffs, index, start, size):
        """Rows [start, start + size) of the weight diff: those of W (N, K) are outputs,
        dy^T x over a block of dy's columns; those of W^T (K, N) are inputs, x^T dy."""
        x2 = self._as_matrix(bottoms[0], self.K)
        dy2 = self._as_matrix(top_diffs[0], self.N)
        if self.p.transpose:
            return jax.lax.dynamic_slice_in_dim(x2, start, size, axis=1).T @ dy2
        return jax.lax.dynamic_slice_in_dim(dy2, start, size, axis=1).T @ x2


@register("Softmax")
class Softmax(JaxLayer):
    """y = exp(x) / sum_axis exp(x);  dE/dx = (dE/dy - sum_axis(dE/dy * y)) * y.

    Backward uses only the top, so in-place softmax is fine.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom_shapes):
        self.axis = canonical_axis(self, self.p.axis, bottom_shapes[0])
        return [bottom_shapes[0]]

    def forward(self, params, bottoms, rng):
        return [softmax(bottoms[0], self.axis)], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        y, = tops
        dy, = top_diffs
        return [(dy - jnp.sum(dy * y, axis=self.axis, keepdims=True)) * y], []


def softmax(x, axis):
    """exp(x - max) / sum(exp(x - max)) along ``axis`` (Caffe subtracts the max too)."""
    e = jnp.exp(x - jnp.max(x, axis=axis, keepdims=True))
    return e / jnp.sum(e, axis=axis, keepdims=True)


@register("Split")
class Split(JaxLayer):
    """y_i = x for every top i;  dE/dx = sum_i dE/dy_i.

    The Net inserts these where one blob feeds several layers. In a compiled call the
    sum is stored once (engine.materialize), as Caffe stores the bottom's diff: along a
    chain of Concats that each feed the next and a layer of their own (DenseNet's dense
    blocks) each split's sum adds a slice of the next one's, and XLA's CPU fusion copied
    the whole chain of sums below it into every consumer (concat_4_7's split sum into
    39 fusions; DenseNet-121's step, batch 16: 8.5 s copied so, 3.7 s stored).
    ``benchmarks/ab_step.py`` stored / not: DenseNet-121 0.438, GoogLeNet 0.964,
    ResNet-50 0.982, SqueezeNet 0.974 (the last three's intervals hold 1).
    """

    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    shares_bottom = True
    layout_free = True

    def setup(self, bottom_shapes):
        _not_in_place(self)

    def reshape(self, bottom_shapes):
        return [bottom_shapes[0]] * self.num_top

    def forward(self, params, bottoms, rng):
        return [bottoms[0]] * self.num_top, None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        total = top_diffs[0]
        for dy in top_diffs[1:]:
            total = total + dy
        return [engine.materialize(total) if len(top_diffs) > 1 else total], []


@register("Concat")
class Concat(JaxLayer):
    """y = the bottoms joined along ``axis``;  dE/dx_i = the slice of dE/dy where x_i went."""

    min_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom_shapes):
        first = bottom_shapes[0]
        axis = self.axis = axis_or_legacy(self, "concat_dim", first)
        top = list(first)
        for i, shape in enumerate(bottom_shapes[1:], start=1):
            if len(shape) != len(first):
                self.fail("All inputs must have the same #axes: bottom 0 has shape %s, bottom %d "
                          "has shape %s", shape_string(first), i, shape_string(shape))
            for j in range(len(first)):
                if j != axis and shape[j] != first[j]:
                    self.fail("All inputs must have the same shape, except at concat axis %d: "
                              "bottom 0 has shape %s, bottom %d has shape %s (axis %d differs)",
                              axis, shape_string(first), i, shape_string(shape), j)
            top[axis] += shape[axis]
        return [tuple(top)]

    def forward(self, params, bottoms, rng):
        if len(bottoms) == 1:
            return [bottoms[0]], None
        return [jnp.concatenate(bottoms, axis=self.axis)], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        dy, = top_diffs
        diffs, start = [], 0
        for x, pd in zip(bottoms, propagate_down):
            size = x.shape[self.axis]
            diffs.append(_slice(dy, self.axis, start, start + size) if pd else None)
            start += size
        return diffs, []

    # 4-d bottoms held channels-last (jcaffe.engine, "channels-last runs": GoogLeNet's
    # inceptions join their branches' convolutions along the channels, then the last
    # axis): the concat axis moves with the layout.
    _AXIS_LAST = {0: 0, 1: 3, 2: 1, 3: 2}

    def channels_last_ok(self):
        return len(self.top_shapes[0]) == 4

    @contextlib.contextmanager
    def channels_last_context(self):
        axis = self.axis
        self.axis = self._AXIS_LAST[axis]
        try:
            yield
        finally:
            self.axis = axis


def _slice(x, axis, start, stop):
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


@register("Flatten")
class Flatten(JaxLayer):
    """y = x with axes ``axis``..``end_axis`` merged into one (end_axis = axis - 1, as in
    Caffe: a unit axis inserted before ``axis``);  dE/dx = dE/dy reshaped back."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        _not_in_place(self)

    def reshape(self, bottom_shapes):
        return [self._flat_shape(tuple(bottom_shapes[0]))]

    def _flat_shape(self, shape):
        start = canonical_axis(self, self.p.axis, shape)
        end = canonical_axis(self, self.p.end_axis, shape, "end_axis")
        if end < start - 1:
            self.fail("end_axis %d comes more than one axis before axis %d (bottom shape %s)",
                      self.p.end_axis, self.p.axis, shape_string(shape))
        return shape[:start] + (shape_count(shape, start, end + 1),) + shape[end + 1:]

    def forward(self, params, bottoms, rng):
        x, = bottoms
        return [x.reshape(self._flat_shape(x.shape))], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        return [top_diffs[0].reshape(bottoms[0].shape)], []
