"""No recompilation in steady state: with unchanged shapes, the first training step
compiles and the next 100 compile nothing (counted with jax.monitoring's compile
events, which fire for every jit trace and every XLA backend compilation, including
the small ops dispatched outside a jit)."""
import jax
import numpy as np
import pytest

import jcaffe
from jcaffe.proto import caffe_pb2
from google.protobuf import text_format
from netutil import count_compilations

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 2 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 group: 2
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

def _solver(momentum_type="SGD"):
    sp = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=5e-4,
                                   lr_policy="step", gamma=0.5, stepsize=30, max_iter=1000,
                                   display=0, random_seed=3, type=momentum_type)
    text_format.Parse(NET, sp.net_param)
    solver = jcaffe.get_solver(sp)
    rng = np.random.default_rng(0)
    solver.net.blobs["data"].data[...] = rng.standard_normal((4, 2, 8, 8))
    solver.net.blobs["label"].data[...] = rng.integers(0, 3, 4)
    return solver


@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
def test_fused_steps_compile_once(solver_type):
    solver = _solver(solver_type)
    with count_compilations() as first:
        solver.step(1)
        jax.block_until_ready(solver.net.params["ip"][0].device_data())
    assert any(e.endswith("backend_compile_duration") for e in first)
    with count_compilations() as later:
        solver.step(100)        # the lr changes (step policy), the key count grows
        loss = solver.smoothed_loss
    assert later == [], "recompiled in steady state: %s" % later
    assert np.isfinite(loss) and solver.iter == 101


def test_pycaffe_loop_compiles_once():
    solver = _solver()
    net = solver.net
    net.forward()
    net.backward()
    solver.apply_update()
    with count_compilations() as later:
        for _ in range(20):
            net.forward()
            net.backward()
            solver.apply_update()
        net.blobs["loss"].data.copy()
    assert later == [], "recompiled in steady state: %s" % later


def test_reading_adam_diffs_compiles_once():
    """Adam's param diffs are its update values computed when read (jcaffe.solver.
    UpdateValue): after the first read of each shape, reading every diff after every
    step (the lr changes with the step policy, the bias correction with the iteration)
    compiles nothing."""
    solver = _solver("Adam")
    solver.step(1)
    first = [p.diff.copy() for p in solver.net.learnable_params]
    assert all(np.any(d != 0) for d in first)
    with count_compilations() as later:
        for _ in range(40):
            solver.step(1)
            diffs = [p.diff.copy() for p in solver.net.learnable_params]
    assert later == [], "recompiled in steady state: %s" % later
    assert all(np.all(np.isfinite(d)) for d in diffs)
