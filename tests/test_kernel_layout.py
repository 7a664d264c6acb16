"""A TEST net's forward hands a convolution on XLA's CPU kernel its weight in the
kernel's layout (engine.KernelLayout), laid out once while the weight is unchanged:
the results must be those of the weight in Caffe's order, and a weight the user
changes must be laid out again."""
import jax
import numpy as np
import pytest

import jcaffe
from jcaffe import engine
from jcaffe.layers.vision import Convolution

from netutil import make_net

NET = """
name: "kernel_layout"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 8 dim: 40 dim: 40 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param {
  num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.2 }
  bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" convolution_param {
  num_output: 96 kernel_size: 5 pad: 4 dilation: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pw" type: "Convolution" bottom: "conv2" top: "pw" convolution_param {
  num_output: 128 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
"""

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU rule")


def _net(tmp_path, phase=jcaffe.TEST):
    """The net in float64, its input filled."""
    jcaffe.set_random_seed(1)
    (tmp_path / "a").mkdir()
    net = make_net(tmp_path / "a", NET, phase, dtype=np.float64)
    net.blobs["data"].data[...] = np.random.default_rng(2).standard_normal(
        net.blobs["data"].shape)
    return net


def _plain(net, tmp_path):
    """Another net with ``net``'s weights and input (read before ``net``'s forward: a
    read of a param's data is a write, as in pycaffe)."""
    (tmp_path / "b").mkdir()
    plain = make_net(tmp_path / "b", NET, jcaffe.TEST, dtype=np.float64)
    for name, blobs in net.params.items():
        for p, q in zip(plain.params[name], blobs):
            p.data[...] = q.data
    plain.blobs["data"].data[...] = net.blobs["data"].data
    return plain


def _plain_forward(plain, monkeypatch):
    """``plain``'s forward with Convolution.kernel_layout off: every weight in Caffe's
    order."""
    with monkeypatch.context() as m:
        m.setattr(Convolution, "kernel_layout", lambda self: None)
        return {k: v.copy() for k, v in plain.forward().items()}


def test_test_forward_takes_weights_in_the_kernels_layout_once(tmp_path, monkeypatch, x64):
    net = _net(tmp_path)
    plain = _plain(net, tmp_path)
    layers = {l.name: l for l in net.layers}
    assert layers["conv1"].kernel_layout() == layers["conv2"].kernel_layout() == (2, 3, 1, 0)
    assert layers["pw"].kernel_layout() is None     # (a 1x1 on GEMM: one dot, Caffe's order)
    made = []
    original = engine.kernel_layout_of
    monkeypatch.setattr(engine, "kernel_layout_of",
                        lambda value, perm: made.append(value.shape) or original(value, perm))
    out = {k: v.copy() for k, v in net.forward().items()}
    assert sorted(made) == [(16, 8, 3, 3), (96, 16, 5, 5)]
    np.testing.assert_allclose(out["pw"], _plain_forward(plain, monkeypatch)["pw"],
                               rtol=1e-12, atol=1e-12)
    net.forward()
    assert len(made) == 2                   # unchanged weights: laid out once
    for n in (net, plain):                  # a weight changed by the user
        w = n.params["conv2"][0]
        w.data[...] = -w.data
    out = {k: v.copy() for k, v in net.forward().items()}
    assert sorted(made) == [(16, 8, 3, 3), (96, 16, 5, 5), (96, 16, 5, 5)]
    np.testing.assert_allclose(out["pw"], _plain_forward(plain, monkeypatch)["pw"],
                               rtol=1e-12, atol=1e-12)
    assert not np.allclose(out["pw"], 0)


def test_train_forward_keeps_caffes_order(tmp_path, monkeypatch, x64):
    """A TRAIN net's params change at every step: its forward takes them as they are."""
    net = _net(tmp_path, jcaffe.TRAIN)
    made = []
    monkeypatch.setattr(engine, "kernel_layout_of", lambda *a: made.append(a))
    net.forward()
    assert made == []
