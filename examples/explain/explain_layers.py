"""A Python layer for the explain examples: top = bottom, and it says when Caffe
asks it for backward."""
import jcaffe


class Identity(jcaffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        print("Identity.backward called for layer %s" % self.name)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff
