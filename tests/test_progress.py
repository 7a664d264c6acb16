"""The terminal progress bar: drawn only on a TTY outside CI, and log lines never broken by it."""
import io
import re

import pytest
from google.protobuf import text_format

import jcaffe
from jcaffe import common, progress
from jcaffe.proto import caffe_pb2


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


NET = """
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
"""


def _solver(max_iter=6, display=2):
    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.01 lr_policy: "fixed" max_iter: %d display: %d random_seed: 1 '
                      'snapshot_after_train: false' % (max_iter, display), param)
    text_format.Parse(NET, param.net_param)
    return jcaffe.get_solver(param)


@pytest.fixture
def tty_log(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("JCAFFE_NO_PROGRESS", raising=False)
    stream = FakeTTY()
    saved = (list(common.log.handlers), common.log.level, common.log.propagate)
    common.init_log(stream=stream)
    yield stream
    common.log.handlers[:] = saved[0]
    common.log.setLevel(saved[1])
    common.log.propagate = saved[2]


def test_bar_on_a_tty_and_log_lines_stay_whole(tty_log, monkeypatch):
    monkeypatch.setattr(progress.ProgressBar, "__init__",
                        _with_interval(progress.ProgressBar.__init__, 0.0))
    _solver().solve()
    out = tty_log.getvalue()
    assert "6/6 iters" in out and "100%" in out and "loss" in out
    # every glog line starts on a cleared line and ends before the bar is redrawn
    for chunk in out.split("\r\033[K"):
        for line in chunk.splitlines():
            header = re.search(r"[IWEF]\d{4} \d\d:\d\d:\d\d", line)
            if header:
                assert header.start() == 0 and "[#" not in line and "[." not in line, line
    assert "Optimization Done." in out
    assert progress._active is None           # the bar is gone after solve()


def _with_interval(init, interval):
    def wrapped(self, *args, **kwargs):
        kwargs["min_interval"] = interval
        init(self, *args, **kwargs)
    return wrapped


def test_no_bar_under_ci_or_off_a_tty(tty_log, monkeypatch):
    monkeypatch.setenv("CI", "true")
    _solver().solve()
    assert "\r" not in tty_log.getvalue() and "[#" not in tty_log.getvalue()
    assert not progress.wanted(io.StringIO())


def test_render_counts_rate_and_eta():
    bar = progress.ProgressBar(100, start=0, stream=FakeTTY())
    bar.done, bar.loss = 25, 0.5
    text = bar.render()
    assert "25/100 iters" in text and " 25%" in text and "loss 0.5" in text
    assert text.startswith("[" + "#" * 6 + "." * 18 + "]")
