"""jcaffe.plot / `jcaffe plot`: training curves from Caffe's and jcaffe's logs."""
import csv
import io
import logging
import math

import numpy as np
import pytest
from google.protobuf import text_format

import jcaffe
from jcaffe import cli, plot
from jcaffe.proto import caffe_pb2

# The shape of real Caffe output (solver.cpp / sgd_solver.cpp glog lines, MNIST-style).
CAFFE_LOG = """\
I0930 10:23:41.123456  1234 caffe.cpp:218] Using GPUs 0
I0930 10:23:41.200000  1234 solver.cpp:44] Initializing solver from parameters:
test_iter: 100
base_lr: 0.01
I0930 10:23:41.623456  1234 solver.cpp:330] Iteration 0, Testing net (#0)
I0930 10:23:42.001234  1234 solver.cpp:397]     Test net output #0: accuracy = 0.0834
I0930 10:23:42.001260  1234 solver.cpp:397]     Test net output #1: loss = 2.37115 (* 1 = 2.37115 loss)
I0930 10:23:42.010000  1234 solver.cpp:218] Iteration 0 (-1.4013e-45 iter/s, 0.39s/100 iters), loss = 2.35
I0930 10:23:42.010030  1234 solver.cpp:237]     Train net output #0: loss = 2.35 (* 1 = 2.35 loss)
I0930 10:23:42.010050  1234 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I0930 10:23:43.510000  1234 solver.cpp:218] Iteration 100 (66.6667 iter/s, 1.5s/100 iters), loss = 0.21
I0930 10:23:43.510030  1234 solver.cpp:237]     Train net output #0: loss = 0.2 (* 1 = 0.2 loss)
I0930 10:23:43.510050  1234 sgd_solver.cpp:105] Iteration 100, lr = 0.00992565
I0930 10:23:45.000000  1234 solver.cpp:447] Snapshotting to binary proto file lenet_iter_200.caffemodel
I0930 10:23:45.100000  1234 solver.cpp:310] Iteration 200, loss = 0.05
I0930 10:23:45.100010  1234 solver.cpp:330] Iteration 200, Testing net (#0)
I0930 10:23:45.400000  1234 solver.cpp:397]     Test net output #0: accuracy = 0.981
I0930 10:23:45.400010  1234 solver.cpp:397]     Test net output #1: loss = 0.0612 (* 1 = 0.0612 loss)
I0930 10:23:45.500000  1234 solver.cpp:315] Optimization Done.
"""


def write(tmp_path, text, name="train.log"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_parse_real_caffe_log(tmp_path):
    train, test = plot.parse_log(write(tmp_path, CAFFE_LOG))
    assert [r["NumIters"] for r in train] == [0, 100, 200]
    assert [r["SmoothedLoss"] for r in train] == [2.35, 0.21, 0.05]
    assert [r.get("loss") for r in train] == [2.35, 0.2, None]
    assert train[0]["LearningRate"] == 0.01 and train[1]["LearningRate"] == 0.00992565
    assert [r["NumIters"] for r in test] == [0, 200]
    assert [r["accuracy"] for r in test] == [0.0834, 0.981]
    assert [r["loss"] for r in test] == [2.37115, 0.0612]
    # seconds since the first timestamped line
    assert test[0]["Seconds"] == pytest.approx(0.877778, abs=1e-5)
    assert train[2]["Seconds"] == pytest.approx(3.976544, abs=1e-5)


def test_parse_jcaffe_log():
    param = caffe_pb2.SolverParameter()
    text_format.Parse('lr_policy: "step" stepsize: 2 gamma: 0.5 base_lr: 0.1 max_iter: 4 display: 1 '
                      'test_iter: 1 test_interval: 2 snapshot_after_train: false random_seed: 3', param)
    text_format.Parse("""
layer { name: "d" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                     data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
""", param.net_param)
    stream = io.StringIO()
    logger = logging.getLogger("jcaffe")
    old_handlers, old_level, old_prop = list(logger.handlers), logger.level, logger.propagate
    try:
        jcaffe.init_log(stream=stream)
        jcaffe.SGDSolver(param).solve()
    finally:
        logger.handlers[:] = old_handlers
        logger.setLevel(old_level)
        logger.propagate = old_prop
    train, test = plot.parse_log(stream.getvalue().splitlines())
    assert [r["NumIters"] for r in train] == [0, 1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in train[:4])
    assert [r["LearningRate"] for r in train[:4]] == [0.1, 0.1, 0.05, 0.05]
    assert [r["NumIters"] for r in test] == [0, 2, 4]
    assert all("loss" in r for r in test)


def test_csv_files(tmp_path):
    log = write(tmp_path, CAFFE_LOG)
    train_csv, test_csv = plot.save_csv_files(log, tmp_path / "out")
    assert train_csv.endswith("train.log.train") and test_csv.endswith("train.log.test")
    rows = list(csv.DictReader(open(test_csv)))
    assert [r["NumIters"] for r in rows] == ["0", "200"]
    assert rows[1]["accuracy"] == "0.981"
    assert list(csv.reader(open(train_csv)))[0][:4] == ["NumIters", "Seconds", "LearningRate",
                                                        "SmoothedLoss"]


def test_unknown_format_is_a_clear_error(tmp_path):
    bad = write(tmp_path, "epoch 1: loss 0.3\nepoch 2: loss 0.2\n", "other.log")
    with pytest.raises(plot.LogFormatError, match="no Caffe training lines found"):
        plot.parse_log(bad)
    assert cli.main(["plot", str(bad), str(tmp_path / "x.png")]) == 1
    assert not (tmp_path / "x.png").exists()
    assert cli.main(["plot", str(tmp_path / "missing.log"), str(tmp_path / "x.png")]) == 1
    assert cli.main(["plot", str(bad)]) == 2


def test_plot_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = write(tmp_path, CAFFE_LOG)
    out = tmp_path / "curves.png"
    assert cli.main(["plot", str(log), str(out), "--csv", str(tmp_path / "csv")]) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    from PIL import Image
    with Image.open(out) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("L"))
    assert pixels.min() < 128            # something was drawn
    assert (tmp_path / "csv" / "train.log.test").exists()
    out_svg = plot.plot_log(log, tmp_path / "curves.svg", x="seconds")
    assert open(out_svg).read().lstrip().startswith("<?xml")
