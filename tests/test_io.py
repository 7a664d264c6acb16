"""jcaffe.io (pycaffe's caffe.io): conversions, Transformer, image helpers."""
import numpy as np
import pytest
from PIL import Image

import jcaffe
from jcaffe import io as caffe_io


def test_exposed_as_jcaffe_io():
    assert jcaffe.io is caffe_io
    for name in ("blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
                 "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array",
                 "Transformer", "load_image", "resize_image", "oversample"):
        assert callable(getattr(jcaffe.io, name))


def test_blobproto_roundtrip():
    a = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    d = np.ones_like(a)
    bp = caffe_io.array_to_blobproto(a, d)
    assert list(bp.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(caffe_io.blobproto_to_array(bp), a)
    np.testing.assert_array_equal(caffe_io.blobproto_to_array(bp, return_diff=True), d)


def test_blobprotovector_roundtrip():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((1, 2, 2, 2), np.float32)]
    s = caffe_io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(s, bytes)
    back = caffe_io.blobprotovector_str_to_arraylist(s)
    assert len(back) == 2
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)


def test_datum_roundtrip_uint8_and_float():
    u = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    d = caffe_io.array_to_datum(u, 5)
    assert (d.channels, d.height, d.width, d.label) == (2, 3, 4, 5) and d.data == u.tobytes()
    out = caffe_io.datum_to_array(d)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, u)
    f = np.linspace(-1, 1, 24).reshape(2, 3, 4)
    d = caffe_io.array_to_datum(f)
    assert not d.data and not d.HasField("label")
    np.testing.assert_allclose(caffe_io.datum_to_array(d), f)
    with pytest.raises(ValueError, match="Incorrect array shape"):
        caffe_io.array_to_datum(np.zeros((2, 2)))


def make_transformer():
    t = caffe_io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_transformer_preprocess_matches_numpy_and_deprocess_inverts():
    img = np.random.default_rng(1).uniform(size=(4, 5, 3)).astype(np.float32)
    t = make_transformer()
    out = t.preprocess("data", img)
    expect = (img.transpose(2, 0, 1)[[2, 1, 0]] * 255.0
              - np.array([10.0, 20.0, 30.0])[:, None, None]) * 0.5
    np.testing.assert_allclose(out, expect, rtol=1e-5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(t.deprocess("data", out), img, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.deprocess("data", out[None]), img, rtol=1e-5, atol=1e-6)


def test_transformer_resizes_to_the_input_and_elementwise_mean():
    t = caffe_io.Transformer({"data": (1, 1, 4, 4)})
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", np.full((4, 4), 0.25))
    out = t.preprocess("data", np.full((8, 8, 1), 0.75, np.float32))
    assert out.shape == (1, 4, 4)
    np.testing.assert_allclose(out, 0.5)


def test_transformer_errors():
    t = caffe_io.Transformer({"data": (1, 3, 4, 5)})
    with pytest.raises(Exception, match="not one of the net inputs"):
        t.preprocess("nope", np.zeros((4, 5, 3)))
    with pytest.raises(Exception, match="Transpose order"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(Exception, match="Channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels incompatible"):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(ValueError, match="Mean shape incompatible"):
        t.set_mean("data", np.zeros((3, 2, 2)))


def test_load_image_color_and_gray(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (6, 7, 3)).astype(np.uint8)
    path = str(tmp_path / "x.png")
    Image.fromarray(rgb).save(path)
    img = caffe_io.load_image(path)
    assert img.shape == (6, 7, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, rgb / 255.0, rtol=1e-6)
    gray = caffe_io.load_image(path, color=False)
    assert gray.shape == (6, 7, 1)
    np.testing.assert_allclose(gray[:, :, 0], (rgb / 255.0) @ [0.2125, 0.7154, 0.0721], rtol=1e-5)
    g = str(tmp_path / "g.png")
    Image.fromarray(rgb[:, :, 0]).save(g)
    assert caffe_io.load_image(g).shape == (6, 7, 3)      # gray file, color=True: tiled
    assert caffe_io.load_image(g, color=False).shape == (6, 7, 1)


def test_resize_image():
    im = np.random.default_rng(3).uniform(size=(4, 6, 3)).astype(np.float32)
    out = caffe_io.resize_image(im, (8, 12))
    assert out.shape == (8, 12, 3) and out.dtype == np.float32
    assert im.min() - 1e-6 <= out.min() and out.max() <= im.max() + 1e-6
    const = caffe_io.resize_image(np.full((3, 3, 2), 0.4, np.float32), (5, 7))
    assert const.shape == (5, 7, 2) and np.allclose(const, 0.4)
    assert caffe_io.resize_image(np.zeros((3, 3, 5), np.float32) + np.arange(5), (2, 2)).shape == (2, 2, 5)


def test_oversample_corners_center_and_mirrors():
    im = np.arange(6 * 8 * 2, dtype=np.float32).reshape(6, 8, 2)
    crops = caffe_io.oversample([im, im + 1], (4, 4))
    assert crops.shape == (20, 4, 4, 2)
    expect = [im[0:4, 0:4], im[0:4, 4:8], im[2:6, 0:4], im[2:6, 4:8], im[1:5, 2:6]]
    for k in range(5):
        np.testing.assert_array_equal(crops[k], expect[k])
        np.testing.assert_array_equal(crops[5 + k], expect[k][:, ::-1])
    np.testing.assert_array_equal(crops[10], expect[0] + 1)
