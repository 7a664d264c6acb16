"""Read and write Caffe's protobuf files: prototxt, .caffemodel, .binaryproto.

Readers turn every failure into a jcaffe error that names the file (and, for
text, the line and column). Writers are atomic: the bytes go to a temporary
file beside the target, which is fsync'ed and then renamed over it, so a crash
mid-write leaves the previous file whole.
"""
import os
import re
import secrets

import numpy as np
from google.protobuf import message as _message
from google.protobuf import text_format

from . import forks, upgrade
from .errors import ProtoFileError, PrototxtError, ShapeMismatchError
from .proto import caffe_pb2 as pb

# ---------------------------------------------------------------------------
# Text format

_LOCATION_PREFIX = re.compile(r"^\d+(:\d+)? : ")


def parse_prototxt(text, message_cls=pb.NetParameter, path=None):
    """Parse text-format ``text`` into a new ``message_cls``.

    Raises PrototxtError naming ``path`` (or "<string>"), line and column.
    """
    msg = message_cls()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        detail = _LOCATION_PREFIX.sub("", str(e), count=1)
        hint = forks.field_hint(detail)     # a fork's field: what BVLC writes instead
        if hint:
            detail = "%s. %s" % (detail.rstrip("."), hint)
        raise PrototxtError(detail, path, e.GetLine(), e.GetColumn()) from None
    return msg


def read_prototxt(path, message_cls=pb.NetParameter):
    """Read a text-format file into a new ``message_cls``."""
    path = os.fspath(path)
    data = _read_bytes(path, message_cls)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[:e.start]
        line, column = before.count(b"\n") + 1, e.start - before.rfind(b"\n")
        raise PrototxtError("byte 0x%02x is not UTF-8 text" % data[e.start],
                            path, line, column) from None
    return parse_prototxt(text, message_cls, path)


def _read_bytes(path, message_cls):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ProtoFileError("%s: cannot read %s: %s" % (
            path, _type_name(message_cls), e.strerror or e)) from e


def write_prototxt(msg, path):
    """Write ``msg`` in text format to ``path``, atomically."""
    atomic_write_bytes(path, text_format.MessageToString(msg).encode("utf-8"))


# ---------------------------------------------------------------------------
# Binary format

def read_binary(path, message_cls):
    """Read a binary protobuf file into a new ``message_cls``."""
    path = os.fspath(path)
    data = _read_bytes(path, message_cls)
    msg = message_cls()
    try:
        msg.ParseFromString(data)
    except _message.DecodeError as e:
        hint = ""
        if data[:256].isascii() and data[:256].strip():
            hint = " (it looks like text: a prototxt given where a binary file was expected?)"
        raise ProtoFileError("%s: not a valid binary %s: %s%s" % (
            path, _type_name(message_cls), e, hint)) from e
    return msg


def write_binary(msg, path):
    """Write ``msg`` in binary wire format to ``path``, atomically."""
    atomic_write_bytes(path, msg.SerializeToString())


def atomic_write_bytes(path, data):
    """Replace ``path`` with ``data`` so that readers see the old or the new
    file, never a partial one (temp file in the same directory, fsync, rename)."""
    path = os.fspath(path)
    try:
        _replace_file(os.path.realpath(path), data)
    except OSError as e:
        raise ProtoFileError("%s: cannot write: %s" % (path, e.strerror or e)) from e


def _replace_file(target, data):
    folder, base = os.path.split(target)
    fd, tmp = _create_temp(folder, base)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(target):
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _create_temp(folder, base):
    """A new hidden file beside the target, created 0666 less the umask, as
    open() would create the target itself (mkstemp would make it 0600)."""
    while True:
        tmp = os.path.join(folder, ".%s.%s.tmp" % (base, secrets.token_hex(4)))
        try:
            return os.open(tmp, _CREATE_FLAGS, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_dir(folder):
    """Make the rename itself durable (POSIX); skipped where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _type_name(message_cls):
    return message_cls.DESCRIPTOR.full_name


# ---------------------------------------------------------------------------
# Nets and solvers, upgraded on read

def read_net_param(path):
    """Read a net prototxt and upgrade it from older Caffe formats as needed."""
    net = read_prototxt(path, pb.NetParameter)
    upgrade.upgrade_net_as_needed(net, os.fspath(path))
    return net


def read_net_param_binary(path):
    """Read a binary NetParameter and upgrade it from older formats as needed."""
    net = read_binary(path, pb.NetParameter)
    upgrade.upgrade_net_as_needed(net, os.fspath(path))
    return net


def read_weights(path):
    """Read a .caffemodel (a binary NetParameter holding blobs), upgraded."""
    return read_net_param_binary(path)


def read_solver_param(path):
    """Read a solver prototxt as Caffe does: upgrade solver_type and fill in
    snapshot_prefix from the file name when it is unset or a directory."""
    solver = read_prototxt(path, pb.SolverParameter)
    upgrade.upgrade_solver_as_needed(solver, os.fspath(path))
    upgrade.upgrade_snapshot_prefix(solver, os.fspath(path))
    return solver


# ---------------------------------------------------------------------------
# BlobProto <-> numpy

def blobproto_to_array(blob, return_diff=False):
    """The data (or diff) of a BlobProto as a numpy array of its shape.

    The legacy num/channels/height/width shape is used when any of them is
    set, else ``shape.dim`` (as Caffe and pycaffe do). ``double_data`` /
    ``double_diff`` win when present and give float64; otherwise float32.
    """
    kind = "diff" if return_diff else "data"
    doubles = getattr(blob, "double_" + kind)
    if len(doubles):
        values = np.array(doubles, dtype=np.float64)
    else:
        values = np.array(getattr(blob, kind), dtype=np.float32)
    shape = _blob_shape(blob)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise ShapeMismatchError("BlobProto of shape %s holds %d %s values, "
                                 "expected %d" % (tuple(shape), values.size,
                                                  kind, np.prod(shape)))
    return values.reshape(shape)


def _blob_shape(blob):
    legacy = ("num", "channels", "height", "width")
    if any(blob.HasField(name) for name in legacy):
        return [getattr(blob, name) for name in legacy]
    return list(blob.shape.dim)


def array_to_blobproto(arr, diff=None, double=False):
    """A BlobProto with ``shape.dim`` set from ``arr`` and its values as
    ``data`` (float32, pycaffe's choice) or, with ``double=True``, as
    ``double_data``; ``diff`` likewise, if given, and of the same shape."""
    arr = np.asarray(arr)
    blob = pb.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    prefix = "double_" if double else ""
    _append_packed(blob, prefix + "data", arr, double)
    if diff is not None:
        diff = np.asarray(diff)
        if diff.shape != arr.shape:
            raise ShapeMismatchError("diff shape %s differs from data shape %s"
                                     % (diff.shape, arr.shape))
        _append_packed(blob, prefix + "diff", diff, double)
    return blob


def _append_packed(blob, field_name, values, double):
    """Append ``values`` to a packed repeated float/double field by merging
    its wire encoding: ~20x faster than extending the field element by element."""
    number = blob.DESCRIPTOR.fields_by_name[field_name].number
    payload = np.ascontiguousarray(values, dtype="<f8" if double else "<f4").tobytes()
    blob.MergeFromString(_varint(number << 3 | 2) + _varint(len(payload)) + payload)


def _varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_blobproto(path):
    """Read a .binaryproto file (e.g. a mean image) as a numpy array."""
    return blobproto_to_array(read_binary(path, pb.BlobProto))


def write_blobproto(arr, path, double=False):
    """Write ``arr`` to a .binaryproto file, atomically."""
    write_binary(array_to_blobproto(arr, double=double), path)
