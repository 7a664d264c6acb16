"""The questions Caffe users keep asking, answered by tests.

1. Why is my Python layer's backward never called?
2. Why are my diffs zero after net.backward(start=..., end=...)?
3. Why does propagate_down not stop my conv layer from updating?
4. Why does my LSTM net give other outputs for the same input?
"""
import numpy as np

from netutil import LogLines, make_net
from pylayers import Identity

SIGN_NET = """
name: "sign"
{force}
layer {{ name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param {{ shape {{ dim: 4 dim: 3 }} data_filler {{ type: "gaussian" std: 1 }} }} }}
layer {{ name: "ident" type: "Python" bottom: "data" top: "ident"
  python_param {{ module: "pylayers" layer: "Identity" }} }}
layer {{ name: "tanh" type: "TanH" bottom: "ident" top: "tanh" }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "tanh" bottom: "label" top: "loss" }}
"""


def test_python_layer_backward_is_skipped_without_learnable_params(tmp_path):
    Identity.backward_calls = 0
    with LogLines() as log:
        net = make_net(tmp_path, SIGN_NET.format(force=""))
    net.forward()
    net.backward()
    assert Identity.backward_calls == 0
    assert "ident does not need backward computation." in log.lines
    # Caffe's reasoning: nothing below any layer is learnable, so no layer needs backward.
    assert log.matching("needs backward computation.") == []
    assert net.layer_need_backward["ident"] is False
    assert "no learnable params" in net.backward_reason("ident")


def test_force_backward_calls_the_python_layer_and_says_so(tmp_path):
    Identity.backward_calls = 0
    with LogLines() as log:
        net = make_net(tmp_path, SIGN_NET.format(force="force_backward: true"))
    # Caffe's own lines are unchanged (printed before force_backward applies) ...
    assert "ident does not need backward computation." in log.lines
    # ... followed by one line per layer force_backward switched on.
    assert "ident needs backward computation after all: force_backward is true." in log.lines
    out = net.forward()
    net.backward()
    assert Identity.backward_calls == 1
    assert "force_backward" in net.backward_reason("ident")
    # The diff reached the data blob through TanH and the Python layer.
    data, label = net.blobs["data"].data, net.blobs["label"].data
    tanh = np.tanh(data)
    expected = (tanh - label) / data.shape[0] * (1 - tanh ** 2)
    np.testing.assert_allclose(net.blobs["data"].diff, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["loss"], np.sum((tanh - label) ** 2) / 4 / 2, rtol=1e-5)
    # force_backward never pushes a diff into a label: EuclideanLoss allows it (Caffe's
    # override), so the label diff is written, with the opposite sign.
    np.testing.assert_allclose(net.blobs["label"].diff, -(tanh - label) / 4, rtol=1e-5, atol=1e-6)


SPLIT_NET = """
name: "split"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 }
                     data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip2a" type: "InnerProduct" bottom: "ip1" top: "ip2a"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip2b" type: "InnerProduct" bottom: "ip1" top: "ip2b"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "cat" type: "Concat" bottom: "ip2a" bottom: "ip2b" top: "cat" }
layer { name: "loss" type: "EuclideanLoss" bottom: "cat" bottom: "label" top: "loss" }
"""


def test_backward_range_stops_at_the_auto_inserted_split(tmp_path):
    net = make_net(tmp_path, SPLIT_NET)
    assert list(net.layer_dict)[:4] == ["data", "ip1", "ip1_ip1_0_split", "ip2a"]
    assert net.bottom_names["ip2a"] == ["ip1_ip1_0_split_0"]
    assert net.bottom_names["ip2b"] == ["ip1_ip1_0_split_1"]
    net.forward()
    diffs = net.backward(start="loss", end="ip2a")
    # ip2a's bottom is the split's top, not 'ip1': that is where the diff went.
    assert set(diffs) == {"ip1_ip1_0_split_0"}
    assert np.abs(net.blobs["ip1_ip1_0_split_0"].diff).sum() > 0
    assert np.abs(net.blobs["ip1_ip1_0_split_1"].diff).sum() > 0
    assert np.all(net.blobs["ip1"].diff == 0), "the split layer has not run yet"
    # Running the split layer sums both paths into 'ip1'.
    net.backward(start="ip1_ip1_0_split", end="ip1_ip1_0_split")
    np.testing.assert_allclose(net.blobs["ip1"].diff,
                               net.blobs["ip1_ip1_0_split_0"].diff + net.blobs["ip1_ip1_0_split_1"].diff,
                               rtol=1e-6)


TWO_PATH_NET = """
name: "two_path"
layer {{ name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param {{ shape {{ dim: 2 dim: 3 dim: 6 dim: 6 }} shape {{ dim: 2 dim: 5 }}
                     data_filler {{ type: "gaussian" std: 1 }} }} }}
layer {{ name: "conv0" type: "Convolution" bottom: "data" top: "conv0" {conv0_params}
  convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "conv_a" type: "Convolution" bottom: "conv0" top: "conv_a" propagate_down: false
  convolution_param {{ num_output: 2 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "conv_b" type: "Convolution" bottom: "conv0" top: "conv_b"
  convolution_param {{ num_output: 2 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "cat" type: "Concat" bottom: "conv_a" bottom: "conv_b" top: "cat" }}
layer {{ name: "ip" type: "InnerProduct" bottom: "cat" top: "ip"
  inner_product_param {{ num_output: 5 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


def test_propagate_down_false_still_updates_that_layers_weights(tmp_path):
    net = make_net(tmp_path, TWO_PATH_NET.format(conv0_params=""))
    assert net.layer_need_backward["conv_a"] is True        # its weights learn
    assert net.bottom_need_backward["conv_a"] == [False]    # but nothing flows below it
    assert net.bottom_reasons[("conv_a", 0)] == "propagate_down: false"
    net.forward()
    net.backward()
    assert np.abs(net.params["conv_a"][0].diff).sum() > 0
    assert np.abs(net.params["conv_a"][1].diff).sum() > 0
    split_a, split_b = net.bottom_names["conv_a"][0], net.bottom_names["conv_b"][0]
    assert np.all(net.blobs[split_a].diff == 0)             # conv_a sent nothing down
    assert np.abs(net.blobs[split_b].diff).sum() > 0
    np.testing.assert_allclose(net.blobs["conv0"].diff, net.blobs[split_b].diff, rtol=1e-6)
    assert np.abs(net.params["conv0"][0].diff).sum() > 0


def test_lr_mult_zero_removes_backward(tmp_path):
    frozen = "param { lr_mult: 0 } param { lr_mult: 0 }"
    with LogLines() as log:
        net = make_net(tmp_path, TWO_PATH_NET.format(conv0_params=frozen))
    assert "conv0 does not need backward computation." in log.lines
    assert net.layer_need_backward["conv0"] is False
    # conv_a's propagate_down: false now only matters for the log; conv_b has nothing to feed.
    assert net.bottom_need_backward["conv_b"] == [False]
    net.forward()
    net.backward()
    assert np.all(net.params["conv0"][0].diff == 0)
    assert np.all(net.blobs["conv0"].diff == 0)
    assert np.abs(net.params["conv_b"][0].diff).sum() > 0


def test_param_diffs_accumulate_until_cleared(tmp_path):
    net = make_net(tmp_path, SPLIT_NET)
    net.forward()
    net.backward()
    once = net.params["ip1"][0].diff.copy()
    net.backward()
    np.testing.assert_allclose(net.params["ip1"][0].diff, 2 * once, rtol=1e-6)
    net.clear_param_diffs()
    assert np.all(net.params["ip1"][0].diff == 0)


LSTM_NET = """
layer { name: "in" type: "Input" top: "x" top: "cont"
  input_param { shape { dim: 3 dim: 2 dim: 1 } shape { dim: 3 dim: 2 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
"""


def test_lstm_continues_its_streams_from_the_last_forward(tmp_path):
    """As Caffe's, a recurrent layer starts each forward from the last one's h_T/c_T
    wherever cont is 1 at t = 0 (a stream going on across batches): the same input
    gives other outputs. cont 0 at t = 0 starts the streams afresh; reset() zeroes the
    carried state (Caffe's RecurrentLayer::Reset)."""
    net = make_net(tmp_path, LSTM_NET)
    x, cont = np.ones((3, 2, 1)), np.ones((3, 2))
    first = net.forward(x=x, cont=cont)["h"].copy()
    assert not np.allclose(net.forward(x=x, cont=cont)["h"], first)
    net.layer_dict["lstm"].reset()
    np.testing.assert_allclose(net.forward(x=x, cont=cont)["h"], first, rtol=1e-6)
    cont[0] = 0
    fresh = net.forward(x=x, cont=cont)["h"].copy()
    np.testing.assert_allclose(net.forward(x=x, cont=cont)["h"], fresh, rtol=1e-6)
    np.testing.assert_allclose(fresh, first, rtol=1e-6)
