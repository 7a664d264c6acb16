"""Caffe's fillers: exact values where they are deterministic, moments where random."""

import math

import numpy as np
import pytest

from jcaffe import fillers
from jcaffe.errors import LayerSetupError
from jcaffe.proto import caffe_pb2

FP = caffe_pb2.FillerParameter


def fill(shape, dtype=np.float32, seed=0, **param):
    return fillers.fill(FP(**param), shape, np.random.default_rng(seed), dtype)


def test_names():
    assert sorted(fillers.get_filler_names()) == sorted(
        ["constant", "gaussian", "positive_unitball", "uniform", "xavier",
         "msra", "bilinear"])


def test_constant_exact_and_default_is_zero():
    x = fill((2, 3, 4), type="constant", value=2.5)
    assert x.shape == (2, 3, 4) and x.dtype == np.float32
    np.testing.assert_array_equal(x, np.full((2, 3, 4), 2.5, np.float32))
    np.testing.assert_array_equal(fill((5,)), np.zeros(5, np.float32))


def test_uniform_moments_and_bounds():
    x = fill((100_000,), type="uniform", min=-2.0, max=3.0)
    assert x.min() >= -2.0 and x.max() <= 3.0
    assert abs(x.mean() - 0.5) < 0.03
    assert abs(x.var() - 25 / 12) < 0.05


def test_gaussian_moments():
    x = fill((200, 500), type="gaussian", mean=10.0, std=0.1)
    assert abs(x.mean() - 10.0) < 0.002
    assert abs(x.std() - 0.1) < 0.002


def test_gaussian_sparse_keeps_sparse_over_num_outputs():
    x = fill((10, 20_000), type="gaussian", std=2.0, sparse=3)
    assert abs(np.mean(x != 0) - 0.3) < 0.01
    assert abs(x[x != 0].std() - 2.0) < 0.05
    # Caffe only asks for one axis; sparse=0 zeroes everything.
    assert abs(np.mean(fill((4_000,), type="gaussian", sparse=1000) != 0) - 0.25) < 0.03
    assert not fill((5, 7), type="gaussian", sparse=0).any()


@pytest.mark.parametrize("norm, n", [(FP.FAN_IN, 32 * 9), (FP.FAN_OUT, 64 * 9),
                                     (FP.AVERAGE, (32 * 9 + 64 * 9) / 2)])
def test_xavier_scale_per_variance_norm(norm, n):
    x = fill((64, 32, 3, 3), type="xavier", variance_norm=norm)
    bound = math.sqrt(3 / n)
    assert np.abs(x).max() <= bound
    assert np.abs(x).max() > 0.995 * bound
    assert abs(x.std() - math.sqrt(1 / n)) < 0.02 * math.sqrt(1 / n)


@pytest.mark.parametrize("norm, n", [(FP.FAN_IN, 32 * 9), (FP.FAN_OUT, 64 * 9),
                                     (FP.AVERAGE, (32 * 9 + 64 * 9) / 2)])
def test_msra_std_per_variance_norm(norm, n):
    x = fill((64, 32, 3, 3), type="msra", variance_norm=norm)
    assert abs(x.mean()) < 0.05 * math.sqrt(2 / n)
    assert abs(x.std() - math.sqrt(2 / n)) < 0.02 * math.sqrt(2 / n)


def test_xavier_fans_of_1d_and_2d_blobs():
    # 1-d: fan_in = count / shape[0] = 1, fan_out = count.
    x = fill((50_000,), type="xavier", variance_norm=FP.FAN_OUT)
    assert np.abs(x).max() <= math.sqrt(3 / 50_000)
    assert np.abs(x).max() > 0.99 * math.sqrt(3 / 50_000)
    # InnerProduct weights (N, K): fan_in = K, fan_out = N.
    x = fill((300, 1000), type="xavier", variance_norm=FP.AVERAGE)
    assert np.abs(x).max() > 0.995 * math.sqrt(3 / 650)


def test_positive_unitball_rows_sum_to_one():
    x = fill((20, 3, 5), type="positive_unitball")
    assert x.min() >= 0 and x.max() <= 1
    np.testing.assert_allclose(x.reshape(20, -1).sum(axis=1), 1, rtol=1e-6)


@pytest.mark.parametrize("size, kernel", [
    (3, [0.5, 1.0, 0.5]),                   # f = 2, c = 0.5
    (4, [0.25, 0.75, 0.75, 0.25]),          # f = 2, c = 0.75
    (5, [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]),     # f = 3, c = 2/3
])
def test_bilinear_exact(size, kernel):
    x = fill((3, 2, size, size), type="bilinear")
    expected = np.outer(kernel, kernel)
    for n in range(3):
        for c in range(2):
            np.testing.assert_allclose(x[n, c], expected, rtol=1e-6, atol=1e-7)
    assert x.flags.writeable


@pytest.mark.parametrize("shape", [(2, 4, 4), (1, 1, 4, 5)])
def test_bilinear_needs_square_4d(shape):
    with pytest.raises(LayerSetupError, match="4-d.*equal height and width"):
        fill(shape, type="bilinear")


@pytest.mark.parametrize("kind", ["constant", "uniform", "gaussian", "xavier",
                                  "msra", "positive_unitball", "bilinear"])
def test_dtype_float64_respected(kind):
    x = fill((4, 3, 5, 5), np.float64, type=kind)
    assert x.dtype == np.float64 and x.shape == (4, 3, 5, 5)
    assert fill((4, 3, 5, 5), type=kind).dtype == np.float32


def test_float64_statistics():
    x = fill((100_000,), np.float64, type="gaussian", mean=-1.0, std=3.0)
    assert abs(x.mean() + 1) < 0.05 and abs(x.std() - 3) < 0.05


def test_same_seed_same_values():
    a = fill((10, 10), type="msra", seed=7)
    np.testing.assert_array_equal(a, fill((10, 10), type="msra", seed=7))
    assert not np.array_equal(a, fill((10, 10), type="msra", seed=8))


def test_unknown_type_lists_known_ones():
    with pytest.raises(LayerSetupError, match="unknown filler type 'xavir'.*xavier"):
        fill((2, 2), type="xavir")


@pytest.mark.parametrize("kind", ["constant", "uniform", "xavier", "msra",
                                  "positive_unitball", "bilinear"])
def test_sparse_only_for_gaussian(kind):
    with pytest.raises(LayerSetupError, match="sparse"):
        fill((2, 2, 3, 3), type=kind, sparse=1)


@pytest.mark.parametrize("param, shape, match", [
    (dict(type="gaussian", sparse=5), (4, 10), "must not exceed"),
    (dict(type="gaussian", sparse=-2), (4, 10), "sparse must be -1"),
    (dict(type="gaussian", sparse=1), (), "at least one axis"),
    (dict(type="gaussian", std=0.0), (4,), "std must be positive"),
    (dict(type="uniform", min=1.0, max=0.0), (4,), "min .* must not exceed max"),
    (dict(type="xavier"), (), "at least one axis"),
    (dict(type="constant"), (0, 3), "empty blob"),
])
def test_bad_inputs(param, shape, match):
    with pytest.raises(LayerSetupError, match=match):
        fill(shape, **param)
