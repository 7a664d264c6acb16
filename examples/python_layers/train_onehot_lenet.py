"""The digits LeNet with Python layers: OneHot labels and a numpy EuclideanLoss.

    python examples/python_layers/train_onehot_lenet.py [--iters 600] [--jax]

Same data (the digits LMDBs of examples/digits, built if missing) and the
same LeNet as examples/digits, but the loss is the classic pycaffe
EuclideanLossLayer between ``ip2`` and one-hot label rows made by the
OneHot Python layer. The Python layers run on the host between compiled
segments; with --jax the same layers written in JAX (jax_layers.py, named by
the same Python layers) are compiled with the net, and each iteration is one
XLA call. The solver is Caffe's SGD. Reports the test accuracy.
"""
import argparse
import logging
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = os.path.join(HERE, "..", "digits")
sys.path.insert(0, HERE)
sys.path.insert(0, DIGITS)

import jcaffe  # noqa: E402
from jcaffe import protoio  # noqa: E402
import create_digits  # noqa: E402


# --jax: the same layers written in JAX (jax_layers.py), named by the same Python layers
JAX_LAYERS = {("one_hot", "OneHot"): ("jax_layers", "OneHot"),
              ("euclidean_loss", "EuclideanLossLayer"): ("jax_layers", "EuclideanLoss")}


def train(iters=600, out_dir=create_digits.DEFAULT_OUT, log=print, verbose=True, jax_layers=False):
    paths = {n: os.path.join(out_dir, "digits_%s_lmdb" % n) for n in ("train", "test")}
    if not all(os.path.exists(p) for p in paths.values()):
        paths = create_digits.create(out_dir, log=log)
    net = protoio.read_net_param(os.path.join(HERE, "lenet_onehot_euclidean.prototxt"))
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = paths["train" if "train" in layer.data_param.source else "test"]
        pp = layer.python_param
        if jax_layers and (pp.module, pp.layer) in JAX_LAYERS:
            pp.module, pp.layer = JAX_LAYERS[(pp.module, pp.layer)]
    sp = jcaffe.caffe_pb2.SolverParameter()
    sp.net_param.CopyFrom(net)
    sp.test_iter.append(6)
    sp.test_interval, sp.test_initialization = iters + 1, False   # tested once, below
    sp.base_lr, sp.momentum, sp.weight_decay = 0.02, 0.9, 0.0005
    sp.lr_policy, sp.gamma, sp.power = "inv", 0.0001, 0.75
    sp.display, sp.max_iter, sp.snapshot_after_train = 100, iters, False
    sp.random_seed = 1
    jcaffe.set_random_seed(sp.random_seed)
    if verbose:
        jcaffe.init_log(logging.WARNING, stream=sys.stdout)
    solver = jcaffe.SGDSolver(sp)
    if verbose:
        logging.getLogger("jcaffe").setLevel(logging.INFO)
    solver.solve()
    if verbose:   # quiet again for the summary below
        logging.getLogger("jcaffe").setLevel(logging.WARNING)
    test_net = solver.test_nets[0]
    accuracy = float(np.mean([float(test_net.forward()["accuracy"]) for _ in range(6)]))
    log("one-hot + Python EuclideanLoss LeNet (%s layers): test accuracy %.4f on 360 images"
        % ("JAX" if jax_layers else "numpy", accuracy))
    return accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--out", default=create_digits.DEFAULT_OUT)
    parser.add_argument("--jax", action="store_true",
                        help="the OneHot and EuclideanLoss layers written in JAX (jax_layers.py): "
                             "compiled with the net, one XLA call per iteration")
    args = parser.parse_args(argv)
    return 0 if train(args.iters, args.out, jax_layers=args.jax) > 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
