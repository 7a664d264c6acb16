"""Layers for sign_task.py: a parameter-free Python feature layer that counts its backward calls."""
import numpy as np

import jcaffe


class SoftSign(jcaffe.Layer):
    """top = tanh(4 x): a feature map with no learnable params (so Caffe skips its
    backward unless something below it needs a gradient or force_backward is set)."""

    backward_calls = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = np.tanh(4.0 * bottom[0].data)

    def backward(self, top, propagate_down, bottom):
        type(self).backward_calls += 1
        if propagate_down[0]:
            t = top[0].data
            bottom[0].diff[...] = top[0].diff * 4.0 * (1.0 - t * t)
