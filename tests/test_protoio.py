"""jcaffe.protoio: the schema, readers with located errors, atomic writers, BlobProto."""
import logging
import os
import shutil
import subprocess

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from jcaffe import protoio
from jcaffe.errors import ProtoFileError, PrototxtError, ShapeMismatchError
from jcaffe.proto import caffe_pb2 as pb

PROTO_DIR = os.path.join(os.path.dirname(pb.__file__))
CAFFE_REPO = "/work/.mirror/BVLC+caffe/repo"


# ---------------------------------------------------------------------------
# The schema

def _compile(proto_dir, tmp_path, tag):
    """FileDescriptorProto of <proto_dir>/caffe.proto, via grpc_tools' protoc."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = str(tmp_path / (tag + ".pb"))
    rc = protoc.main(["protoc", "-I" + str(proto_dir),
                      "--descriptor_set_out=" + out, "caffe.proto"])
    assert rc == 0, "protoc failed on %s/caffe.proto" % proto_dir
    files = descriptor_pb2.FileDescriptorSet()
    with open(out, "rb") as f:
        files.ParseFromString(f.read())
    (fd,) = files.file
    return _normalized(fd)


def _normalized(fd):
    """Drop what differs between protoc's output and the descriptor embedded in
    caffe_pb2 without changing the schema: source info, derived json names,
    and the spelling of float defaults (1e-08 vs 9.99999994e-09)."""
    fd.ClearField("source_code_info")
    precision = {descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: np.float32,
                 descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: np.float64}

    def walk(msg):
        for field in list(msg.field) + list(msg.extension):
            field.ClearField("json_name")
            if field.type in precision and field.HasField("default_value"):
                value = precision[field.type](float(field.default_value))
                field.default_value = repr(float(value))
        for nested in msg.nested_type:
            walk(nested)

    for msg in fd.message_type:
        walk(msg)
    return fd


def _caffe_proto_text():
    if not os.path.isdir(CAFFE_REPO) or shutil.which("git") is None:
        pytest.skip("BVLC Caffe mirror not available")
    result = subprocess.run(
        ["git", "-C", CAFFE_REPO, "show", "HEAD:src/caffe/proto/caffe.proto"],
        capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("cannot read caffe.proto from the Caffe mirror")
    return result.stdout


def test_schema_is_identical_to_caffes(tmp_path):
    ours = _compile(PROTO_DIR, tmp_path, "ours")
    theirs_dir = tmp_path / "caffe"
    theirs_dir.mkdir()
    (theirs_dir / "caffe.proto").write_text(_caffe_proto_text())
    theirs = _compile(theirs_dir, tmp_path, "theirs")
    assert ours.name == theirs.name == "caffe.proto"
    assert ours == theirs


def test_generated_module_matches_the_schema(tmp_path):
    """caffe_pb2.py was regenerated after the last edit of caffe.proto."""
    ours = _compile(PROTO_DIR, tmp_path, "ours")
    generated = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert _normalized(generated) == ours


@pytest.mark.parametrize("message, field, number", [
    (pb.LayerParameter, "convolution_param", 106),
    (pb.LayerParameter, "param", 6),
    (pb.V1LayerParameter, "convolution_param", 10),
    (pb.V1LayerParameter, "layer", 1),
    (pb.V0LayerParameter, "hdf5_output_param", 1001),
    (pb.SolverParameter, "base_lr", 5),
    (pb.SolverParameter, "solver_type", 30),
    (pb.BlobProto, "data", 5),
    (pb.BlobProto, "double_data", 8),
    (pb.BlobProto, "shape", 7),
    (pb.NetParameter, "layers", 2),
    (pb.NetParameter, "layer", 100),
])
def test_known_field_numbers(message, field, number):
    assert message.DESCRIPTOR.fields_by_name[field].number == number


# ---------------------------------------------------------------------------
# Reading, with located errors

BAD_NET = 'name: "x"\nlayer {\n  nme: "conv"\n}\n'


def test_parse_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(BAD_NET)
    with pytest.raises(PrototxtError) as info:
        protoio.read_prototxt(path)
    err = info.value
    assert (err.path, err.line, err.column) == (str(path), 3, 3)
    assert str(err).startswith("%s:3:3: " % path)
    assert 'no field named "nme"' in str(err)
    assert "3:3 :" not in str(err)  # protobuf's own prefix is not repeated


def test_parse_error_at_end_of_file(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('layer {\n  name: "a"\n')
    with pytest.raises(PrototxtError) as info:
        protoio.read_prototxt(path)
    assert info.value.line in (2, 3)
    assert str(info.value).startswith(str(path) + ":")


def test_non_utf8_byte_is_located(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_bytes(b'name: "x"\n# caf\xe9\n')
    with pytest.raises(PrototxtError, match=r"net\.prototxt:2:6: byte 0xe9"):
        protoio.read_prototxt(path)


def test_parse_error_of_a_string():
    with pytest.raises(PrototxtError, match=r"^<string>:1:10: "):
        protoio.parse_prototxt("base_lr: x", pb.SolverParameter)


def test_parse_ok():
    net = protoio.parse_prototxt('name: "n" layer { name: "a" type: "ReLU" }')
    assert net.layer[0].type == "ReLU"


def test_missing_files_name_the_path(tmp_path):
    path = tmp_path / "nope.prototxt"
    for read in (protoio.read_prototxt, protoio.read_net_param,
                 lambda p: protoio.read_binary(p, pb.NetParameter)):
        with pytest.raises(ProtoFileError, match="nope.prototxt"):
            read(path)


def test_corrupt_binary_names_path_and_type(tmp_path):
    path = tmp_path / "w.caffemodel"
    path.write_bytes(b"\xff\xff\xff\xff\x0f\x00")
    with pytest.raises(ProtoFileError, match=r"w\.caffemodel.*caffe\.NetParameter"):
        protoio.read_binary(path, pb.NetParameter)


def test_text_given_as_binary_gets_a_hint(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text('name: "n"\nlayer { name: "a" type: "ReLU" }\n')
    with pytest.raises(ProtoFileError, match="looks like text"):
        protoio.read_weights(path)


def test_binary_round_trip(tmp_path):
    net = protoio.parse_prototxt('name: "n" layer { name: "a" type: "ReLU" }')
    net.layer[0].blobs.add().CopyFrom(protoio.array_to_blobproto(np.ones((2, 3))))
    path = tmp_path / "w.caffemodel"
    protoio.write_binary(net, path)
    assert protoio.read_weights(path) == net


def test_text_round_trip(tmp_path):
    solver = protoio.parse_prototxt('base_lr: 0.01 type: "Adam" max_iter: 10',
                                    pb.SolverParameter)
    protoio.write_prototxt(solver, tmp_path / "s.prototxt")
    assert protoio.read_prototxt(tmp_path / "s.prototxt", pb.SolverParameter) == solver


def test_read_net_param_upgrades_and_logs(tmp_path, caplog):
    path = tmp_path / "deploy.prototxt"
    path.write_text('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
                    'layers { name: "r" type: RELU bottom: "data" top: "data" }\n')
    with caplog.at_level(logging.INFO, logger="jcaffe"):
        net = protoio.read_net_param(path)
    assert [l.type for l in net.layer] == ["Input", "ReLU"]
    assert not net.input and not net.layers
    assert str(path) in caplog.text and "Input layer" in caplog.text


def test_read_solver_param_as_caffe_does(tmp_path):
    path = tmp_path / "lenet_solver.prototxt"
    path.write_text('base_lr: 0.01 solver_type: NESTEROV\n')
    solver = protoio.read_solver_param(path)
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    assert solver.snapshot_prefix == str(tmp_path / "lenet_solver")


# ---------------------------------------------------------------------------
# Atomic writes

def _assert_untouched(path, content):
    assert path.read_bytes() == content
    assert os.listdir(path.parent) == [path.name], "temporary file left behind"


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "w.caffemodel"
    old = protoio.parse_prototxt('name: "old"')
    protoio.write_binary(old, path)
    content = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    new = protoio.parse_prototxt('name: "new" layer { name: "a" }')
    with pytest.raises(ProtoFileError, match="No space left"):
        protoio.write_binary(new, path)
    _assert_untouched(path, content)


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """A KeyboardInterrupt between write and rename leaves no trace."""
    path = tmp_path / "net.prototxt"
    protoio.write_prototxt(protoio.parse_prototxt('name: "old"'), path)
    content = path.read_bytes()

    def interrupted_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        protoio.write_prototxt(protoio.parse_prototxt('name: "new"'), path)
    _assert_untouched(path, content)


def test_failed_serialization_keeps_the_previous_file(tmp_path):
    path = tmp_path / "w.caffemodel"
    protoio.write_binary(protoio.parse_prototxt('name: "old"'), path)
    content = path.read_bytes()

    class Unserializable:
        def SerializeToString(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        protoio.write_binary(Unserializable(), path)
    _assert_untouched(path, content)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_write_keeps_mode_and_honours_umask(tmp_path):
    fresh = tmp_path / "fresh.prototxt"
    old_umask = os.umask(0o022)
    try:
        protoio.write_prototxt(pb.NetParameter(), fresh)
    finally:
        os.umask(old_umask)
    assert fresh.stat().st_mode & 0o777 == 0o644
    fresh.chmod(0o600)
    protoio.write_prototxt(pb.NetParameter(name="again"), fresh)
    assert fresh.stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------------------
# BlobProto <-> numpy

def test_nd_round_trip(rng):
    arr = rng.standard_normal((2, 3, 4, 5, 6)).astype(np.float32)
    diff = rng.standard_normal(arr.shape).astype(np.float32)
    blob = protoio.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 4, 5, 6]
    assert not blob.HasField("num")
    out = protoio.blobproto_to_array(blob)
    assert out.dtype == np.float32 and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(protoio.blobproto_to_array(blob, return_diff=True), diff)


def test_packed_encoding_equals_plain_extend(rng):
    arr = rng.standard_normal((3, 7))
    fast = protoio.array_to_blobproto(arr, diff=arr * 2)
    slow = pb.BlobProto()
    slow.shape.dim.extend(arr.shape)
    slow.data.extend(arr.astype(np.float32).ravel().tolist())
    slow.diff.extend((arr * 2).astype(np.float32).ravel().tolist())
    assert fast == slow
    assert fast.SerializeToString() == slow.SerializeToString()


def test_scalar_and_empty_shapes():
    scalar = protoio.blobproto_to_array(protoio.array_to_blobproto(np.float32(3.5)))
    assert scalar.shape == () and scalar == 3.5
    empty = protoio.blobproto_to_array(protoio.array_to_blobproto(np.zeros((0, 4))))
    assert empty.shape == (0, 4)


def test_legacy_4d_shape_wins():
    blob = pb.BlobProto(num=2, channels=1, height=2, width=3, data=range(12))
    blob.shape.dim.extend([12])  # ignored: legacy fields are set
    out = protoio.blobproto_to_array(blob)
    assert out.shape == (2, 1, 2, 3)
    np.testing.assert_array_equal(out.ravel(), np.arange(12))


def test_double_data(rng):
    arr = rng.standard_normal((4, 5))
    blob = protoio.array_to_blobproto(arr, diff=-arr, double=True)
    assert len(blob.double_data) == 20 and len(blob.data) == 0
    out = protoio.blobproto_to_array(blob)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(protoio.blobproto_to_array(blob, True), -arr)


def test_integer_input_is_stored_as_float():
    blob = protoio.array_to_blobproto(np.arange(6, dtype=np.int32).reshape(2, 3))
    np.testing.assert_array_equal(protoio.blobproto_to_array(blob),
                                  np.arange(6, dtype=np.float32).reshape(2, 3))


def test_count_mismatch_is_reported():
    blob = pb.BlobProto(data=[1.0, 2.0, 3.0])
    blob.shape.dim.extend([2, 2])
    with pytest.raises(ShapeMismatchError, match=r"\(2, 2\).*3 data values.*4"):
        protoio.blobproto_to_array(blob)
    with pytest.raises(ShapeMismatchError, match="diff"):
        protoio.blobproto_to_array(protoio.array_to_blobproto(np.ones(3)), return_diff=True)


def test_mean_file(tmp_path, rng):
    """A mean file as Caffe's compute_image_mean writes it: legacy 1xCxHxW."""
    mean = rng.uniform(0, 255, (1, 3, 4, 5)).astype(np.float32)
    blob = pb.BlobProto(num=1, channels=3, height=4, width=5)
    blob.data.extend(mean.ravel().tolist())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    np.testing.assert_array_equal(protoio.read_blobproto(path), mean)
    protoio.write_blobproto(mean[0], tmp_path / "mean2.binaryproto")
    np.testing.assert_array_equal(protoio.read_blobproto(tmp_path / "mean2.binaryproto"),
                                  mean[0])
