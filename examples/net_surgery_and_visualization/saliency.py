"""Saliency map: which input pixels move a class score? (Simonyan et al. 2013, pycaffe style)

    python examples/net_surgery_and_visualization/saliency.py [--weights W.caffemodel]
                                                            [--index 0] [--out saliency.png]

Loads the digits LeNet deploy net with trained weights (examples/digits; a
short training run makes them if they are missing), switches on
``force_backward: true`` by editing the NetParameter (net surgery: without
it Caffe never computes a gradient for the input), forwards one test image,
puts a one-hot diff on the class score ``ip2`` and runs ``net.backward``
from there down to the data. ``|d score / d pixel|`` is the saliency map,
saved next to the image as a PNG (Pillow).
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = os.path.join(HERE, "..", "digits")
sys.path.insert(0, DIGITS)

import jcaffe  # noqa: E402
from jcaffe import protoio  # noqa: E402
from jcaffe.db import open_db, parse_datum  # noqa: E402
import create_digits  # noqa: E402

DEFAULT_WEIGHTS = os.path.join(create_digits.DEFAULT_OUT, "digits_lenet.caffemodel")


def ensure_weights(weights, log=print):
    if os.path.exists(weights):
        return weights
    log("no weights at %s: training the digits LeNet briefly first" % weights)
    import train
    train.train(iters=500, out_dir=os.path.dirname(weights), log=log, verbose=False)
    return weights


def saliency(net, image, class_index=None):
    """(saliency H x W, predicted class, score): |d ip2[class] / d data| over channels."""
    net.blobs["data"].reshape(1, *image.shape)
    net.forward(data=image[None])
    scores = net.blobs["ip2"].data[0].copy()
    if class_index is None:
        class_index = int(scores.argmax())
    net.blobs["ip2"].diff[...] = 0
    net.blobs["ip2"].diff[0, class_index] = 1.0
    grads = net.backward(start="ip2")["data"][0]
    return np.abs(grads).max(axis=0), class_index, float(scores[class_index])


def to_png(image, sal, path, zoom=16):
    from PIL import Image
    def u8(a):
        a = a - a.min()
        return (255 * a / (a.max() or 1)).astype(np.uint8)
    left = np.kron(u8(image[0]), np.ones((zoom, zoom), np.uint8))
    right = np.kron(u8(sal), np.ones((zoom, zoom), np.uint8))
    gap = np.full((left.shape[0], zoom // 2), 128, np.uint8)
    Image.fromarray(np.hstack([left, gap, right])).save(path)
    return path


def main(argv=None, log=print):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--index", type=int, default=0, help="which test image")
    parser.add_argument("--out", default=os.path.join(create_digits.DEFAULT_OUT, "saliency.png"))
    args = parser.parse_args(argv)
    weights = ensure_weights(args.weights, log)
    param = protoio.read_net_param(os.path.join(DIGITS, "lenet_deploy.prototxt"))
    param.force_backward = True            # net surgery: gradients all the way to the input
    net = jcaffe.Net(param, jcaffe.TEST, weights=weights)
    test_lmdb = os.path.join(os.path.dirname(weights), "digits_test_lmdb")
    if not os.path.exists(test_lmdb):
        create_digits.create(os.path.dirname(weights), log=log)
    with open_db(test_lmdb) as db:
        key, value = list(db.items())[args.index]
    datum = parse_datum(value, test_lmdb, key)
    image = jcaffe.io.datum_to_array(datum).astype(np.float32) * 0.00390625
    sal, cls, score = saliency(net, image)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    to_png(image, sal, args.out)
    log("image %s (label %d): class %d, score %.3f; saliency map (image | |d score/d pixel|) "
        "saved to %s" % (key.decode(), datum.label, cls, score, args.out))
    return sal


if __name__ == "__main__":
    main()
