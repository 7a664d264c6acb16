"""gradcheck specs: Deconvolution, Im2col, SPP, Crop (jcaffe/layers/{deconv,im2col,spp,crop}.py)
and Pooling's STOCHASTIC method (pool_stochastic.py).

The spec table is keyed by layer type and "Pooling" belongs to the shared table, so
STOCHASTIC pooling is under the extra key ``"Pooling/STOCHASTIC"``, which the property
tests of tests/test_vision_catalog.py run: TEST phase (a smooth function of x) and TRAIN
phase with a fixed seed (the sampled positions stay put under small perturbations, so the
diff is the routing of dE/dy to them). Its inputs are positive, as after a ReLU.
"""
import numpy as np
from hypothesis import strategies as st

from ..layer_check import TEST, TRAIN
from ..strategies import Case

_seeds = st.integers(0, 2**16)
_FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


@st.composite
def _deconvolution(draw):
    group = draw(st.integers(1, 2))
    cin, cout = group * draw(st.integers(1, 2)), group * draw(st.integers(1, 2))
    n_sp = draw(st.sampled_from([1, 2, 2, 3]))
    k = [draw(st.integers(1, 3)) for _ in range(n_sp)]
    s, dil = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    size = [draw(st.integers(1, 3)) for _ in range(n_sp)]
    pad = draw(st.integers(0, 1))
    for i in range(n_sp):
        if s * (size[i] - 1) + dil * (k[i] - 1) + 1 - 2 * pad < 1:
            pad = 0
    ks = " ".join("kernel_size: %d" % v for v in k)
    p = ("num_output: %d %s stride: %d pad: %d dilation: %d group: %d bias_term: %s %s"
         % (cout, ks, s, pad, dil, group, draw(st.sampled_from(["true", "false"])), _FILLERS))
    return Case('type: "Deconvolution" convolution_param { %s }' % p,
                [(draw(st.integers(1, 2)), cin) + tuple(size)], seed=draw(_seeds))


@st.composite
def _im2col(draw):
    n_sp = draw(st.sampled_from([1, 2, 2, 3]))
    k, s = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    pad, dil = draw(st.integers(0, 1)), draw(st.integers(1, 2))
    extent = dil * (k - 1) + 1
    size = [draw(st.integers(max(1, extent - 2 * pad), extent - 2 * pad + 2)) for _ in range(n_sp)]
    p = "kernel_size: %d stride: %d pad: %d dilation: %d" % (k, s, pad, dil)
    lead = draw(st.sampled_from([(1,), (2,), (2, 1)]))
    axis = len(lead)
    return Case('type: "Im2col" convolution_param { %s axis: %d }' % (p, axis),
                [lead + (draw(st.integers(1, 2)),) + tuple(size)], seed=draw(_seeds))


def spp_sizes_ok(size, height):
    """Sizes for which every level's pad is below its kernel (Pooling's rule)."""
    for level in range(height):
        bins = 2 ** level
        kernel = -(-size // bins)
        if (kernel * bins - size + 1) // 2 >= kernel:
            return False
    return True


@st.composite
def _spp(draw):
    height = draw(st.integers(1, 3))
    pool = draw(st.sampled_from(["MAX", "AVE"]))
    sizes = [s for s in range(1, 9) if spp_sizes_ok(s, height)]
    h, w = draw(st.sampled_from(sizes)), draw(st.sampled_from(sizes))
    return Case('type: "SPP" spp_param { pyramid_height: %d pool: %s }' % (height, pool),
                [(draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w)], seed=draw(_seeds))


@st.composite
def _crop(draw):
    ndim = draw(st.integers(1, 4))
    data = [draw(st.integers(1, 4)) for _ in range(ndim)]
    axis = draw(st.integers(0, ndim - 1))
    mode = draw(st.sampled_from(["none", "one", "each"]))
    ref, offsets = list(data), []
    if mode == "one":
        o = draw(st.integers(0, min(data[axis:]) - 1))
        offsets = [o]
        for i in range(axis, ndim):
            ref[i] = draw(st.integers(1, data[i] - o))
    else:
        for i in range(axis, ndim):
            o = draw(st.integers(0, data[i] - 1)) if mode == "each" else 0
            offsets.append(o)
            ref[i] = draw(st.integers(1, data[i] - o))
        if mode == "none":
            offsets = []
    for i in range(axis):   # axes before ``axis`` are kept; bottom 1 may differ there
        ref[i] = draw(st.integers(1, 4))
    text = " ".join("offset: %d" % o for o in offsets)
    return Case('type: "Crop" crop_param { axis: %d %s }' % (axis, text),
                [tuple(data), tuple(ref)], seed=draw(_seeds))


@st.composite
def _stochastic_pooling(draw):
    phase = draw(st.sampled_from([TRAIN, TEST]))
    global_pool = draw(st.booleans()) and phase == TEST
    k, s = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)),
             draw(st.integers(k, k + 3)), draw(st.integers(k, k + 3)))
    seed = draw(_seeds)
    x = np.random.default_rng(seed).uniform(0.05, 1.0, shape)
    p = "global_pooling: true" if global_pool else "kernel_size: %d stride: %d" % (k, s)
    return Case('type: "Pooling" pooling_param { pool: STOCHASTIC %s }' % p, [shape], seed=seed,
                check_kwargs={"bottoms": [x], "phase": phase})


SPECS = {
    "Crop": _crop(),
    "Deconvolution": _deconvolution(),
    "Im2col": _im2col(),
    "Pooling/STOCHASTIC": _stochastic_pooling(),
    "SPP": _spp(),
}
