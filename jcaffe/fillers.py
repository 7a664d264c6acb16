"""Caffe's weight fillers, run on the host with numpy when a layer sets up.

``fill(filler_param, shape, rng)`` returns a fresh array drawn as Caffe's
filler of that ``type`` would draw it (same formulas, same checks; the random
stream is numpy's, not boost's). Each filler is a small function below,
registered in ``_FILLERS`` under Caffe's type string. ``check`` runs Caffe's
checks alone, and ``fan`` and ``keep_probability`` give the scales, for
DummyData, which draws on the device at every forward.
"""

import math

import numpy as np

from .errors import LayerSetupError
from .proto import caffe_pb2

_FP = caffe_pb2.FillerParameter


def fill(filler_param, shape, rng, dtype=np.float32):
    """An array of ``shape`` and ``dtype`` filled as ``filler_param`` says.

    ``rng`` is a ``numpy.random.Generator``; it is advanced by random fillers.
    Raises ``LayerSetupError`` for an unknown type or options Caffe rejects.
    """
    shape = tuple(int(d) for d in shape)
    check(filler_param, shape)
    out = _FILLERS[filler_param.type](filler_param, shape, rng, _work_dtype(dtype))
    return np.asarray(out).astype(dtype, copy=False)


def check(p, shape):
    """Caffe's checks of filler ``p`` for a blob of ``shape`` (LayerSetupError)."""
    shape = tuple(int(d) for d in shape)
    kind = p.type
    if kind not in _FILLERS:
        raise LayerSetupError("unknown filler type '%s'; known types: %s"
                              % (kind, ", ".join(get_filler_names())))
    if math.prod(shape) == 0:
        _fail(p, "cannot fill an empty blob of shape %s" % (shape,))
    if kind != "gaussian" and p.sparse != -1:
        _fail(p, "sparse=%d is not supported (only the gaussian filler supports "
              "sparsity)" % p.sparse)
    if kind == "uniform" and p.min > p.max:
        _fail(p, "min (%g) must not exceed max (%g)" % (p.min, p.max))
    if kind == "gaussian":
        if not p.std > 0:
            _fail(p, "std must be positive, got %g" % p.std)
        if p.sparse < -1:
            _fail(p, "sparse must be -1 (dense) or >= 0, got %d" % p.sparse)
        if p.sparse >= 0:
            keep_probability(p, shape)
    if kind in ("positive_unitball", "xavier", "msra"):
        _leading_dim(p, shape, kind)
    if kind == "bilinear" and (len(shape) != 4 or shape[2] != shape[3]):
        _fail(p, "needs a 4-d blob (num, channels, K, K) with equal height and "
              "width, got shape %s" % (shape,))


def get_filler_names():
    """The filler type strings ``fill`` accepts, in Caffe's order."""
    return list(_FILLERS)


# --- the fillers: (param, shape, rng, work dtype) -> array ------------------

def _constant(p, shape, rng, wt):
    return np.full(shape, p.value, dtype=wt)


def _uniform(p, shape, rng, wt):
    return _draw_uniform(rng, p.min, p.max, shape, wt)


def _gaussian(p, shape, rng, wt):
    """N(mean, std^2); with ``sparse`` >= 0 each weight is then kept with
    probability sparse / shape[0] and zeroed otherwise (Caffe's rule)."""
    keep = keep_probability(p, shape) if p.sparse >= 0 else None
    data = _draw_normal(rng, p.mean, p.std, shape, wt)
    if keep is not None:
        data *= rng.random(shape) < keep
    return data


def keep_probability(p, shape):
    """A sparse gaussian filler's probability of keeping a weight: sparse / shape[0]."""
    num_outputs = _leading_dim(p, shape, "sparse initialization")
    keep = p.sparse / num_outputs
    if keep > 1:
        _fail(p, "sparse (%d) must not exceed the number of outputs shape[0] = %d "
              "(each weight is kept with probability sparse/shape[0])"
              % (p.sparse, num_outputs))
    return keep


def _positive_unitball(p, shape, rng, wt):
    """Uniform in [0, 1), then each of the shape[0] rows scaled to sum to 1."""
    rows = shape[0]
    data = _draw_uniform(rng, 0.0, 1.0, shape, wt).reshape(rows, -1)
    return (data / data.sum(axis=1, keepdims=True)).reshape(shape)


def _xavier(p, shape, rng, wt):
    """U(-a, a) with a = sqrt(3 / n), n from variance_norm (see fan)."""
    scale = math.sqrt(3.0 / fan(p, shape))
    return _draw_uniform(rng, -scale, scale, shape, wt)


def _msra(p, shape, rng, wt):
    """N(0, 2 / n), n from variance_norm (see fan)."""
    return _draw_normal(rng, 0.0, math.sqrt(2.0 / fan(p, shape)), shape, wt)


def _bilinear(p, shape, rng, wt):
    """Caffe's upsampling kernel for Deconvolution, the same K x K kernel in
    every (num, channel) slice: k(x) = 1 - |x / f - c| with f = ceil(K / 2),
    c = (K - 1) / (2 f), and kernel[y, x] = k(y) * k(x)."""
    size = shape[3]
    f = math.ceil(size / 2.0)
    c = wt((size - 1) / (2.0 * f))
    k = 1 - np.abs(np.arange(size, dtype=wt) / wt(f) - c)
    return np.broadcast_to(np.outer(k, k), shape).copy()


_FILLERS = {
    "constant": _constant,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "uniform": _uniform,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}


# --- helpers ------------------------------------------------------------------

def fan(p, shape):
    """The n of xavier/msra, computed as Caffe does (integer division):
    fan_in = count / shape[0], fan_out = count / shape[1] (count for 1-d);
    FAN_IN uses fan_in, FAN_OUT fan_out, AVERAGE their mean."""
    _leading_dim(p, shape, p.type)
    count = math.prod(shape)
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    if p.variance_norm == _FP.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if p.variance_norm == _FP.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _leading_dim(p, shape, what):
    if not shape:
        _fail(p, "%s needs a blob with at least one axis, got a scalar" % what)
    return shape[0]


def _work_dtype(dtype):
    """Draw in float64 for 64-bit (and wider) outputs, in float32 otherwise."""
    return np.float64 if np.dtype(dtype).itemsize > 4 else np.float32


def _draw_uniform(rng, lo, hi, shape, wt):
    return wt(lo) + wt(hi - lo) * rng.random(shape, dtype=wt)


def _draw_normal(rng, mean, std, shape, wt):
    return wt(mean) + wt(std) * rng.standard_normal(shape, dtype=wt)


def _fail(p, message):
    raise LayerSetupError("%s filler: %s" % (p.type, message))
