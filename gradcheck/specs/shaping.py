"""Specs for the blob-shaping layers: Slice, Reshape, Tile, Silence, Parameter, BatchReindex,
Filter. Index bottoms (BatchReindex's indices, Filter's selector) are label bottoms: drawn as
integers in range and never perturbed."""
import math

from hypothesis import strategies as st

from ..strategies import Case, small_dims

_seeds = st.integers(0, 2**16)


@st.composite
def _slice(draw):
    shape = list(draw(small_dims(draw(st.integers(1, 4)))))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    n = draw(st.integers(1, 3))
    if draw(st.booleans()):
        shape[axis] = n * draw(st.integers(1, 2))
        p = "axis: %d" % axis
    else:
        sizes = [draw(st.integers(1, 2)) for _ in range(n)]
        shape[axis] = sum(sizes)
        points = [sum(sizes[:i + 1]) for i in range(n - 1)]
        p = "axis: %d %s" % (axis, " ".join("slice_point: %d" % q for q in points))
    tops = " ".join('top: "t%d"' % i for i in range(n))
    return Case('type: "Slice" %s slice_param { %s }' % (tops, p), [tuple(shape)], seed=draw(_seeds))


@st.composite
def _reshape(draw):
    shape = draw(small_dims(draw(st.integers(1, 4))))
    n = len(shape)
    start = draw(st.integers(0, n))
    end = draw(st.integers(start, n))
    new = [math.prod(shape[start:end])] + [1] * draw(st.integers(0, 1))
    if draw(st.booleans()):
        new[draw(st.integers(0, len(new) - 1))] = -1
    for i, d in enumerate(new):
        if start + i < n and d == shape[start + i] and draw(st.booleans()):
            new[i] = 0
    axis = start if draw(st.booleans()) else start - n - 1
    num_axes = -1 if end == n and draw(st.booleans()) else end - start
    dims = " ".join("dim: %d" % d for d in new)
    return Case('type: "Reshape" reshape_param { shape { %s } axis: %d num_axes: %d }'
                % (dims, axis, num_axes), [shape], seed=draw(_seeds))


@st.composite
def _tile(draw):
    shape = draw(small_dims(draw(st.integers(1, 4)), 1, 3))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return Case('type: "Tile" tile_param { axis: %d tiles: %d }' % (axis, draw(st.integers(1, 3))),
                [shape], seed=draw(_seeds))


@st.composite
def _silence(draw):
    shapes = [draw(small_dims(draw(st.integers(1, 3)))) for _ in range(draw(st.integers(1, 2)))]
    return Case('type: "Silence"', shapes, seed=draw(_seeds))


@st.composite
def _parameter(draw):
    dims = " ".join("dim: %d" % d for d in draw(small_dims(draw(st.integers(1, 3)))))
    return Case('type: "Parameter" parameter_param { shape { %s } }' % dims, [], seed=draw(_seeds))


@st.composite
def _batch_reindex(draw):
    n = draw(st.integers(1, 4))
    x = (n,) + draw(small_dims(draw(st.integers(0, 2))))
    return Case('type: "BatchReindex"', [x, (draw(st.integers(1, 6)),)], label_bottoms=[1],
                num_classes=n, seed=draw(_seeds))


@st.composite
def _filter(draw):
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 2))
    shapes = [(n,) + draw(small_dims(draw(st.integers(0, 2)))) for _ in range(k)]
    selector = draw(st.sampled_from([(n,), (n, 1), (n, 1, 1, 1)]))
    tops = " ".join('top: "t%d"' % i for i in range(k))
    return Case('type: "Filter" %s' % tops, shapes + [selector], label_bottoms=[k], num_classes=2,
                seed=draw(_seeds))


SPECS = {
    "BatchReindex": _batch_reindex(),
    "Filter": _filter(),
    "Parameter": _parameter(),
    "Reshape": _reshape(),
    "Silence": _silence(),
    "Slice": _slice(),
    "Tile": _tile(),
}
