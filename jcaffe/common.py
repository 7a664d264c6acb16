"""Process-wide state as in Caffe's ``Caffe`` singleton: mode, device, seed, solver count."""
import logging
import os
import sys
import time

import jax
import numpy as np

log = logging.getLogger("jcaffe")

_state = {
    "mode": "CPU",
    "device": 0,
    "seed": None,
    "np_rng": np.random.default_rng(),
    "key_counter": 0,
    "solver_count": 1,
    "solver_rank": 0,
    "multiprocess": False,
}


def set_mode_cpu():
    """Caffe.set_mode_cpu(): computations go to JAX's CPU backend."""
    _state["mode"] = "CPU"
    jax.config.update("jax_default_device", jax.devices("cpu")[0])


def set_mode_gpu():
    """Caffe.set_mode_gpu(): use JAX's default accelerator (GPU/TPU), if any."""
    _state["mode"] = "GPU"
    jax.config.update("jax_default_device", None)


def set_device(device_id):
    """Select the accelerator by index among ``jax.devices()``."""
    from .errors import DeviceError
    devices = jax.devices()
    if not 0 <= device_id < len(devices):
        raise DeviceError("device %d does not exist; this process sees %d device(s): %s"
                          % (device_id, len(devices), ", ".join(str(d) for d in devices)))
    _state["device"] = device_id
    jax.config.update("jax_default_device", devices[device_id])


def mode():
    return _state["mode"]


def set_random_seed(seed):
    """Seed fillers, Dropout masks and random data layers (Caffe::set_random_seed)."""
    _state["seed"] = int(seed)
    _state["np_rng"] = np.random.default_rng(int(seed))
    _state["key_counter"] = 0


def filler_rng():
    """The numpy Generator fillers draw from (advanced by every filled param)."""
    return _state["np_rng"]


def new_key():
    """A fresh jax PRNG key, deterministic after set_random_seed."""
    seed = _state["seed"]
    if seed is None:
        return jax.random.PRNGKey(int(_state["np_rng"].integers(0, 2**31 - 1)))
    _state["key_counter"] += 1
    return jax.random.fold_in(jax.random.PRNGKey(seed), _state["key_counter"])


def solver_count():
    return _state["solver_count"]


def set_solver_count(n):
    _state["solver_count"] = int(n)


def solver_rank():
    return _state["solver_rank"]


def set_solver_rank(r):
    _state["solver_rank"] = int(r)


def set_multiprocess(flag):
    _state["multiprocess"] = bool(flag)


def has_nccl():
    """False: jcaffe has no NCCL; multi-device training uses JAX collectives."""
    return False


class NCCL:
    """pycaffe's ``caffe.NCCL(solver, uid)``, as BVLC's python/train.py uses it: one
    process per GPU, each with its own solver, the gradients all-reduced by NCCL.
    jcaffe trains on several devices inside one process instead
    (``get_solver(path, devices=N)``, ``jcaffe train -gpu all``). With one solver
    (``set_solver_count(1)``: train.py's default ``--gpus 0``) there is nothing to
    reduce: ``bcast()`` does nothing, and ``solver.add_callback(nccl)`` and
    ``net.after_backward(nccl)`` register nothing (the step stays one compiled call),
    so the script trains as on one GPU. With more solvers it raises, naming the way."""

    def __init__(self, solver, uid):
        if solver_count() > 1:
            from .errors import DeviceError
            raise DeviceError(
                "caffe.NCCL: jcaffe has no NCCL, and does not train with one process per "
                "device (solver count %d, rank %d): train on several devices in one process "
                "with jcaffe.get_solver(path, devices=N) (or `jcaffe train -solver ... -gpu "
                "all`); the gradients are averaged as NCCL's all-reduce averaged them"
                % (solver_count(), solver_rank()))
        self.solver, self.uid = solver, uid

    @staticmethod
    def new_uid():
        return os.urandom(16)

    def bcast(self):
        """Caffe broadcasts the root's params to the other solvers: there are none."""


class _GlogFormatter(logging.Formatter):
    """Lines shaped like glog's: ``I1122 17:03:04.123456 4242 net.py:120] message``."""

    def format(self, record):
        t = time.localtime(record.created)
        usec = int((record.created - int(record.created)) * 1e6)
        return "%s%s %s.%06d %d %s:%d] %s" % (
            record.levelname[0], time.strftime("%m%d", t), time.strftime("%H:%M:%S", t), usec,
            record.process, os.path.basename(record.pathname), record.lineno, record.getMessage())


def init_log(level=logging.INFO, stream=None):
    """Send jcaffe's log lines to stderr in glog's format (pycaffe's caffe.init_log)."""
    from .progress import BarAwareHandler
    handler = BarAwareHandler(stream or sys.stderr)
    handler.setFormatter(_GlogFormatter())
    for h in list(log.handlers):
        if getattr(h, "_jcaffe", False):
            log.removeHandler(h)
    handler._jcaffe = True
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def log_message(message, level=logging.INFO):
    """pycaffe's caffe.log: one line in the jcaffe log."""
    log.log(level, message)


class Timer:
    """pycaffe's caffe.Timer: start(), stop(), ms (milliseconds of the last interval)."""

    def __init__(self):
        self._start = None
        self.ms = 0.0

    def start(self):
        self._start = time.perf_counter()

    def stop(self):
        if self._start is not None:
            self.ms = (time.perf_counter() - self._start) * 1000.0
            self._start = None
        return self.ms
