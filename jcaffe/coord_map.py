"""pycaffe's ``caffe.coord_map``: relate the coordinates of two NetSpec tops.

A coordinate map ``(axis, a, b)`` says that position ``x`` along the spatial
axes after ``axis`` of one top is position ``a * x + b`` of another; ``a`` and
``b`` are arrays with one entry per spatial axis (or scalars for the identity
``(None, 1, 0)`` of a pointwise layer, which names no axis). Each spatial
layer maps its bottom to its top:

* Convolution, Pooling, Im2col (stride s, effective kernel k, pad p):
  ``a = 1 / s``, ``b = (p - (k - 1) / 2) / s``
* Deconvolution: ``a = s``, ``b = (k - 1) / 2 - p``
* Crop (``axis``, ``offset``): ``a = 1``, ``b = -offset``, on axis ``axis - 1``
* the pointwise layers of ``PASS_THROUGH_LAYERS``: the identity

(the effective kernel of a dilated convolution is ``(k - 1) * dilation + 1``).
``coord_map_from_to`` walks back from both tops to a common ancestor,
composing these maps, and ``crop`` turns the result into the Crop layer that
aligns one top with another, as FCN's net definitions do::

    from jcaffe import coord_map
    n.score = coord_map.crop(n.upscore, n.data)   # FCN-32s: axis 2, offset 19

The parameters are read from each layer's ``*_param`` message as NetSpec
built it, so ``kernel_size=3`` and ``convolution_param=dict(kernel_size=3)``
(the only form a Deconvolution accepts) read the same; unlike pycaffe, the
``kernel_h``/``kernel_w``, ``stride_h``/``stride_w`` and ``pad_h``/``pad_w``
forms are understood too.
"""
import numpy as np

from .errors import JcaffeError, LayerSetupError
from .net_spec import layers as L

__all__ = ["PASS_THROUGH_LAYERS", "conv_params", "crop_params", "coord_map", "compose", "inverse",
           "coord_map_from_to", "crop", "UndefinedMapException", "AxisMismatchException",
           "CropError"]

# pycaffe's list: layers whose top has the coordinates of their bottom(s).
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log",
                       "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split",
                       "TanH", "Threshold"]

_CONV_LIKE = ("Convolution", "Deconvolution", "Im2col")
_IDENTITY = (None, 1, 0)


class UndefinedMapException(JcaffeError):
    """A layer whose output coordinates are no fixed function of its input's (an
    InnerProduct, a global pooling, any type without a known map)."""


class AxisMismatchException(JcaffeError):
    """Two maps that cannot compose: they act on different axes."""


class CropError(JcaffeError, ValueError, AssertionError):
    """``crop`` cannot align the tops: their scales differ, the offset is negative or
    fractional, or nothing spatial lies between them. (An AssertionError too, as
    pycaffe's ``crop`` raises one.)"""


def _describe(fn):
    name = fn.params.get("name")
    return "%s layer%s" % (fn.type_name, " '%s'" % name if name else "")


def _spatial(message, field, prefix, default):
    """A spatial parameter as an array: ``<prefix>_h``, ``<prefix>_w`` when either is
    set, else ``field`` (a repeated field's values, or ``default`` when it has none;
    a Pooling field's value, the schema default when unset)."""
    if prefix and (message.HasField(prefix + "_h") or message.HasField(prefix + "_w")):
        return np.array([getattr(message, prefix + "_h"), getattr(message, prefix + "_w")])
    value = getattr(message, field)
    if isinstance(value, int):          # PoolingParameter's fields are not repeated
        return np.array([value])
    return np.array(list(value) or [default], ndmin=1)


def conv_params(fn):
    """``(axis, stride, effective kernel, pad)`` of a Convolution, Deconvolution,
    Im2col or Pooling ``Function``; the arrays have one entry per spatial axis (or
    one for all). The effective kernel is ``(kernel - 1) * dilation + 1``."""
    options = fn._options   # the LayerParameter NetSpec filled from the keywords
    if fn.type_name in _CONV_LIKE:
        param, axis = options.convolution_param, options.convolution_param.axis
        dilation = _spatial(param, "dilation", None, 1)
    elif fn.type_name == "Pooling":
        param, axis, dilation = options.pooling_param, 1, np.array([1])
        if param.global_pooling:
            raise UndefinedMapException("%s pools globally: its map depends on the input size"
                                        % _describe(fn))
    else:
        raise UndefinedMapException("%s has no convolution or pooling parameters" % _describe(fn))
    kernel = _spatial(param, "kernel_size", "kernel", 0)
    if not np.all(kernel > 0):
        raise LayerSetupError("%s has no kernel_size (nor kernel_h and kernel_w)" % _describe(fn))
    return (axis, _spatial(param, "stride", "stride", 1), (kernel - 1) * dilation + 1,
            _spatial(param, "pad", "pad", 0))


def crop_params(fn):
    """``(axis, offset)`` of a Crop ``Function`` (axis 2 and offset 0 by default)."""
    param = fn._options.crop_param
    return param.axis, np.array(list(param.offset) or [0], ndmin=1)


def coord_map(fn):
    """The map ``(axis, a, b)`` from a layer's bottom coordinates to its top's:
    bottom position ``x`` is top position ``a * x + b``. ``axis`` is the last axis
    that is not a coordinate (1, the channels, for N x C x H x W); ``None`` for a
    pointwise layer. Raises UndefinedMapException for any other layer type."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return _IDENTITY
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset
    raise UndefinedMapException("%s has no coordinate map" % _describe(fn))


def compose(base_map, next_map):
    """``base_map`` after ``next_map``: x -> a1 * (a2 * x + b2) + b1. An axis of
    None (a pointwise map) takes the other's; two different axes do not compose."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchException("cannot compose a map on axis %s with one on axis %s"
                                    % (ax1, ax2))
    return axis, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The map back: x -> (x - b) / a."""
    axis, a, b = coord_map
    return axis, 1 / a, -b / a


def _mappable_bottoms(top):
    """The bottoms whose coordinates ``top`` follows: all of them, except a Crop's
    second bottom, which only gives the output its size."""
    inputs = top.fn.inputs
    return inputs[:1] if top.fn.type_name == "Crop" else inputs


def _maps_to_ancestors(top, stop=None):
    """{ancestor top: map from the ancestor's coordinates to ``top``'s}, walking back
    through layers with a coordinate map. With ``stop`` (a dict of tops), return
    ``(ancestor, its map)`` for the first ancestor found in ``stop`` instead."""
    maps = {top: _IDENTITY}
    frontier = [top]
    while frontier:
        current = frontier.pop()
        if stop is not None and current in stop:
            return current, maps[current]
        try:
            layer_map = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(current):
            maps[bottom] = compose(maps[current], layer_map)
            if bottom not in frontier:
                frontier.append(bottom)
    return None if stop is not None else maps


def _top_label(top):
    if top.fn.ntop > 1:
        return "top %d of the %s" % (top.n, _describe(top.fn))
    return "the top of the %s" % _describe(top.fn)


def coord_map_from_to(top_from, top_to):
    """The map ``(axis, a, b)`` taking coordinates of ``top_from`` to those of
    ``top_to``: ``top_from`` position ``x`` is ``top_to`` position ``a * x + b``.

    Both tops are walked back to a common ancestor (every path to an ancestor is
    assumed to give the same map, as in pycaffe). Raises RuntimeError when no
    ancestor is reached through layers with a coordinate map."""
    from_maps = _maps_to_ancestors(top_from)
    found = _maps_to_ancestors(top_to, stop=from_maps)
    if found is None:
        raise RuntimeError("Could not compute a coordinate map from %s to %s: they share no "
                           "ancestor reached through spatial (or pointwise) layers"
                           % (_top_label(top_from), _top_label(top_to)))
    ancestor, to_map = found
    return compose(to_map, inverse(from_maps[ancestor]))


def crop(top_from, top_to):
    """A Crop layer (a Top, as ``L.Crop`` returns) cutting ``top_from`` down to the
    region that lines up with ``top_to``: ``L.Crop(top_from, top_to,
    crop_param=dict(axis=..., offset=[...]))`` with the axis and offsets from
    ``coord_map_from_to``. Raises CropError when the scales differ (``a != 1``)
    or the offset would be negative or fractional."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a), np.asarray(b)
    what = "from %s to %s" % (_top_label(top_from), _top_label(top_to))
    if axis is None:
        raise CropError("nothing but pointwise layers between the tops (%s): their "
                        "coordinates are the same, so there is nothing to crop" % what)
    if not np.all(a == 1):
        raise CropError("scale mismatch on crop (a = %s) %s: the tops are sampled at "
                        "different strides" % (a, what))
    if not np.all(b <= 0):
        raise CropError("cannot crop a negative offset (b = %s) %s: the reference starts "
                        "before the top to crop does" % (b, what))
    if not np.all(np.round(b) == b):
        raise CropError("cannot crop a fractional offset (b = %s) %s" % (b, what))
    offset = [int(v) for v in -np.round(b).astype(int)]
    return L.Crop(top_from, top_to, crop_param=dict(axis=int(axis) + 1, offset=offset))
