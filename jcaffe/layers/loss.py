"""Loss layers (a scalar top with loss weight 1 by default) and Accuracy.

A loss top's diff holds its loss weight (Caffe's SetLossWeights), so a
backward scales by ``top_diffs[0]``, a scalar array. Labels arrive as float
arrays holding integers and are cast inside.
"""
import logging

import jax.numpy as jnp
import numpy as np

from ..blob import shape_count, shape_string
from ..errors import BackwardError
from ..layer import JaxLayer, register
from ..proto import caffe_pb2
from .common import FLATTEN_FOR_LOSS, canonical_axis, legacy_shape, softmax

log = logging.getLogger("jcaffe")

_Norm = caffe_pb2.LossParameter


class LossLayer(JaxLayer):
    """Caffe's LossLayer: bottoms (prediction, label), one scalar top weighted 1 by default.

    Force_backward never reaches the label bottom (index 1).
    """

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1
    auto_top_blobs = True
    default_loss_weights = (1.0,)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def reshape(self, bottom_shapes):
        a, b = bottom_shapes
        if not a or not b or a[0] != b[0]:
            self.fail("The data and label should have the same first dimension: bottom 0 has "
                      "shape %s, bottom 1 has shape %s", shape_string(a), shape_string(b))
        return [()]

    def refuse_label_diff(self, propagate_down):
        if propagate_down[1]:
            raise BackwardError("%s layer '%s' cannot backpropagate to label inputs (bottom 1); "
                                "set propagate_down: false for it"
                                % (self.type, self.name))


def _check_label_count(layer, bottom_shapes, outer, inner, axis):
    scores, labels = bottom_shapes
    if outer * inner != shape_count(labels):
        layer.fail("Number of labels must match number of predictions: bottom 0 has shape %s, "
                   "so with axis %d there must be %d x %d = %d labels, but bottom 1 has shape %s. "
                   "E.g. predictions (N, C, H, W) with axis 1 take N*H*W labels with integer "
                   "values in {0, 1, ..., C-1}.", shape_string(scores), axis, outer, inner,
                   outer * inner, shape_string(labels))


def _log_floor(dtype):
    """Caffe clamps probabilities at FLT_MIN before the log, whatever the Dtype."""
    return float(max(np.finfo(np.float32).tiny, np.finfo(dtype).tiny))


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(LossLayer):
    """E = -sum_valid log(max(p[label], FLT_MIN)) / normalizer, p = softmax(x) along axis.

    dE/dx = loss_weight * (p - onehot(label)) / normalizer, 0 at ignored labels.
    The optional second top is p; like Caffe, backward ignores that top's diff. BVLC's
    Caffe declares that top but cannot set the layer up with it (its inner Softmax
    inherits the loss_weights and fails their count check: BVLC/caffe issue #2968, open);
    jcaffe computes it, and says at setup that such a net does not run in BVLC's Caffe.
    """

    exact_num_top_blobs = -1
    min_top_blobs = 1
    max_top_blobs = 2

    def setup(self, bottom_shapes):
        lp = self.layer_param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = _Norm.VALID if lp.normalize else _Norm.BATCH_SIZE
        else:
            self.normalization = lp.normalization
        if self.normalization not in (_Norm.FULL, _Norm.VALID, _Norm.BATCH_SIZE, _Norm.NONE):
            self.fail("Unknown normalization mode: %d", self.normalization)
        if self.num_top == 2:
            log.warning("SoftmaxWithLoss layer '%s': its second top (the probabilities) is "
                        "computed here, but BVLC's Caffe stops setting this layer up "
                        "('loss_weight must be unspecified or specified once per top blob'; "
                        "BVLC/caffe issue #2968): for a net that runs there too, take the "
                        "probabilities from a Softmax layer beside it", self.name)

    def reshape(self, bottom_shapes):
        tops = LossLayer.reshape(self, bottom_shapes)
        scores = bottom_shapes[0]
        axis = self.axis = canonical_axis(self, self.layer_param.softmax_param.axis, scores)
        self.outer, self.inner = shape_count(scores, 0, axis), shape_count(scores, axis + 1)
        _check_label_count(self, bottom_shapes, self.outer, self.inner, axis)
        return tops + [scores] * (self.num_top - 1)

    def _normalizer(self, valid_count, dtype):
        """Caffe's get_normalizer, never below 1."""
        mode = self.normalization
        if mode == _Norm.FULL:
            n = jnp.asarray(self.outer * self.inner, dtype)
        elif mode == _Norm.VALID:
            n = valid_count.astype(dtype)
        elif mode == _Norm.BATCH_SIZE:
            n = jnp.asarray(self.outer, dtype)
        else:  # NONE
            n = jnp.asarray(1, dtype)
        return jnp.maximum(n, 1)

    def _onehot_and_valid(self, x, label):
        """onehot (outer, C, inner) bool and valid (outer, inner) bool."""
        label = label.reshape(self.outer, self.inner).astype(jnp.int32)
        classes = jnp.arange(x.shape[self.axis], dtype=jnp.int32)
        onehot = classes[None, :, None] == label[:, None, :]
        if self.ignore_label is None:
            valid = jnp.ones(label.shape, bool)
        else:
            valid = label != self.ignore_label
        return onehot, valid

    def forward(self, params, bottoms, rng):
        x, label = bottoms
        prob = softmax(x, self.axis)
        p3 = prob.reshape(self.outer, -1, self.inner)
        p_true, valid = self._true_class_prob(p3, label)
        nll = -jnp.log(jnp.maximum(p_true, _log_floor(x.dtype)))
        normalizer = self._normalizer(jnp.sum(valid), x.dtype)
        loss = jnp.sum(jnp.where(valid, nll, 0)) / normalizer
        tops = [loss, prob][:self.num_top]
        return tops, (prob, normalizer)

    def _true_class_prob(self, p3, label):
        """Each position's probability of its label (outer, inner), 0 where the label is
        not a class (as Caffe's loop reads no class there), and valid (outer, inner): the
        one element gathered, where a one-hot mask summed over every class took a pass
        over the whole probability array: the layer's forward alone on LRCN's 20 x 100 x
        8801 scores 92 -> 59 ms, LRCN's TEST forward 760 -> 725 ms, the same loss bit for
        bit. (In a fused training step XLA folded that pass into the softmax's: level.)"""
        label = label.reshape(self.outer, 1, self.inner).astype(jnp.int32)
        classes = p3.shape[1]
        inside = (label >= 0) & (label < classes)
        picked = jnp.take_along_axis(p3, jnp.clip(label, 0, classes - 1), axis=1)
        p_true = jnp.where(inside, picked, 0)[:, 0]
        if self.ignore_label is None:
            valid = jnp.ones(p_true.shape, bool)
        else:
            valid = label[:, 0] != self.ignore_label
        return p_true, valid

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        self.refuse_label_diff(propagate_down)
        if not propagate_down[0]:
            return [None, None], []
        x, label = bottoms
        prob, normalizer = saved
        onehot, valid = self._onehot_and_valid(x, label)
        p3 = prob.reshape(self.outer, -1, self.inner)
        d3 = jnp.where(valid[:, None, :], p3 - onehot.astype(x.dtype), 0)
        scale = top_diffs[0] / normalizer
        return [(d3 * scale).reshape(x.shape), None], []


@register("EuclideanLoss")
class EuclideanLoss(LossLayer):
    """E = sum((a - b)^2) / (2 N), N = a.shape[0];  dE/da = (a - b) / N = -dE/db (times loss weight).

    Both bottoms may take a diff (force_backward reaches b too, unlike other losses).
    """

    def allow_force_backward(self, bottom_index):
        return True

    def reshape(self, bottom_shapes):
        tops = LossLayer.reshape(self, bottom_shapes)
        a, b = bottom_shapes
        legacy_shape(self, a, 0, FLATTEN_FOR_LOSS)      # (BVLC divides by its num())
        if shape_count(a, 1) != shape_count(b, 1):
            self.fail("Inputs must have the same dimension: bottom 0 has shape %s, bottom 1 "
                      "has shape %s (counts from axis 1 on: %d vs %d)", shape_string(a),
                      shape_string(b), shape_count(a, 1), shape_count(b, 1))
        return tops

    def forward(self, params, bottoms, rng):
        a, b = bottoms
        d = a - b.reshape(a.shape)
        return [jnp.sum(d * d) / a.shape[0] / 2], d

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        a, b = bottoms
        d = saved
        scaled = d * (top_diffs[0] / a.shape[0])
        da = scaled if propagate_down[0] else None
        db = -scaled.reshape(b.shape) if propagate_down[1] else None
        return [da, db], []


def _ratio(hits, counts, dtype):
    """hits / counts in ``dtype``, 0 where counts is 0."""
    return jnp.where(counts == 0, 0, hits.astype(dtype) / jnp.maximum(counts, 1).astype(dtype))


@register("Accuracy")
class Accuracy(JaxLayer):
    """y = fraction of (non-ignored) positions whose label is among the top_k scores along axis.

    The label counts as within the top k when fewer than top_k other classes
    score >= its score (ties count against it). Optional second top: the same
    per class (0 for a class with no labels). No backward, as in Caffe.
    """

    exact_num_bottom_blobs = 2
    min_top_blobs = 1
    max_top_blobs = 2

    def setup(self, bottom_shapes):
        p = self.p
        self.top_k = p.top_k
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None

    def reshape(self, bottom_shapes):
        scores, labels = bottom_shapes
        num_labels = shape_count(labels)
        if num_labels and self.top_k > shape_count(scores) // num_labels:
            self.fail("top_k must be less than or equal to the number of classes: top_k is %d, "
                      "bottom 0 has shape %s for %d labels", self.top_k, shape_string(scores),
                      num_labels)
        axis = self.axis = canonical_axis(self, self.p.axis, scores)
        self.outer, self.inner = shape_count(scores, 0, axis), shape_count(scores, axis + 1)
        _check_label_count(self, bottom_shapes, self.outer, self.inner, axis)
        return [()] + [(scores[axis],)] * (self.num_top - 1)

    def forward(self, params, bottoms, rng):
        x, label = bottoms
        x3 = x.reshape(self.outer, -1, self.inner)
        label = label.reshape(self.outer, self.inner).astype(jnp.int32)
        classes = jnp.arange(x3.shape[1], dtype=jnp.int32)
        onehot = classes[None, :, None] == label[:, None, :]
        valid = (jnp.ones(label.shape, bool) if self.ignore_label is None
                 else label != self.ignore_label)
        true_score = jnp.sum(jnp.where(onehot, x3, 0), axis=1, keepdims=True)
        # The true class itself scores >= its own score: it is not "better".
        num_better = jnp.sum(x3 >= true_score, axis=1) - 1
        hit = (num_better < self.top_k) & valid
        count = jnp.sum(valid)
        accuracy = _ratio(jnp.sum(hit), count, x.dtype)
        tops = [accuracy]
        if self.num_top > 1:
            per_class_count = jnp.sum(onehot & valid[:, None, :], axis=(0, 2))
            per_class_hits = jnp.sum(onehot & hit[:, None, :], axis=(0, 2))
            tops.append(_ratio(per_class_hits, per_class_count, x.dtype))
        return tops, None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if any(propagate_down):
            raise BackwardError("Accuracy layer '%s' has no backward (Caffe: Not Implemented), "
                                "but propagate_down is true for bottom %d; Accuracy cannot be "
                                "backpropagated through (force_backward reaches it too)"
                                % (self.name, list(propagate_down).index(True)))
        return [None, None], []
