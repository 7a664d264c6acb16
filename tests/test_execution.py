"""Execution: one compiled call per run of built-in layers, host Python layers between
them, no retracing in steady state, hooks, and float64 nets."""
import jax
import numpy as np
import pytest

import jcaffe
from netutil import calls_of, make_net

MIXED = """
name: "mixed"
layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "tanh1" type: "TanH" bottom: "h" top: "h" }
layer { name: "py" type: "Python" bottom: "h" top: "p" python_param { module: "pylayers" layer: "Identity" } }
layer { name: "ip2" type: "InnerProduct" bottom: "p" top: "o"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "sig" type: "Sigmoid" bottom: "o" top: "o" }
layer { name: "loss" type: "EuclideanLoss" bottom: "o" bottom: "t" top: "loss" }
"""


def test_runs_of_builtin_layers_are_single_compiled_segments(tmp_path):
    net = make_net(tmp_path, MIXED)
    runs = net._runs(0, len(net.layers) - 1)
    assert [[s.layer.name for s in r] for r in runs] == [
        ["in", "ip1", "tanh1"], ["py"], ["ip2", "sig", "loss"]]
    r = np.random.default_rng(0)
    for _ in range(5):
        net.forward(x=r.standard_normal((4, 3)), t=r.standard_normal((4, 3)))
        net.backward()
    compiled = [seg for seg in net._segments.values()]
    assert len(compiled) == 2
    for seg in compiled:
        assert seg._forward_jit._cache_size() == 1, "no retracing with unchanged shapes"
        assert seg._backward_jit["fn"]._cache_size() == 1


def test_a_forward_reshapes_compiled_runs_again_only_after_a_shape_changed(tmp_path, monkeypatch):
    """Caffe reshapes every layer before each forward. The layers of a compiled run are
    reshaped again only after some blob's shape changed (here the input's batch, which
    then reaches the run behind the Python layer too); the Python layer's reshape is
    its own code and is called every time, as in Caffe."""
    from jcaffe.net import Net
    reshaped = calls_of(monkeypatch, Net, "_reshape_slot", lambda net, slot: slot.layer.name)
    net = make_net(tmp_path, MIXED)
    del reshaped[:]
    r = np.random.default_rng(0)
    for _ in range(3):
        net.forward(x=r.standard_normal((4, 3)), t=r.standard_normal((4, 3)))
    assert reshaped == ["in", "ip1", "tanh1", "ip2", "sig", "loss"]
    net.blobs["x"].reshape(2, 3)
    net.blobs["t"].reshape(2, 3)
    out = net.forward()
    assert reshaped[6:] == ["in", "ip1", "tanh1", "ip2", "sig", "loss"]
    assert net.blobs["o"].shape == (2, 3) and np.isfinite(out["loss"])


def test_mixed_net_gradient_matches_jax_grad(tmp_path, x64):
    net = make_net(tmp_path, MIXED, dtype=np.float64)
    r = np.random.default_rng(1)
    x, t = r.standard_normal((4, 3)), r.standard_normal((4, 3))
    net.forward(x=x, t=t)
    net.clear_param_diffs()
    net.backward()
    w1, b1 = (np.asarray(b.data) for b in net.params["ip1"])
    w2, b2 = (np.asarray(b.data) for b in net.params["ip2"])

    def loss(w1, b1, w2, b2):
        h = jax.numpy.tanh(x @ w1.T + b1)
        o = jax.nn.sigmoid(h @ w2.T + b2)
        return jax.numpy.sum((o - t) ** 2) / 4 / 2

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(w1, b1, w2, b2)
    for blob, g in zip(net.params["ip1"] + net.params["ip2"], grads):
        np.testing.assert_allclose(blob.diff, np.asarray(g), rtol=1e-10, atol=1e-12)
    assert net.blobs["x"].dtype == np.float64


def test_hooks_run_per_layer(tmp_path):
    net = make_net(tmp_path, MIXED)
    seen = []
    net.before_forward(lambda i: seen.append(("bf", i)))
    net.after_backward(lambda i: seen.append(("ab", i)))
    net.forward()
    net.backward()
    n = len(net.layers)
    assert [i for k, i in seen if k == "bf"] == list(range(n))
    assert [i for k, i in seen if k == "ab"] == list(reversed(range(n)))


def test_forward_and_backward_ranges(tmp_path):
    net = make_net(tmp_path, MIXED)
    net.forward(x=np.ones((4, 3)), t=np.zeros((4, 3)))
    full = net.blobs["o"].data.copy()
    net.blobs["p"].data[...] = 0.0
    out = net.forward(start="ip2", end="sig")
    assert set(out) == {"o"}
    assert not np.allclose(out["o"], full)
    net.forward(start="py")
    np.testing.assert_allclose(net.blobs["o"].data, full, rtol=1e-6)
    diffs = net.backward(start="loss", end="ip2")
    assert set(diffs) == {"p"} and np.abs(diffs["p"]).sum() > 0


def test_backward_before_forward_is_a_clear_error(tmp_path):
    net = make_net(tmp_path, MIXED)
    with pytest.raises(jcaffe.errors.BackwardError, match="call net.forward\\(\\) before net.backward\\(\\)"):
        net.backward()
