"""DataTransformer vs hand-computed numpy references, every option, TRAIN and TEST."""
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from jcaffe import TEST, TRAIN, protoio
from jcaffe import io as caffe_io
from jcaffe.data_transformer import DataTransformer, datum_to_chw
from jcaffe.db import DataSourceError
from jcaffe.proto import caffe_pb2


def tp(**kw):
    p = caffe_pb2.TransformationParameter()
    for k, v in kw.items():
        if k == "mean_value":
            p.mean_value.extend(v)
        else:
            setattr(p, k, v)
    return p


@pytest.fixture
def img():
    return np.arange(2 * 5 * 6, dtype=np.uint8).reshape(2, 5, 6) * 3


def test_scale_and_mean_values(img):
    t = DataTransformer(tp(scale=0.5, mean_value=[10, 20]), TEST)
    expect = (img.astype(np.float32) - np.array([10, 20], np.float32)[:, None, None]) * 0.5
    np.testing.assert_allclose(t.transform_datum(caffe_io.array_to_datum(img)), expect)
    one = DataTransformer(tp(mean_value=[7]), TEST)   # one value for every channel
    np.testing.assert_allclose(one.transform(img), img - 7.0)
    with pytest.raises(DataSourceError, match="Specify either 1 mean_value or as many as channels: 2"):
        DataTransformer(tp(mean_value=[1, 2, 3]), TEST).transform(img)


def test_mean_file_subtracted_at_uncropped_position(tmp_path, img):
    mean = np.random.default_rng(0).uniform(0, 50, (1, 2, 5, 6)).astype(np.float32)
    path = str(tmp_path / "mean.binaryproto")
    protoio.write_blobproto(mean, path)
    t = DataTransformer(tp(mean_file=path, crop_size=3, scale=2.0), TEST)
    h0, w0 = (5 - 3) // 2, (6 - 3) // 2
    expect = ((img.astype(np.float32) - mean[0]) * 2.0)[:, h0:h0 + 3, w0:w0 + 3]
    np.testing.assert_allclose(t.transform(img), expect, rtol=1e-6)


def test_mean_file_of_wrong_shape_names_the_file_and_record(tmp_path, img):
    path = str(tmp_path / "mean.binaryproto")
    protoio.write_blobproto(np.zeros((1, 3, 5, 6), np.float32), path)
    t = DataTransformer(tp(mean_file=path), TEST, name="data")
    with pytest.raises(DataSourceError, match="layer 'data', record 'k1'.*mean.binaryproto.*3x5x6.*2 x 5 x 6"):
        t.transform(img, "record 'k1'")


def test_mean_file_and_mean_value_together_is_an_error(tmp_path):
    with pytest.raises(DataSourceError, match="Cannot specify mean_file and mean_value"):
        DataTransformer(tp(mean_file="x", mean_value=[1]), TEST)


def test_center_crop_in_test_phase(img):
    t = DataTransformer(tp(crop_size=3), TEST)
    np.testing.assert_array_equal(t.transform(img), img[:, 1:4, 1:4].astype(np.float32))


def test_random_crop_and_mirror_in_train_follow_caffes_draw_order(img):
    seed = 123
    t = DataTransformer(tp(crop_size=3, mirror=True), TRAIN, seed=seed)
    ref = np.random.default_rng(seed)
    mirrors, offsets = set(), set()
    for _ in range(40):
        do_mirror = int(ref.integers(0, 2)) == 1        # Rand(2) first,
        h_off = int(ref.integers(0, 5 - 3 + 1))         # then h_off = Rand(H - crop + 1),
        w_off = int(ref.integers(0, 6 - 3 + 1))         # then w_off
        expect = img[:, h_off:h_off + 3, w_off:w_off + 3].astype(np.float32)
        if do_mirror:
            expect = expect[:, :, ::-1]
        np.testing.assert_array_equal(t.transform(img), expect)
        mirrors.add(do_mirror)
        offsets.add((h_off, w_off))
    assert mirrors == {True, False} and len(offsets) > 3


def test_mirror_applies_in_test_phase_too(img):
    t = DataTransformer(tp(mirror=True), TEST, seed=1)
    outs = {t.transform(img).tobytes() for _ in range(30)}
    assert outs == {img.astype(np.float32).tobytes(), img[:, :, ::-1].astype(np.float32).tobytes()}


def test_deterministic_under_the_seed(img):
    import jcaffe
    runs = []
    for _ in range(2):
        jcaffe.set_random_seed(7)
        t = DataTransformer(tp(crop_size=2, mirror=True), TRAIN)
        runs.append([t.transform(img).tobytes() for _ in range(10)])
    assert runs[0] == runs[1]


def test_float_data_datum(img):
    arr = np.random.default_rng(1).normal(size=(2, 5, 6)).astype(np.float32)
    d = caffe_io.array_to_datum(arr)
    assert not d.data and len(d.float_data) == arr.size
    np.testing.assert_allclose(DataTransformer(tp(scale=3.0), TEST).transform_datum(d), arr * 3.0,
                               rtol=1e-6)


def test_datum_size_mismatch_is_an_error():
    d = caffe_pb2.Datum(channels=1, height=3, width=3, data=b"\x00" * 8)
    with pytest.raises(DataSourceError, match="record 'k'.*8 bytes.*= 9"):
        datum_to_chw(d, where="record 'k'")


def encoded_datum(arr_hwc_rgb, fmt="PNG", label=0):
    buf = io.BytesIO()
    im = Image.fromarray(arr_hwc_rgb if arr_hwc_rgb.shape[2] == 3 else arr_hwc_rgb[:, :, 0])
    im.save(buf, format=fmt)
    return caffe_pb2.Datum(data=buf.getvalue(), encoded=True, label=label)


def test_encoded_datum_decodes_to_bgr_like_opencv():
    rgb = np.random.default_rng(2).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    d = encoded_datum(rgb)
    out = DataTransformer(tp(), TEST).transform_datum(d)
    np.testing.assert_array_equal(out, rgb[:, :, ::-1].transpose(2, 0, 1).astype(np.float32))
    gray = DataTransformer(tp(force_gray=True), TEST).transform_datum(d)
    assert gray.shape == (1, 4, 5)
    np.testing.assert_array_equal(gray[0], np.asarray(Image.fromarray(rgb).convert("L"), np.float32))


def test_encoded_gray_and_force_color():
    g = np.random.default_rng(3).integers(0, 256, (4, 5, 1)).astype(np.uint8)
    d = encoded_datum(g)
    assert DataTransformer(tp(), TEST).transform_datum(d).shape == (1, 4, 5)
    color = DataTransformer(tp(force_color=True), TEST).transform_datum(d)
    assert color.shape == (3, 4, 5)
    for c in range(3):
        np.testing.assert_array_equal(color[c], g[:, :, 0].astype(np.float32))


def test_undecodable_encoded_datum_names_the_record():
    d = caffe_pb2.Datum(data=b"not an image", encoded=True)
    with pytest.raises(DataSourceError, match="record '00000004_x.jpg'.*could not decode"):
        DataTransformer(tp(), TEST).transform_datum(d, "record '00000004_x.jpg'")


def test_crop_larger_than_input():
    with pytest.raises(DataSourceError, match="crop_size 9"):
        DataTransformer(tp(crop_size=9), TEST).transform(np.zeros((1, 4, 4), np.uint8))


def caffe_reference(batch, param, phase, seed, mean=None):
    """Caffe's DataTransformer item by item, written out: per item Rand(2) for the mirror
    (when set), then h_off and w_off (crop in TRAIN); (x - mean) * scale in float32."""
    rng = np.random.default_rng(seed)
    crop = param.crop_size
    out = []
    for x in batch:
        c, h, w = x.shape
        do_mirror = bool(param.mirror) and int(rng.integers(0, 2)) == 1
        y = x.astype(np.float32)
        if mean is not None:
            y = y - mean
        elif len(param.mean_value):
            mv = list(param.mean_value) * (c if len(param.mean_value) == 1 else 1)
            y = y - np.asarray(mv, np.float32)[:, None, None]
        if crop:
            if phase == TRAIN:
                h_off, w_off = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
            else:
                h_off, w_off = (h - crop) // 2, (w - crop) // 2
            y = y[:, h_off:h_off + crop, w_off:w_off + crop]
        if do_mirror:
            y = y[:, :, ::-1]
        out.append(y * np.float32(param.scale))
    return np.stack(out)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 5), c=st.sampled_from([1, 3]), h=st.integers(2, 7), w=st.integers(2, 7),
       crop=st.integers(0, 3), mirror=st.booleans(), mean=st.sampled_from(["none", "one", "per channel", "file"]),
       scale=st.sampled_from([1.0, 0.00390625, 0.017]), phase=st.sampled_from([TRAIN, TEST]),
       floats=st.booleans(), seed=st.integers(0, 2**32))
def test_batch_transform_is_caffes_per_item_transform(tmp_path_factory, n, c, h, w, crop, mirror, mean,
                                                        scale, phase, floats, seed):
    """transform_batch (the Data layer's whole-batch path) against the item-by-item reference:
    the same draws in the same order and bit-identical float32 values."""
    crop = min(crop, h, w)
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 256, (n, c, h, w)).astype(np.uint8)
    if floats:      # float_data datums
        batch = rng.normal(0, 50, (n, c, h, w)).astype(np.float32)
    kw = dict(crop_size=crop, mirror=mirror, scale=scale)
    mean_arr = None
    if mean == "one":
        kw["mean_value"] = [100.5]
    elif mean == "per channel":
        kw["mean_value"] = [104.0, 117.0, 123.0][:c]
    elif mean == "file":
        mean_arr = rng.uniform(0, 255, (c, h, w)).astype(np.float32)
        kw["mean_file"] = str(tmp_path_factory.mktemp("mean") / "mean.binaryproto")
        protoio.write_blobproto(mean_arr[None], kw["mean_file"])
    param = tp(**kw)
    got = DataTransformer(param, phase, seed=seed).transform_batch(batch)
    expect = caffe_reference(batch, param, phase, seed, mean_arr)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expect)
    one = DataTransformer(param, phase, seed=seed)     # item by item gives the same stream
    np.testing.assert_array_equal(np.stack([one.transform(x) for x in batch]), expect)


def test_batch_transform_errors_name_the_first_record(tmp_path):
    path = str(tmp_path / "mean.binaryproto")
    protoio.write_blobproto(np.zeros((1, 3, 5, 6), np.float32), path)
    t = DataTransformer(tp(mean_file=path), TEST, name="data")
    with pytest.raises(DataSourceError, match="layer 'data', record 'k0'.*mean.binaryproto.*3x5x6.*2 x 5 x 6"):
        t.transform_batch(np.zeros((2, 2, 5, 6), np.uint8), lambda i: "record 'k%d'" % i)
    with pytest.raises(DataSourceError, match="crop_size 9"):
        DataTransformer(tp(crop_size=9), TEST).transform_batch(np.zeros((2, 1, 4, 4), np.uint8))
