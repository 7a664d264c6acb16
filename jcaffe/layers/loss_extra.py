"""More loss layers: HingeLoss, SigmoidCrossEntropyLoss, InfogainLoss,
MultinomialLogisticLoss, ContrastiveLoss.

Conventions as in :mod:`jcaffe.layers.loss`: one scalar top with loss weight 1
by default, whose diff (the loss weight) scales backward; labels arrive as
float arrays and are cast to int the way Caffe's ``static_cast<int>`` does
(truncation towards zero); a label bottom refuses a diff with a BackwardError,
as Caffe's ``LOG(FATAL) << "... cannot backpropagate to label inputs"``.
"""
import jax
import jax.numpy as jnp
import numpy as np

from ..blob import shape_count, shape_string
from ..errors import BackwardError
from ..layer import register
from ..proto import caffe_pb2
from .common import FLATTEN_FOR_LOSS, canonical_axis, legacy_shape, softmax
from .loss import LossLayer, _check_label_count

_Norm = caffe_pb2.LossParameter
_Hinge = caffe_pb2.HingeLossParameter
kLOG_THRESHOLD = 1e-20   # Caffe's loss_layer.hpp


def _int_labels(label):
    """static_cast<int>: truncation towards zero (astype does the same)."""
    return label.astype(jnp.int32)


def _normalizer(layer, mode, outer, inner, valid_count, dtype):
    """Caffe's get_normalizer (SoftmaxWithLoss, SigmoidCrossEntropyLoss, InfogainLoss), never below 1."""
    if mode == _Norm.FULL:
        n = jnp.asarray(outer * inner, dtype)
    elif mode == _Norm.VALID:
        n = jnp.asarray(valid_count, dtype)
    elif mode == _Norm.BATCH_SIZE:
        n = jnp.asarray(outer, dtype)
    elif mode == _Norm.NONE:
        n = jnp.asarray(1, dtype)
    else:
        layer.fail("Unknown normalization mode: %d", mode)
    return jnp.maximum(n, jnp.asarray(1, dtype))


def _legacy_dims(shape):
    """Caffe's LegacyShape(1..3) (channels, height, width): 1 for missing axes."""
    return [shape[i] if i < len(shape) else 1 for i in (1, 2, 3)]


def _check_one_label_per_item(layer, bottom_shapes, index=1):
    data, label = bottom_shapes[0], bottom_shapes[index]
    if shape_count(label) != data[0]:
        layer.fail("needs one label per item: bottom 0 has shape %s (%d items), bottom %d has "
                   "shape %s (%d values)", shape_string(data), data[0], index,
                   shape_string(label), shape_count(label))


@register("HingeLoss")
class HingeLoss(LossLayer):
    """x viewed as (N, D), D = count / N; t[i, j] = -1 at j = label[i], else +1;
    m = max(0, 1 + t * x).  L1: E = sum(m) / N;  L2: E = sum(m^2) / N.

    dE/dx = loss_weight * t * [m > 0] / N (L1), loss_weight * 2 t m / N (L2).
    Labels index the flattened D values of each item, so they are in [0, D).
    """

    def setup(self, bottom_shapes):
        self.norm = self.p.norm
        if self.norm not in (_Hinge.L1, _Hinge.L2):
            self.fail("Unknown Norm %d", self.norm)

    def reshape(self, bottom_shapes):
        tops = LossLayer.reshape(self, bottom_shapes)
        legacy_shape(self, bottom_shapes[0], 0, FLATTEN_FOR_LOSS)     # (BVLC's num())
        _check_one_label_per_item(self, bottom_shapes)
        return tops

    def _margins(self, x, label):
        x2 = x.reshape(x.shape[0], -1)
        positive = jnp.arange(x2.shape[1], dtype=jnp.int32)[None, :] == _int_labels(label).reshape(-1, 1)
        sign = jnp.where(positive, -1, 1).astype(x.dtype)
        return sign, jnp.maximum(0, 1 + sign * x2)

    def forward(self, params, bottoms, rng):
        x, label = bottoms
        _, m = self._margins(x, label)
        total = jnp.sum(m) if self.norm == _Hinge.L1 else jnp.sum(m * m)
        return [total / x.shape[0]], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        self.refuse_label_diff(propagate_down)
        if not propagate_down[0]:
            return [None, None], []
        x, label = bottoms
        sign, m = self._margins(x, label)
        if self.norm == _Hinge.L1:
            d = sign * (m > 0).astype(x.dtype)
        else:
            d = 2 * sign * m
        return [(d * (top_diffs[0] / x.shape[0])).reshape(x.shape), None], []


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(LossLayer):
    """E = -sum_valid [x t - max(x, 0) - log(1 + exp(-|x|))] / normalizer (Caffe's stable form
    of the cross-entropy of sigmoid(x) against targets t in [0, 1]).

    dE/dx = loss_weight * (sigmoid(x) - t) / normalizer, 0 where int(t) == ignore_label.
    Normalization: ``normalization`` if given, else ``normalize`` (true: VALID, false:
    BATCH_SIZE), else BATCH_SIZE -- Caffe's default here, unlike the proto's VALID.
    Outer count N = bottom 0's first axis, inner = the rest; targets must have as many
    values as predictions.
    """

    param_field = "loss_param"

    def setup(self, bottom_shapes):
        lp = self.layer_param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            self.normalization = lp.normalization
        elif lp.HasField("normalize"):
            self.normalization = _Norm.VALID if lp.normalize else _Norm.BATCH_SIZE
        else:
            self.normalization = _Norm.BATCH_SIZE

    def reshape(self, bottom_shapes):
        tops = LossLayer.reshape(self, bottom_shapes)
        x, t = bottom_shapes
        if shape_count(x) != shape_count(t):
            self.fail("SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the same count: "
                      "bottom 0 has shape %s (%d), bottom 1 has shape %s (%d)",
                      shape_string(x), shape_count(x), shape_string(t), shape_count(t))
        self.outer, self.inner = x[0], shape_count(x, 1)
        _normalizer(self, self.normalization, 1, 1, 1, np.float32)   # unknown modes fail here
        return tops

    def _valid(self, t):
        if self.ignore_label is None:
            return jnp.ones(t.shape, bool)
        return _int_labels(t) != self.ignore_label

    def forward(self, params, bottoms, rng):
        x, t = bottoms
        t = t.reshape(x.shape)
        valid = self._valid(t)
        log_term = x * (t - (x >= 0).astype(x.dtype)) - jnp.log1p(jnp.exp(-jnp.abs(x)))
        loss = -jnp.sum(jnp.where(valid, log_term, 0))
        normalizer = _normalizer(self, self.normalization, self.outer, self.inner,
                                 jnp.sum(valid), x.dtype)
        return [loss / normalizer], normalizer

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        self.refuse_label_diff(propagate_down)
        if not propagate_down[0]:
            return [None, None], []
        x, t = bottoms
        t = t.reshape(x.shape)
        d = jnp.where(self._valid(t), jax.nn.sigmoid(x) - t, 0)
        return [d * (top_diffs[0] / saved), None], []


@register("InfogainLoss")
class InfogainLoss(LossLayer):
    """p = softmax(x) along ``axis``;  E = -sum_valid sum_l H[label, l] log(max(p_l, 1e-20))
    / normalizer, with H (C x C) from bottom 2 or from ``infogain_loss_param.source``
    (a .binaryproto).

    dE/dx_l = loss_weight * (p_l * sum_k H[label, k] - H[label, l]) / normalizer, 0 at
    ignored labels. Normalization: ``loss_param.normalization`` (default VALID);
    ``normalize`` is refused, as in Caffe. Optional second top: p (its diff is ignored).
    No diff reaches the label (bottom 1) or H (bottom 2); force_backward skips both
    (Caffe would let force_backward reach H and then abort in backward).
    """

    param_field = "infogain_loss_param"
    exact_num_bottom_blobs = -1
    min_bottom_blobs = 2
    max_bottom_blobs = 3
    exact_num_top_blobs = -1
    min_top_blobs = 1
    max_top_blobs = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def setup(self, bottom_shapes):
        lp = self.layer_param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalize"):
            self.fail('normalize is deprecated. use "normalization"')
        self.normalization = lp.normalization
        self.H = None
        if len(bottom_shapes) < 3:
            if not self.p.HasField("source"):
                self.fail("Infogain matrix source must be specified (infogain_loss_param "
                          "{ source: \"H.binaryproto\" }), or give H as a third bottom")
            from ..protoio import read_blobproto
            try:
                self.H = np.asarray(read_blobproto(self.p.source), np.float64)
            except (IOError, OSError, ValueError) as e:
                self.fail("cannot read the infogain matrix from '%s': %s", self.p.source, e)

    def reshape(self, bottom_shapes):
        tops = LossLayer.reshape(self, bottom_shapes[:2])
        scores = bottom_shapes[0]
        axis = self.axis = canonical_axis(self, self.p.axis, scores)
        self.outer, self.inner = shape_count(scores, 0, axis), shape_count(scores, axis + 1)
        _check_label_count(self, bottom_shapes[:2], self.outer, self.inner, axis)
        self.num_labels = c = scores[axis]
        if len(bottom_shapes) == 3:
            h_count = shape_count(bottom_shapes[2])
            where = "bottom 2 has shape %s" % shape_string(bottom_shapes[2])
        else:
            h_count = self.H.size
            where = "'%s' has shape %s" % (self.p.source, shape_string(self.H.shape))
        if h_count != c * c:
            self.fail("H must be %dx%d (%d labels along axis %d of bottom 0, shape %s), but %s",
                      c, c, c, axis, shape_string(scores), where)
        _normalizer(self, self.normalization, 1, 1, 1, np.float32)
        return tops + [scores] * (self.num_top - 1)

    def _parts(self, x, bottoms):
        """(p3 (outer, C, inner), H (C, C), label (outer, inner) clipped, valid)."""
        c = self.num_labels
        H = (bottoms[2] if len(bottoms) > 2 else jnp.asarray(self.H, x.dtype)).reshape(c, c)
        label = _int_labels(bottoms[1]).reshape(self.outer, self.inner)
        valid = (jnp.ones(label.shape, bool) if self.ignore_label is None
                 else label != self.ignore_label)
        return H, jnp.where(valid, label, 0), valid

    def forward(self, params, bottoms, rng):
        x = bottoms[0]
        prob = softmax(x, self.axis)
        p3 = prob.reshape(self.outer, -1, self.inner)
        H, label, valid = self._parts(x, bottoms)
        rows = jnp.moveaxis(H[label], -1, 1)                 # (outer, C, inner): H[label, l]
        logp = jnp.log(jnp.maximum(p3, jnp.asarray(kLOG_THRESHOLD, x.dtype)))
        per_item = -jnp.sum(rows * logp, axis=1)
        normalizer = _normalizer(self, self.normalization, self.outer, self.inner,
                                 jnp.sum(valid), x.dtype)
        loss = jnp.sum(jnp.where(valid, per_item, 0)) / normalizer
        return [loss, prob][:self.num_top], (prob, normalizer)

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        self.refuse_label_diff(propagate_down)
        if len(propagate_down) > 2 and propagate_down[2]:
            raise BackwardError("InfogainLoss layer '%s' cannot backpropagate to infogain inputs "
                                "(bottom 2, H); set propagate_down: false for it" % self.name)
        none = [None] * len(bottoms)
        if not propagate_down[0]:
            return none, []
        x = bottoms[0]
        prob, normalizer = saved
        H, label, valid = self._parts(x, bottoms)
        p3 = prob.reshape(self.outer, -1, self.inner)
        rows = jnp.moveaxis(H[label], -1, 1)                 # (outer, C, inner)
        row_sums = jnp.sum(H, axis=1)[label][:, None, :]     # (outer, 1, inner)
        d3 = jnp.where(valid[:, None, :], p3 * row_sums - rows, 0)
        return [(d3 * (top_diffs[0] / normalizer)).reshape(x.shape)] + none[1:], []


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(LossLayer):
    """x (N, D): probabilities;  E = -sum_i log(max(x[i, label_i], 1e-20)) / N.

    dE/dx[i, label_i] = -loss_weight / (N * max(x[i, label_i], 1e-20)), 0 elsewhere -- Caffe's
    formula, kLOG_THRESHOLD clamp included (so an input below 1e-20 gets -w / (N * 1e-20)).
    The label must be (N,) or (N, 1, 1, 1)-like (Caffe: channels, height, width all 1).
    """

    param_field = "loss_param"

    def reshape(self, bottom_shapes):
        tops = LossLayer.reshape(self, bottom_shapes)
        label = bottom_shapes[1]
        if len(label) > 4 or _legacy_dims(label) != [1, 1, 1]:
            self.fail("the label (bottom 1) must have channels, height and width 1 (one label "
                      "per item), got shape %s", shape_string(label))
        return tops

    def _picked(self, x, label):
        x2 = x.reshape(x.shape[0], -1)
        onehot = jnp.arange(x2.shape[1], dtype=jnp.int32)[None, :] == _int_labels(label).reshape(-1, 1)
        prob = jnp.sum(jnp.where(onehot, x2, 0), axis=1)
        return onehot, jnp.maximum(prob, jnp.asarray(kLOG_THRESHOLD, x.dtype))

    def forward(self, params, bottoms, rng):
        x, label = bottoms
        _, prob = self._picked(x, label)
        return [-jnp.sum(jnp.log(prob)) / x.shape[0]], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        self.refuse_label_diff(propagate_down)
        if not propagate_down[0]:
            return [None, None], []
        x, label = bottoms
        onehot, prob = self._picked(x, label)
        scale = -top_diffs[0] / x.shape[0]
        d = jnp.where(onehot, (scale / prob)[:, None], 0)
        return [d.reshape(x.shape), None], []


@register("ContrastiveLoss")
class ContrastiveLoss(LossLayer):
    """a, b (N, C[, 1, 1]), y (N): d = a - b, D = |d|^2 per item.
    E = sum_i [y_i ? D_i : max(margin - sqrt(D_i), 0)^2] / (2N)
    (legacy_version: max(margin - D_i, 0) for dissimilar pairs).

    dE/da = -dE/db = loss_weight / N * (y ? d : -[mdist > 0] * mdist / (sqrt(D) + 1e-4) * d),
    mdist = margin - sqrt(D) -- Caffe's backward, with its 1e-4 in the denominator (so the
    diff of a dissimilar pair is that of the formula times sqrt(D) / (sqrt(D) + 1e-4));
    legacy: -[margin - D > 0] * d. y counts as similar when int(y) != 0. No diff reaches
    y: force_backward skips it, and a requested one is zero (Caffe leaves it untouched).
    """

    param_field = "contrastive_loss_param"
    exact_num_bottom_blobs = 3

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom_shapes):
        tops = LossLayer.reshape(self, bottom_shapes[:2])
        a, b, y = bottom_shapes
        for i, s in ((0, a), (1, b)):
            if len(s) > 4 or _legacy_dims(s)[1:] != [1, 1]:
                self.fail("bottom %d must be (N, C) or (N, C, 1, 1), got shape %s", i,
                          shape_string(s))
        if _legacy_dims(a)[0] != _legacy_dims(b)[0]:
            self.fail("bottoms 0 and 1 must have the same channels: shapes %s and %s",
                      shape_string(a), shape_string(b))
        if len(y) > 4 or _legacy_dims(y) != [1, 1, 1] or shape_count(y) != a[0]:
            self.fail("bottom 2 (similarity labels) must hold one value per pair: bottom 0 has "
                      "shape %s, bottom 2 has shape %s", shape_string(a), shape_string(y))
        return tops

    def _parts(self, bottoms):
        a, b, y = bottoms
        d = (a - b.reshape(a.shape)).reshape(a.shape[0], -1)
        dist_sq = jnp.sum(d * d, axis=1)
        similar = _int_labels(y).reshape(-1) != 0
        return d, dist_sq, similar

    def forward(self, params, bottoms, rng):
        margin = self.p.margin
        d, dist_sq, similar = self._parts(bottoms)
        if self.p.legacy_version:
            dissimilar = jnp.maximum(margin - dist_sq, 0)
        else:
            dissimilar = jnp.maximum(margin - jnp.sqrt(dist_sq), 0) ** 2
        loss = jnp.sum(jnp.where(similar, dist_sq, dissimilar)) / d.shape[0] / 2
        return [loss], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        a, b, y = bottoms
        margin = self.p.margin
        d, dist_sq, similar = self._parts(bottoms)
        if self.p.legacy_version:
            mdist = margin - dist_sq
            factor = -jnp.ones_like(mdist)
        else:
            dist = jnp.sqrt(dist_sq)
            mdist = margin - dist
            factor = -mdist / (dist + 1e-4)
        per_pair = jnp.where(similar, 1, jnp.where(mdist > 0, factor, 0))
        base = d * per_pair[:, None] * (top_diffs[0] / a.shape[0])
        diffs = [base.reshape(a.shape) if propagate_down[0] else None,
                 (-base).reshape(b.shape) if propagate_down[1] else None,
                 jnp.zeros_like(y) if propagate_down[2] else None]
        return diffs, []
