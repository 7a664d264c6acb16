"""Finite differences, kink detection and the tolerance rules.

Everything here works on one *objective*: a scalar ``L(x)`` of one flat blob
``x`` (a layer's top values projected on a random top diff, or a net's
loss). An objective answers two questions: the values of ``L`` at ``x`` moved
along single elements (``at_elements``) and along one direction
(``along``). :class:`JaxObjective` batches them with ``jax.vmap``;
:class:`LoopObjective` calls a Python function once per point (numpy layers,
whole nets).

Step and tolerances (``tolerances(dtype)``):

* step ``h_j = eps * max(1, |x_j|)`` (relative for large values, absolute
  near 0); float64: eps 1e-6, float32: 2e-3.
* an analytic value ``a`` matches a reference ``r`` when
  ``|a - r| <= atol + noise + rtol * max(|a|, |r|)``; float64: rtol 1e-5,
  atol 1e-8. ``noise = 8 * machine_eps * (1 + S) / h`` is the rounding error
  of a difference quotient whose objective sums terms of total size ``S``
  (``S = sum |v * top|``): it grows as the step shrinks, so it is computed,
  never guessed.
* kinks: at every element the left and right one-sided differences are also
  taken, at ``h`` and at ``h/2``. They differ by ``h * f''`` on a smooth
  function (and that gap halves with the step); at a kink they differ by the
  jump, whatever the step. An element whose one-sided differences disagree
  beyond tolerance and do not behave smoothly is a kink: it is excluded from
  the comparison and reported, but the analytic value must still lie between
  the two one-sided derivatives (a valid subgradient), else it fails.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Tol(NamedTuple):
    eps: float
    rtol: float
    atol: float


_DEFAULTS = {
    np.dtype(np.float64): Tol(1e-6, 1e-5, 1e-8),
    np.dtype(np.float32): Tol(2e-3, 2e-3, 1e-4),
    np.dtype(np.float16): Tol(3e-2, 5e-2, 1e-2),
}


def tolerances(dtype=np.float64, eps=None, rtol=None, atol=None):
    """The default (eps, rtol, atol) for computations in ``dtype``, with overrides."""
    base = _DEFAULTS.get(np.dtype(dtype), _DEFAULTS[np.dtype(np.float32)])
    return Tol(base.eps if eps is None else eps, base.rtol if rtol is None else rtol,
               base.atol if atol is None else atol)


def noise_floor(scale, h, dtype):
    """Rounding error of a central difference quotient of an objective of size ``scale``."""
    return 8.0 * np.finfo(dtype).eps * (1.0 + scale) / np.asarray(h)


def steps(x, eps):
    return eps * np.maximum(1.0, np.abs(x))


# ---------------------------------------------------------------------------
# objectives
# ---------------------------------------------------------------------------
class JaxObjective:
    """``L(flat)`` a traceable scalar function; evaluations are vmapped in chunks."""

    def __init__(self, fun, x, chunk=256):
        self.x = jnp.asarray(x)
        self.chunk = chunk
        self._fun = jax.jit(fun)
        self._elems = jax.jit(jax.vmap(lambda j, d: fun(self.x.at[j].add(d))))
        self._dirs = jax.jit(jax.vmap(lambda u, s: fun(self.x + s * u), in_axes=(None, 0)))
        self.base = float(self._fun(self.x))

    def at_elements(self, idx, deltas):
        out = []
        for k in range(0, len(idx), self.chunk):
            j = jnp.asarray(idx[k:k + self.chunk])
            d = jnp.asarray(deltas[k:k + self.chunk], self.x.dtype)
            out.append(np.asarray(self._elems(j, d)))
        return np.concatenate(out) if out else np.zeros(0)

    def along(self, u, step_list):
        return np.asarray(self._dirs(jnp.asarray(u, self.x.dtype),
                                     jnp.asarray(step_list, self.x.dtype)))


class LoopObjective:
    """``fun(flat numpy array) -> float`` called once per point."""

    def __init__(self, fun, x):
        self.x = np.array(x, dtype=np.float64)
        self._fun = fun
        self.base = float(fun(self.x.copy()))

    def at_elements(self, idx, deltas):
        out = np.empty(len(idx))
        for k, (j, d) in enumerate(zip(idx, deltas)):
            point = self.x.copy()
            point[j] += d
            out[k] = self._fun(point)
        return out

    def along(self, u, step_list):
        return np.array([self._fun(self.x + s * np.asarray(u)) for s in step_list])


# ---------------------------------------------------------------------------
# differences and their verdicts
# ---------------------------------------------------------------------------
class Verdict(NamedTuple):
    """Per checked element (or direction): numeric value and what became of it."""
    numeric: np.ndarray      # central difference at h
    left: np.ndarray
    right: np.ndarray
    kink: np.ndarray         # bool: non-differentiable here, excluded
    fail: np.ndarray         # bool: analytic disagrees (with numeric, or outside [left, right] at a kink)
    err: np.ndarray          # |analytic - numeric|
    bound: np.ndarray        # the tolerance err was held to


def judge(analytic, f0, fp, fm, fp2, fm2, h, tol, noise):
    """Verdict from the values at x, x+h, x-h, x+h/2, x-h/2 (arrays over elements)."""
    a = np.asarray(analytic, np.float64)
    central = (fp - fm) / (2 * h)
    central2 = (fp2 - fm2) / h
    right, left = (fp - f0) / h, (f0 - fm) / h
    right2, left2 = (fp2 - f0) / (h / 2), (f0 - fm2) / (h / 2)
    d1, d2 = right - left, right2 - left2
    one_sided_bound = tol.atol + 2 * noise + tol.rtol * np.maximum(abs(left), abs(right))
    suspicious = np.abs(d1) > one_sided_bound
    smooth = ((np.abs(d2 - d1 / 2) <= 0.1 * np.abs(d1) + 4 * noise + tol.atol)
              & (np.abs(central - central2) <= tol.atol + 2 * noise
                 + tol.rtol * np.maximum(abs(central), abs(central2))))
    kink = suspicious & ~smooth
    err = np.abs(a - central)
    bound = tol.atol + noise + tol.rtol * np.maximum(np.abs(a), np.abs(central))
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    slack = one_sided_bound
    outside_hull = (a < lo - slack) | (a > hi + slack)
    fail = np.where(kink, outside_hull, err > bound)
    return Verdict(central, left, right, kink, fail, err, bound)


def element_verdicts(obj, idx, analytic, tol, scale, dtype):
    """Judge ``analytic[k]`` as dL/dx[idx[k]] by differences along single elements."""
    idx = np.asarray(idx, dtype=np.int64)
    x = np.asarray(obj.x, np.float64)[idx]
    h = steps(x, tol.eps)
    # Step sizes exactly representable around x, so x+h-x == h.
    h = (x + h) - x
    deltas = np.concatenate([h, -h, h / 2, -h / 2])
    vals = obj.at_elements(np.tile(idx, 4), deltas).reshape(4, len(idx))
    noise = noise_floor(scale, h, dtype)
    return judge(analytic, obj.base, vals[0], vals[1], vals[2], vals[3], h, tol, noise)


def direction_verdict(obj, u, analytic_dot, tol, scale, dtype):
    """Judge ``analytic_dot`` as the derivative of L along ``u``."""
    x = np.asarray(obj.x, np.float64)
    umax = float(np.max(np.abs(u))) or 1.0
    h = tol.eps * max(1.0, float(np.max(np.abs(x)))) / umax
    vals = obj.along(u, [h, -h, h / 2, -h / 2])
    noise = noise_floor(scale, h, dtype)
    v = judge(np.array([analytic_dot]), obj.base, *[vals[i:i + 1] for i in range(4)],
              np.array([h]), tol, noise)
    return v


def close(a, b, tol):
    """Elementwise: err, bound, fail for two analytic arrays (no differencing noise)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    err = np.abs(a - b)
    bound = tol.atol + tol.rtol * np.maximum(np.abs(a), np.abs(b))
    return err, bound, err > bound
