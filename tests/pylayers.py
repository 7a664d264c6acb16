"""Python layers used by the tests (importable because tests/ is on sys.path)."""
import numpy as np

import jcaffe


class Identity(jcaffe.Layer):
    """top = bottom; counts calls so tests can see whether Caffe asked for backward."""

    forward_calls = 0
    backward_calls = 0

    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise Exception("Identity needs one bottom")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        type(self).forward_calls += 1
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        type(self).backward_calls += 1
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff


class ScaleByParam(jcaffe.Layer):
    """top = w * bottom with one learnable scalar w (self.blobs[0])."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = float(self.param_str or 2.0)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class EuclideanLossLayer(jcaffe.Layer):
    """The classic pycaffe example: loss = sum((a - b)^2) / num / 2."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class Failing(jcaffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        raise ZeroDivisionError("user bug in forward")


class NoBackward(jcaffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data


class JaxScaledTanh(jcaffe.Layer):
    """top = w * tanh(bottom), numpy forward/backward plus the same forward in JAX
    (``jax_forward``), so gradcheck also compares backward with jax.vjp."""

    flip_param_sign = False
    jax_offset = 0.0

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 1.5

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * np.tanh(bottom[0].data)

    def backward(self, top, propagate_down, bottom):
        t = np.tanh(bottom[0].data)
        g = np.sum(top[0].diff * t)
        self.blobs[0].diff[0] += -g if self.flip_param_sign else g
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff * (1 - t * t)

    def jax_forward(self, params, bottoms):
        import jax.numpy as jnp
        return [params[0][0] * jnp.tanh(bottoms[0]) + self.jax_offset]


class JaxScaledTanhWrongParamGrad(JaxScaledTanh):
    flip_param_sign = True


class JaxScaledTanhWrongJaxForward(JaxScaledTanh):
    jax_offset = 0.25


class CompiledScaledTanh(jcaffe.JaxLayer):
    """JaxScaledTanh written in JAX (a Python layer compiled with the net): top = w *
    tanh(bottom), w a learned scalar starting at 1.5."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        from jcaffe.proto import caffe_pb2
        self.init_params([((1,), caffe_pb2.FillerParameter(type="constant", value=1.5))],
                         self.filler_rng)

    def reshape(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, params, bottoms, rng):
        import jax.numpy as jnp
        t = jnp.tanh(bottoms[0])
        return [params[0][0] * t], t

    def backward(self, params, bottoms, tops, t, top_diffs, propagate_down):
        import jax.numpy as jnp
        dy = top_diffs[0]
        dx = params[0][0] * dy * self.slope(t) if propagate_down[0] else None
        return [dx], [jnp.sum(dy * t).reshape(1)]

    def slope(self, t):
        return 1 - t * t


class CompiledScaledTanhWrongGrad(CompiledScaledTanh):
    def slope(self, t):
        return 1 - t        # d tanh = 1 - tanh^2, not 1 - tanh


class CompiledRaises(CompiledScaledTanh):
    def forward(self, params, bottoms, rng):
        raise ValueError("boom")


class CompiledWrongTopShape(CompiledScaledTanh):
    def forward(self, params, bottoms, rng):
        tops, t = super().forward(params, bottoms, rng)
        return [tops[0][:, :1]], t


class NeitherLayerKind:
    """Not a jcaffe.Layer nor a jcaffe.JaxLayer."""


class CompiledNoise(jcaffe.JaxLayer):
    """x + uniform noise in [0, 1), drawn with jcaffe.rng from the key the net gives a
    layer with needs_rng (tests/test_rng.py)."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    needs_rng = True

    def reshape(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, params, bottoms, rng):
        from jcaffe import rng as draws
        x, = bottoms
        return [x + draws.uniform(rng, x.shape, x.dtype)], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        return [top_diffs[0] if propagate_down[0] else None], []
