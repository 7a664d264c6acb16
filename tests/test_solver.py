"""Solvers: each rule, lr policy and regularization against a numpy version of
Caffe's formulas; iter_size; the fused single-jit step against the pycaffe-style path."""
import math
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import text_format

import jcaffe
from jcaffe import engine
from jcaffe.errors import SolverError
from jcaffe.proto import caffe_pb2
from netutil import LogLines, calls_of

# InnerProduct (3 -> 2, bias lr_mult 2, decay_mult 0) + EuclideanLoss on Python-filled inputs.
NET = """
name: "tiny"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: %(n)d dim: 3 } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: %(n)d dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 2
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
"""

X = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
Y = np.random.default_rng(2).normal(size=(4, 2)).astype(np.float32)


def solver_param(text, n=4):
    param = caffe_pb2.SolverParameter()
    text_format.Parse(text, param)
    text_format.Parse(NET % {"n": n}, param.net_param)
    if not param.HasField("random_seed"):
        param.random_seed = 5
    if not param.lr_policy:
        param.lr_policy = "fixed"
    return param


def make_solver(text, n=4, fuse=True):
    solver = jcaffe.get_solver(solver_param(text, n))
    solver.fuse_step = fuse
    solver.net.blobs["x"].data[...] = np.concatenate([X] * (n // 4))
    solver.net.blobs["y"].data[...] = np.concatenate([Y] * (n // 4))
    return solver


# ---------------------------------------------------------------------------
# numpy reference: Caffe's GetLearningRate, ClipGradients, Normalize,
# Regularize, ComputeUpdateValue and Update, written from their formulas

def ref_rate(p, it, step):
    base, g, pw = p["base_lr"], p.get("gamma", 0.0), p.get("power", 0.0)
    policy = p.get("lr_policy", "fixed")
    if policy == "fixed":
        return base, step
    if policy == "step":
        step = it // p["stepsize"]
        return base * g ** step, step
    if policy == "exp":
        return base * g ** it, step
    if policy == "inv":
        return base * (1 + g * it) ** (-pw), step
    if policy == "multistep":
        if step < len(p["stepvalue"]) and it >= p["stepvalue"][step]:
            step += 1
        return base * g ** step, step
    if policy == "poly":
        return base * (1 - it / p["max_iter"]) ** pw, step
    if policy == "sigmoid":
        return base / (1 + math.exp(-g * (it - p["stepsize"]))), step
    raise ValueError(policy)


def ref_grads(W, b, x, y):
    d = (x @ W.T + b - y) / x.shape[0]
    return [d.T @ x, d.sum(0)]


def ref_train(p, W, b, iters, kind="SGD"):
    params = [W.astype(np.float64), b.astype(np.float64)]
    lr_mults, decay_mults = [1.0, 2.0], [1.0, 0.0]
    n_hist = 2 if kind in ("AdaDelta", "Adam") else 1
    hist = [[np.zeros_like(q) for q in params] for _ in range(n_hist)]
    m, delta = p.get("momentum", 0.0), p.get("delta", 1e-8)
    step, out = 0, []
    for it in range(iters):
        grads = ref_grads(params[0], params[1], X.astype(np.float64), Y.astype(np.float64))
        rate, step = ref_rate(p, it, step)
        clip = p.get("clip_gradients", -1)
        if clip >= 0:
            norm = math.sqrt(sum((g * g).sum() for g in grads))
            if norm > clip:
                grads = [g * clip / norm for g in grads]
        for i in range(2):
            g, w = grads[i], params[i]
            decay = p.get("weight_decay", 0.0) * decay_mults[i]
            if decay:
                g = g + decay * (w if p.get("regularization_type", "L2") == "L2" else np.sign(w))
            lr = rate * lr_mults[i]
            h = hist[0][i]
            if kind == "SGD":
                h = m * h + lr * g
                value = h
            elif kind == "Nesterov":
                h_new = m * h + lr * g
                value = (1 + m) * h_new - m * h
                h = h_new
            elif kind == "AdaGrad":
                h = h + g * g
                value = lr * g / (np.sqrt(h) + delta)
            elif kind == "RMSProp":
                d = p["rms_decay"]
                h = d * h + (1 - d) * g * g
                value = lr * g / (np.sqrt(h) + delta)
            elif kind == "AdaDelta":
                h = m * h + (1 - m) * g * g
                u = g * np.sqrt((hist[1][i] + delta) / (h + delta))
                hist[1][i] = m * hist[1][i] + (1 - m) * u * u
                value = lr * u
            elif kind == "Adam":
                b1, b2, t = m, p.get("momentum2", 0.999), it + 1
                h = b1 * h + (1 - b1) * g
                hist[1][i] = b2 * hist[1][i] + (1 - b2) * g * g
                corr = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                value = lr * corr * h / (np.sqrt(hist[1][i]) + delta)
            hist[0][i] = h
            params[i] = w - value
        out.append([q.copy() for q in params])
    return out


def p_text(p, kind):
    lines = ['type: "%s"' % kind]
    for k, v in p.items():
        if isinstance(v, list):
            lines += ["%s: %r" % (k, x) for x in v]
        elif isinstance(v, str):
            lines.append('%s: "%s"' % (k, v))
        else:
            lines.append("%s: %r" % (k, v))
    return "\n".join(lines)


def check_against_reference(p, kind, iters=3, fuse=True):
    solver = make_solver(p_text(p, kind), fuse=fuse)
    W0, b0 = (blob.data.copy() for blob in solver.net.params["ip"])
    expected = ref_train(p, W0, b0, iters, kind)
    for it in range(iters):
        solver.step(1)
        W, b = (blob.data for blob in solver.net.params["ip"])
        np.testing.assert_allclose(W, expected[it][0], rtol=2e-5, atol=2e-6, err_msg="iter %d W" % it)
        np.testing.assert_allclose(b, expected[it][1], rtol=2e-5, atol=2e-6, err_msg="iter %d b" % it)
    assert solver.iter == iters
    return solver


SOLVERS = {
    "SGD": {"base_lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
    "Nesterov": {"base_lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
    "AdaGrad": {"base_lr": 0.1, "weight_decay": 0.01, "delta": 1e-6},
    "RMSProp": {"base_lr": 0.05, "rms_decay": 0.9, "weight_decay": 0.01, "delta": 1e-6},
    "AdaDelta": {"base_lr": 1.0, "momentum": 0.95, "delta": 1e-6, "weight_decay": 0.01},
    "Adam": {"base_lr": 0.01, "momentum": 0.9, "momentum2": 0.999, "delta": 1e-8,
             "weight_decay": 0.01},
}


@pytest.mark.parametrize("kind", sorted(SOLVERS))
def test_each_solver_matches_caffe_formula(kind):
    check_against_reference(SOLVERS[kind], kind)


@pytest.mark.parametrize("kind", ["SGD", "Adam", "AdaDelta"])
def test_pycaffe_style_path_matches_formula_too(kind):
    check_against_reference(SOLVERS[kind], kind, fuse=False)


POLICIES = {
    "fixed": {},
    "step": {"gamma": 0.5, "stepsize": 2},
    "exp": {"gamma": 0.9},
    "inv": {"gamma": 0.1, "power": 0.75},
    "multistep": {"gamma": 0.3, "stepvalue": [1, 2]},
    "poly": {"power": 2.0, "max_iter": 5},
    "sigmoid": {"gamma": 0.7, "stepsize": 1},
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_lr_policies(policy):
    p = {"base_lr": 0.1, "momentum": 0.5, "lr_policy": policy, **POLICIES[policy]}
    solver = check_against_reference(p, "SGD")
    assert solver.lr == pytest.approx(ref_rate(p, 3, solver.current_step)[0], rel=1e-6)


@pytest.mark.parametrize("reg", ["L1", "L2"])
@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_regularization(kind, reg):
    check_against_reference({**SOLVERS[kind], "weight_decay": 0.05, "regularization_type": reg}, kind)


def test_clip_gradients_scales_by_global_norm():
    with LogLines() as lines:
        check_against_reference({"base_lr": 0.1, "momentum": 0.9, "clip_gradients": 0.01}, "SGD")
    assert any(l.startswith("Gradient clipping: scaling down gradients (L2 norm ") for l in lines.lines)


def test_lr_mult_zero_keeps_param_fixed_but_history_moves():
    param = solver_param('type: "AdaGrad" base_lr: 0.1 weight_decay: 0.1')
    param.net_param.layer[2].param[1].lr_mult = 0
    param.net_param.layer[2].param[1].decay_mult = 1
    solver = jcaffe.get_solver(param)
    solver.net.blobs["x"].data[...] = X
    solver.net.blobs["y"].data[...] = Y
    b0 = solver.net.params["ip"][1].data.copy()
    solver.step(2)
    np.testing.assert_array_equal(solver.net.params["ip"][1].data, b0)
    # history of the frozen bias: the weight decay term squared, accumulated twice
    np.testing.assert_allclose(solver.history[1], 2 * (0.1 * b0) ** 2, rtol=1e-5)


def test_iter_size_equals_bigger_batch_fused():
    a = make_solver('base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 iter_size: 2', n=4)
    b = make_solver('base_lr: 0.1 momentum: 0.9 weight_decay: 0.01', n=8)
    a.step(3)
    b.step(3)
    for pa, pb in zip(a.net.learnable_params, b.net.learnable_params):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(a.smoothed_loss), float(b.smoothed_loss), rtol=1e-5)


FEEDER_NET = """
name: "feeder"
layer { name: "data" type: "Python" top: "x" top: "y"
  python_param { module: "solver_layers" layer: "BatchFeeder" param_str: "%d" } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
"""


def feeder_solver(batch, iter_size):
    param = caffe_pb2.SolverParameter()
    text_format.Parse('type: "Nesterov" lr_policy: "fixed" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 '
                      'random_seed: 3 iter_size: %d' % iter_size, param)
    text_format.Parse(FEEDER_NET % batch, param.net_param)
    return jcaffe.get_solver(param)


def test_iter_size_k_batch_b_equals_batch_kb_with_a_data_layer():
    a, b = feeder_solver(2, 3), feeder_solver(6, 1)
    a.step(4)
    b.step(4)
    for pa, pb in zip(a.net.learnable_params, b.net.learnable_params):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-5, atol=1e-7)
    assert a.smoothed_loss == pytest.approx(b.smoothed_loss, rel=1e-5)


def text_solver(solver_text, net_text):
    """A solver from a SolverParameter and a NetParameter in prototxt text."""
    param = caffe_pb2.SolverParameter()
    text_format.Parse(solver_text, param)
    text_format.Parse(net_text, param.net_param)
    return jcaffe.get_solver(param)


def fused_and_layer_by_layer(solver_text, net_text, steps):
    """(fused, layer by layer): the same solver, ``steps`` iterations on each path."""
    solvers = []
    for fuse in (True, False):
        solver = text_solver(solver_text, net_text)
        solver.fuse_step = fuse
        assert solver._can_fuse() == fuse
        solver.step(steps)
        solvers.append(solver)
    return solvers


@pytest.mark.parametrize("iter_size", [1, 2])
def test_python_data_layer_runs_before_one_fused_call(monkeypatch, iter_size):
    """A Python data layer (no bottoms, no params, no backward) at the start of the net:
    its reshape and forward run on the host once per pass, then one compiled call does
    the rest of the iteration, with the same trajectory as the layer-by-layer path."""
    from jcaffe.engine import Segment
    fused, plain = feeder_solver(2, iter_size), feeder_solver(2, iter_size)
    plain.fuse_step = False
    assert fused._can_fuse() and not plain._can_fuse()
    feeder = fused.net.layers[0]
    calls = {"reshape": 0, "forward": 0, "backward": 0}
    for name in calls:
        def counted(*args, _name=name, _orig=getattr(feeder, name)):
            calls[_name] += 1
            return _orig(*args)
        monkeypatch.setattr(feeder, name, counted)
    compiled = []
    for name in ("run_forward", "run_backward"):
        monkeypatch.setattr(Segment, name, lambda *a, **k: compiled.append(1))
    fused.step(3)
    assert calls == {"reshape": 3 * iter_size, "forward": 3 * iter_size, "backward": 0}
    assert not compiled         # no layer-by-layer forward or backward
    monkeypatch.undo()
    plain.step(3)
    for pa, pb in zip(fused.net.learnable_params, plain.net.learnable_params):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(pa.diff, pb.diff, rtol=1e-5, atol=1e-7)
    for name in ("x", "y", "ip", "loss"):   # the last pass's batch and values
        np.testing.assert_allclose(fused.net.blobs[name].data, plain.net.blobs[name].data,
                                   rtol=1e-5, atol=1e-7)
    assert fused.smoothed_loss == pytest.approx(plain.smoothed_loss, rel=1e-5)


@pytest.mark.parametrize("iter_size", [1, 2])
def test_host_layers_reading_the_data_layers_tops_run_before_the_fused_call(iter_size):
    """A numpy transform of the Python data layer's tops (Doubler on y) runs on the host
    too; the compiled call gets its top, not the data layer's, and trains as the
    layer-by-layer path does."""
    net = (FEEDER_NET % 2).replace(
        '\nlayer { name: "ip"', '\nlayer { name: "double" type: "Python" bottom: "y" top: "y2" '
        'python_param { module: "solver_layers" layer: "Doubler" } }\nlayer { name: "ip"', 1
    ).replace('bottom: "ip" bottom: "y"', 'bottom: "ip" bottom: "y2"')
    fused, plain = fused_and_layer_by_layer(
        'type: "SGD" lr_policy: "fixed" base_lr: 0.1 momentum: 0.9 random_seed: 3 '
        'iter_size: %d' % iter_size, net, 3)
    host, run, _ = fused._fused_plan()
    assert [s.layer.name for s in host] == ["data", "double"]
    assert "y2" in fused.net._segment(run).reads and "y" not in fused.net._segment(run).reads
    for pa, pb in zip(fused.net.learnable_params, plain.net.learnable_params):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fused.net.blobs["y2"].data, 2 * fused.net.blobs["y"].data)


def test_python_data_layer_of_changing_image_sizes_trains_fused_as_layer_by_layer():
    """FCN's pattern: a Python data layer reshaping its tops to each image's size. The
    fused step recompiles per shape and trains as the layer-by-layer path does."""
    net = """
name: "fcn-ish"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "solver_layers" layer: "VariableSizeFeeder" param_str: "3" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""
    fused, plain = fused_and_layer_by_layer(
        'type: "SGD" lr_policy: "fixed" base_lr: 0.1 momentum: 0.9 random_seed: 3', net, 5)
    assert fused.net.blobs["data"].shape == (1, 2, 8, 7)        # the fifth image's
    for pa, pb in zip(fused.net.learnable_params, plain.net.learnable_params):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fused.net.blobs["score"].data, plain.net.blobs["score"].data,
                               rtol=1e-5, atol=1e-6)


def test_other_host_layers_keep_the_layer_by_layer_path():
    """Only data layers run before the fused call: a Python layer with a loss weight on
    its tops (a constant loss) or a net with hooks takes the pycaffe-style path."""
    extra = ('\nlayer { name: "extra" type: "Python" top: "x2" top: "y2" loss_weight: 1 '
             'loss_weight: 1 python_param { module: "solver_layers" layer: "BatchFeeder" '
             'param_str: "2" } }\nlayer { name: "ip"')
    solver = text_solver('type: "SGD" lr_policy: "fixed" base_lr: 0.1 random_seed: 3',
                         (FEEDER_NET % 2).replace('\nlayer { name: "ip"', extra, 1))
    assert [layer.name for layer in solver.net.layers] == ["data", "extra", "ip", "loss"]
    plan, reason = solver._plan_or_reason()
    assert plan is None and reason == (
        "Python layer 'extra' (solver_layers.BatchFeeder) runs on the host between compiled "
        "segments (its tops have a loss weight); written as a jcaffe.JaxLayer "
        "(examples/python_layers/jax_layers.py) it would be compiled with the net")
    solver = feeder_solver(2, 1)
    assert solver._can_fuse()
    solver.net.before_forward(lambda index: None)
    assert solver._plan_or_reason() == (
        None, "net hooks (before_forward/after_forward/...) run around each layer")


@pytest.mark.parametrize("text,extra", [
    ('type: "SGD" base_lr: 0.05 momentum: 0.9 weight_decay: 0.01', {}),
    ('type: "Nesterov" base_lr: 0.05 momentum: 0.9 regularization_type: "L1" '
     'weight_decay: 0.01', {}),
    ('type: "Adam" base_lr: 0.01 momentum: 0.9 clip_gradients: 0.5', {}),
    ('type: "AdaDelta" base_lr: 1 momentum: 0.95',
     {"lr_policy": "step", "gamma": 0.5, "stepsize": 2}),
    ('type: "RMSProp" base_lr: 0.01 rms_decay: 0.9 display: 2', {})])
def test_layer_by_layer_backward_and_update_in_one_call_equal_them_apart(text, extra):
    """On the layer-by-layer path the last backward and the update run as one call; the
    trajectory, the params' diffs (the update values, as Caffe leaves them), the blobs'
    diffs and the history are those of the backward and apply_update() apart."""
    solvers = []
    for together in (True, False):
        solver = dropout_solver(text, fuse=False, **extra)
        solver.update_with_last_backward = together
        assert (solver._last_backward_run() is not None) == together
        calls = []
        original = solver.apply_update
        solver.apply_update = lambda: calls.append(1) or original()
        solver.step(4)
        assert len(calls) == (0 if together else 4)
        solvers.append(solver)
    one, apart = solvers
    assert one.iter == apart.iter == 4 and one.lr == apart.lr
    for pa, pb in zip(one.net.learnable_params, apart.net.learnable_params):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(pa.diff, pb.diff, rtol=1e-5, atol=1e-7)
    for name in ("x", "h", "out"):
        np.testing.assert_allclose(one.net.blobs[name].diff, apart.net.blobs[name].diff,
                                   rtol=1e-5, atol=1e-7)
    for ha, hb in zip(one.history, apart.history):
        np.testing.assert_allclose(ha, hb, rtol=1e-5, atol=1e-7)
    assert one.smoothed_loss == pytest.approx(apart.smoothed_loss, rel=1e-6)


def test_a_numpy_python_loss_net_updates_in_its_last_backward_call(monkeypatch):
    """SEED_NET (a Python data layer, compiled layers, numpy OneHot and EuclideanLoss):
    the numpy layers' backward runs on the host, then one call does the compiled
    layers' backward and the update; the same trajectory as with the update apart."""
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), os.pardir,
                                             "examples", "python_layers"))
    params = []
    for together in (True, False):
        solver = text_solver('type: "SGD" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" '
                             'random_seed: 1', SEED_NET)
        solver.update_with_last_backward = together
        run = solver._last_backward_run()
        assert (run is not None) == together
        if together:
            assert [s.layer.name for s in run] == ["ip1", "relu1", "ip2"]
        solver.step(5)
        params.append([b.data.copy() for b in solver.net.learnable_params])
    for a, b in zip(*params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_the_log_says_once_why_an_iteration_runs_layer_by_layer(monkeypatch):
    """Caffe users ask why a net with Python layers trains slower: the first iteration
    on the layer-by-layer path says which layer (or setting) keeps it from one call."""
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), os.pardir,
                                             "examples", "python_layers"))
    solver = text_solver('type: "SGD" base_lr: 0.05 lr_policy: "fixed" random_seed: 1', SEED_NET)
    with LogLines() as lines:
        solver.step(3)
    said = [l for l in lines.lines if l.startswith("Each iteration runs layer by layer")]
    assert said == [
        "Each iteration runs layer by layer (compiled segments and host layers called in turn), "
        "not as one compiled call: Python layer 'loss' (euclidean_loss.EuclideanLossLayer) "
        "runs on the host between compiled segments (its tops have a loss weight); "
        "written as a jcaffe.JaxLayer (examples/python_layers/jax_layers.py) it would be "
        "compiled with the net"]
    solver = feeder_solver(2, 1)
    solver.fuse_step = False
    with LogLines() as lines:
        solver.step(2)
        solver.fuse_step = True
        solver.step(1)
    assert [l.split(": ", 1)[1] for l in lines.lines
            if l.startswith("Each iteration runs")] == ["solver.fuse_step is False"]


def test_debug_info_logs_each_layer_on_display_iterations_as_caffe_does():
    """SolverParameter debug_info: on display iterations the train net logs, after each
    layer's forward, the mean absolute value of its tops and params, after each backward
    that of its bottom diffs and param diffs, then the L1/L2 norms of all params (Caffe's
    Net::ForwardDebugInfo, BackwardDebugInfo, Backward); the other iterations stay fused."""
    solver = make_solver('base_lr: 0.1 momentum: 0.9 display: 2 debug_info: true')
    W, b = (blob.data.copy() for blob in solver.net.learnable_params)
    with LogLines() as lines:
        solver.step(1)
    debug = [l for l in lines.lines if l.startswith("    [")]
    assert [l.split(":")[0] for l in debug] == [
        "    [Forward] Layer x, top blob x data", "    [Forward] Layer y, top blob y data",
        "    [Forward] Layer ip, top blob ip data", "    [Forward] Layer ip, param blob 0 data",
        "    [Forward] Layer ip, param blob 1 data", "    [Forward] Layer loss, top blob loss data",
        "    [Backward] Layer loss, bottom blob ip diff",
        "    [Backward] Layer ip, param blob 0 diff", "    [Backward] Layer ip, param blob 1 diff",
        "    [Backward] All net params (data, diff)"]
    value = {l.split(":")[0].strip(): l for l in debug}
    ip = X @ W.T + b
    d_ip = (ip - Y) / len(X)
    for key, expected in (("[Forward] Layer ip, top blob ip data", np.abs(ip).mean()),
                          ("[Forward] Layer ip, param blob 0 data", np.abs(W).mean()),
                          ("[Backward] Layer loss, bottom blob ip diff", np.abs(d_ip).mean()),
                          ("[Backward] Layer ip, param blob 1 diff",
                           np.abs(d_ip.sum(0)).mean())):
        assert float(value[key].rsplit(": ", 1)[1]) == pytest.approx(expected, rel=1e-5), key
    l1 = float(value["[Backward] All net params (data, diff)"].split("(")[2].split(",")[0])
    assert l1 == pytest.approx(np.abs(W).sum() + np.abs(b).sum(), rel=1e-5)
    fused = []
    original = solver._fused_iteration
    solver._fused_iteration = lambda display, *plan: fused.append(display) or original(display,
                                                                                      *plan)
    with LogLines() as lines:
        solver.step(2)
    assert fused == [False]                 # iteration 1 (no display) runs fused
    assert sum(l.startswith("    [Forward]") for l in lines.lines) == 6     # iteration 2's


DROPOUT_NET = """
name: "drop"
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 8 dim: 5 } shape { dim: 8 dim: 2 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "drop" type: "Dropout" bottom: "h" top: "h" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "out"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "y" top: "loss" }
"""


def dropout_solver(text, fuse=True, **extra):
    param = caffe_pb2.SolverParameter()
    text_format.Parse(text + ' lr_policy: "fixed"', param)
    text_format.Parse(DROPOUT_NET, param.net_param)
    param.random_seed = 11
    for k, v in extra.items():
        setattr(param, k, v)
    solver = jcaffe.get_solver(param)
    solver.fuse_step = fuse
    return solver


def test_fused_step_equals_pycaffe_style_path():
    text = 'type: "Adam" base_lr: 0.01 momentum: 0.9 weight_decay: 0.001 iter_size: 2 clip_gradients: 5'
    fused, plain = dropout_solver(text, True), dropout_solver(text, False)
    assert fused._can_fuse() and not plain._can_fuse()
    fused.step(3)
    plain.step(3)
    for pa, pb in zip(fused.net.learnable_params, plain.net.learnable_params):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(pa.diff, pb.diff, rtol=1e-5, atol=1e-7)   # update values
    for name in ("x", "h", "out", "loss"):   # blobs hold the last forward's values
        np.testing.assert_allclose(fused.net.blobs[name].data, plain.net.blobs[name].data,
                                   rtol=1e-5, atol=1e-7)
    for hf, hp in zip(fused.history, plain.history):
        np.testing.assert_allclose(hf, hp, rtol=1e-5, atol=1e-8)
    assert fused.smoothed_loss == pytest.approx(plain.smoothed_loss, rel=1e-5)


@pytest.mark.parametrize("kind", ["SGD", "Nesterov"])
def test_param_diff_after_a_fused_step_is_the_update_value_and_apply_update_still_works(kind):
    """SGD's update value is its momentum: the fused step returns it once and the
    param diff shares the history array, which the next update donates. A pycaffe
    apply_update() straight after a fused step (diff = that array) must still work."""
    p = dict(SOLVERS["SGD"])
    solver = make_solver(p_text(p, kind))
    W0 = solver.net.params["ip"][0].data.copy()
    solver.step(1)
    W1 = solver.net.params["ip"][0].data.copy()
    diff1 = solver.net.params["ip"][0].diff.copy()
    np.testing.assert_allclose(W0 - W1, diff1, rtol=1e-5, atol=1e-7)   # diff = update value
    h1 = solver.history[0].copy()
    if kind == "SGD":
        assert solver._diff_is_history == [0, 0]
        np.testing.assert_array_equal(diff1, h1)
    else:
        assert solver._diff_is_history == [None, None]
    solver.apply_update()            # grads = the diffs the fused step left
    m, wd = p["momentum"], p["weight_decay"]
    h2 = m * h1 + p["base_lr"] * (diff1 + wd * W1)
    value = h2 if kind == "SGD" else (1 + m) * h2 - m * h1
    np.testing.assert_allclose(solver.net.params["ip"][0].data, W1 - value, rtol=1e-5, atol=1e-6)
    solver.step(2)                   # and the fused path goes on
    assert np.all(np.isfinite(solver.net.params["ip"][0].data))


def test_fused_step_leaves_net_ready_for_backward_and_dropout_varies():
    solver = dropout_solver('base_lr: 0.01')
    solver.step(1)
    first = solver.net.blobs["h"].data.copy()
    solver.step(1)
    assert not np.array_equal(first, solver.net.blobs["h"].data)
    loss = float(solver.net.blobs["loss"].data)
    assert loss > 0
    solver.net.clear_param_diffs()
    solver.net.backward()            # uses the residuals the fused step saved
    assert np.abs(solver.net.params["ip1"][0].diff).sum() > 0


def test_callbacks_run_in_pycaffe_order_and_apply_update():
    solver = make_solver('base_lr: 0.1 momentum: 0.9')
    events = []
    solver.add_callback(lambda: events.append(("start", solver.iter)),
                        lambda: events.append(("grads", solver.iter)))
    solver.step(2)
    assert events == [("start", 0), ("grads", 0), ("start", 1), ("grads", 1)]
    # manual loop through the public API gives the same as step
    other = make_solver('base_lr: 0.1 momentum: 0.9')
    for _ in range(2):
        other.net.clear_param_diffs()
        other.net.forward()
        other.net.backward()
        other.apply_update()
    assert other.iter == 2
    for pa, pb in zip(solver.net.learnable_params, other.net.learnable_params):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-6)


def test_test_nets_share_params_and_log_lines():
    param = caffe_pb2.SolverParameter()
    text_format.Parse('lr_policy: "fixed" base_lr: 0.01 max_iter: 4 display: 2 test_iter: 2 test_interval: 2 '
                      'test_compute_loss: true snapshot_after_train: false average_loss: 2', param)
    text_format.Parse(DROPOUT_NET, param.net_param)
    solver = jcaffe.SGDSolver(param)
    assert len(solver.test_nets) == 1
    test_net = solver.test_nets[0]
    assert test_net.phase == jcaffe.TEST
    with LogLines() as lines:
        solver.solve()
    np.testing.assert_array_equal(test_net.params["ip1"][0].data, solver.net.params["ip1"][0].data)
    text = "\n".join(lines.lines)
    for expected in ("Solving drop", "Learning Rate Policy: fixed", "Iteration 0, Testing net (#0)",
                     "Test loss: ", "    Test net output #0: loss = ", "Iteration 0, lr = 0.01",
                     "    Train net output #0: loss = ", "Iteration 2, Testing net (#0)",
                     "Iteration 4, loss = ", "Optimization Done."):
        assert expected in text, expected
    assert any(l.startswith("Iteration 2 (") and " iter/s, " in l and "s/2 iters), loss = " in l
               for l in lines.lines)


def test_solver_type_strings_and_old_enum(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET % {"n": 4})
    (tmp_path / "old.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 solver_type: ADAM lr_policy: "fixed"')
    (tmp_path / "new.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 type: "RMSProp" lr_policy: "fixed"')
    assert type(jcaffe.get_solver(str(tmp_path / "old.prototxt"))).__name__ == "AdamSolver"
    assert type(jcaffe.get_solver(str(tmp_path / "new.prototxt"))).__name__ == "RMSPropSolver"
    assert isinstance(jcaffe.AdaGradSolver(str(tmp_path / "new.prototxt")), jcaffe.AdaGradSolver)


@pytest.mark.parametrize("text, message", [
    ('type: "Fancy" base_lr: 0.1', "Unknown solver type: 'Fancy'"),
    ('base_lr: -0.1', "base_lr must not be negative"),
    ('base_lr: 0.1 lr_policy: "cosine"', "Unknown learning rate policy"),
    ('base_lr: 0.1 lr_policy: "step"', "needs stepsize > 0"),
    ('base_lr: 0.1 regularization_type: "L3"', "Unknown regularization type"),
    ('type: "AdaGrad" base_lr: 0.1 momentum: 0.9', "Momentum cannot be used with AdaGrad"),
    ('type: "RMSProp" base_lr: 0.1 rms_decay: 1.5', "rms_decay should lie between 0 and 1"),
    ('base_lr: 0.1 test_iter: 3', "test_interval must be > 0"),
])
def test_bad_solver_parameters(text, message):
    with pytest.raises(SolverError, match=message.replace("(", r"\(")):
        jcaffe.get_solver(solver_param(text))


def test_missing_net_and_test_iter_without_test_nets(tmp_path):
    (tmp_path / "p.prototxt").write_text('net: "nowhere.prototxt" base_lr: 0.1')
    with pytest.raises(SolverError, match="lr_policy is not set"):
        jcaffe.get_solver(str(tmp_path / "p.prototxt"))
    (tmp_path / "s.prototxt").write_text('net: "nowhere.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    with pytest.raises(SolverError, match="net 'nowhere.prototxt' does not exist"):
        jcaffe.get_solver(str(tmp_path / "s.prototxt"))
    (tmp_path / "net.prototxt").write_text(NET % {"n": 4})
    (tmp_path / "t.prototxt").write_text('train_net: "net.prototxt" base_lr: 0.1 test_iter: 5 lr_policy: "fixed" '
                                         'test_interval: 10')
    with pytest.raises(SolverError, match="test_iter must be specified for each test network"):
        jcaffe.get_solver(str(tmp_path / "t.prototxt"))
    (tmp_path / "u.prototxt").write_text('base_lr: 0.1 lr_policy: "fixed"')
    with pytest.raises(SolverError, match="must specify exactly one train net"):
        jcaffe.get_solver(str(tmp_path / "u.prototxt"))


SEED_NET = """
name: "seed"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "solver_layers" layer: "ClassFeeder" param_str: "32" } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "onehot" type: "Python" bottom: "label" top: "onehot"
  python_param { module: "one_hot" layer: "OneHot" param_str: "4" } }
layer { name: "loss" type: "Python" bottom: "ip2" bottom: "onehot" top: "loss"
  python_param { module: "euclidean_loss" layer: "EuclideanLossLayer" } loss_weight: 1 }
"""


def test_seed_scenario_python_euclidean_loss_with_one_hot_trains(monkeypatch):
    """The issue's seed scenario on an MLP (no Convolution needed): a numpy EuclideanLoss
    Python layer in place of SoftmaxWithLoss, labels turned one-hot by a Python layer."""
    examples = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "python_layers")
    if not os.path.exists(os.path.join(examples, "one_hot.py")):
        pytest.skip("examples/python_layers not present")
    monkeypatch.syspath_prepend(examples)
    param = caffe_pb2.SolverParameter()
    text_format.Parse('type: "SGD" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" '
                      'random_seed: 1 average_loss: 10', param)
    text_format.Parse(SEED_NET, param.net_param)
    solver = jcaffe.get_solver(param)
    assert not solver._can_fuse()            # host layers: the pycaffe-style path
    solver.step(10)
    first = solver.smoothed_loss
    solver.step(150)
    assert solver.smoothed_loss < 0.5 * first, (first, solver.smoothed_loss)


LENET_SEED_NET = """
name: "LeNet-seed"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "solver_layers" layer: "DigitPatternFeeder" param_str: "16" } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
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
  inner_product_param { num_output: 500 weight_filler { type: "xavier" }
    bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "xavier" }
    bias_filler { type: "constant" } } }
layer { name: "onehot" type: "Python" bottom: "label" top: "onehot"
  python_param { module: "one_hot" layer: "OneHot" param_str: "10" } }
layer { name: "loss" type: "Python" bottom: "ip2" bottom: "onehot" top: "loss"
  python_param { module: "euclidean_loss" layer: "EuclideanLossLayer" } loss_weight: 1 }
"""


def test_seed_scenario_on_lenet(monkeypatch):
    """The seed scenario as users hit it: LeNet with SoftmaxWithLoss replaced by the numpy
    EuclideanLoss Python layer fed by a one-hot Python layer. The loss layer's backward
    runs (it is under the loss and above learnable layers), conv1's weights move, and the
    loss falls."""
    examples = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "python_layers")
    monkeypatch.syspath_prepend(examples)
    param = caffe_pb2.SolverParameter()
    text_format.Parse('type: "SGD" base_lr: 0.002 momentum: 0.9 lr_policy: "fixed" '
                      'random_seed: 1 average_loss: 10', param)
    text_format.Parse(LENET_SEED_NET, param.net_param)
    solver = jcaffe.get_solver(param)
    net = solver.net
    assert net.layer_need_backward["loss"]
    assert not net.layer_need_backward["onehot"]
    w0 = net.params["conv1"][0].data.copy()
    solver.step(10)
    first = solver.smoothed_loss
    solver.step(60)
    assert solver.smoothed_loss < 0.5 * first, (first, solver.smoothed_loss)
    assert not np.allclose(net.params["conv1"][0].data, w0)


METRIC_NET = """
name: "metric"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "solver_layers" layer: "ClassFeeder" param_str: "16" } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Python" bottom: "ip2" bottom: "label" top: "acc"
  python_param { module: "solver_layers" layer: "ArgmaxAccuracy" } }
"""


def test_python_metric_at_the_end_runs_after_one_fused_call(monkeypatch):
    """A numpy metric at the end of the net (no params, no loss weight, no backward,
    its top read by nothing compiled) runs on the host after the one call, on the same
    scores Caffe's forward gives it each iteration; its backward is never called."""
    from jcaffe.engine import Segment
    solver_text = 'type: "SGD" lr_policy: "fixed" base_lr: 0.1 momentum: 0.9 random_seed: 3'
    fused = text_solver(solver_text, METRIC_NET)
    host, run, tail = fused._fused_plan()
    assert [s.layer.name for s in host] == ["data"] and [s.layer.name for s in tail] == ["acc"]
    assert fused.net.explain().training_step == (
        "one compiled call per iteration (forward, backward and update); host data layers "
        "run first: 'data'; host layers at the end run after it, on its blobs: 'acc'")
    compiled = []
    for name in ("run_forward", "run_backward"):
        monkeypatch.setattr(Segment, name, lambda *a, **k: compiled.append(1))
    fused.step(4)
    assert not compiled         # no layer-by-layer forward or backward
    monkeypatch.undo()
    plain = text_solver(solver_text, METRIC_NET)
    plain.fuse_step = False
    plain.step(4)
    seen = [s.layer.seen for s in (fused.net._slots[-1], plain.net._slots[-1])]
    assert len(seen[0]) == len(seen[1]) == 4
    for a, b in zip(*seen):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert fused.net.blobs["acc"].data[0] == plain.net.blobs["acc"].data[0]
    np.testing.assert_allclose(seen[0][-1], fused.net.blobs["ip2"].data)
    for pa, pb in zip(fused.net.learnable_params, plain.net.learnable_params):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-5, atol=1e-7)
    with LogLines() as lines:
        fused.param.display = 1
        fused.step(1)
    assert any("Train net output #0: acc = %g" % fused.net.blobs["acc"].data[0] in l
               for l in lines.lines), lines.lines


def test_host_layers_after_compiled_ones_say_why_they_are_not_fused():
    """The rules around a host layer after the compiled layers, each with its reason."""
    solver_text = 'type: "SGD" lr_policy: "fixed" base_lr: 0.1 random_seed: 3'
    solver = text_solver(solver_text + " iter_size: 2", METRIC_NET)
    assert solver._plan_or_reason() == (
        None, "host layer 'acc' at the end of the net runs once per pass, and with "
        "iter_size 2 the passes run inside the one call")
    weighted = METRIC_NET.replace('layer: "ArgmaxAccuracy" }', 'layer: "ArgmaxAccuracy" } '
                                  'loss_weight: 1')
    assert text_solver(solver_text, weighted)._plan_or_reason()[1] == (
        "Python layer 'acc' (solver_layers.ArgmaxAccuracy) runs on the host between compiled "
        "segments (its tops have a loss weight); written as a jcaffe.JaxLayer "
        "(examples/python_layers/jax_layers.py) it would be compiled with the net")
    doubled = (FEEDER_NET % 2).replace(
        '\nlayer { name: "loss"', '\nlayer { name: "double" type: "Python" bottom: "ip" '
        'top: "ip2" python_param { module: "solver_layers" layer: "Doubler" } }'
        '\nlayer { name: "loss"', 1).replace('bottom: "ip" bottom: "y"', 'bottom: "ip2" bottom: "y"')
    reason = text_solver(solver_text, doubled)._plan_or_reason()[1]
    assert reason.startswith(
        "Python layer 'double' (solver_layers.Doubler) runs on the host between compiled "
        "segments (compiled layers come before it and read its tops: only host layers at the "
        "start of the net (data) or at its end (reading the step's blobs) run outside the one "
        "call)"), reason


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_apply_update_writes_params_history_and_values_in_place(kind):
    """apply_update() donates the params and the history, in the order of its results
    (so that each is written into its own buffer): its program copies no array and keeps
    no array as a temporary. Neither rule writes an update value of its own, so the
    diffs are not donated: SGD's value is its momentum, returned once (the diff after it
    shares the history's array); Adam's is computed from the new (m, v) when the diff is
    read. Every number is Caffe's ApplyUpdate."""
    from jcaffe.solver import UpdateValue
    solver = make_solver(p_text(SOLVERS[kind], kind))
    net = solver.net
    for _ in range(2):
        net.clear_param_diffs()
        net.forward()
        net.backward()
        before = [p.data.copy() for p in net.learnable_params]
        grads = [b.device_diff() for b in net._learnable]
        solver.apply_update()
        assert not any(g.is_deleted() for g in grads)
        if kind == "SGD":
            diffs, history = [b.device_diff() for b in net._learnable], solver._history_state()
            assert all(d is h for d, h in zip(diffs, history[1][0]))
        else:
            assert all(isinstance(b._diff._reorder, UpdateValue) for b in net._learnable)
        for p, b in zip(net.learnable_params, before):     # diff = update value
            np.testing.assert_allclose(b - p.data, p.diff, rtol=1e-5, atol=1e-7)
    args = ([b.device_data() for b in net._learnable], solver._history_state(),
            [jnp.array(b.device_diff(), copy=True) for b in net._learnable],
            np.float32(0.1), np.int32(2))
    compiled = solver._update_jit.lower(*args).compile()
    assert re.findall(r"= f32\[\d[^\]]*\]\S* copy\(", compiled.as_text()) == []
    assert compiled.memory_analysis().temp_size_in_bytes < 16     # (Adam: one scalar)


@pytest.mark.parametrize("kind,arrays", [("AdaGrad", 0), ("RMSProp", 0), ("AdaDelta", 1)])
def test_update_stores_new_history_and_value_once(kind, arrays, monkeypatch):
    """The rules whose update value is an array of its own and follows from the new
    history store both once (update_rules._stored): the param's own loop then reads the
    value. Compiled over one param of 2^18 floats, params, history and diff donated (a
    fused step's update, under engine.runtime_one), the update keeps ``arrays`` whole
    arrays as temporaries (AdaDelta's u, which its second history and its value both
    read), one fewer than XLA left to itself, and the new param is exactly the old one
    minus the value (Caffe's Update, data -= diff: left to itself, XLA recomputed the
    value inside the param's loop, a multiply-add rounded once, and 2% of AdaGrad's
    params differed by an ulp; AdaDelta's second history, from u computed once, is
    nearer Caffe's order too: 8.7 k against 63 k of 262 k elements off a float32 numpy
    reference)."""
    import jax
    from jcaffe import engine, update_rules, xla_options
    n = 1 << 18
    param = solver_param(p_text(SOLVERS[kind], kind), 4)

    def compiled():
        rule = update_rules.rule_for(param)
        _, update = update_rules.make_update(param, rule, [1.0], [1.0])

        def f(p, hist, g):
            with engine.runtime_one(p):
                return update.one(0, g, hist, p, jnp.float32(0.01), jnp.int32(3))
        fn = xla_options.jit(f, donate_argnums=(0, 1, 2))
        x = jax.ShapeDtypeStruct((n,), jnp.float32)
        return fn, fn.lower(x, [x] * rule.num_history, x).compile(), rule.num_history

    rng = np.random.RandomState(0)
    inputs = [rng.rand(n).astype(np.float32) for _ in range(4)]

    def run(fn, k):
        p, g, *hist = inputs[:2 + k]
        return [np.asarray(a) for a in jax.tree_util.tree_leaves(
            fn(jnp.array(p), [jnp.array(h) for h in hist], jnp.array(g)))]
    fn, stored, k = compiled()
    new_p, *new_hist, value = run(fn, k)
    assert stored.memory_analysis().temp_size_in_bytes < (arrays + 1) * 4 * n
    assert stored.memory_analysis().temp_size_in_bytes >= arrays * 4 * n
    np.testing.assert_array_equal(new_p, inputs[0] - value)     # Caffe's data -= diff
    monkeypatch.setattr(update_rules, "_stored", lambda x: x)
    fn, plain, _ = compiled()
    assert plain.memory_analysis().temp_size_in_bytes >= (arrays + 1) * 4 * n
    _, *plain_hist, plain_value = run(fn, k)
    for a, b in zip(new_hist + [value], plain_hist + [plain_value]):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "pycaffe"])
def test_adam_diffs_are_the_update_values_bit_for_bit(fuse):
    """An Adam update leaves each param diff as its value computed from the new (m, v)
    when read (jcaffe.solver.UpdateValue). It is the value the whole update computes
    from the same diffs, history and params, bit for bit (lr_mult 2 on the biases: the
    local rate is multiplied as the update multiplies it), at two iterations (the bias
    correction's t), and a step whose diffs nobody read leaves no stale value behind.
    ``fused``: the diffs come from a fused step; else from apply_update()."""
    import jax
    solver = make_solver(p_text(SOLVERS["Adam"], "Adam"), fuse=fuse)
    net = solver.net
    rng = np.random.RandomState(3)
    whole = jax.jit(lambda g, h, p, rate, t: solver._update(g, h, p, rate, t)[2])
    for it in range(3):
        if fuse:
            if it == 1:
                solver.step(1)      # diffs never read: the next step must not need them
                continue
            grads_net = make_solver(p_text(SOLVERS["Adam"], "Adam"), fuse=False)
        params = [jnp.array(b.device_data(), copy=True) for b in net._learnable]
        history = jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True),
                                         solver._layout.unpack(solver._history_state()))
        if fuse:        # the fused step's diffs: a pycaffe backward at the same params
            for b, p in zip(grads_net.net._learnable, params):
                b.data[...] = np.asarray(p)
            grads_net.net.forward()
            grads_net.net.backward()
            grads = [jnp.asarray(b.diff.copy()) for b in grads_net.net._learnable]
            solver.step(1)
        else:
            grads = [jnp.asarray(rng.randn(*b.shape).astype(np.float32)) for b in net._learnable]
            for b, g in zip(net._learnable, grads):
                b.diff[...] = np.asarray(g)
            solver.apply_update()
        rate = np.float32(SOLVERS["Adam"]["base_lr"])
        expected = whole(grads, history, params, rate, np.int32(solver.iter - 1))
        for b, value in zip(net._learnable, expected):
            if fuse:    # (the fused step's own diffs differ from the pycaffe ones in ulps)
                np.testing.assert_allclose(b.diff, np.asarray(value), rtol=1e-5, atol=1e-9)
            else:
                np.testing.assert_array_equal(b.diff, np.asarray(value))
    assert [float(m) for m in solver._update.lr_mults] == [1.0, 2.0] * (len(net._learnable) // 2)


def test_cleared_param_diffs_are_zeros_that_no_call_computes(monkeypatch):
    """clear_param_diffs() (Caffe's ClearParamDiffs) leaves each diff as zeros made when
    read. A user's net.backward() after it gives the same numbers as from zero arrays,
    and a second backward still adds to the first's. A solver's layer-by-layer
    iteration, which clears them itself, passes none to its backward programs: they
    start from zeros of their own; its trajectory is the fused step's."""
    def grads(solver, clear):
        net = solver.net
        net.forward()
        if clear:
            net.clear_param_diffs()
            assert all(b.diff_is_zeros() for b in net._learnable)
        else:
            for p in net.learnable_params:
                p.diff[...] = 0
            assert not any(b.diff_is_zeros() for b in net._learnable)
        net.backward()
        first = [p.diff.copy() for p in net.learnable_params]
        net.backward()
        return first, [p.diff.copy() for p in net.learnable_params]
    (a1, a2), (b1, b2) = (grads(make_solver("base_lr: 0.1"), clear) for clear in (True, False))
    for x1, x2, y1, y2 in zip(a1, a2, b1, b2):
        assert np.abs(x1).sum() > 0
        np.testing.assert_array_equal(x1, y1)
        np.testing.assert_allclose(x2, 2 * x1, rtol=1e-6)
        np.testing.assert_array_equal(x2, y2)
    blob = make_solver("base_lr: 0.1").net.learnable_params[0]
    blob.clear_diff()
    np.testing.assert_array_equal(blob.diff, np.zeros(blob.shape))

    text = p_text(SOLVERS["SGD"], "SGD")
    plain, fused = make_solver(text, fuse=False), make_solver(text)
    plain.update_with_last_backward = False     # (as where two runs hold params)
    passed = calls_of(monkeypatch, engine.Segment, "run_backward",
                      lambda seg, params, data, top_diffs, saved, param_diffs: param_diffs)
    plain.step(3)
    fused.step(3)
    assert len(passed) == 3 and all(d is None for diffs in passed for d in diffs.values())
    for pa, pb in zip(plain.net.learnable_params, fused.net.learnable_params):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(pa.diff, pb.diff, rtol=1e-5, atol=1e-7)
