"""Net::Init semantics: split insertion and names, need-backward log lines (as text),
phase/stage/level filtering, outputs, loss weights, param sharing."""
import numpy as np
import pytest

import jcaffe
from jcaffe.errors import NetGraphError, ShapeMismatchError
from netutil import LogLines, make_net

INCEPTION = """
name: "inception"
layer { name: "input" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 8 dim: 6 dim: 6 } shape { dim: 2 } } }
layer { name: "conv1x1" type: "Convolution" bottom: "data" top: "conv1x1"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1x1" type: "ReLU" bottom: "conv1x1" top: "conv1x1" }
layer { name: "reduce3x3" type: "Convolution" bottom: "data" top: "reduce3x3"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "relu_reduce3x3" type: "ReLU" bottom: "reduce3x3" top: "reduce3x3" }
layer { name: "conv3x3" type: "Convolution" bottom: "reduce3x3" top: "conv3x3"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu3x3" type: "ReLU" bottom: "conv3x3" top: "conv3x3" }
layer { name: "reduce5x5" type: "Convolution" bottom: "data" top: "reduce5x5"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "relu_reduce5x5" type: "ReLU" bottom: "reduce5x5" top: "reduce5x5" }
layer { name: "conv5x5" type: "Convolution" bottom: "reduce5x5" top: "conv5x5"
  convolution_param { num_output: 2 kernel_size: 5 pad: 2 weight_filler { type: "xavier" } } }
layer { name: "relu5x5" type: "ReLU" bottom: "conv5x5" top: "conv5x5" }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
  pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "pool_proj" type: "Convolution" bottom: "pool" top: "pool_proj"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "relu_pool_proj" type: "ReLU" bottom: "pool_proj" top: "pool_proj" }
layer { name: "output" type: "Concat" bottom: "conv1x1" bottom: "conv3x3" bottom: "conv5x5"
  bottom: "pool_proj" top: "output" }
layer { name: "fc" type: "InnerProduct" bottom: "output" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" }
"""

# Derived by hand from Caffe's Net::Init rules (reverse layer order).
EXPECTED_BACKWARD_LINES = """\
acc does not need backward computation.
loss needs backward computation.
fc_fc_0_split needs backward computation.
fc needs backward computation.
output needs backward computation.
relu_pool_proj needs backward computation.
pool_proj needs backward computation.
pool does not need backward computation.
relu5x5 needs backward computation.
conv5x5 needs backward computation.
relu_reduce5x5 needs backward computation.
reduce5x5 needs backward computation.
relu3x3 needs backward computation.
conv3x3 needs backward computation.
relu_reduce3x3 needs backward computation.
reduce3x3 needs backward computation.
relu1x1 needs backward computation.
conv1x1 needs backward computation.
label_input_1_split does not need backward computation.
data_input_0_split does not need backward computation.
input does not need backward computation."""

EXPECTED_SPLIT_LINES = """\
Creating Layer data_input_0_split
data_input_0_split <- data
data_input_0_split -> data_input_0_split_0
data_input_0_split -> data_input_0_split_1
data_input_0_split -> data_input_0_split_2
data_input_0_split -> data_input_0_split_3
Setting up data_input_0_split
Top shape: 2 8 6 6 (576)
Top shape: 2 8 6 6 (576)
Top shape: 2 8 6 6 (576)
Top shape: 2 8 6 6 (576)
Memory required for data: 11528
Creating Layer label_input_1_split
label_input_1_split <- label
label_input_1_split -> label_input_1_split_0
label_input_1_split -> label_input_1_split_1"""


def test_inception_splits_and_backward_log_lines(tmp_path):
    with LogLines() as log:
        net = make_net(tmp_path, INCEPTION)
    assert list(net.layer_dict) == [
        "input", "data_input_0_split", "label_input_1_split", "conv1x1", "relu1x1", "reduce3x3",
        "relu_reduce3x3", "conv3x3", "relu3x3", "reduce5x5", "relu_reduce5x5", "conv5x5",
        "relu5x5", "pool", "pool_proj", "relu_pool_proj", "output", "fc", "fc_fc_0_split",
        "loss", "acc"]
    backward_lines = "\n".join(log.matching("need backward computation.", "needs backward computation."))
    assert backward_lines == EXPECTED_BACKWARD_LINES
    text = "\n".join(log.lines)
    assert EXPECTED_SPLIT_LINES in text
    assert "relu1x1 -> conv1x1 (in-place)" in log.lines
    assert log.lines[-3:] == ["This network produces output acc", "This network produces output loss",
                              "Network initialization done."]
    assert net.outputs == ["acc", "loss"]
    assert net.inputs == ["data", "label"]
    assert net.bottom_names["pool"] == ["data_input_0_split_3"]
    assert net.bottom_names["acc"] == ["fc_fc_0_split_1", "label_input_1_split_1"]
    assert net.blob_loss_weights["loss"] == 1.0 and net.blob_loss_weights["acc"] == 0.0
    # The net runs, and its diffs reach the convolutions.
    net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((2, 8, 6, 6))
    net.blobs["label"].data[...] = [0, 2]
    out = net.forward()
    assert out["loss"].shape == () and 0 <= out["acc"] <= 1
    net.backward()
    assert np.abs(net.params["conv1x1"][0].diff).sum() > 0
    assert np.all(net.blobs["data"].diff == 0)


def test_loss_weight_on_a_consumed_top_moves_to_the_split(tmp_path):
    net = make_net(tmp_path, """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" loss_weight: 0.5
          inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
        layer { name: "l2" type: "EuclideanLoss" bottom: "y" bottom: "x" top: "l2" }
    """)
    assert "y_ip_0_split" in net.layer_dict
    assert net.top_names["y_ip_0_split"] == ["y_ip_0_split_0", "y_ip_0_split_1"]
    assert net.layer_dict["y_ip_0_split"].loss == [0.5, 0.0]
    assert net.layer_dict["ip"].loss == [0.0]
    assert net.bottom_names["l2"] == ["y_ip_0_split_1", "x_in_0_split_1"]
    net.blobs["x"].data[...] = [[1, 2, 3], [4, 5, 6]]
    net.forward()
    y = net.blobs["y"].data
    l2 = np.sum((y - net.blobs["x"].data) ** 2) / 2 / 2
    loss = net._forward(0, len(net.layers) - 1)
    np.testing.assert_allclose(loss, 0.5 * y.sum() + l2, rtol=1e-5)


STAGED = """
name: "staged"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "train_only" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "TanH" bottom: "x" top: "a" include { phase: TEST } }
layer { name: "deploy" type: "Sigmoid" bottom: "a" top: "b" include { stage: "deploy" } }
layer { name: "not_deploy" type: "TanH" bottom: "a" top: "b" exclude { stage: "deploy" } }
layer { name: "lvl" type: "ReLU" bottom: "b" top: "c" include { min_level: 1 max_level: 2 } }
"""


@pytest.mark.parametrize("phase,stages,level,expected", [
    (jcaffe.TRAIN, None, 0, ["in", "train_only", "not_deploy"]),
    (jcaffe.TEST, None, 0, ["in", "test_only", "not_deploy"]),
    (jcaffe.TEST, ["deploy"], 0, ["in", "test_only", "deploy"]),
    (jcaffe.TEST, ["deploy"], 1, ["in", "test_only", "deploy", "lvl"]),
    (jcaffe.TRAIN, None, 3, ["in", "train_only", "not_deploy"]),
])
def test_phase_stage_level_filtering(tmp_path, phase, stages, level, expected):
    net = make_net(tmp_path, STAGED, phase=phase, stages=stages, level=level)
    assert list(net.layer_dict) == expected


def test_param_sharing_shares_data_and_accumulates_diffs(tmp_path):
    net = make_net(tmp_path, """
        force_backward: true
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "b" }
          inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
        layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" } param { name: "b" }
          inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "b" bottom: "x" top: "loss" }
    """)
    wa, wb = net.params["a"][0], net.params["b"][0]
    assert len(net.learnable_params) == 2
    wa.data[...] = 0.25
    assert np.all(wb.data == 0.25)
    net.blobs["x"].data[...] = np.arange(6).reshape(2, 3)
    net.forward()
    net.backward()
    assert np.all(wa.diff == wb.diff)
    # The shared diff is the sum of both uses: compare with a finite difference.
    x = net.blobs["x"].data.copy()

    def loss_for(w):
        h = x @ w.T
        o = h @ w.T
        return np.sum((o - x) ** 2) / 2 / 2

    w = wa.data.astype(np.float64)
    eps = 1e-3
    num = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        d = np.zeros_like(w)
        d[idx] = eps
        num[idx] = (loss_for(w + d) - loss_for(w - d)) / (2 * eps)
    np.testing.assert_allclose(wa.diff, num, rtol=2e-3, atol=1e-3)


def test_param_sharing_shape_mismatch_is_reported(tmp_path):
    with pytest.raises(ShapeMismatchError, match=r"Cannot share param 'w' owned by layer 'a' with layer 'b'"):
        make_net(tmp_path, """
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
            layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" }
              inner_product_param { num_output: 3 } }
            layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
              inner_product_param { num_output: 4 } }
        """)


def test_in_place_blob_holds_last_result_and_last_diff(tmp_path):
    net = make_net(tmp_path, """
        force_backward: true
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 } } }
        layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
        layer { name: "tanh" type: "TanH" bottom: "x" top: "x" }
    """)
    assert list(net.blobs) == ["x"]
    net.blobs["x"].data[...] = [-1.0, 0.5, 2.0, -3.0]
    net.forward()
    np.testing.assert_allclose(net.blobs["x"].data, np.tanh([0, 0.5, 2.0, 0]), rtol=1e-6)
    net.blobs["x"].diff[...] = 1.0
    net.backward()
    # Backward reads the blob as it is now (Caffe's in-place semantics): TanH uses its
    # top, ReLU the sign of the (overwritten) data.
    t = np.tanh([0, 0.5, 2.0, 0])
    np.testing.assert_allclose(net.blobs["x"].diff, (1 - t ** 2) * (t > 0), rtol=1e-6)


def test_reshape_when_input_changes(tmp_path):
    net = make_net(tmp_path, """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4 } }
    """)
    net.blobs["x"].reshape(5, 3)
    net.reshape()
    assert net.blobs["y"].shape == (5, 4)
    net.blobs["x"].reshape(7, 3)
    net.blobs["x"].data[...] = 1.0
    out = net.forward()
    assert out["y"].shape == (7, 4)


def test_duplicate_top_and_unknown_bottom_errors(tmp_path):
    with pytest.raises(NetGraphError, match=r"Unknown bottom blob 'nope' \(layer 'r', bottom index 0\)"):
        make_net(tmp_path, """
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
            layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }
        """)
    with pytest.raises(NetGraphError, match=r"Top blob 'y' produced by multiple sources"):
        make_net(tmp_path, """
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
            layer { name: "r" type: "ReLU" bottom: "x" top: "y" }
            layer { name: "t" type: "TanH" bottom: "x" top: "y" }
        """)


def test_in_place_after_another_reader_says_why_it_is_not_in_place(tmp_path):
    """Caffe's trap: a layer written in place on a blob that an earlier layer also reads.
    InsertSplits gives each reader a Split's copy, so the in-place layer reads its copy
    and its top would be a second producer of the blob: Caffe's "multiple sources"
    error, here with the reason and what to write instead."""
    with pytest.raises(NetGraphError) as e:
        make_net(tmp_path, """
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
            layer { name: "fc" type: "InnerProduct" bottom: "x" top: "h"
                    inner_product_param { num_output: 4 } }
            layer { name: "side" type: "TanH" bottom: "h" top: "side" }
            layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
        """)
    text = str(e.value)
    assert text.startswith("Top blob 'h' produced by multiple sources (layer 'fc' and layer "
                           "'relu'): layer 'relu' is written in place on 'h', but 'side' "
                           "reads 'h' before it"), text
    assert "reads its copy 'h_fc_0_split_1'" in text
    assert "Give 'relu' a top of its own, or put it before that one." in text
    with pytest.raises(NetGraphError, match=r"but 'a', 'b' and 'c' read 'x' before it.* "
                                            r"or put it before those readers\."):
        make_net(tmp_path, """
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
            layer { name: "a" type: "TanH" bottom: "x" top: "a" }
            layer { name: "b" type: "TanH" bottom: "x" top: "b" }
            layer { name: "c" type: "TanH" bottom: "x" top: "c" }
            layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
        """)
