"""Caffe's tools as jcaffe subcommands: convert_imageset, compute_image_mean,
extract_features, the proto upgrades."""

import numpy as np
import pytest
from PIL import Image

from jcaffe import cli, protoio
from jcaffe.data_transformer import decode_image_bytes
from jcaffe.db import read_datums
from jcaffe.proto import caffe_pb2
from jcaffe.tools import parse_tool_flags, ToolUsageError
from netutil import write_prototxt


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    root.mkdir()
    arrays = []
    lines = []
    for i in range(4):
        rgb = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
        Image.fromarray(rgb).save(root / ("a%d.png" % i))
        arrays.append(rgb)
        lines.append("a%d.png %d" % (i, i % 2))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path, arrays


def test_gflags_style_parsing():
    spec = {"gray": False, "backend": "lmdb", "resize_width": 0}
    pos, f = parse_tool_flags(["-gray", "--backend=leveldb", "-resize_width", "7", "x", "y"], spec, "u")
    assert pos == ["x", "y"] and f == {"gray": True, "backend": "leveldb", "resize_width": 7}
    assert parse_tool_flags(["-nogray"], {"gray": True}, "u")[1]["gray"] is False
    assert parse_tool_flags(["-gray=false"], {"gray": True}, "u")[1]["gray"] is False
    with pytest.raises(ToolUsageError, match="unknown command line flag 'bogus'"):
        parse_tool_flags(["-bogus"], spec, "u")


def test_convert_imageset_raw_is_bgr_chw(images):
    tmp, arrays = images
    db = str(tmp / "out_lmdb")
    assert cli.main(["convert_imageset", str(tmp / "imgs") + "/", str(tmp / "list.txt"), db]) == 0
    rows = read_datums(db)
    assert [k for k, _ in rows] == ["%08d_a%d.png" % (i, i) for i in range(4)]
    for (key, d), rgb in zip(rows, arrays):
        assert (d.channels, d.height, d.width, d.encoded) == (3, 5, 6, False)
        np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(3, 5, 6),
                                      rgb[:, :, ::-1].transpose(2, 0, 1))
    assert [d.label for _, d in rows] == [0, 1, 0, 1]


def test_convert_imageset_gray_resize_shuffle(images):
    tmp, _ = images
    db = str(tmp / "g_lmdb")
    assert cli.main(["convert_imageset", "-gray", "-shuffle", "-resize_height=3", "-resize_width=4",
                     "-check_size", str(tmp / "imgs") + "/", str(tmp / "list.txt"), db]) == 0
    rows = read_datums(db)
    assert all((d.channels, d.height, d.width) == (1, 3, 4) for _, d in rows)
    assert sorted(k.split("_", 1)[1] for k, _ in rows) == ["a%d.png" % i for i in range(4)]


def test_convert_imageset_encoded(images):
    tmp, arrays = images
    db = str(tmp / "e_lmdb")
    assert cli.main(["convert_imageset", "-encoded", "-encode_type", "png", str(tmp / "imgs") + "/",
                     str(tmp / "list.txt"), db]) == 0
    _, d = read_datums(db)[0]
    assert d.encoded and d.data == (tmp / "imgs" / "a0.png").read_bytes()
    np.testing.assert_array_equal(decode_image_bytes(d.data), arrays[0][:, :, ::-1])
    db2 = str(tmp / "j_lmdb")
    assert cli.main(["convert_imageset", "-encode_type=bmp", str(tmp / "imgs") + "/",
                     str(tmp / "list.txt"), db2]) == 0
    _, d = read_datums(db2)[1]
    assert d.encoded and d.data[:2] == b"BM"


def test_convert_imageset_leveldb(images):
    pytest.importorskip("plyvel")
    tmp, _ = images
    db = str(tmp / "ldb")
    assert cli.main(["convert_imageset", "-backend", "leveldb", str(tmp / "imgs") + "/",
                     str(tmp / "list.txt"), db]) == 0
    assert len(read_datums(db, "leveldb")) == 4


def test_convert_imageset_errors(images, capsys):
    tmp, _ = images
    assert cli.main(["convert_imageset", "onlyone"]) == 2
    assert "Usage" in capsys.readouterr().err
    (tmp / "bad.txt").write_text("missing.png 0\n")
    assert cli.main(["convert_imageset", str(tmp) + "/", str(tmp / "bad.txt"), str(tmp / "x")]) == 1
    # Caffe's root_folder + name: a root without its '/' runs into the name, and the
    # error says so
    capsys.readouterr()
    assert cli.main(["convert_imageset", str(tmp / "imgs"), str(tmp / "list.txt"),
                     str(tmp / "y")]) == 1
    err = capsys.readouterr().err
    assert "imgsa0.png" in err and "end root_folder with '/'" in err


def test_compute_image_mean(images):
    tmp, arrays = images
    db = str(tmp / "m_lmdb")
    cli.main(["convert_imageset", str(tmp / "imgs") + "/", str(tmp / "list.txt"), db])
    out = str(tmp / "mean.binaryproto")
    assert cli.main(["compute_image_mean", "-backend", "lmdb", db, out]) == 0
    blob = protoio.read_binary(out, caffe_pb2.BlobProto)
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 5, 6)
    expect = np.mean([a[:, :, ::-1].transpose(2, 0, 1).astype(np.float64) for a in arrays], axis=0)
    np.testing.assert_allclose(protoio.blobproto_to_array(blob)[0], expect, rtol=1e-6)
    assert cli.main(["compute_image_mean", db]) == 0     # output file optional


def test_extract_features(tmp_path):
    from jcaffe.db import make_key, open_db
    from jcaffe import io as caffe_io
    src = str(tmp_path / "in_lmdb")
    with open_db(src, "w") as db:
        for i in range(6):
            db.put(make_key(i), caffe_io.array_to_datum(np.full((1, 1, 2), i, np.uint8), i).SerializeToString())
    proto = write_prototxt(tmp_path, """
        layer { name: "d" type: "Data" top: "data" top: "label"
          data_param { source: "%s" batch_size: 2 backend: LMDB } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
          inner_product_param { num_output: 3 weight_filler { type: "constant" value: 1 }
                                bias_filler { type: "constant" value: 0.5 } } }""" % src)
    import jcaffe
    weights = str(tmp_path / "w.caffemodel")
    jcaffe.Net(proto, jcaffe.TEST).save(weights)
    out1, out2 = str(tmp_path / "f_ip"), str(tmp_path / "f_data")
    assert cli.main(["extract_features", weights, proto, "ip,data", out1 + "," + out2, "3", "lmdb"]) == 0
    rows = read_datums(out1)
    assert [k for k, _ in rows] == ["%010d" % i for i in range(6)]
    for i, (_, d) in enumerate(rows):
        assert (d.channels, d.height, d.width) == (3, 1, 1)
        np.testing.assert_allclose(d.float_data, [2 * i + 0.5] * 3)
    assert len(read_datums(out2)[0][1].float_data) == 2


def test_upgrade_tools(tmp_path):
    v1 = write_prototxt(tmp_path, """
        name: "old"
        layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y" blobs_lr: 1 blobs_lr: 2
          inner_product_param { num_output: 2 } }""", "v1.prototxt")
    out = str(tmp_path / "new.prototxt")
    assert cli.main(["upgrade_net_proto_text", v1, out]) == 0
    net = protoio.read_prototxt(out, caffe_pb2.NetParameter)
    assert not net.layers and net.layer[0].type == "InnerProduct" and net.layer[0].param[1].lr_mult == 2
    binary_in, binary_out = str(tmp_path / "v1.caffemodel"), str(tmp_path / "v2.caffemodel")
    protoio.write_binary(protoio.read_prototxt(v1, caffe_pb2.NetParameter), binary_in)
    assert cli.main(["upgrade_net_proto_binary", binary_in, binary_out]) == 0
    assert protoio.read_binary(binary_out, caffe_pb2.NetParameter).layer[0].type == "InnerProduct"
    s = write_prototxt(tmp_path, 'base_lr: 0.1 solver_type: ADAM\n', "s.prototxt")
    s_out = str(tmp_path / "s2.prototxt")
    assert cli.main(["upgrade_solver_proto_text", s, s_out]) == 0
    sp = protoio.read_prototxt(s_out, caffe_pb2.SolverParameter)
    assert sp.type == "Adam" and not sp.HasField("solver_type")
    assert cli.main(["upgrade_solver_proto_text", s]) == 2
