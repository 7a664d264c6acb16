"""The classic pycaffe EuclideanLoss layer, written with numpy.

loss = sum((a - b)^2) / num / 2;  d loss / d a = (a - b) / num = -d loss / d b.
Works in the dtype of its bottoms (float32 in a default net, float64 under gradcheck).
"""
import numpy as np

import jcaffe


class EuclideanLossLayer(jcaffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num
