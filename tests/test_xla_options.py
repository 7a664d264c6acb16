"""jcaffe's own compiles on CPU leave convolutions to XLA, not YNNPACK (jcaffe.xla_options)."""
import logging

import jax
import numpy as np
import pytest
from google.protobuf import text_format

import jcaffe
from jcaffe import xla_options
from jcaffe.proto import caffe_pb2
from netutil import library_ops, make_net

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")

NET = """
name: "small_conv"
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "t"
        input_param { shape { dim: 2 dim: 32 dim: 16 dim: 16 } shape { dim: 2 dim: 32 dim: 16 dim: 16 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def _spy(fn, seen):
    """``fn`` (a jitted function) that also keeps the optimized HLO of each call."""
    def call(*args):
        seen.append(fn.lower(*args).compile().as_text())
        return fn(*args)
    call.trace = getattr(fn, "trace", None)
    return call


def _needs_option():
    if not xla_options.accepted(xla_options.YNN_FUSION_TYPE, xla_options.YNN_FUSION_TYPES):
        pytest.skip("this jaxlib does not take %s" % xla_options.YNN_FUSION_TYPE)


def test_cpu_options_add_the_fusion_choice(monkeypatch):
    _needs_option()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert xla_options.cpu_options() == {
        xla_options.YNN_FUSION_TYPE: xla_options.YNN_FUSION_TYPES}
    assert xla_options.own_convolutions()
    assert xla_options.cpu_options(xla_cpu_scheduler_type="X") == {
        "xla_cpu_scheduler_type": "X",
        xla_options.YNN_FUSION_TYPE: xla_options.YNN_FUSION_TYPES}


def test_a_jaxlib_without_individual_dots_gets_the_fused_kind(monkeypatch):
    """Dots alone on YNNPACK first; where this jaxlib rejects that kind, its fused dots
    (convolutions still left to XLA); where it takes neither, no option."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    individual, fused = xla_options.YNN_FUSION_CHOICES
    assert xla_options.YNN_FUSION_TYPES == individual and "INDIVIDUAL_DOT" in individual
    monkeypatch.setattr(xla_options, "accepted", lambda name, value: value == fused)
    assert xla_options.cpu_options() == {xla_options.YNN_FUSION_TYPE: fused}
    assert xla_options.own_convolutions()
    monkeypatch.setattr(xla_options, "accepted", lambda name, value: False)
    assert xla_options.cpu_options() is None
    assert not xla_options.own_convolutions()


def test_the_users_xla_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--%s=LIBRARY_FUSION_TYPE_DOT" % xla_options.YNN_FUSION_TYPE)
    assert xla_options.cpu_options() is None
    assert xla_options.cpu_options(a="b") == {"a": "b"}
    assert not xla_options.own_convolutions()    # (Convolution's weight gradients: GEMM)


def test_an_option_this_jaxlib_rejects_is_dropped_with_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="jcaffe"):
        assert not xla_options.accepted(xla_options.YNN_FUSION_TYPE, "LIBRARY_FUSION_TYPE_NONE_SUCH")
    assert "LIBRARY_FUSION_TYPE_NONE_SUCH" in caplog.text
    assert "compiling without it" in caplog.text


def test_net_forward_backward_and_the_fused_step_keep_convolutions_off_ynnpack(
        tmp_path, monkeypatch):
    """The 3x3 convolution (below Convolution.GEMM_MIN_MACS: XLA's convolution; above
    the size from which XLA hands a convolution to YNNPACK by default) compiles as XLA's
    own convolution in Net.forward, Net.backward and Solver.step."""
    _needs_option()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    net = make_net(tmp_path, NET)
    r = np.random.default_rng(0)
    net.blobs["x"].data[...] = r.standard_normal((2, 32, 16, 16))
    seen = []
    net.forward()                       # builds the segment and its jits
    net.backward()
    (seg,) = net._segments.values()
    seg._forward_jit = _spy(seg._forward_jit, seen)
    seg._backward_jit["fn"] = _spy(seg._backward_jit["fn"], seen)
    net.forward()
    net.backward()
    param = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", type="SGD", display=0)
    param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    solver = jcaffe.get_solver(param)
    jitted = solver._jit_fused
    solver._jit_fused = lambda seg, stacked: _spy(jitted(seg, stacked), seen)
    solver.step(1)
    assert len(seen) == 3
    for hlo in seen:
        assert "convolution(" in hlo
        library = library_ops(hlo)
        assert all("convolution" not in ops for ops in library.values()), library
