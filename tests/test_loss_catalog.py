"""HingeLoss, SigmoidCrossEntropyLoss, InfogainLoss, MultinomialLogisticLoss, ContrastiveLoss:
forward and backward vs numpy loops written from Caffe's CPU code, Caffe's defaults and
checks, label bottoms refusing diffs, and a net training through them."""
import jax.numpy as jnp
import numpy as np
import pytest

from jcaffe.errors import BackwardError, LayerSetupError
from jcaffe.proto import caffe_pb2
from jcaffe.protoio import write_blobproto
from layer_testing import check_backward, forward, make_layer
from netutil import make_net

LOG_THRESHOLD = 1e-20


def run(layer, bottoms, loss_weight=1.0, propagate_down=None):
    """Forward, then backward with ``loss_weight`` as the loss top's diff."""
    bottoms = [jnp.asarray(b) for b in bottoms]
    tops, saved = forward(layer, bottoms)
    pd = propagate_down or [True] + [False] * (len(bottoms) - 1)
    diffs = [jnp.asarray(loss_weight, tops[0].dtype)] + [jnp.zeros_like(t) for t in tops[1:]]
    (bottom_diffs, _) = layer.backward([], bottoms, tops, saved, diffs, tuple(pd))
    return [np.asarray(t) for t in tops], bottom_diffs


# -- HingeLoss -------------------------------------------------------------------------

def hinge_reference(x, label, norm):
    """Caffe's HingeLossLayer::Forward_cpu / Backward_cpu (loss weight 1)."""
    num = x.shape[0]
    d = x.reshape(num, -1).copy()
    for i in range(num):
        d[i, int(label[i])] *= -1
    d = np.maximum(0, 1 + d)
    loss = d.sum() / num if norm == "L1" else (d * d).sum() / num
    g = d.copy()
    for i in range(num):
        g[i, int(label[i])] *= -1
    g = np.sign(g) / num if norm == "L1" else g * 2 / num
    return loss, g.reshape(x.shape)


@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("shape", [(4, 5), (3, 2, 2, 2)])
def test_hinge_loss_matches_caffe(x64, rng, norm, shape):
    x = rng.standard_normal(shape)
    label = rng.integers(0, int(np.prod(shape[1:])), shape[0]).astype(np.float64)
    layer = make_layer('type: "HingeLoss" hinge_loss_param { norm: %s }' % norm, [shape, label.shape])
    assert layer.loss == [1.0] and layer.top_shapes == ((),)
    (loss,), (dx, dl) = run(layer, [x, label], loss_weight=0.5)
    ref_loss, ref_grad = hinge_reference(x, label, norm)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(dx, 0.5 * ref_grad, rtol=1e-12)
    assert dl is None
    check_backward(layer, [x, label], propagate_down=[True, False])


def test_hinge_loss_default_norm_is_l1_and_checks(x64, rng):
    layer = make_layer('type: "HingeLoss"', [(2, 3), (2,)])
    assert layer.norm == caffe_pb2.HingeLossParameter.L1
    with pytest.raises(LayerSetupError, match="HingeLoss layer 'hingeloss': needs one label per item"):
        make_layer('type: "HingeLoss"', [(2, 3), (2, 2)])
    with pytest.raises(LayerSetupError, match="same first dimension"):
        make_layer('type: "HingeLoss"', [(2, 3), (3,)])
    with pytest.raises(BackwardError, match="HingeLoss layer 'hingeloss' cannot backpropagate to label"):
        run(layer, [rng.standard_normal((2, 3)), np.zeros(2)], propagate_down=[True, True])


# -- SigmoidCrossEntropyLoss -----------------------------------------------------------

def sigmoid_ce_reference(x, t, ignore_label=None, mode="BATCH_SIZE"):
    x, t = x.ravel(), t.ravel()
    loss, valid = 0.0, 0
    grad = np.zeros_like(x)
    for i in range(x.size):
        if ignore_label is not None and int(t[i]) == ignore_label:
            continue
        pos = float(x[i] >= 0)
        loss -= x[i] * (t[i] - pos) - np.log(1 + np.exp(x[i] - 2 * x[i] * pos))
        grad[i] = 1 / (1 + np.exp(-x[i])) - t[i]
        valid += 1
    return loss, grad, valid


@pytest.mark.parametrize("loss_param,mode", [
    ("", "BATCH_SIZE"),                          # Caffe's default here (the proto says VALID)
    ("normalize: true", "VALID"),
    ("normalize: false", "BATCH_SIZE"),
    ("normalization: FULL", "FULL"),
    ("normalization: VALID", "VALID"),
    ("normalization: NONE", "NONE"),
    ("normalization: BATCH_SIZE normalize: true", "BATCH_SIZE"),   # normalization wins
])
@pytest.mark.parametrize("ignore", [None, 0])
def test_sigmoid_cross_entropy_matches_caffe(x64, rng, loss_param, mode, ignore):
    shape = (3, 4, 2)
    x = rng.standard_normal(shape) * 3
    t = rng.integers(0, 2, shape).astype(np.float64)
    snippet = 'type: "SigmoidCrossEntropyLoss" loss_param { %s %s }' % (
        loss_param, "" if ignore is None else "ignore_label: %d" % ignore)
    layer = make_layer(snippet, [shape, shape])
    (loss,), (dx, _) = run(layer, [x, t], loss_weight=2.0)
    ref, grad, valid = sigmoid_ce_reference(x, t, ignore)
    norm = max(1, {"FULL": x.size, "VALID": valid, "BATCH_SIZE": shape[0], "NONE": 1}[mode])
    np.testing.assert_allclose(loss, ref / norm, rtol=1e-12)
    np.testing.assert_allclose(dx, 2.0 * grad.reshape(shape) / norm, rtol=1e-12, atol=1e-15)
    check_backward(layer, [x, t], propagate_down=[True, False])


def test_sigmoid_cross_entropy_soft_targets_and_stability(rng):
    x = np.array([[-200.0, -30.0, 0.0, 30.0, 200.0]], np.float32)
    t = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]], np.float32)
    layer = make_layer('type: "SigmoidCrossEntropyLoss"', [x.shape, t.shape], dtype=np.float32)
    (loss,), (dx, _) = run(layer, [x, t])
    assert loss.dtype == np.float32 and np.isfinite(loss) and np.all(np.isfinite(dx))
    exact = sum(max(a, 0) - a * b + np.log1p(np.exp(-abs(a))) for a, b in zip(x[0].astype(float), t[0]))
    np.testing.assert_allclose(loss, exact, rtol=1e-5)


def test_sigmoid_cross_entropy_checks(rng):
    with pytest.raises(LayerSetupError, match="inputs must have the same count"):
        make_layer('type: "SigmoidCrossEntropyLoss"', [(2, 3), (2, 4)])
    layer = make_layer('type: "SigmoidCrossEntropyLoss"', [(2, 3), (2, 3)])
    with pytest.raises(BackwardError, match="cannot backpropagate to label inputs"):
        run(layer, [np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)], propagate_down=[True, True])


# -- InfogainLoss ----------------------------------------------------------------------

def infogain_reference(x, label, H, axis=1, ignore_label=None, mode="VALID"):
    xm = np.moveaxis(x, axis, -1)
    e = np.exp(xm - xm.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    c = x.shape[axis]
    outer = int(np.prod(x.shape[:axis]))
    p2 = p.reshape(-1, c)
    labels = label.ravel().astype(int)
    loss, count = 0.0, 0
    grad = np.zeros_like(p2)
    for i, lab in enumerate(labels):
        if ignore_label is not None and lab == ignore_label:
            continue
        for l in range(c):
            loss -= H[lab, l] * np.log(max(p2[i, l], LOG_THRESHOLD))
            grad[i, l] = p2[i, l] * H[lab].sum() - H[lab, l]
        count += 1
    norm = max(1, {"FULL": labels.size, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode])
    grad = np.moveaxis(grad.reshape(xm.shape), -1, axis)
    return loss / norm, grad / norm, np.moveaxis(p, -1, axis)


@pytest.mark.parametrize("mode", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
def test_infogain_loss_with_h_bottom_matches_caffe(x64, rng, mode):
    x = rng.standard_normal((3, 4, 2))
    label = rng.integers(0, 4, (3, 2)).astype(np.float64)
    label[0, 0] = 2
    H = rng.uniform(0, 2, (4, 4))
    snippet = ('type: "InfogainLoss" loss_param { normalization: %s ignore_label: 2 } '
               'top: "loss" top: "prob" loss_weight: 1 loss_weight: 0' % mode)
    layer = make_layer(snippet, [x.shape, label.shape, H.shape])
    assert layer.top_shapes == ((), x.shape)
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, False, False]
    (loss, prob), (dx, dl, dh) = run(layer, [x, label, H], loss_weight=0.7)
    ref, grad, p = infogain_reference(x, label, H, ignore_label=2, mode=mode)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(prob, p, rtol=1e-12)
    np.testing.assert_allclose(dx, 0.7 * grad, rtol=1e-10, atol=1e-14)
    assert dl is None and dh is None


def test_infogain_loss_h_from_binaryproto_and_axis(x64, rng, tmp_path):
    H = rng.uniform(0, 1, (3, 3))
    path = str(tmp_path / "H.binaryproto")
    write_blobproto(H.reshape(1, 1, 3, 3), path)
    x = rng.standard_normal((2, 5, 3))
    label = rng.integers(0, 3, (2, 5)).astype(np.float64)
    snippet = 'type: "InfogainLoss" infogain_loss_param { source: "%s" axis: 2 }' % path
    layer = make_layer(snippet, [x.shape, label.shape])
    (loss,), (dx, _) = run(layer, [x, label])
    ref, grad, _ = infogain_reference(x, label, H, axis=2)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)     # H stored as float32 in the file
    np.testing.assert_allclose(dx, grad, rtol=1e-6, atol=1e-9)
    check_backward(layer, [x, label], propagate_down=[True, False])


def test_infogain_loss_identity_h_is_softmax_loss(x64, rng):
    x = rng.standard_normal((4, 3))
    label = rng.integers(0, 3, 4).astype(np.float64)
    info = make_layer('type: "InfogainLoss"', [x.shape, label.shape, (3, 3)])
    soft = make_layer('type: "SoftmaxWithLoss"', [x.shape, label.shape])
    (a,), (da, _, _) = run(info, [x, label, np.eye(3)])
    (b,), (db, _) = run(soft, [x, label])
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(da, db, rtol=1e-12, atol=1e-15)


def test_infogain_loss_checks(rng, tmp_path):
    with pytest.raises(LayerSetupError, match="InfogainLoss layer 'infogainloss': Infogain matrix "
                                              "source must be specified"):
        make_layer('type: "InfogainLoss"', [(2, 3), (2,)])
    with pytest.raises(LayerSetupError, match="cannot read the infogain matrix"):
        make_layer('type: "InfogainLoss" infogain_loss_param { source: "%s" }'
                   % (tmp_path / "missing.binaryproto"), [(2, 3), (2,)])
    with pytest.raises(LayerSetupError, match="H must be 3x3.*bottom 2 has shape 2 2"):
        make_layer('type: "InfogainLoss"', [(2, 3), (2,), (2, 2)])
    with pytest.raises(LayerSetupError, match="normalize is deprecated"):
        make_layer('type: "InfogainLoss" loss_param { normalize: true }', [(2, 3), (2,), (3, 3)])
    with pytest.raises(LayerSetupError, match="Number of labels must match"):
        make_layer('type: "InfogainLoss"', [(2, 3, 2), (2,), (3, 3)])
    layer = make_layer('type: "InfogainLoss"', [(2, 3), (2,), (3, 3)])
    bottoms = [np.zeros((2, 3), np.float32), np.zeros(2, np.float32), np.eye(3, dtype=np.float32)]
    with pytest.raises(BackwardError, match="cannot backpropagate to infogain inputs"):
        run(layer, bottoms, propagate_down=[True, False, True])
    with pytest.raises(BackwardError, match="cannot backpropagate to label inputs"):
        run(layer, bottoms, propagate_down=[True, True, False])


# -- MultinomialLogisticLoss -----------------------------------------------------------

def test_multinomial_logistic_loss_matches_caffe(x64, rng):
    p = rng.uniform(0.01, 1, (4, 5))
    p[1, 3] = 1e-30                     # below kLOG_THRESHOLD: clamped, in forward and backward
    label = np.array([0.0, 3.0, 4.0, 1.0])
    layer = make_layer('type: "MultinomialLogisticLoss"', [p.shape, (4, 1, 1, 1)])
    (loss,), (dx, _) = run(layer, [p, label.reshape(4, 1, 1, 1)], loss_weight=3.0)
    probs = np.maximum(p[np.arange(4), label.astype(int)], LOG_THRESHOLD)
    np.testing.assert_allclose(loss, -np.log(probs).sum() / 4, rtol=1e-12)
    ref = np.zeros_like(p)
    ref[np.arange(4), label.astype(int)] = -3.0 / 4 / probs
    np.testing.assert_allclose(dx, ref, rtol=1e-12)
    assert dx[1, 3] == pytest.approx(-3.0 / 4 / LOG_THRESHOLD)


def test_multinomial_logistic_loss_checks(rng):
    make_layer('type: "MultinomialLogisticLoss"', [(2, 3), (2,)])
    with pytest.raises(LayerSetupError, match="channels, height and width 1.*got shape 2 2"):
        make_layer('type: "MultinomialLogisticLoss"', [(2, 3), (2, 2)])
    layer = make_layer('type: "MultinomialLogisticLoss"', [(2, 3), (2,)])
    with pytest.raises(BackwardError, match="cannot backpropagate to label inputs"):
        run(layer, [np.ones((2, 3), np.float32), np.zeros(2, np.float32)], propagate_down=[True, True])


# -- ContrastiveLoss -------------------------------------------------------------------

def contrastive_reference(a, b, y, margin, legacy):
    """Caffe's ContrastiveLossLayer::Forward_cpu / Backward_cpu (loss weight 1)."""
    num = a.shape[0]
    diff = (a - b).reshape(num, -1)
    loss = 0.0
    ga = np.zeros_like(diff)
    for i in range(num):
        dist_sq = diff[i] @ diff[i]
        if int(y[i]):
            loss += dist_sq
            ga[i] = diff[i] / num
        elif legacy:
            loss += max(margin - dist_sq, 0.0)
            if margin - dist_sq > 0:
                ga[i] = -diff[i] / num
        else:
            dist = np.sqrt(dist_sq)
            loss += max(margin - dist, 0.0) ** 2
            if margin - dist > 0:
                ga[i] = -(margin - dist) / (dist + 1e-4) * diff[i] / num
    return loss / num / 2, ga.reshape(a.shape)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_matches_caffe(x64, rng, legacy):
    a = rng.standard_normal((6, 3, 1, 1))
    b = rng.standard_normal((6, 3, 1, 1))
    y = np.array([1, 0, 0, 1, 0, 0.7]).reshape(6, 1, 1, 1)    # 0.7 -> int 0: dissimilar
    margin = 5.0 if legacy else 2.0
    snippet = ('type: "ContrastiveLoss" contrastive_loss_param { margin: %g legacy_version: %s }'
               % (margin, str(legacy).lower()))
    layer = make_layer(snippet, [a.shape, b.shape, y.shape])
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]
    (loss,), (da, db, dy) = run(layer, [a, b, y], loss_weight=1.5,
                                propagate_down=[True, True, True])
    ref, grad = contrastive_reference(a, b, y.ravel(), margin, legacy)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(da, 1.5 * grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(db, -1.5 * grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(dy, 0)


def test_contrastive_loss_default_margin_and_checks():
    layer = make_layer('type: "ContrastiveLoss"', [(2, 3), (2, 3), (2,)])
    assert layer.p.margin == 1.0 and not layer.p.legacy_version
    with pytest.raises(LayerSetupError, match="exactly 3 bottom"):
        make_layer('type: "ContrastiveLoss"', [(2, 3), (2, 3)])
    with pytest.raises(LayerSetupError, match="same channels"):
        make_layer('type: "ContrastiveLoss"', [(2, 3), (2, 4), (2,)])
    with pytest.raises(LayerSetupError, match="bottom 0 must be \\(N, C\\) or \\(N, C, 1, 1\\)"):
        make_layer('type: "ContrastiveLoss"', [(2, 3, 2, 1), (2, 3, 2, 1), (2,)])
    with pytest.raises(LayerSetupError, match="one value per pair"):
        make_layer('type: "ContrastiveLoss"', [(2, 3), (2, 3), (3,)])


# -- in a net ----------------------------------------------------------------------------

NET = """
name: "losses"
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "y" top: "t" top: "H" top: "sim"
  input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } shape { dim: 4 dim: 3 }
                shape { dim: 3 dim: 3 } shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "s"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "x" top: "s2"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "s" top: "p" }
layer { name: "hinge" type: "HingeLoss" bottom: "s" bottom: "y" top: "l_hinge"
  hinge_loss_param { norm: L2 } loss_weight: 0.5 }
layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "s" bottom: "t" top: "l_sce" }
layer { name: "info" type: "InfogainLoss" bottom: "s" bottom: "y" bottom: "H" top: "l_info" }
layer { name: "mlog" type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "l_mlog" }
layer { name: "con" type: "ContrastiveLoss" bottom: "s" bottom: "s2" bottom: "sim" top: "l_con"
  contrastive_loss_param { margin: 2 legacy_version: true } }
"""


def _fill(net, rng):
    net.blobs["x"].data[...] = rng.standard_normal((4, 6))
    net.blobs["y"].data[...] = [0, 2, 1, 2]
    net.blobs["t"].data[...] = rng.uniform(0, 1, (4, 3))
    net.blobs["H"].data[...] = np.eye(3) + 0.1
    net.blobs["sim"].data[...] = [1, 0, 1, 0]


def test_losses_in_a_net_train_and_keep_labels_out(tmp_path, rng):
    net = make_net(tmp_path, NET)
    for name in ("hinge", "sce", "info", "mlog", "con"):
        assert net.layer_dict[name].loss[0] == (0.5 if name == "hinge" else 1.0)
    # force_backward reaches predictions, never labels / H / the similarity bottom
    assert net.bottom_need_backward["info"] == [True, False, False]
    assert net.bottom_need_backward["con"] == [True, True, False]
    _fill(net, rng)
    out = net.forward()
    assert set(out) == {"l_hinge", "l_sce", "l_info", "l_mlog", "l_con"}
    assert all(np.isfinite(v) for v in out.values())
    net.backward()
    for blob in ("y", "H", "sim"):
        assert not np.any(net.blobs[blob].diff), blob
    w = net.params["ip"][0]
    assert np.any(w.diff) and np.all(np.isfinite(w.diff))
    # a few SGD steps lower the total loss
    total0 = sum(float(v) for v in out.values())
    for _ in range(20):
        net.clear_param_diffs()
        net.forward()
        net.backward()
        for layer in ("ip", "ip2"):
            for p in net.params[layer]:
                p.data[...] -= 0.05 * p.diff
    total1 = sum(float(v) for v in net.forward().values())
    assert total1 < total0


def test_losses_net_gradient_check(tmp_path, rng):
    from gradcheck import check_net
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    inputs = {"y": np.array([0.0, 2, 1, 2]), "t": rng.uniform(0, 1, (4, 3)),
              "H": np.eye(3) + 0.1, "sim": np.array([1.0, 0, 1, 0])}
    report = check_net(str(path), inputs=inputs, samples=6)
    assert report.ok, str(report)
