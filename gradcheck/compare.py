"""Fill a BlobCheck: analytic diff vs jax.vjp and vs finite differences.

``exhaustive``: every element (or a given sample) by single-element
differences. ``projection`` (large blobs): analytic vs vjp still elementwise
(free), finite differences as ``u . grad`` for several independent random
``u``, each judged on its own relative error; a failing or kinked direction is
narrowed down by bisection (keep the half that is worse) to a block that is
then checked element by element, so the report still names the elements.
"""
import numpy as np

from . import numeric
from .report import Element


def structural_problem(name, analytic, shape):
    """Why an analytic diff cannot be compared (None, wrong shape), or None."""
    if analytic is None:
        return "backward returned no diff for %s" % name
    got = tuple(np.shape(analytic))
    if got != tuple(shape) and int(np.prod(got)) != int(np.prod(shape)):
        return "diff of %s has shape %s, expected %s" % (name, got, tuple(shape))
    if got != tuple(shape):
        return "diff of %s has shape %s, expected %s (same count)" % (name, got, tuple(shape))
    if not np.all(np.isfinite(np.asarray(analytic, np.float64))):
        return "diff of %s has non-finite values" % name
    return None


def _unravel(j, shape):
    return tuple(int(i) for i in np.unravel_index(int(j), shape)) if shape else ()


def check_vjp(check, analytic, vjp, tol, skip=()):
    """Elementwise analytic vs jax.vjp (``skip``: flat indices of kinks)."""
    a, r = np.ravel(analytic), np.ravel(vjp)
    err, bound, fail = numeric.close(a, r, tol)
    fail[list(skip)] = False
    for j in np.flatnonzero(fail):
        check.add_failure(Element(_unravel(j, check.shape), a[j], vjp=r[j], note="vs vjp"))
    keep = np.ones(a.size, bool)
    keep[list(skip)] = False
    if keep.any():
        j = int(np.argmax(np.where(keep, err / np.maximum(bound, 1e-300), -1)))
        check.observe(err[j], bound[j], r[j], Element(_unravel(j, check.shape), a[j], vjp=r[j]))


def check_elements(check, obj, idx, analytic, vjp, tol, scale, dtype):
    """Finite differences at flat indices ``idx``; records failures and kinks. Returns kink idx."""
    a = np.ravel(np.asarray(analytic, np.float64))
    r = None if vjp is None else np.ravel(np.asarray(vjp, np.float64))
    idx = np.asarray(idx, np.int64)
    v = numeric.element_verdicts(obj, idx, a[idx], tol, scale, dtype)
    check.checked += len(idx)
    kinks = []
    for k, j in enumerate(idx):
        el = Element(_unravel(j, check.shape), a[j], None if r is None else r[j], v.numeric[k])
        if v.kink[k]:
            el.note = "non-differentiable: left %.6g, right %.6g" % (v.left[k], v.right[k])
            kinks.append(int(j))
            if v.fail[k]:
                el.note += "; analytic lies outside [left, right]"
                check.add_failure(el)
            else:
                check.add_kink(el)
            continue
        if v.fail[k]:
            el.note = "vs finite differences"
            check.add_failure(el)
        check.observe(v.err[k], v.bound[k], v.numeric[k], el)
    return kinks


def check_projections(check, obj, analytic, tol, scale, dtype, rng, count, vjp=None, block=32):
    """``count`` random directions; narrow failing ones to named elements. Returns kink idx."""
    a = np.ravel(np.asarray(analytic, np.float64))
    excluded = []
    done = 0
    for p in range(count):
        for _ in range(3):   # re-draw after kinks found on the way are excluded
            u = rng.standard_normal(a.size)
            u[excluded] = 0.0
            v = numeric.direction_verdict(obj, u, float(a @ u), tol, scale, dtype)
            if not (v.fail[0] or v.kink[0]):
                break
            found_kinks, found_fail = _narrow(check, obj, u, a, vjp, tol, scale, dtype, block)
            excluded.extend(found_kinks)
            if found_fail or not found_kinks:
                break
        done += 1
        el = Element("projection %d" % p, float(a @ u), numeric=float(v.numeric[0]))
        if v.fail[0] and not v.kink[0]:
            el.note = "u . grad vs finite differences along u"
            check.add_failure(el)
        elif not v.kink[0]:
            check.observe(v.err[0], v.bound[0], v.numeric[0], el)
    check.checked += done
    return excluded


def _narrow(check, obj, u, a, vjp, tol, scale, dtype, block):
    """Bisect the support of ``u`` towards the worse half, then check that block exhaustively."""
    support = np.flatnonzero(u)
    while len(support) > block:
        halves = np.array_split(support, 2)
        badness = []
        for half in halves:
            uh = np.zeros_like(u)
            uh[half] = u[half]
            v = numeric.direction_verdict(obj, uh, float(a @ uh), tol, scale, dtype)
            jump = abs(v.right[0] - v.left[0])
            badness.append(max(v.err[0] / v.bound[0], jump / v.bound[0]))
        support = halves[int(np.argmax(badness))]
    before = check.num_failures
    kinks = check_elements(check, obj, support, a, vjp, tol, scale, dtype)
    check.checked -= len(support)   # counted as part of the projection, not as elements
    check.notes.append("narrowed a projection to elements %s..%s"
                       % (_unravel(support[0], check.shape), _unravel(support[-1], check.shape)))
    return kinks, check.num_failures > before
