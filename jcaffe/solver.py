"""Solvers: Caffe's training loop, snapshots and pycaffe's Solver API.

``Solver`` follows Caffe's Solver/SGDSolver: it builds the train net and the
test nets from a SolverParameter (test nets share the train net's params),
and ``step`` runs Caffe's iteration (test when due, forward/backward
``iter_size`` times, display, update, snapshot when due) with Caffe's log
lines. The update itself is ``update_rules.make_update`` (one pure function
per solver type, Caffe's stage order).

Two ways to run an iteration, with the same numbers:

* **fused** (the default when the train net is one compiled segment: no
  Python layers, no net hooks, no solver callbacks): forward, backward
  (``iter_size`` times), regularization and update are ONE jitted call; params
  and solver history stay on the device; the Net's blobs receive the new
  device arrays (host copies are synced only when read).
* **pycaffe-style**: ``net._forward`` / ``net._backward`` as ``net.forward()``
  / ``net.backward()`` run them, the ``on_gradients_ready`` callbacks, then a
  jitted update (``apply_update``).

Randomness (Dropout, random DummyData): the k-th forward of iteration ``it``
uses the net's key folded with ``it * iter_size + k + 1`` in both ways, so a
run restored from a snapshot continues the same trajectory.

``Solver(path, devices=...)`` (or ``get_solver(path, devices=...)``) trains data
parallel over several devices and processes (``jcaffe.parallel``): the same
fused iteration runs on every device under ``shard_map``, with the gradients
averaged across devices before the update; ``solver.parallel`` is the
``DataParallel`` object (None when training on one device the ordinary way).
"""
import collections
import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import common, compile_cache, engine, hdf5, progress, protoio, xla_options
from .blob import View, device_zeros, shape_epoch
from .errors import ProtoFileError, SolverError
from .lr_policy import check_policy, learning_rate
from .net import Net
from .packed_history import HistoryLayout
from .parallel import data_parallel_for
from .proto import caffe_pb2
from .update_rules import make_update, rule_for
from .upgrade import upgrade_solver_as_needed

log = logging.getLogger("jcaffe")

NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"   # Caffe's SolverAction


def _read_solver_param(source):
    if isinstance(source, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(source)
        upgrade_solver_as_needed(param, "<SolverParameter>")
        return param, None
    path = os.fspath(source)
    return protoio.read_solver_param(path), path


def _rate_after(pair, probes):
    """One param's learning rate, ``pair[0]`` or ``pair[1]`` (both hold it), chosen by the
    scalars ``probes`` (its layers' data gradients, one element each, or one element of
    the ordered copy its layers' backward read it through: engine.Segment.trace_backward):
    the same number, made to depend on them.

    A fused step overwrites its donated params in place, and XLA orders that write after
    a param's other reads by data dependence only (an optimization barrier is dropped
    before copy insertion on CPU). A data gradient dx = dy . W does not feed the update
    of its own W, so XLA copied every such param before the step (CaffeNet: 233 MB, the
    copies' time and their fresh pages, every step). The update reads its rate; taken
    from a two-entry argument by an index computed from that layer's data gradients, it
    comes after them, and XLA cannot fold the choice away. (One rate for all params,
    made to wait for the whole backward, cost LeNet's step 2-3%: no update could
    overlap the rest of the backward.)
    """
    if not probes:
        return pair[0]
    return pair[(sum(p.astype(pair.dtype) for p in probes) > 0).astype(jnp.int32)]


class _RatesAfter:
    """_rate_after for the params of one traced step, once per set of probes (a layer's
    weight and bias wait for the same data gradients). Each operation traced costs a
    step's first call its tracing and lowering (all of that call's work with a warm
    compilation cache): GoogLeNet's step traced 10318 operations, 2048 of them these
    rates, chosen per param and again, unused, after the backward for the params it had
    updated. (The choice stays numpy indexing's dynamic slice: as one select of the
    pair's two entries, ResNet-50's step ran 1.01x the time, interleaved A/Bs.)"""

    def __init__(self, pair):
        self.pair, self._known = pair, {}

    def __call__(self, probes):
        probes = tuple(probes)
        key = tuple(map(id, probes))
        if key not in self._known:      # (kept with its probes: their ids stay theirs)
            with jax.named_scope("rate_after"):
                self._known[key] = (_rate_after(self.pair, probes), probes)
        return self._known[key][0]


# A param whose update value a compiled update does not return: its diff is computed
# from its new history when read (UpdateValue; rules with value_is_derived: Adam).
DERIVED = "derived"


def _history_slots(history, values, derived=False):
    """For each param, the history slot whose new array is its update value itself (the
    same traced value: SGD's momentum), else DERIVED where the rule's values follow from
    the history (``derived``), else None."""
    return [next((k for k, slot in enumerate(history) if slot[i] is v),
                 DERIVED if derived else None)
            for i, v in enumerate(values)]


class UpdateValue(View):
    """A param diff that is its last update value, computed from the new history when
    read (Caffe leaves the value in the diff; a rule with ``value_is_derived`` has the
    compiled update skip writing it). The source is the solver's history state
    (packed, loose) as the update returned it; ``places``: where the param's history
    arrays are in it (Solver._diff_sources); ``local_rate``: the update's rate times
    the param's lr_mult, multiplied in the param's dtype as the compiled update does;
    ``t``: the iteration."""

    def __init__(self, value_fn, places, local_rate, t):
        self.value_fn, self.places, self.local_rate, self.t = value_fn, places, local_rate, t

    def __call__(self, state):
        packed, loose = state
        hist = tuple(p(packed) if isinstance(p, View) else loose[p[0]][p[1]]
                     for p in self.places)
        return self.value_fn(hist, self.local_rate, self.t)


def _forward_only(slot):
    """No params, no loss weight and no backward: a host layer whose forward can run
    outside a fused step's call (Caffe never calls its backward)."""
    return not slot.param_ids and not slot.need_backward and not any(slot.layer.loss)


def _host_source(slot, produced):
    """Whether a host layer's slot can run on the host before a fused step's call
    (Solver._fused_plan): a data layer, or a layer reading only the tops of those before
    it (``produced``), forward only."""
    return all(b in produced for b in slot.bottoms) and _forward_only(slot)


def _host_sink(slot):
    """Whether a host layer's slot at the end of the net (nothing compiled reads its
    tops: only host layers come after it) can run on the host after a fused step's
    call, on the step's blobs: forward only (a metric or a monitor)."""
    return _forward_only(slot)


def _host_reason(slot, produced, where):
    """Why the host layer of ``slot`` keeps a fused step from running (its log line):
    ``where`` it is: "leading" (before every compiled layer: a data layer _host_source
    refused), "trailing" (after every compiled layer: _host_sink refused) or "middle"."""
    layer = slot.layer
    python = getattr(layer, "python_class", None)
    what = ("Python layer '%s' (%s)" % (layer.name, python) if python
            else "%s layer '%s'" % (layer.type, layer.name))
    outside = [b for b in slot.bottoms if b not in produced]
    why = ("compiled layers come before it and read its tops: only host layers at the start "
           "of the net (data) or at its end (reading the step's blobs) run outside the one "
           "call" if where == "middle"
           else "it reads '%s', which no host layer before it computes" % outside[0]
           if where == "leading" and outside
           else "it has params" if slot.param_ids
           else "its tops have a loss weight" if any(slot.layer.loss)
           else "it needs backward")
    hint = ("; written as a jcaffe.JaxLayer (examples/python_layers/jax_layers.py) it would "
            "be compiled with the net" if python else "")
    return "%s runs on the host between compiled segments (%s)%s" % (what, why, hint)


def fused_step_plan(net):
    """What of ``net`` decides whether a solver's iteration over it runs as one compiled
    call (Solver._plan_or_reason, which adds the solver's own settings; explain()):
    ((host data layers, the compiled run, host layers after it), None), or (None, why
    not, in words)."""
    if not net._slots:
        return None, "the net has no layers"
    if any(net._hooks.values()):
        return None, "net hooks (before_forward/after_forward/...) run around each layer"
    if net.debug_info:
        return None, "debug_info logs each layer's values"
    runs = net._runs(0, len(net._slots) - 1)
    host, produced = [], set()
    while len(runs) > 1 and runs[0][0].layer.is_host and _host_source(runs[0][0], produced):
        host.append(runs.pop(0)[0])
        produced.update(host[-1].tops)
    tail = []
    while len(runs) > 1 and runs[-1][0].layer.is_host and _host_sink(runs[-1][0]):
        tail.insert(0, runs.pop()[0])
    if len(runs) != 1 or runs[0][0].layer.is_host:
        at = next((k for k, r in enumerate(runs) if r[0].layer.is_host), None)
        if at is None:
            return None, "the net runs as %d compiled segments" % len(runs)
        if at == 0:
            return None, _host_reason(runs[0][0], produced, "leading")
        if all(r[0].layer.is_host for r in runs[at:]):     # the one the tail stopped at
            return None, _host_reason(runs[-1][0], produced, "trailing")
        return None, _host_reason(runs[at][0], produced, "middle")
    return (host, runs[0], tail), None


class Solver:
    """A Caffe solver. ``Solver(path_or_SolverParameter)`` uses ``type`` from the
    parameter; the subclasses (``SGDSolver``, ``AdamSolver``, ...) use their own
    type whatever the file says, as pycaffe's classes do. ``devices=`` ("all", a count,
    or local device ids) trains data parallel: see ``jcaffe.parallel``."""

    type_name = None
    # XLA options of the fused step's compile (jax.jit's compiler_options); None: on
    # CPU, XLA's memory-optimized schedule (CaffeNet, batch 32: temporaries 365 -> 271 MB,
    # step time unchanged in interleaved A/Bs: 1757 vs 1799 ms, 1871 vs 1707 ms) and
    # convolutions left to XLA rather than YNNPACK (xla_options.cpu_options).
    fused_compiler_options = None
    # Update each param inside a fused step's backward as soon as its diff is complete
    # (``_updates_in_order``), the layers below waiting for it.
    update_in_backward = True
    CPU_COMPILER_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    # Params of at least this size whose layer can give their diff by rows (InnerProduct
    # weights; Convolution weights whose gradient is one GEMM: Convolution.
    # row_blocked_params) are updated a block of rows at a time in a fused step, without
    # their whole diff (jcaffe.engine.RowBlocks); None: never. On the CPU backend only: on
    # an H200 CaffeNet's step took 5.4 ms without them against 6.5 with them, and XLA's
    # temporaries were no smaller (benchmarks/NOTES.md, thirty-first session).
    row_blocks_min_bytes = 32 << 20
    # Donate the last step's blob, diff and residual arrays as the buffers of this step's
    # (_recycled): Caffe's memory, the old blobs gone before the new ones are written.
    # Each costs the call a few microseconds of host work (ResNet-50: 274 of its 924
    # arguments; benchmarks/bench_host.py); False passes none, for the A/B on a GPU
    # (benchmarks/variants_engine.py, no_recycle).
    recycle_buffers = True
    # The history of params of at most this many bytes lives in one array (and so is
    # one argument and one result of a fused step, not two per param and history slot:
    # jcaffe.packed_history); None: every param's apart. Off: on the CPU it saved a
    # ResNet-50 step (batch 2) 1.7 of its 8.4 ms of host work, changed no step's time,
    # and added 2.8 s to its compile (XLA compiles each fusion reading a slice of the
    # packed array as a kernel of its own); the A/B on a GPU, where the host work is
    # what a step waits for, is benchmarks/variants_engine.py's ``pack``.
    history_pack_max_bytes = None

    def __init__(self, source, _source_path=None, devices=None):
        param, path = _read_solver_param(source)
        self._path = path = path or _source_path
        self._source_dir = os.path.dirname(os.path.abspath(path)) if path else None
        log.info("Initializing solver from parameters: \n%s", param)
        self.param = param
        self._check_param()
        self._rule = rule_for(param, self.type_name)
        self._check_snapshot_write_permissions()
        if param.random_seed >= 0:
            common.set_random_seed(param.random_seed + common.solver_rank())
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        log.info("Solver scaffolding done.")
        self._iter = 0
        self.current_step = 0
        self._callbacks = []
        self._action_function = None
        self._early_exit = False
        self._progress = None   # the terminal progress bar while solve() runs
        self._losses = collections.deque()
        self.fuse_step = True           # False forces the pycaffe-style path
        self._told_layer_by_layer = None    # the reason last logged (_say_layer_by_layer)
        self._backward_update = None    # (segment, jitted backward + update)
        self._fused = None              # (segment, jitted fn)
        self._recycle_plan = None       # (self._fused[3], _recycle_places)
        self._steady = None             # (key, what a fused step derives from the shapes)
        self.parallel = data_parallel_for(self, devices)   # None: one device, no collectives
        learnable = self.net._learnable
        # The history, held as (packed, loose) (jcaffe.packed_history) and, once asked
        # for, unpacked (self._history); either may be None until needed. Data-parallel
        # training keeps every param's apart (its step takes the unpacked history).
        self._layout = HistoryLayout([b.shape for b in learnable], [b.dtype for b in learnable],
                                     self._rule.num_history,
                                     self.history_pack_max_bytes if self.parallel is None else None)
        owners = [self.net._slots[slot].layer.name for slot, _ in self.net._param_owner_slot]
        _, self._update = make_update(param, self._rule, self.net.params_lr,
                                      self.net.params_weight_decay, self._layout.packed_ids,
                                      owners)
        self._hist_state, self._hist_full = self._layout.zeros(), None
        # Adam's update values, computed from its history when a diff is read: the
        # compiled updates do not write them (CaffeNet's Adam step took 1.12x the time
        # when they did, its fc6 update alone 113 against 55 ms; benchmarks/NOTES.md).
        self._derived = getattr(self._rule, "value_is_derived", False)
        self._value_from_history = jax.jit(self._rule.value_from_history) if self._derived \
            else None
        self._update_jit = None         # apply_update's program (_jit_update)
        self._update_diff_is_history = None     # (_packed_update's share_history)
        self._diff_places = None        # (a diff_is_history list, where each diff comes from)

    # ------------------------------------------------------------------
    # setup
    # ------------------------------------------------------------------
    def _check_param(self):
        p = self.param
        if p.average_loss < 1:
            raise SolverError("average_loss should be at least 1, got %d" % p.average_loss)
        if p.base_lr < 0:
            raise SolverError("base_lr must not be negative, got %g" % p.base_lr)
        if p.iter_size < 1:
            raise SolverError("iter_size must be at least 1, got %d" % p.iter_size)
        check_policy(p)

    def _check_snapshot_write_permissions(self):
        if not self.param.snapshot:
            return
        if not self.param.snapshot_prefix:
            raise SolverError("In solver params, snapshot is specified but snapshot_prefix is not")
        probe = self._snapshot_filename(".tempfile", 0)
        try:
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as e:
            raise SolverError("Cannot write to snapshot prefix '%s' (%s). Make sure that the "
                              "directory exists and is writable." % (self.param.snapshot_prefix,
                                                                     e.strerror or e)) from e

    def _resolve(self, path, what):
        """A file named in the solver: as given (Caffe reads it relative to the current
        directory); failing that, relative to the solver file's directory."""
        if os.path.exists(path):
            return path
        if not os.path.isabs(path) and self._source_dir:
            alt = os.path.join(self._source_dir, path)
            if os.path.exists(alt):
                log.info("%s '%s' read from %s (relative to the solver file)", what, path, alt)
                return alt
        raise SolverError("%s: %s '%s' does not exist (looked in the current directory %s%s)"
                          % (self._path or "<SolverParameter>", what, path, os.getcwd(),
                             " and in " + self._source_dir if self._source_dir else ""))

    def _read_net(self, path, what):
        return protoio.read_net_param(self._resolve(path, what))

    def _make_net(self, net_param, state):
        net_param = _copy(net_param)
        net_param.ClearField("state")
        return Net(net_param, state.phase, level=state.level, stages=list(state.stage))

    def _init_train_net(self):
        p = self.param
        fields = ("net", "net_param", "train_net", "train_net_param")
        given = [f for f in fields if p.HasField(f)]
        if len(given) != 1:
            raise SolverError("SolverParameter must specify exactly one train net using one of "
                              "these fields: %s (got %s)"
                              % (", ".join(fields), ", ".join(given) or "none"))
        if p.HasField("train_net_param"):
            log.info("Creating training net specified in train_net_param.")
            net_param = _copy(p.train_net_param)
        elif p.HasField("train_net"):
            log.info("Creating training net from train_net file: %s", p.train_net)
            net_param = self._read_net(p.train_net, "train_net")
        elif p.HasField("net_param"):
            log.info("Creating training net specified in net_param.")
            net_param = _copy(p.net_param)
        else:
            log.info("Creating training net from net file: %s", p.net)
            net_param = self._read_net(p.net, "net")
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        net = self._make_net(net_param, state)
        self._load_weights(net)
        return net

    def _init_test_nets(self):
        p = self.param
        generic = p.HasField("net") + p.HasField("net_param")
        num_specific = len(p.test_net_param) + len(p.test_net)
        if generic:
            if len(p.test_iter) < num_specific:
                raise SolverError("test_iter must be specified for each test network (%d test nets, "
                                  "%d test_iter)" % (num_specific, len(p.test_iter)))
        elif len(p.test_iter) != num_specific:
            raise SolverError(
                "test_iter must be specified for each test network: %d test_iter for %d test nets "
                "(test_net / test_net_param; a train_net has no test phase of its own)"
                % (len(p.test_iter), num_specific))
        sources = [("test_net_param", _copy(n)) for n in p.test_net_param]
        sources += [("test_net file: " + f, self._read_net(f, "test_net")) for f in p.test_net]
        remaining = len(p.test_iter) - len(sources)
        if p.HasField("net_param"):
            sources += [("net_param", _copy(p.net_param)) for _ in range(remaining)]
        elif p.HasField("net"):
            sources += [("net file: " + p.net, self._read_net(p.net, "net")) for _ in range(remaining)]
        if p.test_state and len(p.test_state) != len(sources):
            raise SolverError("test_state must be unspecified or specified once per test net "
                              "(%d test_state, %d test nets)" % (len(p.test_state), len(sources)))
        if sources and p.test_interval <= 0:
            raise SolverError("test_interval must be > 0 when there are test nets (got %d)"
                              % p.test_interval)
        nets = []
        for i, (source, net_param) in enumerate(sources):
            state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
            state.MergeFrom(net_param.state)
            if p.test_state:
                state.MergeFrom(p.test_state[i])
            log.info("Creating test net (#%d) specified by %s", i, source)
            net = self._make_net(net_param, state)
            net.debug_info = p.debug_info       # (Caffe: set_debug_info(debug_info))
            self._load_weights(net)
            net.share_with(self.net)
            nets.append(net)
        return nets

    def _load_weights(self, net):
        for entry in self.param.weights:
            for name in entry.split(","):
                name = name.strip()
                log.info("Finetuning from %s", name)
                net.copy_from(name)

    # ------------------------------------------------------------------
    # pycaffe surface
    # ------------------------------------------------------------------
    @property
    def iter(self):
        return self._iter

    @property
    def lr(self):
        """The learning rate the next update will use."""
        return learning_rate(self.param, self._iter, self.current_step)[0]

    @property
    def history(self):
        """The history blobs as numpy arrays, in Caffe's order (all first slots, then
        the second slots of AdaDelta/Adam)."""
        return [np.asarray(h) for slot in self._history for h in slot]

    @property
    def _history(self):
        """Every param's history arrays, ``_history[k][i]`` (the packed ones sliced out
        of the solver's state by one program)."""
        if self._hist_full is None:
            self._hist_full = self._layout.history_of(self._hist_state)
        return self._hist_full

    @_history.setter
    def _history(self, history):
        self._hist_full = tuple(tuple(slot) for slot in history)
        self._hist_state = None

    def _history_state(self):
        """The history as (packed, loose), what the compiled updates take and donate."""
        if self._hist_state is None:
            self._hist_state = self._layout.packed_state(self._hist_full)
        return self._hist_state

    def _set_history_state(self, state):
        self._hist_state, self._hist_full = state, None     # (the donated arrays are gone)

    def _packed_update(self, grads, state, params, rate, t, share_history=False):
        """``share_history``: a value that is one of its param's new history arrays (SGD's
        momentum) comes back as None, as a fused step returns it (_trace_fused), its slot
        in ``self._update_diff_is_history`` (set while tracing): XLA would otherwise
        write a second copy of every momentum."""
        new_params, history, values, norm = self._update(
            grads, self._layout.unpack(state), params, rate, t)
        if share_history:
            self._update_diff_is_history = _history_slots(history, values, self._derived)
            values = [None if k is not None else v
                      for k, v in zip(self._update_diff_is_history, values)]
        return new_params, self._layout.pack(history), values, norm

    def add_callback(self, on_start, on_gradients_ready=None):
        """Call ``on_start()`` before each iteration's forward and
        ``on_gradients_ready()`` before its update (pycaffe's add_callback). pycaffe's
        other form, ``add_callback(nccl)``, takes a :class:`jcaffe.NCCL`, which has
        nothing to do with one solver: nothing is registered."""
        if on_gradients_ready is None:
            if isinstance(on_start, common.NCCL):
                return
            raise TypeError("add_callback(on_start, on_gradients_ready) takes two callables "
                            "(or a caffe.NCCL), got %r alone" % (on_start,))
        self._callbacks.append((on_start, on_gradients_ready))

    def set_action_function(self, function):
        """``function()`` -> "none" | "stop" | "snapshot", asked after each iteration
        and during tests (Caffe's SetActionFunction; the CLI's signal handling)."""
        self._action_function = function

    def share_weights(self, net):
        net.share_with(self.net)

    def _requested_action(self):
        return self._action_function() if self._action_function else NONE

    # ------------------------------------------------------------------
    # the training loop
    # ------------------------------------------------------------------
    def step(self, iters):
        """Run ``iters`` iterations (Caffe's Solver::Step)."""
        p = self.param
        stop_iter = self._iter + int(iters)
        self._losses = collections.deque(maxlen=p.average_loss)
        timer_start, iter_last = time.perf_counter(), self._iter
        while self._iter < stop_iter:
            if p.test_interval and self._iter % p.test_interval == 0 and \
                    (self._iter > 0 or p.test_initialization):
                self.test_all()
                if self._early_exit:
                    break
            for on_start, _ in self._callbacks:
                on_start()
            display = bool(p.display) and self._iter % p.display == 0
            # (Caffe: the train net's debug_info is the solver's, on display iterations;
            # data-parallel training runs its one compiled step regardless)
            self.net.debug_info = display and p.debug_info and self.parallel is None
            if self.parallel is not None:
                loss, after = self.parallel.iteration(display)
            else:
                plan, reason = self._plan_or_reason()
                if plan is not None:
                    loss, after = self._fused_iteration(display, plan)
                else:
                    self._say_layer_by_layer(reason)
                    run = self._last_backward_run()
                    if run is not None:
                        loss, after = self._forward_backward_update(run, display)
                    else:
                        loss, after = self._forward_backward(), None
            self._losses.append(loss)
            if display:
                lapse = time.perf_counter() - timer_start
                per_s = (self._iter - iter_last) / (lapse or 1.0)
                log.info("Iteration %d (%g iter/s, %gs/%d iters), loss = %g",
                         self._iter, per_s, lapse, p.display, self.smoothed_loss)
                timer_start, iter_last = time.perf_counter(), self._iter
                self._log_outputs(self.net, "Train", 1.0)
            if after is None:
                for _, on_gradients_ready in self._callbacks:
                    on_gradients_ready()
                self.apply_update()
            else:
                after()
            if self._progress is not None:
                self._progress.update(self._iter, lambda: self.smoothed_loss)
            request = self._requested_action()
            if (p.snapshot and self._iter % p.snapshot == 0) or request == SNAPSHOT:
                self.snapshot()
            if request == STOP:
                self._early_exit = True
                break

    @property
    def smoothed_loss(self):
        """The mean of the last ``average_loss`` iteration losses (Caffe's smoothed_loss_)."""
        if not self._losses:
            return 0.0
        return float(np.mean([float(x) for x in self._losses]))

    def solve(self, resume_file=None):
        """Train to max_iter (Caffe's Solver::Solve), optionally resuming a .solverstate."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self._early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", os.fspath(resume_file))
            self.restore(resume_file)
        with progress.ProgressBar(p.max_iter, self._iter) as self._progress:
            self.step(p.max_iter - self._iter)
        self._progress = None
        if p.snapshot_after_train and (not p.snapshot or self._iter % p.snapshot != 0):
            self.snapshot()
        if self._early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self._iter % p.display == 0:
            self._losses.append(self.net._forward(0, len(self.net._slots) - 1))
            log.info("Iteration %d, loss = %g", self._iter, self.smoothed_loss)
        if p.test_interval and self._iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def _say_layer_by_layer(self, reason):
        """Log once (again when it changes) the ``reason`` an iteration is not one
        compiled call (_plan_or_reason): the layer-by-layer path is slower (LeNet with a
        numpy Python loss: 1.14x; benchmarks/RESULTS.md), and Caffe users ask why."""
        if reason != self._told_layer_by_layer and not self.net.debug_info:
            self._told_layer_by_layer = reason
            log.info("Each iteration runs layer by layer (compiled segments and host layers "
                     "called in turn), not as one compiled call: %s", reason)

    # On the layer-by-layer path the update runs in the call of the last backward (the
    # net's first compiled run) where that run holds every layer with params: no call
    # of its own, no param diffs written and read back, no diffs cleared first. Steps
    # with a numpy Python loss (OneHot + EuclideanLoss, one process each, alternating):
    # LeNet 9.9 against 11.6 ms with the update apart, CaffeNet 882 against 1016 ms.
    update_with_last_backward = True

    def _last_backward_run(self):
        """The first compiled run of the train net when a layer-by-layer iteration can
        compute its backward and the update in one call (_forward_backward_update): the
        run holds every layer with params, and the host layers before it need no
        backward; iter_size 1, no callbacks (they run between the two), no debug_info
        (its norms are of the diffs before the update). Else None."""
        net = self.net
        if (not self.update_with_last_backward or self.param.iter_size != 1
                or self._callbacks or self.parallel is not None or net.debug_info
                or any(net._hooks.values()) or not net._learnable):
            return None
        runs = net._runs(0, len(net._slots) - 1)
        first = next((k for k, r in enumerate(runs) if not r[0].layer.is_host), None)
        if first is None or any(s.need_backward for r in runs[:first] for s in r):
            return None
        if any(s.param_ids for k, r in enumerate(runs) if k != first for s in r):
            return None
        return runs[first]

    def _forward_backward_update(self, run, display):
        """One layer-by-layer iteration whose last backward, over ``run``, and the update
        are one compiled call (_last_backward_run); -> (loss, after) as _fused_iteration."""
        net, n = self.net, len(self.net._slots)
        net._forward_count = self._iter
        loss = net._forward(0, n - 1)
        if run[-1].index < n - 1:
            net._backward(n - 1, run[-1].index + 1)
        seg = net._segment(run)
        active, data_names, diff_names, _, _ = seg.backward_plan()
        if self._backward_update is None or self._backward_update[0] is not seg:
            self._backward_update = (seg, self._jit_backward_update(seg))
        rate = self._next_rate()
        out = self._backward_update[1](
            self._params_to_donate(), self._history_state(),
            {name: net.blobs[name].device_data() for name in data_names},
            {name: net.blobs[name].device_diff() for name in diff_names},
            {s.index: net._saved.get(s.index) for s in active},
            np.asarray(rate, net.dtype), np.int32(self._iter))
        new_params, state, values, norm, diffs = out
        self._set_history_state(state)
        self._set_params_and_diffs(new_params, values, state, self._update_diff_is_history,
                                   rate, self._iter)
        for name, value in diffs.items():
            net.blobs[name].set_device_diff(value)
        return loss, self._after_fused(rate, display, norm)

    def _jit_backward_update(self, seg):
        """The compiled backward of ``seg`` (every param's diff from zero) and the update
        of every param (Caffe's ApplyUpdate, as apply_update computes it)."""
        n = len(self.net._learnable)
        pids = seg.backward_plan()[4]

        def backward_update(params, state, data, top_diffs, saved, rate, t):
            diffs, acc = seg.trace_backward(
                {pid: params[pid] for pid in seg.param_ids}, data, top_diffs, saved,
                {pid: jnp.zeros_like(params[pid]) for pid in pids})
            grads = [acc[pid] if pid in acc else jnp.zeros_like(params[pid]) for pid in range(n)]
            with engine.runtime_one(params):    # (values stored once: update_rules._stored)
                return self._packed_update(grads, state, params, rate, t,
                                           share_history=True) + (diffs,)
        return xla_options.jit(backward_update, donate_argnums=(0, 1))    # (apply_update's)

    def _forward_backward(self):
        """pycaffe-style: clear diffs, then iter_size forward/backward passes; mean loss."""
        net, n = self.net, len(self.net._slots)
        net.clear_param_diffs()
        loss = 0.0
        for k in range(self.param.iter_size):
            net._forward_count = self._iter * self.param.iter_size + k
            loss += net._forward(0, n - 1)
            net._backward(n - 1, 0, cleared=k == 0)
            if net.debug_info:      # (Caffe's Net::Backward)
                net._params_debug_info()
        return loss / self.param.iter_size

    def _next_rate(self):
        rate, self.current_step = learning_rate(self.param, self._iter, self.current_step)
        return rate

    def _log_rate(self, rate, display):
        if display:
            log.info("Iteration %d, lr = %g", self._iter, rate)

    def _log_clip(self, norm):
        clip = self.param.clip_gradients
        if clip >= 0:
            norm = float(norm)
            if norm > clip:
                log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale "
                         "factor %g", norm, clip, clip / norm)

    def apply_update(self):
        """Update the train net's params from their diffs (Caffe's ApplyUpdate): the
        learning rate, clipping, normalization, regularization, the solver's rule."""
        display = bool(self.param.display) and self._iter % self.param.display == 0
        rate = self._next_rate()
        self._log_rate(rate, display)
        learnable = self.net._learnable
        params = self._params_to_donate()
        grads = [b.device_diff() for b in learnable]
        # After a step a param diff may be its history array (see _trace_fused), which
        # this call donates: pass such a diff as a copy. (A packed one is a view,
        # sliced out by device_diff.)
        state = self._history_state()
        held = {id(h) for slot in state[1] for h in slot}
        grads = [jnp.array(g, copy=True) if id(g) in held else g for g in grads]
        if self._update_jit is None:
            self._update_jit = self._jit_update()
        new_params, state, values, norm = self._update_jit(
            params, state, grads, np.asarray(rate, self.net.dtype), np.int32(self._iter))
        self._set_history_state(state)
        self._set_params_and_diffs(new_params, values, state, self._update_diff_is_history,
                                   rate, self._iter)
        self._log_clip(norm)
        self._iter += 1

    # apply_update, and the layer-by-layer path's backward with the update, donate the
    # params and history, written in place as a fused step writes them, and return SGD's
    # momentum once, as history, the param diff sharing its array. Where the update value
    # is an array of its own (the other rules), the diffs are donated too, as the
    # values' buffers. Fresh arrays for all of them, a CaffeNet step (a numpy ReLU in the
    # middle of the net, so layer by layer) spent 240-430 ms in apply_update, the
    # pages of about 700 MB touched for the first time.
    def _params_to_donate(self):
        """The params' device arrays, which the update's call donates: any slim forward
        still pending on them (a test net's) is computed first, and their host copies
        are dropped (the update replaces them)."""
        learnable = self.net._learnable
        params = [b.device_data() for b in learnable]
        engine.resolve_pending(params)
        for b in learnable:
            b.drop_host_data()
        return params

    def _donated_diffs(self):
        """Whether the update's call donates the param diffs: where the update values
        are arrays of their own (not SGD's momentum, nor Adam's, computed when read), to
        be written into the diffs'."""
        return not (getattr(self._rule, "value_is_history", False) or self._derived)

    def _jit_update(self):
        """apply_update's program, (params, state, grads, rate, t) -> (new params, new
        state, values, norm). (Donated arguments in the results' order: JAX gives each
        result the first donated buffer of its shape left, and with the history first,
        every param was written into its history's buffer and copied first.)"""
        def update(params, state, grads, rate, t):
            with engine.runtime_one(params):    # (values stored once: update_rules._stored)
                return self._packed_update(grads, state, params, rate, t, share_history=True)
        return jax.jit(update, donate_argnums=(0, 1) + ((2,) if self._donated_diffs() else ()))

    # ------------------------------------------------------------------
    # fused iteration: forward + backward (+ iter_size) + update in one jit
    # ------------------------------------------------------------------
    def _can_fuse(self):
        return self._fused_plan() is not None

    def _fused_plan(self):
        """(host data layers, the compiled run) of a net whose iteration runs as one
        fused call, else None (:meth:`_plan_or_reason`)."""
        return self._plan_or_reason()[0]

    def _plan_or_reason(self):
        """((host data layers, the compiled run, host layers after it), None) of a net
        whose iteration runs as one fused call, else (None, why not, in words). Host
        (Python) layers are allowed at the start of the net as data layers: no params,
        no loss weight and no backward (Caffe never calls a data layer's backward), their
        bottoms (if any) the tops of the host layers before them (a numpy transform of a
        Python data layer's batch). Their forward runs on the host before the call, their
        tops passed in as a Data layer's batch is; a pycaffe data layer (the common
        Python layer) no longer sends the whole step down the pycaffe path (LeNet: 1.21x
        the Input-fed step's time; benchmarks/bench_data.py). At the end of the net, host
        layers whose tops no compiled layer reads, with no params, no loss weight and no
        backward (a metric or a monitor in numpy), run after the call on the blobs it
        returns, which hold what Caffe's forward gave them (iter_size 1: with more passes
        each would see its own). Any other host layer, a net hook or a solver callback
        needs the layer-by-layer path."""
        if not self.fuse_step:
            return None, "solver.fuse_step is False"
        if self._callbacks:
            return None, "solver callbacks (add_callback) run between the backward and the update"
        plan, reason = fused_step_plan(self.net)
        if plan is not None and plan[2] and self.param.iter_size > 1:
            return None, ("host layer '%s' at the end of the net runs once per pass, and "
                          "with iter_size %d the passes run inside the one call"
                          % (plan[2][0].layer.name, self.param.iter_size))
        return plan, reason

    def _fused_iteration(self, display, plan=None):
        """One iteration as one compiled call; ``plan``: _fused_plan()'s, if the caller
        has it. -> (loss, after)."""
        net = self.net
        host, run, tail = plan if plan is not None else self._fused_plan()
        blobs = net.blobs
        # Data layers: the next batch of each pass, fetched on the host (prefetched, or by
        # a Python data layer's forward) and passed in; with iter_size > 1 the passes'
        # batches are stacked on a leading axis.
        seg = net._segment(run)
        sources = list(dict.fromkeys(
            [t for slot in host for t in slot.tops if t in seg.reads]
            + [t for slot in run if getattr(slot.layer, "is_source", False) for t in slot.tops]))
        batches = []
        for _ in range(self.param.iter_size if sources or host else 1):
            for slot in host:
                net._forward_host(slot)
            net._load_sources(run)
            batches.append([blobs[t].device_data() for t in sources])
        spec, data_names, diff_names, last, last_diffs = self._steady_plan(seg, run)
        stacked = tuple(sources) if self.param.iter_size > 1 else ()
        if self._fused is None or self._fused[0] is not seg or self._fused[2] != stacked:
            self._fused = (seg, self._jit_fused(seg, stacked), stacked, None)
        data_in = {name: blobs[name].device_data() for name in seg.reads}
        for i, name in enumerate(stacked):
            data_in[name] = jnp.stack([b[i] for b in batches])
        extra = {name: blobs[name].device_data() for name in data_names
                 if name not in data_in and name not in seg.writes}
        loss_w = {name: blobs[name].device_diff() for name in seg.loss_tops}
        top_diffs = {name: blobs[name].device_diff() for name in diff_names}
        params = self._params_to_donate()
        rate = self._next_rate()
        count0 = self._iter * self.param.iter_size
        rest = (data_in, extra, loss_w, top_diffs, net._base_key, np.int32(count0),
                np.asarray([rate, rate], net.dtype), np.int32(self._iter),
                net._carried_state(seg))
        if self._fused[3] is None or self._fused[3][2] != spec:     # first call, or reshaped
            self._compile_fused(params, spec, rest)
        state = self._history_state()
        recycled = (self._recycled((params, state, data_in, extra, loss_w, top_diffs))
                    if self._fused[3][1] else [])
        out = self._fused[1](params, state, recycled, spec, *rest)
        new_params, state, values, norm, outputs, loss, carried = out
        net._keep_state(carried)
        self._set_history_state(state)
        written, saved, diffs = outputs.restore(rest[:4])
        self._set_params_and_diffs(new_params, values, state, self._diff_is_history, rate,
                                   self._iter)
        # (blobs computed channels-last come back held so, and are reordered when read)
        once = {}           # id(value): its ReorderOnce (values under several names)
        for name, value in written.items():
            blobs[name].set_device_data(value, once.setdefault(id(value), engine.ReorderOnce())
                                        if name in last else None)
        net._saved.update(saved)
        for name, value in diffs.items():
            blobs[name].set_device_diff(value, once.setdefault(id(value), engine.ReorderOnce())
                                        if name in last_diffs else None)
        net._forward_count = count0 + self.param.iter_size
        for slot in tail:       # metrics and monitors at the end, on this pass's blobs
            net._forward_host(slot)
        return loss, self._after_fused(rate, display, norm)

    def _steady_plan(self, seg, run):
        """The layers of ``run`` reshaped for the blobs' shapes (Caffe reshapes before
        every forward), and what a fused step over ``seg`` derives from those shapes:
        (its static spec, the backward's data and diff names, the blobs and diffs it
        leaves channels-last). Derived again only after a blob's shape changed
        (blob.shape_epoch): a data layer's new batch shape, a user's reshape. Each step
        did it all: 2.7 of the 6.6 ms of Python around a ResNet-50 step's call (batch 2,
        a 2-core VM), which a GPU's step waits for."""
        key = (seg, seg.channels_last)
        if self._steady is not None and self._steady[0] == key + (shape_epoch(),):
            return self._steady[1]
        self.net._reshape_run(run)
        _, data_names, diff_names, _, _ = seg.backward_plan()
        plan = (self._recycle_spec(seg), data_names, diff_names, seg.last_writes(),
                seg.last_diffs())
        self._steady = (key + (shape_epoch(),), plan)
        return plan

    def _recycle_spec(self, seg):
        """The shape and dtype each blob and diff a fused step over ``seg`` rewrites gets
        (what set_device would give it), as the step's static argument: ((name, shape,
        dtype), ...) of every blob its forward writes, then of every diff its backward
        writes."""
        blobs = self.net.blobs
        return tuple(tuple((name, tuple(blobs[name].shape), np.dtype(blobs[name].dtype).str)
                           for name in names)
                     for names in (seg.writes, seg.backward_plan()[3]))

    def _jit_fused(self, seg, stacked):
        """The compiled step. Donated (XLA writes the results into their buffers): the
        params and solver history, updated in place (no second copy of every weight and
        momentum), and the last step's arrays of the blobs, diffs and residuals this step
        rewrites, which become this step's (the history as (packed, loose):
        jcaffe.packed_history). That is Caffe's own memory use (its blobs are
        overwritten in place); without it the previous step's blobs (CaffeNet, batch 32:
        218 MB) stayed resident beside the new ones for the whole step. The blobs, diffs
        and residuals come back as an :class:`engine.Distinct`, each value once."""
        fused = self._trace_fused(seg, stacked, share_history=True)

        # A jit of its own, so that the step's two traces in _compile_fused (the layout
        # probe's, with no buffers to recycle, then the call's, with them) trace the
        # iteration once: the second finds the first's in jit's cache (GoogLeNet: 0.45 s
        # of its first call). XLA inlines the call; the program is the same.
        @functools.partial(jax.jit, static_argnums=(2,))
        def iteration(params, history, spec, *rest):
            out = list(fused(params, self._layout.unpack(history), *rest))
            out[1] = self._layout.pack(out[1])
            for k, like in zip((4, 6), spec):       # written blobs, their diffs
                like = {name: (shape, dtype) for name, shape, dtype in like}
                out[k] = {name: jnp.reshape(v, like[name][0]).astype(like[name][1])
                          for name, v in out[k].items()}
            outputs = engine.Distinct.of(tuple(out[4:7]), rest[:4])
            return tuple(out[:4]) + (outputs, out[7], out[8])

        def step(params, history, recycled, spec, *rest):
            # ``recycled``: only its buffers are used, as the outputs' (_recycled).
            return iteration(params, history, spec, *rest)
        options = self.fused_compiler_options
        if options is None:
            options = xla_options.cpu_options(**self.CPU_COMPILER_OPTIONS)
        return jax.jit(step, donate_argnums=(0, 1, 2), static_argnums=(3,), keep_unused=True,
                       compiler_options=options or None)

    def _recycled(self, inputs):
        """The arrays to donate as the buffers of this step's blobs, diffs and residuals
        (see _jit_fused), one per distinct value the step returns: the last step's array
        at one of its places, taken from its blob (or the net's residuals), or zeros where
        none is left to give (the first step, a pending blob, an array that is also one
        of the step's ``inputs``, an array given already). Every array at the step's
        places is taken: they are all rewritten."""
        plan = self._recycle_places()
        keep = {id(a) for a in jax.tree_util.tree_leaves(inputs)}
        found = []          # (position among the step's outputs, array), in place order
        for take, pos in plan["blobs"]:
            value = take(keep)
            if value is not None:
                found.append((pos, value))
        # the last residuals, where their structure is this step's (not after a net.forward()
        # of another shape); donated, so this step's replace them
        saved = self.net._saved
        current = {index: saved.pop(index, None) for index in plan["saved_at"]}
        if jax.tree_util.tree_structure(current) == plan["saved_structure"]:
            for pos, value in zip(plan["saved_positions"], jax.tree_util.tree_leaves(current)):
                if isinstance(value, jax.Array) and id(value) not in keep:
                    found.append((pos, value))
        # each distinct value gets the first array found at its places (by position)
        found.sort(key=lambda item: item[0])
        avals, value_of = plan["avals"], plan["value_of"]
        given = [None] * len(avals)
        taken = keep
        for pos, value in found:
            k = value_of[pos]
            if k < 0 or given[k] is not None or id(value) in taken or value.is_deleted():
                continue
            like = avals[k]
            if value.shape == like.shape and value.dtype == like.dtype:
                given[k] = value
                taken.add(id(value))
        return [value if value is not None else device_zeros(like.shape, like.dtype)
                for value, like in zip(given, avals)]

    def _diff_sources(self, diff_is_history):
        """For each param, where a step's result holds its new diff when that is one of
        its new history arrays (``diff_is_history``, a compiled program's: the fused
        step's ``_diff_is_history``, the update's ``_update_diff_is_history``): the
        loose history's (slot, index), or the packed array's View; None where the diff
        is returned apart. Found once per such list."""
        if self._diff_places is not None and self._diff_places[0] is diff_is_history:
            return self._diff_places[1]
        layout = self._layout
        loose_index = {i: j for j, i in enumerate(layout.loose_ids)}

        def place(k, i):
            return layout.view(k, i) if layout.is_packed(i) else (k, loose_index[i])
        places = []
        for i, k in enumerate(diff_is_history):
            if k is None:
                places.append(None)
            elif k == DERIVED:      # every history array of the param
                places.append([place(j, i) for j in range(self._rule.num_history)])
            else:
                places.append(place(k, i))
        self._diff_places = (diff_is_history, places)
        return places

    def _set_params_and_diffs(self, new_params, values, state, diff_is_history, rate, t):
        """Each param's new data, and its new diff: the update value, or where
        ``diff_is_history`` names a slot, its new history array in ``state``, or where it
        says DERIVED, the value computed from the history when read (UpdateValue; ``rate``
        and ``t``, the update's learning rate and iteration)."""
        packed, loose = state
        lr_mults = self._update.lr_mults
        local_rates = {}    # (lr_mult, dtype): rate x lr_mult, once per step (not per param)
        for i, (blob, value, diff, place) in enumerate(zip(
                self.net._learnable, new_params, values, self._diff_sources(diff_is_history))):
            blob.set_device_data(value)
            if diff is not None:
                blob.set_device_diff(diff)
            elif isinstance(place, list):       # DERIVED
                key = (lr_mults[i], blob.dtype)
                if key not in local_rates:
                    local_rates[key] = np.asarray(rate, key[1]) * np.asarray(key[0], key[1])
                blob.set_device_diff_view(state, UpdateValue(
                    self._value_from_history, place, local_rates[key], np.int32(t)))
            elif isinstance(place, View):       # its new history, inside the packed array
                blob.set_device_diff_view(packed, place)
            else:
                blob.set_device_diff(loose[place[0]][place[1]])

    def _recycle_places(self):
        """What _recycled reads at every step, found once per compiled step: the blobs'
        and diffs' take methods with the positions of their values among the step's
        outputs, the residuals' places and structure. (Found at each step, they were a
        sixth of _recycled's 1 ms in a ResNet-50 step, batch 2: benchmarks/bench_host.py,
        whose steps on a GPU wait for it.)"""
        compiled = self._fused[3]
        if self._recycle_plan is not None and self._recycle_plan[0] is compiled:
            return self._recycle_plan[1]
        layout, avals, _ = compiled
        written, saved_at, diffs = layout.positions()
        blobs = self.net.blobs
        plan = {"blobs": [(blobs[name].take_device_data, pos) for name, pos in written.items()]
                + [(blobs[name].take_device_diff, pos) for name, pos in diffs.items()],
                "saved_at": saved_at,
                "saved_structure": jax.tree_util.tree_structure(saved_at),
                "saved_positions": jax.tree_util.tree_leaves(saved_at),
                "avals": avals, "value_of": layout.layout[1]}
        self._recycle_plan = (compiled, plan)
        return plan

    def _compile_fused(self, params, spec, rest):
        """The first call of a fused step: the layout of its outputs (one trace with no
        buffers given, about 0.2 s for CaffeNet), then its compile (jit keeps it for the
        call), with every donated buffer still abstract; the second trace reuses the
        first's trace of the iteration (_jit_fused). The first step's zero buffers
        (CaffeNet, batch 32: about 300 MB) are made after it: made before, they sat under
        the compiler's own heap (about 350 MB), and that was the process's peak."""
        seg, fn, stacked, _ = self._fused
        started, loaded = time.perf_counter(), compile_cache.stats()["hits"]
        state = self._history_state()
        layout = fn.trace(params, state, [], spec, *rest).out_info[4]
        avals = ([jax.ShapeDtypeStruct(a.shape, a.dtype) for a in layout.values]
                 if self.recycle_buffers else [])
        fn.trace(params, state, avals, spec, *rest).lower().compile()
        self._fused = (seg, fn, stacked, (layout, avals, spec))
        # Caffe has no such pause: say what the first iteration's time went to.
        cached = compile_cache.stats()["hits"] > loaded
        log.info("%s the training step (forward, backward and update of %d layers, one XLA "
                 "program)%s in %.1f s", "Loaded" if cached else "Compiled", len(seg.slots),
                 " from the compilation cache" if cached else "", time.perf_counter() - started)

    def _after_fused(self, rate, display, norm):
        def after():   # what ApplyUpdate logs, after Step's display lines
            self._log_rate(rate, display)
            self._log_clip(norm)
            self._iter += 1
        return after

    def _deferred_pids(self, seg):
        """The params a fused step over ``seg`` updates by blocks of rows, their diffs
        never whole (jcaffe.engine.RowBlocks): big ones (``row_blocks_min_bytes``) that
        one layer alone computes, by rows. Not with data-parallel training, iter_size > 1
        or clip_gradients, which need each whole diff, nor with a rule whose update value
        needs the diff itself (SGD and Adam have values from their history alone), nor
        off the CPU backend (see row_blocks_min_bytes)."""
        limit = self.row_blocks_min_bytes
        if (limit is None or jax.default_backend() != "cpu" or self.parallel is not None
                or self.param.iter_size != 1
                or self.param.clip_gradients >= 0
                or not getattr(self._rule, "value_from_history", None)):
            return frozenset()
        learnable = self.net._learnable
        return frozenset(pid for pid in seg.deferrable()
                         if learnable[pid].count * np.dtype(learnable[pid].dtype).itemsize
                         >= limit)

    def _updates_in_order(self):
        """Whether a fused step updates each param inside the backward, as soon as its
        diff is complete (jcaffe.engine, "the backward's order"): not with
        clip_gradients (its norm needs every diff first), iter_size > 1 (every pass
        first) or data-parallel training (the gradients' mean over the devices)."""
        return (self.update_in_backward and self.parallel is None
                and self.param.clip_gradients < 0 and self.param.iter_size == 1)

    def _trace_fused(self, seg, stacked=(), share_history=False):
        """The pure function of one training iteration over the segment ``seg``.

        Under data-parallel training (``self.parallel``) it runs on every device
        inside ``shard_map`` and its collective hooks apply: ``mean`` averages the
        gradients (Caffe's all-reduce, divided by the solver count), the loss and
        params that forward updates (BatchNorm statistics) over the devices;
        ``vary`` marks the accumulators of the ``iter_size`` loop as per-device.
        ``stacked``: input blobs holding one batch per iter_size pass (data layers).
        ``state``, its last argument: the state the recurrent layers carry in (see
        engine.Segment.trace_forward; under data-parallel training each device's own;
        None: zeros), from pass to pass; the function returns it last.
        ``share_history``: where a param's update value is one of its new history
        arrays (SGD: the momentum), return it once, as history, and leave None in
        its place among the values (``self._diff_is_history[i]`` names the slot):
        XLA would otherwise write a second copy of every momentum (CaffeNet: 233 MB
        per step). The param diff then shares the history's array; the next fused
        step donates it, and replaces the diff."""
        _, data_names, _, _, pids = seg.backward_plan()
        iter_size = self.param.iter_size
        update = self._update
        n = len(self.net._learnable)
        deferred = self._deferred_pids(seg)
        mean = self.parallel.mean if self.parallel is not None else (lambda tree: tree)
        vary = self.parallel.vary if self.parallel is not None else (lambda tree: tree)

        def one(k, params, pdiffs, data_in, extra, loss_w, top_diffs, base_key, count0,
                state, probes=None, in_order=None):
            if stacked:
                data_in = {name: value[k] if name in stacked else value
                           for name, value in data_in.items()}
            key = jax.random.fold_in(base_key, count0 + k + 1)
            seg_params = {pid: params[pid] for pid in seg.param_ids}
            written, saved, new_params, loss, state = seg.trace_forward(
                seg_params, data_in, loss_w, key, held=True, state=state)
            params = dict(params)
            params.update(mean(new_params))
            seg_params = {pid: params[pid] for pid in seg.param_ids}
            env = {**extra, **data_in, **written}
            bdata = {name: env[name] for name in data_names}
            diffs, pdiffs = seg.trace_backward(seg_params, bdata, top_diffs, saved, pdiffs,
                                               probes, deferred, held=True,
                                               update=in_order and in_order(params))
            if loss is None:
                loss = jnp.zeros((), self.net.dtype)
            return params, pdiffs, written, saved, diffs, loss, state

        def fused(params, history, data_in, extra, loss_w, top_diffs, base_key, count0, rate, t,
                  state=None):
            with engine.runtime_one(base_key):      # (values computed once: engine.materialize)
                return iteration(params, history, data_in, extra, loss_w, top_diffs, base_key,
                                 count0, rate, t, {} if state is None else state)

        def iteration(params, history, data_in, extra, loss_w, top_diffs, base_key, count0,
                      rate, t, state):
            params = dict(enumerate(params))
            pdiffs = {pid: jnp.zeros_like(params[pid]) for pid in pids}
            args = (data_in, extra, loss_w, top_diffs, base_key, count0)
            # (rate, rate): the donated step; each param's rate is made to depend on its
            # layers' data gradients (see _rate_after). With iter_size > 1 the passes run
            # in a loop that ends before any update, which orders them already.
            probes, done = None, {}
            if jnp.ndim(rate) == 1:
                if iter_size == 1 and n:
                    probes = {}
                else:
                    rate = rate[0]
            rate_after = _RatesAfter(rate)
            if probes is not None and self._updates_in_order():
                def in_order(params):   # the forward's params -> the backward's update
                    def update_param(pid, diff, probes):
                        done[pid] = update.one(pid, diff, [h[pid] for h in history],
                                               params[pid], rate_after(probes), t)
                        return done[pid][0]
                    return update_param
            else:
                in_order = None
            if iter_size == 1:
                carry = one(0, params, pdiffs, *args, state, probes=probes, in_order=in_order)
            else:   # one traced body, whatever iter_size is; each pass from the last's state
                def body(k, carry):
                    out = one(k, carry[0], carry[1], *args, carry[6])
                    return (out[0],) + vary(out[1:5] + (carry[5] + out[5],)) + (out[6],)
                shapes = jax.eval_shape(one, 0, params, pdiffs, *args, state)
                init = (params, vary(pdiffs)) + vary(jax.tree_util.tree_map(
                    lambda s: jnp.zeros(s.shape, s.dtype), shapes[2:6])) + (state,)
                carry = jax.lax.fori_loop(0, iter_size, body, init)
            params, pdiffs, written, saved, diffs, loss, state = carry
            loss = loss / jnp.asarray(iter_size, loss.dtype)
            grads = [pdiffs[pid] if pid in pdiffs else jnp.zeros_like(params[pid])
                     for pid in range(n)]
            grads, loss = mean((grads, loss))
            if probes is not None:
                # (a param updated in the backward has its rate: update() takes it as done)
                rate = [rate_after(() if pid in done else probes.get(pid, ()))
                        for pid in range(n)]
            new_params, new_hist, values, norm = update(
                grads, history, [params[pid] for pid in range(n)], rate, t, done)
            if share_history:   # decided while tracing: the same traced value, or not
                self._diff_is_history = _history_slots(new_hist, values, self._derived)
                values = [None if k is not None else v
                          for k, v in zip(self._diff_is_history, values)]
            return new_params, new_hist, values, norm, written, saved, diffs, loss, state

        return fused

    # ------------------------------------------------------------------
    # testing and display
    # ------------------------------------------------------------------
    def test_all(self):
        if self.parallel is not None and not self.parallel.is_root:
            return      # as in Caffe, only the root solver tests
        for i in range(len(self.test_nets)):
            if self._early_exit:
                break
            self.test(i)

    def test(self, test_net_id=0):
        """Run test net ``test_net_id`` for its test_iter batches; log the mean outputs."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self._iter, test_net_id)
        net = self.test_nets[test_net_id]
        scores, loss = None, 0.0
        for _ in range(p.test_iter[test_net_id]):
            request = self._requested_action()
            while request != NONE:
                if request == SNAPSHOT:
                    self.snapshot()
                elif request == STOP:
                    self._early_exit = True
                request = self._requested_action()
            if self._early_exit:
                break
            iter_loss = net._forward(0, len(net._slots) - 1)
            if p.test_compute_loss:
                loss += iter_loss
            values = np.concatenate([net.blobs[name].host_data().ravel().astype(np.float64)
                                     for name in net.outputs]) if net.outputs else np.zeros(0)
            scores = values if scores is None else scores + values
        if self._early_exit:
            log.info("Test interrupted.")
            return
        if p.test_compute_loss:
            log.info("Test loss: %g", loss / p.test_iter[test_net_id])
        if scores is not None:
            self._log_outputs(net, "Test", p.test_iter[test_net_id], scores)

    def _log_outputs(self, net, which, divisor, values=None):
        if values is None:
            values = [v for name in net.outputs for v in net.blobs[name].host_data().ravel()]
        idx = 0
        for name in net.outputs:
            weight = net.blob_loss_weights[name]
            for _ in range(net.blobs[name].count):
                score = float(values[idx]) / divisor
                extra = " (* %g = %g loss)" % (weight, weight * score) if weight else ""
                log.info("    %s net output #%d: %s = %g%s", which, idx, name, score, extra)
                idx += 1

    # ------------------------------------------------------------------
    # snapshots
    # ------------------------------------------------------------------
    def _snapshot_filename(self, extension, iter=None):
        return "%s_iter_%d%s" % (self.param.snapshot_prefix, self._iter if iter is None else iter,
                                 extension)

    def snapshot(self):
        """Write <prefix>_iter_N.caffemodel and <prefix>_iter_N.solverstate (atomically;
        ``.caffemodel.h5`` / ``.solverstate.h5`` with snapshot_format: HDF5); return both
        file names. Under multi-process training only process 0 writes (and returns
        None elsewhere): every process holds the same params and history."""
        if self.parallel is not None and not self.parallel.is_root:
            return None
        if self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            return self._snapshot_hdf5()
        model = self._snapshot_filename(".caffemodel")
        log.info("Snapshotting to binary proto file %s", model)
        self.net.save(model, write_diff=self.param.snapshot_diff)
        state = caffe_pb2.SolverState(iter=self._iter, learned_net=model,
                                      current_step=self.current_step)
        double = self.net.dtype == np.float64
        for h in self.history:
            state.history.add().CopyFrom(protoio.array_to_blobproto(h, double=double))
        state_file = self._snapshot_filename(".solverstate")
        log.info("Snapshotting solver state to binary proto file %s", state_file)
        protoio.write_binary(state, state_file)
        return model, state_file

    def _snapshot_hdf5(self):
        model = self._snapshot_filename(".caffemodel.h5")
        log.info("Snapshotting to HDF5 file %s", model)
        hdf5.save_net(self.net, model, write_diff=self.param.snapshot_diff)
        state_file = self._snapshot_filename(".solverstate.h5")
        log.info("Snapshotting solver state to HDF5 file %s", state_file)
        hdf5.save_solver_state(state_file, self._iter, self.current_step, model,
                               [np.asarray(h) for h in self.history])
        return model, state_file

    def restore(self, state_file):
        """Resume from a .solverstate (or .solverstate.h5): iter, current_step, history and
        the learned_net weights (read as named, or relative to the .solverstate's directory)."""
        state_file = os.fspath(state_file)
        if state_file.endswith(".h5"):
            iter_, current_step, learned_net, arrays = hdf5.load_solver_state(state_file)
        else:
            state = protoio.read_binary(state_file, caffe_pb2.SolverState)
            iter_, current_step = state.iter, state.current_step
            learned_net = state.learned_net if state.HasField("learned_net") else None
            arrays = [protoio.blobproto_to_array(proto) for proto in state.history]
        learnable = self.net._learnable
        needed = self._rule.num_history * len(learnable)
        if len(arrays) != needed:
            raise SolverError("%s: Incorrect length of history blobs: the file has %d, the %s solver "
                              "for net '%s' needs %d (%d per learnable param)"
                              % (state_file, len(arrays), self._rule.type_name,
                                 self.net.name, needed, self._rule.num_history))
        history = []
        for i, arr in enumerate(arrays):
            blob = learnable[i % len(learnable)]
            if arr.size != blob.count:
                raise SolverError("%s: history blob %d has %d values, param %d of the net has shape "
                                  "%s" % (state_file, i, arr.size, i % len(learnable),
                                          blob.shape_string()))
            history.append(jnp.asarray(arr.reshape(blob.shape), self.net.dtype))
        if learned_net:
            self.net.copy_from(self._learned_net_path(learned_net, state_file))
        n = len(learnable)
        self._history = tuple(tuple(history[k * n:(k + 1) * n])
                              for k in range(self._rule.num_history))
        self._iter = iter_
        self.current_step = current_step
        self.net._forward_count = self._iter * self.param.iter_size
        log.info("%sSolver: restoring history", self._rule.type_name)

    @staticmethod
    def _learned_net_path(name, state_file):
        folder = os.path.dirname(os.path.abspath(state_file))
        for candidate in (name, os.path.join(folder, name), os.path.join(folder, os.path.basename(name))):
            if os.path.exists(candidate):
                return candidate
        raise ProtoFileError("%s: learned_net '%s' does not exist (looked in the current directory "
                             "and beside the .solverstate)" % (state_file, name))


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _solver_class(type_name):
    cls = type(type_name + "Solver", (Solver,), {"type_name": type_name, "__doc__":
                                                 "pycaffe's %sSolver(path)." % type_name})
    cls.__module__ = __name__
    return cls


SGDSolver = _solver_class("SGD")
NesterovSolver = _solver_class("Nesterov")
AdaGradSolver = _solver_class("AdaGrad")
RMSPropSolver = _solver_class("RMSProp")
AdaDeltaSolver = _solver_class("AdaDelta")
AdamSolver = _solver_class("Adam")

SOLVER_CLASSES = {c.type_name: c for c in (SGDSolver, NesterovSolver, AdaGradSolver,
                                           RMSPropSolver, AdaDeltaSolver, AdamSolver)}


def get_solver(source, _source_path=None, devices=None):
    """The solver of the type the parameter names (pycaffe's get_solver).

    ``devices`` switches on data-parallel training (``jcaffe.parallel``):
    ``"all"``, a device count (``4``) or a list of local device ids
    (``[0, 1]``, ``"0,1"``), as ``caffe train -gpu``; ``batch_size`` stays per
    device, so the effective batch is (number of devices) x batch_size."""
    param, _ = _read_solver_param(source)
    if param.type not in SOLVER_CLASSES:
        rule_for(param)     # raises, listing the known types
    return SOLVER_CLASSES[param.type](source, _source_path, devices=devices)
