"""Report: one row per checked blob, readable as a table; ``assert_ok()`` raises with it."""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Element:
    """One element's evidence: index, analytic, jax.vjp and finite-difference values."""
    index: tuple
    analytic: float
    vjp: float = None
    numeric: float = None
    note: str = ""

    def __str__(self):
        parts = ["analytic %.6g" % self.analytic]
        if self.vjp is not None:
            parts.append("vjp %.6g" % self.vjp)
        if self.numeric is not None:
            parts.append("numeric %.6g" % self.numeric)
        text = "%s: %s" % (_index(self.index), ", ".join(parts))
        return text + (" (%s)" % self.note if self.note else "")


@dataclass
class BlobCheck:
    """The check of one blob's gradient (a layer's bottom or param, a net blob)."""
    name: str
    shape: tuple
    mode: str = "exhaustive"            # exhaustive | projection | sample | skipped
    checked: int = 0                     # elements (or projections) compared
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: Element = None                # the element furthest beyond (or closest to) tolerance
    failures: list = field(default_factory=list)   # Elements that failed (first few kept)
    num_failures: int = 0
    kinks: list = field(default_factory=list)      # Elements excluded as non-differentiable
    errors: list = field(default_factory=list)     # structural problems (shape, None diff, ...)
    notes: list = field(default_factory=list)
    _worst_ratio: float = -1.0

    MAX_LISTED = 10

    @property
    def ok(self):
        return self.num_failures == 0 and not self.errors

    def add_error(self, message):
        self.errors.append(message)

    def add_failure(self, element):
        """Record a wrong element; one seen wrong twice (vs numeric, vs vjp) counts once."""
        seen = self.__dict__.setdefault("_failed", {})
        if element.index in seen:
            old = seen[element.index]
            if old.vjp is None:
                old.vjp = element.vjp
            if old.numeric is None:
                old.numeric = element.numeric
            if element.note and element.note not in old.note:
                old.note = "%s; %s" % (old.note, element.note) if old.note else element.note
            return
        seen[element.index] = element
        self.num_failures += 1
        if len(self.failures) < self.MAX_LISTED:
            self.failures.append(element)

    def add_kink(self, element):
        if not any(k.index == element.index for k in self.kinks):
            self.kinks.append(element)

    def observe(self, err, bound, ref, element):
        """Track max errors and the worst element (largest err/bound)."""
        err = float(err)
        self.max_abs = max(self.max_abs, err)
        denom = max(abs(float(element.analytic)), abs(float(ref)))
        if denom > 0:
            self.max_rel = max(self.max_rel, err / denom)
        ratio = err / bound if bound > 0 else np.inf
        if ratio > self._worst_ratio:
            self._worst_ratio = ratio
            self.worst = element

    def status(self):
        if self.errors or self.num_failures:
            return "FAIL"
        return "skip" if self.mode == "skipped" else "ok"

    def shape_text(self):
        if self.shape is None:
            return "-"
        return "x".join(str(d) for d in self.shape) or "scalar"


class Report:
    """All checks of one layer or net. ``ok`` when every row is; ``str()`` is a table."""

    def __init__(self, title):
        self.title = title
        self.checks = []
        self.notes = []
        self.warnings = []

    def add(self, check):
        self.checks.append(check)
        return check

    @property
    def ok(self):
        return all(c.ok for c in self.checks)

    def __getitem__(self, name):
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError("no check named %r; checks: %s" % (name, [c.name for c in self.checks]))

    def warn_zero_gradients(self, names, remedy):
        """Warn that the gradients named are zero everywhere (a ReLU's inputs all negative,
        every unit dropped, a Softmax over one element; or by design: Silence, Crop's
        reference bottom, a recurrent weight at one timestep): their checks show only
        that backward gives zeros there. ``remedy``: (what the values were drawn for,
        what to change)."""
        if names:
            self.warnings.append(
                "the gradient of %s is zero everywhere for these %s: the check shows only "
                "that backward gives zeros there, as many a wrong backward would; unless "
                "that is by design, %s" % (", ".join(names), remedy[0], remedy[1]))

    @property
    def num_kinks(self):
        return sum(len(c.kinks) for c in self.checks)

    def __str__(self):
        lines = ["gradcheck %s: %s" % (self.title, "OK" if self.ok else "FAILED")]
        lines += ["  warning: %s" % w for w in self.warnings]
        lines += ["  note: %s" % n for n in self.notes]
        header = ("blob", "shape", "mode", "checked", "kinks", "max abs", "max rel", "status")
        rows = [header]
        for c in self.checks:
            rows.append((c.name, c.shape_text(), c.mode,
                         str(c.checked), str(len(c.kinks)), "%.2e" % c.max_abs,
                         "%.2e" % c.max_rel, c.status()))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            lines.append("  " + "  ".join(s.ljust(w) for s, w in zip(r, widths)).rstrip())
        for c in self.checks:
            lines += _details(c)
        return "\n".join(lines)

    def assert_ok(self):
        if not self.ok:
            raise AssertionError(str(self))
        return self


def _details(c):
    out = []
    for e in c.errors:
        out.append("  %s: ERROR %s" % (c.name, e))
    if c.num_failures:
        out.append("  %s: %d element(s)/projection(s) wrong, first:" % (c.name, c.num_failures))
        out += ["      %s" % e for e in c.failures]
    if c.worst is not None and not c.num_failures and c.mode not in ("skipped", "contract"):
        out.append("  %s: worst %s" % (c.name, c.worst))
    if c.kinks:
        out.append("  %s: %d non-differentiable element(s) excluded:" % (c.name, len(c.kinks)))
        out += ["      %s" % e for e in c.kinks[:BlobCheck.MAX_LISTED]]
    out += ["  %s: %s" % (c.name, n) for n in c.notes]
    return out


def _index(index):
    if isinstance(index, str):
        return index
    return "[" + ",".join(str(int(i)) for i in index) + "]"
