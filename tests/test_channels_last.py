"""Channels-last runs (jcaffe.engine): a convolution's 4-d top kept (N, H, W, C) inside a
compiled call for the ReLUs, Splits and pooling after it. Blobs, diffs and param diffs
must be what the same net computes in Caffe's order; pooling's channels-last methods
must compute Caffe's pooling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import text_format

import jcaffe
from jcaffe import engine
from jcaffe.proto import caffe_pb2

from layer_testing import make_layer, params_of
from netutil import calls_of, make_net

POOLS = [
    "pool: MAX kernel_size: 3 stride: 2",                  # overlapping, rows route
    "pool: MAX kernel_size: 2 stride: 2",                  # tiles
    "pool: MAX kernel_size: 3 stride: 1 pad: 1",           # padded, stride 1
    "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
    "pool: MAX kernel_size: 3 stride: 3 pad: 1",           # tiles with padding
    "pool: MAX global_pooling: true",
    "pool: AVE kernel_size: 3 stride: 2",
    "pool: AVE kernel_size: 3 stride: 1 pad: 1",
    "pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1",
    "pool: AVE global_pooling: true",
]


def _last(x):
    return jnp.transpose(x, (0, 2, 3, 1))


@pytest.mark.parametrize("config", POOLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooling_channels_last_is_caffes_pooling(config, dtype, request):
    if dtype == np.float64:
        request.getfixturevalue("x64")
    shape = (2, 3, 9, 8)
    layer = make_layer('type: "Pooling" pooling_param { %s }' % config, [shape], dtype=dtype)
    assert layer.channels_last_ok()
    r = np.random.default_rng(3)
    x = jnp.asarray(r.standard_normal(shape).round(1), dtype)   # (ties: the first max wins)
    x = x.at[0, 1, :3, :3].set(-np.inf).at[1, 0, 2, 2].set(np.nan)
    params = params_of(layer)
    key = jax.random.PRNGKey(0)
    # each call jitted, as the net runs them (op by op, max pooling's many small ops
    # made these 40 cases one of the suite's slowest tests)
    tops, saved = jax.jit(layer.forward)(params, [x], key)
    tops_l, saved_l = jax.jit(layer.forward_channels_last)(params, [_last(x)], key)
    np.testing.assert_array_equal(np.asarray(_last(tops[0])), np.asarray(tops_l[0]))
    dy = jnp.asarray(r.standard_normal(tops[0].shape), dtype)
    dx, = jax.jit(layer.backward, static_argnums=5)(params, [x], tops, saved, [dy], (True,))[0]
    dx_l, = jax.jit(layer.backward_channels_last, static_argnums=5)(
        params, [_last(x)], tops_l, saved_l, [_last(dy)], (True,))[0]
    np.testing.assert_allclose(np.asarray(_last(dx)), np.asarray(dx_l), rtol=1e-6, atol=0)
    assert layer._hw == (2, 3)          # the channels-last calls leave Caffe's order behind


def test_pooling_with_mask_top_or_stochastic_stays_in_caffes_order():
    shape = (1, 2, 6, 6)
    mask = make_layer('type: "Pooling" top: "p" top: "m" pooling_param { pool: MAX kernel_size: 2 '
                      'stride: 2 }', [shape])
    stochastic = make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 '
                            'stride: 2 }', [shape])
    assert not mask.channels_last_ok() and not stochastic.channels_last_ok()


NET = """
name: "cl"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
  bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 5 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sig" type: "Sigmoid" bottom: "conv2" top: "sig" }
layer { name: "pool1" type: "Pooling" bottom: "sig" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool1" top: "conv3"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prelu" type: "PReLU" bottom: "conv3" top: "conv3" }
layer { name: "sum" type: "Eltwise" bottom: "conv3" bottom: "conv3" top: "sum" }
layer { name: "pool2" type: "Pooling" bottom: "sum" top: "pool2"
  pooling_param { pool: AVE kernel_size: 2 stride: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool2" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _run(tmp_path, channels_last, monkeypatch, dtype, weights=None):
    monkeypatch.setattr(engine.Segment, "channels_last", channels_last)
    tmp_path.mkdir()
    net = make_net(tmp_path, NET, dtype=dtype)
    for name, values in (weights or {}).items():
        for p, v in zip(net.params[name], values):
            p.data[...] = v
    r = np.random.default_rng(0)
    net.blobs["data"].data[...] = r.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = [0, 2]
    net.forward()
    net.backward()
    blobs = {n: (b.data.copy(), b.diff.copy()) for n, b in net.blobs.items()}
    params = {n: [p.diff.copy() for p in ps] for n, ps in net.params.items()}
    return net, blobs, params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_net_channels_last_matches_caffes_order(tmp_path, monkeypatch, dtype, request):
    if dtype == np.float64:
        request.getfixturevalue("x64")
    net, blobs, params = _run(tmp_path / "a", True, monkeypatch, dtype)
    weights = {n: [p.data.copy() for p in ps] for n, ps in net.params.items()}
    _, blobs0, params0 = _run(tmp_path / "b", False, monkeypatch, dtype, weights)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for name in blobs0:
        for got, want in zip(blobs[name], blobs0[name]):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)
        assert got.dtype == dtype and blobs[name][0].shape == net.blobs[name].shape      # Caffe's order outside
    for name in params0:
        for got, want in zip(params[name], params0[name]):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)
    assert np.any(params["conv1"][0]) and np.any(blobs["data"][0])


def test_layout_plan_names_the_channels_last_layers(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.Segment, "channels_last", True)
    net = make_net(tmp_path, NET)
    net.forward()
    seg, = net._segments.values()
    by_name = {s.layer.name: plan for s in seg.slots for i, plan in seg.layout_plan().items()
               if i == s.index}
    # (given channels-last, runs channels-last, tops kept channels-last)
    assert by_name["conv1"] == ((False,), False, True)       # XLA's convolution on CPU
    assert by_name["relu1"] == ((True,), True, True)
    assert by_name["conv2"] == ((True,), False, True)
    assert by_name["sig"] == ((True,), True, True)
    assert by_name["pool1"] == ((True,), True, True)
    # (conv3, 1x1, computes channels-last from its channels-last bottom, one dot; its
    # top flows into PReLU only, a slope per channel, which reads it in Caffe's order)
    assert by_name["conv3"] == ((True,), True, True)
    assert by_name["prelu"] == ((True,), False, False)
    assert by_name["sum"][1:] == (False, False)
    assert by_name["ip"][1:] == (False, False)


def test_tops_flowing_only_into_caffe_order_layers_stay_in_caffes_order(tmp_path, monkeypatch):
    # conv -> relu -> pool -> Softmax (over the channels) -> conv: the first chain never
    # reaches a convolution reading channels-last, so nothing in it is kept so; the second
    # convolution's ReLU and pool feed a third convolution, and are.
    net = make_net(tmp_path, """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 9 dim: 9 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1" pooling_param { pool: MAX kernel_size: 2 stride: 1 } }
layer { name: "n1" type: "Softmax" bottom: "p1" top: "n1" }
layer { name: "c2" type: "Convolution" bottom: "n1" top: "c2" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "r2" type: "ReLU" bottom: "c2" top: "c2" }
layer { name: "p2" type: "Pooling" bottom: "c2" top: "p2" pooling_param { pool: AVE kernel_size: 2 } }
layer { name: "c3" type: "Convolution" bottom: "p2" top: "c3" convolution_param { num_output: 2 kernel_size: 1 } }
""")
    net.forward()
    seg, = net._segments.values()
    plan = {s.layer.name: seg.layout_plan()[s.index] for s in seg.slots if s.layer.name != "data"}
    for name in ("c1", "r1", "p1", "n1"):
        assert plan[name][1:] == (False, False), name
    assert plan["c2"] == ((False,), False, True)
    assert plan["r2"] == ((True,), True, True) and plan["p2"] == ((True,), True, True)
    assert plan["c3"] == ((True,), True, True)          # (1x1: one dot channels-last)
    monkeypatch.setattr(engine.Segment, "channels_last", False)
    assert not any(p[1] or p[2] for p in seg.layout_plan().values())



def _in_both_orders(tmp_path, monkeypatch, text, feed):
    """The net ``text`` (float64) run forward and backward with channels-last runs and
    without, the second with the first's weights; ``feed(net)`` fills its inputs. ->
    [(plan by layer name, {blob: (data, diff)}, {layer: param data}, {layer: param
    diffs}), one per order], channels-last first; and the last net."""
    results = []
    for channels_last in (True, False):
        monkeypatch.setattr(engine.Segment, "channels_last", channels_last)
        (tmp_path / str(channels_last)).mkdir()
        net = make_net(tmp_path / str(channels_last), text, dtype=np.float64)
        if results:
            for name, ps in results[0][2].items():
                for p, v in zip(net.params[name], ps):
                    p.data[...] = v
        feed(net)
        net.forward()
        net.backward()
        seg, = net._segments.values()
        plan = {s.layer.name: seg.layout_plan()[s.index] for s in seg.slots
                if s.layer.forward_writes_tops}
        results.append((plan, {n: (b.data.copy(), b.diff.copy()) for n, b in net.blobs.items()},
                        {n: [p.data.copy() for p in ps] for n, ps in net.params.items()},
                        {n: [p.diff.copy() for p in ps] for n, ps in net.params.items()}))
    return results, net


def _assert_same(results, blob_rtol, diff_rtol):
    """Every blob (data, diff) and param diff of the channels-last run equals the run in
    Caffe's order (``_in_both_orders``'s results), to these relative tolerances."""
    (_, blobs, _, diffs), (_, blobs0, _, diffs0) = results
    for name in blobs0:
        for got, want in zip(blobs[name], blobs0[name]):
            np.testing.assert_allclose(got, want, rtol=blob_rtol, atol=1e-12, err_msg=name)
    for name in diffs0:
        for got, want in zip(diffs[name], diffs0[name]):
            np.testing.assert_allclose(got, want, rtol=diff_rtol, atol=1e-12, err_msg=name)


GEMM_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 9 dim: 8 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 4
  kernel_size: 3 pad: 2 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 5
  kernel_size: 3 stride: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "r2" type: "ReLU" bottom: "c2" top: "c2" }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3" convolution_param { num_output: 2
  kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "Reduction" bottom: "c3" top: "loss" loss_weight: 1
  reduction_param { operation: SUMSQ } }
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation choice")
def test_one_image_gemm_convolutions_keep_their_tops_channels_last(tmp_path, monkeypatch, x64):
    """One image on a map above Convolution.BATCH1_GEMM_MAX_POSITIONS (here 16) whose
    forward runs as GEMM (FCN's conv1_1) writes its product channels-last: the engine
    keeps its top so, the ReLU after it runs so into the next convolution (here GEMM
    ones too, strided and not, reading their columns from the channels-last values), and its weight
    gradient reads the channels-last diff. Every blob, diff and param diff is what the
    same net computes without channels-last runs, in float64."""
    from jcaffe.layers.vision import Convolution
    monkeypatch.setattr(Convolution, "GEMM_MIN_MACS", 0)
    monkeypatch.setattr(Convolution, "BATCH1_GEMM_MAX_POSITIONS", 16)
    def feed(net):
        net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((1, 3, 9, 8))
    results, net = _in_both_orders(tmp_path, monkeypatch, GEMM_NET, feed)
    (plan, blobs, _, diffs), (plan0, blobs0, _, diffs0) = results
    assert net.layer_dict["c1"]._gemm_top_last(1, net.params["c1"][0].shape)
    assert plan["c1"] == ((False,), False, True)
    assert plan["r1"] == ((True,), True, True)
    assert plan["c2"] == ((True,), False, True)         # (strided, 5x4 outputs: GEMM too)
    assert plan["r2"] == ((True,), True, True)
    assert plan["c3"] == ((True,), False, False)        # (its top only into the loss)
    assert not any(p[2] for p in plan0.values())
    _assert_same(results, 1e-12, 1e-12)
    for name in diffs0:
        assert all(np.any(d) for d in diffs[name]), name


def _solver(channels_last, monkeypatch, iter_size=1, weights=None):
    monkeypatch.setattr(engine.Segment, "channels_last", channels_last)
    param = caffe_pb2.SolverParameter()
    text_format.Parse('type: "SGD" base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" '
                      'iter_size: %d random_seed: 3' % iter_size, param)
    layers = NET.split("\n")
    assert '"Input"' in layers[2] and '"Input"' in layers[3]
    text_format.Parse("\n".join(layers[:2] + [
        'layer { name: "data" type: "DummyData" top: "data" top: "label" dummy_data_param {',
        '  data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 }',
        '  shape { dim: 2 dim: 3 dim: 12 dim: 12 } shape { dim: 2 } } }'] + layers[4:]),
        param.net_param)
    solver = jcaffe.get_solver(param)
    for name, values in (weights or {}).items():
        for p, v in zip(solver.net.params[name], values):
            p.data[...] = v
    return solver


@pytest.mark.parametrize("iter_size", [1, 2])
def test_fused_step_blobs_held_channels_last_read_in_caffes_order(monkeypatch, iter_size):
    """A fused step leaves its channels-last blobs and diffs in that order (no transpose
    for values nobody reads); reading them gives Caffe's order, as the step without
    channels-last runs computes them."""
    a = _solver(True, monkeypatch, iter_size)
    weights = {n: [p.data.copy() for p in ps] for n, ps in a.net.params.items()}
    b = _solver(False, monkeypatch, iter_size, weights)
    monkeypatch.setattr(engine.Segment, "channels_last", True)
    a.step(2)
    seg, = a.net._segments.values()
    held = seg.last_writes()
    assert {"conv1", "pool1"} <= held and "conv1" in seg.last_diffs()
    assert a.net.blobs["conv1"]._data._reorder is not None   # not transposed yet
    monkeypatch.setattr(engine.Segment, "channels_last", False)
    b.step(2)
    for name, blob in b.net.blobs.items():
        np.testing.assert_allclose(a.net.blobs[name].data, blob.data, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        np.testing.assert_allclose(a.net.blobs[name].diff, blob.diff, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    for name, ps in b.net.params.items():
        for pa, pb in zip(a.net.params[name], ps):
            np.testing.assert_allclose(pa.data, pb.data, rtol=1e-5, atol=1e-6, err_msg=name)
    # read once, a blob is in Caffe's order for good; a later step holds it again
    assert a.net.blobs["conv1"]._data._reorder is None
    monkeypatch.setattr(engine.Segment, "channels_last", True)
    a.step(1)
    assert a.net.blobs["conv1"]._data._reorder is not None
    a.net.backward()        # the pycaffe path reads the held blobs in Caffe's order
    assert np.all(np.isfinite(a.net.blobs["data"].diff))


def test_pycaffe_forward_hands_its_held_blobs_to_backward(monkeypatch):
    """net.forward() of a net whose backward follows returns its channels-last blobs
    held (reordered when first read), and net.backward() takes them as they are, as a
    fused step's two halves do: no transpose to Caffe's order at the forward's end and
    back at the backward's start. A blob read in between is held again (one
    engine.hold_blob). Blobs, diffs and param diffs are those computed in Caffe's order."""
    a = _solver(True, monkeypatch)
    weights = {n: [p.data.copy() for p in ps] for n, ps in a.net.params.items()}
    b = _solver(False, monkeypatch, weights=weights)
    holds = calls_of(monkeypatch, engine, "hold_blob")
    for read in (False, True):
        monkeypatch.setattr(engine.Segment, "channels_last", True)
        a.net.forward()
        seg, = a.net._segments.values()
        assert seg.holds and {"conv1", "pool1"} <= seg.held_blobs()
        assert a.net.blobs["conv1"]._data._reorder is not None      # not transposed
        if read:
            a.net.blobs["pool1"].data.copy()
        a.net.backward()
        assert len(holds) == read
        assert a.net.blobs["conv1"]._diff._reorder is not None      # its diff held too
        monkeypatch.setattr(engine.Segment, "channels_last", False)
        b.net.forward()
        b.net.backward()
        for name, blob in b.net.blobs.items():
            np.testing.assert_allclose(a.net.blobs[name].data, blob.data, rtol=1e-5,
                                       atol=1e-6, err_msg=name)
            np.testing.assert_allclose(a.net.blobs[name].diff, blob.diff, rtol=1e-5,
                                       atol=1e-6, err_msg=name)
        for name, ps in b.net.params.items():
            for pa, pb in zip(a.net.params[name], ps):
                np.testing.assert_allclose(pa.diff, pb.diff, rtol=1e-5, atol=1e-6,
                                           err_msg=name)


# -- layers that compute channels-last between the convolutions of ResNet's and
# MobileNet's blocks: BatchNorm, per-channel Scale and Bias, depthwise and 1x1 maps ----
LAST_LAYERS = [
    ('type: "BatchNorm"', "train"),
    ('type: "BatchNorm"', "test"),
    ('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } '
     'bias_filler { type: "gaussian" } }', None),
    ('type: "Bias" bias_param { filler { type: "gaussian" } }', None),
    # depthwise: MobileNet's; strided with two outputs per channel; dilated, rectangular
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 4 '
     'bias_filler { type: "gaussian" } }', None),
    ('type: "Convolution" convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 '
     'group: 4 }', None),
    ('type: "Convolution" convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 '
     'stride_h: 2 stride_w: 1 dilation: 2 pad: 2 group: 4 }', None),
    # 1x1: stride 1 with a bias, stride 2 (ResNet's downsampling shortcut)
    ('type: "Convolution" convolution_param { num_output: 5 kernel_size: 1 '
     'bias_filler { type: "gaussian" } }', None),
    ('type: "Convolution" convolution_param { num_output: 3 kernel_size: 1 stride: 2 }', None),
    # PReLU (MTCNN's, after each convolution): a slope per channel, one shared
    ('type: "PReLU" prelu_param { filler { type: "uniform" min: 0.1 max: 0.5 } }', None),
    ('type: "PReLU" prelu_param { channel_shared: true }', None),
    # LRN (GoogLeNet's, between its first convolutions): across channels, within a channel
    ('type: "LRN" lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 k: 2 }', None),
    ('type: "LRN" lrn_param { local_size: 3 alpha: 0.3 beta: 0.5 norm_region: WITHIN_CHANNEL }',
     None),
]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation choice")
@pytest.mark.parametrize("config,phase", LAST_LAYERS)
def test_channels_last_methods_compute_caffes_layer(config, phase, x64):
    """forward_channels_last / backward_channels_last on (N, H, W, C) arrays give the
    layer's own results transposed: tops, bottom diffs and param diffs, float64."""
    from jcaffe.layers.vision import Convolution
    shape = (2, 4, 7, 6)
    if 'type: "Convolution"' in config:
        config = config.replace("convolution_param {",
                                'convolution_param { weight_filler { type: "gaussian" }', 1)
    if phase:
        config += " batch_norm_param { use_global_stats: %s }" % (
            "false" if phase == "train" else "true")
    layer = make_layer(config, [shape], dtype=np.float64)
    assert layer.channels_last_ok()
    if isinstance(layer, Convolution):
        assert layer.channels_last_reader()
    r = np.random.default_rng(5)
    params = params_of(layer)
    if phase == "test":     # running statistics to use
        params = [jnp.asarray(r.uniform(0.5, 2, p.shape)) for p in params]
    x = jnp.asarray(r.standard_normal(shape))
    out = layer.forward(params, [x], None)
    out_l = layer.forward_channels_last(params, [_last(x)], None)
    np.testing.assert_allclose(np.asarray(_last(out[0][0])), np.asarray(out_l[0][0]),
                               rtol=1e-12, atol=1e-12)
    for a, b in zip(out[2:], out_l[2:]):      # BatchNorm's new running statistics
        for u, v in zip(a, b):
            if u is not None:
                np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-12)
    dy = jnp.asarray(r.standard_normal(out[0][0].shape))
    got = layer.backward(params, [x], out[0], out[1], [dy], (True,))
    got_l = layer.backward_channels_last(params, [_last(x)], out_l[0], out_l[1], [_last(dy)],
                                         (True,))
    np.testing.assert_allclose(np.asarray(_last(got[0][0])), np.asarray(got_l[0][0]),
                               rtol=1e-11, atol=1e-12)
    assert len(got[1]) == len(got_l[1])
    for want, have in zip(got[1], got_l[1]):
        assert (want is None) == (have is None)
        if want is not None:
            np.testing.assert_allclose(np.asarray(want), np.asarray(have), rtol=1e-11, atol=1e-12)
    assert getattr(layer, "axis", 1) == 1 and getattr(layer, "_c", 1) == 1   # left as found


@pytest.mark.parametrize("axis", [1, 2, 0, -1])
def test_concat_channels_last_joins_along_the_moved_axis(axis, x64):
    """Concat of 4-d bottoms held channels-last: the top and the bottom diffs are the
    layer's own transposed, for a concat along the channels (GoogLeNet's inceptions) and
    along the other axes."""
    shapes = [(2, 3, 4, 5), (2, 3, 4, 5), (2, 3, 4, 5)]
    grow = axis % 4
    shapes = [s[:grow] + (s[grow] + i,) + s[grow + 1:] for i, s in enumerate(shapes)]
    layer = make_layer('type: "Concat" concat_param { axis: %d }' % axis, shapes, dtype=np.float64)
    assert layer.channels_last_ok()
    r = np.random.default_rng(7)
    xs = [jnp.asarray(r.standard_normal(shape)) for shape in shapes]
    (top,), _ = layer.forward([], xs, None)
    (top_l,), _ = layer.forward_channels_last([], [_last(x) for x in xs], None)
    np.testing.assert_array_equal(np.asarray(_last(top)), np.asarray(top_l))
    dy = jnp.asarray(r.standard_normal(top.shape))
    diffs, _ = layer.backward([], xs, [top], None, [dy], (True, False, True))
    diffs_l, _ = layer.backward_channels_last([], [_last(x) for x in xs], [top_l], None,
                                              [_last(dy)], (True, False, True))
    assert diffs[1] is None and diffs_l[1] is None
    for d, d_l in zip(diffs[::2], diffs_l[::2]):
        np.testing.assert_array_equal(np.asarray(_last(d)), np.asarray(d_l))
    assert layer.axis == grow


@pytest.mark.parametrize("axis", [1, 2, 0, -1])
def test_slice_channels_last_cuts_along_the_moved_axis(axis, x64):
    """Slice of a 4-d bottom held channels-last: the tops and the bottom diff are the
    layer's own transposed, for a cut along the channels (DPN's blocks) and along the
    other axes."""
    shape = (4, 6, 5, 7)
    grow = axis % 4
    layer = make_layer('type: "Slice" top: "a" top: "b" top: "c" '
                       'slice_param { axis: %d slice_point: 1 slice_point: 3 }' % axis,
                       [shape], dtype=np.float64)
    assert layer.channels_last_ok()
    r = np.random.default_rng(7)
    x = jnp.asarray(r.standard_normal(shape))
    tops, _ = layer.forward([], [x], None)
    tops_l, _ = layer.forward_channels_last([], [_last(x)], None)
    for t, t_l in zip(tops, tops_l):
        np.testing.assert_array_equal(np.asarray(_last(t)), np.asarray(t_l))
    dys = [jnp.asarray(r.standard_normal(t.shape)) for t in tops]
    (dx,), _ = layer.backward([], [x], tops, None, dys, (True,))
    (dx_l,), _ = layer.backward_channels_last([], [_last(x)], tops_l, None,
                                              [_last(d) for d in dys], (True,))
    np.testing.assert_array_equal(np.asarray(_last(dx)), np.asarray(dx_l))
    assert layer.axis == grow


def test_layers_that_stay_in_caffes_order():
    """A Scale with its scale from a second bottom or over two axes, and a grouped
    convolution that is not depthwise, do not compute channels-last. (The grouped map,
    split into XLA's convolutions on the CPU, reads and writes channels-last as they
    do: the engine keeps the layers around it so, test_grouped_maps_... below.)"""
    shape = (2, 4, 5, 5)
    two = make_layer('type: "Scale"', [shape, (4,)])
    wide = make_layer('type: "Scale" scale_param { num_axes: 2 }', [shape])
    grouped = make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
                         'group: 2 }', [shape])
    assert not any(l.channels_last_ok() for l in (two, wide, grouped))
    on_xla = jax.default_backend() == "cpu"
    assert grouped._groups_on_xla() == on_xla
    assert grouped.channels_last_top() == on_xla and grouped.channels_last_reader() == on_xla


BLOCKS_NET = """
name: "blocks"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param {
  num_output: 4 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true
  filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "dw2" type: "Convolution" bottom: "conv1" top: "dw2" convolution_param {
  num_output: 4 kernel_size: 3 pad: 1 group: 4 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn2" type: "BatchNorm" bottom: "dw2" top: "dw2" }
layer { name: "sc2" type: "Scale" bottom: "dw2" top: "dw2" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU" bottom: "dw2" top: "dw2" }
layer { name: "pw2" type: "Convolution" bottom: "dw2" top: "pw2" convolution_param {
  num_output: 6 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu3" type: "ReLU" bottom: "pw2" top: "pw2" }
layer { name: "dw3" type: "Convolution" bottom: "pw2" top: "dw3" convolution_param {
  num_output: 12 kernel_size: 3 pad: 1 stride: 2 group: 6 weight_filler { type: "gaussian" std: 0.3 }
  bias_filler { type: "gaussian" } } }
layer { name: "bias3" type: "Bias" bottom: "dw3" top: "dw3" bias_param { filler { type: "gaussian" } } }
layer { name: "pw3" type: "Convolution" bottom: "dw3" top: "pw3" convolution_param {
  num_output: 5 kernel_size: 1 stride: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool" type: "Pooling" bottom: "pw3" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation choice")
@pytest.mark.parametrize("gemm_conv1", [False, True])
@pytest.mark.parametrize("frozen", [True, False])
def test_mobilenet_blocks_run_channels_last(tmp_path, monkeypatch, x64, gemm_conv1, frozen):
    """MobileNet's blocks (BatchNorm, Scale, ReLU, depthwise, 1x1) run channels-last from
    the first convolution to the global pooling, in TRAIN (batch statistics), where the
    depthwise weights are not learned (``frozen``: lr_mult 0): the first convolution
    writes its top so (XLA's kernel, or a GEMM product written position-major,
    forward_top_last, whose weight gradient reads the diff so). Where they are learned,
    their weight gradient is computed in Caffe's order (a column reduction
    channels-last: Convolution.channels_last_backward_ok), and so nothing before them is
    kept channels-last. Every blob, diff and param diff is what the net computes in
    Caffe's order, float64."""
    from jcaffe.layers.vision import Convolution
    if gemm_conv1:
        monkeypatch.setattr(Convolution, "GEMM_MIN_MACS", 0)
    text = BLOCKS_NET
    if frozen:
        for name in ("dw2", "dw3"):
            text = text.replace('name: "%s" type: "Convolution"' % name,
                                'name: "%s" type: "Convolution" param { lr_mult: 0 } '
                                'param { lr_mult: 0 }' % name)
        assert text.count("lr_mult: 0") == 4
    def feed(net):
        net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal(
            net.blobs["data"].shape)
        net.blobs["label"].data[...] = [0, 2]
    results, net = _in_both_orders(tmp_path, monkeypatch, text, feed)
    (plan, blobs, _, diffs), (plan0, blobs0, _, diffs0) = results
    conv1 = net.layer_dict["conv1"]
    assert conv1._forward_on_gemm(2, net.params["conv1"][0].shape) == gemm_conv1
    assert not any(p[1] or p[2] for p in plan0.values())
    if frozen:
        assert plan["conv1"] == ((False,), False, True)
        for name in ("bn1", "sc1", "relu1", "dw2", "bn2", "sc2", "relu2", "pw2", "relu3", "dw3",
                     "bias3", "pw3"):
            assert plan[name] == ((True,), True, True), name
        assert plan["pool"] == ((True,), False, False)      # (into InnerProduct: Caffe's order)
    else:
        assert not any(p[1] or p[2] for p in plan.values())
    _assert_same(results, 1e-11, 1e-10)
    assert all(np.any(d) for d in diffs["conv1"] + diffs["pw3"])
    assert all(np.any(d) != frozen for d in diffs["dw2"] + diffs["dw3"])


INCEPTION_NET = """
name: "inception"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param {
  num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
  bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "b1" type: "Convolution" bottom: "norm1" top: "b1" convolution_param {
  num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 }
  bias_filler { type: "constant" value: 0.2 } } }
layer { name: "b1_relu" type: "ReLU" bottom: "b1" top: "b1" }
layer { name: "b2_reduce" type: "Convolution" bottom: "norm1" top: "b2_reduce" convolution_param {
  num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "b2_relu_reduce" type: "ReLU" bottom: "b2_reduce" top: "b2_reduce" }
layer { name: "b2" type: "Convolution" bottom: "b2_reduce" top: "b2" convolution_param {
  num_output: 5 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "b2_relu" type: "ReLU" bottom: "b2" top: "b2" }
layer { name: "b3_pool" type: "Pooling" bottom: "norm1" top: "b3_pool" pooling_param {
  pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "b3" type: "Convolution" bottom: "b3_pool" top: "b3" convolution_param {
  num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "b4" type: "Softmax" bottom: "norm1" top: "b4" }
layer { name: "cat" type: "Concat" bottom: "b1" bottom: "b2" bottom: "b3" bottom: "b4" top: "cat" }
layer { name: "c2" type: "Convolution" bottom: "cat" top: "c2" convolution_param {
  num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "p2" type: "Softmax" bottom: "cat" top: "p2" }
layer { name: "cat2" type: "Concat" bottom: "c2" bottom: "p2" top: "cat2" }
layer { name: "c3" type: "Convolution" bottom: "cat2" top: "c3" convolution_param {
  num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool" type: "Pooling" bottom: "c3" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation choice")
def test_inception_blocks_run_channels_last(tmp_path, monkeypatch, x64):
    """GoogLeNet's inception, small: the first convolution's top stays channels-last
    through ReLU, pooling and LRN into the branches (1x1, 1x1 then 3x3, pooling then
    1x1), and their Concat runs channels-last, as more than half of its bottoms come so
    (the fourth branch, a Softmax over the channels, is transposed in). A Concat with
    half its bottoms
    channels-last computes in Caffe's order, as every layer with bottoms in both orders
    did before. Every blob, diff and param diff is what the net computes in Caffe's
    order, float64."""
    def feed(net):
        net.blobs["data"].data[...] = np.random.default_rng(2).standard_normal(
            net.blobs["data"].shape)
        net.blobs["label"].data[...] = [1, 2]
    jcaffe.set_random_seed(3)       # (the fillers: no branch's ReLU dead everywhere)
    results, net = _in_both_orders(tmp_path, monkeypatch, INCEPTION_NET, feed)
    (plan, blobs, _, diffs), (plan0, blobs0, _, diffs0) = results
    assert not any(p[1] or p[2] for p in plan0.values())
    assert plan["conv1"] == ((False,), False, True)
    for name in ("relu1", "pool1", "norm1", "b1", "b1_relu", "b2_reduce", "b2_relu_reduce",
                 "b2_relu", "b3_pool", "b3"):
        assert plan[name][1:] == (True, True), name
    assert plan["b4"] == ((True,), False, False)            # (along axis 1)
    assert plan["cat"] == ((True, True, True, False), True, True)
    assert plan["c2"] == ((True,), True, True)
    assert plan["cat2"] == ((True, False), False, False)    # (half: Caffe's order)
    assert plan["c3"][1:] == (False, False)
    _assert_same(results, 1e-11, 1e-10)
    for name in diffs0:
        assert all(np.any(d) for d in diffs[name]), name


ONET_NET = """
name: "onet_small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 3 dim: 12 dim: 12 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 3 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param {
  num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }
  bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1"
  prelu_param { filler { type: "uniform" min: 0.1 max: 0.5 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param {
  num_output: 5 kernel_size: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prelu2" type: "PReLU" bottom: "conv2" top: "conv2" prelu_param { channel_shared: true } }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3" convolution_param {
  num_output: 4 kernel_size: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prelu3c" type: "PReLU" bottom: "conv3" top: "conv3" }
layer { name: "fc" type: "InnerProduct" bottom: "conv3" top: "fc"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prelu3" type: "PReLU" bottom: "fc" top: "fc" }
layer { name: "cls" type: "InnerProduct" bottom: "fc" top: "cls"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "cls" bottom: "label" top: "loss" }
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation choice")
def test_prelus_after_convolutions_run_channels_last(tmp_path, monkeypatch, x64):
    """MTCNN's pattern: a PReLU in place after each convolution (slopes per channel, then
    one shared) takes the convolution's top channels-last and hands it on so to the pool
    and the next convolution. The last convolution's PReLU, read by an InnerProduct, and
    the PReLU after the InnerProduct (2-d) stay in Caffe's order. Every blob, diff and
    param diff, the slopes' diffs too, is what the net computes in Caffe's order,
    float64."""
    def feed(net):
        net.blobs["data"].data[...] = np.random.default_rng(4).standard_normal(
            net.blobs["data"].shape)
        net.blobs["label"].data[...] = [0, 1, 1]
    jcaffe.set_random_seed(5)
    results, net = _in_both_orders(tmp_path, monkeypatch, ONET_NET, feed)
    (plan, _, _, diffs), (plan0, _, _, _) = results
    assert not any(p[1] or p[2] for p in plan0.values())
    assert plan["prelu1"] == ((True,), True, True) and plan["pool1"][1:] == (True, True)
    assert plan["prelu2"][1:] == (True, True)
    assert plan["prelu3c"][1:] == plan["prelu3"][1:] == (False, False)
    _assert_same(results, 1e-11, 1e-10)
    for name in ("prelu1", "prelu2", "prelu3c", "prelu3", "conv1"):
        assert all(np.any(d) for d in diffs[name]), name


BIAS_NET = """
name: "bias_last"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 128 dim: 128 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param {
  num_output: 16 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "gaussian" std: 0.3 }
  bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pw" type: "Convolution" bottom: "conv1" top: "pw" convolution_param {
  num_output: 8 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool" type: "Pooling" bottom: "pw" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation choice")
def test_a_gemm_top_written_channels_last_gets_its_bias_before_the_reorder(monkeypatch):
    """A GEMM forward writing its product channels-last (forward_top_last) adds the bias
    before reordering it to Caffe's axes, so that the engine's reorder back cancels
    it: the BatchNorm after it reduces the top as it lies. Added after, XLA wrote the
    top out in Caffe's order for each of the batch mean and variance (ResNet-50's
    bn_conv1: two 51 MB copies a step) where the product came out of the loop over the
    batch's chunks (here: one image a chunk)."""
    import re
    from jcaffe.layers import conv_gemm
    from jcaffe.layers.vision import Convolution
    from netutil import compiled_step
    monkeypatch.setattr(Convolution, "GEMM_MIN_MACS", 0)
    monkeypatch.setattr(conv_gemm, "CHUNK_BYTES", 1 << 16)
    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.01 lr_policy: "fixed"', param)
    text_format.Parse(BIAS_NET, param.net_param)
    solver = jcaffe.get_solver(param)
    net = solver.net
    conv1 = net.layer_dict["conv1"]
    assert conv1._top_last_gemm(2)
    hlo = compiled_step(solver).as_text()
    plan = {s.layer.name: seg.layout_plan()[s.index] for seg in net._segments.values()
            for s in seg.slots if s.layer.forward_writes_tops}
    assert plan["conv1"][2] and plan["bn1"][1]         # top kept channels-last; BN runs so
    entry = hlo.split("\nENTRY", 1)[1]
    # (the blobs come back held: bitcasts of that shape, not transposes)
    assert re.search(r"^\s+%?\S+ = .* while\(", entry, re.M)     # the chunks' loop
    caffe_order = re.findall(r"^\s+%?(\S*transpose\S*) = f32\[2,16,64,64\]\{3,2,1,0\} ",
                             entry, re.M)
    assert not caffe_order, caffe_order


ALEX_NET = """
name: "alex"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 19 dim: 19 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param {
  num_output: 8 kernel_size: 3 stride: 2 weight_filler { type: "gaussian" std: 0.3 }
  bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2" convolution_param {
  num_output: 6 kernel_size: 3 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.3 }
  bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3" convolution_param {
  num_output: 4 kernel_size: 3 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool3" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation choice")
def test_grouped_maps_on_xlas_kernel_run_channels_last(tmp_path, monkeypatch, x64):
    """CaffeNet, small: its grouped maps run split into XLA's convolutions, each group a
    slice of the channels, which reads and writes channels-last as cheaply as an
    ungrouped one. So conv1's top stays channels-last through ReLU, MAX pooling and LRN
    into conv2, conv2's into conv3, and conv3's (read by nothing channels-last after it)
    goes out in Caffe's order. Every blob, diff and param diff is what the net computes
    in Caffe's order, float64."""
    def feed(net):
        net.blobs["data"].data[...] = np.random.default_rng(4).standard_normal(
            net.blobs["data"].shape)
        net.blobs["label"].data[...] = [0, 2]
    jcaffe.set_random_seed(5)
    results, net = _in_both_orders(tmp_path, monkeypatch, ALEX_NET, feed)
    (plan, _, _, diffs), (plan0, _, _, _) = results
    assert not any(p[1] or p[2] for p in plan0.values())
    assert net.layer_dict["conv2"]._groups_on_xla() and net.layer_dict["conv3"]._groups_on_xla()
    assert plan["conv1"] == ((False,), False, True)
    for name in ("relu1", "pool1", "norm1", "relu2"):
        assert plan[name] == ((True,), True, True), name
    assert plan["conv2"] == ((True,), False, True)      # (XLA's own order, both sides)
    assert plan["conv3"] == ((True,), False, False)     # (nothing reads it channels-last)
    assert plan["relu3"][1:] == (False, False) and plan["pool3"][1:] == (False, False)
    _assert_same(results, 1e-11, 1e-10)
    for name in diffs:
        assert all(np.any(d) for d in diffs[name]), name


WIDE_GROUPS_NET = """
name: "wide_groups"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 10 dim: 10 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param {
  num_output: 40 kernel_size: 3 weight_filler { type: "gaussian" std: 0.2 }
  bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" convolution_param {
  num_output: 40 kernel_size: 3 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.2 }
  bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3" convolution_param {
  num_output: 8 kernel_size: 3 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv3" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation choice")
def test_split_groups_are_joined_channels_last(tmp_path, monkeypatch, x64):
    """A grouped map whose groups (20 channels: wider than conv_blocks packs) run as
    separate XLA convolutions joins their maps along the minor axis: each is written
    channels-last by XLA's kernel, so the join moves whole rows and its result is the
    channels-last top the engine keeps. Joined along Caffe's channel axis, each map was
    transposed into Caffe's layout and the ReLU after read it across that layout
    again (CaffeNet's step 1.05x, ResNeXt-50's 1.10x). The values are those of Caffe's
    order, float64; in the compiled step both joins (forward, data gradient) are
    (N, H, W, C) arrays."""
    import re
    from netutil import compiled_step

    def feed(net):
        net.blobs["data"].data[...] = np.random.default_rng(6).standard_normal(
            net.blobs["data"].shape)
        net.blobs["label"].data[...] = [1, 0]
    jcaffe.set_random_seed(7)
    results, net = _in_both_orders(tmp_path, monkeypatch, WIDE_GROUPS_NET, feed)
    conv2 = net.layer_dict["conv2"]
    assert conv2._pieces(net.params["conv2"][0].data)[0] == 2      # (two convolutions)
    assert results[0][0]["conv2"] == ((True,), False, True)
    _assert_same(results, 1e-11, 1e-10)

    monkeypatch.setattr(engine.Segment, "channels_last", True)
    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.01 lr_policy: "fixed"', param)
    text_format.Parse(WIDE_GROUPS_NET, param.net_param)
    # (the whole program: the forward's join may sit inside the fusion that stores relu2's
    # top; the weight gradient's join of the groups' filters is left out)
    hlo = compiled_step(jcaffe.get_solver(param)).as_text()
    joins = re.findall(r"= (f32\[[\d,]+\])\{3,2,1,0\} \S+\(.*op_name=\"[^\"]*"
                       r"conv2\.(?:forward|backward)/concatenate\"", hlo)
    maps = [j for j in joins if j != "f32[40,20,3,3]"]
    assert sorted(maps) == ["f32[2,8,8,40]", "f32[2,8,8,40]"], joins


SE_NET = """
name: "se"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 7 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param {
  num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
  bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "gp" type: "Pooling" bottom: "c1" top: "gp" pooling_param { pool: AVE global_pooling: true } }
layer { name: "down" type: "Convolution" bottom: "gp" top: "down" convolution_param {
  num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 }
  bias_filler { type: "constant" value: 1 } } }
layer { name: "rd" type: "ReLU" bottom: "down" top: "down" }
layer { name: "up" type: "Convolution" bottom: "down" top: "up" convolution_param {
  num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 }
  bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Sigmoid" bottom: "up" top: "up" }
layer { name: "w" type: "Reshape" bottom: "up" top: "w" reshape_param { shape { dim: 0 dim: 0 } } }
layer { name: "se" type: "Scale" bottom: "c1" bottom: "w" top: "se" scale_param { axis: 0 } }
layer { name: "c2" type: "Convolution" bottom: "se" top: "c2" convolution_param {
  num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "Reduction" bottom: "c2" top: "loss" loss_weight: 1
  reduction_param { operation: SUMSQ } }
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation choice")
def test_an_se_blocks_scale_runs_channels_last_with_its_weights_as_they_are(
        tmp_path, monkeypatch, x64):
    """A Scale with two bottoms at axis 0 (an SE block: each image's channels times their
    (N, C) weights) between two convolutions runs channels-last: its 4-d bottom comes
    so, its 2-d weights and their diff as they are. Every blob, diff and param diff is
    what the net computes in Caffe's order, float64."""
    def feed(net):
        net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal(
            net.blobs["data"].shape)
    results, net = _in_both_orders(tmp_path, monkeypatch, SE_NET, feed)
    (plan, blobs, _, diffs), (plan0, _, _, _) = results
    assert not any(p[1] or p[2] for p in plan0.values())
    assert plan["se"] == ((True, False), True, True)
    assert blobs["w"][0].shape == blobs["w"][1].shape == (2, 4)
    _assert_same(results, 1e-11, 1e-10)
    assert all(np.any(d) for d in diffs["down"] + diffs["up"] + diffs["c1"])


DPN_NET = """
name: "dpn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 7 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param {
  num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "match" type: "Convolution" bottom: "c1" top: "match" convolution_param {
  num_output: 5 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "match_slice" type: "Slice" bottom: "match" top: "res0" top: "dense0"
  slice_param { axis: 1 slice_point: 4 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param {
  num_output: 4 kernel_size: 3 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3" convolution_param {
  num_output: 6 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "c3_slice" type: "Slice" bottom: "c3" top: "res1" top: "dense1"
  slice_param { axis: 1 slice_point: 4 } }
layer { name: "sum" type: "Eltwise" bottom: "res0" bottom: "res1" top: "sum" }
layer { name: "dense" type: "Concat" bottom: "dense0" bottom: "dense1" top: "dense" }
layer { name: "join" type: "Concat" bottom: "sum" bottom: "dense" top: "join" }
layer { name: "c4" type: "Convolution" bottom: "join" top: "c4" convolution_param {
  num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "Reduction" bottom: "c4" top: "loss" loss_weight: 1
  reduction_param { operation: SUMSQ } }
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU formulation choice")
@pytest.mark.parametrize("deploy", [True, False])
def test_dpn_blocks_slices_run_channels_last_in_a_forward_only_net(tmp_path, monkeypatch,
                                                                    x64, deploy):
    """A dual path block (DPN's): a block's last 1x1 and its "match" 1x1 are each cut by
    a Slice between a residual path (Eltwise SUM) and a dense one (Concat), joined for
    the next convolution. Where no backward runs (the net without its loss), the Slices
    run channels-last, and the paths with them. Where one does, they stay in Caffe's
    order (Slice.channels_last_backward_ok: DPN-92's step took 1.049x with them
    channels-last). Every blob, diff and param diff is what the net computes in Caffe's
    order, float64."""
    def feed(net):
        net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal(
            net.blobs["data"].shape)
    text = DPN_NET[:DPN_NET.index('layer { name: "loss"')] if deploy else DPN_NET
    results, net = _in_both_orders(tmp_path, monkeypatch, text, feed)
    (plan, _, _, diffs), (plan0, _, _, _) = results
    assert not any(p[1] or p[2] for p in plan0.values())
    for name in ("match_slice", "c3_slice"):
        assert plan[name] == ((True,), deploy, deploy), (name, plan[name])
    for name in ("sum", "dense", "join"):
        assert plan[name][1:] == (deploy, deploy), (name, plan[name])
    _assert_same(results, 1e-11, 1e-10)
    if not deploy:
        assert all(np.any(d) for d in diffs["match"] + diffs["c3"] + diffs["c1"])
