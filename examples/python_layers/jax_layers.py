"""one_hot.OneHot and euclidean_loss.EuclideanLossLayer written in JAX.

The prototxt names them as it names the numpy layers (``type: "Python"``,
``python_param { module: "jax_layers" layer: "EuclideanLoss" }``), but a
``jcaffe.JaxLayer`` is compiled with the layers around it: a solver step stays
one XLA call, where a numpy Python layer splits the net into segments run from
the host (the digits LeNet of train_onehot_lenet.py: ``--jax``).

A JaxLayer works on shapes and arrays, not Blobs:

* ``setup(bottom_shapes)`` reads options (``self.param_str``) and checks shapes;
* ``reshape(bottom_shapes)`` returns the top shapes;
* ``forward(params, bottoms, rng)`` returns ``(tops, saved)``, ``saved`` being what
  backward needs;
* ``backward(params, bottoms, tops, saved, top_diffs, propagate_down)`` returns
  ``(bottom_diffs, param_diffs)``, with ``None`` where no diff is wanted.

Both functions are traced by JAX: jnp operations only, no numpy on the values and
no Python branches on them. gradcheck checks the backward as for any layer::

    gradcheck layer examples/python_layers/jax_layers.py:EuclideanLoss --bottom 4,3 --bottom 4,3
"""
import math

import jax.numpy as jnp

import jcaffe


class EuclideanLoss(jcaffe.JaxLayer):
    """loss = sum((a - b)^2) / num / 2; d loss / d a = (a - b) / num = -d loss / d b
    (times the top's diff: its loss_weight in a net)."""

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1

    def reshape(self, bottom_shapes):
        a, b = bottom_shapes
        if math.prod(a) != math.prod(b):
            self.fail("inputs must have the same count, got %s and %s", a, b)
        return [()]

    def forward(self, params, bottoms, rng):
        a, b = bottoms
        diff = a - b.reshape(a.shape)
        return [jnp.sum(diff * diff) / a.shape[0] / 2], diff

    def backward(self, params, bottoms, tops, diff, top_diffs, propagate_down):
        scale = top_diffs[0] / bottoms[0].shape[0]
        grads = [scale * diff if propagate_down[0] else None,
                 (-scale * diff).reshape(bottoms[1].shape) if propagate_down[1] else None]
        return grads, []


class OneHot(jcaffe.JaxLayer):
    """Labels (N,) or (N, 1, ...) of integers -> (N, C) one-hot rows (param_str: C).
    No gradient flows to labels."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def allow_force_backward(self, bottom_index):
        return False            # a label, as Caffe's loss layers treat theirs

    def setup(self, bottom_shapes):
        self.num_classes = int(self.param_str or 10)

    def reshape(self, bottom_shapes):
        return [(bottom_shapes[0][0], self.num_classes)]

    def forward(self, params, bottoms, rng):
        labels = bottoms[0].reshape(bottoms[0].shape[0]).astype(jnp.int32)
        classes = jnp.arange(self.num_classes, dtype=jnp.int32)
        return [(labels[:, None] == classes).astype(bottoms[0].dtype)], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if propagate_down[0]:
            self.fail("cannot backpropagate to its labels")
        return [None], []
