"""Data source layers: Data over LMDB (order, wrap, rand_skip, prefetch, shards, errors),
ImageData, MemoryData, HDF5Data/HDF5Output, and training with the fused solver step."""
import copy
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from PIL import Image

import jcaffe
from jcaffe import io as caffe_io
from jcaffe.db import DataSourceError, make_key, open_db
from jcaffe.errors import LayerSetupError
from netutil import make_net, write_prototxt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_db(path, n, shape=(1, 2, 2), backend="lmdb"):
    with open_db(path, "w", backend) as db:
        for i in range(n):
            db.put(make_key(i, "r%d" % i),
                   caffe_io.array_to_datum(np.full(shape, i, np.uint8), i).SerializeToString())
    return str(path)


def data_net(tmp_path, source, batch=2, extra="", tops=("data", "label"), transform="", phase=jcaffe.TRAIN):
    top_lines = " ".join('top: "%s"' % t for t in tops)
    return make_net(tmp_path, """
        layer { name: "d" type: "Data" %s
          %s
          data_param { source: "%s" batch_size: %d backend: LMDB %s } }""" % (
        top_lines, transform, source, batch, extra), phase=phase)


def labels_of(net, n):
    return [net.forward()["label"].astype(int).tolist() for _ in range(n)]


def test_data_layer_order_and_wrap_around(tmp_path):
    net = data_net(tmp_path, write_db(tmp_path / "db", 5), batch=2)
    assert net.blobs["data"].shape == (2, 1, 2, 2) and net.blobs["label"].shape == (2,)
    assert labels_of(net, 4) == [[0, 1], [2, 3], [4, 0], [1, 2]]
    np.testing.assert_array_equal(net.blobs["data"].data[:, 0, 0, 0], [1, 2])
    assert net.outputs == ["data", "label"]


def test_data_layer_one_top_and_transform(tmp_path):
    net = data_net(tmp_path, write_db(tmp_path / "db", 3, shape=(1, 4, 4)), batch=3, tops=("data",),
                   transform="transform_param { scale: 0.5 crop_size: 2 }", phase=jcaffe.TEST)
    out = net.forward()
    assert list(out) == ["data"] and out["data"].shape == (3, 1, 2, 2)
    np.testing.assert_array_equal(out["data"][:, 0, 0, 0], [0, 0.5, 1.0])


def test_rand_skip_skips_a_seeded_number_of_records(tmp_path):
    src = write_db(tmp_path / "db", 10)
    firsts = set()
    for seed in range(8):
        jcaffe.set_random_seed(seed)
        net = data_net(tmp_path, src, batch=1, extra="rand_skip: 10")
        first = labels_of(net, 2)
        assert first[1][0] == (first[0][0] + 1) % 10
        firsts.add(first[0][0])
        jcaffe.set_random_seed(seed)
        assert labels_of(data_net(tmp_path, src, batch=1, extra="rand_skip: 10"), 2) == first
    assert len(firsts) > 1


def test_batches_are_each_records_transform_in_key_order(tmp_path):
    """The whole-batch path (records copied into one buffer, then transformed together)
    against Caffe's record-by-record transform from the same random state."""
    rng = np.random.default_rng(5)
    records = [rng.integers(0, 256, (3, 6, 7)).astype(np.uint8) for _ in range(7)]
    path = str(tmp_path / "db")
    with open_db(path, "w") as db:
        for i, r in enumerate(records):
            db.put(make_key(i, "r%d" % i), caffe_io.array_to_datum(r, 10 + i).SerializeToString())
    net = data_net(tmp_path, path, batch=3, extra="prefetch: 0",
                   transform="transform_param { crop_size: 4 mirror: true mean_value: [1, 2, 3] scale: 0.5 }")
    layer = net.layers[0]
    ref = copy.deepcopy(layer.transformer)      # its random state before the first batch
    for b in range(4):                          # 12 records: wraps around after 7
        data, label = layer.load_batch()
        idx = [i % 7 for i in range(3 * b, 3 * b + 3)]
        np.testing.assert_array_equal(data, np.stack([ref.transform(records[i]) for i in idx]))
        np.testing.assert_array_equal(label, [10 + i for i in idx])


def test_a_batch_mixing_raw_and_float_records(tmp_path):
    """A float_data record among raw ones: the batch is read record by record instead."""
    raw = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    flt = np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 3, 4)
    path = str(tmp_path / "db")
    with open_db(path, "w") as db:
        db.put(make_key(0, "a"), caffe_io.array_to_datum(raw, 1).SerializeToString())
        db.put(make_key(1, "b"), caffe_io.array_to_datum(flt, 2).SerializeToString())
    out = data_net(tmp_path, path, batch=2, transform="transform_param { scale: 2 }").forward()
    np.testing.assert_array_equal(out["data"], np.stack([raw * np.float32(2), flt * np.float32(2)]))
    np.testing.assert_array_equal(out["label"], [1, 2])


def test_prefetch_depth_zero_and_default_agree(tmp_path):
    src = write_db(tmp_path / "db", 7)
    a = labels_of(data_net(tmp_path, src, batch=3), 5)
    b = labels_of(data_net(tmp_path, src, batch=3, extra="prefetch: 0"), 5)
    assert a == b
    layer = data_net(tmp_path, src, batch=3).layers[0]
    assert layer.prefetch_depth == 4


def test_prefetch_thread_is_a_bounded_daemon(tmp_path):
    net = data_net(tmp_path, write_db(tmp_path / "db", 50), batch=1, extra="prefetch: 3")
    net.forward()
    pf = net.layers[0]._prefetcher
    assert pf.thread.daemon and pf.queue.maxsize == 3
    import time
    time.sleep(0.3)
    assert pf.queue.qsize() <= 3
    net.layers[0].stop_prefetch()
    assert not pf.thread.is_alive()


def test_prefetch_never_blocks_interpreter_exit(tmp_path):
    src = write_db(tmp_path / "db", 20)
    proto = write_prototxt(tmp_path, """
        layer { name: "d" type: "Data" top: "data" top: "label"
          data_param { source: "%s" batch_size: 2 backend: LMDB prefetch: 2 } }""" % src)
    code = textwrap.dedent("""
        import sys; sys.path.insert(0, %r)
        import jcaffe
        net = jcaffe.Net(%r, jcaffe.TRAIN)
        net.forward()
        print("ok")   # exit with the thread alive and its queue full
    """ % (ROOT, proto))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("count", [2, 3])
def test_shards_are_disjoint_and_cover_everything(tmp_path, count):
    src = write_db(tmp_path / "db", 12)
    seen = []
    for rank in range(count):
        net = data_net(tmp_path, src, batch=2)
        net.layers[0].set_shard(rank, count)
        got = [l for batch in labels_of(net, 12 // (2 * count)) for l in batch]
        assert got == list(range(rank, 12, count))
        seen += got
    assert sorted(seen) == list(range(12))


def test_set_shard_restarts_and_validates(tmp_path):
    net = data_net(tmp_path, write_db(tmp_path / "db", 6), batch=2)
    labels_of(net, 2)
    net.layers[0].set_shard(0, 1)
    assert labels_of(net, 1) == [[0, 1]]
    with pytest.raises(ValueError, match="rank"):
        net.layers[0].set_shard(2, 2)


def test_missing_database_names_layer_and_source(tmp_path):
    with pytest.raises(DataSourceError, match="Data layer 'd'.*nowhere_lmdb.*does not exist"):
        data_net(tmp_path, str(tmp_path / "nowhere_lmdb"))


def test_leveldb_default_backend_hint(tmp_path):
    pytest.importorskip("plyvel")
    src = write_db(tmp_path / "db", 2)
    with pytest.raises(DataSourceError, match="looks like an LMDB database: set data_param"):
        make_net(tmp_path, """
            layer { name: "d" type: "Data" top: "data" data_param { source: "%s" batch_size: 1 } }""" % src)


def test_datum_size_mismatch_names_source_and_key(tmp_path):
    path = str(tmp_path / "db")
    with open_db(path, "w") as db:
        db.put(make_key(0, "a"), caffe_io.array_to_datum(np.zeros((1, 2, 2), np.uint8), 0).SerializeToString())
        db.put(make_key(1, "b"), caffe_io.array_to_datum(np.zeros((1, 3, 3), np.uint8), 1).SerializeToString())
    net = data_net(tmp_path, path, batch=2)
    with pytest.raises(DataSourceError, match="Data layer 'd'.*db', record '00000001_b' has size 1x3x3.*00000000_a"):
        net.forward()


def test_records_of_several_sizes_are_cropped_one_by_one_as_caffe(tmp_path):
    """With crop_size Caffe takes records of any size at least the crop into one batch
    (each cropped on its own: TEST's centre crop here, mean_value subtracted); raw and
    encoded records alike. Without crop_size they must agree (the test above)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (3, 4, 5)).astype(np.uint8)
    big = rng.integers(0, 256, (3, 7, 6)).astype(np.uint8)
    path = str(tmp_path / "db")
    with open_db(path, "w") as db:
        db.put(make_key(0, "a"), caffe_io.array_to_datum(small, 0).SerializeToString())
        db.put(make_key(1, "b"), caffe_io.array_to_datum(big, 1).SerializeToString())
    net = data_net(tmp_path, path, batch=2, phase=jcaffe.TEST,
                   transform="transform_param { crop_size: 3 mean_value: 10 }")
    data = net.forward()["data"]
    np.testing.assert_array_equal(data[0], small[:, 0:3, 1:4] - 10.0)     # ((4-3)//2, (5-3)//2)
    np.testing.assert_array_equal(data[1], big[:, 2:5, 1:4] - 10.0)       # ((7-3)//2, (6-3)//2)
    (tmp_path / "imgs").mkdir()
    for name, chw in (("a.png", small), ("b.png", big)):
        Image.fromarray(chw[::-1].transpose(1, 2, 0)).save(tmp_path / "imgs" / name)
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 1\n")
    images = make_net(tmp_path, """
        layer { name: "img" type: "ImageData" top: "data" top: "label"
          transform_param { crop_size: 3 mean_value: 10 }
          image_data_param { source: "%s" root_folder: "%s/" batch_size: 2 } }"""
                      % (tmp_path / "list.txt", tmp_path / "imgs"), phase=jcaffe.TEST)
    np.testing.assert_array_equal(images.forward()["data"], data)


def test_undecodable_image_names_source_and_key(tmp_path):
    path = str(tmp_path / "db")
    with open_db(path, "w") as db:
        good = caffe_io.array_to_datum(np.zeros((1, 2, 2), np.uint8), 0)
        db.put(make_key(0, "ok"), good.SerializeToString())
        from jcaffe.proto import caffe_pb2
        db.put(make_key(1, "bad.jpg"), caffe_pb2.Datum(data=b"\x00garbage", encoded=True).SerializeToString())
    net = data_net(tmp_path, path, batch=1)
    net.forward()
    with pytest.raises(DataSourceError, match="record '00000001_bad.jpg'.*could not decode"):
        net.forward()


def test_mean_file_with_wrong_shape_in_a_net(tmp_path):
    mean = str(tmp_path / "mean.binaryproto")
    jcaffe.protoio.write_blobproto(np.zeros((1, 3, 2, 2), np.float32), mean)
    net = data_net(tmp_path, write_db(tmp_path / "db", 2), batch=1,
                   transform='transform_param { mean_file: "%s" }' % mean)
    with pytest.raises(DataSourceError, match="record '00000000_r0'.*mean.binaryproto"):
        net.forward()


def test_image_data_layer(tmp_path):
    rng = np.random.default_rng(0)
    imgs = []
    (tmp_path / "imgs").mkdir()
    with open(tmp_path / "list.txt", "w") as f:
        for i in range(3):
            rgb = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
            Image.fromarray(rgb).save(tmp_path / "imgs" / ("im %d.png" % i))
            imgs.append(rgb)
            f.write("im %d.png %d\n" % (i, 10 + i))
    net = make_net(tmp_path, """
        layer { name: "img" type: "ImageData" top: "data" top: "label"
          image_data_param { source: "%s" root_folder: "%s/" batch_size: 2 } }""" % (
        tmp_path / "list.txt", tmp_path / "imgs"))
    out = net.forward()
    assert out["data"].shape == (2, 3, 6, 8)
    np.testing.assert_array_equal(out["label"], [10, 11])
    np.testing.assert_array_equal(out["data"][1], imgs[1][:, :, ::-1].transpose(2, 0, 1))  # BGR
    np.testing.assert_array_equal(net.forward()["label"], [12, 10])
    resized = make_net(tmp_path, """
        layer { name: "img" type: "ImageData" top: "data" top: "label"
          image_data_param { source: "%s" root_folder: "%s/" batch_size: 3 new_height: 4 new_width: 5
                             is_color: false shuffle: true } }""" % (tmp_path / "list.txt", tmp_path / "imgs"))
    out = resized.forward()
    assert out["data"].shape == (3, 1, 4, 5) and sorted(out["label"].tolist()) == [10, 11, 12]


def test_image_data_missing_image(tmp_path):
    (tmp_path / "list.txt").write_text("nothere.png 1\n")
    with pytest.raises(DataSourceError, match="ImageData layer 'img'.*nothere.png"):
        make_net(tmp_path, """
            layer { name: "img" type: "ImageData" top: "data" top: "label"
              image_data_param { source: "%s" batch_size: 1 } }""" % (tmp_path / "list.txt"))


def test_image_data_root_folder_is_a_text_prefix_as_in_caffe(tmp_path):
    """Caffe opens root_folder + name: a root without its trailing '/' runs into the
    name (here too, where os.path.join would have added one), and the error says so; a
    name starting with '/' stays under the root."""
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(np.full((4, 5, 3), 7, np.uint8)).save(tmp_path / "imgs_a.png")
    text = """
        layer { name: "img" type: "ImageData" top: "data" top: "label"
          image_data_param { source: "%s" root_folder: "%s" batch_size: 1 } }"""
    (tmp_path / "list.txt").write_text("a.png 1\n")
    with pytest.raises(DataSourceError, match="cannot open image '.*imgsa.png'.*prepended as "
                                              "text.*end root_folder with '/'"):
        make_net(tmp_path, text % (tmp_path / "list.txt", tmp_path / "imgs"))
    assert make_net(tmp_path, text % (tmp_path / "list.txt", tmp_path / "imgs_")
                    ).forward()["data"].max() == 7               # (imgs_ + a.png)
    (tmp_path / "abs.txt").write_text("/a.png 1\n")
    net = make_net(tmp_path, text % (tmp_path / "abs.txt", tmp_path / "imgs"))
    assert net.forward()["data"].shape == (1, 3, 4, 5)           # (imgs + /a.png)


@pytest.mark.parametrize("param, words", [
    ("batch_size: 0", "image_data_param.batch_size must be positive"),
    ("batch_size: 1 new_height: 4", "new_height and new_width must be set together.*new_width 0"),
])
def test_image_data_setup_errors_as_caffes_checks(tmp_path, param, words):
    (tmp_path / "list.txt").write_text("a.png 1\n")
    with pytest.raises(LayerSetupError, match="ImageData layer 'img': " + words):
        make_net(tmp_path, """
            layer { name: "img" type: "ImageData" top: "data" top: "label"
              image_data_param { source: "%s" %s } }""" % (tmp_path / "list.txt", param))


def test_memory_data_needs_its_shape(tmp_path):
    """Caffe checks batch_size x channels x height x width > 0 at setup: a MemoryData
    without its shape is an error there, not a 0-sized top."""
    with pytest.raises(LayerSetupError, match="MemoryData layer 'm': .*channels, height and "
                                              "width must all be given.*got 0, 2 and 3"):
        make_net(tmp_path, """
            layer { name: "m" type: "MemoryData" top: "data" top: "label"
              memory_data_param { batch_size: 2 height: 2 width: 3 } }""")


def test_memory_data_and_set_input_arrays(tmp_path):
    net = make_net(tmp_path, """
        layer { name: "m" type: "MemoryData" top: "data" top: "label"
          memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
        layer { name: "s" type: "ReLU" bottom: "data" top: "y" }""")
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    net.set_input_arrays(data, np.arange(4, dtype=np.float32))
    assert net.blobs["label"].shape == (2,)             # Caffe's LayerSetUp
    out = net.forward()
    assert net.blobs["label"].shape == (2, 1, 1, 1)     # Caffe's Forward reshapes it
    np.testing.assert_array_equal(out["y"], data[:2])
    np.testing.assert_array_equal(out["label"].ravel(), [0, 1])
    np.testing.assert_array_equal(net.forward()["label"].ravel(), [2, 3])
    np.testing.assert_array_equal(net.forward()["label"].ravel(), [0, 1])
    with pytest.raises(Exception, match="multiple of batch_size"):
        net.set_input_arrays(data[:3], np.zeros(3, np.float32))
    with pytest.raises(Exception, match="channels x height x width"):
        net.set_input_arrays(np.zeros((2, 1, 3, 3), np.float32), np.zeros(2, np.float32))


def test_memory_data_without_arrays(tmp_path):
    net = make_net(tmp_path, """
        layer { name: "m" type: "MemoryData" top: "data" top: "label"
          memory_data_param { batch_size: 2 channels: 1 height: 1 width: 1 } }""")
    with pytest.raises(Exception, match="set_input_arrays"):
        net.forward()


def test_hdf5_data_and_output(tmp_path):
    x = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    y = np.arange(5, dtype=np.float32)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"], f["y"] = x[:3], y[:3]
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["x"], f["y"] = x[3:], y[3:]
    (tmp_path / "list.txt").write_text("%s\nb.h5\n" % (tmp_path / "a.h5"))
    out_file = tmp_path / "out.h5"
    net = make_net(tmp_path, """
        layer { name: "h" type: "HDF5Data" top: "x" top: "y"
          hdf5_data_param { source: "%s" batch_size: 2 } }
        layer { name: "o" type: "HDF5Output" bottom: "x" bottom: "y"
          hdf5_output_param { file_name: "%s" } }""" % (tmp_path / "list.txt", out_file))
    assert net.blobs["x"].shape == (2, 3) and net.blobs["y"].shape == (2,)
    got = [(net.forward(), net.blobs["y"].data.tolist())[1] for _ in range(3)]
    assert got == [[0, 1], [2, 3], [4, 0]]
    net.layers[1].close()
    with h5py.File(out_file, "r") as f:
        # (Caffe's legacy 4 axes: (N, C, 1, 1), the labels (N, 1, 1, 1))
        np.testing.assert_array_equal(f["label"][:], np.reshape([0, 1, 2, 3, 4, 0], (6, 1, 1, 1)))
        np.testing.assert_array_equal(f["data"][:4], x[:4, :, None, None])
    shuffled = make_net(tmp_path, """
        layer { name: "h" type: "HDF5Data" top: "x" top: "y"
          hdf5_data_param { source: "%s" batch_size: 5 shuffle: true } }""" % (tmp_path / "list.txt"))
    assert sorted(shuffled.forward()["y"].tolist()) == [0, 1, 2, 3, 4]


def test_hdf5_output_file_taken_over_by_a_new_net_while_the_old_one_lives(tmp_path):
    """Re-creating a net (a notebook cell run again) while the old one is still alive:
    HDF5 cannot truncate a file open in this process, so the new layer takes it over."""
    out_file = tmp_path / "out.h5"
    text = """
        input: "x" input_shape { dim: 2 dim: 3 } input: "y" input_shape { dim: 2 }
        layer { name: "o" type: "HDF5Output" bottom: "x" bottom: "y"
          hdf5_output_param { file_name: "%s" } }""" % out_file
    old = make_net(tmp_path, text)
    old.forward()
    new = make_net(tmp_path, text)        # raised "unable to truncate a file which is already open"
    old.forward()                          # the old layer writes nothing more
    new.blobs["y"].data[...] = [7, 8]
    new.forward()
    new.layers[-1].close()
    with h5py.File(out_file, "r") as f:
        np.testing.assert_array_equal(f["label"][:, 0, 0, 0], [7, 8])


def test_hdf5_output_writes_caffes_four_axes(tmp_path):
    """Caffe's HDF5Output reads its bottoms through Blob's legacy accessors: 4-axis
    datasets, (num, channels, height, width), a 3-axis bottom padded with a 1; a bottom
    of more than 4 axes is an error (Caffe stops), and so are nums that differ."""
    out_file = tmp_path / "out.h5"
    net = make_net(tmp_path, """
        input: "x" input_shape { dim: 2 dim: 3 dim: 4 } input: "y" input_shape { dim: 2 }
        layer { name: "o" type: "HDF5Output" bottom: "x" bottom: "y"
          hdf5_output_param { file_name: "%s" } }""" % out_file)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    net.blobs["x"].data[...] = x
    net.forward()
    net.layers[-1].close()
    with h5py.File(out_file, "r") as f:
        np.testing.assert_array_equal(f["data"][:], x[..., None])
        assert f["label"].shape == (2, 1, 1, 1)
    for shapes, words in [("dim: 2 dim: 3 dim: 4 dim: 5 dim: 6", "bottom 0 has 5 axes"),
                          ("dim: 3 dim: 4", r"data blob and label blob must have the same batch size \(num\): "
                          r"bottom 0 has shape 3 4 \(12\), bottom 1 2 3 4 5 ")]:
        with pytest.raises(LayerSetupError, match="HDF5Output layer 'o': " + words):
            make_net(tmp_path, """
                input: "x" input_shape { %s } input: "y" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }
                layer { name: "o" type: "HDF5Output" bottom: "x" bottom: "y"
                  hdf5_output_param { file_name: "%s" } }""" % (shapes, out_file))


def test_hdf5_data_missing_dataset(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"] = np.zeros((2, 1), np.float32)
    (tmp_path / "list.txt").write_text("%s\n" % (tmp_path / "a.h5"))
    with pytest.raises(DataSourceError, match="HDF5Data layer 'h'.*no dataset 'label'"):
        make_net(tmp_path, """
            layer { name: "h" type: "HDF5Data" top: "x" top: "label"
              hdf5_data_param { source: "%s" batch_size: 2 } }""" % (tmp_path / "list.txt"))


SOLVER_NET = """
    layer { name: "d" type: "Data" top: "data" top: "label"
      transform_param { scale: 0.00390625 }
      data_param { source: "%s" batch_size: 4 backend: LMDB } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _solver(tmp_path, src, iter_size=1):
    net = write_prototxt(tmp_path, SOLVER_NET % src, "train.prototxt")
    solver = write_prototxt(tmp_path, """
        net: "%s"
        base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" max_iter: 20 display: 0 snapshot: 0
        iter_size: %d snapshot_after_train: false random_seed: 3
    """ % (net, iter_size), "solver.prototxt")
    return jcaffe.get_solver(solver)


def _label_db(tmp_path, n=12):
    path = str(tmp_path / "train_db")
    with open_db(path, "w") as db:
        for i in range(n):
            arr = np.zeros((1, 2, 2), np.uint8)
            arr[0].flat[i % 3] = 255
            db.put(make_key(i, "r%d" % i), caffe_io.array_to_datum(arr, i % 3).SerializeToString())
    return path


def test_data_net_trains_with_one_fused_call_per_iteration(tmp_path, monkeypatch):
    from jcaffe.engine import Segment
    solver = _solver(tmp_path, _label_db(tmp_path))
    assert solver._can_fuse(), "Data layers must not break the fused step"
    calls = []
    monkeypatch.setattr(Segment, "run_forward", lambda *a, **k: calls.append(1))
    fetched = []
    layer = solver.net.layers[0]
    orig = layer.next_batch
    monkeypatch.setattr(layer, "next_batch", lambda: fetched.append(1) or orig())
    solver.step(20)
    assert not calls and len(fetched) == 20
    assert solver.smoothed_loss < 0.5
    monkeypatch.undo()
    # the batches advance: after 20 iterations of 4 the cursor moved 80 records (mod 12)
    assert solver.net.forward()["loss"] < 0.5


def test_iter_size_reads_one_batch_per_pass_in_one_fused_call(tmp_path, monkeypatch):
    from jcaffe.engine import Segment
    src = _label_db(tmp_path)
    solver = _solver(tmp_path, src, iter_size=2)
    assert solver._can_fuse()
    layer = solver.net.layers[0]
    fetched, calls = [], []
    orig = layer.next_batch
    monkeypatch.setattr(layer, "next_batch", lambda: fetched.append(1) or orig())
    monkeypatch.setattr(Segment, "run_forward", lambda *a, **k: calls.append(1))
    solver.step(3)
    assert len(fetched) == 6 and not calls
    monkeypatch.undo()
    # the same trajectory as the unfused path (two forward/backward passes, then the update)
    unfused = _solver(tmp_path / "u" if (tmp_path / "u").mkdir() is None else None, src, iter_size=2)
    unfused.fuse_step = False
    fused = _solver(tmp_path / "f" if (tmp_path / "f").mkdir() is None else None, src, iter_size=2)
    fused.step(3)
    unfused.step(3)
    for a, b in zip(fused.net.learnable_params, unfused.net.learnable_params):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)


def test_prefetch_thread_ends_when_its_layer_is_gone():
    """The thread holds its layer only weakly: a dropped layer (net) ends its thread."""
    import gc
    from jcaffe.layers.data_layers import Prefetcher

    class Source:
        def produce(self):
            return [np.zeros(2)]
    src = Source()
    pf = Prefetcher(src.produce, 2, "test")
    assert len(pf.get()) == 1 and pf.thread.is_alive()
    del src
    gc.collect()
    pf.thread.join(5)
    assert not pf.thread.is_alive()


def _window_file(tmp_path):
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "w.png")
    (tmp_path / "windows.txt").write_text(
        "# 0\nw.png\n3\n20\n30\n3\n"
        "2 0.9 5 4 14 13\n"        # foreground, class 2
        "1 0.7 0 0 29 19\n"        # foreground, class 1: the whole image
        "3 0.1 10 10 19 17\n")     # background (label 0)
    return rgb


def test_window_data_warps_windows_with_caffes_arithmetic(tmp_path):
    rgb = _window_file(tmp_path)
    net = make_net(tmp_path, """
        layer { name: "w" type: "WindowData" top: "data" top: "label"
          transform_param { crop_size: 6 scale: 0.5 mean_value: 10 mean_value: 20 mean_value: 30 }
          window_data_param { source: "%s" root_folder: "%s/" batch_size: 4 fg_fraction: 0.5 } }"""
                   % (tmp_path / "windows.txt", tmp_path))
    assert net.blobs["data"].shape == (4, 3, 6, 6)
    for _ in range(3):
        out = net.forward()
        assert out["label"][:2].tolist() == [0, 0] and set(out["label"][2:].tolist()) <= {1, 2}
        bgr = rgb[:, :, ::-1]
        mean = np.array([10, 20, 30], np.float32)[:, None, None]
        bg = np.stack([np.asarray(Image.fromarray(bgr[10:18, 10:20, c]).resize((6, 6), Image.BILINEAR))
                       for c in range(3)]).astype(np.float32)
        np.testing.assert_allclose(out["data"][0], (bg - mean) * 0.5)
        assert out["data"].shape == (4, 3, 6, 6)


def test_window_data_context_pad_leaves_zeros_outside_the_image(tmp_path):
    _window_file(tmp_path)
    net = make_net(tmp_path, """
        layer { name: "w" type: "WindowData" top: "data" top: "label"
          transform_param { crop_size: 8 }
          window_data_param { source: "%s" root_folder: "%s/" batch_size: 2 fg_threshold: 0.6
                              bg_threshold: 0.05 fg_fraction: 1 context_pad: 2 crop_mode: "square" } }"""
                   % (tmp_path / "windows.txt", tmp_path))
    seen_whole = False
    for _ in range(8):
        out = net.forward()
        for img, label in zip(out["data"], out["label"]):
            if label == 1:   # the whole-image window, grown by the context: zero border
                seen_whole = True
                assert not img[:, 0, :].any() and not img[:, -1, :].any()
    assert seen_whole


def test_window_data_bad_window_file(tmp_path):
    (tmp_path / "windows.txt").write_text("# 0\nw.png\n3\nnot a number\n")
    with pytest.raises(DataSourceError, match="WindowData layer 'w'.*windows.txt"):
        make_net(tmp_path, """
            layer { name: "w" type: "WindowData" top: "data" top: "label"
              transform_param { crop_size: 4 }
              window_data_param { source: "%s" batch_size: 1 } }""" % (tmp_path / "windows.txt"))
