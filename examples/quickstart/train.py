"""Train a small conv net with jcaffe, the pycaffe way: net.forward(), net.backward(),
then an SGD-with-momentum update written against the param blobs.

    python examples/quickstart/train.py [--iters 400] [--out DIR]

The data are 16x16 images of a bar (horizontal, vertical, diagonal or
anti-diagonal) at a random place, with noise: generated here, nothing to
download. The test net shares the train net's weights (``share_with``); the
trained weights are saved as a .caffemodel that real Caffe can load.
"""
import argparse
import os
import sys
import time

import numpy as np

import jcaffe

HERE = os.path.dirname(os.path.abspath(__file__))


def make_bars(n, rng, size=16):
    """n noisy images of a 6-pixel bar in one of 4 orientations; labels 0..3."""
    images = rng.normal(0.0, 0.3, (n, 1, size, size)).astype(np.float32)
    labels = rng.integers(0, 4, n)
    steps = {0: (0, 1), 1: (1, 0), 2: (1, 1), 3: (1, -1)}
    for i, label in enumerate(labels):
        dy, dx = steps[int(label)]
        y0 = rng.integers(0, size - 6)
        x0 = rng.integers(6 if dx < 0 else 0, size - 6 if dx >= 0 else size)
        for k in range(6):
            images[i, 0, y0 + dy * k, x0 + dx * k] += 1.0
    return images, labels.astype(np.float32)


def evaluate(net, images, labels):
    batch = net.blobs["data"].shape[0]
    correct = []
    for i in range(0, len(images) - batch + 1, batch):
        out = net.forward(data=images[i:i + batch], label=labels[i:i + batch])
        correct.append(float(out["accuracy"]))
    return float(np.mean(correct))


def train(iters=400, lr=0.05, momentum=0.9, weight_decay=5e-4, seed=1, out_dir=None, log=print):
    jcaffe.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = os.path.join(HERE, "bars.prototxt")
    net = jcaffe.Net(model, jcaffe.TRAIN)
    test_net = jcaffe.Net(model, jcaffe.TEST)
    test_net.share_with(net)
    test_x, test_y = make_bars(512, np.random.default_rng(seed + 1000))
    batch = net.blobs["data"].shape[0]
    history = [np.zeros(b.shape, np.float32) for b in net.learnable_params]
    start = time.time()
    for it in range(1, iters + 1):
        x, y = make_bars(batch, rng)
        net.clear_param_diffs()
        loss = float(net.forward(data=x, label=y)["loss"])
        net.backward()
        for blob, h, lr_mult, decay_mult in zip(net.learnable_params, history, net.params_lr,
                                                net.params_weight_decay):
            grad = blob.diff + weight_decay * decay_mult * blob.data
            h[...] = momentum * h + lr * lr_mult * grad
            blob.data[...] -= h
        if it % 50 == 0 or it == 1:
            log("iteration %4d  loss %.4f  (%.1f s)" % (it, loss, time.time() - start))
    accuracy = evaluate(test_net, test_x, test_y)
    log("test accuracy %.3f on %d images" % (accuracy, len(test_x)))
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "bars.caffemodel")
        net.save(path)
        log("saved weights to %s" % path)
    return accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--out", default=os.path.join(HERE, "output"))
    args = parser.parse_args(argv)
    accuracy = train(args.iters, out_dir=args.out)
    return 0 if accuracy > 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
