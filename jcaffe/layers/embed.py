"""Embed: a lookup table, Caffe's InnerProduct on one-hot inputs given as indices."""
import jax.numpy as jnp

from ..layer import JaxLayer, register
from .shaping import check_indices, refuse_index_diff


@register("Embed")
class Embed(JaxLayer):
    """y[..., :] = W[x[...], :] + b, x floats holding integers in [0, input_dim),
    W (input_dim, num_output) (InnerProduct's weight transposed, as in Caffe).

    dE/dW[k] = sum of dE/dy[m] over the m with x[m] = k;  dE/db = sum_m dE/dy[m].
    No diff for the indices (Caffe: "Can't backpropagate to EmbedLayer input").
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def allow_force_backward(self, bottom_index):
        return False

    def setup(self, bottom_shapes):
        p = self.p
        if p.num_output <= 0:
            self.fail("EmbedLayer num_output must be positive.")
        if p.input_dim <= 0:
            self.fail("EmbedLayer input_dim must be positive.")
        self.N, self.K = p.num_output, p.input_dim
        specs = [((self.K, self.N), p.weight_filler)]
        if p.bias_term:
            specs.append(((self.N,), p.bias_filler))
        self.init_params(specs, self.filler_rng)

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0]) + (self.N,)]

    def forward(self, params, bottoms, rng):
        x, = bottoms
        check_indices(self, "indices (bottom 0)", x, self.K)
        y = jnp.take(params[0], x.astype(jnp.int32), axis=0, mode="fill", fill_value=jnp.nan)
        if self.p.bias_term:
            y = y + params[1]
        return [y], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        refuse_index_diff(self, propagate_down, 0, "index input")
        x, = bottoms
        dy = top_diffs[0].reshape(-1, self.N)
        dw = db = None
        if self.wants_param_diff(0):
            dw = jnp.zeros_like(params[0]).at[x.reshape(-1).astype(jnp.int32)].add(dy)
        if self.p.bias_term and self.wants_param_diff(1):
            db = jnp.sum(dy, axis=0)
        return [None], [dw, db] if self.p.bias_term else [dw]
