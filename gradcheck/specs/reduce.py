"""Specs for Eltwise, Reduction and ArgMax (ArgMax has no backward: setup and forward only).
Standard normal bottoms make MAX ties and ASUM's kink at 0 events of probability 0."""
from hypothesis import strategies as st

from ..strategies import Case, small_dims

_seeds = st.integers(0, 2**16)


@st.composite
def _eltwise(draw):
    shape = draw(small_dims(draw(st.integers(1, 4))))
    k = draw(st.integers(2, 3))
    op = draw(st.sampled_from(["PROD", "SUM", "MAX"]))
    p = "operation: %s" % op
    if op == "SUM" and draw(st.booleans()):
        p += " " + " ".join("coeff: %g" % draw(st.sampled_from([1, -1, 0.5, 2.5])) for _ in range(k))
    if op == "PROD":
        p += " stable_prod_grad: %s" % draw(st.sampled_from(["true", "false"]))
    return Case('type: "Eltwise" eltwise_param { %s }' % p, [shape] * k, seed=draw(_seeds))


@st.composite
def _reduction(draw):
    shape = draw(small_dims(draw(st.integers(1, 4))))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    p = "operation: %s axis: %d coeff: %g" % (
        draw(st.sampled_from(["SUM", "ASUM", "SUMSQ", "MEAN"])), axis,
        draw(st.sampled_from([1, -0.5, 2])))
    return Case('type: "Reduction" reduction_param { %s }' % p, [shape], seed=draw(_seeds))


@st.composite
def _argmax(draw):
    shape = draw(small_dims(draw(st.integers(1, 4))))
    out_max = draw(st.sampled_from(["true", "false"]))
    if draw(st.booleans()):
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        p = "axis: %d top_k: %d" % (axis, draw(st.integers(1, shape[axis])))
    else:
        per_item = 1
        for d in shape[1:]:
            per_item *= d
        p = "top_k: %d" % draw(st.integers(1, per_item))
    return Case('type: "ArgMax" argmax_param { out_max_val: %s %s }' % (out_max, p), [shape],
                backward=False, seed=draw(_seeds))


SPECS = {
    "ArgMax": _argmax(),
    "Eltwise": _eltwise(),
    "Reduction": _reduction(),
}
