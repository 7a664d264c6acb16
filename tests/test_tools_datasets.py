"""Caffe's dataset converters as jcaffe tools: convert_mnist_data,
convert_mnist_siamese_data, convert_cifar_data (jcaffe/tools_datasets.py)."""

import re

import numpy as np
import pytest

import jcaffe as caffe
from jcaffe import cli, tools_datasets
from jcaffe.db import open_db, read_datums
from netutil import write_prototxt


def write_idx(tmp_path, images, labels, image_magic=2051, label_magic=2049, cut=0):
    """MNIST's idx files by hand: big-endian uint32 magic, counts, then the bytes."""
    n, rows, cols = images.shape
    img = tmp_path / "images-idx3-ubyte"
    lab = tmp_path / "labels-idx1-ubyte"
    img.write_bytes(np.array([image_magic, n, rows, cols], ">u4").tobytes()
                    + images.astype(np.uint8).tobytes()[:len(images.ravel()) - cut])
    lab.write_bytes(np.array([label_magic, len(labels)], ">u4").tobytes()
                    + labels.astype(np.uint8).tobytes())
    return str(img), str(lab)


@pytest.fixture
def mnist(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)     # rows != cols
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    return tmp_path, images, labels


def test_convert_mnist_data_writes_caffes_records(mnist, capsys):
    tmp_path, images, labels = mnist
    img, lab = write_idx(tmp_path, images, labels)
    db = str(tmp_path / "mnist_lmdb")
    assert cli.main(["convert_mnist_data", img, lab, db]) == 0
    records = list(read_datums(db))
    assert [k for k, _ in records] == ["%08d" % i for i in range(5)]
    for (_, d), im, label in zip(records, images, labels):
        assert (d.channels, d.height, d.width, d.label) == (1, 4, 3, label)
        assert d.data == im.tobytes() and not d.encoded and not d.float_data
    err = capsys.readouterr().err
    assert "A total of 5 items." in err and "Rows: 4 Cols: 3" in err and "Processed 5 files." in err


def test_the_tutorials_data_layer_reads_it(mnist):
    """examples/mnist/lenet_train_test.prototxt's Data layer (scale 1/256) on it."""
    tmp_path, images, labels = mnist
    img, lab = write_idx(tmp_path, images, labels)
    db = str(tmp_path / "mnist_lmdb")
    assert cli.main(["convert_mnist_data", "-backend", "lmdb", img, lab, db]) == 0
    proto = write_prototxt(tmp_path, """
layer { name: "mnist" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.00390625 }
  data_param { source: "%s" batch_size: 5 backend: LMDB } }""" % db)
    net = caffe.Net(proto, caffe.TRAIN)
    net.forward()
    np.testing.assert_allclose(net.blobs["data"].data[:, 0], images / 256.0, rtol=1e-6)
    np.testing.assert_array_equal(net.blobs["label"].data, labels)


@pytest.mark.parametrize("case, match", [
    (dict(image_magic=2049), "images-idx3-ubyte: Incorrect image file magic: 2049, expected 2051"),
    (dict(label_magic=7), "labels-idx1-ubyte: Incorrect label file magic: 7, expected 2049"),
    (dict(cut=2), "images-idx3-ubyte: its header promises 60 bytes of data after it, the file has 58"),
    (dict(labels=4), "images-idx3-ubyte holds 5 images but .*labels-idx1-ubyte holds 4 labels"),
])
def test_convert_mnist_data_names_the_bad_file(mnist, case, match, capsys):
    tmp_path, images, labels = mnist
    if "labels" in case:
        labels = labels[:case.pop("labels")]
    img, lab = write_idx(tmp_path, images, labels, **case)
    db = tmp_path / "out"
    assert cli.main(["convert_mnist_data", img, lab, str(db)]) == 1
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not db.exists()                  # checked before anything is written


def test_convert_mnist_data_usage(capsys):
    assert cli.main(["convert_mnist_data", "only_one"]) == 2
    assert "input_image_file input_label_file output_db_file" in capsys.readouterr().err


def test_convert_mnist_siamese_data_pairs(mnist):
    tmp_path, images, labels = mnist
    img, lab = write_idx(tmp_path, images, labels)
    db = str(tmp_path / "pairs")
    caffe.set_random_seed(7)
    assert cli.main(["convert_mnist_siamese_data", "-backend", "lmdb", img, lab, db]) == 0
    records = list(read_datums(db))
    assert [k for k, _ in records] == ["%08d" % i for i in range(5)]
    flat = [im.tobytes() for im in images]
    seen_diff = False
    for _, d in records:
        assert (d.channels, d.height, d.width) == (2, 4, 3)
        first, second = d.data[:12], d.data[12:]
        i, j = flat.index(first), flat.index(second)    # each half is one of the images
        assert d.label == int(labels[i] == labels[j])
        seen_diff |= d.label == 0
    assert seen_diff
    # the same seed gives the same pairs
    caffe.set_random_seed(7)
    db2 = str(tmp_path / "pairs2")
    assert cli.main(["convert_mnist_siamese_data", "-backend=lmdb", img, lab, db2]) == 0
    assert list(read_datums(db2)) == records


def write_cifar(folder, rng):
    """The six CIFAR-10 binary batches (each record: a label byte, then 3x32x32 pixels)."""
    batches = {}
    for name in ["data_batch_%d.bin" % k for k in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, tools_datasets._CIFAR_BATCH, dtype=np.uint8)
        pixels = rng.integers(0, 256, (tools_datasets._CIFAR_BATCH, 3, 32, 32), dtype=np.uint8)
        raw = np.concatenate([labels[:, None], pixels.reshape(len(labels), -1)], axis=1)
        (folder / name).write_bytes(raw.tobytes())
        batches[name] = (labels, pixels)
    return batches


def test_convert_cifar_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tools_datasets, "_CIFAR_BATCH", 3)      # 3 records a batch, not 10000
    src = tmp_path / "cifar-10-batches-bin"
    src.mkdir()
    batches = write_cifar(src, np.random.default_rng(0))
    out = tmp_path / "out"
    assert cli.main(["convert_cifar_data", str(src), str(out), "lmdb"]) == 0
    train = list(read_datums(str(out / "cifar10_train_lmdb")))
    test = list(read_datums(str(out / "cifar10_test_lmdb")))
    assert [k for k, _ in train] == ["%05d" % i for i in range(15)]
    assert [k for k, _ in test] == ["%05d" % i for i in range(3)]
    expected = [(l, p) for k in range(1, 6) for l, p in zip(*batches["data_batch_%d.bin" % k])]
    for (_, d), (label, pixels) in zip(train + test, expected + list(zip(*batches["test_batch.bin"]))):
        assert (d.channels, d.height, d.width, d.label) == (3, 32, 32, label)
        assert d.data == pixels.tobytes()               # as the file holds it: RGB planes
    err = capsys.readouterr().err
    for line in ["Writing Training data", "Training Batch 5", "Writing Testing data"]:
        assert line in err


def test_convert_cifar_data_checks_every_file_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tools_datasets, "_CIFAR_BATCH", 3)
    src = tmp_path / "in"
    src.mkdir()
    write_cifar(src, np.random.default_rng(0))
    (src / "test_batch.bin").write_bytes(b"\0" * 100)
    out = tmp_path / "out"
    assert cli.main(["convert_cifar_data", str(src), str(out), "lmdb"]) == 1
    assert "test_batch.bin: 100 bytes, a CIFAR-10 binary batch has 9219 (3 records" in capsys.readouterr().err
    assert not (out / "cifar10_train_lmdb").exists()
    (src / "data_batch_2.bin").unlink()
    assert cli.main(["convert_cifar_data", str(src), str(out), "lmdb"]) == 1
    err = capsys.readouterr().err
    assert "Unable to open CIFAR batch file" in err and "data_batch_2.bin" in err


def test_existing_output_is_not_overwritten(mnist, capsys):
    tmp_path, images, labels = mnist
    img, lab = write_idx(tmp_path, images, labels)
    db = str(tmp_path / "mnist_lmdb")
    assert cli.main(["convert_mnist_data", img, lab, db]) == 0
    assert cli.main(["convert_mnist_data", img, lab, db]) == 1
    assert "already exists" in capsys.readouterr().err
    with open_db(db) as d:
        assert d.count() == 5
