"""Slice, Reshape, Tile, Silence, Parameter, BatchReindex, Filter: Caffe's shapes, defaults and
errors, forward vs numpy, backward vs jax.vjp, and their behaviour inside a Net."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcaffe
from gradcheck import check_layer
from jcaffe.errors import BackwardError, LayerSetupError
from layer_testing import check_backward, forward, make_layer
from netutil import make_net


def sgd_solver(tmp_path, net_text, lr):
    net_path = tmp_path / "net.prototxt"
    net_path.write_text(net_text)
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text('net: "%s" base_lr: %g lr_policy: "fixed" max_iter: 10 display: 0 '
                           'snapshot_prefix: "%s"' % (net_path, lr, tmp_path / "s"))
    return jcaffe.get_solver(str(solver_path))


# -- Slice -----------------------------------------------------------------------

def test_slice_equal_parts_default_axis_1(x64, rng):
    layer = make_layer('type: "Slice" top: "a" top: "b" top: "c"', [(2, 6, 3)])
    assert layer.top_shapes == ((2, 2, 3),) * 3
    x = rng.standard_normal((2, 6, 3))
    tops, _ = forward(layer, [x])
    for t, ref in zip(tops, np.split(x, 3, axis=1)):
        np.testing.assert_array_equal(np.asarray(t), ref)
    check_backward(layer, [x])


def test_slice_points_and_negative_axis(x64, rng):
    layer = make_layer('type: "Slice" top: "a" top: "b" top: "c" '
                       'slice_param { axis: -1 slice_point: 1 slice_point: 4 }', [(2, 3, 6)])
    assert layer.top_shapes == ((2, 3, 1), (2, 3, 3), (2, 3, 2))
    x = rng.standard_normal((2, 3, 6))
    tops, _ = forward(layer, [x])
    for t, ref in zip(tops, np.split(x, [1, 4], axis=2)):
        np.testing.assert_array_equal(np.asarray(t), ref)
    check_backward(layer, [x])


def test_slice_legacy_slice_dim(x64, rng):
    layer = make_layer('type: "Slice" top: "a" top: "b" slice_param { slice_dim: 0 }', [(4, 3)])
    assert layer.top_shapes == ((2, 3), (2, 3))


def test_slice_single_top_is_identity(x64, rng):
    layer = make_layer('type: "Slice" top: "a"', [(2, 3)])
    x = rng.standard_normal((2, 3))
    (y,), _ = forward(layer, [x])
    np.testing.assert_array_equal(np.asarray(y), x)
    check_backward(layer, [x])


def test_slice_propagate_down_false(x64, rng):
    layer = make_layer('type: "Slice" top: "a" top: "b"', [(2, 4)])
    (dx,), _ = layer.backward([], [jnp.zeros((2, 4))], None, None,
                              [jnp.ones((2, 2)), jnp.ones((2, 2))], (False,))
    assert dx is None


@pytest.mark.parametrize("snippet,shape,match", [
    ('top: "a" top: "b" top: "c"', (2, 5), r"Number of top blobs \(3\) should evenly divide input "
                                         r"slice axis \(5\)"),
    ('top: "a" top: "b" slice_param { slice_point: 1 slice_point: 2 }', (2, 5),
     "2 slice_point values given for 2 tops"),
    ('top: "a" top: "b" slice_param { slice_point: 0 }', (2, 5), "must increase and be > 0"),
    ('top: "a" top: "b" top: "c" slice_param { slice_point: 3 slice_point: 2 }', (2, 5),
     "must increase"),
    ('top: "a" top: "b" slice_param { slice_point: 7 }', (2, 5), "beyond the slice axis"),
    ('top: "a" top: "b" slice_param { axis: 2 }', (2, 5), "axis 2 is out of range"),
    ('top: "a" top: "b" slice_param { slice_dim: 3 }', (2, 5), "slice_dim 3 out of range"),
    ('top: "a" top: "b" slice_param { axis: 1 slice_dim: 1 }', (2, 4),
     "Either axis or slice_dim should be specified; not both"),
])
def test_slice_errors_name_the_layer(snippet, shape, match):
    with pytest.raises(LayerSetupError, match="Slice layer 'slice': .*" + match):
        make_layer('type: "Slice" ' + snippet, [shape])


# -- Reshape ---------------------------------------------------------------------

@pytest.mark.parametrize("params,bottom,top", [
    ("shape { dim: 0 dim: -1 }", (2, 3, 4, 5), (2, 60)),
    ("shape { dim: 6 dim: 20 }", (2, 3, 4, 5), (6, 20)),
    ("shape { dim: 0 dim: 2 dim: -1 dim: 0 }", (2, 3, 4, 5), (2, 2, 6, 5)),
    ("shape { dim: -1 }", (2, 3, 4, 5), (120,)),
    # axis / num_axes: Caffe's own examples (caffe.proto).
    ("axis: 0 num_axes: 0 shape { dim: 1 }", (2, 8), (1, 2, 8)),
    ("axis: 1 num_axes: 0 shape { dim: 1 }", (2, 8), (2, 1, 8)),
    ("axis: -1 num_axes: 0 shape { dim: 1 }", (2, 8), (2, 8, 1)),
    ("axis: 1 num_axes: 2 shape { dim: -1 }", (2, 3, 4, 5), (2, 12, 5)),
    ("axis: -2 num_axes: -1 shape { dim: 2 dim: -1 }", (2, 3, 4, 6), (2, 3, 4, 2, 3)),
    ("axis: -3 num_axes: 1 shape { dim: 0 dim: 1 }", (2, 3, 4), (2, 3, 1, 4)),
    ("axis: 2 shape { dim: 0 dim: 5 }", (2, 3, 4, 5), (2, 3, 4, 5)),
    ("axis: 1 num_axes: 1 shape { dim: 3 dim: 1 }", (2, 3, 4), (2, 3, 1, 4)),
])
def test_reshape_shapes(x64, rng, params, bottom, top):
    layer = make_layer('type: "Reshape" top: "y" reshape_param { %s }' % params, [bottom])
    assert layer.top_shapes == (top,)
    x = rng.standard_normal(bottom)
    (y,), _ = forward(layer, [x])
    np.testing.assert_array_equal(np.asarray(y), x.reshape(top))
    check_backward(layer, [x])


@pytest.mark.parametrize("params,bottom,match", [
    ("shape { dim: -1 dim: -1 }", (2, 3), "multiple -1 dims"),
    ("shape { dim: 0 dim: 0 dim: 0 }", (2, 3), "new shape contains a 0, but there was no "
                                               "corresponding bottom axis to copy"),
    ("shape { dim: 4 dim: -1 }", (2, 3), r"bottom count \(6\) must be divisible by the product of "
                                         r"the specified dimensions \(4\)"),
    ("shape { dim: 5 }", (2, 3), "output count must match input count"),
    ("axis: 3 shape { dim: 1 }", (2, 3), "axis 3 out of range for 2-D input blob"),
    ("axis: -4 shape { dim: 1 }", (2, 3), "axis -4 out of range"),
    ("axis: 1 num_axes: 2 shape { dim: 3 }", (2, 3), "end_axis = axis \\+ num_axes is out of range"),
    ("num_axes: -2 shape { dim: 6 }", (2, 3), "num_axes must be >= 0, or -1 for all"),
    ("shape { dim: -2 dim: -3 }", (2, 3), "dims must be positive, 0"),
])
def test_reshape_errors(params, bottom, match):
    with pytest.raises(LayerSetupError, match="Reshape layer 'reshape': .*" + match):
        make_layer('type: "Reshape" top: "y" reshape_param { %s }' % params, [bottom])


def test_reshape_refuses_in_place():
    with pytest.raises(LayerSetupError, match="does not allow in-place computation"):
        make_layer('type: "Reshape" bottom: "x" top: "x" reshape_param { shape { dim: -1 } }',
                   [(2, 3)])


def test_reshape_follows_input_reshape(tmp_path):
    net = make_net(tmp_path, """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 } } }
        layer { name: "r" type: "Reshape" bottom: "x" top: "y"
                reshape_param { shape { dim: 0 dim: -1 } } }
    """)
    assert net.blobs["y"].shape == (2, 12)
    net.blobs["x"].reshape(5, 3, 4)
    net.blobs["x"].data[...] = np.arange(60).reshape(5, 3, 4)
    net.forward()
    assert net.blobs["y"].shape == (5, 12)
    np.testing.assert_array_equal(net.blobs["y"].data, np.arange(60).reshape(5, 12))


# -- Tile ------------------------------------------------------------------------

@pytest.mark.parametrize("slices_max", [32, 0])     # the backward by slices / reduced
@pytest.mark.parametrize("axis,tiles", [(1, 3), (0, 2), (-1, 2), (2, 1)])
def test_tile(x64, rng, monkeypatch, axis, tiles, slices_max):
    from jcaffe.layers.shaping import Tile
    monkeypatch.setattr(Tile, "SLICES_MAX_TILES", slices_max)
    shape = (2, 3, 2)
    layer = make_layer('type: "Tile" tile_param { axis: %d tiles: %d }' % (axis, tiles), [shape])
    x = rng.standard_normal(shape)
    reps = [1, 1, 1]
    reps[axis] = tiles
    (y,), _ = forward(layer, [x])
    np.testing.assert_array_equal(np.asarray(y), np.tile(x, reps))
    assert layer.top_shapes[0] == np.tile(x, reps).shape
    check_backward(layer, [x])


def test_tile_default_axis_is_1(x64, rng):
    assert make_layer('type: "Tile" tile_param { tiles: 2 }', [(2, 3)]).top_shapes == ((2, 6),)


@pytest.mark.parametrize("params,match", [("", "Number of tiles must be specified"),
                                          ("tiles: 0", "Number of tiles must be positive"),
                                          ("tiles: 2 axis: 5", "axis 5 is out of range")])
def test_tile_errors(params, match):
    with pytest.raises(LayerSetupError, match="Tile layer 'tile': " + match):
        make_layer('type: "Tile" tile_param { %s }' % params, [(2, 3)])


# -- Silence ---------------------------------------------------------------------

SILENCE_NET = """
    force_backward: %s
    layer { name: "in" type: "Input" top: "x" top: "z"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 4 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    layer { name: "sil" type: "Silence" bottom: "y" bottom: "z" }
"""


def test_silence_has_no_tops_and_needs_no_backward(tmp_path):
    net = make_net(tmp_path, SILENCE_NET % "false")
    assert net.top_names["sil"] == [] and net.outputs == []
    assert not net.layer_need_backward["sil"]
    assert not net.layer_need_backward["ip"]   # nothing reaches a loss
    net.forward()
    net.backward()


def test_silence_under_force_backward_zeroes_bottom_diffs_never_data(tmp_path, rng):
    net = make_net(tmp_path, SILENCE_NET % "true")
    assert net.layer_need_backward["sil"] and net.bottom_need_backward["sil"] == [True, True]
    x, z = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["z"].data[...] = z
    net.forward()
    y = net.blobs["y"].data.copy()
    net.blobs["y"].diff[...] = 7.0
    net.blobs["z"].diff[...] = 7.0
    net.backward()
    assert not net.blobs["y"].diff.any() and not net.blobs["z"].diff.any()
    assert not net.blobs["x"].diff.any()
    np.testing.assert_array_equal(net.blobs["y"].data, y)
    np.testing.assert_array_equal(net.blobs["z"].data, z)
    np.testing.assert_array_equal(net.blobs["x"].data, x)


def test_silence_backward_respects_propagate_down(x64):
    layer = make_layer('type: "Silence"', [(2,), (3,)])
    assert layer.top_shapes == ()
    diffs, _ = layer.backward([], [jnp.ones(2), jnp.ones(3)], [], None, [], (False, True))
    assert diffs[0] is None and not np.asarray(diffs[1]).any()


# -- Parameter -------------------------------------------------------------------

PARAM_NET = """
    layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 3 } } }
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "prod" type: "Eltwise" bottom: "w" bottom: "x" top: "wx"
            eltwise_param { operation: PROD } }
    layer { name: "loss" type: "Reduction" bottom: "wx" top: "loss" loss_weight: 1 }
"""


def test_parameter_blob_is_the_top_and_gets_its_diff(tmp_path, rng):
    net = make_net(tmp_path, PARAM_NET)
    w = net.params["p"][0]
    assert w.shape == (2, 3) and not w.data.any()      # Caffe gives it no filler: zeros
    assert net.layer_need_backward["p"]
    w.data[...] = rng.standard_normal((2, 3))
    x = rng.standard_normal((2, 3))
    net.blobs["x"].data[...] = x
    out = net.forward()
    np.testing.assert_allclose(out["loss"], np.sum(w.data * x), rtol=1e-5)
    np.testing.assert_array_equal(net.blobs["w"].data, w.data)
    net.clear_param_diffs()
    net.backward()
    np.testing.assert_allclose(w.diff, x, rtol=1e-6)
    net.backward()                                      # param diffs accumulate
    np.testing.assert_allclose(w.diff, 2 * x, rtol=1e-6)


def test_parameter_trains_with_a_solver(tmp_path, rng):
    solver = sgd_solver(tmp_path, PARAM_NET, 0.5)
    solver.net.blobs["x"].data[...] = 1.0
    solver.step(2)
    # loss = sum(w * 1): each step moves w by -lr * 1.
    np.testing.assert_allclose(solver.net.params["p"][0].data, -1.0 * np.ones((2, 3)), rtol=1e-6)


def test_parameter_round_trips_through_caffemodel(tmp_path, rng):
    net = make_net(tmp_path, PARAM_NET)
    net.params["p"][0].data[...] = rng.standard_normal((2, 3))
    net.save(str(tmp_path / "w.caffemodel"))
    other = make_net(tmp_path, PARAM_NET, weights=str(tmp_path / "w.caffemodel"))
    np.testing.assert_array_equal(other.params["p"][0].data, net.params["p"][0].data)


# -- BatchReindex ----------------------------------------------------------------

def test_batch_reindex_forward_and_scatter_add_backward(x64, rng):
    x = rng.standard_normal((4, 2, 3))
    idx = np.array([2., 0., 2., 3., 2.])
    layer = make_layer('type: "BatchReindex"', [x.shape, idx.shape])
    assert layer.top_shapes == ((5, 2, 3),)
    (y,), _ = forward(layer, [x, idx])
    np.testing.assert_array_equal(np.asarray(y), x[idx.astype(int)])
    dy = rng.standard_normal((5, 2, 3))
    (dx, didx), _ = layer.backward([], [jnp.asarray(x), jnp.asarray(idx)], [y], None,
                                   [jnp.asarray(dy)], (True, False))
    expected = np.zeros_like(x)
    np.add.at(expected, idx.astype(int), dy)
    np.testing.assert_allclose(np.asarray(dx), expected, rtol=1e-12)
    assert didx is None
    check_backward(layer, [x, idx], propagate_down=[True, False])


def test_batch_reindex_refuses_backward_to_indices(x64):
    layer = make_layer('type: "BatchReindex"', [(3, 2), (2,)])
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    with pytest.raises(BackwardError, match="BatchReindex layer 'batchreindex' cannot "
                                            "backpropagate to its index input"):
        layer.backward([], [jnp.zeros((3, 2)), jnp.zeros(2)], None, None, [jnp.zeros((2, 2))],
                       (True, True))


def test_batch_reindex_index_must_have_one_axis():
    with pytest.raises(LayerSetupError, match="index bottom .* exactly one axis.*2 1"):
        make_layer('type: "BatchReindex"', [(3, 2), (2, 1)])


@pytest.mark.parametrize("bad", [[0., 3.], [-1., 0.]])
def test_batch_reindex_out_of_range_index_raises_naming_the_layer(x64, bad):
    layer = make_layer('type: "BatchReindex"', [(3, 2), (2,)])
    with pytest.raises(Exception, match="BatchReindex layer 'batchreindex': indices .* must be "
                                        "integers in \\[0, 3\\)"):
        (y,), _ = forward(layer, [np.zeros((3, 2)), np.array(bad)])
        jax.block_until_ready(y)


BATCH_REINDEX_NET = """
    force_backward: true
    layer { name: "in" type: "Input" top: "x" top: "idx"
            input_param { shape { dim: 3 dim: 2 } shape { dim: 4 } } }
    layer { name: "re" type: "BatchReindex" bottom: "x" bottom: "idx" top: "y" }
"""


def test_batch_reindex_in_a_net_force_backward_skips_the_indices(tmp_path, rng):
    net = make_net(tmp_path, BATCH_REINDEX_NET)
    assert net.bottom_need_backward["re"] == [True, False]
    x = rng.standard_normal((3, 2))
    net.blobs["x"].data[...] = x
    net.blobs["idx"].data[...] = [1, 1, 0, 2]
    net.forward()
    np.testing.assert_allclose(net.blobs["y"].data, x[[1, 1, 0, 2]])
    net.blobs["y"].diff[...] = 1.0
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, [[1, 1], [2, 2], [1, 1]])


# -- Filter ----------------------------------------------------------------------

def test_filter_selects_items_and_scatters_diffs_back():
    x = np.arange(12.).reshape(4, 3)
    z = np.arange(4.) * 10
    sel = np.array([[1.], [0.], [2.], [0.]])
    report = check_layer('type: "Filter" top: "a" top: "b"', bottoms=[x, z, sel])
    assert report.ok, report


FILTER_NET = """
    name: "filter"
    layer { name: "in" type: "Input" top: "x" top: "sel"
            input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
    layer { name: "filter" type: "Filter" bottom: "x" bottom: "sel" top: "xs" }
    layer { name: "ip" type: "InnerProduct" bottom: "xs" top: "y"
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    layer { name: "loss" type: "Reduction" bottom: "y" top: "loss" loss_weight: 1
            reduction_param { operation: SUMSQ } }
"""


def test_filter_in_a_net_top_batch_follows_the_selector_every_forward(tmp_path, rng):
    net = make_net(tmp_path, "force_backward: true\n" + FILTER_NET)
    assert net.blobs["xs"].shape == (4, 3)              # full batch until the first forward
    assert net.bottom_need_backward["filter"] == [True, False]
    w = net.params["ip"][0].data
    b = net.params["ip"][1].data
    x = rng.standard_normal((4, 3))
    net.blobs["x"].data[...] = x
    for sel in ([1, 0, 1, 1], [0, 1, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]):
        net.blobs["sel"].data[...] = sel
        keep = np.flatnonzero(sel)
        out = net.forward()
        y = x[keep] @ w.T + b
        assert net.blobs["xs"].shape == (len(keep), 3) and net.blobs["y"].shape == (len(keep), 2)
        np.testing.assert_allclose(out["loss"], np.sum(y * y), rtol=1e-5, atol=1e-6)
        net.clear_param_diffs()
        net.backward()
        dx = np.zeros((4, 3), np.float32)
        dx[keep] = (2 * y) @ w
        np.testing.assert_allclose(net.blobs["x"].diff, dx, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(net.params["ip"][0].diff, (2 * y).T @ x[keep], rtol=1e-5,
                                   atol=1e-6)


def test_filter_net_gradients_by_gradcheck(tmp_path):
    from gradcheck import check_net
    path = tmp_path / "f.prototxt"
    path.write_text(FILTER_NET)
    report = check_net(str(path), inputs={"x": np.random.default_rng(0).standard_normal((4, 3)),
                                          "sel": np.array([1., 0., 1., 1.])})
    assert report.ok, report


def test_filter_refuses_backward_to_selector():
    from jcaffe.blob import Blob
    from jcaffe.layer import create_layer
    from google.protobuf import text_format
    from jcaffe.proto import caffe_pb2
    lp = text_format.Parse('name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y"',
                           caffe_pb2.LayerParameter())
    layer = create_layer(lp)
    assert layer.is_host and not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    bottom, top = [Blob((2, 3)), Blob((2,))], [Blob()]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    with pytest.raises(BackwardError, match="Filter layer 'f' cannot backpropagate to its "
                                            "selector"):
        layer.backward(top, [True, True], bottom)


@pytest.mark.parametrize("shapes,match", [
    ([(4, 3), (4, 2)], "Selector blob dimensions must be singletons"),
    ([(4, 3), (5,)], "Each bottom should have the same 0th dimension as the selector blob: bottom 0 has "
                     "shape 4 3"),
])
def test_filter_shape_errors(tmp_path, shapes, match):
    a, s = shapes
    text = """
        layer { name: "in" type: "Input" top: "x" top: "sel"
                input_param { shape { %s } shape { %s } } }
        layer { name: "filter" type: "Filter" bottom: "x" bottom: "sel" top: "xs" }
    """ % (" ".join("dim: %d" % d for d in a), " ".join("dim: %d" % d for d in s))
    with pytest.raises(LayerSetupError, match="Filter layer 'filter': " + match):
        make_net(tmp_path, text)


def test_filter_needs_one_top_per_filtered_bottom(tmp_path):
    text = """
        layer { name: "in" type: "Input" top: "x" top: "sel"
                input_param { shape { dim: 4 } shape { dim: 4 } } }
        layer { name: "filter" type: "Filter" bottom: "x" bottom: "sel" top: "a" top: "b" }
    """
    with pytest.raises(LayerSetupError, match="one top per filtered bottom"):
        make_net(tmp_path, text)


def test_filter_net_trains_with_a_solver_step_by_step(tmp_path, rng):
    """A host layer in the net: the solver runs forward/backward segment by segment."""
    solver = sgd_solver(tmp_path, FILTER_NET, 0.1)
    net = solver.net
    x = rng.standard_normal((4, 3)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["sel"].data[...] = [0, 1, 1, 0]
    w0, b0 = net.params["ip"][0].data.copy(), net.params["ip"][1].data.copy()
    solver.step(1)
    y = x[[1, 2]] @ w0.T + b0
    np.testing.assert_allclose(net.params["ip"][0].data, w0 - 0.1 * (2 * y).T @ x[[1, 2]],
                               rtol=1e-5, atol=1e-6)
    net.blobs["sel"].data[...] = [1, 1, 1, 0]
    solver.step(1)
    assert net.blobs["xs"].shape == (3, 3)
