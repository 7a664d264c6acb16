"""gradcheck specs: BatchNorm (batch statistics, TRAIN, and use_global_stats) and MVN.

BatchNorm's three blobs are statistics with lr_mult 0: no diff, not checked.
MVN with normalize_variance gets at least two values per normalized slice (a
single value has standard deviation 0, where sqrt has no derivative).
"""
from hypothesis import strategies as st

from ..strategies import Case, _seeds, small_dims


@st.composite
def _batch_norm(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) + draw(small_dims(draw(st.integers(0, 2))))
    if shape[0] * (shape[2] if len(shape) > 2 else 1) * (shape[3] if len(shape) > 3 else 1) < 2:
        shape = (2,) + shape[1:]
    opts = draw(st.sampled_from(["", "use_global_stats: true", "use_global_stats: false eps: 0.1",
                                 "moving_average_fraction: 0.5"]))
    return Case('type: "BatchNorm" batch_norm_param { %s }' % opts, [shape], seed=draw(_seeds))


@st.composite
def _mvn(draw):
    norm = draw(st.booleans())
    across = draw(st.booleans())
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) + draw(small_dims(draw(st.integers(0, 2))))
    per_slice = 1
    for d in shape[1 if across else 2:]:
        per_slice *= d
    if norm and per_slice < 2:
        shape = shape + (2,)
    return Case('type: "MVN" mvn_param { normalize_variance: %s across_channels: %s }'
                % ("true" if norm else "false", "true" if across else "false"), [shape],
                seed=draw(_seeds))


SPECS = {
    "BatchNorm": _batch_norm(),
    "MVN": _mvn(),
}
