"""Solver update rules as pure functions, in Caffe's stage order.

``make_update(param, lr_mults, decay_mults)`` returns an optax-style pair:

    init(params) -> history            history[k][i]: k-th history blob of param i
    update(grads, history, params, rate, iter)
        -> (new params, new history, update values, gradient L2 norm)

``update.one(i, g, hist_i, p, rate, t)`` is one param's share of it (after clipping).

``update`` does what SGDSolver::ApplyUpdate does after the learning rate is
known: clip_gradients (global L2 norm) -> Normalize (divide by iter_size) ->
Regularize (L2: += decay * data, L1: += decay * sign(data), decay =
weight_decay * decay_mult) -> ComputeUpdateValue (per solver type, with
local_rate = rate * lr_mult) -> Update (data -= value). Params with lr_mult 0
go through every stage too (their history moves, their data does not), as in
Caffe. Everything is traceable: a Solver jits it alone or fused with the
net's forward and backward.

Each rule's ``compute(g, hist, local_rate, t)`` maps the regularized gradient
to (update value, new history); ``t`` is the iteration (a traced int).
"""
import jax
import jax.numpy as jnp
import numpy as np

from . import engine
from .blob import device_zeros
from .errors import SolverError


def _stored(x):
    """``x`` computed once and stored (jcaffe.engine.materialize), for the rules whose
    update value is an array of its own, computed from the new history (AdaGrad,
    RMSProp, AdaDelta). XLA CPU has no multi-output loop fusion: each of the update's
    outputs (param, history, value) is a loop of its own over the param, and left to
    itself XLA stored the shared middle of the value (AdaGrad's g / (sqrt(h) + delta))
    as a temporary, then computed the value and the param from it in two more loops.
    With the new history and the value stored, the param's loop reads the value: one
    loop and one temporary fewer. Alone on 37.7 M floats (CaffeNet's fc6), ms before /
    after: AdaGrad 123 / 53, RMSProp 120 / 54 (temporaries 151 MB -> 0), AdaDelta
    172 / 154 (302 -> 151 MB). Nearer Caffe's numbers too: the param is now exactly the
    old one minus the stored value (data -= diff), where XLA's own loop recomputed the
    value inside a multiply-add rounded once (2% of AdaGrad's params an ulp off).
    CaffeNet's step (ab_step.py --interleave): AdaGrad 0.945x the time, RMSProp 0.949x,
    AdaDelta 0.883x. Nesterov's value needs the old momentum, which its in-place write
    loses: XLA copies it either way (124 / 112 ms alone, its step 1.001x), so it is left
    to XLA."""
    return engine.materialize(x)


class SGD:
    """h = momentum * h + local_rate * g;  value = h."""
    type_name = "SGD"
    num_history = 1
    value_is_history = True     # the value is the new momentum itself (one array)
    value_is_derived = False    # (see Adam)

    def __init__(self, param):
        self.momentum = _f32(param.momentum)

    def compute(self, g, hist, local_rate, t):
        h = self.momentum * hist[0] + local_rate * g
        return h, (h,)

    def value_from_history(self, hist, local_rate, t):
        """The update value given the new history alone (the rows-at-a-time update of
        jcaffe.update_rules._update_by_rows; rules that also need the diff have none)."""
        return hist[0]


class Nesterov(SGD):
    """h' = momentum * h + local_rate * g;  value = (1 + momentum) * h' - momentum * h."""
    type_name = "Nesterov"
    value_from_history = None   # the value needs the old history too
    value_is_history = False

    def compute(self, g, hist, local_rate, t):
        m = self.momentum
        h = m * hist[0] + local_rate * g
        return (1.0 + m) * h - m * hist[0], (h,)


class AdaGrad:
    """h += g^2;  value = local_rate * g / (sqrt(h) + delta)."""
    type_name = "AdaGrad"
    num_history = 1

    def __init__(self, param):
        if param.momentum != 0:
            raise SolverError("Momentum cannot be used with AdaGrad (momentum: %g)" % param.momentum)
        self.delta = _f32(param.delta)

    def compute(self, g, hist, local_rate, t):
        h = _stored(hist[0] + g * g)
        return _stored(local_rate * (g / (jnp.sqrt(h) + self.delta))), (h,)


class RMSProp:
    """h = rms_decay * h + (1 - rms_decay) * g^2;  value = local_rate * g / (sqrt(h) + delta)."""
    type_name = "RMSProp"
    num_history = 1

    def __init__(self, param):
        if param.momentum != 0:
            raise SolverError("Momentum cannot be used with RMSProp (momentum: %g)" % param.momentum)
        if not 0 <= param.rms_decay < 1:
            raise SolverError("rms_decay should lie between 0 and 1, got %g" % param.rms_decay)
        self.delta = _f32(param.delta)
        self.rms_decay = _f32(param.rms_decay)

    def compute(self, g, hist, local_rate, t):
        d = self.rms_decay
        h = _stored((1.0 - d) * (g * g) + d * hist[0])
        return _stored(local_rate * (g / (jnp.sqrt(h) + self.delta))), (h,)


class AdaDelta:
    """Gradient history h1 and update history h2, both decayed by ``momentum``:
    h1 = m h1 + (1-m) g^2;  u = g * sqrt((h2 + delta) / (h1 + delta));
    h2 = m h2 + (1-m) u^2;  value = local_rate * u."""
    type_name = "AdaDelta"
    num_history = 2

    def __init__(self, param):
        self.momentum = _f32(param.momentum)
        self.delta = _f32(param.delta)

    def compute(self, g, hist, local_rate, t):
        m, delta = self.momentum, self.delta
        h1 = _stored((1.0 - m) * (g * g) + m * hist[0])
        u = _stored(g * jnp.sqrt((hist[1] + delta) / (h1 + delta)))
        h2 = (1.0 - m) * (u * u) + m * hist[1]
        return _stored(local_rate * u), (h1, h2)


class Adam:
    """m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    value = local_rate * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) * m / (sqrt(v) + delta)."""
    type_name = "Adam"
    num_history = 2
    # The value follows from the new history (m, v) alone: a solver's compiled update
    # need not write it, and a param diff (Caffe leaves the update value there) is
    # computed from the history when read (jcaffe.solver.UpdateValue).
    value_is_derived = True

    def __init__(self, param):
        self.beta1 = _f32(param.momentum)
        self.beta2 = _f32(param.momentum2)
        self.delta = _f32(param.delta)

    def compute(self, g, hist, local_rate, t):
        b1, b2 = self.beta1, self.beta2
        m = (1.0 - b1) * g + b1 * hist[0]
        v = (1.0 - b2) * (g * g) + b2 * hist[1]
        return self.value_from_history((m, v), local_rate, t), (m, v)

    def value_from_history(self, hist, local_rate, t):
        m, v = hist
        step = (t + 1).astype(m.dtype)
        correction = jnp.sqrt(1.0 - jnp.power(jnp.asarray(self.beta2, m.dtype), step)) / \
            (1.0 - jnp.power(jnp.asarray(self.beta1, m.dtype), step))
        return (local_rate * correction) * (m / (jnp.sqrt(v) + self.delta))


RULES = {cls.type_name: cls for cls in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)}


def rule_for(param, type_name=None):
    """The rule for ``type_name`` (default: ``param.type``), checked against ``param``."""
    name = type_name or param.type
    if name not in RULES:
        raise SolverError("Unknown solver type: '%s' (known types: %s)"
                          % (name, ", ".join(sorted(RULES))))
    return RULES[name](param)


# Rows per block of a RowBlocks update: about this many bytes of diff at a time.
ROW_BLOCK_BYTES = 16 << 20


def _update_by_rows(rule, g, p, hist, decay, reg, local_rate, t):
    """One param's Regularize + ComputeUpdateValue + Update with its diff given a block of
    rows at a time (``g``: a jcaffe.engine.RowBlocks), for a rule whose update value
    follows from its new history alone (``rule.value_from_history``). Each block of the
    diff, once computed, updates its rows of every history array in place, and is gone;
    then value and param come whole from the new history, as the whole-array update
    computes them. Each stage is elementwise: every element gets the same numbers.

    (Writing the param's rows block by block as well would have each block's param write
    and history write read each other's old rows: XLA copied both arrays whole to keep
    them apart, 755 MB of temporaries on CaffeNet.) -> (new param, new history, value);
    SGD's value is its new momentum, the same array."""
    rows = p.shape[0]
    row_bytes = max(1, p.size // max(rows, 1)) * p.dtype.itemsize
    blocks = max(1, -(-rows * row_bytes // ROW_BLOCK_BYTES))
    size = -(-rows // blocks)   # blocks of equal size but the last (not a sliver)
    put = jax.lax.dynamic_update_slice_in_dim
    hist = list(hist)
    for start in range(0, rows, size):
        n = min(size, rows - start)
        gb = g.rows(start, n).astype(p.dtype)
        if decay:
            pb = jax.lax.dynamic_slice_in_dim(p, start, n)
            gb = gb + decay * (pb if reg == "L2" else jnp.sign(pb))
        _, hb = rule.compute(gb, [jax.lax.dynamic_slice_in_dim(h, start, n) for h in hist],
                             local_rate, t)
        hist = [put(h, b, start, 0) for h, b in zip(hist, hb)]
    value = rule.value_from_history(hist, local_rate, t)
    return p - value, tuple(hist), value


def _f32(x):
    """A proto float as the exact float32 value Caffe's Dtype holds."""
    return float(np.float32(x))


def make_update(param, rule, lr_mults, decay_mults, packed=(), names=None):
    """The (init, update) pair for one net's learnable params (see the module doc).

    ``names``: each param's owner layer, naming its update's ops in profiler traces and
    HLO dumps ("conv1.update", as the engine's "conv1.forward" and "conv1.backward").

    ``packed``: the params whose new history a fused step copies into one array after
    their update (jcaffe.packed_history). Their regularized gradient is computed once
    and kept (engine.materialize): XLA would otherwise compute the history again inside
    that copy, from the param's old value, which the in-place update has overwritten by
    then, and so it copied every such param before the step."""
    packed = frozenset(packed)
    clip = _f32(param.clip_gradients)
    iter_size = int(param.iter_size)
    reg = param.regularization_type
    if reg not in ("L1", "L2"):
        raise SolverError("Unknown regularization type: '%s' (known: L1, L2)" % reg)
    decays = [_f32(np.float32(param.weight_decay) * np.float32(d)) for d in decay_mults]
    lr_mults = [_f32(m) for m in lr_mults]
    scopes = (["%s.update" % name for name in names] if names is not None
              else ["param%d.update" % i for i in range(len(lr_mults))])

    def init(params):
        return tuple(tuple(device_zeros(p.shape, p.dtype) for p in params)
                     for _ in range(rule.num_history))

    def update_one(i, g, hist, p, rate, t):
        """Param ``i``'s Normalize + Regularize + ComputeUpdateValue + Update, from its
        (clipped) diff ``g``, its history arrays ``hist`` and its learning rate:
        -> (new param, new history, update value). Every stage is elementwise in the
        param, so a fused step can apply it to each param as soon as its diff is
        complete (jcaffe.engine, "the backward's order")."""
        with jax.named_scope(scopes[i]):
            return _update_one(i, g, hist, p, rate, t)

    def _update_one(i, g, hist, p, rate, t):
        if hasattr(g, "rows") and not getattr(rule, "value_from_history", None):
            g = g.full()
        if hasattr(g, "rows"):      # a RowBlocks diff: computed and applied by rows
            local_rate = rate.astype(p.dtype) * lr_mults[i]
            return _update_by_rows(rule, g, p, hist, decays[i], reg, local_rate, t)
        if iter_size != 1:
            g = g * _f32(1.0 / iter_size)
        if decays[i]:
            g = g + decays[i] * (p if reg == "L2" else jnp.sign(p))
            if i in packed:
                g = engine.materialize(g)
        local_rate = rate.astype(g.dtype) * lr_mults[i]
        value, hist = rule.compute(g, hist, local_rate, t)
        return p - value, tuple(hist), value

    def update(grads, history, params, rate, t, done=None):
        """``rate``: the learning rate, or a list of it, one entry per param (the same
        number; a fused step orders each param's update by its entry). ``done``:
        {i: (new param, new history, value)} of params updated already (by
        ``update.one``, without clip_gradients), taken as they are."""
        grads = list(grads)
        rates = list(rate) if isinstance(rate, (list, tuple)) else [rate] * len(grads)
        dtype = rates[0].dtype if rates else rate.dtype
        norm = jnp.zeros((), dtype)
        done = done or {}
        if done and clip >= 0:
            raise SolverError("clip_gradients needs every diff before any update")
        if clip >= 0 or iter_size != 1:     # these need each whole diff
            grads = [g.full() if hasattr(g, "rows") else g for g in grads]
        if clip >= 0:
            norm = jnp.sqrt(sum(jnp.sum(g * g) for g in grads)).astype(dtype)
            scale = jnp.where(norm > clip, clip / norm, jnp.ones((), dtype))
            grads = [g * scale.astype(g.dtype) for g in grads]
        new_params, values, new_hist = [], [], [[] for _ in range(rule.num_history)]
        for i, (g, p) in enumerate(zip(grads, params)):
            p, hist, value = done[i] if i in done else update_one(
                i, g, [h[i] for h in history], p, rates[i], t)
            for k, h in enumerate(hist):
                new_hist[k].append(h)
            values.append(value)
            new_params.append(p)
        return new_params, tuple(tuple(h) for h in new_hist), values, norm

    update.one = update_one
    update.lr_mults = lr_mults      # (float32 values: a param's local rate is rate * its own)
    return init, update
