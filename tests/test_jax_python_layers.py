"""Python layers written in JAX: a ``type: "Python"`` layer whose class is a
jcaffe.JaxLayer is compiled with the net (a solver's step stays one fused call), trains
as the numpy layer it replaces, is checked by gradcheck like a built-in layer, and its
errors name it."""
import os

import numpy as np
import pytest
from google.protobuf import text_format

import gradcheck
import jcaffe
from jcaffe.errors import PythonLayerError, ShapeMismatchError
from jcaffe.proto import caffe_pb2

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "python_layers")

TANH_NET = """
name: "tanh"
layer { name: "x" type: "Input" top: "x" top: "y"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "tanh" type: "Python" bottom: "ip" top: "t"
  python_param { module: "pylayers" layer: "%s" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "t" bottom: "y" top: "loss" }
"""


def tanh_solver(layer):
    param = caffe_pb2.SolverParameter()
    text_format.Parse('type: "SGD" base_lr: 0.2 momentum: 0.9 lr_policy: "fixed" '
                      'random_seed: 4', param)
    text_format.Parse(TANH_NET % layer, param.net_param)
    solver = jcaffe.get_solver(param)
    rng = np.random.default_rng(0)
    solver.net.blobs["x"].data[...] = rng.normal(size=(4, 3))
    solver.net.blobs["y"].data[...] = rng.normal(size=(4, 2)) * 0.5
    return solver


def test_a_jax_python_layer_is_compiled_and_trains_as_its_numpy_twin():
    compiled, host = tanh_solver("CompiledScaledTanh"), tanh_solver("JaxScaledTanh")
    layer = compiled.net.layers[2]
    assert layer.type == "Python" and not layer.is_host
    assert layer.python_class == "pylayers.CompiledScaledTanh"
    assert compiled._can_fuse() and not host._can_fuse()
    compiled.step(4)
    host.step(4)
    for a, b in zip(compiled.net.learnable_params, host.net.learnable_params):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)
    assert compiled.net.params["tanh"][0].data[0] != 1.5       # its own param learned
    np.testing.assert_allclose(compiled.net.blobs["loss"].data, host.net.blobs["loss"].data,
                               rtol=1e-5)


def test_the_example_jax_loss_layers_train_as_the_numpy_ones(monkeypatch):
    monkeypatch.syspath_prepend(EXAMPLES)
    net = """
name: "onehot"
layer { name: "x" type: "Input" top: "x" top: "label"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "onehot" type: "Python" bottom: "label" top: "onehot"
  python_param { module: "%s" layer: "OneHot" param_str: "5" } }
layer { name: "loss" type: "Python" bottom: "ip" bottom: "onehot" top: "loss" loss_weight: 1
  python_param { module: "%s" layer: "%s" } }
"""
    out = {}
    for kind, modules in (("jax", ("jax_layers", "jax_layers", "EuclideanLoss")),
                          ("numpy", ("one_hot", "euclidean_loss", "EuclideanLossLayer"))):
        param = caffe_pb2.SolverParameter()
        text_format.Parse('type: "SGD" base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" '
                          'random_seed: 3', param)
        text_format.Parse(net % modules, param.net_param)
        solver = jcaffe.get_solver(param)
        assert solver._can_fuse() == (kind == "jax")
        solver.net.blobs["x"].data[...] = np.random.default_rng(0).normal(size=(4, 3))
        solver.net.blobs["label"].data[...] = [0, 1, 4, 2]
        solver.step(5)
        np.testing.assert_array_equal(solver.net.blobs["onehot"].data,
                                      np.eye(5)[[0, 1, 4, 2]])
        out[kind] = [b.data.copy() for b in solver.net.learnable_params]
        out[kind].append(float(solver.net.blobs["loss"].data.ravel()[0]))   # (1,) and ()
    for a, b in zip(out["jax"], out["numpy"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_gradcheck_checks_a_jax_python_layer_as_a_built_in_one():
    assert gradcheck.check_python_layer("pylayers.CompiledScaledTanh", [(3, 4)]).ok
    bad = gradcheck.check_python_layer("pylayers.CompiledScaledTanhWrongGrad", [(3, 4)])
    assert not bad.ok
    assert [c.name for c in bad.checks if not c.ok] == ["bottom 0"]    # the param's is right
    snippet = 'type: "Python" python_param { module: "pylayers" layer: "CompiledScaledTanh" }'
    assert gradcheck.check_layer(snippet, [(2, 3)]).ok
    loss = os.path.join(EXAMPLES, "jax_layers.py") + ":EuclideanLoss"
    assert gradcheck.check_python_layer(loss, [(4, 3), (4, 3)]).ok


def test_errors_in_a_jax_python_layer_name_it():
    solver = tanh_solver("CompiledRaises")
    with pytest.raises(ValueError, match="boom") as info:
        solver.step(1)
    assert "(in forward() of Python layer 'tanh', pylayers.CompiledRaises)" in info.value.__notes__
    solver = tanh_solver("CompiledWrongTopShape")
    with pytest.raises(ShapeMismatchError, match=r"Python layer 'tanh' \(pylayers.CompiledWrong"
                       r"TopShape\): forward\(\) returned top 't' of shape 4 1 \(4\), but its "
                       r"reshape\(\) gave 4 2 \(8\)"):
        solver.net.forward()
    with pytest.raises(PythonLayerError, match="must subclass jcaffe.Layer .* or jcaffe.JaxLayer"):
        tanh_solver("NeitherLayerKind")


def test_explain_names_a_jax_python_layer_and_its_backward_trap():
    """explain() treats a Python layer written in JAX as a Python layer: its class shown,
    and the trap of a backward that never runs (nothing learnable below it) reported."""
    report = tanh_solver("CompiledScaledTanh").net.explain()
    rep = next(r for r in report.layers if r.name == "tanh")
    assert rep.python_class == "pylayers.CompiledScaledTanh" and rep.needs_backward
    param = caffe_pb2.NetParameter()
    text_format.Parse((TANH_NET % "CompiledScaledTanh").replace(
        'python_param { module: "pylayers" layer: "CompiledScaledTanh" }',
        'python_param { module: "pylayers" layer: "CompiledScaledTanh" } param { lr_mult: 0 }'
    ).replace('top: "ip"\n', 'top: "ip" param { lr_mult: 0 } param { lr_mult: 0 }\n'), param)
    report = jcaffe.Net(param, jcaffe.TRAIN).explain()
    assert [t.layer for t in report.warnings if t.kind == "python-backward-never-runs"] == ["tanh"]


def test_explain_says_how_a_solver_iteration_runs():
    """explain() of a TRAIN net says whether a solver's iteration is one compiled call,
    and if not, which layer keeps it from one (the solver's log line)."""
    def step_of(layer, phase=jcaffe.TRAIN):
        param = caffe_pb2.NetParameter()
        text_format.Parse(TANH_NET % layer, param)
        return jcaffe.Net(param, phase).explain()
    compiled = step_of("CompiledScaledTanh")
    assert compiled.training_step == ("one compiled call per iteration (forward, backward "
                                      "and update)")
    assert "training step: one compiled call" in str(compiled)
    host = step_of("JaxScaledTanh").training_step
    assert host.startswith("layer by layer (compiled segments and host layers called in turn): "
                           "Python layer 'tanh' (pylayers.JaxScaledTanh) runs on the host")
    assert step_of("CompiledScaledTanh", jcaffe.TEST).training_step is None
    feeder = caffe_pb2.NetParameter()
    text_format.Parse('name: "f" layer { name: "data" type: "Python" top: "x" top: "y" '
                      'python_param { module: "solver_layers" layer: "BatchFeeder" '
                      'param_str: "2" } } layer { name: "ip" type: "InnerProduct" bottom: "x" '
                      'top: "ip" inner_product_param { num_output: 2 } } layer { name: "loss" '
                      'type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }', feeder)
    assert jcaffe.Net(feeder, jcaffe.TRAIN).explain().training_step.endswith(
        "; host data layers run first: 'data'")
