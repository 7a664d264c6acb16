"""Spec for Embed: the index bottom is a label bottom (integers in [0, input_dim))."""
from hypothesis import strategies as st

from ..strategies import Case, small_dims

_seeds = st.integers(0, 2**16)


@st.composite
def _embed(draw):
    k, n = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    p = ('num_output: %d input_dim: %d bias_term: %s weight_filler { type: "gaussian" std: 0.5 } '
         'bias_filler { type: "gaussian" std: 0.5 }'
         % (n, k, draw(st.sampled_from(["true", "false"]))))
    return Case('type: "Embed" embed_param { %s }' % p, [draw(small_dims(draw(st.integers(1, 3))))],
                label_bottoms=[0], num_classes=k, seed=draw(_seeds))


SPECS = {"Embed": _embed()}
