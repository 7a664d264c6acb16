"""Caffe's dataset converters as ``jcaffe`` tools (examples/mnist, examples/cifar10).

    jcaffe convert_mnist_data [-backend lmdb|leveldb] IMAGES_IDX LABELS_IDX OUTPUT_DB
    jcaffe convert_mnist_siamese_data [-backend leveldb|lmdb] IMAGES_IDX LABELS_IDX OUTPUT_DB
    jcaffe convert_cifar_data INPUT_FOLDER OUTPUT_FOLDER lmdb|leveldb

They write what Caffe's converters write, record for record, so the tutorials'
prototxts (``examples/mnist/lenet_train_test.prototxt``, ``examples/cifar10/*``)
read them unchanged:

* MNIST: one Datum per image, 1 x rows x cols uint8 ``data`` and the label, keys
  ``%08d`` from 0, in the files' order.
* MNIST pairs (examples/siamese): as many records as images, each a random pair
  (drawn with replacement) as a 2 x rows x cols Datum, label 1 where the two digits
  are the same, 0 where not. LevelDB by default, as Caffe (whose converter knows no
  other backend); the pairs come from jcaffe's random generator
  (``caffe.set_random_seed`` makes them repeatable), so they are not Caffe's pairs.
* CIFAR-10: ``cifar10_train_<backend>`` (data_batch_1..5.bin, keys ``%05d`` from
  0 to 49999) and ``cifar10_test_<backend>`` (test_batch.bin, keys 0 to 9999);
  3 x 32 x 32 uint8 ``data``, copied as the binary files hold it, so **in RGB
  order**, not the BGR that images read by convert_imageset have. Caffe's
  CIFAR-10 models are trained on that order; keep it in mind when you mix them
  with other data or a mean file from elsewhere.

The input files are checked before anything is written (magic numbers, counts,
sizes), and a short or mismatched file is an error that names it, where Caffe
would read past its end.
"""
import logging
import os

import numpy as np

from . import common
from .db import DataSourceError, open_db
from .io import array_to_datum
from .tool_flags import ToolUsageError, parse_tool_flags

log = logging.getLogger("jcaffe")

MNIST_USAGE = """This script converts the MNIST dataset to
the lmdb/leveldb format used by Caffe to load data.
Usage:
    jcaffe convert_mnist_data [FLAGS] input_image_file input_label_file output_db_file
The MNIST files are the four idx files from http://yann.lecun.com/exdb/mnist/,
gunzipped (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-...).
flags:
  -backend (The backend for storing the result) default: "lmdb"
"""

SIAMESE_USAGE = """This script converts the MNIST dataset to the leveldb format used
by caffe to train a siamese network.
Usage:
    jcaffe convert_mnist_siamese_data [FLAGS] input_image_file input_label_file output_db_file
flags:
  -backend (The backend for storing the result; Caffe's converter writes leveldb only)
      default: "leveldb"
"""

CIFAR_USAGE = """This script converts the CIFAR dataset to the leveldb/lmdb format used
by caffe to perform classification.
Usage:
    jcaffe convert_cifar_data input_folder output_folder db_type
Where the input folder should contain the binary batch files (data_batch_1.bin ..
data_batch_5.bin, test_batch.bin) of the CIFAR-10 binary version,
    http://www.cs.toronto.edu/~kriz/cifar.html
gunzipped and untarred.
"""

_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
_CIFAR_SIZE, _CIFAR_BATCH, _CIFAR_TRAIN_BATCHES = 32, 10000, 5
_CIFAR_RECORD = 1 + 3 * _CIFAR_SIZE * _CIFAR_SIZE


def _read_bytes(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataSourceError("Unable to open %s file %s: %s" % (what, path, e.strerror or e)) from e


def _idx_header(raw, path, magic, fields, what):
    """The big-endian uint32 header of an idx file: magic then ``fields`` counts."""
    need = 4 * (1 + fields)
    if len(raw) < need:
        raise DataSourceError("%s: %d bytes, too short for an idx %s file's header (%d bytes)"
                              % (path, len(raw), what, need))
    header = np.frombuffer(raw, ">u4", 1 + fields)
    if int(header[0]) != magic:
        raise DataSourceError("%s: Incorrect %s file magic: %d, expected %d (is it gunzipped, "
                              "and the %s file?)" % (path, what, int(header[0]), magic, what))
    return [int(v) for v in header[1:]], need


def read_mnist(image_path, label_path):
    """-> (uint8 images N x rows x cols, uint8 labels N), checked against their headers."""
    image_raw = _read_bytes(image_path, "image")
    label_raw = _read_bytes(label_path, "label")
    (num_items, rows, cols), image_off = _idx_header(image_raw, image_path, _IMAGE_MAGIC, 3, "image")
    (num_labels,), label_off = _idx_header(label_raw, label_path, _LABEL_MAGIC, 1, "label")
    if num_items != num_labels:
        raise DataSourceError("%s holds %d images but %s holds %d labels"
                              % (image_path, num_items, label_path, num_labels))
    for raw, off, want, path in ((image_raw, image_off, num_items * rows * cols, image_path),
                                 (label_raw, label_off, num_items, label_path)):
        if len(raw) - off < want:
            raise DataSourceError("%s: its header promises %d bytes of data after it, the file "
                                  "has %d" % (path, want, len(raw) - off))
    images = np.frombuffer(image_raw, np.uint8, num_items * rows * cols, image_off)
    labels = np.frombuffer(label_raw, np.uint8, num_items, label_off)
    return images.reshape(num_items, rows, cols), labels


def _write_datums(db, records):
    """Put one Datum per (key, label, C x H x W uint8 pixels) (jcaffe.io.array_to_datum);
    the database commits every 1000, as Caffe's converters do. -> count."""
    count = 0
    for key, label, pixels in records:
        db.put(key, array_to_datum(pixels, label).SerializeToString())
        count += 1
    return count


def _mnist_command(argv, default_backend, usage):
    """Parse an MNIST converter's command line, read and check its two files, log their
    size. -> (images, labels, output db path, backend)."""
    pos, f = parse_tool_flags(argv, {"backend": default_backend}, usage)
    if len(pos) != 3:
        raise ToolUsageError(usage)
    image_path, label_path, db_path = pos
    images, labels = read_mnist(image_path, label_path)
    log.info("A total of %d items.", len(images))
    log.info("Rows: %d Cols: %d", *images.shape[1:])
    return images, labels, db_path, f["backend"]


def convert_mnist_data(argv):
    images, labels, db_path, backend = _mnist_command(argv, "lmdb", MNIST_USAGE)
    with open_db(db_path, "w", backend) as db:
        count = _write_datums(db, (("%08d" % i, labels[i], images[i][None])
                                   for i in range(len(images))))
    log.info("Processed %d files.", count)
    return 0


def convert_mnist_siamese_data(argv):
    images, labels, db_path, backend = _mnist_command(argv, "leveldb", SIAMESE_USAGE)
    n = len(images)
    pairs = common.filler_rng().integers(0, n, (n, 2)) if n else np.zeros((0, 2), int)
    records = (("%08d" % k, labels[i] == labels[j], images[[i, j]]) for k, (i, j) in enumerate(pairs))
    with open_db(db_path, "w", backend) as db:
        _write_datums(db, records)
    return 0


def read_cifar_batch(path):
    """-> (uint8 labels N, uint8 images N x 3 x 32 x 32) of one CIFAR-10 binary batch file."""
    raw = _read_bytes(path, "CIFAR batch")
    want = _CIFAR_BATCH * _CIFAR_RECORD
    if len(raw) != want:
        raise DataSourceError("%s: %d bytes, a CIFAR-10 binary batch has %d (%d records of a "
                              "label byte and 3x32x32 pixels)" % (path, len(raw), want, _CIFAR_BATCH))
    records = np.frombuffer(raw, np.uint8).reshape(_CIFAR_BATCH, _CIFAR_RECORD)
    return records[:, 0], records[:, 1:].reshape(_CIFAR_BATCH, 3, _CIFAR_SIZE, _CIFAR_SIZE)


def convert_cifar_data(argv):
    pos, _ = parse_tool_flags(argv, {}, CIFAR_USAGE)
    if len(pos) != 3:
        raise ToolUsageError(CIFAR_USAGE)
    in_dir, out_dir, db_type = pos
    train_files = [os.path.join(in_dir, "data_batch_%d.bin" % (k + 1))
                   for k in range(_CIFAR_TRAIN_BATCHES)]
    test_file = os.path.join(in_dir, "test_batch.bin")
    batches = {p: read_cifar_batch(p) for p in train_files + [test_file]}   # all checked first

    def records(paths, train):
        for k, p in enumerate(paths):
            if train:
                log.info("Training Batch %d", k + 1)
            labels, images = batches[p]
            for i in range(_CIFAR_BATCH):
                yield "%05d" % (k * _CIFAR_BATCH + i), labels[i], images[i]

    log.info("Writing Training data")
    with open_db(os.path.join(out_dir, "cifar10_train_" + db_type), "w", db_type) as db:
        _write_datums(db, records(train_files, True))
    log.info("Writing Testing data")
    with open_db(os.path.join(out_dir, "cifar10_test_" + db_type), "w", db_type) as db:
        _write_datums(db, records([test_file], False))
    return 0

TOOLS = {"convert_mnist_data": convert_mnist_data,
         "convert_mnist_siamese_data": convert_mnist_siamese_data,
         "convert_cifar_data": convert_cifar_data}
