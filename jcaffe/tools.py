"""Caffe's tools as ``jcaffe`` subcommands, with their gflags-style flags.

    jcaffe convert_imageset [-gray] [-shuffle] [-backend lmdb|leveldb] [-resize_width N]
                            [-resize_height N] [-check_size] [-encoded] [-encode_type png|jpg]
                            ROOTFOLDER/ LISTFILE DB_NAME
    jcaffe compute_image_mean [-backend lmdb|leveldb] INPUT_DB [OUTPUT_FILE]
    jcaffe extract_features PRETRAINED_WEIGHTS NET_PROTOTXT BLOB1[,BLOB2...] DB1[,DB2...]
                            NUM_MINI_BATCHES DB_TYPE [CPU|GPU] [DEVICE_ID]
    jcaffe upgrade_net_proto_text IN.prototxt OUT.prototxt
    jcaffe upgrade_net_proto_binary IN.caffemodel OUT.caffemodel
    jcaffe upgrade_solver_proto_text IN.prototxt OUT.prototxt
    jcaffe convert_mnist_data | convert_mnist_siamese_data | convert_cifar_data
                                                       (jcaffe/tools_datasets.py)

Flags are gflags-style (jcaffe/tool_flags.py).
Images are read with Pillow into Caffe's layout (BGR, C x H x W).
"""
import logging
import os

import numpy as np

from . import common, protoio, tools_datasets, upgrade
from .db import DataSourceError, make_key, open_db, parse_datum
from .proto import caffe_pb2
from .tool_flags import ToolUsageError, parse_tool_flags

log = logging.getLogger("jcaffe")


# ---------------------------------------------------------------------------
# convert_imageset

CONVERT_USAGE = """Convert a set of images to the leveldb/lmdb format used as input for Caffe.
Usage:
    jcaffe convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME
The ImageNet dataset for the training demo is at
    http://www.image-net.org/download-images
LISTFILE has one '<relative image path> <label>' per line.
flags:
  -gray (When this option is on, treat images as grayscale ones) default: false
  -shuffle (Randomly shuffle the order of images and their labels) default: false
  -backend (The backend {lmdb, leveldb} for storing the result) default: "lmdb"
  -resize_width (Width images are resized to) default: 0
  -resize_height (Height images are resized to) default: 0
  -check_size (When this option is on, check that all the datum have the same size) default: false
  -encoded (When this option is on, the encoded image will be save in datum) default: false
  -encode_type (Optional: What type should we encode the image as ('png','jpg',...).) default: ""
"""

_PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "tif": "TIFF",
                "tiff": "TIFF", "webp": "WEBP", "ppm": "PPM", "pgm": "PPM"}


def read_image_to_datum(path, label, height=0, width=0, is_color=True, encoded=False,
                        encode_type=""):
    """Caffe's ReadImageToDatum: raw BGR C x H x W uint8 ``data``, or with ``encoded``
    the file's own bytes (when no resize and the same format) or a re-encoding."""
    from .layers.data_layers import read_image
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    encoding = (encode_type or ext).lower()
    datum = caffe_pb2.Datum()
    if encoded and not height and not width and (not encode_type or encoding == ext
                                                   or {encoding, ext} == {"jpg", "jpeg"}):
        try:
            with open(path, "rb") as f:
                datum.data = f.read()
        except OSError as e:
            raise DataSourceError("cannot read image '%s': %s" % (path, e)) from e
        # Caffe's ReadFileToDatum: the bytes as they are; check that they decode.
        from .data_transformer import decode_image_bytes
        decode_image_bytes(datum.data, where="image '%s'" % path)
        datum.encoded = True
        datum.label = int(label)
        return datum
    img = read_image(path, height, width, is_color, where="convert_imageset")
    if encoded:
        from PIL import Image
        fmt = _PIL_FORMATS.get(encoding)
        if fmt is None:
            raise DataSourceError("cannot encode '%s' as '%s' (known: %s)"
                                  % (path, encoding, ", ".join(sorted(_PIL_FORMATS))))
        pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img[:, :, ::-1].copy())
        import io as _io
        buf = _io.BytesIO()
        pil.save(buf, format=fmt)
        datum.data = buf.getvalue()
        datum.encoded = True
        datum.label = int(label)
        return datum
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    datum.channels, datum.height, datum.width = (int(d) for d in chw.shape)
    datum.data = chw.tobytes()
    datum.encoded = False
    datum.label = int(label)
    return datum


def convert_imageset(argv):
    from .layers.data_layers import root_hint, rooted
    spec = {"gray": False, "shuffle": False, "backend": "lmdb", "resize_width": 0,
            "resize_height": 0, "check_size": False, "encoded": False, "encode_type": ""}
    pos, f = parse_tool_flags(argv, spec, CONVERT_USAGE)
    if len(pos) < 3:
        raise ToolUsageError(CONVERT_USAGE)
    root, list_file, db_name = pos[:3]
    lines = []
    try:
        with open(list_file) as fh:
            for n, line in enumerate(fh, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                p = line.rstrip().rfind(" ")
                if p < 0:
                    raise DataSourceError("%s:%d: expected '<image path> <label>', got %r" % (list_file, n, line))
                try:
                    lines.append((line[:p], int(line[p + 1:])))
                except ValueError:
                    raise DataSourceError("%s:%d: label %r is not an integer"
                                          % (list_file, n, line[p + 1:])) from None
    except OSError as e:
        raise DataSourceError("cannot read list file '%s': %s" % (list_file, e)) from e
    if f["shuffle"]:
        log.info("Shuffling data")
        order = common.filler_rng().permutation(len(lines))
        lines = [lines[i] for i in order]
    log.info("A total of %d images.", len(lines))
    if f["encode_type"] and not f["encoded"]:
        log.info("encode_type specified, assuming encoded=true.")
        f["encoded"] = True
    size = None
    count = 0
    with open_db(db_name, "w", f["backend"]) as db:
        for line_id, (name, label) in enumerate(lines):
            try:
                datum = read_image_to_datum(rooted(root, name), label, f["resize_height"],
                                            f["resize_width"], not f["gray"], f["encoded"],
                                            f["encode_type"])
            except DataSourceError as e:
                if os.path.exists(rooted(root, name)) or not root_hint(root):
                    raise
                raise DataSourceError(str(e) + root_hint(root)) from e
            if f["check_size"] and not datum.encoded:
                this = len(datum.data)
                if size is None:
                    size = this
                elif this != size:
                    raise DataSourceError("convert_imageset: image '%s' (line %d) has data size %d, "
                                          "the first image %d (check_size)" % (name, line_id + 1, this, size))
            db.put(make_key(line_id, name), datum.SerializeToString())
            count += 1
            if count % 1000 == 0:
                db.commit()
                log.info("Processed %d files.", count)
    if count % 1000:
        log.info("Processed %d files.", count)
    return 0


# ---------------------------------------------------------------------------
# compute_image_mean

MEAN_USAGE = """Compute the mean_image of a set of images given by a leveldb/lmdb
Usage:
    jcaffe compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]
flags:
  -backend (The backend {leveldb, lmdb} containing the images) default: "lmdb"
"""


def compute_image_mean(argv):
    pos, f = parse_tool_flags(argv, {"backend": "lmdb"}, MEAN_USAGE)
    if len(pos) not in (1, 2):
        raise ToolUsageError(MEAN_USAGE)
    from .data_transformer import datum_to_chw
    total, count, shape = None, 0, None
    with open_db(pos[0], "r", f["backend"]) as db:
        for key, value in db.items():
            datum = parse_datum(value, pos[0], key)
            where = "database '%s', record '%s'" % (pos[0], key.decode(errors="replace"))
            arr = datum_to_chw(datum, where=where).astype(np.float64)
            if total is None:
                shape, first = arr.shape, key.decode(errors="replace")
                total = np.zeros(shape, np.float64)
            elif arr.shape != shape:
                raise DataSourceError("%s has size %s but the first record '%s' has %s"
                                      % (where, "x".join(map(str, arr.shape)), first,
                                         "x".join(map(str, shape))))
            total += arr
            count += 1
            if count % 10000 == 0:
                log.info("Processed %d files.", count)
    if not count:
        raise DataSourceError("database '%s' is empty" % pos[0])
    log.info("Processed %d files.", count)
    mean = (total / count).astype(np.float32)
    blob = caffe_pb2.BlobProto()
    blob.num, (blob.channels, blob.height, blob.width) = 1, shape
    blob.data.extend(mean.ravel().tolist())
    if len(pos) == 2:
        log.info("Write to %s", pos[1])
        protoio.write_binary(blob, pos[1])
    for c in range(shape[0]):
        log.info("mean_value channel [%d]: %g", c, float(mean[c].mean()))
    return 0


# ---------------------------------------------------------------------------
# extract_features

EXTRACT_USAGE = """This program takes in a trained network and an input data layer, and then
extract features of the input data produced by the net.
Usage: jcaffe extract_features  pretrained_net_param  feature_extraction_proto_file \
  extract_feature_blob_name1[,name2,...]  save_feature_dataset_name1[,name2,...] \
  num_mini_batches  db_type  [CPU/GPU] [DEVICE_ID=0]
Note: you can extract multiple features in one pass by specifying multiple feature blob
names and dataset names separated by ','. The names cannot contain white space characters
and the number of blobs and datasets must be equal.
"""


def extract_features(argv):
    pos, _ = parse_tool_flags(argv, {}, EXTRACT_USAGE)
    if len(pos) < 6:
        raise ToolUsageError(EXTRACT_USAGE)
    weights, proto, blob_arg, db_arg, batches, db_type = pos[:6]
    if len(pos) > 6 and pos[6].upper() == "GPU":
        common.set_mode_gpu()
        common.set_device(int(pos[7]) if len(pos) > 7 else 0)
    else:
        common.set_mode_cpu()
    from .net import Net
    net = Net(proto, caffe_pb2.TEST, weights=weights)
    blob_names = blob_arg.split(",")
    db_names = db_arg.split(",")
    if len(blob_names) != len(db_names):
        raise ToolUsageError("the number of blob names and dataset names must be equal")
    for name in blob_names:
        if name not in net.blobs:
            raise ToolUsageError("Unknown feature blob name %s in the network %s" % (name, proto))
    num_batches = int(batches)
    dbs = [open_db(d, "w", db_type) for d in db_names]
    try:
        log.info("Extracting Features")
        image_indices = [0] * len(blob_names)
        for _ in range(num_batches):
            net._forward(0, len(net._slots) - 1)
            for i, (name, db) in enumerate(zip(blob_names, dbs)):
                feats = net.blobs[name].host_data()
                n = feats.shape[0]
                per = feats.reshape(n, -1)
                legacy = [net.blobs[name].legacy_shape(k) for k in (1, 2, 3)]
                for row in per:
                    datum = caffe_pb2.Datum()
                    datum.channels, datum.height, datum.width = legacy
                    datum.float_data.extend(row.astype(np.float32).tolist())
                    db.put(("%010d" % image_indices[i]).encode(), datum.SerializeToString())
                    image_indices[i] += 1
                    if image_indices[i] % 1000 == 0:
                        db.commit()
                        log.info("Extracted features of %d query images for feature blob %s",
                                 image_indices[i], name)
        for i, name in enumerate(blob_names):
            log.info("Extracted features of %d query images for feature blob %s", image_indices[i], name)
    finally:
        for db in dbs:
            db.close()
    log.info("Successfully extracted the features!")
    return 0


# ---------------------------------------------------------------------------
# upgrades

def _two_files(argv, usage):
    pos, _ = parse_tool_flags(argv, {}, usage)
    if len(pos) != 2:
        raise ToolUsageError(usage)
    return pos


def _upgrade(argv, usage, message, needs_upgrade, upgrade_as_needed, read, write):
    """Read, upgrade if old (else log that it is current), write: the upgrade_* tools."""
    src, dst = _two_files(argv, usage)
    param = read(src)
    if needs_upgrade(param):
        upgrade_as_needed(param, src)
    else:
        log.error("File already in latest proto format: %s", src)
    write(param, dst)
    log.info("Wrote upgraded %s to %s", message, dst)
    return 0


def upgrade_net_proto_text(argv):
    return _upgrade(argv, "Usage: jcaffe upgrade_net_proto_text V0_NET_PROTO_FILE_IN "
                          "NET_PROTO_FILE_OUT", "NetParameter text proto",
                    upgrade.net_needs_upgrade, upgrade.upgrade_net_as_needed,
                    lambda f: protoio.read_prototxt(f, caffe_pb2.NetParameter),
                    protoio.write_prototxt)


def upgrade_net_proto_binary(argv):
    return _upgrade(argv, "Usage: jcaffe upgrade_net_proto_binary V0_NET_PROTO_FILE_IN "
                          "NET_PROTO_FILE_OUT", "NetParameter binary proto",
                    upgrade.net_needs_upgrade, upgrade.upgrade_net_as_needed,
                    lambda f: protoio.read_binary(f, caffe_pb2.NetParameter),
                    protoio.write_binary)


def upgrade_solver_proto_text(argv):
    return _upgrade(argv, "Usage: jcaffe upgrade_solver_proto_text OLD_SOLVER_PROTO_FILE_IN "
                          "NEW_SOLVER_PROTO_FILE_OUT", "SolverParameter text proto",
                    upgrade.solver_needs_type_upgrade, upgrade.upgrade_solver_as_needed,
                    lambda f: protoio.read_prototxt(f, caffe_pb2.SolverParameter),
                    protoio.write_prototxt)


TOOLS = {
    "convert_imageset": convert_imageset,
    "compute_image_mean": compute_image_mean,
    "extract_features": extract_features,
    "upgrade_net_proto_text": upgrade_net_proto_text,
    "upgrade_net_proto_binary": upgrade_net_proto_binary,
    "upgrade_solver_proto_text": upgrade_solver_proto_text,
    **tools_datasets.TOOLS,     # the converters of Caffe's examples (MNIST, its pairs, CIFAR-10)
}
