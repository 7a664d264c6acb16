"""SoftmaxWithLoss, EuclideanLoss, Accuracy: forward vs numpy, backward vs jax.vjp, Caffe's rules."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcaffe.errors import BackwardError, LayerSetupError
from jcaffe.proto import caffe_pb2
from layer_testing import check_backward, forward, make_layer

FLT_MIN = float(np.finfo(np.float32).tiny)


def softmax_loss_reference(x, labels, axis=1, ignore_label=None, mode="VALID"):
    """Caffe's SoftmaxWithLoss forward, with explicit loops over positions."""
    x = np.moveaxis(x, axis, -1)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    p = (e / e.sum(axis=-1, keepdims=True)).reshape(-1, x.shape[-1])
    outer = int(np.prod(x.shape[:axis]))
    labels = labels.reshape(-1).astype(int)
    loss, count = 0.0, 0
    for i, lab in enumerate(labels):
        if ignore_label is not None and lab == ignore_label:
            continue
        loss -= np.log(max(p[i, lab], FLT_MIN))
        count += 1
    normalizer = {"FULL": len(labels), "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return loss / max(1, normalizer)


def labels_for(rng, n, classes, ignore=None, shape=None):
    lab = rng.integers(0, classes, n).astype(np.float64)
    if ignore is not None:
        lab[::3] = ignore
    return lab if shape is None else lab.reshape(shape)


def loss_snippet(loss_param="", softmax_param="", extra=""):
    return ('type: "SoftmaxWithLoss" loss_param { %s } softmax_param { %s } %s'
            % (loss_param, softmax_param, extra))


def scalar_diff(layer, bottoms, top_diff=1.0, propagate_down=(True, False)):
    """Run forward then backward with a given loss-top diff (the loss weight)."""
    bottoms = [jnp.asarray(b) for b in bottoms]
    tops, saved = forward(layer, bottoms)
    diffs = [jnp.asarray(top_diff, tops[0].dtype)] + [jnp.zeros_like(t) for t in tops[1:]]
    return layer.backward([], bottoms, tops, saved, diffs, tuple(propagate_down))


# -- LossLayer basics ------------------------------------------------------------

def test_loss_layer_arity_and_weights():
    layer = make_layer(loss_snippet(), [(4, 3), (4,)])
    assert layer.top_shapes == ((),)
    assert layer.loss == [1.0]
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    layer = make_layer(loss_snippet(extra="loss_weight: 0.5"), [(4, 3), (4,)])
    assert layer.loss == [0.5]
    with pytest.raises(LayerSetupError, match="exactly 2 bottom"):
        make_layer(loss_snippet(), [(4, 3)])


def test_loss_layer_first_dimension_check():
    with pytest.raises(LayerSetupError, match="same first dimension.*4 3 \\(12\\).*5 \\(5\\)"):
        make_layer(loss_snippet(), [(4, 3), (5,)])


def test_softmax_loss_two_tops_need_two_loss_weights():
    # Caffe: LossLayer adds a single loss_weight 1, then "loss_weight must be
    # unspecified or specified once per top blob" fails for two tops.
    with pytest.raises(LayerSetupError, match="loss_weight"):
        make_layer(loss_snippet(extra='top: "loss" top: "prob"'), [(4, 3), (4,)])
    layer = make_layer(loss_snippet(extra='top: "loss" top: "prob" loss_weight: 1 loss_weight: 0'),
                       [(4, 3), (4,)])
    assert layer.loss == [1.0, 0.0] and layer.top_shapes == ((), (4, 3))


def test_softmax_loss_second_top_warns_that_bvlc_cannot_set_it_up():
    """With two loss_weights jcaffe computes the probabilities; BVLC's inner Softmax
    inherits both weights and stops (issue #2968): a warning says so, and what to write
    for a net that runs there too. One top: no warning."""
    from netutil import LogLines
    with LogLines() as logs:
        make_layer(loss_snippet(extra='top: "loss" top: "prob" loss_weight: 1 loss_weight: 0'),
                   [(4, 3), (4,)])
        make_layer(loss_snippet(), [(4, 3), (4,)])
    warned = [l for l in logs.lines if "#2968" in l]
    assert len(warned) == 1 and warned[0].startswith("SoftmaxWithLoss layer 'softmaxwithloss'")
    assert "a Softmax layer beside it" in warned[0]


# -- SoftmaxWithLoss -------------------------------------------------------------

MODES = ["FULL", "VALID", "BATCH_SIZE", "NONE"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_loss_normalization_and_ignore(x64, rng, mode, ignore):
    shape = (3, 4, 2, 5)
    loss_param = "normalization: %s" % mode
    if ignore is not None:
        loss_param += " ignore_label: %d" % ignore
    layer = make_layer(loss_snippet(loss_param), [shape, (3, 1, 2, 5)])
    x = rng.standard_normal(shape)
    lab = labels_for(rng, 30, 4, ignore, (3, 1, 2, 5))
    (loss,), _ = forward(layer, [x, lab])
    assert loss.shape == ()
    np.testing.assert_allclose(float(loss), softmax_loss_reference(x, lab, 1, ignore, mode), rtol=1e-12)
    check_backward(layer, [x, lab], propagate_down=[True, False])


def test_softmax_loss_backward_formula(x64, rng):
    """(prob - onehot) * loss_weight / normalizer, zero rows at ignored labels."""
    layer = make_layer(loss_snippet("ignore_label: 0 normalization: VALID"), [(6, 3), (6,)])
    x = rng.standard_normal((6, 3))
    lab = np.array([0, 1, 2, 0, 2, 1], float)
    (dx, dlab), pdiffs = scalar_diff(layer, [x, lab], top_diff=2.5)
    assert dlab is None and pdiffs == []
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    expected = p - np.eye(3)[lab.astype(int)]
    expected[lab == 0] = 0
    np.testing.assert_allclose(np.asarray(dx), expected * 2.5 / 4, rtol=1e-12)


def test_softmax_loss_axis_2(x64, rng):
    shape = (2, 3, 5, 2)
    layer = make_layer(loss_snippet(softmax_param="axis: 2"), [shape, (2, 3, 2)])
    x = rng.standard_normal(shape)
    lab = labels_for(rng, 12, 5, shape=(2, 3, 2))
    (loss,), _ = forward(layer, [x, lab])
    np.testing.assert_allclose(float(loss), softmax_loss_reference(x, lab, 2), rtol=1e-12)
    check_backward(layer, [x, lab], propagate_down=[True, False])


@pytest.mark.parametrize("normalize,expected", [("true", "VALID"), ("false", "BATCH_SIZE")])
def test_softmax_loss_legacy_normalize(x64, rng, normalize, expected):
    layer = make_layer(loss_snippet("normalize: %s ignore_label: 1" % normalize), [(4, 3, 2), (4, 2)])
    assert layer.normalization == getattr(caffe_pb2.LossParameter, expected)
    x = rng.standard_normal((4, 3, 2))
    lab = labels_for(rng, 8, 3, 1, (4, 2))
    (loss,), _ = forward(layer, [x, lab])
    np.testing.assert_allclose(float(loss), softmax_loss_reference(x, lab, 1, 1, expected), rtol=1e-12)


def test_softmax_loss_normalization_wins_over_normalize():
    layer = make_layer(loss_snippet("normalize: false normalization: FULL"), [(4, 3), (4,)])
    assert layer.normalization == caffe_pb2.LossParameter.FULL
    layer = make_layer(loss_snippet(), [(4, 3), (4,)])
    assert layer.normalization == caffe_pb2.LossParameter.VALID


def test_softmax_loss_all_ignored_is_zero_not_nan(x64, rng):
    layer = make_layer(loss_snippet("ignore_label: 7"), [(3, 4), (3,)])
    x = rng.standard_normal((3, 4))
    lab = np.full(3, 7.0)
    (loss,), _ = forward(layer, [x, lab])
    assert float(loss) == 0.0
    (dx, _), _ = scalar_diff(layer, [x, lab])
    assert not np.asarray(dx).any()


def test_softmax_loss_clamps_at_flt_min(x64):
    layer = make_layer(loss_snippet(), [(1, 2), (1,)])
    x = np.array([[0.0, 2000.0]])
    (loss,), _ = forward(layer, [x, np.array([0.0])])
    np.testing.assert_allclose(float(loss), -np.log(FLT_MIN), rtol=1e-12)


def test_softmax_loss_second_top_is_prob(x64, rng):
    layer = make_layer(loss_snippet(extra='top: "l" top: "p" loss_weight: 1 loss_weight: 0'),
                       [(2, 3, 4), (2, 4)])
    x = rng.standard_normal((2, 3, 4))
    lab = labels_for(rng, 8, 3, shape=(2, 4))
    (loss, prob), _ = forward(layer, [x, lab])
    e = np.exp(x)
    np.testing.assert_allclose(np.asarray(prob), e / e.sum(1, keepdims=True), rtol=1e-12)
    # Caffe's backward reads only the loss top's diff: the prob top's diff is ignored.
    (dx, _), _ = scalar_diff(layer, [x, lab])
    ref = jax.grad(lambda x: layer.forward([], [x, jnp.asarray(lab)], None)[0][0])(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(dx), np.asarray(ref), rtol=1e-10, atol=1e-14)


def test_softmax_loss_float32_keeps_dtype(rng):
    layer = make_layer(loss_snippet("ignore_label: 0"), [(5, 4), (5,)], dtype=np.float32)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    lab = labels_for(rng, 5, 4).astype(np.float32)
    (loss,), _ = forward(layer, [x, lab])
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), softmax_loss_reference(x.astype(float), lab, 1, 0),
                               rtol=1e-5)
    (dx, _), _ = scalar_diff(layer, [x, lab])
    assert dx.dtype == jnp.float32


def test_softmax_loss_label_count_check():
    with pytest.raises(LayerSetupError, match="Number of labels must match.*2 x 5 = 10 labels"):
        make_layer(loss_snippet(), [(2, 3, 5), (2, 4)])


def test_softmax_loss_refuses_label_diff(x64, rng):
    layer = make_layer(loss_snippet(), [(3, 4), (3,)])
    bottoms = [rng.standard_normal((3, 4)), labels_for(rng, 3, 4)]
    with pytest.raises(BackwardError, match="SoftmaxWithLoss layer 'softmaxwithloss' cannot "
                                            "backpropagate to label inputs"):
        scalar_diff(layer, bottoms, propagate_down=(True, True))
    (dx, dlab), _ = scalar_diff(layer, bottoms, propagate_down=(False, False))
    assert dx is None and dlab is None


# -- EuclideanLoss ---------------------------------------------------------------

def test_euclidean_loss(x64, rng):
    layer = make_layer('type: "EuclideanLoss"', [(4, 3, 2), (4, 6)])
    assert layer.loss == [1.0]
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1)
    a, b = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 6))
    (loss,), _ = forward(layer, [a, b])
    np.testing.assert_allclose(float(loss), ((a.reshape(4, 6) - b) ** 2).sum() / 4 / 2, rtol=1e-12)
    check_backward(layer, [a, b], propagate_down=[True, True])
    check_backward(layer, [a, b], propagate_down=[False, True])
    (da, db), _ = scalar_diff(layer, [a, b], top_diff=3.0, propagate_down=(True, True))
    np.testing.assert_allclose(np.asarray(da), 3.0 * (a - b.reshape(a.shape)) / 4, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(db), -np.asarray(da).reshape(4, 6), rtol=1e-12)
    (da, db), _ = scalar_diff(layer, [a, b], propagate_down=(True, False))
    assert db is None and da is not None


def test_euclidean_loss_float32(rng):
    layer = make_layer('type: "EuclideanLoss"', [(3, 2), (3, 2)], dtype=np.float32)
    a, b = (rng.standard_normal((3, 2)).astype(np.float32) for _ in range(2))
    (loss,), _ = forward(layer, [a, b])
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), ((a - b) ** 2).sum() / 6, rtol=1e-5)


def test_euclidean_loss_dimension_check():
    with pytest.raises(LayerSetupError, match="same dimension.*4 3 \\(12\\).*4 2 \\(8\\)"):
        make_layer('type: "EuclideanLoss"', [(4, 3), (4, 2)])
    with pytest.raises(LayerSetupError, match="same first dimension"):
        make_layer('type: "EuclideanLoss"', [(4, 3), (3, 4)])


@pytest.mark.parametrize("text, label", [('type: "EuclideanLoss"', (2, 3, 4, 5, 6)),
                                         ('type: "HingeLoss"', (2,))])
def test_losses_that_divide_by_caffes_num_take_at_most_four_axes(text, label):
    """BVLC's EuclideanLoss and HingeLoss divide by bottom 0's num(), a legacy accessor
    that stops Caffe on a blob of more than 4 axes (a 3-d map's): an error naming the
    bottom and its shape and the way round it (a Flatten first, the same loss). Caffe's
    forward reads bottom 1 by its count only: EuclideanLoss's targets may have 5 axes
    there too (its backward divides by their num() where they take a diff)."""
    with pytest.raises(LayerSetupError) as err:
        make_layer(text, [(2, 3, 4, 5, 6), label])
    assert "bottom 0 has 5 axes (shape 2 3 4 5 6 (720))" in str(err.value)
    assert "legacy accessors" in str(err.value) and "Flatten" in str(err.value)
    make_layer(text, [(2, 3, 4, 30), label])
    if text == 'type: "EuclideanLoss"':
        make_layer(text, [(2, 360), label])


# -- Accuracy --------------------------------------------------------------------

def accuracy_reference(x, labels, top_k=1, axis=1, ignore_label=None, num_classes=None):
    """Caffe's rule: a hit when fewer than top_k other classes score >= the true class."""
    x = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    labels = labels.reshape(-1).astype(int)
    hits, count = 0, 0
    per_hits, per_count = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for scores, lab in zip(x, labels):
        if ignore_label is not None and lab == ignore_label:
            continue
        better = sum(1 for k, s in enumerate(scores) if k != lab and s >= scores[lab])
        hit = better < top_k
        hits += hit
        count += 1
        per_hits[lab] += hit
        per_count[lab] += 1
    per_class = np.where(per_count == 0, 0, per_hits / np.maximum(per_count, 1))
    return (hits / count if count else 0.0), per_class


def test_accuracy_is_not_a_loss():
    layer = make_layer('type: "Accuracy"', [(4, 3), (4,)])
    assert layer.loss == [0.0] and layer.top_shapes == ((),)
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_accuracy_top_k_with_ties(x64, top_k):
    # Integer scores with many ties; a tie with the true class counts against it.
    x = np.array([[1, 3, 3, 0],
                  [2, 2, 2, 2],
                  [5, 1, 5, 5],
                  [0, 1, 2, 3],
                  [3, 3, 1, 0]], float)
    lab = np.array([1, 0, 1, 0, 0], float)
    layer = make_layer('type: "Accuracy" accuracy_param { top_k: %d } top: "a" top: "pc"' % top_k,
                       [x.shape, lab.shape])
    (acc, per_class), _ = forward(layer, [x, lab])
    ref_acc, ref_pc = accuracy_reference(x, lab, top_k)
    np.testing.assert_allclose(float(acc), ref_acc, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(per_class), ref_pc, rtol=1e-12)
    # by hand: row 0 (label 1 ties class 2) hits from k=2; row 1 (all tied) from k=4;
    # row 2 (label 1 lowest) never; row 3 (label 0 lowest) never; row 4 ties class 1: k=2.
    assert float(acc) == {1: 0.0, 2: 0.4, 3: 0.4}[top_k]


def test_accuracy_spatial_axis_ignore_and_per_class(x64, rng):
    shape = (3, 5, 4)
    x = rng.standard_normal(shape)
    lab = labels_for(rng, 12, 5, ignore=4, shape=(3, 4))
    layer = make_layer('type: "Accuracy" accuracy_param { ignore_label: 4 top_k: 2 } '
                       'top: "a" top: "pc"', [shape, lab.shape])
    assert layer.top_shapes == ((), (5,))
    (acc, per_class), _ = forward(layer, [x, lab])
    ref_acc, ref_pc = accuracy_reference(x, lab, 2, 1, 4)
    np.testing.assert_allclose(float(acc), ref_acc, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(per_class), ref_pc, rtol=1e-12)
    assert float(per_class[4]) == 0.0  # the ignored class has no count


def test_accuracy_axis_2_float32(rng):
    shape = (2, 3, 6)
    x = rng.standard_normal(shape).astype(np.float32)
    lab = labels_for(rng, 6, 6, shape=(2, 3)).astype(np.float32)
    layer = make_layer('type: "Accuracy" accuracy_param { axis: -1 }', [shape, lab.shape],
                       dtype=np.float32)
    (acc,), _ = forward(layer, [x, lab])
    assert acc.dtype == jnp.float32
    np.testing.assert_allclose(float(acc), accuracy_reference(x, lab, 1, 2)[0], rtol=1e-6)


def test_accuracy_all_ignored_is_zero(x64, rng):
    layer = make_layer('type: "Accuracy" accuracy_param { ignore_label: 0 }', [(3, 2), (3,)])
    (acc,), _ = forward(layer, [rng.standard_normal((3, 2)), np.zeros(3)])
    assert float(acc) == 0.0


def test_accuracy_checks():
    with pytest.raises(LayerSetupError, match="top_k must be less than or equal to the number of "
                                              "classes: top_k is 4"):
        make_layer('type: "Accuracy" accuracy_param { top_k: 4 }', [(5, 3), (5,)])
    with pytest.raises(LayerSetupError, match="Number of labels must match"):
        make_layer('type: "Accuracy"', [(5, 3, 2), (5,)])


def test_accuracy_has_no_backward(x64, rng):
    layer = make_layer('type: "Accuracy"', [(3, 2), (3,)])
    bottoms = [jnp.asarray(rng.standard_normal((3, 2))), jnp.zeros(3)]
    tops, saved = forward(layer, bottoms)
    assert layer.backward([], bottoms, tops, saved, [jnp.zeros(())], (False, False)) == ([None, None], [])
    with pytest.raises(BackwardError, match="Accuracy layer 'accuracy' has no backward"):
        layer.backward([], bottoms, tops, saved, [jnp.zeros(())], (True, False))
