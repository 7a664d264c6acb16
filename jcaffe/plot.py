"""Training curves from Caffe-format logs (jcaffe's and real Caffe's glog lines),
like Caffe's tools/extra/parse_log.py and plot_training_log.py.

    train, test = parse_log("train.log")      # lists of OrderedDict rows
    save_csv_files("train.log", "out_dir")    # train.log.train / train.log.test (parse_log's CSV)
    plot_log("train.log", "curves.png")       # needs matplotlib: pip install 'jcaffe[plot]'

Rows have ``NumIters``, ``Seconds`` (since the first timestamped line),
``LearningRate`` (NaN until the solver logs one) and one column per net output
(``loss``, ``accuracy``, ...); train rows also ``SmoothedLoss`` from the
``Iteration N (...), loss = X`` line. Outputs of a second test net are named
``net1/<output>``.
"""
import csv
import math
import os
import re
from collections import OrderedDict

from .errors import JcaffeError

_GLOG = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d(?:\.\d+)?)\s+\d+\s+[^\]]*\]\s?(.*)$")
_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
_ITER_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUM)
_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_LR = re.compile(r"Iteration (\d+), lr = " + _NUM)
_OUTPUT = re.compile(r"(Train|Test) net output #(\d+): (\S+) = " + _NUM)


class LogFormatError(JcaffeError, ValueError):
    """A file that is not a Caffe/jcaffe training log."""


def _seconds(m, first):
    month, day, hh, mm, ss = int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)), \
        float(m.group(5))
    # days are approximate across months, as in Caffe's extract_seconds (no year in glog lines)
    t = ((month * 31 + day) * 24 + hh) * 3600 + mm * 60 + ss
    return t if first is None else t - first, t


def parse_log(path_or_lines):
    """-> (train_rows, test_rows), Caffe's parse_log.parse_log (lists of OrderedDict)."""
    if isinstance(path_or_lines, (str, os.PathLike)):
        name = os.fspath(path_or_lines)
        with open(name, "r", errors="replace") as f:
            lines = f.read().replace("\r", "\n").splitlines()
    else:
        name = "<lines>"
        lines = [p for l in path_or_lines for p in l.replace("\r", "\n").splitlines()]
    train, test = [], []
    train_by_iter, test_by_key = {}, {}
    first = None
    seconds = float("nan")
    lr = float("nan")
    it = None
    test_net = 0
    recognized = 0
    for line in lines:
        m = _GLOG.match(line)
        if m:
            seconds, t = _seconds(m, first)
            if first is None:
                first, seconds = t, 0.0
            msg = m.group(6)
        else:
            msg = line.strip()
        lm = _LR.search(msg)
        if lm:
            lr = float(lm.group(2))
            recognized += 1
            row = train_by_iter.get(int(lm.group(1)))
            if row is not None:
                row["LearningRate"] = lr
            continue
        tm = _TESTING.search(msg)
        if tm:
            it, test_net = int(tm.group(1)), int(tm.group(2))
            recognized += 1
            continue
        im = _ITER_LOSS.search(msg)
        if im:
            it = int(im.group(1))
            recognized += 1
            row = train_by_iter.get(it)
            if row is None:
                row = train_by_iter[it] = OrderedDict(
                    [("NumIters", it), ("Seconds", seconds), ("LearningRate", lr)])
                train.append(row)
            row["SmoothedLoss"] = float(im.group(2))
            continue
        om = _OUTPUT.search(msg)
        if om:
            recognized += 1
            which, _, out_name, value = om.group(1), om.group(2), om.group(3), float(om.group(4))
            if it is None:
                continue
            if which == "Train":
                row = train_by_iter.get(it)
                if row is None:
                    row = train_by_iter[it] = OrderedDict(
                        [("NumIters", it), ("Seconds", seconds), ("LearningRate", lr)])
                    train.append(row)
                row[out_name] = value
            else:
                row = test_by_key.get(it)
                if row is None:
                    row = test_by_key[it] = OrderedDict(
                        [("NumIters", it), ("Seconds", seconds), ("LearningRate", lr)])
                    test.append(row)
                row[out_name if test_net == 0 else "net%d/%s" % (test_net, out_name)] = value
            continue
    if not recognized:
        raise LogFormatError(
            "%s: no Caffe training lines found (\"Iteration N, loss = X\", \"Iteration N, lr = X\", "
            "\"Test net output #k: name = X\"): is it a Caffe or jcaffe training log (the stderr "
            "of 'caffe train' / 'jcaffe train', glog format)?" % name)
    # learning rates logged after the iteration line they belong to
    for row in train:
        if math.isnan(row["LearningRate"]):
            later = [r["LearningRate"] for r in train if r["NumIters"] >= row["NumIters"]
                     and not math.isnan(r["LearningRate"])]
            row["LearningRate"] = later[0] if later else row["LearningRate"]
    return train, test


def _columns(rows):
    cols = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def write_csv(output_filename, rows, delimiter=",", verbose=False):
    """parse_log's CSV: one header line, one line per row (missing values empty)."""
    cols = _columns(rows)
    with open(output_filename, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(cols)
        for r in rows:
            w.writerow(["%g" % r[c] if isinstance(r.get(c), float) else r.get(c, "") for c in cols])
    if verbose:
        print("Wrote %s" % output_filename)


def save_csv_files(logfile_path, output_dir, delimiter=",", verbose=False):
    """Write ``<log name>.train`` and ``<log name>.test`` in ``output_dir`` (parse_log.py)."""
    train, test = parse_log(logfile_path)
    base = os.path.basename(os.fspath(logfile_path))
    os.makedirs(output_dir, exist_ok=True)
    out = []
    for suffix, rows in ((".train", train), (".test", test)):
        path = os.path.join(output_dir, base + suffix)
        write_csv(path, rows, delimiter, verbose)
        out.append(path)
    return out


def plot_log(logfile_path, output_path, x="iters"):
    """Draw the train loss/outputs, test outputs and learning rate against iterations
    (``x="iters"``) or seconds (``x="seconds"``) into ``output_path`` (png, svg, pdf)."""
    train, test = parse_log(logfile_path)
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise JcaffeError("plotting needs matplotlib: pip install 'jcaffe[plot]'") from None
    xkey = {"iters": "NumIters", "seconds": "Seconds"}.get(x)
    if xkey is None:
        raise ValueError("x must be 'iters' or 'seconds', got %r" % (x,))
    panels = []
    train_cols = [c for c in _columns(train) if c not in ("NumIters", "Seconds", "LearningRate")]
    test_cols = [c for c in _columns(test) if c not in ("NumIters", "Seconds", "LearningRate")]
    if train_cols:
        panels.append(("train", train, train_cols))
    if test_cols:
        panels.append(("test", test, test_cols))
    lrs = [r for r in train if not math.isnan(r.get("LearningRate", float("nan")))]
    if lrs:
        panels.append(("learning rate", lrs, ["LearningRate"]))
    if not panels:
        raise LogFormatError("%s: the log has no loss, output or learning-rate values to plot"
                             % os.fspath(logfile_path))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3 * len(panels)), squeeze=False)
    for ax, (title, rows, cols) in zip(axes[:, 0], panels):
        for c in cols:
            pts = [(r[xkey], r[c]) for r in rows if c in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=c, marker="." if len(pts) < 50 else None)
        ax.set_title(title)
        ax.set_xlabel("iterations" if x == "iters" else "seconds")
        ax.legend(loc="best", fontsize="small")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(output_path))
    plt.close(fig)
    return os.fspath(output_path)
