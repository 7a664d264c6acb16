"""NetParameter debug_info: Caffe's per-layer log of mean absolute values (Net::
ForwardDebugInfo after each layer's forward, BackwardDebugInfo after each backward),
from pycaffe's net.forward() and net.backward()."""
import numpy as np
import pytest
from google.protobuf import text_format

import jcaffe
from jcaffe.proto import caffe_pb2
from netutil import LogLines

NET = """
name: "dbg"
debug_info: true
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
  param { name: "w" } param { lr_mult: 0 }
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 }
    bias_filler { type: "constant" value: -0.2 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "sum" type: "Reduction" bottom: "h" top: "s" loss_weight: 1 }
"""


def _net():
    param = caffe_pb2.NetParameter()
    text_format.Parse(NET, param)
    net = jcaffe.Net(param, jcaffe.TRAIN)
    net.blobs["x"].data[...] = np.random.default_rng(0).normal(size=(2, 3))
    return net


def _check(lines, expected):
    got = [l.rsplit(": ", 1) for l in lines if l.startswith("    [")]
    assert [name for name, _ in got] == [name for name, _ in expected]
    assert [float(v) for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-5)


def test_forward_logs_each_layers_tops_and_params_as_they_are_after_it():
    net = _net()
    w, b = (blob.data.copy() for blob in net.params["ip"])
    x = net.blobs["x"].data.copy()
    with LogLines() as lines:
        net.forward()
    h = x @ w.T + b
    _check(lines.lines, [
        ("    [Forward] Layer x, top blob x data", np.abs(x).mean()),
        ("    [Forward] Layer ip, top blob h data", np.abs(h).mean()),   # before the ReLU
        ("    [Forward] Layer ip, param blob w data", np.abs(w).mean()),   # its display name
        ("    [Forward] Layer ip, param blob 1 data", np.abs(b).mean()),
        ("    [Forward] Layer relu, top blob h data", np.maximum(h, 0).mean()),
        ("    [Forward] Layer sum, top blob s data", abs(np.maximum(h, 0).sum()))])


def test_backward_logs_bottom_diffs_and_the_param_diffs_it_computes():
    net = _net()
    net.forward()
    x, h = net.blobs["x"].data.copy(), net.blobs["h"].data.copy()
    w = net.params["ip"][0].data.copy()
    with LogLines() as lines:
        net.backward()
    dh = (h > 0).astype(float)
    _check(lines.lines, [
        ("    [Backward] Layer sum, bottom blob h diff", 1.0),
        ("    [Backward] Layer relu, bottom blob h diff", dh.mean()),
        ("    [Backward] Layer ip, bottom blob x diff", np.abs(dh @ w).mean()),
        ("    [Backward] Layer ip, param blob 0 diff", np.abs(dh.T @ x).mean()),
        # (the bias has lr_mult 0, but force_backward makes every param propagate down)
        ("    [Backward] Layer ip, param blob 1 diff", np.abs(dh.sum(0)).mean())])
    # (no "All net params" line: pycaffe's backward is Caffe's BackwardFromTo; a
    # solver's Backward() adds it)
