"""Helpers for testing one built-in layer outside a Net.

``make_layer`` builds a layer from a prototxt snippet and bottom shapes the way
the Net would (Caffe's SetUp), ``forward`` runs it, and ``check_backward``
compares the hand-written backward with ``jax.vjp`` of the forward for every
bottom with propagate_down and every param, under float64.
"""
import jax
import jax.numpy as jnp
import numpy as np
from google.protobuf import text_format

from gradcheck.layer_check import default_num_top, learned_params
from jcaffe.layer import create_layer
from jcaffe.proto import caffe_pb2


def make_layer(snippet, bottom_shapes, phase=caffe_pb2.TRAIN, dtype=np.float64, seed=0):
    """A set-up layer from e.g. 'type: "ReLU" relu_param { negative_slope: 0.1 }'."""
    lp = text_format.Parse(snippet, caffe_pb2.LayerParameter())
    if not lp.name:
        lp.name = lp.type.lower()
    lp.phase = phase
    if not lp.bottom:
        lp.bottom.extend("b%d" % i for i in range(len(bottom_shapes)))
    layer = create_layer(lp, dtype)
    num_top = len(lp.top) or default_num_top(layer)
    layer.layer_setup(bottom_shapes, num_top, np.random.default_rng(seed))
    layer.param_propagate_down = learned_params(layer)   # lr_mult 0 (BatchNorm's stats): no diff
    return layer


def params_of(layer):
    return [jnp.asarray(b.data) for b in layer.blobs]


def forward(layer, bottoms, key=None):
    key = jax.random.PRNGKey(0) if key is None else key
    return jax.jit(lambda p, b, k: layer.forward(p, b, k)[:2])(
        params_of(layer), [jnp.asarray(b) for b in bottoms], key)


def check_backward(layer, bottoms, propagate_down=None, rtol=1e-6, atol=1e-8, seed=1):
    """Explicit backward == jax.vjp(forward) for the chosen bottoms and all params."""
    propagate_down = propagate_down or [True] * len(bottoms)
    params = params_of(layer)
    bottoms = [jnp.asarray(b) for b in bottoms]
    key = jax.random.PRNGKey(0)

    def f(params, bottoms):
        return layer.forward(params, bottoms, key)[0]

    # jitted, as the net runs layers (op by op, the many small ops of a layer like max
    # pooling or im2col each compiled on their own: several times slower)
    tops, saved = forward(layer, bottoms, key)
    r = np.random.default_rng(seed)
    top_diffs = [jnp.asarray(r.standard_normal(t.shape), t.dtype) for t in tops]
    ref_params, ref_bottoms = jax.jit(lambda p, b, d: jax.vjp(f, p, b)[1](d))(
        params, bottoms, top_diffs)
    bottom_diffs, param_diffs = jax.jit(lambda p, b, t, s, d: layer.backward(
        p, b, t, s, d, tuple(propagate_down)))(params, bottoms, tops, saved, top_diffs)
    for i, pd in enumerate(propagate_down):
        if pd:
            np.testing.assert_allclose(np.asarray(bottom_diffs[i]), np.asarray(ref_bottoms[i]),
                                       rtol=rtol, atol=atol, err_msg="bottom %d diff" % i)
    for i, ref in enumerate(ref_params):
        if not layer.param_propagate_down[i]:
            continue
        np.testing.assert_allclose(np.asarray(param_diffs[i]), np.asarray(ref),
                                   rtol=rtol, atol=atol, err_msg="param %d diff" % i)
    return bottom_diffs, param_diffs
