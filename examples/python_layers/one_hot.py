"""OneHot: labels (N,) or (N, 1, ...) of integers -> (N, C) one-hot rows (param_str: C).

No gradient flows to labels: backward writes nothing (propagate_down is
always false for a label). gradcheck checks the contract (tops fully written,
bottoms untouched, no diff written) and treats bottom 0 as a label.
"""
import numpy as np

import jcaffe


class OneHot(jcaffe.Layer):
    def setup(self, bottom, top):
        self.num_classes = int(self.param_str or 10)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape[0], self.num_classes)

    def forward(self, bottom, top):
        labels = bottom[0].data.reshape(bottom[0].shape[0]).astype(int)
        top[0].data[...] = 0
        top[0].data[np.arange(len(labels)), labels] = 1

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise Exception("OneHot cannot backpropagate to its labels")


class OneHotForgetsToZero(OneHot):
    """The classic bug: sets the ones but never clears the previous batch's ones."""

    def forward(self, bottom, top):
        labels = bottom[0].data.reshape(bottom[0].shape[0]).astype(int)
        top[0].data[np.arange(len(labels)), labels] = 1
