"""net.to_jax(): the net as a pure JAX function; jax.grad of it equals the Net's
explicit (hand-written) backward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcaffe
from jcaffe.jax_export import ExportError
from netutil import make_net

NET = """
name: "tj"
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "t"
  input_param { shape { dim: 4 dim: 3 dim: 5 dim: 5 } shape { dim: 4 dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "pool" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "p" top: "h"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                        bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "tanh" type: "TanH" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "o"
  param { name: "shared_w" } param { lr_mult: 2 }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip3" type: "InnerProduct" bottom: "o" top: "o2"
  param { name: "shared_w" } param { lr_mult: 2 }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "o2" bottom: "t" top: "loss" loss_weight: 0.5 }
"""


def _fill(net, seed=0):
    r = np.random.default_rng(seed)
    net.blobs["x"].data[...] = r.normal(size=net.blobs["x"].shape)
    net.blobs["t"].data[...] = r.normal(size=net.blobs["t"].shape)


def test_grad_equals_explicit_backward(tmp_path):
    net = make_net(tmp_path, NET)
    _fill(net)
    f = net.to_jax()
    assert f.input_names == ["x", "t"] and f.output_names == ["loss"]
    assert sorted(f.params) == ["conv", "ip1", "ip2", "ip3"]
    params, inputs = f.params, f.inputs_from_net()
    out = net.forward()
    np.testing.assert_allclose(f(params, inputs)["loss"], out["loss"], rtol=1e-5)
    np.testing.assert_allclose(f.loss(params, inputs), 0.5 * out["loss"].sum(), rtol=1e-5)
    net.clear_param_diffs()
    net.backward()
    gp, gx = jax.grad(f.loss, argnums=(0, 1))(params, inputs)
    for name in ("conv", "ip1", "ip2"):
        for k, blob in enumerate(net.params[name]):
            np.testing.assert_allclose(gp[name][k], blob.diff, rtol=2e-4, atol=1e-5,
                                       err_msg="%s/%d" % (name, k))
    # ip3's weight is ip2's (shared by name): one entry, both uses' gradients summed.
    assert sorted(gp["ip3"]) == [1] and sorted(gp["ip2"]) == [0, 1]
    np.testing.assert_allclose(gp["ip3"][1], net.params["ip3"][1].diff, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(gx["x"], net.blobs["x"].diff, rtol=2e-4, atol=1e-5)


def test_jit_and_vmap(tmp_path):
    net = make_net(tmp_path, NET)
    _fill(net)
    f = net.to_jax()
    params, inputs = f.params, f.inputs_from_net()
    ref = f(params, inputs)["loss"]
    np.testing.assert_allclose(jax.jit(f)(params, inputs)["loss"], ref, rtol=1e-6)
    batched = {k: jnp.stack([v, 2 * v]) for k, v in inputs.items()}
    out = jax.vmap(f, in_axes=(None, 0))(params, batched)["loss"]
    assert out.shape[0] == 2
    np.testing.assert_allclose(out[0], ref, rtol=1e-5)
    # A different batch size: the layers' shape logic runs at trace time.
    small = {"x": inputs["x"][:2], "t": inputs["t"][:2]}
    assert np.isfinite(f.loss(params, small))


def test_layer_range(tmp_path):
    net = make_net(tmp_path, NET)
    _fill(net)
    net.forward()
    f = net.to_jax(start="ip1", end="tanh")
    assert f.input_names == ["p"] and f.output_names == ["h"] and list(f.params) == ["ip1"]
    h = f(f.params, f.inputs_from_net())["h"]
    np.testing.assert_allclose(h, net.blobs["h"].data, rtol=1e-5)
    with pytest.raises(ExportError, match="no loss top"):
        f.loss(f.params, f.inputs_from_net())
    with pytest.raises(ExportError, match="inputs lack"):
        f(f.params, {})


def test_python_layers(tmp_path):
    text = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "py" type: "Python" bottom: "x" top: "y" python_param { module: "pylayers" layer: "%s" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "x" top: "loss" }
"""
    net = jcaffe.Net(str(_write(tmp_path, "a.prototxt", text % "JaxScaledTanh")), jcaffe.TRAIN)
    net.blobs["x"].data[...] = np.random.default_rng(1).normal(size=(2, 3))
    f = net.to_jax()
    net.forward()
    net.clear_param_diffs()
    net.backward()
    g = jax.grad(f.loss)(f.params, f.inputs_from_net())
    np.testing.assert_allclose(g["py"][0], net.params["py"][0].diff, rtol=1e-5)
    net2 = jcaffe.Net(str(_write(tmp_path, "b.prototxt", text % "Identity")), jcaffe.TRAIN)
    with pytest.raises(ExportError, match="'py' .*jax_forward"):
        net2.to_jax()


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


LSTM_NET = """
layer { name: "in" type: "Input" top: "x" top: "cont" top: "y"
  input_param { shape { dim: 3 dim: 2 dim: 2 } shape { dim: 3 dim: 2 }
                shape { dim: 3 dim: 2 dim: 3 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
                    bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "y" top: "loss" }
"""


def test_recurrent_state_in_and_out_as_the_net_carries_it(tmp_path):
    """f.carry threads the state from chunk to chunk as the Net's forwards carry it;
    f(..., state=) and jax.grad(f.loss)(..., state=) start from the Net's state
    (state_from_net) and give the Net's forward and backward; no state: zeros."""
    net = make_net(tmp_path, LSTM_NET, dtype=np.float64)
    r = np.random.default_rng(0)
    chunks = [{"x": r.normal(size=(3, 2, 2)), "cont": np.ones((3, 2)),
               "y": r.normal(size=(3, 2, 3))} for _ in range(3)]
    with jax.enable_x64(True):
        f = net.to_jax()
        params = f.params
        assert f.state_from_net() == {"lstm": None}
        state = {}
        for k, chunk in enumerate(chunks[:2]):
            out, state = f.carry(params, chunk, state)
            np.testing.assert_allclose(out["loss"], net.forward(**chunk)["loss"], rtol=1e-12,
                                       err_msg="chunk %d" % k)
        for got, want in zip(state["lstm"], f.state_from_net()["lstm"]):
            np.testing.assert_allclose(got, want, rtol=1e-12)
        carried = f.state_from_net()
        out = net.forward(**chunks[2])["loss"]
        np.testing.assert_allclose(f(params, chunks[2], state=carried)["loss"], out,
                                   rtol=1e-12)
        assert not np.allclose(f(params, chunks[2])["loss"], out)      # (from zero)
        net.clear_param_diffs()
        net.backward()
        grads = jax.grad(f.loss)(params, chunks[2], state=carried)
        for k, blob in enumerate(net.params["lstm"]):
            np.testing.assert_allclose(grads["lstm"][k], blob.diff, rtol=1e-9, atol=1e-12)
