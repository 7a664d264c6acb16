"""A pycaffe-style metric written in numpy, as Caffe users add them to TRAIN nets:
top-1 accuracy of the scores against the labels (Caffe's Accuracy layer without
top_k or ignore_label). bench_pyloop.py puts it at the end of its LeNet step, where
it runs on the host after the one compiled call (Solver._plan_or_reason)."""
import numpy as np

import jcaffe


class Accuracy(jcaffe.Layer):
    def reshape(self, bottom, top):
        if bottom[0].shape[0] != bottom[1].shape[0]:
            raise ValueError("Accuracy: scores %s and labels %s differ in their batch"
                             % (bottom[0].shape, bottom[1].shape))
        top[0].reshape(1)

    def forward(self, bottom, top):
        scores = bottom[0].data.reshape(bottom[0].shape[0], -1)
        labels = bottom[1].data.reshape(-1).astype(int)
        top[0].data[0] = np.mean(scores.argmax(1) == labels)

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise NotImplementedError("Accuracy has no gradient (as Caffe's Accuracy layer)")
