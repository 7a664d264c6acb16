"""The order of a fused step's backward (jcaffe.engine.Segment.ordered_backward): each
layer's params are read behind the param diffs of the layers its top diffs come from, so
a layer's weight gradient comes before the layers below it, as in Caffe's Backward. XLA's CPU
scheduler, left to data dependence alone, ran every data gradient first and every
weight gradient after, and the step's temporaries held every layer's diffs at once.
What users read must not change: the products by one are exact.

A fused step also updates each param inside the backward, once its diff is complete
(jcaffe.solver.Solver.update_in_backward), the layers below waiting for the new param:
updated at the end, a param whose read XLA fused with the product by one was read
unordered against its in-place update, and XLA copied it before the step. In the
backward, an update of update_min_bytes or more waits for its layers' data gradients,
and XLA need not copy."""
import re

import numpy as np
import pytest
from google.protobuf import text_format

import jax
import jcaffe
from jcaffe import engine, solver as solver_module
from jcaffe.proto import caffe_pb2
from netutil import compiled_step, traced_step

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


def _solver(net=NET, solver_type="SGD"):
    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed" '
                      'random_seed: 3 type: "%s"' % solver_type, param)
    text_format.Parse(net, param.net_param)
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


@pytest.fixture
def at_the_end(monkeypatch):
    """Call it to update every param after the backward from then on (this test only)."""
    return lambda: monkeypatch.setattr(solver_module.Solver, "update_in_backward", False)


def _copied_params(compiled):
    """The entry parameters (params, history) the compiled step copies before it."""
    entry = compiled.as_text().split("\nENTRY", 1)[1]
    params = set(re.findall(r"^\s+%?(\S+) = \S+ parameter\(", entry, re.M))
    return {name for name in re.findall(r"^\s+%?\S+ = \S+ copy\(%?([^,)\s]+)\)", entry, re.M)
            if name in params}


def _param_names(solver, layers):
    """The HLO names of the fused step's params of ``layers`` (its first argument)."""
    ids = [solver.net._learnable.index(b) for name in layers for b in solver.net.params[name]]
    return {"params_%d_.1" % i for i in ids}


def test_ordered_backward_holds_fewer_temporaries(unordered, monkeypatch):
    """Six separable blocks over 4 x 32 x 32 x 32 maps (512 KB each): in order,
    the step's temporaries are those of a few maps; left to XLA, they held the diffs and
    intermediates of every block until the weight gradients ran at the end.

    That was with BatchNorm's bottom diffs left to XLA. Stored (BatchNorm's
    STORE_BOTTOM_DIFF, as now), this small net's unordered step holds 8 maps too, so the
    comparison leaves them to XLA; MobileNet's whole step still needs the order (peak
    RSS 2770 MB in order, 2960 without, with the diffs stored)."""
    from jcaffe.layers import normalization
    assert compiled_step(_solver()).memory_analysis().temp_size_in_bytes <= 10 * MAP
    monkeypatch.setattr(normalization.BatchNorm, "STORE_BOTTOM_DIFF", False)
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


@pytest.fixture
def any_size(monkeypatch):
    """Every param updated in the backward waits for its layers' data gradients (by
    default those of 1 MB and up; smaller ones may be copied, and come first)."""
    monkeypatch.setattr(engine.Segment, "update_min_bytes", 0)


def test_which_params_are_updated_in_the_backward(monkeypatch):
    """Those with a diff of at most ordered_max_bytes (BatchNorm's statistics have none),
    each at the last layer adding to it; none with the order off."""
    solver = _solver()
    seg = solver.net._segment(solver.net._runs(0, len(solver.net._slots) - 1)[0])
    params = dict(enumerate(b.device_data() for b in solver.net._learnable))
    learned = [s for s in seg.slots if s.layer.type in ("Convolution", "Scale", "InnerProduct")]
    in_order = seg.updated_in_order(params)
    assert {"params_%d_.1" % pid for pid in in_order} == _param_names(
        solver, [s.layer.name for s in learned])
    assert {in_order[pid] for s in learned for pid in s.param_ids} == {s.index for s in learned}
    monkeypatch.setattr(engine.Segment, "ordered_max_bytes", 32 * 32 * 4 - 1)
    assert set(in_order) - set(seg.updated_in_order(params)) == {      # the 1x1 weights
        pid for s in seg.slots if s.layer.name.startswith("sep") and s.layer.type == "Convolution"
        for pid in s.param_ids}
    monkeypatch.setattr(engine.Segment, "ordered_backward", False)
    assert seg.updated_in_order(params) == {}


def _rate_choices(solver):
    """The choices of a param's rate by its probes (jcaffe.solver._RatesAfter, named
    "rate_after") in ``solver``'s traced fused step."""
    def walk(jaxpr):
        for e in jaxpr.eqns:
            if (e.primitive.name == "dynamic_slice"
                    and "rate_after" in str(e.source_info.name_stack)):
                yield e
            for v in e.params.values():
                inner = getattr(v, "jaxpr", v)
                if hasattr(inner, "eqns"):
                    yield from walk(inner)
    return list(walk(traced_step(solver).jaxpr.jaxpr))


THREE = """
name: "three"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 2 dim: 6 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv" top: "ip1"
        inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
layer { name: "tanh" type: "TanH" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def test_a_layers_params_share_one_rate_choice(any_size):
    """Each param's rate is chosen by its layers' data gradients (jcaffe.solver.
    _rate_after): once per layer, whose weight and bias wait for the same gradients,
    and not again after the backward for the params updated in it. Here ip1 and ip2
    (conv's bottom, the data, has no gradient to wait for). Each operation a step traces
    costs its first call tracing and lowering (all of that call's work with a warm
    compilation cache): chosen per param, and once more after the backward, the rates
    were a fifth of GoogLeNet's traced operations."""
    assert len(_rate_choices(_solver(THREE))) == 2


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the copies are XLA CPU's: an H200's step copied no weight either way")
def test_updates_in_the_backward_copy_no_weight(at_the_end, any_size):
    """The 1x1 convolutions' weights, read through their ordered copy by the data
    gradient's product: updated at the end of the step, XLA copied each of them before
    the step; updated in the backward, after that product, none."""
    weights = _param_names(_solver(), ["sep%d" % i for i in range(1, DEPTH)])
    assert len(weights) == DEPTH - 1
    in_order = _copied_params(compiled_step(_solver()))
    at_the_end()
    left = _copied_params(compiled_step(_solver()))
    assert weights <= left, sorted(weights - left)       # what the test is about
    assert not weights & in_order, sorted(weights & in_order)


SHARED = """
name: "shared"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 6 dim: 2 dim: 5 dim: 5 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { lr_mult: 0 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "a" type: "InnerProduct" bottom: "conv" top: "a" param { name: "w" }
        inner_product_param { num_output: 36 weight_filler { type: "xavier" } } }
layer { name: "tanh" type: "TanH" bottom: "a" top: "a" }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
        inner_product_param { num_output: 36 weight_filler { type: "xavier" } } }
layer { name: "prelu" type: "PReLU" bottom: "b" top: "b" }
layer { name: "ip" type: "InnerProduct" bottom: "b" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize("solver_type,waits", [("SGD", True), ("SGD", False), ("Nesterov", True),
                                               ("Adam", True), ("AdaDelta", False)])
def test_updates_in_the_backward_change_no_number(at_the_end, monkeypatch, solver_type, waits):
    """Params, history and diffs after three steps, updated in the backward or at the
    end: a weight shared by two layers (updated after the lower one adds its share),
    a frozen one (lr_mult 0: updated at the end, its data unchanged, as in Caffe), rates
    and decays per param. ``waits``: every update after its layers' data gradients, or
    (by default for params this small) free to come before them."""
    if waits:
        monkeypatch.setattr(engine.Segment, "update_min_bytes", 0)

    def run():
        solver = _solver(SHARED, solver_type)
        rng = np.random.default_rng(1)
        blobs = solver.net.blobs
        blobs["data"].data[...] = rng.standard_normal(blobs["data"].shape)
        blobs["label"].data[...] = rng.integers(0, 3, blobs["label"].shape)
        frozen = solver.net.params["conv"][0].data.copy()
        solver.step(3)
        np.testing.assert_array_equal(solver.net.params["conv"][0].data, frozen)
        return solver
    in_order = run()
    assert solver_module.Solver.update_in_backward and in_order._updates_in_order()
    at_the_end()
    left = run()
    assert not left._updates_in_order()
    for name in ("conv", "a", "b", "prelu", "ip"):
        for k, (p, q) in enumerate(zip(in_order.net.params[name], left.net.params[name])):
            np.testing.assert_allclose(p.data, q.data, rtol=1e-6, atol=1e-7,
                                       err_msg="%s param %d" % (name, k))
            np.testing.assert_allclose(p.diff, q.diff, rtol=1e-6, atol=1e-7,
                                       err_msg="%s param %d diff" % (name, k))
    for slot_a, slot_b in zip(in_order.history, left.history):
        np.testing.assert_allclose(slot_a, slot_b, rtol=1e-6, atol=1e-7)
    for name in ("conv", "a", "b"):
        np.testing.assert_allclose(in_order.net.blobs[name].diff, left.net.blobs[name].diff,
                                   rtol=1e-6, atol=1e-7, err_msg=name + " diff")
