"""gradcheck specs: BatchNorm (batch statistics, TRAIN, and use_global_stats) and MVN.

BatchNorm's three blobs are statistics with lr_mult 0: no diff, not checked.
MVN with normalize_variance gets at least two values per normalized slice (a
single value has standard deviation 0, where sqrt has no derivative), and those
values are spread apart: each slice is a shuffled ladder of steps 0.5 with
jitter below 0.2, so no two differ by less than 0.1. Two standard-normal draws
can land 0.005 apart, where the output (x - mean) / std is a near-vertical step
whose curvature defeats central differences (seed 208 on 3x3x2 did).
"""
import numpy as np
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
    if norm and per_slice < 2:      # (at most 4 axes: Caffe's MVN takes no more)
        shape, per_slice = (shape + (2,) if len(shape) < 4 else shape[:-1] + (2,)), 2
    seed = draw(_seeds)
    kwargs = {}
    if norm:
        r = np.random.default_rng(seed)
        slices = np.prod(shape) // per_slice
        ladder = np.stack([r.permutation(per_slice) for _ in range(slices)]) * 0.5
        ladder -= ladder.mean(axis=1, keepdims=True)
        kwargs["bottoms"] = [(ladder + r.uniform(-0.2, 0.2, ladder.shape)).reshape(shape)]
    return Case('type: "MVN" mvn_param { normalize_variance: %s across_channels: %s }'
                % ("true" if norm else "false", "true" if across else "false"), [shape],
                seed=seed, check_kwargs=kwargs)


SPECS = {
    "BatchNorm": _batch_norm(),
    "MVN": _mvn(),
}
