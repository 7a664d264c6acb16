"""Slim forwards: a forward that no backward follows returns only the blobs read
outside it, and every other blob it writes is computed when first read
(jcaffe.engine.PendingForward). What a user reads must be exactly what a full
forward gives, whatever happened in between."""
import numpy as np
import pytest
from google.protobuf import text_format

import jcaffe
from jcaffe import engine
from jcaffe.proto import caffe_pb2
from netutil import calls_of, count_compilations

DEPLOY = """
name: "deploy"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 3 dim: 2 dim: 9 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""

INTERMEDIATE = ("conv", "pool", "ip")


def _net(text=DEPLOY, phase=jcaffe.TEST):
    param = caffe_pb2.NetParameter()
    text_format.Parse(text, param)
    return jcaffe.Net(param, phase)


def _reference(net, x):
    """Every blob of a full forward of a fresh net holding ``net``'s current weights."""
    ref = _net()
    for name, blobs in net.params.items():
        for mine, theirs in zip(ref.params[name], blobs):
            mine.data[...] = theirs.host_data()   # read-only: keeps the device copy current
    ref.blobs["data"].data[...] = x
    ref.forward()
    return {name: ref.blobs[name].data.copy() for name in ref.blobs}


def _inputs(seed):
    return np.random.default_rng(seed).standard_normal((3, 2, 9, 9)).astype(np.float32)


def _pending(net, name):
    return net.blobs[name]._data.pending is not None


def test_slim_forward_leaves_intermediates_pending_and_computes_them_when_read():
    net = _net()
    xs = [_inputs(s) for s in range(4)]
    net.forward(data=xs[0])                  # first forward: every blob returned
    assert not any(_pending(net, b) for b in INTERMEDIATE)
    out = net.forward(data=xs[1])            # slim: only the output
    assert all(_pending(net, b) for b in INTERMEDIATE)
    assert not _pending(net, "prob")
    ref = _reference(net, xs[1])
    np.testing.assert_allclose(out["prob"], ref["prob"], rtol=1e-6)
    np.testing.assert_allclose(net.blobs["pool"].data, ref["pool"], rtol=1e-6, atol=1e-7)
    # one read computes all of that forward's pending blobs
    assert not any(_pending(net, b) for b in INTERMEDIATE)
    np.testing.assert_allclose(net.blobs["conv"].data, ref["conv"], rtol=1e-6, atol=1e-7)
    # the blob read is returned directly from now on; the others stay pending
    net.forward(data=xs[2])
    assert not _pending(net, "pool")
    assert _pending(net, "conv") and _pending(net, "ip")
    ref = _reference(net, xs[2])
    for name in INTERMEDIATE + ("prob",):
        np.testing.assert_allclose(net.blobs[name].data, ref[name], rtol=1e-6, atol=1e-7)


def test_a_blob_read_after_the_first_forward_is_returned_by_the_first_slim_one(monkeypatch):
    """Feature extraction (read an intermediate blob after every forward): the read after
    the first, full forward is noted, so the second forward's slim program returns that
    blob; no read of a pending blob runs the full program again. Blobs nobody read stay
    pending, and a device read counts as a read."""
    full = calls_of(monkeypatch, engine.Segment, "run_full", lambda seg, *args: seg)
    net = _net()
    xs = [_inputs(s) for s in range(3)]
    net.forward(data=xs[0])
    net.blobs["pool"].data                       # read (host)
    net.blobs["ip"].device_data()                # read (device)
    for x in xs[1:]:
        net.forward(data=x)
        assert not _pending(net, "pool") and not _pending(net, "ip") and _pending(net, "conv")
        ref = _reference(net, x)
        np.testing.assert_allclose(net.blobs["pool"].data, ref["pool"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(net.blobs["ip"].data, ref["ip"], rtol=1e-6, atol=1e-7)
    assert [s for s in full if s in net._segments.values()] == full[:1]   # the first forward's


def test_pending_blob_is_what_its_forward_computed_after_weights_and_input_change():
    net = _net()
    x = _inputs(1)
    net.forward(data=_inputs(0))
    net.forward(data=x)
    ref = _reference(net, x)
    assert _pending(net, "conv")
    net.params["conv"][0].data[...] *= -2.0      # the user edits weights and input
    net.blobs["data"].data[...] = 0.0
    np.testing.assert_allclose(net.blobs["conv"].data, ref["conv"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net.blobs["ip"].data, ref["ip"], rtol=1e-6, atol=1e-7)


def test_forward_blobs_argument_returns_them_without_pending():
    net = _net()
    net.forward(data=_inputs(0))
    x = _inputs(1)
    out = net.forward(blobs=["ip"], data=x)
    assert not _pending(net, "ip")
    np.testing.assert_allclose(out["ip"], _reference(net, x)["ip"], rtol=1e-6, atol=1e-7)


def test_writing_or_reshaping_a_pending_blob():
    net = _net()
    net.forward(data=_inputs(0))
    x = _inputs(1)
    net.forward(data=x)
    ref = _reference(net, x)
    net.blobs["conv"].data[...] = 7.0            # a write replaces the pending value
    assert not _pending(net, "conv")
    np.testing.assert_array_equal(net.blobs["conv"].data, 7.0)
    np.testing.assert_allclose(net.blobs["pool"].data, ref["pool"], rtol=1e-6, atol=1e-7)
    net.forward(data=x)
    assert _pending(net, "ip")
    shape = net.blobs["ip"].shape
    net.blobs["ip"].reshape(shape[::-1])         # same count: Caffe keeps the content
    np.testing.assert_allclose(net.blobs["ip"].data.reshape(shape), ref["ip"], rtol=1e-6, atol=1e-7)


def test_later_layers_read_pending_free_bottoms_across_a_python_layer():
    """A blob consumed by a layer outside the compiled run is always returned."""
    text = DEPLOY.replace(
        'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }',
        'layer { name: "py" type: "Python" bottom: "ip" top: "py" '
        'python_param { module: "pylayers" layer: "Identity" } }\n'
        'layer { name: "prob" type: "Softmax" bottom: "py" top: "prob" }')
    net = _net(text)
    for seed in range(3):
        x = _inputs(seed)
        out = net.forward(data=x)
        assert not _pending(net, "ip")
        ref = _reference(net, x)
        np.testing.assert_allclose(out["prob"], ref["prob"], rtol=1e-6, atol=1e-7)


def test_nets_that_need_backward_return_every_blob():
    text = DEPLOY.replace('input_param { shape { dim: 3 dim: 2 dim: 9 dim: 9 } } }',
                          'input_param { shape { dim: 3 dim: 2 dim: 9 dim: 9 } } }\n'
                          'force_backward: true')
    net = _net(text)
    for seed in range(3):
        net.forward(data=_inputs(seed))
        assert not any(_pending(net, b) for b in INTERMEDIATE)
    net.blobs["prob"].diff[...] = 1.0
    net.backward()


def test_test_net_pending_blobs_survive_training_steps_that_donate_the_weights():
    """The fused step donates the params a test net's pending forward still holds:
    the solver computes those blobs first, so they keep the test-time values."""
    train = DEPLOY.replace('input_param { shape { dim: 3 dim: 2 dim: 9 dim: 9 } } }',
                           'input_param { shape { dim: 3 dim: 2 dim: 9 dim: 9 } } }\n'
                           'layer { name: "label" type: "Input" top: "label" '
                           'input_param { shape { dim: 3 } } }') \
        .replace('layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }',
                 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" '
                 'top: "loss" }')
    sp = caffe_pb2.SolverParameter(base_lr=0.5, momentum=0.9, max_iter=100, display=0, lr_policy="fixed",
                                   random_seed=1)
    text_format.Parse(train, sp.net_param)
    solver = jcaffe.get_solver(sp)
    solver.net.blobs["data"].data[...] = _inputs(5)
    solver.net.blobs["label"].data[...] = [0, 1, 2]
    test = _net()
    test.share_with(solver.net)
    solver.step(1)
    x = _inputs(1)
    test.forward(data=_inputs(0))
    test.forward(data=x)
    assert _pending(test, "conv")
    ref = _reference(test, x)
    w0 = test.params["conv"][0].host_data().copy()
    solver.step(2)
    assert not np.allclose(test.params["conv"][0].host_data(), w0)
    np.testing.assert_allclose(test.blobs["conv"].data, ref["conv"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(test.blobs["ip"].data, ref["ip"], rtol=1e-6, atol=1e-7)


def test_forward_with_effects_is_never_recomputed(tmp_path):
    """HDF5Output writes on every forward: a segment holding it returns every blob,
    so reading a blob never runs (and writes) that forward again."""
    h5py = pytest.importorskip("h5py")
    out_file = tmp_path / "out.h5"
    text = DEPLOY + ('layer { name: "label" type: "Input" top: "label" '
                     'input_param { shape { dim: 3 dim: 5 } } }\n'
                     'layer { name: "out" type: "HDF5Output" bottom: "ip" bottom: "label" '
                     'hdf5_output_param { file_name: "%s" } }' % out_file)
    net = _net(text)
    for seed in range(3):
        net.blobs["data"].data[...] = _inputs(seed)
        net.forward()
        assert not _pending(net, "conv")
        net.blobs["conv"].data.copy()
    net.layers[list(net._layer_names).index("out")].close()
    with h5py.File(out_file, "r") as f:
        assert f["data"].shape == (9, 5, 1, 1)     # (Caffe's legacy 4 axes)


def test_slim_forwards_compile_once_in_steady_state():
    net = _net()
    net.forward(data=_inputs(0))
    net.forward(data=_inputs(1))
    net.blobs["pool"].data.copy()          # learned: one more compile at the next forward
    net.forward(data=_inputs(2))
    with count_compilations() as later:
        for seed in range(20):
            net.forward(data=_inputs(seed))
            net.blobs["pool"].data.copy()
    assert later == []


def test_slim_after_none_returns_every_blob(monkeypatch):
    monkeypatch.setattr(engine.Segment, "slim_after", None)
    net = _net()
    for seed in range(3):
        net.forward(data=_inputs(seed))
        assert not any(_pending(net, b) for b in INTERMEDIATE)
