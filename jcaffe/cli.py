"""The ``jcaffe`` command line tool, mirroring Caffe's ``caffe`` tool.

    jcaffe train -solver solver.prototxt [-weights a.caffemodel,b.caffemodel | -snapshot s.solverstate]
                 [-stage a,b] [-level N] [-iterations N] [-sigint_effect stop|snapshot|none]
                 [-sighup_effect stop|snapshot|none] [-gpu N | -gpu 0,1 | -gpu all | -devices N]
                 [-coordinator host:port -num_processes N -process_id I [-distributed_timeout S]]
    jcaffe test  -model net.prototxt -weights w.caffemodel [-iterations 50] [-stage ..] [-level N]
    jcaffe time  -model net.prototxt [-iterations 50] [-phase TRAIN|TEST] [-stage ..] [-level N]
    jcaffe device_query
    jcaffe convert_imageset | compute_image_mean | extract_features | upgrade_net_proto_text |
           upgrade_net_proto_binary | upgrade_solver_proto_text | convert_mnist_data |
           convert_mnist_siamese_data | convert_cifar_data
           (Caffe's tools and its examples' converters: jcaffe/tools.py)
    jcaffe summarize | classify | detect   (Caffe's Python scripts: jcaffe/cli_scripts.py)

Flags are gflags-style: ``-solver x``, ``-solver=x``, ``--solver x`` and
``--solver=x`` all work. For ``train``, ``-iterations`` (when given)
overrides the solver's max_iter.

``train`` with several devices (``-gpu 0,1``, ``-gpu all``, ``-devices N``) or
several processes (``-coordinator``, ``-num_processes``, ``-process_id``, or the
``JCAFFE_COORDINATOR`` / ``JCAFFE_NUM_PROCESSES`` / ``JCAFFE_PROCESS_ID``
environment variables) trains data parallel (``jcaffe.parallel``); as with
Caffe's ``-gpu``, batch_size is per device.

``train``, ``test`` and ``time`` keep their compiled programs in a persistent
compilation cache (``-compilation_cache DIR|off``, ``$JCAFFE_COMPILATION_CACHE``; by
default ``$XDG_CACHE_HOME/jcaffe/xla``), so the next run of the same net skips XLA's
compile: see ``jcaffe.compile_cache``.
"""
import ctypes
import logging
import signal
import sys
import time

import jax

from . import common, compile_cache, parallel, protoio
from .errors import JcaffeError
from .net import Net
from .proto import caffe_pb2
from .solver import NONE, SNAPSHOT, STOP, get_solver

log = logging.getLogger("jcaffe")

FLAGS = {
    "solver": ("", "The solver definition protocol buffer text file."),
    "model": ("", "The model definition protocol buffer text file."),
    "phase": ("", "Optional; network phase (TRAIN or TEST). Only used for 'time'."),
    "level": (0, "Optional; network level."),
    "stage": ("", "Optional; network stages (not to be confused with phase), separated by ','."),
    "snapshot": ("", "Optional; the snapshot solver state to resume training."),
    "weights": ("", "Optional; the pretrained weights to initialize finetuning, separated by ','. "
                    "Cannot be set simultaneously with snapshot."),
    "iterations": (50, "The number of iterations to run (test, time; for train: overrides max_iter)."),
    "sigint_effect": ("stop", "Optional; action to take when a SIGINT signal is received: "
                              "snapshot, stop or none."),
    "sighup_effect": ("snapshot", "Optional; action to take when a SIGHUP signal is received: "
                                  "snapshot, stop or none."),
    "gpu": ("", "Optional; run on the given device index (as listed by device_query); for train, "
                "several ids separated by ',' or 'all' train data parallel (batch_size per device)."),
    "devices": (0, "Optional; for train: data-parallel training on the first N local devices."),
    "coordinator": ("", "Optional; for train on several processes/hosts: host:port of process 0 "
                        "(or $JCAFFE_COORDINATOR)."),
    "num_processes": ("", "Optional; the number of processes of a multi-process run "
                          "(or $JCAFFE_NUM_PROCESSES)."),
    "process_id": ("", "Optional; this process's id in 0..num_processes-1 (or $JCAFFE_PROCESS_ID)."),
    "distributed_timeout": ("", "Optional; seconds to wait for the coordinator and the other "
                                "processes (or $JCAFFE_DISTRIBUTED_TIMEOUT; default 60)."),
    "compilation_cache": ("", "Optional; where compiled programs are kept for later runs, or "
                              "'off' (or $JCAFFE_COMPILATION_CACHE; default "
                              "$XDG_CACHE_HOME/jcaffe/xla)."),
}

USAGE = """command line brew
usage: jcaffe <command> <args>

commands:
  train           train or finetune a model
  test            score a model
  device_query    show diagnostic information for the devices JAX sees
  time            benchmark model execution time

tools (each with its own flags; see 'jcaffe <tool> -help'):
  convert_imageset, compute_image_mean, extract_features,
  upgrade_net_proto_text, upgrade_net_proto_binary, upgrade_solver_proto_text,
  convert_mnist_data, convert_mnist_siamese_data, convert_cifar_data

flags:
""" + "".join("  -%s (%s) default: %r\n" % (k, v[1], v[0]) for k, v in FLAGS.items())
USAGE = USAGE.replace("execution time\n", "execution time\n"    # jcaffe/cli_explain.py
                      "  explain         why each layer runs backward or not, and the traps\n"
                      "  draw            draw the net graph (.png/.svg/.pdf/.dot)\n"
                      "  plot            plot training curves from a log\n"
                      "  summarize       print a table of the net's layers (jcaffe/cli_scripts.py)\n"
                      "  classify        classify images with a model (pycaffe's classify.py)\n"
                      "  detect          score windows of images (pycaffe's detect.py)\n", 1)


class UsageError(JcaffeError):
    """A bad command line."""


def parse_flags(argv):
    """-> (positional args, {flag: value}, set of flags given explicitly)."""
    values = {k: v[0] for k, v in FLAGS.items()}
    given, positional = set(), []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            positional.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in ("help", "h"):
            raise UsageError(USAGE)
        if name not in FLAGS:
            raise UsageError("unknown command line flag '%s'\n\n%s" % (name, USAGE))
        if not eq:
            if i >= len(argv):
                raise UsageError("flag '-%s' is missing its argument" % name)
            value = argv[i]
            i += 1
        if isinstance(FLAGS[name][0], int):
            try:
                value = int(value)
            except ValueError:
                raise UsageError("flag '-%s' wants an integer, got '%s'" % (name, value)) from None
        values[name] = value
        given.add(name)
    return positional, values, given


def _stages(flags):
    return [s for s in flags["stage"].split(",") if s]


def _action(value, flag):
    if value not in (STOP, SNAPSHOT, NONE):
        raise UsageError("Invalid signal effect \"%s\" was specified for -%s (use stop, snapshot "
                         "or none)" % (value, flag))
    return value


def _use_device(flags):
    if flags["gpu"] != "":
        try:
            ids = [int(x) for x in str(flags["gpu"]).split(",") if x.strip() not in ("", "all")] or [0]
        except ValueError:
            raise UsageError("-gpu wants a device id, ids separated by ',' or 'all'; got '%s'"
                             % flags["gpu"]) from None
        common.set_mode_gpu()
        common.set_device(ids[0])
        log.info("Using device %d: %s", ids[0], jax.devices()[ids[0]])
    elif _cpu_chosen():
        log.info("Use CPU (%s).", jax.config.jax_default_device)
    else:
        log.info("Using %s (JAX default device %s).", jax.default_backend().upper(), jax.devices()[0])
    _log_precision()


def _cpu_chosen():
    """Whether set_mode_cpu() pinned JAX's default device to the CPU (solver_mode: CPU),
    whatever accelerator JAX sees."""
    return common.mode() == "CPU" and jax.config.jax_default_device is not None


def _solver_mode(param, flags, given):
    """``caffe train`` reads the solver's ``solver_mode`` and ``device_id`` when no -gpu flag
    is given: GPU trains on ``device_id`` (0 if unset), CPU on the CPU even where an
    accelerator is present. Without ``solver_mode`` jcaffe uses JAX's default device (where
    Caffe would use the CPU). A GPU mode on a machine with no accelerator trains on the CPU
    with a warning (CPU-only Caffe stops there)."""
    if flags["gpu"] != "" or "devices" in given or not param.HasField("solver_mode"):
        return
    if param.solver_mode == caffe_pb2.SolverParameter.CPU:
        common.set_mode_cpu()
    elif jax.default_backend() == "cpu":
        log.warning("solver_mode: GPU, but JAX sees no accelerator: training on the CPU "
                    "(CPU-only Caffe stops with 'Cannot use GPU in CPU-only Caffe').")
    else:
        flags["gpu"] = str(param.device_id)


def _log_precision():
    """Off the CPU, JAX's default float32 matrix products and convolutions are not float32:
    say so once, with the switch (measured on an H200: relative error 2.9e-4 for a
    1024-wide product, 2.9e-7 at 'highest'; benchmarks/device_check.sh)."""
    backend = "cpu" if _cpu_chosen() else jax.default_backend()
    if backend == "cpu" or jax.config.jax_default_matmul_precision is not None:
        return
    log.info("float32 products and convolutions run at JAX's default precision on %s "
             "(TF32 on NVIDIA GPUs since Ampere: relative error about 3e-4, against 3e-7 in "
             "float32; bfloat16 passes on TPUs). Caffe's cuBLAS products are full float32: "
             "set JAX_DEFAULT_MATMUL_PRECISION=highest for those.", backend.upper())


def _train_devices(flags, given, distributed):
    """The ``devices`` argument of the solver (None: ordinary one-device training)."""
    gpu = str(flags["gpu"]).strip()
    if "devices" in given:
        if gpu:
            raise UsageError("give either -gpu or -devices, not both")
        if flags["devices"] < 1:
            raise UsageError("-devices wants a positive count, got %d" % flags["devices"])
        return flags["devices"]
    if gpu.lower() == "all":
        return "all"
    if "," in gpu:
        return gpu
    if distributed:
        return [int(gpu)] if gpu else "all"
    _use_device(flags)
    return None


class SignalHandler:
    """Caffe's SignalHandler: remember SIGINT/SIGHUP; the solver asks between iterations."""

    def __init__(self, sigint_effect, sighup_effect):
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self.pending = []
        self.old = {sig: signal.signal(sig, self._handle) for sig in self.effects}

    def _handle(self, signum, frame):
        self.pending.append(signum)

    def action(self):
        """The requested action (SIGHUP's first, as Caffe checks it first), once per signal."""
        for sig in sorted(self.effects, key=lambda s: s != getattr(signal, "SIGHUP", None)):
            if sig in self.pending:
                self.pending.remove(sig)
                return self.effects[sig]
        return NONE

    def restore(self):
        for sig, old in self.old.items():
            signal.signal(sig, old)


def train(flags, given):
    if not flags["solver"]:
        raise UsageError("Need a solver definition to train (-solver).")
    if flags["snapshot"] and flags["weights"]:
        raise UsageError("Give a snapshot to resume training or weights to finetune but not both.")
    param = protoio.read_solver_param(flags["solver"])
    param.train_state.level = flags["level"]
    param.train_state.stage.extend(_stages(flags))
    if "iterations" in given:
        log.info("max_iter: %d (from -iterations)", flags["iterations"])
        param.max_iter = flags["iterations"]
    distributed = parallel.init_distributed(flags["coordinator"] or None, flags["num_processes"],
                                            flags["process_id"], flags["distributed_timeout"])
    _solver_mode(param, flags, given)
    devices = _train_devices(flags, given, distributed)
    handler = SignalHandler(_action(flags["sigint_effect"], "sigint_effect"),
                            _action(flags["sighup_effect"], "sighup_effect"))
    try:
        if flags["snapshot"]:
            param.ClearField("weights")
        elif flags["weights"]:
            param.ClearField("weights")
            param.weights.append(flags["weights"])
        solver = get_solver(param, flags["solver"], devices=devices)
        solver.set_action_function(handler.action)
        if flags["snapshot"]:
            log.info("Resuming from %s", flags["snapshot"])
            solver.restore(flags["snapshot"])
        log.info("Starting Optimization")
        solver.solve()
    finally:
        handler.restore()
    log.info("Optimization Done.")
    return 0


def test(flags, given):
    if not flags["model"]:
        raise UsageError("Need a model definition to score (-model).")
    if not flags["weights"]:
        raise UsageError("Need model weights to score (-weights).")
    _use_device(flags)
    net = Net(flags["model"], caffe_pb2.TEST, level=flags["level"], stages=_stages(flags))
    for name in flags["weights"].split(","):
        net.copy_from(name.strip())
    iterations = flags["iterations"]
    log.info("Running for %d iterations.", iterations)
    scores, loss = None, 0.0
    for i in range(iterations):
        loss += net._forward(0, len(net._slots) - 1)
        values = [(name, float(v)) for name in net.outputs for v in net.blobs[name].host_data().ravel()]
        for name, v in values:
            log.info("Batch %d, %s = %g", i, name, v)
        scores = [v for _, v in values] if scores is None else [s + v for s, (_, v) in zip(scores, values)]
    log.info("Loss: %g", loss / max(iterations, 1))
    idx = 0
    for name in net.outputs:
        weight = net.blob_loss_weights[name]
        for _ in range(net.blobs[name].count):
            mean = scores[idx] / iterations if scores else 0.0
            extra = " (* %g = %g loss)" % (weight, weight * mean) if weight else ""
            log.info("%s = %g%s", name, mean, extra)
            idx += 1
    return 0


# `time` runs each layer as its own program: every call writes fresh tops and diffs of a
# few to a hundred MB. glibc raises its mmap threshold (up to 32 MB) after the first
# such buffers are freed, so the later ones come from its heap, where what is freed
# stays with the process and fragments: ResNet-18 at batch 32 held 3.7 GB after three
# iterations with 1.4 GB of arrays alive, and ResNet-101-v2 at batch 32 was killed for
# memory at 24 GB (Caffe's own count for it: about 17 GB). Handing the freed pages back
# after each layer, outside the timed call, kept ResNet-18 at 2.1 GB with the same
# per-layer times (benchmarks/NOTES.md, fifty-sixth session). Not glibc: nothing to do.
try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (AttributeError, OSError, TypeError):      # (no such libc, or Windows)
    _malloc_trim = None


def _release_freed():
    """Return the heap's free pages to the system (glibc's malloc_trim), where it has one."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _sync(net, names):
    for name in names:
        net.blobs[name].device_data().block_until_ready()


def _sync_diffs(net, slot):
    for name in slot.bottoms:
        net.blobs[name].device_diff().block_until_ready()
    for blob in slot.layer.blobs:
        blob.device_diff().block_until_ready()


def _whole_pass(net, n):
    """A forward and a backward of the whole net, each waited for: their seconds."""
    t0 = time.perf_counter()
    net._forward(0, n - 1)
    _sync(net, net.outputs)
    t1 = time.perf_counter()
    net._backward(n - 1, 0)
    for blob in net.learnable_params:
        blob.device_diff().block_until_ready()
    return t1 - t0, time.perf_counter() - t1


def time_net(flags, given):
    if not flags["model"]:
        raise UsageError("Need a model definition to time (-model).")
    phase = {"": caffe_pb2.TRAIN, "TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}.get(flags["phase"])
    if phase is None:
        raise UsageError("phase must be \"TRAIN\" or \"TEST\"")
    _use_device(flags)
    net = Net(flags["model"], phase, level=flags["level"], stages=_stages(flags))
    n, iterations = len(net._slots), flags["iterations"]
    log.info("Performing Forward")
    log.info("Initial loss: %g", net._forward(0, n - 1))
    log.info("Performing Backward")
    net._backward(n - 1, 0)
    for i in range(n):                   # compile every single-layer segment before timing
        net._forward(i, i)
        _release_freed()
    for i in reversed(range(n)):
        net._backward(i, i)
        _release_freed()
    # Wait for what the warm-up dispatched: else the first layer timed (the first whose
    # call is queued behind it: a DummyData) is charged with the whole warm-up backward
    # (LRCN's DummyData read 692 ms a forward over 2 iterations, 0.9 ms alone).
    for value in jax.live_arrays():
        value.block_until_ready()
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    fwd_layer, bwd_layer = [0.0] * n, [0.0] * n
    for _ in range(iterations):
        for i, slot in enumerate(net._slots):
            t0 = time.perf_counter()
            net._forward(i, i)
            _sync(net, slot.tops)
            fwd_layer[i] += time.perf_counter() - t0
            _release_freed()
        for i in reversed(range(n)):
            t0 = time.perf_counter()
            net._backward(i, i)
            _sync_diffs(net, net._slots[i])
            bwd_layer[i] += time.perf_counter() - t0
            _release_freed()
    # Caffe times right after its warm-up pass; here the one-layer programs ran since,
    # so the whole net runs once more untimed (LeNet at batch 64: the first timed
    # iteration read 14.5-24.2 ms without it, 11.9-18.8 with, most later ones 10-12;
    # benchmarks/NOTES.md, fifty-eighth session).
    _whole_pass(net, n)
    total_start = time.perf_counter()
    fwd_total = bwd_total = 0.0
    for j in range(iterations):
        fwd, bwd = _whole_pass(net, n)
        fwd_total += fwd
        bwd_total += bwd
        log.info("Iteration: %d forward-backward time: %g ms.", j + 1, (fwd + bwd) * 1000)
    total = time.perf_counter() - total_start
    log.info("Average time per layer (each layer compiled and run on its own): ")
    for i, slot in enumerate(net._slots):
        name = slot.layer.name
        log.info("%10s\tforward: %g ms.", name, fwd_layer[i] * 1000 / iterations)
        log.info("%10s\tbackward: %g ms.", name, bwd_layer[i] * 1000 / iterations)
    log.info("Average Forward pass: %g ms.", fwd_total * 1000 / iterations)
    log.info("Average Backward pass: %g ms.", bwd_total * 1000 / iterations)
    log.info("Average Forward-Backward: %g ms.", total * 1000 / iterations)
    log.info("Total Time: %g ms.", total * 1000)
    log.info("*** Benchmark ends ***")
    return 0


def device_query(flags, given):
    log.info("Querying devices %s", flags["gpu"] or "(all)")
    for i, d in enumerate(jax.devices()):
        log.info("Device id:                     %d", i)
        log.info("Platform:                      %s", d.platform)
        log.info("Device kind:                   %s", d.device_kind)
        try:
            stats = d.memory_stats() or {}
        except Exception:       # not every backend reports memory
            stats = {}
        if "bytes_limit" in stats:
            log.info("Total memory:                  %d", stats["bytes_limit"])
    return 0


COMMANDS = {"train": train, "test": test, "time": time_net, "device_query": device_query}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("explain", "draw", "plot"):   # jcaffe/cli_explain.py
        from . import cli_explain
        return cli_explain.main(argv)
    if argv and argv[0] in ("summarize", "classify", "detect"):   # jcaffe/cli_scripts.py
        from . import cli_scripts
        return cli_scripts.main(argv)
    common.init_log()
    if argv and argv[0] in _tools().TOOLS:
        return _run_tool(argv[0], argv[1:])
    try:
        positional, flags, given = parse_flags(argv)
        if len(positional) != 1:
            raise UsageError(USAGE)
        command = COMMANDS.get(positional[0])
        if command is None:
            raise UsageError("Unknown action: %s (available: %s)"
                             % (positional[0], ", ".join(sorted(COMMANDS))))
        if command is not device_query:
            _use_compilation_cache(flags)
        try:
            return command(flags, given)
        finally:
            compile_cache.log_summary()
    except UsageError as e:
        print("jcaffe: %s" % e, file=sys.stderr)
        return 2
    except (JcaffeError, OSError) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1


def _use_compilation_cache(flags):
    """On by default here (jcaffe.compile_cache): a second run of the same net loads its
    compiled step instead of compiling it again."""
    path = compile_cache.from_environment(default_on=True, flag=flags["compilation_cache"])
    if path:
        log.info("Compilation cache: %s (runs of the same net reuse its compiled programs; "
                 "-compilation_cache off turns it off)", path)


def _tools():
    from . import tools
    return tools


def _run_tool(name, argv):
    tools = _tools()
    try:
        return tools.TOOLS[name](argv)
    except tools.ToolUsageError as e:
        print("jcaffe %s: %s" % (name, e), file=sys.stderr)
        return 2
    except (JcaffeError, OSError) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
