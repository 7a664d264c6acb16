"""BatchNorm and MVN: forward vs numpy versions of Caffe's formulas, backward vs jax.vjp,
BatchNorm's running statistics across iterations (TRAIN/TEST, use_global_stats) against a
numpy model of Caffe's layer, the lr_mult 0 convention through the Solver, in-place use
and a .caffemodel round trip."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import text_format

import jcaffe
from jcaffe import xla_options
from jcaffe.errors import LayerSetupError
from jcaffe.proto import caffe_pb2
from layer_testing import check_backward, forward, make_layer

F = lambda v: float(np.float32(v))   # noqa: E731  (proto floats are float32)


class CaffeBatchNorm:
    """numpy model of Caffe's BatchNormLayer (batch_norm_layer.cpp)."""

    def __init__(self, channels, maf=0.999, eps=1e-5):
        self.maf, self.eps = F(maf), F(eps)
        self.blobs = [np.zeros(channels), np.zeros(channels), np.zeros(1)]

    @staticmethod
    def _bc(v, x):
        return v.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, x, use_global_stats):
        axes = tuple(i for i in range(x.ndim) if i != 1)
        if use_global_stats:
            sf = 0.0 if self.blobs[2][0] == 0 else 1 / self.blobs[2][0]
            mean, var = sf * self.blobs[0], sf * self.blobs[1]
        else:
            mean = x.mean(axis=axes)
            var = ((x - self._bc(mean, x)) ** 2).mean(axis=axes)
            self.blobs[2] = self.blobs[2] * self.maf + 1
            self.blobs[0] = mean + self.maf * self.blobs[0]
            m = x.size // x.shape[1]
            self.blobs[1] = (m / (m - 1) if m > 1 else 1) * var + self.maf * self.blobs[1]
        return (x - self._bc(mean, x)) / self._bc(np.sqrt(var + self.eps), x)


def _net(body, shape=(4, 3, 2, 2), phase=jcaffe.TRAIN, dtype=np.float64):
    dims = " ".join("dim: %d" % d for d in shape)
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { %s } } }
    layer { name: "t" type: "Input" top: "t" input_param { shape { %s } } }
    %s
    """ % (dims, dims, body)
    return jcaffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase, dtype=dtype)


BN = 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" %s }'


# ---------------------------------------------------------------------------
# BatchNorm: blobs, defaults, the lr_mult 0 convention

def test_batch_norm_blobs_are_zero_statistics_with_lr_mult_zero(x64):
    net = _net(BN % "")
    assert [b.shape for b in net.params["bn"]] == [(3,), (3,), (1,)]
    assert all(np.all(b.data == 0) for b in net.params["bn"])
    layer = net.layer_dict["bn"]
    assert [s.lr_mult for s in layer.layer_param.param] == [0, 0, 0]
    assert net.params_lr == [0, 0, 0]
    assert layer.param_propagate_down == [False, False, False]
    assert not net.layer_need_backward["bn"]
    p = layer.p
    assert (F(p.moving_average_fraction), F(p.eps)) == (F(0.999), F(1e-5))
    assert layer.use_global_stats is False
    assert _net(BN % "", phase=jcaffe.TEST).layer_dict["bn"].use_global_stats is True


def test_batch_norm_refuses_learnable_statistics(x64):
    with pytest.raises(LayerSetupError, match="BatchNorm layer 'bn'.*Cannot configure batch "
                                              "normalization statistics"):
        _net(BN % "param { lr_mult: 1 }")
    # one zero spec given: the other two are added with lr_mult 0
    net = _net(BN % "param { lr_mult: 0 }")
    assert [s.lr_mult for s in net.layer_dict["bn"].layer_param.param] == [0, 0, 0]


def test_old_three_param_batch_norm_is_upgraded_not_refused(x64):
    net = _net(BN % "param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 }")
    assert [(s.lr_mult, s.decay_mult) for s in net.layer_dict["bn"].layer_param.param] == [(0, 0)] * 3


# ---------------------------------------------------------------------------
# BatchNorm: forward, backward, running statistics

@pytest.mark.parametrize("shape", [(4, 3, 2, 5), (6, 2), (3, 2, 4)])
def test_batch_norm_train_forward_and_backward(x64, rng, shape):
    x = rng.normal(2.0, 3.0, size=shape)
    layer = make_layer('type: "BatchNorm"', [shape])
    (y,), _ = forward(layer, [x])
    ref = CaffeBatchNorm(shape[1])
    np.testing.assert_allclose(np.asarray(y), ref.forward(x, False), rtol=1e-10, atol=1e-12)
    check_backward(layer, [x], rtol=1e-8, atol=1e-10)
    # Caffe's closed form: (dy - mean(dy) - mean(dy y) y) / sqrt(var + eps)
    dy = rng.standard_normal(shape)
    tops, saved, _ = layer.forward([jnp.asarray(b.data) for b in layer.blobs], [jnp.asarray(x)], None)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], tops, saved, [jnp.asarray(dy)], (True,))
    axes = tuple(i for i in range(len(shape)) if i != 1)
    yv = np.asarray(tops[0])
    std = np.sqrt(x.var(axis=axes, keepdims=True) + F(1e-5))
    want = (dy - dy.mean(axes, keepdims=True) - (dy * yv).mean(axes, keepdims=True) * yv) / std
    np.testing.assert_allclose(np.asarray(dx), want, rtol=1e-10, atol=1e-12)


def test_batch_norm_global_stats_forward_and_backward(x64, rng):
    x = rng.standard_normal((3, 2, 4))
    layer = make_layer('type: "BatchNorm" batch_norm_param { eps: 0.01 }', [x.shape],
                       phase=jcaffe.TEST)
    layer.blobs[0].data[...] = [1.0, -2.0]
    layer.blobs[1].data[...] = [4.0, 0.5]
    layer.blobs[2].data[...] = 2.0
    (y,), saved = forward(layer, [x])
    mean, var = np.array([0.5, -1.0]), np.array([2.0, 0.25])
    std = np.sqrt(var + F(0.01)).reshape(1, 2, 1)
    np.testing.assert_allclose(np.asarray(y), (x - mean.reshape(1, 2, 1)) / std, rtol=1e-12)
    dy = rng.standard_normal(x.shape)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], [y], saved, [jnp.asarray(dy)], (True,))
    np.testing.assert_allclose(np.asarray(dx), dy / std, rtol=1e-12)
    check_backward(layer, [x])
    # a zero scale factor means zero statistics (Caffe's 1/0 guard)
    layer.blobs[2].data[...] = 0.0
    np.testing.assert_allclose(np.asarray(forward(layer, [x])[0][0]), x / np.sqrt(F(0.01)), rtol=1e-12)


@pytest.mark.parametrize("opts,phase,updates", [
    ("", jcaffe.TRAIN, True),
    ("batch_norm_param { moving_average_fraction: 0.5 eps: 0.001 }", jcaffe.TRAIN, True),
    ("batch_norm_param { use_global_stats: true }", jcaffe.TRAIN, False),
    ("", jcaffe.TEST, False),
    ("batch_norm_param { use_global_stats: false }", jcaffe.TEST, True),   # as Caffe: TEST updates too
])
def test_running_statistics_across_iterations_match_caffe(x64, opts, phase, updates):
    net = _net(BN % opts, phase=phase)
    p = net.layer_dict["bn"].p
    ref = CaffeBatchNorm(3, p.moving_average_fraction, p.eps)
    rng = np.random.default_rng(7)
    if not updates:   # start from nonzero statistics so the global path is visible
        for b, v in zip(net.params["bn"], ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [2.0])):
            b.data[...] = v
        ref.blobs = [np.array(v) for v in ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [2.0])]
    for it in range(4):
        x = rng.normal(it, 1 + it, size=(4, 3, 2, 2))
        net.blobs["x"].data[...] = x
        net.forward()
        np.testing.assert_allclose(net.blobs["y"].data, ref.forward(x, not updates), rtol=1e-9,
                                   atol=1e-10)
        for got, want in zip(net.params["bn"], ref.blobs):
            np.testing.assert_allclose(got.data, want, rtol=1e-12, err_msg="iteration %d" % it)


def test_unbiased_correction_with_a_single_value_per_channel(x64):
    net = _net(BN % "", shape=(1, 3))
    net.blobs["x"].data[...] = [[1.0, 2.0, 3.0]]
    net.forward()
    np.testing.assert_array_equal(net.params["bn"][1].data, 0.0)   # m = 1: factor 1, var 0
    np.testing.assert_array_equal(net.params["bn"][0].data, [1.0, 2.0, 3.0])


# ---------------------------------------------------------------------------
# BatchNorm through the Solver: statistics are not learned, they are computed

SOLVER_NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 2 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 4 dim: 3 dim: 2 } } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" batch_norm_param { moving_average_fraction: 0.8 } }
layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
layer { name: "loss" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "loss" }
"""


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
def test_solver_never_updates_statistics(fuse, solver_type):
    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.1 momentum: 0.9 weight_decay: 0.5 lr_policy: "fixed" '
                      'random_seed: 3 type: "%s"' % solver_type, param)
    text_format.Parse(SOLVER_NET, param.net_param)
    solver = jcaffe.get_solver(param)
    solver.fuse_step = fuse
    net = solver.net
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(4, 3, 2))
    net.blobs["x"].data[...] = x
    net.blobs["t"].data[...] = rng.standard_normal((4, 3, 2))
    ref = CaffeBatchNorm(3, 0.8)
    test_net = jcaffe.Net(text_format.Parse(SOLVER_NET, caffe_pb2.NetParameter()), jcaffe.TEST)
    test_net.share_with(net)
    scale0 = net.params["sc"][0].data.copy()
    for it in range(3):
        # the in-place input is overwritten by each forward: refill it, as a data layer would
        net.blobs["x"].data[...] = x
        solver.step(1)
        ref.forward(x.astype(np.float32).astype(np.float64), False)
        for got, want in zip(net.params["bn"], ref.blobs):
            np.testing.assert_allclose(got.data, want, rtol=1e-5, err_msg="iteration %d" % it)
    assert not np.allclose(net.params["sc"][0].data, scale0)     # the Scale did learn
    # the test net shares the statistics and normalizes with them
    for got, want in zip(test_net.params["bn"], ref.blobs):
        np.testing.assert_allclose(got.data, want, rtol=1e-5)


# ---------------------------------------------------------------------------
# in place, and the .caffemodel round trip

def test_in_place_batch_norm_scale_relu_gives_the_same_gradients(x64):
    def body(in_place):
        b, sc, r = ("p", "p", "p") if in_place else ("b", "s", "r")
        return """
        layer { name: "pre" type: "Scale" bottom: "x" top: "p" param { lr_mult: 1 }
                scale_param { filler { type: "gaussian" } } }
        layer { name: "bn" type: "BatchNorm" bottom: "p" top: "%s" }
        layer { name: "sc" type: "Scale" bottom: "%s" top: "%s"
                scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
        layer { name: "relu" type: "ReLU" bottom: "%s" top: "%s" }
        layer { name: "loss" type: "EuclideanLoss" bottom: "%s" bottom: "t" top: "loss" }
        """ % (b, b, sc, sc, r, r)
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal((4, 3, 2, 2))
    grads = []
    for in_place in (False, True):
        jcaffe.set_random_seed(2)
        net = _net(body(in_place))
        net.blobs["x"].data[...] = x
        net.blobs["t"].data[...] = t
        net.forward()
        net.backward()
        grads.append([b.diff.copy() for name in ("pre", "sc") for b in net.params[name]]
                     + [net.blobs["x"].diff.copy()])
    assert any(np.any(g != 0) for g in grads[0])
    for a, b in zip(*grads):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_caffemodel_round_trip_of_a_batch_norm_net(tmp_path):
    train = _net(BN % "", dtype=np.float32)
    rng = np.random.default_rng(1)
    for it in range(3):
        train.blobs["x"].data[...] = rng.normal(0.5, 2.0, size=(4, 3, 2, 2))
        train.forward()
    path = str(tmp_path / "bn.caffemodel")
    train.save(path)
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString(open(path, "rb").read())
    layer = [lp for lp in saved.layer if lp.name == "bn"][0]
    assert [s.lr_mult for s in layer.param] == [0, 0, 0] and len(layer.blobs) == 3
    test_param = text_format.Parse("""
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } } }
        %s""" % (BN % ""), caffe_pb2.NetParameter())
    test = jcaffe.Net(test_param, jcaffe.TEST, weights=path)
    for a, b in zip(train.params["bn"], test.params["bn"]):
        np.testing.assert_array_equal(a.data, b.data)
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    out = test.forward(x=x)["y"]
    mean, var, sf = (b.data.astype(np.float64) for b in test.params["bn"])
    want = (x - (mean / sf).reshape(1, 3, 1, 1)) / np.sqrt((var / sf).reshape(1, 3, 1, 1) + F(1e-5))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    # and the HDF5 layout too
    h5 = str(tmp_path / "bn.caffemodel.h5")
    train.save_hdf5(h5)
    again = jcaffe.Net(test_param, jcaffe.TEST, weights=h5)
    for a, b in zip(train.params["bn"], again.params["bn"]):
        np.testing.assert_array_equal(a.data, b.data)


# ---------------------------------------------------------------------------
# MVN

def _mvn_ref(x, normalize_variance=True, across_channels=False, eps=1e-9):
    n = x.shape[0] if across_channels else x.shape[0] * x.shape[1]
    rows = x.reshape(n, -1)
    c = rows - rows.mean(axis=1, keepdims=True)
    if normalize_variance:
        c = c / (np.sqrt((c ** 2).mean(axis=1, keepdims=True)) + F(eps))
    return c.reshape(x.shape)


@pytest.mark.parametrize("opts", [
    {}, {"across_channels": True}, {"normalize_variance": False},
    {"normalize_variance": False, "across_channels": True}, {"eps": 0.5},
])
def test_mvn_forward_and_exact_backward(x64, rng, opts):
    x = rng.normal(1.0, 2.0, size=(2, 3, 4, 5))
    text = " ".join("%s: %s" % (k, str(v).lower()) for k, v in opts.items())
    layer = make_layer('type: "MVN" mvn_param { %s }' % text, [x.shape])
    assert layer.blobs == [] and layer.reshape([x.shape]) == [x.shape]
    (y,), _ = forward(layer, [x])
    np.testing.assert_allclose(np.asarray(y), _mvn_ref(x, **opts), rtol=1e-12, atol=1e-12)
    check_backward(layer, [x], rtol=1e-9, atol=1e-11)


def test_mvn_takes_at_most_four_axes_as_caffes_does(x64, rng):
    """Caffe's MVN sizes its statistics by num() and channels(), legacy accessors that
    stop Caffe on a blob of more than 4 axes: an error, and the way round it (a 3-axis
    view, N, C and the rest), whose result per channel is the 5-axis one's."""
    with pytest.raises(LayerSetupError, match="MVN layer 'mvn': bottom 0 has 5 axes.*"
                       "legacy accessors.*Flatten with flatten_param \\{ axis: 2 \\}"):
        make_layer('type: "MVN"', [(2, 3, 4, 5, 6)])
    x = rng.normal(1.0, 2.0, size=(2, 3, 4, 5, 6))
    layer = make_layer('type: "MVN"', [(2, 3, 120)])
    (y,), _ = forward(layer, [x.reshape(2, 3, 120)])
    np.testing.assert_allclose(np.asarray(y).reshape(x.shape), _mvn_ref(x), rtol=1e-12,
                               atol=1e-12)


def test_mvn_eps_is_added_to_the_standard_deviation(x64):
    x = np.array([[[1.0, 3.0]]])   # one slice: mean 2, std 1
    layer = make_layer('type: "MVN" mvn_param { eps: 1 }', [x.shape])
    np.testing.assert_allclose(np.asarray(forward(layer, [x])[0][0]), [[[-0.5, 0.5]]])


def test_mvn_constant_slice_has_zero_output_and_finite_diff(x64):
    x = np.full((1, 2, 3), 4.0)
    layer = make_layer('type: "MVN"', [x.shape])
    tops, saved = forward(layer, [x])
    np.testing.assert_array_equal(np.asarray(tops[0]), 0.0)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], tops, saved, [jnp.ones(x.shape)], (True,))
    assert np.all(np.isfinite(np.asarray(dx)))


@pytest.mark.parametrize("snippet", ['type: "MVN"', 'type: "MVN" mvn_param { normalize_variance: false }',
                                     'type: "BatchNorm"', 'type: "Scale" scale_param { bias_term: true }',
                                     'type: "Bias"'])
def test_float32_forward_and_backward_keep_dtype(snippet):
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    layer = make_layer(snippet, [x.shape], dtype=np.float32)
    params = [jnp.asarray(b.data) for b in layer.blobs]
    out = layer.forward(params, [jnp.asarray(x)], None)
    (dx,), pdiffs = layer.backward(params, [jnp.asarray(x)], out[0], out[1],
                                   [jnp.ones_like(out[0][0])], (True,))
    assert out[0][0].dtype == dx.dtype == jnp.float32
    assert all(d is None or d.dtype == jnp.float32 for d in pdiffs)
    assert all(v is None or v.dtype == jnp.float32 for v in (out[2] if len(out) > 2 else []))


def test_gradcheck_checks_batch_norm_bottom_and_skips_its_statistics():
    from gradcheck import check_layer
    report = check_layer('type: "BatchNorm"', [(3, 2, 4)])
    assert report.ok, report
    assert [c.name for c in report.checks] == ["bottom 0"]
    assert sum("not learned (lr_mult 0)" in n for n in report.notes) == 3


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU fusion choices")
def test_batch_norm_forward_writes_no_centred_copy_of_its_input():
    """The variance's x - mean fuses into its reduction: the only array of the input's
    shape that the compiled training forward writes is y (normalization._centred_for_
    reduction; before it, XLA also wrote x - mean, read by the reduction and by y)."""
    shape = (8, 16, 12, 12)
    layer = make_layer('type: "BatchNorm"', [shape], dtype=np.float32)
    params = [jnp.asarray(b.data) for b in layer.blobs]
    step = xla_options.jit(lambda p, x: layer.forward(p, [x], None))
    hlo = step.lower(params, jnp.zeros(shape, jnp.float32)).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]
    full = "f32[%s]" % ",".join(str(d) for d in shape)
    written = re.findall(r"= %s\{[\d,]*\} (fusion|add|subtract|multiply|divide)\(" %
                         re.escape(full), entry)
    assert len(written) == 1, entry


def test_batch_norm_needs_an_axis():
    with pytest.raises(LayerSetupError, match="BatchNorm layer 'batchnorm': bottom must have at "
                                              "least one axis"):
        make_layer('type: "BatchNorm"', [()])
