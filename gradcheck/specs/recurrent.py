"""gradcheck specs for RNN, LSTM and LSTMUnit.

``cont`` (the sequence-continuation indicator) is declared a label bottom: it
is drawn as 0/1 integers (num_classes=2), so draws have sequence restarts, and
it is never perturbed nor given propagate_down, as Caffe refuses a diff there.
"""
from hypothesis import strategies as st

from ..strategies import Case, small_dims

_seeds = st.integers(0, 2**16)
_FILLERS = ('weight_filler { type: "gaussian" std: 0.5 } '
            'bias_filler { type: "gaussian" std: 0.5 }')


@st.composite
def _recurrent(draw, type_name, num_hidden):
    T, N, H = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # (features from axis 2 of x and axis 1 of x_static on, as Caffe's unrolled net's
    # InnerProducts read them: at least one such axis each)
    x = (T, N) + draw(small_dims(draw(st.integers(1, 2)), 1, 3))
    shapes = [x, (T, N)]
    if draw(st.booleans()):                       # static input x_static (N, ...)
        shapes.append((N,) + draw(small_dims(draw(st.integers(1, 2)), 1, 3)))
    expose = draw(st.booleans())
    if expose:
        shapes += [(1, N, H)] * num_hidden
    p = "num_output: %d expose_hidden: %s %s" % (H, "true" if expose else "false", _FILLERS)
    return Case('type: "%s" recurrent_param { %s }' % (type_name, p), shapes,
                label_bottoms=[1], num_classes=2, seed=draw(_seeds))


@st.composite
def _lstm_unit(draw):
    N, H = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return Case('type: "LSTMUnit"', [(1, N, H), (1, N, 4 * H), (1, N)],
                label_bottoms=[2], num_classes=2, seed=draw(_seeds))


SPECS = {
    "LSTM": _recurrent("LSTM", 2),
    "LSTMUnit": _lstm_unit(),
    "RNN": _recurrent("RNN", 1),
}
