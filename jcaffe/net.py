"""Net: Caffe's network, with pycaffe's Python API, computed by jitted JAX segments.

``Net.__init__`` follows Caffe's Net::Init as a few named steps: load and
upgrade the NetParameter, filter by NetState, insert splits, connect and set
up each layer, decide which layers need backward (and say why), apply
force_backward, collect outputs. Forward and backward over a layer range run
each contiguous run of JaxLayers as one compiled call; host layers (user
Python layers) run between them on real Blob objects.
"""
import logging
import os
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np

from . import common, engine, hdf5, netgraph, protoio
from .blob import Blob, device_zeros, shape_epoch, shape_string
from .engine import LayerSlot, Segment
from .errors import BackwardError, JcaffeError, NetGraphError, PythonLayerError, ShapeMismatchError
from .layer import create_layer, note_python_layer
from .proto import caffe_pb2

log = logging.getLogger("jcaffe")

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def _mean_abs(blob, diff):
    """Caffe's asum / count of a blob's data or diff (debug_info's numbers)."""
    value = blob.device_diff() if diff else blob.device_data()
    return float(_asum(value)) / blob.count if blob.count else float("nan")


@jax.jit
def _asum(x):
    return jnp.sum(jnp.abs(x))


@jax.jit
def _norms(data, diff):
    """(asum data, asum diff, sumsq data, sumsq diff) of one param."""
    return jnp.stack([jnp.sum(jnp.abs(data)), jnp.sum(jnp.abs(diff)),
                      jnp.sum(data * data), jnp.sum(diff * diff)])


def _load_net_param(source):
    if isinstance(source, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(source)
        from .upgrade import upgrade_net_as_needed
        upgrade_net_as_needed(param, "<NetParameter>")
        return param
    source = os.fspath(source)
    return protoio.read_net_param(source)


class Net:
    """A Caffe network.

    ``Net(prototxt, phase)``, ``Net(prototxt, phase, level=0, stages=None,
    weights=None)`` or the old ``Net(prototxt, weights, phase)``. ``prototxt`` may
    also be a NetParameter. ``dtype`` (keyword) chooses the blob precision.
    """

    def __init__(self, network, *args, phase=None, level=0, stages=None, weights=None,
                 dtype=np.float32):
        if args:
            if isinstance(args[0], (str, os.PathLike)):   # Net(file, weights, phase)
                weights = args[0]
                if len(args) > 1:
                    phase = args[1]
            else:
                phase = args[0]
                if len(args) > 1:
                    raise TypeError("Net(prototxt, phase, level=..., stages=..., weights=...): "
                                    "pass level, stages and weights by keyword")
        if phase is None:
            raise TypeError("Net(): phase is required (jcaffe.TRAIN or jcaffe.TEST)")
        self.dtype = np.dtype(dtype)
        param = _load_net_param(network)
        param.state.phase = phase
        if stages:
            param.state.stage.extend(stages)
        param.state.level = level
        self._init(param)
        if weights is not None:
            self.copy_from(weights)

    # ======================================================================
    # Net::Init
    # ======================================================================
    def _init(self, in_param):
        self.phase = in_param.state.phase
        filtered = netgraph.filter_net(in_param)
        log.info("Initializing net from parameters: \n%s", filtered)
        param = netgraph.insert_splits(filtered)
        self.name = param.name
        self.force_backward = param.force_backward
        # Caffe's debug_info: each layer's forward and backward log the mean absolute
        # value of its tops, bottom diffs and params (the net then runs layer by layer,
        # as with hooks). A solver sets it on its display iterations only.
        self.debug_info = param.debug_info
        self._display_name_of = {}      # (layer index, blob index): param display name
        self._param = param
        self.blobs = OrderedDict()              # name -> Blob, in creation order
        self._blob_producer = {}
        self._blob_need_backward = {}
        self._slots = []
        self._learnable = []                    # unique param Blobs (owners)
        self.params_lr, self.params_weight_decay = [], []
        self._has_lr, self._has_decay = [], []
        self._param_names_index = {}
        self._param_owner_slot = []             # learnable id -> (layer index, param index)
        self.param_display_names = []
        self.inputs = []
        self._saved = {}
        self._segments = {}
        self._kernel_cache = {}   # pid: (param array, engine.KernelLayout): _kernel_layouts
        self._reshaped = {}     # (first, last) layer of a compiled run: shape_epoch() after
        self._hooks = {"before_forward": [], "after_forward": [],
                       "before_backward": [], "after_backward": []}
        self._forward_count = 0
        self._base_key = common.new_key()
        self.reasons = {}                       # layer name -> why it needs / skips backward
        self.bottom_reasons = {}                # (layer name, bottom index) -> why
        available = []
        memory = 0
        for i, lp in enumerate(param.layer):
            if not lp.HasField("phase"):
                lp.phase = self.phase
            if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
                raise NetGraphError("layer '%s': propagate_down must be given either 0 or bottom_size "
                                    "(%d) times, got %d" % (lp.name, len(lp.bottom), len(lp.propagate_down)))
            layer = create_layer(lp, self.dtype)
            log.info("Creating Layer %s", lp.name)
            slot, memory = self._connect_and_setup(i, lp, layer, available, memory)
            self._slots.append(slot)
        self._mark_under_loss()
        if self.force_backward:
            self._apply_force_backward()
        self.outputs = sorted(available)
        for name in self.outputs:
            log.info("This network produces output %s", name)
        self._set_loss_diffs()
        log.info("Network initialization done.")

    def _multiple_sources(self, lp, j, name):
        """Caffe's error for a top that an earlier layer already wrote, and why, where the
        layer was written in place: its bottom read by an earlier layer too, Caffe's
        InsertSplits gave it a Split's copy, so it is no longer in place."""
        text = ("Top blob '%s' produced by multiple sources (layer '%s' and layer '%s')"
                % (name, self._blob_producer[name], lp.name))
        split = next((s for s in self._slots if j < len(lp.bottom) and s.layer.type == "Split"
                      and s.bottoms == [name] and lp.bottom[j] in s.tops), None)
        if split is None:
            return text
        readers = ["'%s'" % s.layer.name for s in self._slots if s is not split
                   and any(b in split.tops for b in s.bottoms)] or ["another layer"]
        who = readers[0] if len(readers) == 1 else ", ".join(readers[:-1]) + " and " + readers[-1]
        return text + (
            ": layer '%s' is written in place on '%s', but %s read%s '%s' before it, so (as "
            "in Caffe) a Split was inserted after '%s', '%s' reads its copy '%s' and its top "
            "would be a second '%s'. Give '%s' a top of its own, or put it before %s."
            % (lp.name, name, who, "s" if len(readers) == 1 else "", name,
               self._blob_producer[name], lp.name, lp.bottom[j], name, lp.name,
               "those readers" if len(readers) > 1 else "that one"))

    def _connect_and_setup(self, i, lp, layer, available, memory):
        bottoms, tops = [], []
        need_backward, why = False, []
        for j, name in enumerate(lp.bottom):
            if name not in self.blobs or name not in available:
                raise NetGraphError("Unknown bottom blob '%s' (layer '%s', bottom index %d)%s"
                                    % (name, lp.name, j, "" if name not in self.blobs else
                                       ": it is already consumed by an earlier layer"))
            log.info("%s <- %s", lp.name, name)
            available.remove(name)
            bottoms.append(name)
            if self._blob_need_backward[name]:
                need_backward = True
                why.append("bottom '%s' comes from layers that need backward" % name)
        for j, name in enumerate(lp.top):
            if j < len(lp.bottom) and name == lp.bottom[j]:
                log.info("%s -> %s (in-place)", lp.name, name)
            elif name in self.blobs:
                raise NetGraphError(self._multiple_sources(lp, j, name))
            else:
                log.info("%s -> %s", lp.name, name)
                self.blobs[name] = Blob((), self.dtype)
                self._blob_need_backward[name] = False
                self._blob_producer[name] = lp.name
            available.append(name)
            tops.append(name)
            if lp.type == "Input":
                self.inputs.append(name)
        if layer.auto_top_blobs:
            needed = max(layer.min_top_blobs, layer.exact_num_top_blobs)
            while len(tops) < needed:   # anonymous tops, usable by no other layer
                name = "(automatic)%s_%d" % (lp.name, len(tops))
                self.blobs[name] = Blob((), self.dtype)
                self._blob_need_backward[name] = False
                tops.append(name)

        slot = LayerSlot(i, layer, bottoms, tops, [])
        top_shapes = self._setup_layer(slot)
        log.info("Setting up %s", lp.name)
        for name, shape, w in zip(tops, top_shapes, layer.loss):
            self.blobs[name].reshape(shape)
            log.info("Top shape: %s", shape_string(shape))
            if w:
                log.info("    with loss weight %g", w)
            memory += self.blobs[name].count
        log.info("Memory required for data: %d", memory * self.dtype.itemsize)

        if len(lp.param) > len(layer.blobs):
            raise NetGraphError("Too many params specified for layer %s (%d param specs, %d param "
                                "blobs)" % (lp.name, len(lp.param), len(layer.blobs)))
        layer.param_propagate_down = []
        for k in range(len(layer.blobs)):
            spec = lp.param[k] if k < len(lp.param) else caffe_pb2.ParamSpec()
            learnable = spec.lr_mult != 0
            layer.param_propagate_down.append(learnable)
            if learnable:
                need_backward = True
                why.append("param %d is learnable (lr_mult %g)" % (k, spec.lr_mult))
        for k in range(len(layer.blobs)):
            slot.param_ids.append(self._append_param(slot, k))

        for j, name in enumerate(bottoms):
            need = self._blob_need_backward[name]
            reason = ("'%s' comes from layers that need backward" % name if need else
                      "no learnable layer below '%s'" % name)
            if lp.propagate_down:
                need = bool(lp.propagate_down[j])
                reason = "propagate_down: %s" % ("true" if need else "false")
            slot.bottom_need_backward[j] = need
            self.bottom_reasons[(lp.name, j)] = reason
        slot.need_backward = need_backward
        self.reasons[lp.name] = ("; ".join(why) if need_backward else
                                 "no learnable params (lr_mult != 0) in it or below it")
        if need_backward:
            for name in tops:
                self._blob_need_backward[name] = True
        return slot, memory

    def _setup_layer(self, slot):
        layer = slot.layer
        if layer.is_host:
            bottom = [self.blobs[b] for b in slot.bottoms]
            top = [self.blobs[t] for t in slot.tops]
            layer.check_blob_counts(len(bottom), len(top))
            self._call_python(layer, "setup", bottom, top)
            self._call_python(layer, "reshape", bottom, top)
            layer.set_loss_weights(len(top))
            for b in layer.blobs:
                if b.dtype != self.dtype:
                    raise NetGraphError("Python layer '%s': param blob dtype %s differs from the net's %s"
                                        % (layer.name, b.dtype, self.dtype))
            return [t.shape for t in top]
        shapes = [self.blobs[b].shape for b in slot.bottoms]
        if getattr(layer, "python_class", None) is not None:     # a Python layer in JAX
            return self._call_python(layer, "layer_setup", shapes, len(slot.tops),
                                     common.filler_rng())
        return layer.layer_setup(shapes, len(slot.tops), common.filler_rng())

    def _append_param(self, slot, k):
        """Caffe's AppendParam: owners become learnable params; named params share."""
        lp, layer = slot.layer.layer_param, slot.layer
        spec = lp.param[k] if k < len(lp.param) else caffe_pb2.ParamSpec()
        name = spec.name
        self._display_name_of[(slot.index, k)] = name or str(k)
        self.param_display_names.append(name or str(k))
        if not name or name not in self._param_names_index:
            pid = len(self._learnable)
            if name:
                self._param_names_index[name] = pid
            self._learnable.append(layer.blobs[k])
            self._param_owner_slot.append((slot.index, k))
            self._has_lr.append(spec.HasField("lr_mult"))
            self._has_decay.append(spec.HasField("decay_mult"))
            self.params_lr.append(spec.lr_mult)
            self.params_weight_decay.append(spec.decay_mult)
            return pid
        pid = self._param_names_index[name]
        owner_layer, owner_k = self._param_owner_slot[pid]
        owner_name = self._slots[owner_layer].layer.name if owner_layer < len(self._slots) else lp.name
        log.info("Sharing parameters '%s' owned by layer '%s', param index %d", name, owner_name, owner_k)
        mine, owner = layer.blobs[k], self._learnable[pid]
        permissive = spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE
        if permissive and mine.count != owner.count:
            raise ShapeMismatchError(
                "Cannot share param '%s' owned by layer '%s' with layer '%s'; count mismatch.  Owner "
                "layer param shape is %s; sharing layer shape is %s"
                % (name, owner_name, lp.name, owner.shape_string(), mine.shape_string()))
        if not permissive and mine.shape != owner.shape:
            raise ShapeMismatchError(
                "Cannot share param '%s' owned by layer '%s' with layer '%s'; shape mismatch.  Owner "
                "layer param shape is %s; sharing layer expects shape %s"
                % (name, owner_name, lp.name, owner.shape_string(), mine.shape_string()))
        mine.share_data(owner)
        mine.share_diff(owner)
        for has, values, field, what in ((self._has_lr, self.params_lr, "lr_mult", "lr_mult"),
                                         (self._has_decay, self.params_weight_decay, "decay_mult",
                                          "decay_mult")):
            if spec.HasField(field):
                if has[pid] and values[pid] != getattr(spec, field):
                    raise ShapeMismatchError("Shared param '%s' has mismatched %s." % (name, what))
                has[pid] = True
                values[pid] = getattr(spec, field)
        return pid

    def _mark_under_loss(self):
        """Caffe's backward pass over the layers: drop backward where no loss is reached
        or where every consumer of every top declines the diff."""
        under_loss, skip_backprop = set(), set()
        for slot in reversed(self._slots):
            layer, name = slot.layer, slot.layer.name
            contributes = any(w or t in under_loss for t, w in zip(slot.tops, layer.loss))
            all_skipped = all(t in skip_backprop for t in slot.tops)
            if not contributes:     # checked first so the reason names the root cause
                if slot.need_backward:
                    self.reasons[name] = "its tops reach no loss (no loss_weight on them or above them)"
                slot.need_backward = False
            elif slot.need_backward and all_skipped:
                slot.need_backward = False
                slot.bottom_need_backward = [False] * len(slot.bottoms)
                self.reasons[name] = ("no diff can reach it: every layer reading its tops has "
                                      "propagate_down false (or needs no backward) for them")
            if slot.need_backward:
                log.info("%s needs backward computation.", name)
            else:
                log.info("%s does not need backward computation.", name)
            for j, b in enumerate(slot.bottoms):
                if contributes:
                    under_loss.add(b)
                elif slot.bottom_need_backward[j]:
                    slot.bottom_need_backward[j] = False
                    self.bottom_reasons[(name, j)] = "layer '%s' reaches no loss" % name
                if not slot.bottom_need_backward[j]:
                    skip_backprop.add(b)

    def _apply_force_backward(self):
        """force_backward: every layer runs backward; bottoms get diffs where the layer allows."""
        for slot in self._slots:
            layer, name = slot.layer, slot.layer.name
            if not slot.need_backward:
                log.info("%s needs backward computation after all: force_backward is true.", name)
                self.reasons[name] = "force_backward: true (otherwise: %s)" % self.reasons[name]
            slot.need_backward = True
            for j, b in enumerate(slot.bottoms):
                if not slot.bottom_need_backward[j] and layer.allow_force_backward(j):
                    slot.bottom_need_backward[j] = True
                    self.bottom_reasons[(name, j)] = "force_backward: true"
                if slot.bottom_need_backward[j]:
                    self._blob_need_backward[b] = True
            layer.param_propagate_down = [True] * len(layer.blobs)

    def _set_loss_diffs(self):
        """Caffe's SetLossWeights: a loss top's diff holds its loss weight."""
        self.blob_loss_weights = OrderedDict((name, 0.0) for name in self.blobs)
        for slot in self._slots:
            for t, w in zip(slot.tops, slot.layer.loss):
                self.blob_loss_weights[t] = w
                if w:
                    self.blobs[t].diff[...] = w

    # ======================================================================
    # pycaffe surface
    # ======================================================================
    @property
    def layers(self):
        return [s.layer for s in self._slots]

    @property
    def _layer_names(self):
        return [s.layer.name for s in self._slots]

    # pycaffe's own internals (its Net properties are built on them), which scripts
    # that walk a net's graph use: blobs by index, a layer's tops/bottoms as indices.
    @property
    def _blob_names(self):
        return list(self.blobs)

    @property
    def _blobs(self):
        return list(self.blobs.values())

    @property
    def _blob_loss_weights(self):
        return list(self.blob_loss_weights.values())

    @property
    def _inputs(self):
        return [self._blob_names.index(name) for name in self.inputs]

    @property
    def _outputs(self):
        return [self._blob_names.index(name) for name in self.outputs]

    def _top_ids(self, i):
        names = self._blob_names
        return [names.index(name) for name in self._slots[i].tops]

    def _bottom_ids(self, i):
        names = self._blob_names
        return [names.index(name) for name in self._slots[i].bottoms]

    @property
    def layer_dict(self):
        return OrderedDict((s.layer.name, s.layer) for s in self._slots)

    @property
    def params(self):
        return OrderedDict((s.layer.name, s.layer.blobs) for s in self._slots if s.layer.blobs)

    @property
    def learnable_params(self):
        return list(self._learnable)

    @property
    def top_names(self):
        return OrderedDict((s.layer.name, list(s.tops)) for s in self._slots)

    @property
    def bottom_names(self):
        return OrderedDict((s.layer.name, list(s.bottoms)) for s in self._slots)

    @property
    def layer_need_backward(self):
        return OrderedDict((s.layer.name, s.need_backward) for s in self._slots)

    @property
    def bottom_need_backward(self):
        return OrderedDict((s.layer.name, list(s.bottom_need_backward)) for s in self._slots)

    @property
    def blob_need_backward(self):
        return OrderedDict((name, self._blob_need_backward[name]) for name in self.blobs)

    def backward_reason(self, layer_name):
        """Why ``layer_name`` does or does not run backward, in words."""
        self._layer_index(layer_name)
        return self.reasons[layer_name]

    def explain(self, start=None, end=None):
        """Every layer's need-backward decision with its reason, which blobs get
        diffs, and warnings for the known traps (see jcaffe.explain). ``start`` /
        ``end``: a planned ``backward(start=..., end=...)`` range to check."""
        from .explain import explain
        return explain(self, start, end)

    def to_jax(self, start=None, end=None):
        """The net (or layers ``start``..``end``) as a pure JAX function
        ``f(params, inputs) -> outputs`` (see jcaffe.jax_export)."""
        from .jax_export import to_jax
        return to_jax(self, start, end)

    def _layer_index(self, name):
        for i, s in enumerate(self._slots):
            if s.layer.name == name:
                return i
        raise NetGraphError("Net '%s' has no layer named '%s'; layers: %s"
                            % (self.name, name, ", ".join(self._layer_names)))

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run forward from ``start`` to ``end`` (layer names, inclusive); return
        {blob: data} for the net outputs (or ``end``'s tops) plus ``blobs``."""
        blobs = list(blobs or [])
        start_ind = self._layer_index(start) if start is not None else 0
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self._slots[end_ind].tops + blobs)
        else:
            end_ind = len(self._slots) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise NetGraphError("Input blob arguments %s do not match net inputs %s."
                                    % (sorted(kwargs), sorted(self.inputs)))
            for name, value in kwargs.items():
                if np.shape(value)[0] != self.blobs[name].shape[0]:
                    raise ShapeMismatchError("Input '%s' is not batch sized: got %s, blob is %s"
                                             % (name, np.shape(value), self.blobs[name].shape))
                self.blobs[name].data[...] = value
        self._forward(start_ind, end_ind, outputs)
        return {name: self.blobs[name].data for name in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Run backward from ``start`` down to ``end`` (inclusive); return
        {blob: diff} for the net inputs (or ``end``'s bottoms) plus ``diffs``."""
        diffs = list(diffs or [])
        start_ind = self._layer_index(start) if start is not None else len(self._slots) - 1
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self._slots[end_ind].bottoms + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise NetGraphError("Top diff arguments %s do not match net outputs %s."
                                    % (sorted(kwargs), sorted(self.outputs)))
            for name, value in kwargs.items():
                if np.shape(value)[0] != self.blobs[name].shape[0]:
                    raise ShapeMismatchError("Diff '%s' is not batch sized: got %s, blob is %s"
                                             % (name, np.shape(value), self.blobs[name].shape))
                self.blobs[name].diff[...] = value
        self._backward(start_ind, end_ind)
        return {name: self.blobs[name].diff for name in outputs}

    def forward_all(self, blobs=None, **kwargs):
        """Forward over inputs of any length, in batches; outputs concatenated."""
        all_outs = {out: [] for out in set(self.outputs + (blobs or []))}
        n = len(next(iter(kwargs.values())))
        for batch in self._batch(kwargs):
            outs = self.forward(blobs=blobs, **batch)
            for out, value in outs.items():
                all_outs[out].extend(value.copy())
        return {out: np.asarray(v)[:n] for out, v in all_outs.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward_all and backward over all batches; returns (blobs, diffs)."""
        all_outs = {out: [] for out in set(self.outputs + (blobs or []))}
        all_diffs = {d: [] for d in set(self.inputs + (diffs or []))}
        fwd = list(self._batch({k: kwargs[k] for k in self.inputs if k in kwargs}))
        bwd = list(self._batch({k: kwargs[k] for k in self.outputs if k in kwargs}))
        n = len(next(iter(kwargs.values())))
        for k in range(max(len(fwd), len(bwd))):
            outs = self.forward(blobs=blobs, **(fwd[k] if k < len(fwd) else {}))
            grads = self.backward(diffs=diffs, **(bwd[k] if k < len(bwd) else {}))
            for out, value in outs.items():
                all_outs[out].extend(value.copy())
            for d, value in grads.items():
                all_diffs[d].extend(value.copy())
        return ({o: np.asarray(v)[:n] for o, v in all_outs.items()},
                {d: np.asarray(v)[:n] for d, v in all_diffs.items()})

    def _batch(self, arrays):
        if not arrays:
            return
        num = len(next(iter(arrays.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        for i in range(0, num - num % batch_size, batch_size):
            yield {name: a[i:i + batch_size] for name, a in arrays.items()}
        rem = num % batch_size
        if rem:
            yield {name: np.concatenate([a[-rem:], np.zeros((batch_size - rem,) + np.shape(a)[1:])])
                   for name, a in arrays.items()}

    def set_input_arrays(self, data, labels):
        """Give the (first) MemoryData layer its arrays: ``data`` N x C x H x W, ``labels``
        N (or N x 1 x 1 x 1); N a multiple of its batch_size (pycaffe's set_input_arrays)."""
        labels = np.asarray(labels)
        for s in self._slots:
            if s.layer.type == "MemoryData":
                if labels.ndim == 1:
                    labels = np.ascontiguousarray(labels[:, None, None, None])
                return s.layer.set_input_arrays(data, labels)
        raise NetGraphError("set_input_arrays needs a MemoryData layer; net '%s' has none" % self.name)

    def reshape(self):
        """Propagate input shapes through every layer (Caffe's Net::Reshape)."""
        for slot in self._slots:
            self._reshape_slot(slot)

    def clear_param_diffs(self):
        """Zero every learnable param's diff (Caffe's ClearParamDiffs). Nothing is
        computed: each diff is zeros made when read (Blob.clear_diff), and a solver's
        backward after it adds its first diffs to zeros of its own, without reading any
        (_backward_compiled's ``cleared``). A solver that cannot fuse its step (a net
        with a numpy Python layer in the middle) clears them every iteration: written as
        zero arrays, that took a CaffeNet step 75-87 ms (244 MB of fresh pages), and the
        backward read them all again."""
        for blob in self._learnable:
            blob.clear_diff()

    def share_with(self, other):
        """Use ``other``'s param data for layers of the same name (ShareTrainedLayersWith)."""
        for src in other._slots:
            try:
                target = self._slots[self._layer_index(src.layer.name)].layer
            except NetGraphError:
                log.info("Ignoring source layer %s", src.layer.name)
                continue
            if len(target.blobs) != len(src.layer.blobs):
                raise ShapeMismatchError("Incompatible number of blobs for layer %s" % src.layer.name)
            for j, (t, s) in enumerate(zip(target.blobs, src.layer.blobs)):
                if t.shape != s.shape:
                    raise ShapeMismatchError(
                        "Cannot share param %d weights from layer '%s'; shape mismatch.  Source param "
                        "shape is %s; target param shape is %s"
                        % (j, src.layer.name, s.shape_string(), t.shape_string()))
                t.share_data(s)

    def copy_from(self, weights):
        """Copy params from a .caffemodel (path or NetParameter) by layer name; an HDF5
        weights file (Caffe's .caffemodel.h5) is recognized by its signature, as in Caffe."""
        if isinstance(weights, caffe_pb2.NetParameter):
            source, where = weights, "<NetParameter>"
        else:
            where = os.fspath(weights)
            if hdf5.is_hdf5(where):
                return hdf5.copy_from(self, where, log)
            source = protoio.read_weights(where)
        for src in source.layer:
            try:
                target = self._slots[self._layer_index(src.name)].layer
            except NetGraphError:
                log.info("Ignoring source layer %s", src.name)
                continue
            if len(target.blobs) != len(src.blobs):
                raise ShapeMismatchError("Incompatible number of blobs for layer %s: %s has %d, the "
                                         "net expects %d" % (src.name, where, len(src.blobs),
                                                             len(target.blobs)))
            for j, (blob, proto) in enumerate(zip(target.blobs, src.blobs)):
                arr = protoio.blobproto_to_array(proto)
                if not _proto_shape_equals(blob, proto, arr):
                    raise ShapeMismatchError(
                        "Cannot copy param %d weights from layer '%s'; shape mismatch.  Source param "
                        "shape is %s; target param shape is %s. To learn this layer's parameters "
                        "from scratch rather than copying from a saved net, rename the layer. "
                        "(weights: %s)" % (j, src.name, shape_string(arr.shape), blob.shape_string(), where))
                blob.data[...] = arr.reshape(blob.shape)

    def to_proto(self, write_diff=False):
        """The NetParameter with weights (Caffe's Net::ToProto)."""
        out = caffe_pb2.NetParameter()
        out.name = self.name
        for slot in self._slots:
            lp = out.layer.add()
            lp.CopyFrom(slot.layer.layer_param)
            del lp.blobs[:]
            for blob in slot.layer.blobs:
                lp.blobs.add().CopyFrom(protoio.array_to_blobproto(
                    blob.host_data(), blob.host_diff() if write_diff else None))
        return out

    def save(self, filename, write_diff=False):
        """Write the weights as a binary NetParameter (.caffemodel), atomically."""
        protoio.write_binary(self.to_proto(write_diff), os.fspath(filename))

    def save_hdf5(self, filename, write_diff=False):
        """Write the weights as Caffe's HDF5 layout (``data/<layer>/<k>``), atomically."""
        hdf5.save_net(self, filename, write_diff)

    def load_hdf5(self, filename):
        """Copy weights from a Caffe HDF5 weights file by layer name."""
        hdf5.copy_from(self, os.fspath(filename), log)

    def before_forward(self, callback):
        """Call ``callback(layer_index)`` before each layer's forward."""
        self._hooks["before_forward"].append(callback)

    def after_forward(self, callback):
        self._hooks["after_forward"].append(callback)

    def before_backward(self, callback):
        self._hooks["before_backward"].append(callback)

    def after_backward(self, callback):
        if isinstance(callback, common.NCCL):   # (layer-wise reduce: one solver, nothing)
            return
        self._hooks["after_backward"].append(callback)

    # ======================================================================
    # execution
    # ======================================================================
    def _runs(self, lo, hi):
        """Split layers lo..hi into host layers and runs of JaxLayers."""
        per_layer = any(self._hooks.values()) or self.debug_info
        runs, current = [], []
        for i in range(lo, hi + 1):
            slot = self._slots[i]
            if slot.layer.is_host or per_layer:
                if current:
                    runs.append(current)
                    current = []
                runs.append([slot])
            else:
                current.append(slot)
        if current:
            runs.append(current)
        return runs

    def _segment(self, run):
        key = (run[0].index, run[-1].index)
        seg = self._segments.get(key)
        if seg is None:
            inside = {s.index for s in run}
            read_outside = {b for s in self._slots if s.index not in inside for b in s.bottoms}
            seg = self._segments[key] = Segment(run, keep=read_outside | set(self.outputs))
        return seg

    def _reshape_run(self, run):
        """Reshape the layers of a compiled ``run`` for their bottoms' shapes, as Caffe does
        before every forward; a no-op, skipped, while no blob's shape has changed since
        (blob.shape_epoch): GoogLeNet's deploy forward spent 0.5 of its 1.75 ms of host
        work there."""
        key = (run[0].index, run[-1].index)
        if self._reshaped.get(key) == shape_epoch():
            return
        for slot in run:
            self._reshape_slot(slot)
        self._reshaped[key] = shape_epoch()

    def _reshape_slot(self, slot):
        layer = slot.layer
        if layer.is_host:
            self._call_python(layer, "reshape", [self.blobs[b] for b in slot.bottoms],
                              [self.blobs[t] for t in slot.tops])
            return
        if not layer.forward_writes_tops:
            return
        shapes = layer.do_reshape([self.blobs[b].shape for b in slot.bottoms])
        for t, shape in zip(slot.tops, shapes):
            self.blobs[t].reshape(shape)

    def _run_hooks(self, which, i):
        for cb in self._hooks[which]:
            cb(i)

    def _forward(self, start, end, wanted=()):
        if not 0 <= start <= end < len(self._slots):
            raise NetGraphError("forward range %d..%d outside the net's %d layers"
                                % (start, end, len(self._slots)))
        self._forward_count += 1
        key = (self._base_key, self._forward_count)
        loss = 0.0
        for run in self._runs(start, end):
            if len(run) == 1:
                self._run_hooks("before_forward", run[0].index)
            if run[0].layer.is_host:
                loss += self._forward_host(run[0])
            else:
                self._load_sources(run)
                loss += self._forward_compiled(run, key, wanted)
            if self.debug_info:
                self._forward_debug_info(run[0])
            if len(run) == 1:
                self._run_hooks("after_forward", run[0].index)
        return loss

    def _forward_host(self, slot):
        layer = slot.layer
        bottom = [self.blobs[b] for b in slot.bottoms]
        top = [self.blobs[t] for t in slot.tops]
        self._call_python(layer, "reshape", bottom, top)
        self._call_python(layer, "forward", bottom, top)
        loss = 0.0
        for t, w in zip(top, layer.loss):
            if w:
                loss += float(np.vdot(t.host_data(), t.host_diff()))
        return loss

    def _load_sources(self, run):
        """Fill the tops of the data source layers in ``run`` with their next batch (on
        the host, from their prefetch queue): the compiled code reads them as inputs."""
        for slot in run:
            layer = slot.layer
            if getattr(layer, "is_source", False):
                arrays = layer.next_batch()
                for name, value in zip(slot.tops, arrays):
                    blob = self.blobs[name]
                    if tuple(blob.shape) != tuple(value.shape):
                        blob.reshape(value.shape)
                    blob.set_device_data(jnp.asarray(value, self.dtype))

    def _kernel_layouts(self, seg, params):
        """{pid: engine.KernelLayout} of the params ``seg``'s layers read in another
        layout (a convolution's weight on XLA's CPU kernel), each laid out once while
        its value stays the same array (a TEST net's forwards: the deploy case; a
        Solver's test net gets new ones after each training step). The cache holds a
        second copy of those weights."""
        out = {}
        for pid, perm in seg.kernel_layouts().items():
            value = params[pid]
            held = self._kernel_cache.get(pid)
            if held is None or held[0] is not value or held[1].perm != perm:
                held = self._kernel_cache[pid] = (value, engine.kernel_layout_of(value, perm))
            out[pid] = held[1]
        return out

    def _forward_compiled(self, run, key, wanted=()):   # key: (base key, count), folded in the call
        self._reshape_run(run)
        seg = self._segment(run)
        params = {pid: self._learnable[pid].device_data() for pid in seg.param_ids}
        if self.phase == TEST:
            params.update(self._kernel_layouts(seg, params))
        data = {name: self.blobs[name].device_data() for name in seg.reads}
        loss_w = {name: self.blobs[name].device_diff() for name in seg.loss_tops}
        written, saved, new_params, loss, new_state, pending = seg.run_forward(
            params, data, loss_w, *key, wanted=wanted, state=self._carried_state(seg))
        held, once = seg.held_blobs(), {}     # (once: a value under several names)
        for name in seg.writes:
            if name in written:
                value = written[name]
                self.blobs[name].set_device_data(
                    value, once.setdefault(id(value), engine.ReorderOnce()) if name in held
                    else None)
            else:       # computed when first read (see jcaffe.engine)
                self.blobs[name].set_pending_data(pending, name)
        if pending is None:
            for name in seg.dropped_when_slim():
                self.blobs[name].watch_data_reads(seg, name)
        self._saved.update(saved)
        for pid, value in new_params.items():
            self._learnable[pid].set_device_data(value)
        self._keep_state(new_state)
        return 0.0 if loss is None else float(loss)

    def _carried_state(self, seg):
        """{layer index: state} the layers of ``seg`` that carry one start from: what
        their last forward left (``layer.hidden_state``), or zeros (the first forward,
        after ``reset()``, or where the state's shape changed: a new number of streams;
        Caffe's reshaped blob would keep stale values there)."""
        out = {}
        for i in seg.state_slots:
            layer = self._slots[i].layer
            shapes = [tuple(shape) for shape in layer.state_shapes()]
            held = layer.hidden_state
            if held is None or [tuple(a.shape) for a in held] != shapes:
                if held is not None:
                    log.info("%s layer '%s': its carried state has shape %s now, was %s: "
                             "it starts from zero", layer.type, layer.name,
                             shape_string(shapes[0]), shape_string(held[0].shape))
                held = layer.hidden_state = tuple(device_zeros(shape, self.dtype)
                                                  for shape in shapes)
            out[i] = held
        return out

    def _keep_state(self, new_state):
        """Each layer's state after a forward (see _carried_state)."""
        for i, value in new_state.items():
            self._slots[i].layer.hidden_state = value

    def _backward(self, start, end, cleared=False):
        """Layers ``start`` down to ``end``. ``cleared``: the caller (a solver's iteration)
        has just cleared the param diffs, and every backward program adds its first
        diffs to zeros of its own (_backward_compiled)."""
        if not 0 <= end <= start < len(self._slots):
            raise NetGraphError("backward range %d..%d outside the net's %d layers"
                                % (start, end, len(self._slots)))
        for run in reversed(self._runs(end, start)):
            if len(run) == 1:
                self._run_hooks("before_backward", run[0].index)
            if run[0].layer.is_host:
                if run[0].need_backward:
                    self._backward_host(run[0])
            else:
                self._backward_compiled(run, cleared)
            if self.debug_info and run[0].need_backward:
                self._backward_debug_info(run[0])
            if len(run) == 1:
                self._run_hooks("after_backward", run[0].index)

    # -- debug_info (Caffe's Net::ForwardDebugInfo, BackwardDebugInfo) -------------------
    def _forward_debug_info(self, slot):
        name = slot.layer.name
        for top in slot.tops:
            log.info("    [Forward] Layer %s, top blob %s data: %g",
                     name, top, _mean_abs(self.blobs[top], False))
        for k, pid in enumerate(slot.param_ids):
            log.info("    [Forward] Layer %s, param blob %s data: %g", name,
                     self._display_name_of[(slot.index, k)], _mean_abs(self._learnable[pid], False))

    def _backward_debug_info(self, slot):
        name = slot.layer.name
        for bottom, need in zip(slot.bottoms, slot.bottom_need_backward):
            if need:
                log.info("    [Backward] Layer %s, bottom blob %s diff: %g",
                         name, bottom, _mean_abs(self.blobs[bottom], True))
        for k, pid in enumerate(slot.param_ids):
            if slot.layer.wants_param_diff(k):
                log.info("    [Backward] Layer %s, param blob %d diff: %g",
                         name, k, _mean_abs(self._learnable[pid], True))

    def _params_debug_info(self):
        """Caffe's Net::Backward with debug_info: the L1 and L2 norms of all learnable
        params' data and diffs, after a whole backward (a solver's iteration)."""
        sums = np.zeros(4)
        for blob in self._learnable:
            sums += np.asarray(_norms(blob.device_data(), blob.device_diff()), np.float64)
        log.error("    [Backward] All net params (data, diff): L1 norm = (%g, %g); "
                  "L2 norm = (%g, %g)", sums[0], sums[1], np.sqrt(sums[2]), np.sqrt(sums[3]))

    def _backward_host(self, slot):
        layer = slot.layer
        if not callable(getattr(layer, "backward", None)):
            raise BackwardError("Python layer '%s' (%s) has no backward(), but the net needs its "
                                "backward: %s" % (layer.name, getattr(layer, "python_class", "?"),
                                                  self.reasons[layer.name]))
        self._call_python(layer, "backward", [self.blobs[t] for t in slot.tops],
                          list(slot.bottom_need_backward), [self.blobs[b] for b in slot.bottoms])

    def _backward_compiled(self, run, cleared=False):
        """``cleared`` (Net._backward): param diffs still zeros (Blob.diff_is_zeros) are
        not passed; the program makes its zeros, reading nothing. Elsewhere (a user's
        net.backward()) every diff is passed, zeros as arrays read through the zero page
        (device_zeros), so that a pycaffe loop, whose first backward finds the diffs
        zero and the next ones not, compiles one program (tests/test_no_recompile.py)."""
        seg = self._segment(run)
        active, data_names, diff_names, _, pids = seg.backward_plan()
        if not active:
            return
        for slot in active:
            if slot.layer.forward_writes_tops and slot.index not in self._saved:
                raise BackwardError("layer '%s' has not run forward yet: call net.forward() before "
                                    "net.backward()" % slot.layer.name)
        params = {pid: self._learnable[pid].device_data() for pid in seg.param_ids}
        held = seg.held_blobs()
        data = {name: self._held_data(name) if name in held else self.blobs[name].device_data()
                for name in data_names}
        top_diffs = {name: self.blobs[name].device_diff() for name in diff_names}
        saved = {s.index: self._saved.get(s.index) for s in active}
        param_diffs = {pid: None if cleared and self._learnable[pid].diff_is_zeros()
                       else self._learnable[pid].device_diff() for pid in pids}
        written, acc = seg.run_backward(params, data, top_diffs, saved, param_diffs)
        held_diffs, once = seg.held_diffs(), {}
        for name, value in written.items():
            self.blobs[name].set_device_diff(
                value, once.setdefault(id(value), engine.ReorderOnce()) if name in held_diffs
                else None)
        for pid, value in acc.items():
            self._learnable[pid].set_device_diff(value)

    def _held_data(self, name):
        """Blob ``name``'s data as a segment's backward takes a held blob: the array its
        forward returned, or, read or written since (or set by another call), its
        Caffe-order array held again (one transpose)."""
        blob = self.blobs[name]
        value = blob.held_device_data()
        return engine.hold_blob(blob.device_data()) if value is None else value

    def _call_python(self, layer, method, *args):
        """Call a user Python layer method; its exceptions keep their type and traceback
        and gain a note naming the layer."""
        try:
            return getattr(layer, method)(*args)
        except PythonLayerError:
            raise
        except Exception as e:
            if getattr(layer, "python_class", None) is not None:
                note_python_layer(e, layer, method)
            elif not isinstance(e, JcaffeError):   # a built-in host layer (Filter)
                e.add_note("(in %s() of %s layer '%s')" % (method, layer.type, layer.name))
            raise


def _proto_shape_equals(blob, proto, arr):
    """Caffe's Blob::ShapeEquals: legacy 4-d protos match by their 4-d legacy shape."""
    if proto.HasField("num") or proto.HasField("channels") or proto.HasField("height") or \
            proto.HasField("width"):
        legacy = tuple(blob.legacy_shape(i) for i in range(4))
        return blob.num_axes <= 4 and legacy == (proto.num, proto.channels, proto.height, proto.width)
    return tuple(arr.shape) == tuple(blob.shape)
