"""hypothesis strategies: valid layer params, bottom shapes and values, per layer type.

``SPECS[type]`` is a strategy drawing a :class:`Case` (param text, bottom
shapes, which bottoms are labels and their class count, whether the type has
a backward at all). ``layer_params(type)`` draws just the param text and
``bottoms(shapes=...)`` draws float64 arrays, for users' own layers. The
property tests run ``check_case`` over every registered type, and fail when a
registered type has no entry here.

Layers without a backward by design are marked ``backward=False``:
Accuracy (it raises BackwardError when asked for a diff), Input and DummyData
(no bottoms, no params: setup and forward are what is checked).
"""
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from .layer_check import check_layer


@dataclass
class Case:
    snippet: str
    bottom_shapes: list
    label_bottoms: list = field(default_factory=list)
    num_classes: int = None
    backward: bool = True
    seed: int = 0
    # More keyword arguments for check_layer: explicit ``bottoms`` (value ranges a layer
    # needs, e.g. probabilities), ``phase``, or a looser ``rtol`` a layer documents.
    check_kwargs: dict = field(default_factory=dict)

    def __str__(self):
        return "%s  bottoms=%s labels=%s" % (self.snippet, self.bottom_shapes, self.label_bottoms)


def bottoms(shapes, low=None, high=None):
    """Float64 arrays of these shapes (standard normal, or uniform in [low, high))."""
    def make(seed):
        r = np.random.default_rng(seed)
        if low is None:
            return [r.standard_normal(s) for s in shapes]
        return [r.uniform(low, high, size=s) for s in shapes]
    return st.integers(0, 2**32 - 1).map(make)


def small_dims(n, lo=1, hi=4):
    return st.lists(st.integers(lo, hi), min_size=n, max_size=n).map(tuple)


_seeds = st.integers(0, 2**16)


def _filler():
    return 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


@st.composite
def _neuron(draw, type_name, extra=st.just("")):
    return Case('type: "%s" %s' % (type_name, draw(extra)), [draw(small_dims(draw(st.integers(1, 4))))],
                seed=draw(_seeds))


@st.composite
def _inner_product(draw):
    shape = draw(small_dims(draw(st.integers(2, 4))))
    axis = draw(st.integers(1, len(shape) - 1))
    p = "num_output: %d axis: %d bias_term: %s transpose: %s %s" % (
        draw(st.integers(1, 4)), axis, draw(st.sampled_from(["true", "false"])),
        draw(st.sampled_from(["true", "false"])), _filler())
    return Case('type: "InnerProduct" inner_product_param { %s }' % p, [shape], seed=draw(_seeds))


@st.composite
def _softmax(draw):
    shape = draw(small_dims(draw(st.integers(1, 4)), 1, 4))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return Case('type: "Softmax" softmax_param { axis: %d }' % axis, [shape], seed=draw(_seeds))


@st.composite
def _softmax_loss(draw):
    n, c, h = draw(st.integers(1, 3)), draw(st.integers(2, 5)), draw(st.integers(1, 3))
    norm = draw(st.sampled_from(["FULL", "VALID", "BATCH_SIZE", "NONE"]))
    ignore = draw(st.sampled_from(["", "ignore_label: 0"]))
    return Case('type: "SoftmaxWithLoss" loss_param { normalization: %s %s }' % (norm, ignore),
                [(n, c, h), (n, h)], label_bottoms=[1], num_classes=c, seed=draw(_seeds))


@st.composite
def _euclidean(draw):
    shape = draw(small_dims(draw(st.integers(1, 3))))
    return Case('type: "EuclideanLoss"', [shape, shape], seed=draw(_seeds))


@st.composite
def _accuracy(draw):
    n, c = draw(st.integers(1, 4)), draw(st.integers(2, 5))
    return Case('type: "Accuracy" accuracy_param { top_k: %d }' % draw(st.integers(1, c)),
                [(n, c), (n,)], label_bottoms=[1], num_classes=c, backward=False, seed=draw(_seeds))


@st.composite
def _concat(draw):
    k = draw(st.integers(1, 3))
    base = list(draw(small_dims(draw(st.integers(1, 3)))))
    axis = draw(st.integers(0, len(base) - 1))
    shapes = []
    for _ in range(k):
        s = list(base)
        s[axis] = draw(st.integers(1, 3))
        shapes.append(tuple(s))
    return Case('type: "Concat" concat_param { axis: %d }' % axis, shapes, seed=draw(_seeds))


@st.composite
def _split(draw):
    tops = " ".join('top: "t%d"' % i for i in range(draw(st.integers(1, 3))))
    return Case('type: "Split" %s' % tops, [draw(small_dims(draw(st.integers(1, 3))))],
                seed=draw(_seeds))


@st.composite
def _flatten(draw):
    shape = draw(small_dims(draw(st.integers(2, 4))))
    a = draw(st.integers(0, len(shape) - 1))
    e = draw(st.integers(max(a - 1, 0), len(shape) - 1))     # (a - 1: a unit axis, as Caffe)
    return Case('type: "Flatten" flatten_param { axis: %d end_axis: %d }' % (a, e), [shape],
                seed=draw(_seeds))


@st.composite
def _input(draw):
    dims = " ".join("dim: %d" % d for d in draw(small_dims(draw(st.integers(1, 4)))))
    return Case('type: "Input" input_param { shape { %s } }' % dims, [], backward=False)


@st.composite
def _dummy(draw):
    dims = " ".join("dim: %d" % d for d in draw(small_dims(draw(st.integers(1, 4)))))
    filler = draw(st.sampled_from(['type: "constant" value: 1', 'type: "gaussian"',
                                   'type: "uniform"', 'type: "gaussian" sparse: 1',
                                   'type: "xavier"', 'type: "msra"',
                                   'type: "positive_unitball"']))
    return Case('type: "DummyData" dummy_data_param { shape { %s } data_filler { %s } }'
                % (dims, filler), [], backward=False, seed=draw(_seeds))


@st.composite
def _convolution(draw):
    group = draw(st.integers(1, 2))
    cin, cout = group * draw(st.integers(1, 2)), group * draw(st.integers(1, 2))
    k, s, pad, dil = (draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 1)),
                      draw(st.integers(1, 2)))
    extent = dil * (k - 1) + 1
    # (2-d maps mostly; some 3-d ones, which jcaffe computes as 2-d maps on CPU:
    # jcaffe.layers.conv_depth)
    hw = [draw(st.integers(max(1, extent - 2 * pad), extent - 2 * pad + 3))
          for _ in range(draw(st.sampled_from([2, 2, 3])))]
    p = ("num_output: %d kernel_size: %d stride: %d pad: %d dilation: %d group: %d bias_term: %s %s"
         % (cout, k, s, pad, dil, group, draw(st.sampled_from(["true", "false"])), _filler()))
    return Case('type: "Convolution" convolution_param { %s }' % p,
                [(draw(st.integers(1, 2)), cin) + tuple(hw)], seed=draw(_seeds))


@st.composite
def _pooling(draw):
    pool = draw(st.sampled_from(["MAX", "AVE"]))
    k, s = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    pad = draw(st.integers(0, k - 1))
    hw = [draw(st.integers(max(1, k - 2 * pad), k + 3)) for _ in range(2)]
    p = "pool: %s kernel_size: %d stride: %d pad: %d" % (pool, k, s, pad)
    return Case('type: "Pooling" pooling_param { %s }' % p,
                [(draw(st.integers(1, 2)), draw(st.integers(1, 2))) + tuple(hw)], seed=draw(_seeds))


@st.composite
def _lrn(draw):
    region = draw(st.sampled_from(["ACROSS_CHANNELS", "WITHIN_CHANNEL"]))
    size = draw(st.sampled_from([1, 3, 5]))
    p = "norm_region: %s local_size: %d alpha: %g beta: %g k: %g" % (
        region, size, draw(st.sampled_from([1e-4, 0.5, 1.0])), draw(st.sampled_from([0.5, 0.75])),
        draw(st.sampled_from([1.0, 2.0])))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 4)),
             draw(st.integers(1, 4)))
    return Case('type: "LRN" lrn_param { %s }' % p, [shape], seed=draw(_seeds))


SPECS = {
    "Accuracy": _accuracy(),
    "Concat": _concat(),
    "Convolution": _convolution(),
    "Dropout": _neuron("Dropout", st.sampled_from(["", "dropout_param { dropout_ratio: 0.3 }"])),
    "DummyData": _dummy(),
    "EuclideanLoss": _euclidean(),
    "Flatten": _flatten(),
    "InnerProduct": _inner_product(),
    "Input": _input(),
    "LRN": _lrn(),
    "Pooling": _pooling(),
    "ReLU": _neuron("ReLU", st.sampled_from(["", "relu_param { negative_slope: 0.1 }",
                                             "relu_param { negative_slope: -0.5 }"])),
    "Sigmoid": _neuron("Sigmoid"),
    "Softmax": _softmax(),
    "SoftmaxWithLoss": _softmax_loss(),
    "Split": _split(),
    "TanH": _neuron("TanH"),
}


def _load_family_specs():
    """Merge ``SPECS`` of every module in gradcheck/specs/ into the table above."""
    import importlib
    import pkgutil

    from . import specs
    for info in sorted(pkgutil.iter_modules(specs.__path__), key=lambda m: m.name):
        module = importlib.import_module("%s.%s" % (specs.__name__, info.name))
        clash = set(SPECS) & set(module.SPECS)
        if clash:
            raise RuntimeError("gradcheck spec for %s defined twice (in %s)"
                               % (sorted(clash), module.__name__))
        SPECS.update(module.SPECS)


_load_family_specs()


def layer_cases(type_name):
    """The spec-table strategy for ``type_name`` (KeyError names the known types)."""
    try:
        return SPECS[type_name]
    except KeyError:
        raise KeyError("no gradcheck strategy for layer type %r; known: %s"
                       % (type_name, ", ".join(sorted(SPECS)))) from None


def layer_params(type_name):
    """Param text (a LayerParameter snippet) for ``type_name``."""
    return layer_cases(type_name).map(lambda case: case.snippet)


def check_case(case, **kwargs):
    """Run check_layer on a drawn case (propagate_down off everywhere for no-backward types)."""
    pd = None if case.backward else [False] * len(case.bottom_shapes)
    return check_layer(case.snippet, case.bottom_shapes, propagate_down=pd,
                       label_bottoms=case.label_bottoms, num_classes=case.num_classes,
                       seed=case.seed, **{**case.check_kwargs, **kwargs})
