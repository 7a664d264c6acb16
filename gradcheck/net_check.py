"""check_net: a whole net's backward vs jax.grad of the composed loss and finite differences.

The net runs in float64 inside ``jax.enable_x64(True)``. Its analytic
gradient is what pycaffe users get: ``net.forward(); net.backward()`` with
param diffs cleared. The reference is ``jax.grad`` of the loss composed from
the layers' forward functions in execution order (Caffe's semantics kept:
a bottom that gets no diff, e.g. ``propagate_down: false``, is a
``stop_gradient``); it is skipped when the net holds Python layers. Finite
differences of the net's own forward check a sample of elements of every
learnable param and every input that gets a diff. Every forward uses the
same random key, so Dropout keeps its mask.
"""
import jax
import jax.numpy as jnp
import numpy as np

import jcaffe
from jcaffe.engine import _layer_params

from . import compare, numeric
from .report import BlobCheck, Report


def check_net(net, phase=jcaffe.TRAIN, *, weights=None, seed=0, samples=12, eps=None, rtol=None,
              atol=None, inputs=None):
    """``net``: a prototxt path / NetParameter (built in float64) or a float64 jcaffe.Net.

    ``inputs``: {blob: array} for the net's inputs (default: standard normal,
    integer labels for blobs that reach a label bottom). ``samples``: elements
    per blob checked by finite differences (the worst analytic-vs-jax.grad
    element is always among them).
    """
    with jax.enable_x64(True):
        if not isinstance(net, jcaffe.Net):
            net = jcaffe.Net(net, phase, weights=weights, dtype=np.float64)
        dtype = net.dtype
        report = Report("net '%s'" % net.name)
        if dtype != np.float64:
            report.warnings.append("the net is %s: checked with %s tolerances" % (dtype, dtype))
        tol = numeric.tolerances(dtype, eps, rtol, atol)
        rng = np.random.default_rng(seed)
        _fill_inputs(net, rng, inputs or {})
        runner = _NetRunner(net)
        loss = runner.loss()
        analytic = runner.analytic()
        ref = None
        if any(s.layer.is_host for s in net._slots):
            report.notes.append("the net has Python layers: jax.grad comparison skipped, finite "
                                "differences only")
        else:
            ref = runner.jax_grads()
        if _partial(net):
            report.notes.append("some bottom needing a diff has propagate_down false: the net's "
                                "gradient is partial by design; compared with jax.grad only")
        zero = []
        for name, kind, key, x in runner.targets():
            check = report.add(BlobCheck(name, x.shape, mode="sample"))
            a = analytic[(kind, key)]
            r = None if ref is None else np.asarray(ref[(kind, key)])
            if not np.any(a) and (r is None or not np.any(r)):
                zero.append(name)
            idx = _sample(a, r, samples, rng)
            kinks = []
            if not _partial(net):
                obj = numeric.LoopObjective(runner.objective(kind, key), x.ravel())
                kinks = compare.check_elements(check, obj, idx, a, r, tol, abs(loss), dtype)
            if r is not None:
                compare.check_vjp(check, a, r, tol, skip=kinks)
        report.warn_zero_gradients(zero, (
            "weights and inputs", "build the net after another jcaffe.set_random_seed or "
            "pass other inputs"))
        return report


def _fill_inputs(net, rng, given):
    labels = _label_inputs(net)
    for name in net.inputs:
        blob = net.blobs[name]
        if name in given:
            blob.data[...] = given[name]
        elif name in labels:
            blob.data[...] = rng.integers(0, labels[name], size=blob.shape)
        else:
            blob.data[...] = rng.standard_normal(blob.shape)


def _label_inputs(net):
    """Input blobs reaching (through splits) a bottom force_backward never reaches."""
    source = {}
    for s in net._slots:
        for t in s.tops:
            if s.layer.type == "Split":
                source[t] = source.get(s.bottoms[0], s.bottoms[0])
    out = {}
    for s in net._slots:
        for j, b in enumerate(s.bottoms):
            root = source.get(b, b)
            if root in net.inputs and not s.layer.allow_force_backward(j):
                first = net.blobs[s.bottoms[0]].shape
                out[root] = int(first[getattr(s.layer, "axis", 1)]) if len(first) > 1 else 2
    return out


def _partial(net):
    return any(s.need_backward and net._blob_need_backward[b] and not s.bottom_need_backward[j]
               for s in net._slots for j, b in enumerate(s.bottoms))


def _sample(a, r, samples, rng):
    n = a.size
    if n <= samples:
        return np.arange(n)
    idx = set(rng.choice(n, size=samples - 1, replace=False).tolist())
    if r is not None:
        idx.add(int(np.argmax(np.abs(np.ravel(a) - np.ravel(r)))))
    else:
        idx.add(int(np.argmax(np.abs(np.ravel(a)))))
    return np.array(sorted(idx))


class _NetRunner:
    """Runs the net with a fixed key; exposes loss, analytic diffs and the jax reference."""

    def __init__(self, net):
        self.net = net
        self.last = len(net._slots) - 1
        # the state the recurrent layers carry in (their last forward's h_T), the same
        # for every forward here
        self.states = {s.index: s.layer.hidden_state for s in net._slots
                       if s.layer.carries_state}

    def loss(self):
        self.net._forward_count = 0          # the same PRNG key on every forward
        for i, state in self.states.items():
            self.net._slots[i].layer.hidden_state = state
        return self.net._forward(0, self.last)

    def targets(self):
        net = self.net
        out = []
        for pid, blob in enumerate(net._learnable):
            layer_i, k = net._param_owner_slot[pid]
            slot = net._slots[layer_i]
            if self._param_gets_diff(pid):
                out.append(("param %s[%d]" % (slot.layer.name, k), "p", pid, blob.data.copy()))
        for name in net.inputs:
            if net._blob_need_backward.get(name) and self._input_read(name):
                out.append(("input %s" % name, "i", name, net.blobs[name].data.copy()))
        return out

    def _param_gets_diff(self, pid):
        return any(pd and p == pid and s.need_backward for s in self.net._slots
                   for p, pd in zip(s.param_ids, s.layer.param_propagate_down))

    def _input_read(self, name):
        return any(name == b and s.bottom_need_backward[j]
                   for s in self.net._slots for j, b in enumerate(s.bottoms))

    def analytic(self):
        net = self.net
        net.clear_param_diffs()
        self.loss()
        net._backward(self.last, 0)
        out = {("p", pid): b.diff.copy() for pid, b in enumerate(net._learnable)}
        out.update({("i", n): net.blobs[n].diff.copy() for n in net.inputs})
        return out

    def objective(self, kind, key):
        blob = self.net._learnable[key] if kind == "p" else self.net.blobs[key]
        saved = blob.data.copy()

        def L(flat):
            blob.data[...] = flat.reshape(saved.shape)
            value = self.loss()
            blob.data[...] = saved
            return value
        return L

    def jax_grads(self):
        net = self.net
        params = [b.device_data() for b in net._learnable]
        inputs = {n: net.blobs[n].device_data() for n in net.inputs}
        rng = jax.random.fold_in(net._base_key, 1)

        def loss_fn(params, inputs):
            env, total = dict(inputs), 0.0
            for s in net._slots:
                layer = s.layer
                if not layer.forward_writes_tops:
                    continue
                bottoms = [env[b] if need else jax.lax.stop_gradient(env[b])
                           for b, need in zip(s.bottoms, s.bottom_need_backward)]
                key = jax.random.fold_in(rng, s.index) if layer.needs_rng else None
                lp = [p if pd else jax.lax.stop_gradient(p) for p, pd in
                      zip(_layer_params(s, dict(enumerate(params))), layer.param_propagate_down)]
                carried = self.states.get(s.index)
                tops = (layer.forward(lp, bottoms, key, state=carried) if carried is not None
                        else layer.forward(lp, bottoms, key))[0]
                if not s.need_backward:
                    tops = [jax.lax.stop_gradient(t) for t in tops]
                for name, value, w in zip(s.tops, tops, layer.loss):
                    env[name] = value
                    if w:
                        total = total + w * jnp.sum(value)
            return total

        gp, gi = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(params, inputs)   # as a step runs
        out = {("p", pid): g for pid, g in enumerate(gp)}
        out.update({("i", n): g for n, g in gi.items()})
        return out
