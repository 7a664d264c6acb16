"""Python layers for the solver tests (importable because tests/ is on sys.path)."""
import numpy as np

import jcaffe

# 64 fixed samples: x (3 features) and y (2 targets)
_RNG = np.random.default_rng(42)
SAMPLES_X = _RNG.normal(size=(64, 3)).astype(np.float32)
SAMPLES_Y = _RNG.normal(size=(64, 2)).astype(np.float32)


class BatchFeeder(jcaffe.Layer):
    """Tops x, y: the next ``param_str`` samples of SAMPLES_X / SAMPLES_Y on each forward."""

    def setup(self, bottom, top):
        self.batch = int(self.param_str)
        self.pos = 0

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, 3)
        top[1].reshape(self.batch, 2)

    def forward(self, bottom, top):
        idx = np.arange(self.pos, self.pos + self.batch) % len(SAMPLES_X)
        top[0].data[...] = SAMPLES_X[idx]
        top[1].data[...] = SAMPLES_Y[idx]
        self.pos += self.batch

    def backward(self, top, propagate_down, bottom):
        pass


class ClassFeeder(jcaffe.Layer):
    """Tops data (N, 8), label (N,): points around 4 fixed centres, label = centre index;
    a new random batch (seeded) on each forward. param_str: batch size."""

    CENTRES = np.random.default_rng(7).normal(0, 2, size=(4, 8)).astype(np.float32)

    def setup(self, bottom, top):
        self.batch = int(self.param_str)
        self.rng = np.random.default_rng(0)

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, 8)
        top[1].reshape(self.batch)

    def forward(self, bottom, top):
        labels = self.rng.integers(0, 4, self.batch)
        top[0].data[...] = self.CENTRES[labels] + self.rng.normal(0, 1, (self.batch, 8))
        top[1].data[...] = labels

    def backward(self, top, propagate_down, bottom):
        pass


class DigitPatternFeeder(jcaffe.Layer):
    """Tops data (N, 1, 28, 28), label (N,): 10 fixed random 28x28 templates (one per
    class) plus noise, a new seeded batch on each forward. param_str: batch size."""

    TEMPLATES = (np.random.default_rng(3).random((10, 1, 28, 28)) > 0.7).astype(np.float32)

    def setup(self, bottom, top):
        self.batch = int(self.param_str)
        self.rng = np.random.default_rng(0)

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, 1, 28, 28)
        top[1].reshape(self.batch)

    def forward(self, bottom, top):
        labels = self.rng.integers(0, 10, self.batch)
        noise = self.rng.normal(0, 0.3, (self.batch, 1, 28, 28))
        top[0].data[...] = self.TEMPLATES[labels] + noise
        top[1].data[...] = labels

    def backward(self, top, propagate_down, bottom):
        pass


class Doubler(jcaffe.Layer):
    """top = 2 * bottom, a numpy transform of a data layer's top (no backward: nothing
    below it learns)."""

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        raise Exception("Doubler's backward is never called")


class ArgmaxAccuracy(jcaffe.Layer):
    """A metric in numpy at the end of a net: top = the fraction of rows of bottom[0]
    whose argmax is bottom[1]'s label. ``seen`` keeps every score batch it read."""

    def setup(self, bottom, top):
        self.seen = []

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.seen.append(bottom[0].data.copy())
        top[0].data[...] = np.mean(bottom[0].data.argmax(1) == bottom[1].data.astype(int))

    def backward(self, top, propagate_down, bottom):
        raise Exception("a metric's backward is never called")


class VariableSizeFeeder(jcaffe.Layer):
    """One image a batch, as FCN's voc_layers feed them: data (1, 2, H, W) with H, W
    cycling through 6x6, 8x7 and 5x9, and a per-pixel label map (1, 1, H, W) of 0/1."""

    SIZES = [(6, 6), (8, 7), (5, 9)]

    def setup(self, bottom, top):
        self.rng = np.random.default_rng(int(self.param_str or 0))
        self.k = 0

    def reshape(self, bottom, top):
        h, w = self.SIZES[self.k % len(self.SIZES)]
        top[0].reshape(1, 2, h, w)
        top[1].reshape(1, 1, h, w)

    def forward(self, bottom, top):
        image = self.rng.normal(size=top[0].shape)
        top[0].data[...] = image
        top[1].data[...] = (image[:, :1] > 0)
        self.k += 1

    def backward(self, top, propagate_down, bottom):
        pass
