"""Data-parallel training over devices and hosts, on JAX's own SPMD machinery.

Caffe's ``caffe train -gpu 0,1,2,3`` ran one solver per GPU and all-reduced
the gradients with NCCL. jcaffe runs the solver's fused iteration (forward,
backward, ``iter_size`` accumulation, regularization and update: see
``Solver._trace_fused``) on every device of a ``jax.sharding.Mesh`` under
``jax.shard_map``; the gradients are averaged across devices (``pmean``)
inside that one compiled call, so the update is the same on every device and
the params stay identical everywhere (checked by shard_map's replication
typing: params leave the step replicated, never per device).

Switch it on with ``jcaffe.get_solver(path, devices=...)`` (or
``SGDSolver(path, devices=...)``, ``jcaffe train -gpu all | -gpu 0,1 |
-devices N``); ``solver.parallel`` is then the :class:`DataParallel` object.
For several hosts (or processes), call :func:`init_distributed` first, in every
process, before any net or solver exists.

What each device sees (Caffe's semantics: ``batch_size`` is per device, so
the effective batch is N x batch_size):

* **Data source layers** (host layers without bottoms at the start of the net:
  Python data layers, and the DB/memory data layers) run once per local device
  per iteration: device k of a process gets the k-th consecutive batch. With
  one process this is exactly the batch order of a one-device run with batch
  N x batch_size. Every layer of the train net that defines
  ``set_shard(rank, count)`` is told ``(process index, process count)`` before
  training, so that each process reads its own disjoint part of the data.
* **Input layers**: the net's Input blob holds the process's whole batch, its
  first axis N_local x the prototxt's (the solver reshapes it at start); a
  pycaffe script fills ``solver.net.blobs['data'].data[...]`` as before and
  device k gets rows ``k*b .. (k+1)*b``. A first axis not divisible by the
  local device count is an error. 0-d Input blobs are replicated.
* **DummyData** runs on every device with that device's own random key (device
  0 uses the net's key, device r the key folded with r); constant fillers give
  every device the same values.
* **MemoryData**: a source layer like the others (each local device takes the
  next batch of the arrays given to ``set_input_arrays``).
* **Recurrent layers** carry their state (h_T into the next forward's h_0, as
  in Caffe) per device: each device's streams go on from that device's last
  batch, as each of Caffe's solvers carried its own; the root device's state
  is the net's (``layer.hidden_state``). An Input blob is split along its
  first axis, which for a recurrent net's (T, N, ...) inputs is time (a
  warning says so at setup): feed such nets through a data source layer,
  which gives each device a whole batch of its own.

After a step the solver's net shows the root device's (this process's first
device's) blobs, and the mean loss over all devices; params and solver history
are identical on every device. Test nets run on the root device of process 0
only, and only process 0 writes snapshots; a snapshot holds nothing
device-specific, so it restores on any device count (in a multi-process run every
process calls ``restore`` on the same file, which must be readable by all of them).

Limits: the whole compute path must be one compiled segment (Python layers
only as sources at the bottom, no net hooks, no ``add_callback``); with source
layers ``iter_size`` must be 1.
"""
import logging
import os
import socket
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import common, xla_options
from .errors import DeviceError

log = logging.getLogger("jcaffe")

AXIS = "data"
ENV_COORDINATOR = "JCAFFE_COORDINATOR"
ENV_NUM_PROCESSES = "JCAFFE_NUM_PROCESSES"
ENV_PROCESS_ID = "JCAFFE_PROCESS_ID"
ENV_TIMEOUT = "JCAFFE_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT = 60.0

_FORCE_HINT = ("(to simulate N CPU devices, start the process with "
               "XLA_FLAGS=--xla_force_host_platform_device_count=N)")

_distributed = {}      # the arguments init_distributed succeeded with


# ----------------------------------------------------------------------------
# several processes: jax.distributed
# ----------------------------------------------------------------------------
def _int_setting(value, env, what):
    if value is None or value == "":
        value = os.environ.get(env, "")
        if value == "":
            return None
        where = "environment variable %s" % env
    else:
        where = what
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DeviceError("%s must be an integer, got %r" % (where, value)) from None


def _split_address(coordinator):
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeviceError("coordinator address must be host:port (e.g. 10.0.0.1:1234), got '%s'"
                          % coordinator)
    return host.strip("[]"), int(port)


def _wait_for_coordinator(host, port, timeout, coordinator):
    """Connect to the coordinator's port for up to ``timeout`` s; a clear error if it never
    opens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            raise DeviceError(
                "the coordinator %s is not reachable (%s) after waiting %.0f s: start process 0 "
                "(-process_id 0) with the same -coordinator address, check host and port, or wait "
                "longer (-distributed_timeout / %s)"
                % (coordinator, last.strerror or last, timeout, ENV_TIMEOUT))
        time.sleep(0.2)


def init_distributed(coordinator=None, num_processes=None, process_id=None, timeout=None):
    """Join a multi-process run (several hosts, or several processes on one host) through
    ``jax.distributed.initialize``; returns True when running multi-process, False when
    nothing was asked for.

    Each argument falls back to an environment variable: ``JCAFFE_COORDINATOR``
    (``host:port`` of process 0), ``JCAFFE_NUM_PROCESSES``, ``JCAFFE_PROCESS_ID``,
    ``JCAFFE_DISTRIBUTED_TIMEOUT`` (seconds, default 60). Call it in every process
    before any net or solver is built. CPU devices use gloo collectives.

    The wait is bounded: a process other than 0 first checks that the coordinator's
    port opens within ``timeout`` (a :class:`DeviceError` if not); if the processes do
    not all join within ``timeout``, the process prints why and exits with status 1
    (JAX's runtime would otherwise abort it with a C++ stack trace).
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = _int_setting(num_processes, ENV_NUM_PROCESSES, "num_processes")
    process_id = _int_setting(process_id, ENV_PROCESS_ID, "process_id")
    if timeout is None or timeout == "":
        timeout = os.environ.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT
    try:
        timeout = float(timeout)
    except ValueError:
        raise DeviceError("the distributed timeout must be a number of seconds, got %r"
                          % timeout) from None
    if coordinator is None and num_processes is None and process_id is None:
        return False
    args = (coordinator, num_processes, process_id)
    if _distributed.get("args") is not None:
        if _distributed["args"] == args:
            return True
        raise DeviceError("init_distributed was already called with coordinator=%s "
                          "num_processes=%s process_id=%s" % _distributed["args"])
    missing = [name for name, v in zip(("coordinator (-coordinator / %s)" % ENV_COORDINATOR,
                                        "num_processes (-num_processes / %s)" % ENV_NUM_PROCESSES,
                                        "process_id (-process_id / %s)" % ENV_PROCESS_ID), args)
               if v is None]
    if missing:
        raise DeviceError("a multi-process run needs the coordinator address, the process count "
                          "and this process's id; missing: %s" % ", ".join(missing))
    if num_processes < 1:
        raise DeviceError("num_processes must be at least 1, got %d" % num_processes)
    if not 0 <= process_id < num_processes:
        raise DeviceError("process_id must be in 0..%d (num_processes %d), got %d"
                          % (num_processes - 1, num_processes, process_id))
    if timeout <= 0:
        raise DeviceError("the distributed timeout must be positive, got %g s" % timeout)
    host, port = _split_address(coordinator)
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        raise DeviceError("init_distributed must be called before JAX starts its devices (before "
                          "building any net or solver, or calling jax.devices())")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    deadline = time.monotonic() + timeout
    if process_id != 0:
        log.info("Waiting for the coordinator %s (up to %.0f s)", coordinator, timeout)
        _wait_for_coordinator(host, port, timeout, coordinator)
    remaining = max(deadline - time.monotonic(), 1.0)
    log.info("Joining the distributed run: process %d of %d, coordinator %s", process_id,
             num_processes, coordinator)
    done = threading.Event()

    def watchdog():
        if not done.wait(remaining):
            sys.stderr.write(
                "jcaffe: DeviceError: the distributed run did not start within %.0f s: process %d "
                "of %d could not register with the coordinator %s and the other processes (are all "
                "%d processes started with the same -coordinator and distinct -process_id?). "
                "Exiting.\n" % (timeout, process_id, num_processes, coordinator, num_processes))
            sys.stderr.flush()
            os._exit(1)

    thread = threading.Thread(target=watchdog, name="jcaffe-distributed-watchdog", daemon=True)
    thread.start()
    try:
        jax.distributed.initialize(coordinator, num_processes=num_processes,
                                   process_id=process_id,
                                   initialization_timeout=int(remaining) + 30,
                                   shutdown_timeout_seconds=int(timeout) + 30)
    except RuntimeError as e:
        raise DeviceError("jax.distributed.initialize failed (coordinator %s, process %d of %d): %s"
                          % (coordinator, process_id, num_processes, e)) from e
    finally:
        done.set()
    _distributed["args"] = args
    common.set_multiprocess(num_processes > 1)
    log.info("Distributed run started: process %d of %d, %d device(s) in all, %d here",
             jax.process_index(), jax.process_count(), jax.device_count(),
             jax.local_device_count())
    return True


# ----------------------------------------------------------------------------
# which devices
# ----------------------------------------------------------------------------
def _describe(devices):
    return "%d device(s): %s" % (len(devices), ", ".join(str(d) for d in devices))


def resolve_devices(spec):
    """This process's devices for ``spec``: "all" (or None), a count ``N`` (the first N),
    a list of local device ids (``[0, 1]`` or ``"0,1"``) or of ``jax.Device`` objects."""
    local = jax.local_devices()
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(local)
    if isinstance(spec, bool):
        raise DeviceError("devices must be 'all', a count or a list of device ids, got %r" % spec)
    if isinstance(spec, (int, np.integer)):
        if not 1 <= spec <= len(local):
            raise DeviceError("asked for %d device(s); this process sees %s %s"
                              % (spec, _describe(local), _FORCE_HINT))
        return list(local[:int(spec)])
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        try:
            spec = [int(p) for p in parts]
        except ValueError:
            raise DeviceError("bad device list '%s': give 'all' or device ids separated by ',' "
                              "(e.g. 0,1)" % ",".join(parts)) from None
    chosen = []
    for item in spec:
        if isinstance(item, jax.Device):
            if item not in local:
                raise DeviceError("device %s is not one of this process's %s"
                                  % (item, _describe(local)))
            device = item
        else:
            if not 0 <= int(item) < len(local):
                raise DeviceError("device %s does not exist; this process sees %s %s"
                                  % (item, _describe(local), _FORCE_HINT))
            device = local[int(item)]
        if device in chosen:
            raise DeviceError("device %s is listed twice" % item)
        chosen.append(device)
    if not chosen:
        raise DeviceError("the device list is empty")
    return chosen


def data_parallel_for(solver, devices):
    """The solver's DataParallel, or None for ordinary one-device training. Under a
    multi-process run a solver without ``devices`` uses all local devices."""
    if devices is None and jax.process_count() == 1:
        return None
    return DataParallel(solver, devices)


# ----------------------------------------------------------------------------
# the data-parallel step
# ----------------------------------------------------------------------------
class DataParallel:
    """Data-parallel training state of one solver: the mesh, the device-local inputs,
    the compiled shard_map step. ``solver.parallel``; made by the Solver."""

    def __init__(self, solver, devices):
        self.solver = solver
        self.local_devices = resolve_devices(devices)
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.is_root = self.process_index == 0
        self.devices = self._global_devices()
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.num_devices = len(self.devices)
        self.num_local = len(self.local_devices)
        self.root = self.local_devices[0]
        self.ranks = [self.devices.index(d) for d in self.local_devices]
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._split = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self._compiled = None           # (segment, jitted step)
        self._keys = None               # (net base key, per-device keys)
        self._cache = {}                # id(root copy) -> (root copy, global replicated array)
        self._copies = {}               # id(blob value) -> (value, its copy on every device)
        self._state = {}                # layer index -> (its state's shapes, per-device arrays)
        common.set_solver_count(self.num_devices)
        net = solver.net
        self.sources, _ = self._plan()
        self.split_inputs = self._grow_inputs()
        for slot in net._slots:
            set_shard = getattr(slot.layer, "set_shard", None)
            if callable(set_shard):
                set_shard(self.process_index, self.process_count)
                log.info("Source layer %s reads shard %d of %d", slot.layer.name,
                         self.process_index, self.process_count)
        if self.process_count > 1:
            self._sync_from_root()
        if self.num_devices > 1:
            self._warn_time_split()
        batch = ", ".join("%s %s" % (name, net.blobs[name].shape[0]) for name in self.split_inputs)
        log.info("Data-parallel training on %d device(s) (%d process(es) x %d): %s; each device "
                 "runs the net's own batch, the effective batch is %d x it%s",
                 self.num_devices, self.process_count, self.num_local,
                 ", ".join(str(d) for d in self.local_devices), self.num_devices,
                 "; Input blobs hold this process's whole batch (%s rows)" % batch if batch else "")

    # -- setup -------------------------------------------------------------------
    def _warn_time_split(self):
        """A recurrent layer whose ``cont`` comes from a split Input blob gets the
        devices' rows of (T, N): timesteps, not streams. Say so: Caffe's solvers each
        read whole sequences of their own streams."""
        split = set(self.split_inputs)
        for slot in self.solver.net._slots:
            if slot.layer.type in ("RNN", "LSTM") and slot.bottoms[1] in split:
                log.warning(
                    "Data-parallel training: %s layer '%s' reads its sequence indicators "
                    "('%s', #timesteps x #streams) from Input blobs, which the devices split "
                    "along their first axis: each device gets timesteps of all streams, not "
                    "sequences of its own as each of Caffe's solvers read. Feed the net from "
                    "a data source layer (each device its own batch) instead.",
                    slot.layer.type, slot.layer.name, slot.bottoms[1])
            if any(b in split for b in slot.bottoms):
                split.update(slot.tops)

    def _global_devices(self):
        """The mesh: the same local positions on every process, process by process."""
        local_all = jax.local_devices()
        positions = [local_all.index(d) for d in self.local_devices]
        if self.process_count == 1:
            return list(self.local_devices)
        from jax.experimental import multihost_utils
        try:
            multihost_utils.assert_equal(np.asarray(positions, np.int32),
                                         "processes chose different local devices")
        except AssertionError as e:
            raise DeviceError("every process must train on the same number of local devices at the "
                              "same positions (this process: %s): %s" % (positions, e)) from None
        by_process = {}
        for d in jax.devices():
            by_process.setdefault(d.process_index, []).append(d)
        return [by_process[p][i] for p in sorted(by_process) for i in positions]

    def _plan(self):
        """(source slots, the compiled run): leading host layers without bottoms, then
        one run of compiled layers; anything else cannot run data parallel."""
        solver, net = self.solver, self.solver.net
        if solver._callbacks:
            raise DeviceError("data-parallel training does its own gradient all-reduce; "
                              "solver.add_callback is not supported with devices=...")
        if not solver.fuse_step:
            raise DeviceError("data-parallel training needs the fused step (solver.fuse_step is "
                              "False)")
        if any(net._hooks.values()):
            raise DeviceError("data-parallel training runs the whole net as one compiled step: net "
                              "hooks (before_forward/after_forward/...) are not supported")
        runs = net._runs(0, len(net._slots) - 1)
        sources = []
        while runs and runs[0][0].layer.is_host and not runs[0][0].bottoms:
            sources.append(runs.pop(0)[0])
        if len(runs) != 1 or runs[0][0].layer.is_host:
            host = [r[0].layer for r in runs if r[0].layer.is_host]
            what = ("Python layer '%s' (%s) reads bottom blobs" % (
                host[0].name, getattr(host[0], "python_class", type(host[0]).__name__))
                if host else "the net has no compiled layers")
            raise DeviceError("data-parallel training runs the whole net as one compiled step on "
                              "every device, and %s; host (Python) layers are allowed only as data "
                              "sources without bottoms at the start of the net" % what)
        fed = sources + [slot for slot in runs[0] if getattr(slot.layer, "is_source", False)]
        if fed and solver.param.iter_size != 1:
            raise DeviceError("data-parallel training with data layers (%s) needs "
                              "iter_size: 1 (got %d); raise batch_size or the device count instead"
                              % (", ".join(s.layer.name for s in fed), solver.param.iter_size))
        return sources, runs[0]

    def _grow_inputs(self):
        """Input blobs: first axis x the local device count (the process's whole batch)."""
        net, names = self.solver.net, []
        _, run = self._plan()
        for slot in run:
            if slot.layer.forward_writes_tops or getattr(slot.layer, "is_source", False):
                continue     # data layers (Data, ImageData, ...) fill one batch per device
            for name in slot.tops:
                blob = net.blobs[name]
                if blob.num_axes >= 1 and name not in names:
                    blob.reshape((blob.shape[0] * self.num_local,) + tuple(blob.shape[1:]))
                    names.append(name)
        return names

    def _sync_from_root(self):
        """Process 0's params and random key everywhere (Caffe broadcasts the root's
        weights to the other solvers before training)."""
        from jax.experimental import multihost_utils
        net = self.solver.net
        values = [b.host_data() for b in net._learnable] + [np.asarray(net._base_key)]
        synced = multihost_utils.broadcast_one_to_all(values, is_source=self.is_root)
        for blob, value in zip(net._learnable, synced[:-1]):
            blob.data[...] = value
        net._base_key = jnp.asarray(synced[-1], dtype=net._base_key.dtype)

    # -- collectives used inside Solver._trace_fused --------------------------------
    @staticmethod
    def mean(tree):
        """The mean over all devices (Caffe's all-reduce then division by the solver count)."""
        return jax.lax.pmean(tree, AXIS)

    @staticmethod
    def vary(tree):
        """Mark values as per-device (loop carries that become device-dependent)."""
        def one(x):
            aval = jax.typeof(x)
            mat = getattr(aval, "mat", None)     # the per-device typing (older JAX: aval.vma)
            varying = mat.varying if mat is not None else getattr(aval, "vma", frozenset())
            if AXIS in varying:
                return x
            if hasattr(jax.lax, "pcast"):
                return jax.lax.pcast(x, AXIS, to="varying")
            return jax.lax.pvary(x, AXIS)         # JAX before pcast
        return jax.tree_util.tree_map(one, tree)

    # -- host <-> mesh ---------------------------------------------------------------
    def _global_from_parts(self, parts):
        """One global array (split along axis 0 of the mesh) from one array per local
        device, each of the same shape; 0-d parts travel as shape (1,)."""
        parts = [p if np.ndim(p) else np.reshape(p, (1,)) if isinstance(p, np.ndarray)
                 else jnp.reshape(p, (1,)) for p in parts]
        shape = tuple(np.shape(parts[0]))
        for p in parts[1:]:
            if tuple(np.shape(p)) != shape:
                raise DeviceError("the devices' inputs differ in shape (%s and %s): every device "
                                  "must get a batch of the same shape" % (shape, tuple(np.shape(p))))
        arrays = [jax.device_put(p, d) for p, d in zip(parts, self.local_devices)]
        return jax.make_array_from_single_device_arrays(
            (shape[0] * self.num_devices,) + shape[1:], self._split, arrays)

    def _replicate(self, value):
        """A global replicated array holding ``value`` (the same on every process)."""
        if isinstance(value, jax.Array) and value.sharding == self._replicated:
            return value
        hit = self._cache.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        arrays = [jax.device_put(value, d) for d in self.local_devices]
        return jax.make_array_from_single_device_arrays(np.shape(value), self._replicated, arrays)

    def _root_part(self, array):
        for shard in array.addressable_shards:
            if shard.device == self.root:
                return shard.data
        raise AssertionError("no shard on the root device %s" % self.root)

    def _remember(self, array):
        """The root device's copy of a replicated result; the global array is kept so the
        next step reuses it instead of copying the root's copy to every device again."""
        part = self._root_part(array)
        self._cache[id(part)] = (part, array)
        return part

    def _blob_parts(self, name, diff, sources):
        """Blob ``name``'s data (or diff) for the devices: a list of one array per local
        device, or one array that every device gets."""
        if name in sources:
            return sources[name]
        blob = self.solver.net.blobs[name]
        if name in self.split_inputs:
            value = blob.host_diff() if diff else blob.host_data()
            return np.split(value, self.num_local)
        return blob.device_diff() if diff else blob.device_data()    # the same on every device

    def _read_sources(self):
        """Run each source layer once per local device; -> {top name: [array per device]}."""
        net, out = self.solver.net, {}
        for k in range(self.num_local):
            for slot in self.sources:
                net._forward_host(slot)
                for name in slot.tops:
                    out.setdefault(name, []).append(net.blobs[name].host_data().copy())
        for slot in self.sources:      # the net shows the root device's batch
            for name in slot.tops:
                net.blobs[name].data[...] = out[name][0]
        return out

    def _load_run_sources(self, run):
        """Data layers inside the compiled run (Data, ImageData, MemoryData, ...): the next
        ``batch_size`` batch of each, once per local device (Caffe's -gpu: batch_size is per
        device); -> {top name: [array per device]}. The net shows the root device's batch."""
        net, out = self.solver.net, {}
        for slot in run:
            if not getattr(slot.layer, "is_source", False):
                continue
            for _ in range(self.num_local):
                for name, value in zip(slot.tops, slot.layer.next_batch()):
                    out.setdefault(name, []).append(jnp.asarray(value, net.dtype))
            for name in slot.tops:
                blob = net.blobs[name]
                first = out[name][0]
                if tuple(blob.shape) != tuple(first.shape):
                    blob.reshape(first.shape)
                blob.set_device_data(jnp.asarray(first, net.dtype))
        return out

    def _reshape_local(self, run):
        """Reshape the compiled layers for one device's share of the batch."""
        net, local = self.solver.net, {}
        for name in self.split_inputs:
            shape = net.blobs[name].shape
            if shape[0] % self.num_local:
                raise DeviceError(
                    "Input blob '%s' has %d rows, which %d local devices cannot share evenly: its "
                    "first axis must be a multiple of %d (each device gets 1/%d of the rows)"
                    % (name, shape[0], self.num_local, self.num_local, self.num_local))
            local[name] = (shape[0] // self.num_local,) + tuple(shape[1:])
        for slot in run:
            layer = slot.layer
            if not layer.forward_writes_tops:
                continue
            shapes = layer.do_reshape([local.get(b, net.blobs[b].shape) for b in slot.bottoms])
            for name, shape in zip(slot.tops, shapes):
                if name in local:
                    local[name] = tuple(shape)
                else:
                    net.blobs[name].reshape(shape)
        return local

    def _device_keys(self):
        base = self.solver.net._base_key
        if self._keys is None or self._keys[0] is not base:
            keys = [base if r == 0 else jax.random.fold_in(base, r) for r in self.ranks]
            self._keys = (base, keys)
        return self._keys[1]

    # -- the step --------------------------------------------------------------------
    def _compile(self, seg):
        fused = self.solver._trace_fused(seg)
        split, rep = PartitionSpec(AXIS), PartitionSpec()
        mesh = self.mesh

        def step(scalars, params, history, data_in, extra, loss_w, top_diffs, keys, count0,
                 rate, t, state):
            def squeeze(d):
                return {k: (jnp.reshape(v, ()) if k in scalars else v) for k, v in d.items()}

            def expand(d):
                return {k: (jnp.reshape(v, (1,)) if k in scalars else v) for k, v in d.items()}

            def body(params, history, data_in, extra, loss_w, top_diffs, keys, count0, rate, t,
                     state):
                out = fused(params, history, squeeze(data_in), squeeze(extra), squeeze(loss_w),
                            squeeze(top_diffs), keys, count0, rate, t, state)
                new_params, new_hist, values, norm, written, _saved, diffs, loss, state = out
                return ((new_params, new_hist, values, norm, loss),
                        (expand(written), expand(diffs)), state)

            return jax.shard_map(
                body, mesh=mesh,
                in_specs=(rep, rep, split, split, split, split, split, rep, rep, rep, split),
                out_specs=(rep, split, split))(params, history, data_in, extra, loss_w,
                                               top_diffs, keys, count0, rate, t, state)

        return xla_options.jit(step, static_argnums=0)

    def iteration(self, display):
        """One training iteration on every device; -> (loss, after) as Solver._fused_iteration."""
        solver, net = self.solver, self.solver.net
        sources_, run = self._plan()
        sources = self._read_sources() if sources_ else {}
        sources.update(self._load_run_sources(run))
        local = self._reshape_local(run)
        seg = net._segment(run)
        if self._compiled is None or self._compiled[0] is not seg:
            self._compiled = (seg, self._compile(seg))
        _, data_names, diff_names, _, _ = seg.backward_plan()
        blobs = net.blobs

        def shape_of(name):
            return local.get(name, blobs[name].shape)

        copies, self._copies = self._copies, {}

        def gathered(names, diff=False):
            out = {}
            for name in names:
                parts = self._blob_parts(name, diff, sources)
                if isinstance(parts, list):
                    out[name] = self._global_from_parts(parts)
                    continue
                hit = copies.get(id(parts))       # unchanged since the last step: reuse
                if hit is None or hit[0] is not parts:
                    hit = (parts, self._global_from_parts([parts] * self.num_local))
                self._copies[id(parts)] = hit
                out[name] = hit[1]
            return out

        data_in = gathered(seg.reads)
        extra = gathered([n for n in data_names if n not in data_in and n not in seg.writes])
        loss_w = gathered(seg.loss_tops, diff=True)
        top_diffs = gathered(diff_names, diff=True)
        names = set(seg.reads) | set(data_names) | set(diff_names) | set(seg.writes)
        scalars = frozenset(n for n in names if len(shape_of(n)) == 0)
        learnable = net._learnable
        params = [self._replicate(b.device_data()) for b in learnable]
        history = jax.tree_util.tree_map(self._replicate, solver._history)
        keys = self._global_from_parts(self._device_keys())
        rate = solver._next_rate()
        count0 = solver._iter * solver.param.iter_size
        scalars_in = [self._replicate(np.asarray(v, dt)) for v, dt in
                      ((count0, np.int32), (rate, net.dtype), (solver._iter, np.int32))]
        self._cache = {}
        state = self._carried_state(seg)
        (new_params, solver._history, values, norm, loss), (written, diffs), state = \
            self._compiled[1](scalars, params, history, data_in, extra, loss_w, top_diffs, keys,
                              *scalars_in, state)
        for i, value in state.items():
            self._state[i] = (self._state[i][0], value)
            net._slots[i].layer.hidden_state = tuple(self._root_part(a) for a in value)
        for blob, value, diff in zip(learnable, new_params, values):
            blob.set_device_data(self._remember(value))
            blob.set_device_diff(self._root_part(diff))
        for name, value in written.items():
            if name not in self.split_inputs:
                blobs[name].set_device_data(self._root_part(value))
        for name, value in diffs.items():
            if name not in self.split_inputs:
                blobs[name].set_device_diff(self._root_part(value))
        for slot in run:     # residuals stay on the devices: net.backward() needs a forward first
            net._saved.pop(slot.index, None)
        net._forward_count = count0 + solver.param.iter_size
        return self._root_part(loss), solver._after_fused(rate, display, self._root_part(norm))

    def _carried_state(self, seg):
        """{layer index: state} for the layers of ``seg`` that carry one (recurrent
        layers' h_T), each array global: one (N, H) part per device, that device's own,
        split along axis 0 (Net._carried_state's rule per device: zeros at first, after
        ``reset()``, or where a device's share of the streams changed)."""
        out = {}
        for i in seg.state_slots:
            layer = self.solver.net._slots[i].layer
            shapes = [tuple(shape) for shape in layer.state_shapes()]
            held = self._state.get(i)
            if held is None or held[0] != shapes or layer.hidden_state is None:
                dtype = self.solver.net.dtype
                held = self._state[i] = (shapes, tuple(
                    self._global_from_parts([np.zeros(shape, dtype)] * self.num_local)
                    for shape in shapes))
                layer.hidden_state = tuple(self._root_part(a) for a in held[1])
            out[i] = held[1]
        return out

    # -- inspection --------------------------------------------------------------------
    def replica_params(self):
        """For each local device, its copy of every learnable param (numpy): after a step
        they are identical (a test's view of 'the same params everywhere')."""
        out = [[] for _ in self.local_devices]
        for blob in self.solver.net._learnable:
            hit = self._cache.get(id(blob.device_data()))
            if hit is None:
                value = np.asarray(blob.host_data())
                for row in out:
                    row.append(value)
                continue
            by_device = {s.device: np.asarray(s.data) for s in hit[1].addressable_shards}
            for row, d in zip(out, self.local_devices):
                row.append(by_device[d])
        return out
