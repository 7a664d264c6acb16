"""Layers that combine or reduce values: Eltwise, Reduction, ArgMax."""
import jax
import jax.numpy as jnp

from ..blob import shape_count, shape_string
from ..errors import BackwardError
from ..layer import JaxLayer, register
from ..proto import caffe_pb2
from .common import canonical_axis

_Elt = caffe_pb2.EltwiseParameter
_Red = caffe_pb2.ReductionParameter


@register("Eltwise")
class Eltwise(JaxLayer):
    """Element-wise over equal-shaped bottoms:

    * PROD: y = prod_i x_i;  dE/dx_i = dE/dy * prod_{j != i} x_j (``stable_prod_grad``,
      the default) or dE/dy * y / x_i (``stable_prod_grad: false``, inf/nan at x_i = 0
      as in Caffe).
    * SUM: y = sum_i c_i x_i (``coeff``, default 1);  dE/dx_i = c_i dE/dy.
    * MAX: y = max_i x_i;  dE/dx_i = dE/dy where x_i won, else 0 (ties as Caffe: between
      bottoms 0 and 1 bottom 1 wins, after that the earlier bottom keeps it).

    What backward needs is saved in forward where a bottom is the top (in place), so
    in-place use is exact. Otherwise MAX saves nothing: its backward finds the winners
    again from the bottoms, which no later layer overwrites (Caffe's splits give each
    reader its own blob) and which a training step keeps anyway (their blobs). An int32
    index per element, as Caffe's max_idx_, cost Light CNN-9's step (batch 20) 145 MB.
    In place the winners are saved, as bytes.
    """

    min_bottom_blobs = 2
    exact_num_top_blobs = 1
    layout_free = True

    def setup(self, bottom_shapes):
        p = self.p
        if p.coeff and len(p.coeff) != len(bottom_shapes):
            self.fail("Eltwise Layer takes one coefficient per bottom blob: %d coeff for %d bottoms",
                      len(p.coeff), len(bottom_shapes))
        if p.operation == _Elt.PROD and p.coeff:
            self.fail("Eltwise layer only takes coefficients for summation.")
        if p.operation not in (_Elt.PROD, _Elt.SUM, _Elt.MAX):
            self.fail("Unknown elementwise operation %d", p.operation)
        self.op = p.operation
        self.coeffs = [float(c) for c in p.coeff] or [1.0] * len(bottom_shapes)

    def reshape(self, bottom_shapes):
        first = tuple(bottom_shapes[0])
        for i, s in enumerate(bottom_shapes[1:], start=1):
            if tuple(s) != first:
                self.fail("all bottoms must have the same shape: bottom 0 has shape %s, bottom %d "
                          "has shape %s", shape_string(first), i, shape_string(s))
        return [first]

    def forward(self, params, bottoms, rng):
        if self.op == _Elt.PROD:
            y = bottoms[0]
            for x in bottoms[1:]:
                y = y * x
            return [y], (list(bottoms), y)
        if self.op == _Elt.SUM:
            y = _scaled(bottoms[0], self.coeffs[0])
            for x, c in zip(bottoms[1:], self.coeffs[1:]):
                y = y + _scaled(x, c)
            return [y], None
        y, winner = _max_and_winner(bottoms)
        lp = self.layer_param
        in_place = bool(set(lp.top) & set(lp.bottom))
        return [y], winner if in_place else None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        dy, = top_diffs
        diffs = []
        for i, pd in enumerate(propagate_down):
            if not pd:
                diffs.append(None)
            elif self.op == _Elt.SUM:
                diffs.append(_scaled(dy, self.coeffs[i]))
            elif self.op == _Elt.MAX:
                if saved is None:
                    saved = _max_and_winner(bottoms)[1]
                diffs.append(jnp.where(saved == i, dy, jnp.zeros_like(dy)))
            else:
                xs, y = saved
                if self.p.stable_prod_grad:
                    others = [x for j, x in enumerate(xs) if j != i]
                    g = others[0]
                    for x in others[1:]:
                        g = g * x
                else:
                    g = y / xs[i]
                diffs.append(g * dy)
        return diffs, []


def _max_and_winner(xs):
    """(max of ``xs``, the index of the bottom it came from, as Caffe breaks ties: bytes
    up to 255 bottoms)."""
    a, b = xs[0], xs[1]
    take_b = ~(a > b)
    y = jnp.where(take_b, b, a)
    winner = take_b.astype(jnp.uint8 if len(xs) <= 255 else jnp.int32)
    for i, x in enumerate(xs[2:], start=2):
        win = x > y
        y = jnp.where(win, x, y)
        winner = jnp.where(win, jnp.asarray(i, winner.dtype), winner)
    return y, winner


def _scaled(x, c):
    return x if c == 1.0 else x * jnp.asarray(c, x.dtype)


@register("Reduction")
class Reduction(JaxLayer):
    """y[i] = coeff * reduce_j f(x[i, j]) over every axis from ``axis`` on (the top keeps
    the axes before it): SUM f = x, ASUM |x|, SUMSQ x^2, MEAN x / count.

    dE/dx[i, j] = coeff * dE/dy[i] * (1, sign(x) (0 at 0), 2x, 1/count).
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        if self.p.operation not in (_Red.SUM, _Red.ASUM, _Red.SUMSQ, _Red.MEAN):
            self.fail("Unknown reduction op: %d", self.p.operation)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        self.axis = canonical_axis(self, self.p.axis, shape)
        self.dim = shape_count(shape, self.axis)
        self.coeff = self.p.coeff / self.dim if self.p.operation == _Red.MEAN else self.p.coeff
        return [shape[:self.axis]]

    def _rows(self, x):
        return x.reshape(shape_count(x.shape, 0, self.axis), self.dim)

    def forward(self, params, bottoms, rng):
        x, = bottoms
        x2 = self._rows(x)
        op = self.p.operation
        if op == _Red.ASUM:
            x2 = jnp.abs(x2)
        elif op == _Red.SUMSQ:
            x2 = x2 * x2
        y = jnp.sum(x2, axis=1) * jnp.asarray(self.coeff, x.dtype)
        return [y.reshape(x.shape[:self.axis])], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        x, = bottoms
        g = (top_diffs[0].reshape(-1, 1) * jnp.asarray(self.coeff, x.dtype))
        op = self.p.operation
        x2 = self._rows(x)
        if op == _Red.ASUM:
            dx = jnp.sign(x2) * g
        elif op == _Red.SUMSQ:
            dx = 2 * x2 * g
        else:
            dx = jnp.broadcast_to(g, x2.shape)
        return [dx.reshape(x.shape)], []


@register("ArgMax")
class ArgMax(JaxLayer):
    """The indices (as floats) of the ``top_k`` largest values per item: over ``axis``
    when given (top: the bottom shape with that axis = top_k), else over everything
    after axis 0 (top: (N, 1, top_k), or (N, 2, top_k) with ``out_max_val``: indices then
    values). With an axis, ``out_max_val`` outputs the values instead of the indices.
    Equal values: the larger index comes first (Caffe sorts (value, index) pairs).
    No backward, as in Caffe: a diff asked for raises BackwardError.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        p = self.p
        if p.top_k < 1:
            self.fail("top k must not be less than 1.")

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        p = self.p
        if p.HasField("axis"):
            self.axis = canonical_axis(self, p.axis, shape)
            if p.top_k > shape[self.axis]:
                self.fail("top_k must be less than or equal to the dimension of the axis: top_k "
                          "is %d, axis %d of bottom shape %s has %d", p.top_k, self.axis,
                          shape_string(shape), shape[self.axis])
            return [shape[:self.axis] + (p.top_k,) + shape[self.axis + 1:]]
        self.axis = None
        if not shape:
            self.fail("needs a bottom with at least one axis")
        if p.top_k > shape_count(shape, 1):
            self.fail("top_k must be less than or equal to the dimension of the flattened bottom "
                      "blob per instance: top_k is %d, bottom shape %s has %d per instance",
                      p.top_k, shape_string(shape), shape_count(shape, 1))
        top = [shape[0], 2 if p.out_max_val else 1, p.top_k]
        return [tuple(top) + (1,) * (len(shape) - 3)]

    def forward(self, params, bottoms, rng):
        x, = bottoms
        k = self.p.top_k
        if self.axis is None:
            values, idx = _top_k_last(x.reshape(x.shape[0], -1), k)
            idx = idx.astype(x.dtype)
            y = jnp.stack([idx, values], axis=1) if self.p.out_max_val else idx[:, None, :]
            return [y.reshape(self.top_shapes[0])], None
        moved = jnp.moveaxis(x, self.axis, -1)
        values, idx = _top_k_last(moved, k)
        y = values if self.p.out_max_val else idx.astype(x.dtype)
        return [jnp.moveaxis(y, -1, self.axis)], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if propagate_down[0]:
            raise BackwardError("ArgMax layer '%s' has no backward (Caffe: Not Implemented), but "
                                "a diff is wanted for its bottom; set propagate_down: false or "
                                "keep its top out of any loss (force_backward reaches it too)"
                                % self.name)
        return [None], []


def _top_k_last(x, k):
    """Top k along the last axis, ties broken towards the larger index (as Caffe)."""
    n = x.shape[-1]
    values, ridx = jax.lax.top_k(jnp.flip(x, axis=-1), k)
    return values, (n - 1) - ridx
