"""check_layer: a built-in or JAX-written layer's explicit backward vs jax.vjp and
finite differences, in float64.

The layer is built as the Net builds it (parse, create, SetUp) with float64
blobs inside ``jax.enable_x64(True)``, so float64 never leaks into the
caller's process. Every forward uses the same PRNG key (Dropout keeps its
mask). The objective is ``L = sum_i <v_i, top_i>`` with a random ``v_i`` per
top, so every top (and every element of it) is covered; the explicit
backward gets ``v`` as its top diffs.
"""
import jax
import jax.numpy as jnp
import numpy as np
from google.protobuf import text_format

from jcaffe.layer import JaxLayer, create_layer
from jcaffe.layer import layer_class as registered_class
from jcaffe.proto import caffe_pb2

from . import compare, numeric
from .report import BlobCheck, Report

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
MAX_EXHAUSTIVE = 2048     # "auto" checks blobs up to this many elements one by one


def parse_layer_param(layer):
    """A LayerParameter from a prototxt snippet (``type: "ReLU" ...``) or a copy of one."""
    lp = caffe_pb2.LayerParameter()
    if isinstance(layer, caffe_pb2.LayerParameter):
        lp.CopyFrom(layer)
    else:
        text_format.Parse(layer, lp)
    if not lp.name:
        lp.name = (lp.type or "layer").lower()
    return lp


def build_layer(layer, bottom_shapes, phase=TRAIN, seed=0, layer_class=None, dtype=np.float64):
    """A set-up layer (Caffe's SetUp) with every learned param marked to propagate down."""
    lp = parse_layer_param(layer)
    lp.phase = phase
    if not lp.bottom:
        lp.bottom.extend("b%d" % i for i in range(len(bottom_shapes)))
    layer = layer_class(lp, dtype) if layer_class is not None else create_layer(lp, dtype)
    num_top = len(lp.top) or default_num_top(layer)
    if not lp.top:
        lp.top.extend("t%d" % i for i in range(num_top))
    layer.layer_setup([tuple(s) for s in bottom_shapes], num_top, np.random.default_rng(seed))
    layer.param_propagate_down = learned_params(layer)
    return layer


def learned_params(layer):
    """Which param blobs get a diff, as the Net decides: all but those with ``lr_mult: 0``
    in the layer's param specs after setup (BatchNorm's statistics, pinned by its setup)."""
    specs = layer.layer_param.param
    return [not (k < len(specs) and specs[k].HasField("lr_mult") and specs[k].lr_mult == 0)
            for k in range(len(layer.blobs))]


def default_num_top(layer):
    """The top count a layer gets when the snippet names no tops (0 for Silence)."""
    if layer.exact_num_top_blobs >= 0:
        return layer.exact_num_top_blobs
    return max(layer.min_top_blobs, 1)


def default_label_bottoms(layer, num_bottoms):
    """Bottoms force_backward never reaches (Caffe's AllowForceBackward false): labels."""
    return [i for i in range(num_bottoms) if not layer.allow_force_backward(i)]


def draw_bottoms(layer, shapes, label_bottoms, rng, num_classes=None):
    """Standard normal values; integer labels in [0, num_classes) for label bottoms."""
    out = []
    for i, shape in enumerate(shapes):
        if i in label_bottoms:
            c = num_classes or _guess_classes(layer, shapes)
            out.append(rng.integers(0, c, size=shape).astype(np.float64))
        else:
            out.append(rng.standard_normal(shape))
    return out


def _guess_classes(layer, shapes):
    axis = getattr(layer, "axis", 1)
    first = shapes[0]
    return int(first[axis]) if len(first) > axis else 2


def check_layer(layer, bottom_shapes=None, bottoms=None, *, propagate_down=None, check_bottom=None,
                phase=TRAIN, seed=0, eps=None, rtol=None, atol=None, mode="auto",
                label_bottoms=None, num_classes=None, projections=4, layer_class=None,
                max_exhaustive=MAX_EXHAUSTIVE):
    """Check a layer's explicit backward. ``layer``: a prototxt snippet or LayerParameter.

    ``bottoms`` (arrays) or ``bottom_shapes`` (drawn: standard normal, labels as
    integers). ``propagate_down`` defaults to true for every non-label bottom;
    ``check_bottom`` selects which of those to check (all params are always
    checked). ``mode``: "exhaustive" (every element), "projection" (random
    directions, for large blobs) or "auto" (by size). ``layer_class``: a
    JaxLayer subclass to use instead of the registry (user JAX layers).
    Raises the layer's own errors (unknown type, rejected shapes, a backward
    that refuses, such as Accuracy's) unchanged.
    """
    if mode not in ("auto", "exhaustive", "projection"):
        raise ValueError("mode must be 'auto', 'exhaustive' or 'projection', got %r" % (mode,))
    lp = parse_layer_param(layer)
    if layer_class is None and lp.type == "Python":
        from .python_check import _as_python_type, load_class
        cls = load_class(lp.python_param.module + "." + lp.python_param.layer)
        if isinstance(cls, type) and issubclass(cls, JaxLayer):     # a Python layer in JAX
            layer_class = _as_python_type(cls)
    if layer_class is None and (lp.type == "Python" or registered_class(lp.type).is_host):
        # Python layers, and built-in host layers (Filter) that work on Blobs like them.
        from .python_check import check_python_layer
        return check_python_layer(lp, bottom_shapes, bottoms=bottoms, propagate_down=propagate_down,
                                  seed=seed, eps=eps, rtol=rtol, atol=atol, phase=phase,
                                  label_bottoms=label_bottoms, num_classes=num_classes)
    with jax.enable_x64(True):
        return _check(lp, bottom_shapes, bottoms, propagate_down, check_bottom, phase, seed,
                      numeric.tolerances(np.float64, eps, rtol, atol), mode, label_bottoms,
                      num_classes, projections, layer_class, max_exhaustive)


def _check(lp, bottom_shapes, bottoms, propagate_down, check_bottom, phase, seed, tol, mode,
           label_bottoms, num_classes, projections, layer_class, max_exhaustive):
    if bottoms is not None:
        bottoms = [np.asarray(b, np.float64) for b in bottoms]
        bottom_shapes = [b.shape for b in bottoms]
    bottom_shapes = [tuple(s) for s in (bottom_shapes or [])]
    layer = build_layer(lp, bottom_shapes, phase, seed, layer_class)
    report = Report("%s layer '%s' (bottoms %s)" % (layer.type, layer.name,
                                                  ", ".join(_shape(s) for s in bottom_shapes) or "none"))
    if not layer.forward_writes_tops:
        report.notes.append("tops are filled from outside (no forward, no backward): setup checked")
        return report
    nb = len(bottom_shapes)
    labels = default_label_bottoms(layer, nb) if label_bottoms is None else list(label_bottoms)
    rng = np.random.default_rng(seed)
    if bottoms is None:
        bottoms = draw_bottoms(layer, bottom_shapes, labels, rng, num_classes)
    pd = [i not in labels for i in range(nb)] if propagate_down is None else \
        [bool(p) for p in propagate_down]
    key = jax.random.PRNGKey(seed)
    params = [jnp.asarray(b.data, jnp.float64) for b in layer.blobs]
    xs = [jnp.asarray(b) for b in bottoms]
    kw = {}
    if layer.carries_state:     # (a net's forward after the first: from the last h_T)
        kw["state"] = tuple(jnp.asarray(rng.standard_normal(shape))
                            for shape in layer.state_shapes())
        report.notes.append("forward from a drawn carried state (as a net's forward after "
                            "its first starts from the last one's): held fixed, no diff")

    def forward(p, b):
        return layer.forward(p, b, key, **kw)

    def tops_of(p, b):
        return forward(p, b)[0]

    # forward, backward and the vjp each jitted, as a net runs layers (op by op, a layer
    # of many small ops, like im2col or max pooling, compiled each on its own: slower)
    tops, saved = jax.jit(lambda p, b: forward(p, b)[:2])(params, xs)
    _check_tops(report, layer, tops)
    if not report.ok:
        return report
    vs = [jnp.asarray(rng.standard_normal(np.shape(t))) for t in tops]
    scale = float(sum(jnp.sum(jnp.abs(v * t)) for v, t in zip(vs, tops)))
    bottom_diffs, param_diffs = jax.jit(lambda p, b, t, s, v: layer.backward(
        p, b, t, s, v, tuple(pd)))(params, xs, tops, saved, vs)
    ref_params, ref_bottoms = _vjp(report, tops_of, params, xs, vs)

    targets = []
    for i in range(nb):
        if pd[i] and (check_bottom is None or i in check_bottom):
            targets.append(("bottom %d" % i, "b", i, xs[i], _at(bottom_diffs, i), _at(ref_bottoms, i)))
    for j in range(len(params)):
        if not layer.param_propagate_down[j]:
            report.notes.append("param %d is not learned (lr_mult 0): no diff, not checked" % j)
            continue
        targets.append(("param %d" % j, "p", j, params[j], _at(param_diffs, j), _at(ref_params, j)))
    zero = []
    for name, kind, i, x, analytic, ref in targets:
        check = report.add(BlobCheck(name, tuple(x.shape)))
        problem = compare.structural_problem(name, analytic, x.shape)
        if problem:
            check.add_error(problem)
            continue
        analytic = np.asarray(analytic, np.float64).reshape(x.shape)
        if not np.any(analytic) and (ref is None or not np.any(ref)):
            zero.append(name)
        obj = numeric.JaxObjective(_objective(tops_of, params, xs, vs, kind, i), jnp.ravel(x))
        use_proj = mode == "projection" or (mode == "auto" and x.size > max_exhaustive)
        if use_proj:
            check.mode = "projection"
            kinks = compare.check_projections(check, obj, analytic, tol, scale, np.float64,
                                              np.random.default_rng([seed, len(report.checks)]),
                                              projections, ref)
        else:
            kinks = compare.check_elements(check, obj, np.arange(x.size), analytic, ref, tol,
                                           scale, np.float64)
        if ref is not None:
            compare.check_vjp(check, analytic, ref, tol, skip=kinks)
    report.warn_zero_gradients(zero, ("bottoms", "pass other bottoms or another seed"))
    _check_rows(report, layer, params, xs, vs, param_diffs)
    return report


def _check_rows(report, layer, params, xs, vs, param_diffs):
    """A param a layer offers by rows (``row_blocked_params`` and ``param_diff_rows``,
    jcaffe.engine.RowBlocks, which a fused solver step updates a block at a time): its
    blocks of rows, the last shorter, stacked, against the diff its backward gives."""
    for j in getattr(layer, "row_blocked_params", ()):
        if not layer.param_propagate_down[j] or _at(param_diffs, j) is None:
            continue
        whole = np.asarray(param_diffs[j], np.float64).reshape(np.shape(params[j]))
        if not whole.size:
            continue
        check = report.add(BlobCheck("param %d by rows" % j, whole.shape, mode="contract"))
        rows = whole.shape[0]
        size = max(1, -(-rows // 3)) if rows > 2 else 1
        blocks = [np.asarray(jax.jit(lambda p, b, v, start, j=j, n=n: layer.param_diff_rows(
            p, b, v, j, start, n))(params, xs, vs, start)) for start, n in
            ((start, min(size, rows - start)) for start in range(0, rows, size))]
        got = np.concatenate(blocks).reshape(whole.shape)
        bad = ~np.isclose(got, whole, rtol=1e-9, atol=1e-12 * max(1.0, np.abs(whole).max()))
        error = np.abs(got - whole)
        check.checked, check.max_abs = got.size, float(error.max(initial=0.0))
        check.max_rel = float((error / np.maximum(np.abs(whole), 1e-300)).max(initial=0.0))
        if bad.any():
            at = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), whole.shape))
            check.add_error("param_diff_rows gives %r at %s where the backward's diff is %r "
                            "(%d of %d elements differ)" % (float(got[at]), at, float(whole[at]),
                                                            int(bad.sum()), got.size))


def _check_tops(report, layer, tops):
    check = BlobCheck("tops", None, mode="contract")
    if len(tops) != len(layer.top_shapes):
        check.add_error("forward returned %d tops, reshape declared %d" % (len(tops), len(layer.top_shapes)))
    for i, (t, s) in enumerate(zip(tops, layer.top_shapes)):
        if tuple(np.shape(t)) != tuple(s):
            check.add_error("top %d has shape %s, reshape declared %s" % (i, np.shape(t), s))
    if check.errors:
        report.add(check)


def _vjp(report, tops_of, params, xs, vs):
    try:
        return jax.jit(lambda p, b, v: jax.vjp(tops_of, p, b)[1](v))(params, xs, vs)
    except Exception as e:   # a forward jax cannot differentiate: finite differences only
        report.notes.append("jax.vjp of the forward failed (%s: %s); checked against finite "
                            "differences only" % (type(e).__name__, e))
        return None, None


def _objective(tops_of, params, xs, vs, kind, i):
    shape = xs[i].shape if kind == "b" else params[i].shape

    def L(flat):
        p, b = list(params), list(xs)
        if kind == "b":
            b[i] = flat.reshape(shape)
        else:
            p[i] = flat.reshape(shape)
        return sum(jnp.vdot(v, t) for v, t in zip(vs, tops_of(p, b)))
    return L


def _at(seq, i):
    if seq is None or i >= len(seq):
        return None
    return seq[i]


def _shape(s):
    return "x".join(str(d) for d in s) or "scalar"
