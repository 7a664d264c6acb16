"""Small helpers for net-level tests: write a prototxt, build a Net, capture log lines,
count compilations."""
import contextlib
import logging
import textwrap

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
