"""The order of a fused step's backward (jcaffe.engine.Segment.ordered_backward): each
layer's params are read behind the param diffs of the layers its top diffs come from, so
a layer's weight gradient comes before the layers below it, as in Caffe's Backward. XLA's CPU
scheduler, left to data dependence alone, ran every data gradient first and every
weight gradient after, and the step's temporaries held every layer's diffs at once.
What users read must not change: the products by one are exact."""
import numpy as np
import pytest
from google.protobuf import text_format

import jax
import jcaffe
from jcaffe import engine
from jcaffe.proto import caffe_pb2
from netutil import compiled_step

# MobileNet's separable blocks: a depthwise 3x3 convolution and a 1x1 one, each with
# BatchNorm, Scale and ReLU in place (the pattern where XLA's order was furthest off).
UNIT = """
layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
        convolution_param {{ num_output: 32 kernel_size: {k} pad: {pad} group: {group}
                             bias_term: false weight_filler {{ type: "gaussian" std: 0.2 }} }} }}
layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}" }}
layer {{ name: "{name}/scale" type: "Scale" bottom: "{name}" top: "{name}"
        scale_param {{ bias_term: true }} }}
layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}
"""
DEPTH = 6
MAP = 4 * 32 * 32 * 32 * 4     # bytes of one block's map


def _blocks():
    out, bottom = [], "data"
    for i in range(DEPTH):
        out.append(UNIT.format(name="dw%d" % i, bottom=bottom, k=3, pad=1, group=32))
        out.append(UNIT.format(name="sep%d" % i, bottom="dw%d" % i, k=1, pad=0, group=1))
        bottom = "sep%d" % i
    return "".join(out)


NET = ("""
name: "separable"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 32 dim: 32 dim: 32 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
""" + _blocks() + """
layer { name: "pool" type: "Pooling" bottom: "sep%d" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
""" % (DEPTH - 1))
FIRST, LAST = "dw0", "sep%d" % (DEPTH - 1)


def _solver():
    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed" '
                      'random_seed: 3 type: "SGD"', param)
    text_format.Parse(NET, param.net_param)
    solver = jcaffe.get_solver(param)
    rng = np.random.default_rng(0)
    blobs = solver.net.blobs
    blobs["data"].data[...] = rng.standard_normal(blobs["data"].shape)
    blobs["label"].data[...] = rng.integers(0, 10, blobs["label"].shape)
    return solver


@pytest.fixture
def unordered(monkeypatch):
    """Call it to leave the backward's order to XLA from then on (this test only)."""
    return lambda: monkeypatch.setattr(engine.Segment, "ordered_backward", False)


def test_ordered_backward_holds_fewer_temporaries(unordered):
    """Six separable blocks over 4 x 32 x 32 x 32 maps (512 KB each): in order,
    the step's temporaries are those of a few maps; left to XLA, they held the diffs and
    intermediates of every block until the weight gradients ran at the end."""
    ordered = compiled_step(_solver()).memory_analysis().temp_size_in_bytes
    unordered()
    left = compiled_step(_solver()).memory_analysis().temp_size_in_bytes
    assert ordered < left / 2, (ordered, left)
    assert ordered <= 10 * MAP, (ordered, MAP)


def test_ordered_backward_changes_no_number(unordered):
    """Blobs, diffs, params and momentum after two steps, ordered and not."""
    ordered = _solver()
    ordered.step(2)
    unordered()
    left = _solver()
    left.step(2)
    for name in (FIRST, LAST, "ip", "loss"):
        np.testing.assert_allclose(ordered.net.blobs[name].data, left.net.blobs[name].data,
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    for name in (FIRST, LAST, "ip"):
        np.testing.assert_allclose(ordered.net.blobs[name].diff, left.net.blobs[name].diff,
                                   rtol=1e-5, atol=1e-7, err_msg=name + " diff")
    for name in (FIRST, "dw0/scale", "sep0", LAST, "ip"):
        for k, (a, b) in enumerate(zip(ordered.net.params[name], left.net.params[name])):
            np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-7,
                                       err_msg="%s param %d" % (name, k))
    for a, b in zip(ordered.history, left.history):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_the_product_by_one_is_exact():
    """_waiting's one times any float is that float: NaN, infinities, signed zeros,
    whatever the scalar it waits for (NaN included). (Subnormals: XLA on CPU flushes
    them to zero in every op, the layer's own product included, so a subnormal weight
    reads as zero with or without this one.)"""
    x = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.2e-38, -3.5, 3.4e38], np.float32)
    for after in (np.float32(2.0), np.float32(np.nan), np.float32(-np.inf)):
        out = np.asarray(jax.jit(engine._waiting)(x, after))
        assert out.dtype == x.dtype
        np.testing.assert_array_equal(out.view(np.int32)[1:], x.view(np.int32)[1:])
        assert np.isnan(out[0])
