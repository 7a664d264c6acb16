"""The README's main job: build the digits LMDBs, train LeNet with the SGD solver,
test it, save the .caffemodel, classify a few images with the deploy net.

    python examples/digits/train.py [--iters 2000] [--out examples/digits/output]

Uses the prototxts beside this file exactly as ``jcaffe train -solver
examples/digits/lenet_solver.prototxt`` would (the Data layers read the
LMDBs through a prefetch thread; each iteration is one compiled call), only
pointing the data sources and snapshots at ``--out``.
"""
import argparse
import logging
import os
import sys
import time

import numpy as np

import jcaffe
from jcaffe import protoio
from jcaffe.db import open_db, parse_datum
from jcaffe.proto import caffe_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import create_digits  # noqa: E402


def solver_param(out_dir, iters):
    """lenet_solver.prototxt with the net inlined and its paths pointed at ``out_dir``."""
    sp = protoio.read_solver_param(os.path.join(HERE, "lenet_solver.prototxt"))
    net = protoio.read_net_param(os.path.join(HERE, "lenet_train_test.prototxt"))
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = os.path.join(out_dir, os.path.basename(layer.data_param.source))
    sp.ClearField("net")
    sp.net_param.CopyFrom(net)
    sp.max_iter = iters
    sp.snapshot_prefix = os.path.join(out_dir, "digits_lenet")
    return sp


def test_accuracy(net, iters):
    acc = [float(net.forward()["accuracy"]) for _ in range(iters)]
    return float(np.mean(acc))


def classify(weights, test_lmdb, count=8, log=print):
    """Classify the first ``count`` test images with the deploy net; returns (pred, true)."""
    net = jcaffe.Net(os.path.join(HERE, "lenet_deploy.prototxt"), jcaffe.TEST, weights=weights)
    preds, trues = [], []
    with open_db(test_lmdb) as db:
        for n, (key, value) in enumerate(db.items()):
            if n >= count:
                break
            datum = parse_datum(value, test_lmdb, key)
            image = jcaffe.io.datum_to_array(datum).astype(np.float32) * 0.00390625
            prob = net.forward(data=image[None])["prob"][0]
            preds.append(int(prob.argmax()))
            trues.append(int(datum.label))
            log("  %s: predicted %d (p=%.3f), true label %d"
                % (key.decode(), preds[-1], prob.max(), datum.label))
    return preds, trues


def train(iters=2000, out_dir=create_digits.DEFAULT_OUT, log=print, verbose=True):
    start = time.time()
    paths = create_digits.create(out_dir, log=log)
    jcaffe.set_mode_cpu()
    if verbose:
        jcaffe.init_log(logging.WARNING, stream=sys.stdout)
    sp = solver_param(out_dir, iters)
    jcaffe.set_random_seed(sp.random_seed)
    solver = jcaffe.get_solver(sp)
    if verbose:   # the solver's own progress lines (Caffe's log) and, on a terminal, a bar
        logging.getLogger("jcaffe").setLevel(logging.INFO)
    log("training LeNet on %s for %d iterations (batch 64)" % (paths["train"], iters))
    solver.solve()
    if verbose:   # quiet again for the summary below
        logging.getLogger("jcaffe").setLevel(logging.WARNING)
    test_net = solver.test_nets[0]
    accuracy = test_accuracy(test_net, sp.test_iter[0])
    log("test accuracy: %.4f on %d images (%.1f s)"
        % (accuracy, sp.test_iter[0] * 60, time.time() - start))
    weights = os.path.join(out_dir, "digits_lenet.caffemodel")
    solver.net.save(weights)
    log("saved weights to %s" % weights)
    log("classifying a few test images with %s:" % os.path.join(HERE, "lenet_deploy.prototxt"))
    preds, trues = classify(weights, paths["test"], log=log)
    log("%d of %d right" % (sum(p == t for p, t in zip(preds, trues)), len(preds)))
    return accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--out", default=create_digits.DEFAULT_OUT)
    parser.add_argument("--min-accuracy", type=float, default=0.97)
    args = parser.parse_args(argv)
    accuracy = train(args.iters, args.out)
    if accuracy < args.min_accuracy:
        print("FAILED: test accuracy %.4f is below %.2f" % (accuracy, args.min_accuracy))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
