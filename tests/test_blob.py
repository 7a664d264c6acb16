"""Blob: pycaffe's surface and the host/device sync rules."""
import tracemalloc

import jax.numpy as jnp
import numpy as np
import pytest

from jcaffe import Blob
from jcaffe.blob import DEVICE, HOST, SYNCED, canonical_axis


def test_shape_accessors_and_legacy_dims():
    b = Blob((2, 3, 4, 5))
    assert (b.num, b.channels, b.height, b.width) == (2, 3, 4, 5)
    assert b.count == 120 and b.count_range(1) == 60 and b.count_range(1, 3) == 12
    v = Blob((7, 8))
    assert (v.num, v.channels, v.height, v.width) == (7, 8, 1, 1)
    assert Blob(()).count == 1
    assert b.shape_string() == "2 3 4 5 (120)"
    assert canonical_axis(-1, 4) == 3
    with pytest.raises(IndexError):
        canonical_axis(4, 4)


def test_data_is_writable_in_place_and_reaches_the_device():
    b = Blob((2, 2))
    b.data[...] = [[1, 2], [3, 4]]
    np.testing.assert_array_equal(np.asarray(b.device_data()), [[1, 2], [3, 4]])
    b.data[0, 0] = 9       # host ahead again after a Python read
    np.testing.assert_array_equal(np.asarray(b.device_data())[0, 0], 9)


def test_device_result_is_synced_to_host_lazily():
    b = Blob((3,))
    b.set_device_data(jnp.array([1.0, 2.0, 3.0], jnp.float32))
    assert b._data.head == DEVICE
    assert b.host_data().tolist() == [1, 2, 3]
    assert b._data.head == SYNCED        # read-only access keeps the device copy valid
    b.data                                # pycaffe access may write: host is ahead
    assert b._data.head == HOST


@pytest.mark.parametrize("shape", [(2,), (512, 1024)])     # small, and big and aligned
def test_device_copy_is_never_aliased_with_host_memory(shape):
    b = Blob(shape)
    b.data[...] = 1
    dev = b.device_data()
    b.data[...] = 5
    assert (np.asarray(dev) == 1).all()


def test_reshape_keeps_content_when_count_unchanged_else_zeros():
    b = Blob((2, 3))
    b.data[...] = np.arange(6).reshape(2, 3)
    b.reshape(3, 2)
    np.testing.assert_array_equal(b.data, np.arange(6).reshape(3, 2))
    b.reshape((4, 4))
    assert b.shape == (4, 4) and not b.data.any()
    with pytest.raises(ValueError):
        b.reshape(-1, 2)


def test_a_blobs_memory_is_allocated_when_first_used():
    """Caffe's SyncedMemory allocates on first use, and so does a Blob: a net's setup
    makes every blob's data and diff, and most of them are only ever computed on the
    device. Made eagerly, their host zeros cost GoogLeNet's training step 150 MB of
    peak RSS (benchmarks/NOTES.md, forty-third session)."""
    tracemalloc.start()
    try:
        b = Blob((64, 1000, 1000))              # 256 MB of data and as much diff
        b.reshape(64, 1001, 1000)               # a new count: zeros again
        held, _ = tracemalloc.get_traced_memory()
        assert held < 1e6, held
        assert not b.diff.any() and b.diff.shape == (64, 1001, 1000)
        assert tracemalloc.get_traced_memory()[0] >= 64 * 1001 * 1000 * 4
    finally:
        tracemalloc.stop()
    assert not np.asarray(b.device_data()).any()


def test_shared_data_is_one_storage():
    a, b = Blob((2, 3)), Blob((6,))
    b.share_data(a)
    a.data[...] = 1
    assert b.data.shape == (6,) and np.all(b.data == 1)
    b.set_device_data(jnp.arange(6, dtype=jnp.float32))
    np.testing.assert_array_equal(a.data, np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError):
        Blob((5,)).share_data(a)


def test_dtype_float64():
    b = Blob((2,), np.float64)
    assert b.data.dtype == np.float64
