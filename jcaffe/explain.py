"""The net explains itself: which layers run backward and why, which blobs get
diffs, and the known traps, each with its fix.

``explain(net)`` (also ``net.explain()``) returns an :class:`Explanation`:
``layers`` (one :class:`LayerReport` per layer, in execution order, auto-inserted
Split layers included), ``blobs`` (one :class:`BlobReport` per blob) and
``warnings`` (:class:`Trap` records: kind, layer, message, fix). ``str()`` of it
is the table ``jcaffe explain`` prints; ``to_dict()`` is the same as plain data.

The reasons are the ones the Net recorded while running Caffe's Net::Init
(``net.reasons`` / ``net.bottom_reasons``); ``rule`` names which step of
Net::Init decided, so a program can test for it:

* ``learnable-params``      the layer has a param with lr_mult != 0
* ``bottom-needs-backward`` a bottom comes from layers that need backward
* ``nothing-learnable-below`` neither of those: no backward
* ``no-loss-above``         its tops reach no loss (backward dropped)
* ``diff-blocked-above``    every reader of its tops has propagate_down false for them
* ``force-backward``        the net's force_backward: true turned it on
"""
import json
from collections import OrderedDict

from .proto import caffe_pb2

RULES = OrderedDict([
    ("learnable-params", "Net::Init: a layer with a param whose lr_mult != 0 needs backward"),
    ("bottom-needs-backward", "Net::Init: a layer whose bottom needs backward needs backward"),
    ("nothing-learnable-below", "Net::Init: no learnable param in the layer or below it"),
    ("no-loss-above", "Net::Init (backward sweep): the layer's tops contribute to no loss"),
    ("diff-blocked-above", "Net::Init (backward sweep): every layer reading its tops skips them "
                           "(propagate_down: false)"),
    ("force-backward", "Net::Init: force_backward: true makes every layer run backward"),
])


def classify_reason(reason):
    """Which Net::Init rule a reason string (``net.reasons[name]``) states."""
    if reason.startswith("force_backward"):
        return "force-backward"
    if reason.startswith("no diff can reach it"):
        return "diff-blocked-above"
    if reason.startswith("its tops reach no loss"):
        return "no-loss-above"
    if reason.startswith("no learnable params"):
        return "nothing-learnable-below"
    if "is learnable" in reason:
        return "learnable-params"
    if "comes from layers that need backward" in reason:
        return "bottom-needs-backward"
    return "unknown"


class _Record:
    _fields = ()

    def to_dict(self):
        out = OrderedDict()
        for f in self._fields:
            v = getattr(self, f)
            if isinstance(v, list):
                v = [x.to_dict() if isinstance(x, _Record) else x for x in v]
            out[f] = v
        return out

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__,
                           ", ".join("%s=%r" % (f, getattr(self, f)) for f in self._fields))


class ParamReport(_Record):
    _fields = ("index", "shape", "lr_mult", "decay_mult", "owner", "updates")

    def __init__(self, index, shape, lr_mult, decay_mult, owner, updates):
        self.index, self.shape, self.lr_mult, self.decay_mult = index, shape, lr_mult, decay_mult
        self.owner = owner          # "layer/index" of the owner when shared, else None
        self.updates = updates      # lr_mult != 0: the solver changes it


class BottomReport(_Record):
    _fields = ("blob", "receives_diff", "reason")

    def __init__(self, blob, receives_diff, reason):
        self.blob, self.receives_diff, self.reason = blob, receives_diff, reason


class LayerReport(_Record):
    _fields = ("index", "name", "type", "bottoms", "tops", "in_place", "auto_split", "python_class",
               "params", "needs_backward", "rule", "reason", "bottom_diffs", "loss_weights")

    def __init__(self, **kw):
        for f in self._fields:
            setattr(self, f, kw[f])


class BlobReport(_Record):
    _fields = ("name", "shape", "producer", "consumers", "receives_diff", "loss_weight", "split_of")

    def __init__(self, **kw):
        for f in self._fields:
            setattr(self, f, kw[f])


class Trap(_Record):
    """One warning: ``kind`` (a stable id), ``layer``, ``message`` (what happens), ``fix``."""
    _fields = ("kind", "layer", "message", "fix")

    def __init__(self, kind, layer, message, fix):
        self.kind, self.layer, self.message, self.fix = kind, layer, message, fix

    def __str__(self):
        return "[%s] %s\n    fix: %s" % (self.kind, self.message, self.fix)


class Explanation(_Record):
    _fields = ("net", "phase", "force_backward", "backward_range", "layers", "blobs", "warnings",
               "training_step")

    def __init__(self, **kw):
        for f in self._fields:
            setattr(self, f, kw[f])

    def layer(self, name):
        for rep in self.layers:
            if rep.name == name:
                return rep
        raise KeyError(name)

    def to_dict(self):
        out = super().to_dict()
        out["blobs"] = [b.to_dict() for b in self.blobs]
        return out

    def to_json(self, **kw):
        return json.dumps(self.to_dict(), **kw)

    def __str__(self):
        return format_explanation(self)


# ---------------------------------------------------------------------------
# building the report
# ---------------------------------------------------------------------------
def _is_auto_split(slot):
    lp = slot.layer.layer_param
    return (lp.type == "Split" and lp.name.endswith("_split") and len(lp.bottom) == 1
            and list(lp.top) == ["%s_%d" % (lp.name, k) for k in range(len(lp.top))])


def _shape(blob):
    return list(int(d) for d in blob.shape)


def explain(net, start=None, end=None):
    """Explain ``net`` (a :class:`jcaffe.Net`). ``start`` / ``end``: a planned
    ``net.backward(start=..., end=...)`` range (layer names) to check for traps."""
    slots = net._slots
    consumers = OrderedDict((name, []) for name in net.blobs)
    for s in slots:
        for j, b in enumerate(s.bottoms):
            consumers.setdefault(b, []).append((s.layer.name, j))
    owner_names = [(slots[li].layer.name, k) for li, k in net._param_owner_slot]

    layers = []
    for s in slots:
        layer = s.layer
        params = []
        for k, (blob, pid) in enumerate(zip(layer.blobs, s.param_ids)):
            owner = owner_names[pid]
            params.append(ParamReport(
                k, _shape(blob), float(net.params_lr[pid]), float(net.params_weight_decay[pid]),
                None if owner == (layer.name, k) else "%s/%d" % owner,
                float(net.params_lr[pid]) != 0.0))
        reason = net.reasons[layer.name]
        bottoms = [BottomReport(b, bool(s.bottom_need_backward[j]), net.bottom_reasons[(layer.name, j)])
                   for j, b in enumerate(s.bottoms)]
        layers.append(LayerReport(
            index=s.index, name=layer.name, type=layer.type, bottoms=list(s.bottoms),
            tops=list(s.tops), in_place=[t for t in s.tops if t in s.bottoms],
            auto_split=_is_auto_split(s),
            python_class=getattr(layer, "python_class", None),
            params=params, needs_backward=bool(s.need_backward), rule=classify_reason(reason),
            reason=reason, bottom_diffs=bottoms, loss_weights=[float(w) for w in layer.loss]))

    blobs = []
    producers = {}
    for s in slots:
        for t in s.tops:
            producers.setdefault(t, s.layer.name)
    split_of = {}
    for rep in layers:
        if rep.auto_split:
            for t in rep.tops:
                split_of[t] = rep.bottoms[0]
    for name, blob in net.blobs.items():
        readers = consumers.get(name, [])
        receives = any(r.bottom_diffs[j].receives_diff for r in layers for j, b in enumerate(r.bottoms)
                       if b == name)
        blobs.append(BlobReport(name=name, shape=_shape(blob), producer=producers.get(name),
                                consumers=[n for n, _ in readers], receives_diff=receives,
                                loss_weight=float(net.blob_loss_weights.get(name, 0.0)),
                                split_of=split_of.get(name)))

    rng = None
    if start is not None or end is not None:
        rng = [start if start is not None else slots[-1].layer.name,
               end if end is not None else slots[0].layer.name]
    ex = Explanation(net=net.name, phase=caffe_pb2.Phase.Name(net.phase),
                     force_backward=bool(net.force_backward), backward_range=rng,
                     layers=layers, blobs=blobs, warnings=[],
                     training_step=_training_step(net) if net.phase == caffe_pb2.TRAIN else None)
    ex.warnings = _traps(net, ex, consumers)
    return ex


def _training_step(net):
    """How a solver's iteration over this TRAIN net runs, in words (before the solver's
    own settings: fuse_step, callbacks)."""
    from .solver import fused_step_plan
    plan, reason = fused_step_plan(net)
    if plan is None:
        return ("layer by layer (compiled segments and host layers called in turn): "
                + reason)
    host, _, tail = plan
    before = ("; host data layers run first: %s" % ", ".join(
        "'%s'" % s.layer.name for s in host)) if host else ""
    after = ("; host layers at the end run after it, on its blobs: %s" % ", ".join(
        "'%s'" % s.layer.name for s in tail)) if tail else ""
    return "one compiled call per iteration (forward, backward and update)" + before + after


def _ancestors(ex, blob_name, before):
    """Layers (index < ``before``) whose output flows into ``blob_name``, nearest first."""
    by_top = {}
    for rep in ex.layers[:before]:
        for t in rep.tops:
            by_top.setdefault(t, []).append(rep)
    seen, order, todo = set(), [], [blob_name]
    while todo:
        b = todo.pop(0)
        for rep in by_top.get(b, []):
            if rep.name in seen:
                continue
            seen.add(rep.name)
            order.append(rep)
            todo.extend(x for x in rep.bottoms if x not in rep.tops or x != b)
    return order


def _traps(net, ex, consumers):
    out = []
    fb = ex.force_backward
    has_loss = any(any(r.loss_weights) for r in ex.layers)   # a deploy net trains nothing
    for rep in ex.layers:
        # -- a Python (or learnable) layer whose backward never runs ---------------
        if not rep.needs_backward:
            if rep.python_class is not None and rep.bottoms:
                fix = {
                    "nothing-learnable-below":
                        "set 'force_backward: true' in the net, or make a layer below it "
                        "learnable (lr_mult != 0) so its bottoms need a diff",
                    "no-loss-above":
                        "connect its tops to a loss (or give a top a loss_weight); "
                        "'force_backward: true' also calls it, but with zero top diffs",
                    "diff-blocked-above":
                        "set propagate_down: true on the layers reading its tops, "
                        "or 'force_backward: true'",
                }.get(rep.rule, "set 'force_backward: true' in the net")
                out.append(Trap(
                    "python-backward-never-runs", rep.name,
                    "Python layer '%s' (%s): backward() will never be called: %s"
                    % (rep.name, rep.python_class, rep.reason), fix))
            elif any(p.updates for p in rep.params) and has_loss and \
                    rep.rule in ("diff-blocked-above", "no-loss-above"):
                out.append(Trap(
                    "learnable-layer-never-backward", rep.name,
                    "%s layer '%s' has learnable params (lr_mult != 0) but its backward never runs: "
                    "%s; its params get no gradient (a solver weight_decay still shrinks them)"
                    % (rep.type, rep.name, rep.reason),
                    "to train it, let a diff reach it (propagate_down: true above it / a loss above "
                    "it); to freeze it, set lr_mult: 0 and decay_mult: 0 on its params"))
        elif rep.python_class is not None:
            layer = net._slots[rep.index].layer
            if not callable(getattr(layer, "backward", None)):
                out.append(Trap(
                    "python-backward-missing", rep.name,
                    "Python layer '%s' (%s) needs backward (%s) but defines no backward(): "
                    "net.backward() will fail" % (rep.name, rep.python_class, rep.reason),
                    "define backward(self, top, propagate_down, bottom), or stop the diff above "
                    "it with propagate_down: false and give the layers below lr_mult: 0"))

        # -- propagate_down: false where params still update --------------------------
        lp = net._slots[rep.index].layer.layer_param
        blocked = [j for j, pd in enumerate(lp.propagate_down) if not pd]
        if blocked:
            own = [p for p in rep.params if p.updates]
            if own:
                out.append(Trap(
                    "propagate-down-false-params-update", rep.name,
                    "layer '%s' has propagate_down: false on %s, but its own params still update "
                    "(%s): propagate_down only stops the diff to the bottom"
                    % (rep.name, ", ".join("'%s'" % rep.bottoms[j] for j in blocked),
                       ", ".join("param %d lr_mult %g decay_mult %g" % (p.index, p.lr_mult, p.decay_mult)
                                 for p in own)),
                    "to freeze '%s' set 'param { lr_mult: 0 decay_mult: 0 }' for each of its params"
                    % rep.name))
            below = []
            for j in blocked:
                for anc in _ancestors(ex, rep.bottoms[j], rep.index):
                    if any(p.updates for p in anc.params) and not anc.needs_backward \
                            and anc.name not in [b.name for b in below]:
                        below.append(anc)
            for anc in below:
                decaying = [p for p in anc.params if p.updates and p.decay_mult]
                if decaying:
                    out.append(Trap(
                        "blocked-layer-still-decays", anc.name,
                        "layer '%s' gets no gradient (propagate_down: false in '%s'), but its params "
                        "have lr_mult != 0 and decay_mult > 0, so a solver weight_decay > 0 still "
                        "shrinks them every iteration (and momentum keeps moving them)" % (anc.name, rep.name),
                        "to freeze '%s' set 'param { lr_mult: 0 decay_mult: 0 }' for each of its params"
                        % anc.name))

        # -- lr_mult: 0 with decay_mult > 0 -----------------------------------------
        for p in rep.params:
            if p.owner is not None:
                continue
            pid = net._slots[rep.index].param_ids[p.index]
            if p.lr_mult == 0 and p.decay_mult > 0 and net._has_decay[pid]:
                out.append(Trap(
                    "lr-mult-zero-with-decay", rep.name,
                    "layer '%s' param %d has lr_mult: 0 with decay_mult: %g: the param never changes "
                    "(the step is scaled by lr_mult), so the decay_mult does nothing"
                    % (rep.name, p.index, p.decay_mult),
                    "to freeze it write 'lr_mult: 0 decay_mult: 0'; to train it give lr_mult > 0"))

        # -- a loss layer whose label bottom force_backward forces ----------------------
        if fb and any(rep.loss_weights):
            for j, bd in enumerate(rep.bottom_diffs):
                if j >= 1 and bd.receives_diff and bd.reason == "force_backward: true":
                    out.append(Trap(
                        "loss-label-forced", rep.name,
                        "force_backward: true sends a diff to bottom %d ('%s') of loss layer '%s'; "
                        "if it is a label, backward computes (and the layers below receive) a "
                        "gradient with respect to the labels" % (j, bd.blob, rep.name),
                        "for a Python loss layer define allow_force_backward(self, i) returning "
                        "False for the label bottom (Caffe's LossLayer does that); or drop "
                        "force_backward: true and add lr_mult where the diff is needed"))

    if ex.backward_range is not None:
        out.extend(_range_traps(net, ex, *ex.backward_range))
    return out


def _range_traps(net, ex, start, end):
    names = [r.name for r in ex.layers]
    for which, n in (("start", start), ("end", end)):
        if n not in names:
            raise KeyError("backward %s: net '%s' has no layer '%s'" % (which, net.name, n))
    hi, lo = names.index(start), names.index(end)
    out = []
    for rep in ex.layers:
        if not rep.auto_split:
            continue
        blob = rep.bottoms[0]
        readers = [(c, rep.tops[k]) for k in range(len(rep.tops))
                   for c in ex.layers if rep.tops[k] in c.bottoms]
        in_range = lo <= rep.index <= hi
        readers_in = [c for c, _ in readers if lo <= c.index <= hi]
        readers_out = [(c, t) for c, t in readers if not lo <= c.index <= hi and c.index > hi]
        if not in_range and rep.index < lo and readers_in:
            out.append(Trap(
                "backward-range-misses-split", rep.name,
                "backward(start='%s', end='%s') stops above '%s', the auto-inserted Split that "
                "sums the diffs of blob '%s''s copies (%s): net.blobs['%s'].diff is not updated"
                % (start, end, rep.name, blob, ", ".join(rep.tops), blob),
                "read the copies' diffs (%s) and add them, or extend the range down to end='%s'"
                % (", ".join("net.blobs['%s'].diff" % t for t in rep.tops), rep.name)))
        if in_range and readers_out:
            out.append(Trap(
                "backward-range-misses-split", rep.name,
                "backward(start='%s', end='%s') runs the Split '%s' of blob '%s' but not %s, which "
                "read%s its copies: the Split sums their stale (or zero) diffs into '%s'"
                % (start, end, rep.name, blob, ", ".join("'%s'" % c.name for c, _ in readers_out),
                   "s" if len(readers_out) == 1 else "", blob),
                "start the range at or above '%s'" % readers_out[-1][0].name))
    return out


# ---------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------
def _fmt_mult(v):
    return ("%g" % v)


def format_explanation(ex):
    lines = ["Net '%s' (phase %s%s): %d layers, %d blobs"
             % (ex.net, ex.phase, ", force_backward: true" if ex.force_backward else "",
                len(ex.layers), len(ex.blobs))]
    if ex.training_step:
        lines.append("training step: %s" % ex.training_step)
    if ex.backward_range:
        lines.append("checked backward range: start='%s' end='%s'" % tuple(ex.backward_range))
    lines.append("")
    split_of = {b.name: b.split_of for b in ex.blobs if b.split_of}
    for rep in ex.layers:
        kind = rep.type + (" (auto-inserted split)" if rep.auto_split else "")
        if rep.python_class:
            kind += " %s" % rep.python_class
        lines.append("#%-3d %s  [%s]" % (rep.index, rep.name, kind))

        def blob_str(b, in_place=False):
            s = b
            if b in split_of:
                s += " (copy of '%s')" % split_of[b]
            if in_place:
                s += " (in-place)"
            return s
        bottoms = ", ".join(blob_str(b) for b in rep.bottoms) or "-"
        tops = ", ".join(blob_str(t, t in rep.in_place) for t in rep.tops) or "-"
        lines.append("     %s -> %s" % (bottoms, tops))
        for p in rep.params:
            lines.append("     param %d %s: lr_mult %s decay_mult %s%s%s"
                         % (p.index, "x".join(str(d) for d in p.shape) or "scalar", _fmt_mult(p.lr_mult),
                            _fmt_mult(p.decay_mult), "" if p.updates else " (frozen)",
                            " shared with %s" % p.owner if p.owner else ""))
        lines.append("     backward: %s [%s] %s" % ("yes" if rep.needs_backward else "no", rep.rule,
                                                   rep.reason))
        for j, bd in enumerate(rep.bottom_diffs):
            lines.append("     diff to bottom %d '%s': %s (%s)"
                         % (j, bd.blob, "yes" if bd.receives_diff else "no", bd.reason))
        for t, w in zip(rep.tops, rep.loss_weights):
            if w:
                lines.append("     loss weight %g on '%s'" % (w, t))
    lines.append("")
    if ex.warnings:
        lines.append("%d warning%s:" % (len(ex.warnings), "" if len(ex.warnings) == 1 else "s"))
        for w in ex.warnings:
            lines.append(str(w))
    else:
        lines.append("no warnings")
    return "\n".join(lines)
