"""Embed: lookup forward vs numpy, weight shape (input_dim, num_output) and fillers, scatter-add
weight gradient, bias gradient, index range errors, no backward to the indices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcaffe.errors import BackwardError, LayerSetupError
from layer_testing import check_backward, forward, make_layer
from netutil import make_net

GAUSS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def embed(params, bias=True):
    return ('type: "Embed" embed_param { %s bias_term: %s %s }'
            % (params, str(bias).lower(), GAUSS))


@pytest.mark.parametrize("bias", [True, False])
def test_embed_forward_and_param_gradients(x64, rng, bias):
    idx = np.array([[0., 3., 3.], [4., 1., 0.]])
    layer = make_layer(embed("num_output: 6 input_dim: 5", bias), [idx.shape])
    assert layer.blobs[0].shape == (5, 6)
    assert len(layer.blobs) == (2 if bias else 1)
    assert layer.top_shapes == ((2, 3, 6),)
    w = layer.blobs[0].data
    (y,), _ = forward(layer, [idx])
    expected = w[idx.astype(int)] + (layer.blobs[1].data if bias else 0)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12)
    dy = rng.standard_normal((2, 3, 6))
    (dx,), pdiffs = layer.backward([jnp.asarray(b.data) for b in layer.blobs], [jnp.asarray(idx)],
                                   [y], None, [jnp.asarray(dy)], (False,))
    assert dx is None
    dw = np.zeros((5, 6))
    np.add.at(dw, idx.astype(int).ravel(), dy.reshape(-1, 6))
    np.testing.assert_allclose(np.asarray(pdiffs[0]), dw, rtol=1e-12)
    if bias:
        np.testing.assert_allclose(np.asarray(pdiffs[1]), dy.reshape(-1, 6).sum(0), rtol=1e-12)
    check_backward(layer, [idx], propagate_down=[False])


def test_embed_defaults():
    layer = make_layer('type: "Embed" embed_param { num_output: 2 input_dim: 3 }', [(4,)])
    assert len(layer.blobs) == 2                              # bias_term defaults to true
    assert not layer.blobs[0].data.any() and not layer.blobs[1].data.any()   # constant 0
    assert not layer.allow_force_backward(0)


def test_embed_param_propagate_down_false_gives_none(x64):
    layer = make_layer(embed("num_output: 2 input_dim: 3"), [(4,)])
    layer.param_propagate_down = [False, True]
    params = [jnp.asarray(b.data) for b in layer.blobs]
    _, (dw, db) = layer.backward(params, [jnp.zeros(4)], None, None, [jnp.ones((4, 2))], (False,))
    assert dw is None and db is not None


@pytest.mark.parametrize("params,match", [
    ("input_dim: 3", "num_output must be positive"),
    ("num_output: 2", "input_dim must be positive"),
])
def test_embed_setup_errors(params, match):
    with pytest.raises(LayerSetupError, match="Embed layer 'embed': EmbedLayer " + match):
        make_layer('type: "Embed" embed_param { %s }' % params, [(4,)])


def test_embed_refuses_backward_to_its_input(x64):
    layer = make_layer(embed("num_output: 2 input_dim: 3"), [(4,)])
    with pytest.raises(BackwardError, match="Embed layer 'embed' cannot backpropagate to its "
                                            "index input"):
        layer.backward([jnp.asarray(b.data) for b in layer.blobs], [jnp.zeros(4)], None, None,
                       [jnp.ones((4, 2))], (True,))


@pytest.mark.parametrize("bad", [[0., 3.], [-1., 1.], [0.5, 1.]])
def test_embed_out_of_range_or_fractional_index_raises_naming_the_layer(x64, bad):
    layer = make_layer(embed("num_output: 2 input_dim: 3"), [(2,)])
    with pytest.raises(Exception, match="Embed layer 'embed': indices \\(bottom 0\\) must be "
                                        "integers in \\[0, 3\\)"):
        (y,), _ = forward(layer, [np.array(bad)])
        jax.block_until_ready(y)


EMBED_NET = """
    %s
    layer { name: "in" type: "Input" top: "words" top: "target"
            input_param { shape { dim: 4 } shape { dim: 4 dim: 3 } } }
    layer { name: "embed" type: "Embed" bottom: "words" top: "vec"
            embed_param { num_output: 3 input_dim: 6 weight_filler { type: "gaussian" } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "vec" bottom: "target" top: "loss" }
"""


@pytest.mark.parametrize("force", ["", "force_backward: true"])
def test_embed_in_a_net_learns_rows_and_gives_no_diff_to_indices(tmp_path, rng, force):
    net = make_net(tmp_path, EMBED_NET % force)
    assert net.layer_need_backward["embed"]
    assert net.bottom_need_backward["embed"] == [False]   # even under force_backward
    words = np.array([1., 4., 1., 0.])
    target = rng.standard_normal((4, 3)).astype(np.float32)
    net.blobs["words"].data[...] = words
    net.blobs["target"].data[...] = target
    net.forward()
    w, b = (p.data.copy() for p in net.params["embed"])
    vec = w[words.astype(int)] + b
    np.testing.assert_allclose(net.blobs["vec"].data, vec, rtol=1e-6)
    net.clear_param_diffs()
    net.backward()
    dvec = (vec - target) / 4                              # EuclideanLoss: 1/(2N) |d|^2
    dw = np.zeros_like(w)
    np.add.at(dw, words.astype(int), dvec)
    np.testing.assert_allclose(net.params["embed"][0].diff, dw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.params["embed"][1].diff, dvec.sum(0), rtol=1e-5, atol=1e-7)


def test_bad_index_in_a_fused_solver_step_raises_naming_the_layer():
    """The check calls the host only when an index is bad (a lax.cond inside the compiled
    step): a good batch steps, a bad one raises the layer's error from the fused step."""
    from google.protobuf import text_format
    import jcaffe
    from jcaffe.proto import caffe_pb2
    sp = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=10, display=0)
    text_format.Parse(EMBED_NET % "", sp.net_param)
    solver = jcaffe.get_solver(sp)
    assert solver.fuse_step
    solver.net.blobs["words"].data[...] = [1, 4, 1, 0]
    solver.step(1)
    assert np.isfinite(solver.net.blobs["loss"].data)
    solver.net.blobs["words"].data[...] = [1, 6, 1, 0]
    with pytest.raises(Exception, match="Embed layer 'embed': indices \\(bottom 0\\) must be "
                                        "integers in \\[0, 6\\); got values in \\[0, 6\\]"):
        solver.step(1)


def test_embed_net_whose_indices_need_backward_raises_clearly(tmp_path):
    text = """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 } } }
        layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 4 } } }
        layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "w" top: "words" }
        layer { name: "embed" type: "Embed" bottom: "words" top: "vec"
                embed_param { num_output: 3 input_dim: 6 } }
        layer { name: "loss" type: "Reduction" bottom: "vec" top: "loss" loss_weight: 1 }
    """
    net = make_net(tmp_path, text)
    assert net.bottom_need_backward["embed"] == [True]
    net.forward()
    with pytest.raises(BackwardError, match="set propagate_down: false"):
        net.backward()
    ok = make_net(tmp_path, text.replace('top: "vec"', 'top: "vec" propagate_down: false'))
    ok.forward()
    ok.backward()
