"""A one-line training progress bar for terminals, that log lines print around.

Caffe prints only log lines; on a terminal jcaffe adds a bar at the bottom::

    [#########.............]  412/1000 iters  41%  73.2 iter/s  loss 0.0841  eta 8s

It is drawn only when the stream is a TTY and ``CI`` is not set, so log files,
pipes and Caffe's parse_log tooling see exactly Caffe's lines. While a bar is
showing, :class:`BarAwareHandler` (the handler ``init_log`` installs) clears it
before each log line and redraws it after, so lines are never broken.
"""
import logging
import os
import sys
import time

_active = None   # the bar currently drawn, if any


def wanted(stream=None):
    """Is a bar appropriate for this stream (a TTY, not CI, not disabled)?"""
    stream = stream or sys.stderr
    if os.environ.get("CI") or os.environ.get("JCAFFE_NO_PROGRESS"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _log_stream():
    """Where jcaffe's log lines go (init_log's stream), else stderr: the bar shares it."""
    for handler in logging.getLogger("jcaffe").handlers:
        if isinstance(handler, BarAwareHandler):
            return handler.stream
    return sys.stderr


class ProgressBar:
    """``with ProgressBar(total) as bar: bar.update(done, loss)``; a no-op off a TTY."""

    def __init__(self, total, start=0, stream=None, width=24, min_interval=0.1):
        self.total, self.start = int(total), int(start)
        self.stream = stream or _log_stream()
        self.width, self.min_interval = width, min_interval
        self.enabled = wanted(self.stream) and self.total > self.start
        self.done, self.loss = self.start, None
        self._t0 = time.perf_counter()
        self._last_draw = 0.0
        self._line = ""

    def __enter__(self):
        global _active
        if self.enabled:
            _active = self
        return self

    def __exit__(self, *exc):
        global _active
        if self.enabled:
            self.clear()
            if _active is self:
                _active = None
        return False

    def update(self, done, loss=None):
        """Record progress; ``loss`` may be a callable, evaluated only when the bar redraws
        (reading a device scalar every iteration would stall the training step)."""
        self.done = int(done)
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw >= self.min_interval or self.done >= self.total):
            self._last_draw = now
            if loss is not None:
                self.loss = float(loss() if callable(loss) else loss)
            self.draw()

    def render(self):
        span = max(self.total - self.start, 1)
        frac = min(max((self.done - self.start) / span, 0.0), 1.0)
        filled = int(round(frac * self.width))
        elapsed = time.perf_counter() - self._t0
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        parts = ["[%s%s]" % ("#" * filled, "." * (self.width - filled)),
                 "%*d/%d iters" % (len(str(self.total)), self.done, self.total),
                 "%3d%%" % int(frac * 100)]
        if rate > 0:
            parts.append("%.1f iter/s" % rate)
        if self.loss is not None:
            parts.append("loss %.4g" % self.loss)
        if rate > 0 and self.done < self.total:
            parts.append("eta %ds" % int((self.total - self.done) / rate))
        return "  ".join(parts)

    def draw(self):
        self._line = self.render()
        self.stream.write("\r\033[K" + self._line)
        self.stream.flush()

    def clear(self):
        if self._line:
            self.stream.write("\r\033[K")
            self.stream.flush()


class BarAwareHandler(logging.StreamHandler):
    """A StreamHandler that lifts the active bar off the line it writes to."""

    def emit(self, record):
        bar = _active
        if bar is not None and bar.stream is self.stream and bar._line:
            bar.clear()
            super().emit(record)
            bar.draw()
        else:
            super().emit(record)
