"""check_python_layer: a classic numpy pycaffe layer (``jcaffe.Layer``), on float64 Blobs.

Besides backward vs finite differences, the layer contract:

* ``reshape`` gives every top a shape (tops start with shape (0,));
* ``forward`` leaves its bottoms alone and writes every top element (run
  twice, tops pre-filled with NaN then with 1e30: the results must agree);
* ``backward`` exists and writes something; it never writes the diff of a
  bottom whose propagate_down is false (pre-filled with a sentinel).

A layer computing internally in float32 (float32-exact tops from float64
bottoms) is still checked, with float32 tolerances and a warning.

A numpy layer may also declare its forward in JAX, as a method
``jax_forward(self, params, bottoms) -> tops`` (lists of arrays; ``params``
are the values of ``self.blobs``). Then the checker also runs ``jax.vjp`` of
it: its tops must equal the numpy forward's, and the hand-written backward is
compared with the vjp element by element, besides finite differences.
"""
import functools
import importlib
import importlib.util
import os
import sys

import numpy as np

from jcaffe.blob import Blob
from jcaffe.layer import BlobVec, JaxLayer, Layer, jax_python_layer
from jcaffe.layer import layer_class as registered_class
from jcaffe.proto import caffe_pb2

from . import compare, numeric
from .report import BlobCheck, Report

SENTINEL = 12345.0


def load_class(spec):
    """``"pkg.mod.Class"``, ``"path/to/mod.py:Class"`` or a class -> the class (clear errors)."""
    if isinstance(spec, type):
        return spec
    if ":" in spec:
        path, name = spec.rsplit(":", 1)
        if not os.path.exists(path):
            raise ImportError("Python layer file '%s' not found" % path)
        modname = os.path.splitext(os.path.basename(path))[0]
        mod_spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
        mod_spec.loader.exec_module(module)
    else:
        modname, _, name = spec.rpartition(".")
        if not modname:
            raise ImportError("give the layer as 'module.Class' or 'path/to/mod.py:Class', got %r" % spec)
        module = importlib.import_module(modname)
    cls = getattr(module, name, None)
    if cls is None:
        raise ImportError("module '%s' (%s) has no class '%s'"
                          % (module.__name__, getattr(module, "__file__", "?"), name))
    return cls


def make_python_layer(cls, param_str="", phase=caffe_pb2.TRAIN, layer_param=None):
    """Instantiate as Caffe's PythonLayer does, with float64 param blobs."""
    lp = caffe_pb2.LayerParameter()
    if layer_param is not None:
        lp.CopyFrom(layer_param)
    else:
        lp.name, lp.type = cls.__name__, "Python"
        lp.python_param.module, lp.python_param.layer = cls.__module__, cls.__name__
        lp.python_param.param_str = param_str
    lp.phase = phase
    try:
        layer = cls(lp)
    except TypeError:
        layer = cls()
    if not isinstance(layer, Layer):
        raise TypeError("%s must subclass jcaffe.Layer" % cls.__qualname__)
    if not hasattr(layer, "layer_param"):
        Layer.__init__(layer, lp)
    layer.layer_param, layer.phase = lp, phase
    layer.param_str = lp.python_param.param_str
    layer.dtype = np.dtype(np.float64)
    layer.blobs = BlobVec(layer.blobs, np.float64)
    return layer


def check_python_layer(layer, bottom_shapes=None, param_str="", *, bottoms=None, num_top=1,
                       propagate_down=None, label_bottoms=(), num_classes=None, seed=0,
                       eps=None, rtol=None, atol=None, phase=caffe_pb2.TRAIN, top_diff="random"):
    """Check a numpy Python layer. ``layer``: class, "module.Class", "file.py:Class" or a
    Python-type LayerParameter. ``top_diff``: "random" (default: covers loss weights other
    than 1) or "ones" (the diff a loss top gets with loss_weight 1)."""
    lp = None
    if isinstance(layer, caffe_pb2.LayerParameter) and layer.type not in ("", "Python"):
        lp = caffe_pb2.LayerParameter()   # a built-in host layer (Filter): the registered class
        lp.CopyFrom(layer)
        if not lp.bottom:
            lp.bottom.extend("b%d" % i for i in range(len(bottom_shapes if bottoms is None
                                                          else bottoms)))
        cls = registered_class(lp.type, lp.name)
        num_top = len(lp.top) or num_top
    elif isinstance(layer, caffe_pb2.LayerParameter):
        lp = layer
        cls = load_class(lp.python_param.module + "." + lp.python_param.layer)
        num_top = len(lp.top) or num_top
    else:
        cls = load_class(layer)
    if isinstance(cls, type) and issubclass(cls, JaxLayer):
        return _check_jax_python_layer(cls, lp, bottom_shapes, param_str, bottoms, num_top,
                                       propagate_down, label_bottoms, num_classes, seed, eps,
                                       rtol, atol, phase)
    layer = make_python_layer(cls, param_str, phase, lp)
    if label_bottoms is None:   # bottoms force_backward never reaches (Filter's selector)
        n = len(bottom_shapes if bottoms is None else bottoms)
        label_bottoms = [i for i in range(n) if not layer.allow_force_backward(i)]
    rng = np.random.default_rng(seed)
    if bottoms is None:
        c = num_classes or (bottom_shapes[0][1] if len(bottom_shapes[0]) > 1 else 2)
        bottoms = [rng.integers(0, c, size=s).astype(np.float64) if i in label_bottoms
                   else rng.standard_normal(s) for i, s in enumerate(bottom_shapes)]
    bottoms = [np.asarray(b, np.float64) for b in bottoms]
    what = ("Python layer %s" % cls.__qualname__ if layer.type == "Python"
            else "%s layer '%s'" % (layer.type, layer.name))
    report = Report("%s (bottoms %s)" % (what, ", ".join("x".join(map(str, b.shape)) for b in bottoms)))
    contract = report.add(BlobCheck("contract", None, mode="contract"))
    runner = _Runner(layer, bottoms, num_top, contract)
    if not runner.setup() or not runner.forward_contract():
        return report
    pd = [i not in label_bottoms for i in range(len(bottoms))] if propagate_down is None \
        else [bool(p) for p in propagate_down]
    dtype = np.float64
    if runner.computes_in_float32():
        dtype = np.float32
        report.warnings.append("the layer computes in float32 (its tops are float32-exact for "
                               "float64 bottoms); checked with float32 tolerances")
    tol = numeric.tolerances(dtype, eps, rtol, atol)
    runner.backward_contract(pd)
    if not contract.ok:
        return report
    vs = [np.ones(t.shape) if top_diff == "ones" else rng.standard_normal(t.shape)
          for t in runner.top]
    vjps = _jax_reference(report, runner, vs, tol) if hasattr(layer, "jax_forward") else None
    _check_gradients(report, runner, vs, pd, tol, dtype, vjps)
    if not report.ok and top_diff != "ones" and all(t.count == 1 for t in runner.top):
        again = Report("")
        _check_gradients(again, runner, [np.ones(t.shape) for t in runner.top], pd, tol, dtype)
        if again.ok:
            report.notes.append("with top diff 1 the gradients are right: backward ignores "
                                "top[k].diff, so it is only right for loss_weight 1 (scale the "
                                "bottom diffs by top[0].diff[0])")
    return report


def _check_jax_python_layer(cls, lp, bottom_shapes, param_str, bottoms, num_top,
                            propagate_down, label_bottoms, num_classes, seed, eps, rtol, atol,
                            phase):
    """A Python layer written in JAX (a jcaffe.JaxLayer): checked as the built-in layers
    are (layer_check.check_layer: backward against jax.vjp of its own forward and float64
    finite differences), built from a ``type: "Python"`` LayerParameter."""
    from .layer_check import check_layer
    if lp is None:
        lp = caffe_pb2.LayerParameter(name=cls.__name__, type="Python")
        lp.python_param.module, lp.python_param.layer = cls.__module__, cls.__name__
        lp.python_param.param_str = param_str
    if not lp.top:
        lp.top.extend("t%d" % i for i in range(num_top))
    return check_layer(lp, bottom_shapes, bottoms=bottoms, propagate_down=propagate_down,
                       label_bottoms=label_bottoms or None, num_classes=num_classes, seed=seed,
                       eps=eps, rtol=rtol, atol=atol, phase=phase,
                       layer_class=_as_python_type(cls))


def _as_python_type(cls):
    """``cls`` built as create_layer builds a JaxLayer named by a Python layer."""
    return functools.partial(jax_python_layer, cls)


def _jax_reference(report, runner, vs, tol):
    """jax.vjp of the layer's ``jax_forward`` at the checked point: (param vjps, bottom vjps).

    Also checks that the JAX forward computes what the numpy forward does."""
    import jax
    import jax.numpy as jnp

    layer = runner.layer
    with jax.enable_x64(True):
        params = [jnp.asarray(b.data, jnp.float64) for b in layer.blobs]
        bottoms = [jnp.asarray(x, jnp.float64) for x in runner.x0]

        def f(params, bottoms):
            return [jnp.asarray(t) for t in layer.jax_forward(params, bottoms)]

        tops, vjp = jax.vjp(f, params, bottoms)
        if len(tops) != len(runner.tops):
            report.add(BlobCheck("jax_forward", None, mode="contract")).add_error(
                "jax_forward returned %d tops, forward() writes %d" % (len(tops), len(runner.tops)))
            return None
        check = report.add(BlobCheck("jax_forward tops", None, mode="contract"))
        for i, (t, ref) in enumerate(zip(tops, runner.tops)):
            t = np.asarray(t, np.float64).reshape(np.shape(ref))
            _, _, fail = numeric.close(np.ravel(t), np.ravel(ref), tol)
            if fail.any():
                j = int(np.flatnonzero(fail)[0])
                check.add_error("jax_forward top %d differs from forward(): element %s is %.6g, "
                                "forward() gives %.6g" % (i, list(np.unravel_index(j, t.shape)),
                                                          np.ravel(t)[j], np.ravel(ref)[j]))
        if not check.ok:
            return None
        param_vjps, bottom_vjps = vjp([jnp.asarray(v, jnp.float64).reshape(t.shape)
                                       for v, t in zip(vs, tops)])
    return [np.asarray(g) for g in param_vjps], [np.asarray(g) for g in bottom_vjps]


def _check_gradients(report, runner, vs, pd, tol, dtype, vjps=None):
    layer, bottoms = runner.layer, runner.x0
    bottom_diffs, param_diffs = runner.backward(vs, pd)
    scale = runner.scale(vs)
    targets = [("bottom %d" % i, "b", i) for i in range(len(bottoms)) if pd[i]]
    targets += [("param %d" % j, "p", j) for j in range(len(layer.blobs))]
    zero = []
    for name, kind, i in targets:
        x = bottoms[i] if kind == "b" else layer.blobs[i].data.copy()
        analytic = bottom_diffs[i] if kind == "b" else param_diffs[i]
        check = report.add(BlobCheck(name, x.shape))
        ref = None if vjps is None else (vjps[1][i] if kind == "b" else vjps[0][i])
        if not np.any(analytic) and (ref is None or not np.any(ref)):
            zero.append(name)
        obj = numeric.LoopObjective(runner.objective(vs, kind, i), x.ravel())
        kinks = compare.check_elements(check, obj, np.arange(x.size), analytic, ref, tol, scale,
                                       dtype)
        if ref is not None:
            compare.check_vjp(check, analytic, ref, tol, skip=kinks)
    report.warn_zero_gradients(zero, ("bottoms", "pass other bottoms or another seed"))


class _Runner:
    """Calls the user's layer on float64 Blobs, recording contract violations."""

    def __init__(self, layer, bottoms, num_top, contract):
        self.layer, self.x0, self.contract = layer, bottoms, contract
        self.bottom = [Blob(b.shape, np.float64) for b in bottoms]
        self.top = [Blob((0,), np.float64) for _ in range(num_top)]
        self._load(bottoms)

    def _load(self, values):
        for blob, v in zip(self.bottom, values):
            blob.data[...] = v

    def setup(self):
        self.layer.setup(self.bottom, self.top)
        self.layer.reshape(self.bottom, self.top)
        for i, t in enumerate(self.top):
            if t.shape == (0,):
                self.contract.add_error("reshape() gave top %d no shape" % i)
        return self.contract.ok

    def run_forward(self, fill=None):
        if fill is not None:
            for t in self.top:
                t.data[...] = fill
        self.layer.reshape(self.bottom, self.top)
        self.layer.forward(self.bottom, self.top)
        return [t.data.copy() for t in self.top]

    def forward_contract(self):
        first = self.run_forward(np.nan)
        for i, (b, x) in enumerate(zip(self.bottom, self.x0)):
            if not np.array_equal(b.data, x):
                self.contract.add_error("forward() modified bottom %d" % i)
                self._load(self.x0)
        second = self.run_forward(1e30)
        for i, (a, b) in enumerate(zip(first, second)):
            unwritten = np.flatnonzero(np.isnan(a) | (a != b))
            if unwritten.size:
                where = tuple(int(k) for k in np.unravel_index(unwritten[0], a.shape))
                self.contract.add_error("forward() does not write every element of top %d (%d "
                                        "unwritten, first %s): zero or assign the whole top"
                                        % (i, unwritten.size, list(where)))
        self.tops = first
        return self.contract.ok

    def computes_in_float32(self):
        vals = np.concatenate([np.ravel(t) for t in self.tops])
        vals = vals[vals != np.round(vals)]
        return vals.size > 0 and np.array_equal(vals, vals.astype(np.float32).astype(np.float64))

    def backward(self, vs, pd, bottom_fill=np.nan):
        self.run_forward()
        for t, v in zip(self.top, vs):
            t.diff[...] = v
        for b, p in zip(self.bottom, pd):
            b.diff[...] = bottom_fill if p else SENTINEL
        for blob in self.layer.blobs:
            blob.diff[...] = 0.0
        self.layer.backward(self.top, list(pd), self.bottom)
        return ([b.diff.copy() for b in self.bottom], [p.diff.copy() for p in self.layer.blobs])

    def backward_contract(self, pd):
        if not callable(getattr(self.layer, "backward", None)):
            self.contract.add_error("the layer has no backward(); Caffe calls it whenever the net "
                                    "needs this layer's backward")
            return
        vs = [np.ones(t.shape) for t in self.top]
        bd, pdiffs = self.backward(vs, [False] * len(self.bottom))
        for i, d in enumerate(bd):
            if not np.all(d == SENTINEL):
                self.contract.add_error("backward() wrote the diff of bottom %d although "
                                        "propagate_down[%d] is False" % (i, i))
        bd, pdiffs = self.backward(vs, pd, bottom_fill=SENTINEL)
        wrote = any(not np.all(d == SENTINEL) for d, p in zip(bd, pd) if p)
        wrote |= any(np.any(d != 0) for d in pdiffs)
        if (any(pd) or self.layer.blobs) and not wrote:
            self.contract.add_error("backward() did nothing: no bottom diff (propagate_down %s) "
                                    "and no param diff was written" % list(pd))
        for i, (d, p) in enumerate(zip(bd, pd)):
            if not p and not np.all(d == SENTINEL):
                self.contract.add_error("backward() wrote the diff of bottom %d although "
                                        "propagate_down[%d] is False" % (i, i))

    def scale(self, vs):
        return float(sum(np.sum(np.abs(v * t)) for v, t in zip(vs, self.tops)))

    def objective(self, vs, kind, i):
        def L(flat):
            if kind == "b":
                values = list(self.x0)
                values[i] = flat.reshape(self.x0[i].shape)
                self._load(values)
            else:
                saved = self.layer.blobs[i].data.copy()
                self.layer.blobs[i].data[...] = flat.reshape(saved.shape)
            tops = self.run_forward()
            if kind == "b":
                self._load(self.x0)
            else:
                self.layer.blobs[i].data[...] = saved
            return float(sum(np.vdot(v, t) for v, t in zip(vs, tops)))
        return L
