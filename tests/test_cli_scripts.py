"""Caffe's Python scripts as jcaffe commands (jcaffe/cli_scripts.py): summarize
(tools/extra/summarize.py), classify (python/classify.py), detect (python/detect.py).
classify and detect are checked against caffe.Classifier / caffe.Detector, which
test_classifier.py checks against numpy by hand."""
import csv
import sys
import types

import numpy as np
import pytest
from PIL import Image

import jcaffe as caffe
from jcaffe import cli, io as caffe_io
from jcaffe.cli_scripts import format_table, read_windows_csv, summarize_net
from jcaffe.protoio import read_net_param
from netutil import write_prototxt
from test_classifier import tiny_model

SUMMARY_NET = """
name: "s"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { name: "w" lr_mult: 2 decay_mult: 0 } param { lr_mult: 1 }
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 group: 2 } }
layer { name: "rect" type: "Convolution" bottom: "conv" top: "rect"
  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 } }
layer { name: "pool" type: "Pooling" bottom: "rect" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
layer { name: "py" type: "Python" bottom: "pool" bottom: "label" top: "loss" top: "extra"
  python_param { module: "mymod" layer: "MyLoss" } loss_weight: 0.5 }
"""


def test_summarize_rows(tmp_path):
    rows = summarize_net(read_net_param(write_prototxt(tmp_path, SUMMARY_NET)))
    assert rows == [
        ["data", "Input", "", "", "->", "data", ""],
        ["conv", "Convolution", "(w x2 Dx0, )", "data", "->", "conv", "3/2+1 8/2"],
        ["rect", "Convolution", "", "conv", "->", "rect", "3x1 4"],
        ["pool", "Pooling", "", "rect", "->", "pool", "2/2"],
        ["relu", "ReLU", "", "pool", "->", "pool", ""],
        ["py", "mymod.MyLoss", "", "pool, label", "->", "0.5 * loss, extra", ""],
    ]


def test_summarize_colours_blobs(tmp_path):
    rows = summarize_net(read_net_param(write_prototxt(tmp_path, SUMMARY_NET)), color=True)
    # a blob keeps its colour from its top to its bottoms; blobs no layer wrote are on red
    assert rows[1][3] == "\033[92mdata\033[0m" and rows[0][5] == "\033[92mdata\033[0m"
    assert rows[5][3] == "\033[95mpool\033[0m, \033[41mlabel\033[0m"
    # tops no later layer reads are bold and underlined (the loss and 'extra')
    assert rows[5][5] == "\033[97m0.5 * \033[1;4mloss\033[0m, \033[96m\033[1;4mextra\033[0m"
    assert "\033[1;4m" not in rows[4][5]          # in place: 'pool' is read after relu


def test_summarize_table_alignment():
    rows = [["a", "bb", "c"], ["dddd", "e", "f"]]
    assert format_table(rows).splitlines() == ["a    bb c", "dddd e  f"]
    # a cell over max_width overflows; the next column starts after it
    assert format_table([["abcdef", "x"], ["a", "y"]], max_width=3).splitlines() == \
        ["abcdef x", "a  y"]
    coloured = [["\033[92ma\033[0m", "b"], ["cc", "d"]]
    assert format_table(coloured).splitlines()[0] == "\033[92ma\033[0m  b"


def test_summarize_command(tmp_path, capsys):
    path = write_prototxt(tmp_path, SUMMARY_NET)
    assert cli.main(["summarize", path]) == 0
    out = capsys.readouterr().out
    assert "\033[" not in out                  # not a terminal: no colour
    assert out.splitlines()[1].split() == ["conv", "Convolution", "(w", "x2", "Dx0,", ")", "data",
                                           "->", "conv", "3/2+1", "8/2"]
    assert cli.main(["summarize", "--color", "always", "-w", "5", path]) == 0
    assert "\033[1;4m" in capsys.readouterr().out
    assert cli.main(["summarize", str(tmp_path / "missing.prototxt")]) == 1
    assert "missing.prototxt" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# classify and detect

MEAN = np.array([104.0, 117.0, 123.0])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Input 4 x 3 x 5 x 6, one InnerProduct, Softmax; its mean as a .npy file."""
    where = tmp_path_factory.mktemp("model")
    proto, weights, _ = tiny_model(where, np.random.default_rng(1), 5, 6, "Softmax", "prob", 4)
    mean_file = str(where / "mean.npy")
    np.save(mean_file, MEAN)
    return proto, weights, mean_file


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Three PNGs of different sizes, saved under names whose sorted order is not the
    order they were written in."""
    where = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    for name, shape in [("c.png", (12, 16, 3)), ("a.png", (9, 9, 3)), ("b.png", (14, 13, 3))]:
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(where / name)
    return where


def model_flags(model, mean=True):
    proto, weights, mean_file = model
    return ["--model_def", proto, "--pretrained_model", weights,
            "--mean_file", mean_file if mean else "", "--raw_scale", "255",
            "--input_scale", "0.5", "--channel_swap", "2,0,1"]


def test_classify_a_folder(model, image_dir, tmp_path, capsys):
    out = str(tmp_path / "scores.npy")
    assert cli.main(["classify", str(image_dir), out, "--ext", "png", "--images_dim", "7,8"]
                    + model_flags(model)) == 0
    printed = capsys.readouterr().out
    files = [str(image_dir / n) for n in ("a.png", "b.png", "c.png")]
    assert [line.split(": ", 1)[1] for line in printed.splitlines() if "row " in line] == files
    assert "Classifying 3 inputs." in printed and "Saving results into" in printed
    proto, weights, _ = model
    clf = caffe.Classifier(proto, weights, image_dims=(7, 8), mean=MEAN, raw_scale=255.0,
                           input_scale=0.5, channel_swap=(2, 0, 1))
    expected = clf.predict([caffe_io.load_image(f) for f in files], True)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-7)
    assert np.load(out).shape == (3, 4)


def test_classify_center_only_npy_and_one_file(model, image_dir, tmp_path):
    proto, weights, _ = model
    clf = caffe.Classifier(proto, weights, image_dims=(256, 256), raw_scale=255.0,
                           input_scale=0.5, channel_swap=(2, 0, 1))
    images = [caffe_io.load_image(str(image_dir / n)) for n in ("a.png", "b.png")]
    arr = str(tmp_path / "in.npy")
    np.save(arr, np.stack([caffe_io.resize_image(im, (10, 10)) for im in images]))
    out = str(tmp_path / "o.npy")
    assert cli.main(["classify", arr, out, "--center_only"] + model_flags(model, mean=False)) == 0
    expected = clf.predict(list(np.load(arr)), False)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-7)
    assert cli.main(["classify", str(image_dir / "b.png"), out] + model_flags(model, mean=False)) == 0
    np.testing.assert_allclose(np.load(out), clf.predict(images[1:], True), rtol=1e-5, atol=1e-7)


def test_classify_bad_command_lines(model, image_dir, tmp_path, capsys):
    out = str(tmp_path / "o.npy")
    assert cli.main(["classify", str(image_dir), out]) == 2        # no model named
    assert "--model_def" in capsys.readouterr().err
    assert cli.main(["classify", str(image_dir), out, "--images_dim", "7"] + model_flags(model)) == 2
    assert "--images_dim wants 2 comma-separated integers, got '7'" in capsys.readouterr().err
    assert cli.main(["classify", str(image_dir), out, "--ext", "jpg"] + model_flags(model)) == 1
    assert "no '*.jpg' images in the folder" in capsys.readouterr().err
    flags = model_flags(model)
    flags[flags.index("--mean_file") + 1] = str(tmp_path / "nomean.npy")
    assert cli.main(["classify", str(image_dir), out] + flags) == 1
    assert "cannot read the mean file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def det_model(tmp_path_factory):
    where = tmp_path_factory.mktemp("det")
    proto, weights, _ = tiny_model(where, np.random.default_rng(2), 10, 10, "TanH", "score", 3)
    mean_file = str(where / "mean.npy")
    np.save(mean_file, np.broadcast_to(MEAN[:, None, None], (3, 4, 5)))   # image-sized mean
    return proto, weights, mean_file


def test_detect_windows_from_a_csv(det_model, image_dir, tmp_path, capsys):
    a, b = str(image_dir / "a.png"), str(image_dir / "b.png")
    src = tmp_path / "windows.csv"
    src.write_text("filename, xmin, ymin, xmax, ymax\n"          # any column order
                   "%s, 0, 0, 9, 9\n%s, 3, 4, 13, 14\n%s, 1, 2, 8, 7\n" % (a, b, a))
    out = tmp_path / "dets.csv"
    assert cli.main(["detect", str(src), str(out), "--crop_mode", "list", "--context_pad", "0"]
                    + model_flags(det_model)) == 0
    assert "Processed 3 windows" in capsys.readouterr().out
    proto, weights, _ = det_model
    det = caffe.Detector(proto, weights, mean=MEAN, raw_scale=255.0, input_scale=0.5,
                         channel_swap=(2, 0, 1), context_pad=0)
    expected = det.detect_windows([(a, np.array([[0, 0, 9, 9], [2, 1, 7, 8]])),
                                   (b, np.array([[4, 3, 14, 13]]))])
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "ymin", "xmin", "ymax", "xmax", "class0", "class1", "class2",
                       "class3"]
    assert [r[:5] for r in rows[1:]] == [[a, "0", "0", "9", "9"], [a, "2", "1", "7", "8"],
                                         [b, "4", "3", "14", "13"]]
    got = np.array([[float(v) for v in r[5:]] for r in rows[1:]])
    np.testing.assert_allclose(got, [d["prediction"] for d in expected], rtol=1e-6)


def test_detect_bad_command_lines(det_model, tmp_path, capsys):
    src = tmp_path / "w.csv"
    src.write_text("filename,ymin,xmin\nx.png,1,2\n")
    flags = model_flags(det_model) + ["--crop_mode", "list", "--context_pad", "0"]
    assert cli.main(["detect", str(src), str(tmp_path / "o.h5")] + flags) == 2
    assert "jcaffe detect writes .csv" in capsys.readouterr().err
    assert cli.main(["detect", str(tmp_path / "w.json"), str(tmp_path / "o.csv")] + flags) == 2
    assert "not in txt or csv" in capsys.readouterr().err
    assert cli.main(["detect", str(src), str(tmp_path / "o.csv")] + flags) == 1
    assert "lacks ymax, xmax" in capsys.readouterr().err
    assert read_windows_csv(str(src), windows=False) == [("x.png", None)]   # selective search
    src.write_text("filename,ymin,xmin,ymax,xmax\nx.png,1,2,three,4\n")
    assert cli.main(["detect", str(src), str(tmp_path / "o.csv")] + flags) == 1
    assert "w.csv:2: window coordinates must be numbers" in capsys.readouterr().err
    src.write_text("filename,ymin,xmin,ymax,xmax\nx.png,1,2,3,4\n")
    assert cli.main(["detect", str(src), str(tmp_path / "o.csv")] + flags + ["--context_pad", "16"]) == 1
    assert "context_pad 16 leaves nothing of a 10-pixel input" in capsys.readouterr().err


def test_detect_selective_search_on_a_list(det_model, image_dir, tmp_path, monkeypatch, capsys):
    a, b = str(image_dir / "a.png"), str(image_dir / "b.png")
    src = tmp_path / "images.txt"
    src.write_text("%s\n%s\n" % (a, b))
    calls = []

    def get_windows(fnames, cmd):
        calls.append(list(fnames))
        return [np.array([[0, 0, 9, 9]]), np.array([[4, 3, 14, 13], [0, 0, 5, 5]])]
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python",
                        types.SimpleNamespace(get_windows=get_windows))
    out = tmp_path / "dets.csv"
    flags = model_flags(det_model) + ["--context_pad", "0"]
    assert cli.main(["detect", str(src), str(out)] + flags) == 0
    assert calls == [[a, b]]
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert [r[:5] for r in rows[1:]] == [[a, "0", "0", "9", "9"], [b, "4", "3", "14", "13"],
                                         [b, "0", "0", "5", "5"]]
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python", None)
    assert cli.main(["detect", str(src), str(out)] + flags) == 1
    assert "needs the 'selective_search_ijcv_with_python' module" in capsys.readouterr().err
