"""ReLU, TanH, Sigmoid, Dropout: forward vs numpy, backward vs jax.vjp (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcaffe
from layer_testing import check_backward, forward, make_layer

NEURONS = [
    ('type: "ReLU"', lambda x: np.maximum(x, 0)),
    # proto floats are float32: Caffe's double ReLU uses float(0.1) too.
    ('type: "ReLU" relu_param { negative_slope: 0.1 }',
     lambda x: np.where(x > 0, x, float(np.float32(0.1)) * x)),
    # a negative slope: y > 0 where x < 0, so y's sign is not x's
    ('type: "ReLU" relu_param { negative_slope: -0.5 }', lambda x: np.where(x > 0, x, -0.5 * x)),
    ('type: "TanH"', np.tanh),
    ('type: "Sigmoid"', lambda x: 1 / (1 + np.exp(-x))),
    ('type: "Dropout"', lambda x: x),  # TEST phase: identity
]


def _away_from_zero(shape, rng):
    """Values with |x| >= 0.05 so ReLU's kink at 0 is never hit."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.05, 0.5, x)


@pytest.mark.parametrize("snippet,reference", NEURONS)
def test_neuron_forward_and_backward(x64, rng, snippet, reference):
    x = _away_from_zero((2, 3, 4, 5), rng)
    layer = make_layer(snippet, [x.shape], phase=jcaffe.TEST)
    assert layer.reshape([x.shape]) == [x.shape]
    tops, _ = forward(layer, [x])
    np.testing.assert_allclose(np.asarray(tops[0]), reference(x), rtol=1e-12, atol=1e-14)
    assert tops[0].dtype == jnp.float64
    check_backward(layer, [x])


@pytest.mark.parametrize("snippet,reference", NEURONS)
def test_neuron_float32_keeps_dtype(snippet, reference):
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    layer = make_layer(snippet, [x.shape], phase=jcaffe.TEST, dtype=np.float32)
    tops, _ = forward(layer, [x])
    assert tops[0].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(tops[0]), reference(x), rtol=1e-6, atol=1e-6)


def test_dropout_train_scales_kept_units_and_backward_uses_the_mask(x64):
    x = np.ones((100, 50))
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [x.shape])
    tops, mask = forward(layer, [x], key=jax.random.PRNGKey(7))
    y = np.asarray(tops[0])
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.7)
    assert abs(kept.mean() - 0.7) < 0.02
    # Same key, same mask: the explicit backward matches jax.vjp of the forward.
    check_backward(layer, [x])
    dy = np.full(x.shape, 2.0)
    (dx,), _ = layer.backward([], [jnp.asarray(x)], tops, mask, [jnp.asarray(dy)], (True,))
    np.testing.assert_allclose(np.asarray(dx), np.where(kept, 2.0 / 0.7, 0.0))
    # What backward keeps is the mask as booleans (1 byte an element, not the float's 8).
    assert mask.dtype == jnp.bool_ and mask.shape == x.shape
    np.testing.assert_array_equal(np.asarray(mask), kept)


def test_dropout_rejects_bad_ratio():
    with pytest.raises(jcaffe.errors.LayerSetupError, match="Dropout layer 'dropout'.*dropout_ratio"):
        make_layer('type: "Dropout" dropout_param { dropout_ratio: 1.0 }', [(2, 3)])


def test_relu_backward_at_negative_slope(x64):
    x = np.array([-2.0, -0.5, 0.5, 2.0])
    layer = make_layer('type: "ReLU" relu_param { negative_slope: 0.25 }', [x.shape])
    tops, saved = forward(layer, [x])
    (dx,), _ = layer.backward([], [jnp.asarray(x)], tops, saved, [jnp.ones(4)], (True,))
    np.testing.assert_allclose(np.asarray(dx), [0.25, 0.25, 1, 1])
