"""Small helpers for net-level tests: write a prototxt, build a Net, capture log lines,
count compilations, read an optimized HLO's library fusions, compile a solver's step."""
import collections
import contextlib
import logging
import re
import textwrap

import jax
import numpy as np

import jcaffe


def write_prototxt(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def make_net(tmp_path, text, phase=jcaffe.TRAIN, **kw):
    return jcaffe.Net(write_prototxt(tmp_path, text), phase, **kw)


class LogLines(logging.Handler):
    """Collect the messages of the 'jcaffe' logger."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        logger = logging.getLogger("jcaffe")
        self._old_level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger("jcaffe")
        logger.removeHandler(self)
        logger.setLevel(self._old_level)

    def matching(self, *suffixes):
        return [l for l in self.lines if l.endswith(suffixes)]


@contextlib.contextmanager
def kept_jcaffe_logger():
    """The 'jcaffe' logger's handlers, level and propagate flag restored on exit."""
    logger = logging.getLogger("jcaffe")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        yield logger
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def count_compilations():
    """Collect jax's compile events (every jit trace and every XLA backend compilation,
    including the small ops dispatched outside a jit) while the block runs."""
    import jax
    events = []

    def listener(name, duration, **kwargs):
        if name in COMPILE_EVENTS:
            events.append(name)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def library_ops(hlo):
    """{fusion kind (e.g. "__ynn_fusion"): Counter of the dot/convolution/reduce ops inside
    the fusions of that kind} in an optimized HLO text (``compiled.as_text()``)."""
    bodies = dict(re.findall(r"\n(%[\w.\-]+) \([^\n]*\{\n(.*?)\n\}", hlo, re.S))
    out = {}
    for name, kind in re.findall(r"calls=(%[\w.\-]+), [^\n]*?\"kind\":\"(__\w+)\"", hlo):
        ops = re.findall(r"= \S+ (dot|convolution|reduce)\(", bodies.get(name, ""))
        out.setdefault(kind, collections.Counter()).update(ops)
    return out


def ynn_dots(hlo):
    """(dots in the optimized HLO, of them inside YNNPACK fusions)."""
    return (len(re.findall(r"= \S+ dot\(", hlo)),
            library_ops(hlo).get("__ynn_fusion", {}).get("dot", 0))


def compiled_step(solver):
    """The XLA executable of ``solver``'s fused step: its first step runs, and the jitted
    step is lowered again with the arguments (their shapes) of that call."""
    return lowered_step(solver).compile()


def lowered_step(solver):
    """``solver``'s fused step lowered (jax's ``Lowered``, before XLA's passes), as
    :func:`compiled_step` finds it."""
    return traced_step(solver).lower()


def traced_step(solver):
    """``solver``'s fused step traced (jax's ``Traced``: its ``jaxpr``, before lowering),
    as :func:`compiled_step` finds it."""
    jitted = solver._jit_fused
    seen = []

    def spy(seg, stacked):
        fn = jitted(seg, stacked)

        def call(*args):
            seen.append(jax.tree_util.tree_map(     # (the static blob shapes kept)
                lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype) if hasattr(a, "dtype")
                else a, args))
            return fn(*args)
        call.trace = fn.trace
        seen.append(fn)
        return call
    solver._jit_fused = spy
    solver.step(1)
    return seen[0].trace(*seen[1])


def calls_of(monkeypatch, owner, name, what=lambda *args: args):
    """A list recording ``what(*args)`` for each call of ``owner.name`` from now on (the
    original still runs; monkeypatch puts it back)."""
    seen = []
    original = getattr(owner, name)

    def recording(*args, **kwargs):
        seen.append(what(*args))
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, recording)
    return seen
