"""Input and DummyData: shapes, fillers, Caffe's once/once-per-top rules."""
import numpy as np
import pytest

import jcaffe
from jcaffe.errors import LayerSetupError
from netutil import make_net


def test_input_shapes_once_or_per_top(tmp_path):
    net = make_net(tmp_path, """
        layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "in2" type: "Input" top: "c" top: "d"
          input_param { shape { dim: 1 } shape { dim: 4 dim: 5 } } }""")
    assert [net.blobs[n].shape for n in "abcd"] == [(2, 3), (2, 3), (1,), (4, 5)]
    assert net.inputs == ["a", "b", "c", "d"]
    with pytest.raises(LayerSetupError, match="Input layer 'in'.*once per top blob"):
        make_net(tmp_path, """
            layer { name: "in" type: "Input" top: "a" top: "b" top: "c"
              input_param { shape { dim: 1 } shape { dim: 2 } } }""")


def test_input_keeps_user_data_and_user_reshape(tmp_path):
    net = make_net(tmp_path, """
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
        layer { name: "r" type: "ReLU" bottom: "x" top: "y" }""")
    net.blobs["x"].reshape(3, 2)
    net.blobs["x"].data[...] = [[1, -1], [2, -2], [-3, 3]]
    out = net.forward()
    np.testing.assert_array_equal(out["y"], [[1, 0], [2, 0], [0, 3]])
    assert net.blobs["x"].shape == (3, 2)


def test_dummy_data_fillers_and_shapes(tmp_path):
    jcaffe.set_random_seed(5)
    net = make_net(tmp_path, """
        layer { name: "d" type: "DummyData" top: "c" top: "u" top: "g"
          dummy_data_param {
            shape { dim: 2 dim: 3 } shape { dim: 1000 } shape { dim: 4000 }
            data_filler { type: "constant" value: 7 }
            data_filler { type: "uniform" min: -2 max: 3 }
            data_filler { type: "gaussian" mean: 1 std: 0.5 } } }""")
    out = net.forward()
    np.testing.assert_array_equal(out["c"], np.full((2, 3), 7.0))
    assert out["u"].min() >= -2 and out["u"].max() <= 3 and abs(out["u"].mean() - 0.5) < 0.15
    assert abs(out["g"].mean() - 1) < 0.05 and abs(out["g"].std() - 0.5) < 0.05
    first = out["g"].copy()
    second = net.forward()["g"]
    assert not np.array_equal(first, second), "random fillers refill on every forward"


def test_dummy_data_legacy_dims_and_default_zero(tmp_path):
    net = make_net(tmp_path, """
        layer { name: "d" type: "DummyData" top: "x"
          dummy_data_param { num: 2 channels: 3 height: 4 width: 5 } }""")
    out = net.forward()
    assert out["x"].shape == (2, 3, 4, 5) and not out["x"].any()


def test_dummy_data_legacy_dims_each_once_or_per_top(tmp_path):
    """Caffe's rule (and its own DummyData test's setup): num, channels, height and width
    are each given once or once per top, independently of the others."""
    net = make_net(tmp_path, """
        layer { name: "d" type: "DummyData" top: "a" top: "b"
          dummy_data_param { num: 5 num: 3 channels: 3 height: 2 width: 4 width: 1 } }""")
    assert [net.blobs[b].shape for b in "ab"] == [(5, 3, 2, 4), (3, 3, 2, 1)]
    with pytest.raises(LayerSetupError, match="DummyData layer 'd': Must specify 'height' once, "
                                              "or once per top blob \\(2\\); specified 3"):
        make_net(tmp_path, """
            layer { name: "d" type: "DummyData" top: "a" top: "b"
              dummy_data_param { num: 5 channels: 3 height: 2 height: 1 height: 1 width: 4 } }""")


def test_dummy_data_bad_filler_count(tmp_path):
    with pytest.raises(LayerSetupError, match="DummyData layer 'd'.*data_filler"):
        make_net(tmp_path, """
            layer { name: "d" type: "DummyData" top: "a" top: "b" top: "c"
              dummy_data_param { shape { dim: 2 }
                data_filler { type: "constant" } data_filler { type: "constant" } } }""")


def test_dummy_data_takes_every_caffe_filler(tmp_path):
    """Caffe's DummyData takes any filler: the random ones refill at every forward
    (xavier and msra scaled by the top's fan-in, positive_unitball's rows summing to 1,
    a sparse gaussian keeping sparse / shape[0] of its values), bilinear's kernel is
    fixed."""
    jcaffe.set_random_seed(3)
    net = make_net(tmp_path, """
        layer { name: "d" type: "DummyData" top: "x" top: "m" top: "p" top: "s" top: "b"
          dummy_data_param {
            shape { dim: 50 dim: 2 dim: 10 dim: 10 } shape { dim: 50 dim: 2 dim: 10 dim: 10 }
            shape { dim: 40 dim: 30 } shape { dim: 20 dim: 500 } shape { dim: 2 dim: 1 dim: 4 dim: 4 }
            data_filler { type: "xavier" } data_filler { type: "msra" }
            data_filler { type: "positive_unitball" }
            data_filler { type: "gaussian" std: 2 sparse: 5 }
            data_filler { type: "bilinear" } } }""")
    out = net.forward()
    a = np.sqrt(3.0 / 200)                               # fan_in = 2 * 10 * 10
    assert np.abs(out["x"]).max() <= a and abs(out["x"].std() - a / np.sqrt(3)) < 0.05 * a
    assert abs(out["m"].std() - np.sqrt(2.0 / 200)) < 0.03 * np.sqrt(2.0 / 200)
    assert out["p"].min() >= 0
    np.testing.assert_allclose(out["p"].sum(axis=1), np.ones(40), rtol=1e-5)
    kept = out["s"] != 0
    assert abs(kept.mean() - 5 / 20) < 0.03 and abs(out["s"][kept].std() - 2) < 0.1
    from jcaffe import fillers
    from jcaffe.proto import caffe_pb2
    np.testing.assert_array_equal(out["b"], fillers.fill(
        caffe_pb2.FillerParameter(type="bilinear"), (2, 1, 4, 4), None))
    again = net.forward()
    assert not np.array_equal(again["x"], out["x"]) and not np.array_equal(again["s"], out["s"])
    np.testing.assert_array_equal(again["b"], out["b"])


@pytest.mark.parametrize("filler,match", [
    ('type: "bilinear"', "\\(shape 2 3 \\(6\\)\\): bilinear filler: needs a 4-d blob"),
    ('type: "gaussian" std: 1 sparse: 5', "sparse \\(5\\) must not exceed"),
    ('type: "uniform" min: 1 max: 0', "min \\(1\\) must not exceed max \\(0\\)"),
    ('type: "gaussian" std: 0', "std must be positive"),
    ('type: "nope"', "unknown filler type 'nope'"),
])
def test_dummy_data_filler_errors_name_the_layer_and_top(tmp_path, filler, match):
    with pytest.raises(LayerSetupError, match="DummyData layer 'd': data_filler of top 0.*"
                                              + match):
        make_net(tmp_path, """
            layer { name: "d" type: "DummyData" top: "a"
              dummy_data_param { shape { dim: 2 dim: 3 } data_filler { %s } } }""" % filler)
