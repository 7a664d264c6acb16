"""gradcheck specs: HingeLoss, SigmoidCrossEntropyLoss, InfogainLoss, MultinomialLogisticLoss,
ContrastiveLoss (jcaffe/layers/loss_extra.py).

Bottoms are given explicitly where a layer needs value ranges (targets in [0, 1],
probabilities, a non-negative H). Label-like bottoms are never perturbed.
ContrastiveLoss (not legacy) is checked at rtol 1e-3: its backward is Caffe's, which
divides by sqrt(D) + 1e-4 instead of sqrt(D) (see the layer's docstring); the pair
distances drawn here keep that relative difference below 1e-3.
"""
import numpy as np
from hypothesis import strategies as st

from ..strategies import Case

_seeds = st.integers(0, 2**16)
_NORMS = ["", "normalization: FULL", "normalization: VALID", "normalization: BATCH_SIZE",
          "normalization: NONE", "normalize: true", "normalize: false"]


@st.composite
def _hinge(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    extra = draw(st.sampled_from([(), (2,)]))
    dim = c * int(np.prod(extra))
    norm = draw(st.sampled_from(["L1", "L2"]))
    return Case('type: "HingeLoss" hinge_loss_param { norm: %s }' % norm,
                [(n, c) + extra, (n,)], label_bottoms=[1], num_classes=dim, seed=draw(_seeds))


@st.composite
def _sigmoid_ce(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4))) + draw(st.sampled_from([(), (2,)]))
    seed = draw(_seeds)
    r = np.random.default_rng(seed)
    x = r.standard_normal(shape) * 2
    if draw(st.booleans()):
        t = r.uniform(0, 1, shape)                 # soft targets
        ignore = ""
    else:
        t = r.integers(-1, 2, shape).astype(np.float64)
        ignore = "ignore_label: -1"
    norm = draw(st.sampled_from(_NORMS))
    return Case('type: "SigmoidCrossEntropyLoss" loss_param { %s %s }' % (norm, ignore),
                [shape, shape], label_bottoms=[1], seed=seed, check_kwargs={"bottoms": [x, t]})


@st.composite
def _infogain(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    spatial = draw(st.sampled_from([(), (2,), (1, 2)]))
    axis = draw(st.sampled_from([1, -1])) if not spatial else 1
    shape = (n, c) + spatial if axis == 1 else (n, c)
    seed = draw(_seeds)
    r = np.random.default_rng(seed)
    x = r.standard_normal(shape) * 2
    label = r.integers(0, c, (n,) + spatial).astype(np.float64)
    ignore = ""
    if draw(st.booleans()):
        label.flat[::2] = 1
        ignore = "ignore_label: 1"
    H = r.uniform(0, 2, (c, c))
    norm = draw(st.sampled_from(_NORMS[:5]))
    snippet = ('type: "InfogainLoss" infogain_loss_param { axis: %d } loss_param { %s %s }'
               % (axis, norm, ignore))
    return Case(snippet, [shape, label.shape, H.shape], label_bottoms=[1, 2], seed=seed,
                check_kwargs={"bottoms": [x, label, H]})


@st.composite
def _multinomial(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(2, 5))
    shape = draw(st.sampled_from([(n, c), (n, c, 1, 1), (n, 1, c)]))
    seed = draw(_seeds)
    r = np.random.default_rng(seed)
    p = r.uniform(0.05, 1, shape)
    label_shape = draw(st.sampled_from([(n,), (n, 1, 1, 1)]))
    label = r.integers(0, c, label_shape).astype(np.float64)
    return Case('type: "MultinomialLogisticLoss"', [shape, label_shape], label_bottoms=[1],
                seed=seed, check_kwargs={"bottoms": [p, label]})


@st.composite
def _contrastive(draw):
    n, c = draw(st.integers(1, 4)), draw(st.integers(2, 4))
    legacy = draw(st.booleans())
    seed = draw(_seeds)
    r = np.random.default_rng(seed)
    a = r.standard_normal((n, c))
    # b at distance >= 0.3 from a (an exact-formula diff and Caffe's differ by 1e-4/|a-b|)
    direction = r.standard_normal((n, c))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    b = a + direction * r.uniform(0.3, 2.5, (n, 1))
    y = r.integers(0, 2, (n,)).astype(np.float64)
    margin = draw(st.sampled_from([0.5, 1.0, 2.0, 4.0]))
    kwargs = {"bottoms": [a, b, y]}
    if not legacy:
        kwargs["rtol"] = 1e-3
    shape = draw(st.sampled_from(["2d", "4d"]))
    if shape == "4d":
        kwargs["bottoms"] = [a.reshape(n, c, 1, 1), b.reshape(n, c, 1, 1), y.reshape(n, 1, 1, 1)]
    snippet = ('type: "ContrastiveLoss" contrastive_loss_param { margin: %g legacy_version: %s }'
               % (margin, "true" if legacy else "false"))
    return Case(snippet, [np.shape(v) for v in kwargs["bottoms"]], label_bottoms=[2], seed=seed,
                check_kwargs=kwargs)


SPECS = {
    "ContrastiveLoss": _contrastive(),
    "HingeLoss": _hinge(),
    "InfogainLoss": _infogain(),
    "MultinomialLogisticLoss": _multinomial(),
    "SigmoidCrossEntropyLoss": _sigmoid_ce(),
}
