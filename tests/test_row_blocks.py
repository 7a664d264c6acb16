"""Big InnerProduct weights updated a block of rows at a time in the fused step
(jcaffe.engine.RowBlocks, jcaffe.update_rules._update_by_rows): the whole weight diff
never exists, and every number a user reads is the whole-array update's."""
import numpy as np
import pytest
from google.protobuf import text_format

import jax
import jax.numpy as jnp
import jcaffe
from jcaffe import update_rules
from jcaffe.engine import RowBlocks
from jcaffe.proto import caffe_pb2
from netutil import compiled_step

# The CPU backend's rule (Solver.row_blocks_min_bytes): on a GPU every diff is whole.
pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu",
                                reason="row blocks are the CPU backend's memory rule")

NET = """
name: "fc"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 dim: 3 dim: 3 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { lr_mult: 2 decay_mult: 1 } param { lr_mult: 1 decay_mult: 0 }
        inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 5 transpose: true
                              weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SHARED = NET.replace('param { lr_mult: 2 decay_mult: 1 } param { lr_mult: 1 decay_mult: 0 }',
                     'param { name: "w" } param { lr_mult: 1 decay_mult: 0 }').replace(
    'layer { name: "relu"',
    'layer { name: "ip3" type: "InnerProduct" bottom: "data" top: "ip3" param { name: "w" } '
    'inner_product_param { num_output: 7 } }\n'
    'layer { name: "sum" type: "Eltwise" bottom: "ip1" bottom: "ip3" top: "ip1" }\n'
    'layer { name: "relu"')


def _solver(kind="SGD", extra="", net=NET, min_bytes=0):
    param = caffe_pb2.SolverParameter()
    momentum = {"Adam": "momentum: 0.9 momentum2: 0.99", "AdaGrad": ""}.get(kind, "momentum: 0.9")
    text_format.Parse('base_lr: 0.05 %s weight_decay: 0.01 lr_policy: "fixed" random_seed: 5 '
                      'type: "%s" %s' % (momentum, kind, extra), param)
    text_format.Parse(net, param.net_param)
    solver = jcaffe.get_solver(param)
    solver.row_blocks_min_bytes = min_bytes
    rng = np.random.default_rng(1)
    blobs = solver.net.blobs
    blobs["data"].data[...] = rng.standard_normal(blobs["data"].shape)
    blobs["label"].data[...] = rng.integers(0, 5, blobs["label"].shape)
    return solver


def _deferred(solver):
    net = solver.net
    return solver._deferred_pids(net._segment(net._runs(0, len(net._slots) - 1)[0]))


@pytest.mark.parametrize("kind,extra", [("SGD", ""), ("SGD", 'regularization_type: "L1"'),
                                        ("Adam", ""), ("Nesterov", ""), ("AdaGrad", "")])
def test_rows_at_a_time_give_the_whole_array_update(monkeypatch, kind, extra):
    # two-row blocks: ip1's 7 rows come as 2, 2, 2, 1; ip2's (transposed) 7 rows likewise
    monkeypatch.setattr(update_rules, "ROW_BLOCK_BYTES", 2 * 54 * 4)
    blocked, whole = _solver(kind, extra), _solver(kind, extra, min_bytes=None)
    expect = {"SGD": {0, 2}, "Adam": {0, 2}}.get(kind, set())   # rules with value_from_history
    assert set(_deferred(blocked)) == expect and not _deferred(whole)
    for _ in range(3):
        blocked.step(1)
        whole.step(1)
    # A block's diff is a smaller GEMM, which may sum in another order: the last bit of
    # a diff can differ (the update's own stages are exact: see the test below).
    close = dict(rtol=2e-6, atol=1e-7)
    for name in ("ip1", "ip2"):
        for i, (b, w) in enumerate(zip(blocked.net.params[name], whole.net.params[name])):
            np.testing.assert_allclose(b.data, w.data, err_msg="%s[%d] data" % (name, i), **close)
            np.testing.assert_allclose(b.diff, w.diff, err_msg="%s[%d] diff" % (name, i), **close)
    for slot_b, slot_w in zip(blocked._history, whole._history):
        for b, w in zip(slot_b, slot_w):
            np.testing.assert_allclose(np.asarray(b), np.asarray(w), **close)
    np.testing.assert_allclose(blocked.net.blobs["loss"].data, whole.net.blobs["loss"].data,
                               **close)


@pytest.mark.parametrize("kind,reg", [("SGD", "L2"), ("SGD", "L1"), ("Adam", "L2")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_update_by_rows_is_the_whole_update_exactly(monkeypatch, x64, kind, reg, dtype):
    """Given the same diff, by rows (blocks of 3 of 8 rows: 3, 3, 2) or whole, every
    param, history and update value is bit for bit the same."""
    monkeypatch.setattr(update_rules, "ROW_BLOCK_BYTES", 3 * 5 * np.dtype(dtype).itemsize)
    param = caffe_pb2.SolverParameter()
    text_format.Parse('type: "%s" momentum: 0.9 momentum2: 0.999 weight_decay: 0.01 '
                      'regularization_type: "%s"' % (kind, reg), param)
    rule = update_rules.rule_for(param)
    init, update = update_rules.make_update(param, rule, [1.5], [1.0])
    rng = np.random.default_rng(2)
    g, p = (jnp.asarray(rng.standard_normal((8, 5)), dtype) for _ in range(2))
    history = tuple((jnp.asarray(rng.random((8, 5)), dtype),) for _ in range(rule.num_history))
    rows = RowBlocks(g.shape, g.dtype, lambda start, n: jax.lax.dynamic_slice_in_dim(g, start, n))
    rate, t = jnp.asarray(0.01, dtype), jnp.int32(4)
    whole = jax.jit(lambda g, h, p: update([g], h, [p], rate, t)[:3])(g, history, p)
    by_rows = jax.jit(lambda h, p: update([rows], h, [p], rate, t)[:3])(history, p)
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(by_rows)):
        assert a.dtype == dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("extra", ["iter_size: 2", "clip_gradients: 1"])
def test_settings_that_need_each_whole_diff_keep_it(extra):
    assert not _deferred(_solver(extra=extra))


def test_a_shared_weight_is_not_updated_by_rows():
    solver = _solver(net=SHARED)
    shared = solver.net._learnable.index(solver.net.params["ip1"][0])
    assert shared not in _deferred(solver)
    assert solver.net._learnable.index(solver.net.params["ip2"][0]) in _deferred(solver)
    solver.step(2)
    assert np.isfinite(solver.net.params["ip1"][0].data).all()


def test_off_the_cpu_backend_every_diff_is_whole(monkeypatch):
    """On a GPU (an H200) the blocks made CaffeNet's step slower and saved no memory."""
    solver = _solver()
    assert _deferred(solver)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not _deferred(solver)


def test_only_big_weights_by_default():
    solver = _solver(min_bytes=type(_solver()).row_blocks_min_bytes)
    assert solver.row_blocks_min_bytes >= 1 << 20 and not _deferred(solver)


BIG = """
name: "big"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 2048 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 8 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 1024 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_the_whole_weight_diff_is_never_in_memory(monkeypatch):
    """The weight is 1024 x 2048 floats (8 MB). Updated whole, its diff is one of the
    step's XLA temporaries; by 1 MB blocks, the temporaries are smaller than it, and the
    weight and its momentum are still written in place (no copy of either)."""
    monkeypatch.setattr(update_rules, "ROW_BLOCK_BYTES", 1 << 20)
    weight = 1024 * 2048 * 4
    blocked = compiled_step(_solver(net=BIG))
    whole = compiled_step(_solver(net=BIG, min_bytes=None))
    assert whole.memory_analysis().temp_size_in_bytes >= weight
    assert blocked.memory_analysis().temp_size_in_bytes < weight // 2
    copies = [line for line in blocked.as_text().splitlines()
              if "f32[1024,2048]" in line and " copy(" in line]
    assert copies == []


# One image through convolutions whose weight diffs are one GEMM each (jcaffe.layers.
# vision.Convolution.row_blocked_params): FCN's form (fc6: 7x7 from 512 to 4096
# channels at batch 1, 411 MB of weight), in small. GEMM_MIN_MACS is lowered for these
# few multiply-adds to take the GEMM.
CONV = """
name: "convs"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 6 dim: 9 dim: 9 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 2 decay_mult: 1 } param { lr_mult: 1 decay_mult: 0 }
        convolution_param { num_output: 8 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv2" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.fixture
def convs_on_gemm(monkeypatch):
    from jcaffe.layers.vision import Convolution
    monkeypatch.setattr(Convolution, "GEMM_MIN_MACS", 0)


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_convolution_weights_by_rows_give_the_whole_array_update(monkeypatch, convs_on_gemm,
                                                                 kind):
    # blocks of two output channels: conv1's 8 rows of 6 * 9 floats as 2, 2, 2, 2
    monkeypatch.setattr(update_rules, "ROW_BLOCK_BYTES", 2 * 54 * 4)
    blocked, whole = _solver(kind, net=CONV), _solver(kind, net=CONV, min_bytes=None)
    learnable = blocked.net._learnable
    weights = {learnable.index(blocked.net.params[n][0]) for n in ("conv1", "conv2", "ip")}
    assert set(_deferred(blocked)) == weights and not _deferred(whole)
    close = dict(rtol=2e-6, atol=1e-7)
    for step in range(3):       # each step (one image: the loss soon nears 0, the diffs too)
        blocked.step(1)
        whole.step(1)
        for name in ("conv1", "conv2", "ip"):
            for i, (b, w) in enumerate(zip(blocked.net.params[name], whole.net.params[name])):
                where = "step %d, %s[%d]" % (step, name, i)
                np.testing.assert_allclose(b.data, w.data, err_msg=where + " data", **close)
                np.testing.assert_allclose(b.diff, w.diff, err_msg=where + " diff", **close)
        np.testing.assert_allclose(blocked.net.blobs["loss"].data,
                                   whole.net.blobs["loss"].data, **close)


@pytest.mark.parametrize("changes", [
    [("dim: 1 dim: 6", "dim: 64 dim: 6"), ("shape { dim: 1 }", "shape { dim: 64 }")],
    [("kernel_size: 3 pad: 1", "kernel_size: 3 pad: 1 group: 2")],
    [("kernel_size: 3 pad: 1", "kernel_size: 1")],
    [('name: "conv1" type: "Convolution"', 'name: "conv1" type: "Deconvolution"')]],
    ids=["columns in chunks", "grouped", "1x1", "deconvolution"])
def test_convolution_weights_by_rows_only_from_one_column_array(convs_on_gemm, monkeypatch,
                                                                 changes):
    """conv1 changed so that its weight diff is not one GEMM of one column array (or is
    a Deconvolution's): its weight stays whole; conv2's is still offered by rows where
    it is still one."""
    from jcaffe import xla_options
    from jcaffe.layers import conv_gemm
    # GEMM weight gradients for a batch too (as where XLA's convolutions are YNNPACK's),
    # the columns 8 images a chunk
    monkeypatch.setattr(xla_options, "own_convolutions", lambda: False)
    monkeypatch.setattr(conv_gemm, "CHUNK_BYTES", 6 * 9 * 81 * 4 * 8)
    net_text = CONV
    for old, new in changes:
        assert old in net_text
        net_text = net_text.replace(old, new)
    solver = _solver(net=net_text)
    net, deferred = solver.net, _deferred(solver)
    conv1, conv2 = (net._learnable.index(net.params[n][0]) for n in ("conv1", "conv2"))
    assert conv1 not in deferred
    assert (conv2 in deferred) == (changes[0][0] != "dim: 1 dim: 6"), deferred
    unchanged = _deferred(_solver(net=CONV))
    assert conv1 in unchanged and conv2 in unchanged
