"""The pycaffe module surface: top-level names, Timer, seeds, layer lists, Python layers with params."""
import numpy as np

import jcaffe
from netutil import make_net


def test_top_level_names():
    for name in ["Net", "Layer", "Blob", "TRAIN", "TEST", "__version__", "set_mode_cpu", "set_mode_gpu",
                 "set_device", "set_random_seed", "layer_type_list", "init_log", "log", "Timer",
                 "solver_count", "solver_rank", "set_solver_count", "set_solver_rank", "has_nccl",
                 "NetSpec", "layers", "params", "to_proto"]:
        assert hasattr(jcaffe, name), name
    assert jcaffe.has_nccl() is False
    jcaffe.set_solver_count(2)
    assert jcaffe.solver_count() == 2
    jcaffe.set_solver_count(1)
    jcaffe.set_mode_cpu()


# What BVLC pycaffe's caffe/__init__.py exports, and its modules users import by name.
PYCAFFE_EXPORTS = [
    "Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
    "AdamSolver", "Timer", "init_log", "log", "set_mode_cpu", "set_mode_gpu", "set_device", "Layer",
    "get_solver", "layer_type_list", "set_random_seed", "solver_count", "set_solver_count",
    "solver_rank", "set_solver_rank", "set_multiprocess", "has_nccl", "__version__", "TRAIN",
    "TEST", "Classifier", "Detector", "io", "layers", "params", "NetSpec", "to_proto", "NCCL"]
PYCAFFE_MODULES = ["io", "draw", "net_spec", "classifier", "detector", "coord_map", "proto.caffe_pb2"]


def test_every_pycaffe_export_and_module_is_here():
    import importlib
    missing = [name for name in PYCAFFE_EXPORTS if not hasattr(jcaffe, name)]
    assert not missing, missing
    for module in PYCAFFE_MODULES:
        importlib.import_module("jcaffe." + module)


def test_layer_type_list_has_the_engine_layers():
    types = set(jcaffe.layer_type_list())
    assert {"Input", "DummyData", "Convolution", "Pooling", "InnerProduct", "ReLU", "TanH", "Sigmoid",
            "Softmax", "SoftmaxWithLoss", "EuclideanLoss", "Accuracy", "Split", "Concat", "Dropout",
            "LRN", "Flatten", "Python"} <= types


def test_timer_measures_milliseconds():
    t = jcaffe.Timer()
    t.start()
    sum(range(10000))
    t.stop()
    assert t.ms > 0


def test_same_seed_same_weights(tmp_path):
    text = """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
          inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }"""
    jcaffe.set_random_seed(3)
    a = make_net(tmp_path, text).params["ip"][0].data.copy()
    jcaffe.set_random_seed(3)
    b = make_net(tmp_path, text).params["ip"][0].data.copy()
    np.testing.assert_array_equal(a, b)


def test_python_layer_with_learnable_blob_gets_backward_and_param_str(tmp_path):
    net = make_net(tmp_path, """
        layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 3 dim: 2 } } }
        layer { name: "scale" type: "Python" bottom: "x" top: "y"
          python_param { module: "pylayers" layer: "ScaleByParam" param_str: "1.5" } }
        layer { name: "loss" type: "Python" bottom: "y" bottom: "t" top: "loss" loss_weight: 1
          python_param { module: "pylayers" layer: "EuclideanLossLayer" } }""")
    layer = net.layer_dict["scale"]
    assert layer.param_str == "1.5" and layer.type == "Python" and layer.phase == jcaffe.TRAIN
    assert net.layer_need_backward["scale"] and net.layer_need_backward["loss"]
    assert net.params["scale"][0].data[0] == 1.5
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    t = np.ones((3, 2), np.float32)
    out = net.forward(x=x, t=t)
    np.testing.assert_allclose(out["loss"], np.sum((1.5 * x - t) ** 2) / 3 / 2, rtol=1e-6)
    net.backward()
    np.testing.assert_allclose(net.params["scale"][0].diff[0], np.sum((1.5 * x - t) / 3 * x), rtol=1e-5)
    # The net's loss counts a Python loss layer only through its loss_weight.
    assert net.blob_loss_weights["loss"] == 1.0


def test_bvlc_train_py_with_one_gpu_runs_its_nccl_calls_as_nothing(tmp_path):
    """BVLC's python/train.py, one rank of it (its default --gpus 0): NCCL's uid, bcast,
    add_callback(nccl) and the layer-wise after_backward(nccl) do nothing with one
    solver, and the step stays one compiled call. With two solvers NCCL says to train
    in one process with devices=."""
    import pytest
    from jcaffe.errors import DeviceError
    from netutil import write_prototxt
    net = write_prototxt(tmp_path, """
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
          inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "ip" top: "loss" }""")
    proto = write_prototxt(tmp_path, 'net: "%s" base_lr: 0.1 lr_policy: "fixed" max_iter: 2 '
                           'display: 0' % net, "solver.prototxt")
    uid = jcaffe.NCCL.new_uid()
    jcaffe.set_solver_count(1)
    jcaffe.set_solver_rank(0)
    jcaffe.set_multiprocess(True)
    solver = jcaffe.SGDSolver(proto)
    nccl = jcaffe.NCCL(solver, uid)
    nccl.bcast()
    solver.add_callback(nccl)
    solver.net.after_backward(nccl)
    assert solver._can_fuse()
    solver.step(solver.param.max_iter)
    assert solver.iter == 2
    with pytest.raises(TypeError, match="two callables"):
        solver.add_callback(lambda: None)
    jcaffe.set_solver_count(2)
    try:
        with pytest.raises(DeviceError, match="jcaffe has no NCCL.*solver count 2, rank 0.*"
                                              "devices=N"):
            jcaffe.NCCL(solver, uid)
    finally:
        jcaffe.set_solver_count(1)
        jcaffe.set_multiprocess(False)


def test_pycaffes_own_internals_rebuild_its_properties(tmp_path):
    """pycaffe builds Net.blobs, inputs, outputs, top_names and bottom_names from
    _blob_names, _blobs, _inputs, _outputs, _top_ids(i) and _bottom_ids(i), which scripts
    walking a net's graph use too: the same rebuild gives jcaffe's properties."""
    net = make_net(tmp_path, """
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
          inner_product_param { num_output: 2 } }
        layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
        layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "ip" top: "loss"
          loss_weight: 2 }""")
    names = net._blob_names
    assert dict(zip(names, net._blobs)) == dict(net.blobs)
    assert [names[i] for i in net._inputs] == net.inputs == ["x"]
    assert [names[i] for i in net._outputs] == net.outputs == ["loss"]
    for i, layer in enumerate(net._layer_names):
        assert [names[j] for j in net._top_ids(i)] == net.top_names[layer]
        assert [names[j] for j in net._bottom_ids(i)] == net.bottom_names[layer]
    assert net._top_ids(2) == net._bottom_ids(2)        # in place: one blob
    assert dict(zip(names, net._blob_loss_weights))["loss"] == 2
