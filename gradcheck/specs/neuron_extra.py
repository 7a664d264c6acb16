"""gradcheck specs: PReLU, ELU, AbsVal, Power, Exp, Log, BNLL, Threshold, Swish, Clip.

Inputs are standard normal. Kinks (PReLU, ELU and AbsVal at 0, Clip at min and
max) are found and excluded by the checker; Log and fractional or negative
Powers get a shift that keeps their argument positive; Threshold has no
backward (Caffe: Not Implemented), so only its forward contract is checked.
"""
from hypothesis import strategies as st

from ..strategies import Case, _seeds, small_dims


def _shape(draw, min_axes=1):
    return draw(small_dims(draw(st.integers(min_axes, 4))))


@st.composite
def _simple(draw, type_name, param=st.just("")):
    return Case('type: "%s" %s' % (type_name, draw(param)), [_shape(draw)], seed=draw(_seeds))


@st.composite
def _prelu(draw):
    filler = draw(st.sampled_from(["", 'filler { type: "gaussian" std: 0.5 }']))
    shared = draw(st.sampled_from(["false", "true"]))
    return Case('type: "PReLU" prelu_param { channel_shared: %s %s }' % (shared, filler),
                [_shape(draw, 2)], seed=draw(_seeds))


@st.composite
def _power(draw):
    power = draw(st.sampled_from([0.0, 1.0, 2.0, 3.0, 0.5, -1.0, 1.5]))
    scale = draw(st.sampled_from([0.0, 0.5, 1.0, -0.8]))
    if float(power).is_integer() and power >= 0:
        shift = draw(st.sampled_from([0.0, 1.0, -0.5]))
    else:   # keep shift + scale * x > 0 for |x| < 7
        shift = 6.0
    return Case('type: "Power" power_param { power: %g scale: %g shift: %g }' % (power, scale, shift),
                [_shape(draw)], seed=draw(_seeds))


@st.composite
def _exp_log(draw, type_name):
    base = draw(st.sampled_from([-1.0, 2.0, 0.5, 10.0]))
    scale = draw(st.sampled_from([1.0, 0.5, -0.7]))
    shift = 6.0 if type_name == "Log" else draw(st.sampled_from([0.0, 1.0, -0.5]))
    field = type_name.lower() + "_param"
    return Case('type: "%s" %s { base: %g scale: %g shift: %g }' % (type_name, field, base, scale, shift),
                [_shape(draw)], seed=draw(_seeds))


@st.composite
def _clip(draw):
    lo = draw(st.sampled_from([-1.0, -0.3, 0.0]))
    hi = lo + draw(st.sampled_from([0.2, 0.8, 2.0]))
    return Case('type: "Clip" clip_param { min: %g max: %g }' % (lo, hi), [_shape(draw)],
                seed=draw(_seeds))


@st.composite
def _threshold(draw):
    t = draw(st.sampled_from([0.0, 0.5, -1.0]))
    return Case('type: "Threshold" threshold_param { threshold: %g }' % t, [_shape(draw)],
                backward=False, seed=draw(_seeds))


SPECS = {
    "PReLU": _prelu(),
    "ELU": _simple("ELU", st.sampled_from(["", "elu_param { alpha: 0.5 }", "elu_param { alpha: 2 }"])),
    "AbsVal": _simple("AbsVal"),
    "Power": _power(),
    "Exp": _exp_log("Exp"),
    "Log": _exp_log("Log"),
    "BNLL": _simple("BNLL"),
    "Threshold": _threshold(),
    "Swish": _simple("Swish", st.sampled_from(["", "swish_param { beta: 0.5 }",
                                               "swish_param { beta: 2 }"])),
    "Clip": _clip(),
}
