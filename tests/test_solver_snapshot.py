"""Snapshots: file names, SolverState wire format, restore continuing the same trajectory."""
import os

import numpy as np
import pytest
from google.protobuf import text_format

import jcaffe
from jcaffe import protoio
from jcaffe.errors import JcaffeError, ProtoFileError, SolverError
from jcaffe.proto import caffe_pb2
from netutil import LogLines
from test_solver import DROPOUT_NET


def make(tmp_path, kind="Adam", fuse=True, **extra):
    param = caffe_pb2.SolverParameter()
    text_format.Parse('type: "%s" base_lr: 0.01 momentum: 0.9 lr_policy: "step" gamma: 0.5 '
                      'stepsize: 2 weight_decay: 0.001 random_seed: 7 max_iter: 6 iter_size: 2'
                      % kind, param)
    text_format.Parse(DROPOUT_NET, param.net_param)
    param.snapshot_prefix = str(tmp_path / "drop")
    for k, v in extra.items():
        setattr(param, k, v)
    solver = jcaffe.get_solver(param)
    solver.fuse_step = fuse
    return solver


@pytest.mark.parametrize("kind, fuse", [("Adam", True), ("SGD", False)])
def test_snapshot_restore_continues_the_same_trajectory(tmp_path, kind, fuse):
    straight = make(tmp_path, kind, fuse)
    straight.step(6)

    first = make(tmp_path, kind, fuse)
    first.step(3)
    with LogLines() as lines:
        model, state = first.snapshot()
    assert model == str(tmp_path / "drop_iter_3.caffemodel")
    assert state == str(tmp_path / "drop_iter_3.solverstate")
    assert "Snapshotting to binary proto file %s" % model in lines.lines
    assert "Snapshotting solver state to binary proto file %s" % state in lines.lines

    resumed = make(tmp_path, kind, fuse)
    resumed.restore(state)
    assert resumed.iter == 3 and resumed.current_step == first.current_step
    resumed.step(3)
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-8)
    for a, b in zip(straight.history, resumed.history):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_solverstate_parses_as_caffe_message(tmp_path):
    solver = make(tmp_path, "Adam")
    solver.step(2)
    model, state_file = solver.snapshot()
    state = caffe_pb2.SolverState()
    with open(state_file, "rb") as f:
        state.ParseFromString(f.read())
    params = solver.net.learnable_params
    assert state.iter == 2 and state.learned_net == model and state.current_step == 0
    assert len(state.history) == 2 * len(params)          # Adam: all m, then all v
    for i, blob in enumerate(params):
        assert list(state.history[i].shape.dim) == list(blob.shape)
        np.testing.assert_array_equal(protoio.blobproto_to_array(state.history[i]),
                                      solver.history[i])
    net = caffe_pb2.NetParameter()
    with open(model, "rb") as f:
        net.ParseFromString(f.read())
    ip1 = [l for l in net.layer if l.name == "ip1"][0]
    np.testing.assert_array_equal(protoio.blobproto_to_array(ip1.blobs[0]),
                                  solver.net.params["ip1"][0].data)


def test_hand_built_solverstate_restores(tmp_path):
    solver = make(tmp_path, "SGD", lr_policy="fixed")
    params = solver.net.learnable_params
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=b.shape).astype(np.float32) for b in params]
    history = [rng.normal(size=b.shape).astype(np.float32) for b in params]
    for blob, w in zip(params, weights):
        blob.data[...] = w
    solver.net.save(str(tmp_path / "w.caffemodel"))
    for blob in params:
        blob.data[...] = 0
    state = caffe_pb2.SolverState(iter=5, learned_net="w.caffemodel", current_step=0)
    for h in history:   # old-style 4-d legacy shape fields also restore
        state.history.add().CopyFrom(protoio.array_to_blobproto(h))
    protoio.write_binary(state, str(tmp_path / "hand.solverstate"))
    solver.restore(str(tmp_path / "hand.solverstate"))   # learned_net found beside the state
    assert solver.iter == 5
    for blob, w in zip(params, weights):
        np.testing.assert_array_equal(blob.data, w)
    for h, expected in zip(solver.history, history):
        np.testing.assert_array_equal(h, expected)


def test_restore_errors(tmp_path):
    solver = make(tmp_path, "Adam")
    with pytest.raises(ProtoFileError, match="cannot read"):
        solver.restore(str(tmp_path / "missing.solverstate"))
    (tmp_path / "junk.solverstate").write_bytes(b"\xff\xff\xff\xff garbage")
    with pytest.raises(ProtoFileError, match="not a valid binary caffe.SolverState"):
        solver.restore(str(tmp_path / "junk.solverstate"))
    protoio.write_binary(caffe_pb2.SolverState(iter=1), str(tmp_path / "short.solverstate"))
    with pytest.raises(SolverError, match="Incorrect length of history blobs"):
        solver.restore(str(tmp_path / "short.solverstate"))
    with pytest.raises(ProtoFileError, match="cannot open solver state as HDF5"):
        solver.restore(str(tmp_path / "x.solverstate.h5"))


def test_solve_snapshots_at_interval_and_after_train(tmp_path):
    solver = make(tmp_path, "SGD", snapshot=4, max_iter=6)
    solver.solve()
    names = sorted(os.listdir(tmp_path))
    assert names == ["drop_iter_4.caffemodel", "drop_iter_4.solverstate",
                     "drop_iter_6.caffemodel", "drop_iter_6.solverstate"]


def test_snapshot_prefix_not_writable(tmp_path):
    with pytest.raises(JcaffeError, match="Cannot write to snapshot prefix"):
        make(tmp_path, "SGD", snapshot=2, snapshot_prefix=str(tmp_path / "no" / "such" / "dir"))


@pytest.mark.parametrize("kind", ["Adam", "SGD"])
def test_hdf5_snapshots_restore_the_same_trajectory(tmp_path, kind):
    """snapshot_format: HDF5 writes Caffe's layout (data/<layer>/<k>, iter, current_step,
    learned_net, history/<i>) and restores to the same trajectory."""
    h5py = pytest.importorskip("h5py")
    straight = make(tmp_path, kind)
    straight.step(6)
    first = make(tmp_path, kind, snapshot_format=caffe_pb2.SolverParameter.HDF5)
    first.step(3)
    with LogLines() as lines:
        model, state = first.snapshot()
    assert model == str(tmp_path / "drop_iter_3.caffemodel.h5")
    assert state == str(tmp_path / "drop_iter_3.solverstate.h5")
    assert "Snapshotting solver state to HDF5 file %s" % state in lines.lines
    with h5py.File(model, "r") as f:
        layers = [s.layer for s in first.net._slots if s.layer.blobs]
        for layer in layers:
            for k, blob in enumerate(layer.blobs):
                np.testing.assert_array_equal(f["data"][layer.name][str(k)][()], blob.data)
    with h5py.File(state, "r") as f:
        assert int(f["iter"][()]) == 3 and f["learned_net"][()].decode() == model
        assert len(f["history"]) == len(first.history)
    resumed = make(tmp_path, kind)
    resumed.restore(state)
    resumed.step(3)
    for a, b in zip(straight.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-8)


def test_net_hdf5_round_trip_and_copy_from_detects_hdf5(tmp_path):
    pytest.importorskip("h5py")
    solver = make(tmp_path, "SGD")
    solver.step(2)
    net = solver.net
    path = str(tmp_path / "w.caffemodel.h5")
    net.save_hdf5(path, write_diff=True)
    other = make(tmp_path, "SGD").net
    assert not np.allclose(other.learnable_params[0].data, net.learnable_params[0].data)
    other.copy_from(path)                        # recognized by its HDF5 signature
    for a, b in zip(net.learnable_params, other.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    third = make(tmp_path, "SGD").net
    third.load_hdf5(path)
    np.testing.assert_array_equal(third.learnable_params[0].data, net.learnable_params[0].data)


SHARED_NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "b" }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "c" param { name: "w" } param { name: "b" }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
"""


def test_hdf5_shared_params_written_by_owner_only_and_shape_errors(tmp_path):
    h5py = pytest.importorskip("h5py")
    param = caffe_pb2.NetParameter()
    text_format.Parse(SHARED_NET, param)
    net = jcaffe.Net(param, jcaffe.TEST)
    path = str(tmp_path / "shared.h5")
    net.save_hdf5(path)
    with h5py.File(path, "r") as f:
        assert sorted(f["data"]["a"]) == ["0", "1"] and len(f["data"]["b"]) == 0
    again = jcaffe.Net(param, jcaffe.TEST)
    again.load_hdf5(path)
    np.testing.assert_array_equal(again.params["b"][0].data, net.params["a"][0].data)
    with h5py.File(path, "r+") as f:
        del f["data"]["a"]["0"]
        f["data"]["a"].create_dataset("0", data=np.zeros((4, 3)))
    with pytest.raises(jcaffe.errors.ShapeMismatchError, match="param 0 .* layer 'a'.*4 3"):
        again.load_hdf5(path)
