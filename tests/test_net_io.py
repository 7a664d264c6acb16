"""Weights in and out: .caffemodel round trip, copy_from checks, V1 nets, pycaffe
constructor forms, and the bad-input errors a user meets first."""
import numpy as np
import pytest

import jcaffe
from jcaffe import protoio
from jcaffe.errors import (LayerSetupError, NetGraphError, PrototxtError, PythonLayerError,
                           ShapeMismatchError, UnknownLayerTypeError)
from netutil import make_net, write_prototxt

LENET = """
name: "LeNet"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 1 dim: 28 dim: 28 } shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 50 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

LENET_V1 = """
name: "LeNetV1"
input: "data"
input_dim: 4 input_dim: 1 input_dim: 28 input_dim: 28
input: "label"
input_dim: 4 input_dim: 1 input_dim: 1 input_dim: 1
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip2" type: INNER_PRODUCT bottom: "pool1" top: "ip2" blobs_lr: 1 blobs_lr: 2
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layers { name: "relu" type: RELU bottom: "ip2" top: "ip2" }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip2" bottom: "label" top: "loss" }
"""


def _fill_inputs(net, seed=0):
    r = np.random.default_rng(seed)
    net.blobs["data"].data[...] = r.random(net.blobs["data"].shape)
    net.blobs["label"].data[...] = r.integers(0, 10, net.blobs["label"].shape)


def test_caffemodel_round_trip_gives_identical_params_and_outputs(tmp_path):
    net = make_net(tmp_path, LENET)
    _fill_inputs(net)
    loss = net.forward()["loss"].copy()
    path = tmp_path / "lenet.caffemodel"
    net.save(str(path))
    jcaffe.set_random_seed(123)  # different initial weights in the new net
    other = jcaffe.Net(str(tmp_path / "net.prototxt"), jcaffe.TEST, weights=str(path))
    for name, blobs in net.params.items():
        for a, b in zip(blobs, other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    _fill_inputs(other)
    np.testing.assert_allclose(other.forward()["loss"], loss, rtol=1e-6)
    # The saved file is a NetParameter Caffe can read: layer names and blob shapes.
    saved = protoio.read_binary(str(path), jcaffe.caffe_pb2.NetParameter)
    conv1 = [l for l in saved.layer if l.name == "conv1"][0]
    assert list(conv1.blobs[0].shape.dim) == [20, 1, 5, 5]
    # Old constructor form: Net(prototxt, weights, phase).
    old = jcaffe.Net(str(tmp_path / "net.prototxt"), str(path), jcaffe.TEST)
    np.testing.assert_array_equal(old.params["ip2"][0].data, net.params["ip2"][0].data)


def test_copy_from_shape_mismatch_names_layer_and_shapes(tmp_path):
    net = make_net(tmp_path, LENET)
    path = tmp_path / "lenet.caffemodel"
    net.save(str(path))
    smaller = LENET.replace("num_output: 500", "num_output: 400")
    with pytest.raises(ShapeMismatchError) as e:
        jcaffe.Net(write_prototxt(tmp_path, smaller, "small.prototxt"), jcaffe.TEST, weights=str(path))
    msg = str(e.value)
    assert "Cannot copy param 0 weights from layer 'ip1'" in msg
    assert "500 800 (400000)" in msg and "400 800 (320000)" in msg


def test_v1_prototxt_upgrades_and_runs(tmp_path):
    net = make_net(tmp_path, LENET_V1)
    assert [l.type for l in net.layers] == ["Input", "Convolution", "Pooling", "InnerProduct",
                                           "ReLU", "SoftmaxWithLoss"]
    assert net.inputs == ["data", "label"]
    assert net.blobs["label"].shape == (4, 1, 1, 1)
    assert net.params_lr[:2] == [1.0, 2.0]
    _fill_inputs(net)
    out = net.forward()
    assert np.isfinite(out["loss"])
    net.backward()
    assert np.abs(net.params["conv1"][0].diff).sum() > 0


def test_forward_with_input_kwargs_and_end(tmp_path):
    net = make_net(tmp_path, LENET, phase=jcaffe.TEST)
    data = np.random.default_rng(1).random((4, 1, 28, 28)).astype(np.float32)
    out = net.forward(end="pool1", data=data, label=np.zeros(4, np.float32))
    assert set(out) == {"pool1"} and out["pool1"].shape == (4, 20, 12, 12)
    with pytest.raises(NetGraphError, match="do not match net inputs"):
        net.forward(data=data)
    with pytest.raises(NetGraphError, match="no layer named 'nope'"):
        net.forward(start="nope")


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(UnknownLayerTypeError, match=r"Unknown layer type: 'Convolutoin' \(layer 'c'\)"):
        make_net(tmp_path, """
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
            layer { name: "c" type: "Convolutoin" bottom: "x" top: "y" }""")
    with pytest.raises(LayerSetupError, match=r"ReLU layer 'r' takes exactly 1 bottom blob, got 2"):
        make_net(tmp_path, """
            layer { name: "in" type: "Input" top: "x" top: "z" input_param { shape { dim: 2 } } }
            layer { name: "r" type: "ReLU" bottom: "x" bottom: "z" top: "y" }""")
    path = write_prototxt(tmp_path, 'layer { name: "in" type: "Input" top: "x"\n  input_param { shape { dim: 2 } }\n  bogus: 1 }')
    with pytest.raises(PrototxtError) as e:
        jcaffe.Net(path, jcaffe.TEST)
    assert "net.prototxt:3:3" in str(e.value) and "bogus" in str(e.value)
    with pytest.raises(PythonLayerError, match=r"cannot import module 'no_such_module'"):
        make_net(tmp_path, """
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
            layer { name: "py" type: "Python" bottom: "x" top: "y"
              python_param { module: "no_such_module" layer: "X" } }""")
    with pytest.raises(PythonLayerError, match=r"module 'pylayers' .* has no class 'Nope'"):
        make_net(tmp_path, """
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
            layer { name: "py" type: "Python" bottom: "x" top: "y"
              python_param { module: "pylayers" layer: "Nope" } }""")


def test_python_layer_exception_keeps_type_and_names_layer(tmp_path):
    net = make_net(tmp_path, """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
        layer { name: "boom" type: "Python" bottom: "x" top: "y"
          python_param { module: "pylayers" layer: "Failing" } }""")
    with pytest.raises(ZeroDivisionError) as e:
        net.forward()
    assert any("Python layer 'boom'" in n for n in e.value.__notes__)


def test_missing_backward_is_reported_with_the_reason(tmp_path):
    from jcaffe.errors import BackwardError
    net = make_net(tmp_path, """
        force_backward: true
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
        layer { name: "nb" type: "Python" bottom: "x" top: "y"
          python_param { module: "pylayers" layer: "NoBackward" } }""")
    net.forward()
    with pytest.raises(BackwardError, match=r"Python layer 'nb' \(pylayers.NoBackward\) has no backward"):
        net.backward()
