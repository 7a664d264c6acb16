"""gradcheck specs: Scale and Bias, with the scale/bias as a learned param or as bottom 1
(any axis, num_axes incl. -1 and 0, Scale's bias_term)."""
from hypothesis import strategies as st

from ..strategies import Case, _seeds, small_dims


@st.composite
def _broadcast(draw, type_name):
    shape = draw(small_dims(draw(st.integers(1, 4))))
    n = len(shape)
    axis = draw(st.integers(-n, n - 1))
    start = axis % n
    field = type_name.lower() + "_param"
    opts = ["axis: %d" % axis]
    if type_name == "Scale":
        opts.append("bias_term: %s" % draw(st.sampled_from(["false", "true"])))
        opts.append('filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }')
    else:
        opts.append('filler { type: "gaussian" std: 1 }')
    if draw(st.booleans()):   # the scale/bias is bottom 1
        k = draw(st.integers(1, n - start))
        shapes = [shape, shape[start:start + k]]
    else:
        num_axes = draw(st.integers(-1, n - start))
        opts.append("num_axes: %d" % num_axes)
        shapes = [shape]
    return Case('type: "%s" %s { %s }' % (type_name, field, " ".join(opts)), shapes,
                seed=draw(_seeds))


SPECS = {
    "Bias": _broadcast("Bias"),
    "Scale": _broadcast("Scale"),
}
