"""Build the digits LMDBs from scikit-learn's bundled handwritten digits (no download).

    python examples/digits/create_digits.py [--out examples/digits/output]

1797 8x8 gray images (values 0..16 scaled to 0..255), split with a fixed
seed into 1437 training and 360 test images, written as Caffe writes them
with convert_imageset: one ``Datum`` per image (channels 1, height 8,
width 8, uint8 ``data``, ``label``) under the key ``%08d_<name>``.
"""
import argparse
import os
import shutil
import sys

import numpy as np

from jcaffe import io as caffe_io
from jcaffe.db import make_key, open_db

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "output")
NUM_TEST = 360


def load_split(seed=0):
    """(train_images, train_labels, test_images, test_labels, test_names): uint8 N x 1 x 8 x 8."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("this example needs scikit-learn: pip install -e \".[examples]\"")
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    test, train = order[:NUM_TEST], order[NUM_TEST:]
    return images, labels, train, test


def write_lmdb(path, images, labels, indices, backend="lmdb"):
    if os.path.exists(path):
        shutil.rmtree(path)
    with open_db(path, "w", backend) as db:
        for n, i in enumerate(indices):
            datum = caffe_io.array_to_datum(images[i], int(labels[i]))
            datum.encoded = False   # convert_imageset's CVMatToDatum sets it explicitly
            db.put(make_key(n, "digit_%04d" % i), datum.SerializeToString())
    return len(indices)


def create(out_dir=DEFAULT_OUT, log=print):
    os.makedirs(out_dir, exist_ok=True)
    images, labels, train, test = load_split()
    paths = {}
    for name, idx in (("train", train), ("test", test)):
        path = os.path.join(out_dir, "digits_%s_lmdb" % name)
        n = write_lmdb(path, images, labels, idx)
        log("wrote %d %s images to %s" % (n, name, path))
        paths[name] = path
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    create(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
