"""caffe.Classifier and caffe.Detector (pycaffe's classifier.py and detector.py):
predictions checked against crops cut, preprocessed and scored by hand in numpy
(the nets are one InnerProduct, so a crop's scores are W x + b)."""
import os
import sys
import types

import numpy as np
import pytest
from PIL import Image

import jcaffe as caffe
from jcaffe import io as caffe_io
from netutil import write_prototxt

NET = """
name: "tiny"
layer {{ name: "data" type: "Input" top: "data"
  input_param {{ shape {{ dim: {n} dim: 3 dim: {h} dim: {w} }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 4 }} }}
layer {{ name: "{out}" type: "{kind}" bottom: "ip" top: "{out}" }}
"""

MEAN = np.array([104.0, 117.0, 123.0])       # in the net's channel order, [0, 255] scale
SWAP = (2, 0, 1)          # net channel c is image channel SWAP[c] (not its own inverse)
RAW, INPUT_SCALE = 255.0, 0.017
# the mean back in image space: image channel 0 is net channel 1, 1 is 2, 2 is 0
IMAGE_MEAN = np.array([117.0, 123.0, 104.0]) / 255


def tiny_model(tmp_path, rng, h, w, kind, out, n):
    """A prototxt and a .caffemodel with random weights; returns their paths and
    (W, b) of the InnerProduct."""
    proto = write_prototxt(tmp_path, NET.format(n=n, h=h, w=w, kind=kind, out=out),
                           "%s.prototxt" % out)
    net = caffe.Net(proto, caffe.TEST)
    weight, bias = net.params["ip"]
    weight.data[...] = rng.normal(0, 0.1, weight.data.shape)
    bias.data[...] = rng.normal(0, 1, bias.data.shape)
    weights = str(tmp_path / ("%s.caffemodel" % out))
    net.save(weights)
    return proto, weights, (weight.data.copy(), bias.data.copy())


def preprocess(crop):
    """By hand: H x W x K in [0, 1] -> K x H x W in the net's channel order, times 255,
    minus the mean, times the input scale."""
    x = np.asarray(crop, np.float64).transpose(2, 0, 1)[list(SWAP)]
    return (x * RAW - MEAN[:, None, None]) * INPUT_SCALE


def scores(params, x, softmax):
    weight, bias = params
    y = weight.astype(np.float64) @ x.ravel() + bias
    if softmax:
        y = np.exp(y - y.max())
        y /= y.sum()
    return y


# ---------------------------------------------------------------------------
# Classifier

@pytest.fixture(scope="module")
def clf_model(tmp_path_factory):
    """Net input 4 x 3 x 5 x 6 (not square: height and width must not swap)."""
    return tiny_model(tmp_path_factory.mktemp("clf"), np.random.default_rng(1), 5, 6, "Softmax",
                      "prob", 4)


@pytest.fixture(scope="module")
def clf(clf_model):
    proto, weights, _ = clf_model
    return caffe.Classifier(proto, weights, image_dims=(7, 9), mean=MEAN, raw_scale=RAW,
                            input_scale=INPUT_SCALE, channel_swap=SWAP)


def test_classifier_is_a_test_phase_net_with_the_weights(clf, clf_model):
    assert isinstance(clf, caffe.Net) and clf.phase == caffe.TEST
    np.testing.assert_array_equal(clf.params["ip"][0].data, clf_model[2][0])
    assert tuple(clf.crop_dims) == (5, 6) and tuple(clf.image_dims) == (7, 9)
    assert clf.transformer.transpose["data"] == (2, 0, 1)


def test_predict_averages_ten_crops(clf, clf_model, rng):
    images = [rng.uniform(size=(7, 9, 3)).astype(np.float32) for _ in range(3)]
    # the corners and the center (int(7/2 - 5/2) = 1, int(9/2 - 6/2) = 1) of a 7 x 9 image
    corners = [(0, 0), (0, 3), (2, 0), (2, 3), (1, 1)]
    expected = []
    for im in images:
        crops = [im[r:r + 5, c:c + 6] for r, c in corners]
        crops += [crop[:, ::-1] for crop in crops]
        expected.append(np.mean([scores(clf_model[2], preprocess(c), True) for c in crops], 0))
    got = clf.predict(images)       # 30 crops: forward_all in batches of 4
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_predict_center_crop_only(clf, clf_model, rng):
    images = [rng.uniform(size=(7, 9, 3)).astype(np.float32) for _ in range(2)]
    got = clf.predict(images, oversample=False)
    expected = [scores(clf_model[2], preprocess(im[1:6, 1:7]), True) for im in images]
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_predict_resizes_to_image_dims_first(clf, clf_model, rng):
    image = rng.uniform(size=(14, 11, 3)).astype(np.float32)
    resized = caffe_io.resize_image(image, (7, 9))
    expected = scores(clf_model[2], preprocess(resized[1:6, 1:7]), True)
    np.testing.assert_allclose(clf.predict([image], oversample=False)[0], expected, rtol=1e-5,
                               atol=1e-6)


def test_default_image_dims_are_the_net_input(clf_model, rng):
    proto, weights, params = clf_model
    plain = caffe.Classifier(proto, weights)      # no preprocessing options
    assert tuple(plain.image_dims) == (5, 6)
    image = rng.uniform(size=(5, 6, 3)).astype(np.float32)
    x = image.transpose(2, 0, 1).astype(np.float64)
    # the five crops are the whole image; the mirrors are its mirror
    expected = (scores(params, x, True) + scores(params, x[:, :, ::-1], True)) / 2
    np.testing.assert_allclose(plain.predict([image])[0], expected, rtol=1e-5, atol=1e-6)


def test_predict_names_bad_images(clf):
    with pytest.raises(ValueError, match=r"image 1 has shape \(7, 9\).*H x W x K"):
        clf.predict([np.zeros((7, 9, 3)), np.zeros((7, 9))])
    with pytest.raises(ValueError, match=r"image 0 has shape \(7, 9, 1\): 1 channels.*takes 3"):
        clf.predict([np.zeros((7, 9, 1))])
    with pytest.raises(ValueError, match="at least one image"):
        clf.predict([])


def test_image_dims_smaller_than_the_input_are_refused(clf_model):
    proto, weights, _ = clf_model
    small = caffe.Classifier(proto, weights, image_dims=(4, 8))
    with pytest.raises(ValueError, match=r"image_dims \(4, 8\) is smaller than .*\(5, 6\)"):
        small.predict([np.zeros((4, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="image_dims must be"):
        caffe.Classifier(proto, weights, image_dims=(4, 8, 3))


# ---------------------------------------------------------------------------
# Detector

@pytest.fixture(scope="module")
def det_model(tmp_path_factory):
    """Net input 3 x 3 x 10 x 10 (square, for context padding)."""
    return tiny_model(tmp_path_factory.mktemp("det"), np.random.default_rng(2), 10, 10,
                      "TanH", "score", 3)


@pytest.fixture
def det(det_model):
    proto, weights, _ = det_model
    return caffe.Detector(proto, weights, mean=MEAN, raw_scale=RAW, input_scale=INPUT_SCALE,
                          channel_swap=SWAP)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two RGB PNGs, 12 x 16 and 14 x 13, and their pixels / 255 (read back by PIL)."""
    where = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    out = []
    for i, shape in enumerate([(12, 16, 3), (14, 13, 3)]):
        path = str(where / ("im%d.png" % i))
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        out.append((path, np.asarray(Image.open(path).convert("RGB"), np.float32) / 255))
    return out


def test_detect_windows_classifies_each_window(det, det_model, images):
    (f0, im0), (f1, im1) = images
    # 10 x 10 windows: no resizing; (ymin, xmin, ymax, xmax), ymax/xmax excluded
    windows0 = [np.array([0, 0, 10, 10]), np.array([2, 6, 12, 16])]
    windows1 = [np.array([4, 3, 14, 13])]
    got = det.detect_windows([(f0, windows0), (f1, windows1)])
    assert [d["filename"] for d in got] == [f0, f0, f1]
    assert [d["window"] is w for d, w in zip(got, windows0 + windows1)] == [True] * 3
    crops = [im0[0:10, 0:10], im0[2:12, 6:16], im1[4:14, 3:13]]
    for d, crop in zip(got, crops):
        expected = np.tanh(scores(det_model[2], preprocess(crop), False))
        np.testing.assert_allclose(d["prediction"], expected, rtol=1e-5, atol=1e-6)


def test_detect_windows_warps_windows_to_the_input(det, det_model, images):
    f0, im0 = images[0]
    got = det.detect_windows(iter([(f0, [(1, 2, 7, 15)])]))   # any iterable of pairs
    warped = caffe_io.resize_image(im0[1:7, 2:15], (10, 10))
    expected = np.tanh(scores(det_model[2], preprocess(warped), False))
    np.testing.assert_allclose(got[0]["prediction"], expected, rtol=1e-5, atol=1e-6)
    assert det.detect_windows([(f0, [])]) == []


def test_context_mean_is_the_mean_in_image_space(det):
    det.configure_crop(1)
    assert tuple(det.crop_dims) == (10, 10, 3)
    # in image channel order, divided by raw_scale; input_scale plays no part
    np.testing.assert_allclose(det.crop_mean.reshape(-1), IMAGE_MEAN, rtol=1e-6)
    det.configure_crop(None)
    assert det.context_pad is None and tuple(det.crop_dims) == (10, 10, 3)


def test_context_crop_at_the_top_left_border(det, images):
    """Window (0, 0, 7, 7), net input 10, context_pad 1: scale 10 / 8; the window
    counts 8 rows (ymax included), so the box is 4 +- 5 -> rows -1..9, 11 of them;
    1 row of canvas lies above the image (round(10 / 11)); rows 0..9 of the image,
    clipped, take round(10 * 10 / 11) = 9 rows; slicing [0:9] gives 9: no resize."""
    det.configure_crop(1)
    im = images[0][1]
    got = det.crop(im, np.array([0, 0, 7, 7]))
    expected = np.empty((10, 10, 3), np.float32)
    expected[...] = IMAGE_MEAN
    expected[1:10, 1:10] = im[0:9, 0:9]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # the padding preprocesses to zero
    np.testing.assert_allclose(det.transformer.preprocess("data", got)[:, 0, :], 0, atol=1e-5)


def test_context_crop_at_the_bottom_right_border(det, images):
    """Window (6, 10, 11, 15) of a 12 x 16 image: center (9, 13), box rounded from
    (5.25, 9.25, 12.75, 16.75) to (5, 9, 13, 17), 9 pixels a side, scale 10 / 9; clipped
    to (5, 9, 12, 16) it counts 8 (pycaffe clips to H, not H - 1), round(80 / 9) = 9
    canvas pixels, but the slice [5:12, 9:16] has only 7: resized 7 -> 9. Row and
    column 9 of the canvas stay the mean."""
    det.configure_crop(1)
    im = images[0][1]
    got = det.crop(im, (6, 10, 11, 15))
    expected = np.empty((10, 10, 3), np.float32)
    expected[...] = IMAGE_MEAN
    expected[0:9, 0:9] = caffe_io.resize_image(im[5:12, 9:16], (9, 9))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_context_crop_inside_the_image_fills_the_canvas(det, images):
    """Window (2, 3, 9, 8) of a 14 x 13 image: box (6 -/+ 5, 6 -/+ 3.75) rounded to
    (1, 2, 11, 10) (2.25 -> 2, 9.75 -> 10): 11 x 9 pixels, all inside, each side
    round(11 * 10 / 11) = round(9 * 10 / 9) = 10 canvas pixels; the slice
    [1:11, 2:10] (10 x 8) is resized to fill the whole canvas: no mean border."""
    det.configure_crop(1)
    im = images[1][1]
    got = det.crop(im, (2, 3, 9, 8))
    expected = caffe_io.resize_image(im[1:11, 2:10], (10, 10))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_detect_windows_with_context(det, det_model, images):
    det.configure_crop(1)
    f0, im0 = images[0]
    got = det.detect_windows([(f0, [(0, 0, 7, 7)])])
    canvas = np.empty((10, 10, 3), np.float32)
    canvas[...] = IMAGE_MEAN
    canvas[1:10, 1:10] = im0[0:9, 0:9]
    expected = np.tanh(scores(det_model[2], preprocess(canvas), False))
    np.testing.assert_allclose(got[0]["prediction"], expected, rtol=1e-5, atol=1e-5)


def test_bad_windows_are_named(det, images):
    im = images[0][1]
    with pytest.raises(ValueError, match=r"window \(1, 2, 3\) is not 4 whole numbers"):
        det.crop(im, (1, 2, 3))
    with pytest.raises(ValueError, match=r"window \(5, 2, 5, 9\) is empty.*ymin, xmin"):
        det.crop(im, (5, 2, 5, 9))
    with pytest.raises(ValueError, match=r"not 4 whole numbers"):
        det.crop(im, (0.5, 0, 4, 4))
    with pytest.raises(ValueError, match=r"window \(-2, 0, 4, 4\) starts outside the "
                                         r"\(12, 16, 3\) image"):
        det.crop(im, (-2, 0, 4, 4))
    with pytest.raises(ValueError, match=r"window \(12, 0, 15, 4\) selects no pixels"):
        det.crop(im, (12, 0, 15, 4))
    det.configure_crop(1)
    with pytest.raises(ValueError, match=r"window \(30, 30, 40, 40\) with context padding 1 "
                                         r"covers no pixels"):
        det.crop(im, (30, 30, 40, 40))


def test_context_pad_needs_a_square_input(clf_model):
    proto, weights, _ = clf_model          # a 5 x 6 input
    with pytest.raises(ValueError, match="square net input.*5 x 6"):
        caffe.Detector(proto, weights, context_pad=1)


def test_detect_selective_search_uses_the_module(det, images, monkeypatch):
    (f0, im0), (f1, _) = images
    calls = []

    def get_windows(fnames, cmd):
        calls.append((list(fnames), cmd))
        return [np.array([[0, 0, 10, 10], [2, 6, 12, 16]]), np.array([[4, 3, 14, 13]])]
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python",
                        types.SimpleNamespace(get_windows=get_windows))
    monkeypatch.chdir(os.path.dirname(f0))
    got = det.detect_selective_search([os.path.basename(f0), os.path.basename(f1)])
    f0, f1 = (os.path.join(os.getcwd(), os.path.basename(f)) for f in (f0, f1))
    assert calls == [([f0, f1], "selective_search_rcnn")]
    assert [d["filename"] for d in got] == [f0, f0, f1]     # all windows, absolute paths
    np.testing.assert_array_equal(got[1]["window"], [2, 6, 12, 16])
    direct = det.detect_windows([(f0, [np.array([2, 6, 12, 16])])])
    np.testing.assert_allclose(got[1]["prediction"], direct[0]["prediction"], rtol=1e-6)


def test_detect_selective_search_says_what_is_missing(det, images, monkeypatch):
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python", None)
    with pytest.raises(ImportError, match="selective_search_ijcv_with_python.*github"):
        det.detect_selective_search([images[0][0]])
