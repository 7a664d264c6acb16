"""The sign task: a Python layer whose backward Caffe skips, until force_backward: true.

    python examples/python_layers/sign_task.py

Trains ``sign_task.prototxt`` (x -> Python SoftSign -> InnerProduct -> softmax loss)
twice with SGD: as written, then with ``force_backward: true``. Prints the
net's log lines about backward, ``net.backward_reason('softsign')``, how
often SoftSign.backward ran, and the gradient reaching the input ``x``.
Both runs learn (the learnable layer is above the Python layer), but only
the second calls SoftSign.backward and gives x a gradient.
"""
import logging
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import jcaffe  # noqa: E402
from jcaffe import protoio  # noqa: E402
import sign_layers  # noqa: E402


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def build(force_backward):
    param = protoio.read_net_param(os.path.join(HERE, "sign_task.prototxt"))
    param.force_backward = force_backward
    logger = logging.getLogger("jcaffe")
    handler, old = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        net = jcaffe.Net(param, jcaffe.TRAIN)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    return net, [l for l in handler.lines if "backward computation" in l]


def run(force_backward, iters=300, lr=0.5, log=print, seed=0):
    jcaffe.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    sign_layers.SoftSign.backward_calls = 0
    net, lines = build(force_backward)
    log("--- force_backward: %s ---" % ("true" if force_backward else "false"))
    for line in lines:
        log("  log: " + line)
    log("  net.backward_reason('softsign'): " + net.backward_reason("softsign"))
    for it in range(iters):
        x = rng.uniform(-1, 1, (32, 1)).astype(np.float32)
        out = net.forward(x=x, label=(x[:, 0] > 0).astype(np.float32))
        net.clear_param_diffs()
        net.backward()
        for blob in net.learnable_params:
            blob.data[...] -= lr * blob.diff
    x = rng.uniform(-1, 1, (32, 1)).astype(np.float32)
    out = net.forward(x=x, label=(x[:, 0] > 0).astype(np.float32))
    net.backward()
    grad = float(np.abs(net.blobs["x"].diff).sum())
    accuracy = float(np.mean(net.blobs["score"].data.argmax(1) == (x[:, 0] > 0)))
    result = {"accuracy": accuracy, "backward_calls": sign_layers.SoftSign.backward_calls,
              "input_grad": grad, "lines": lines}
    log("  accuracy %.3f, SoftSign.backward called %d times, sum |d loss / d x| = %.4g"
        % (result["accuracy"], result["backward_calls"], grad))
    return result


def main():
    skipped = run(False)
    forced = run(True)
    ok = skipped["backward_calls"] == 0 and forced["backward_calls"] > 0 and forced["input_grad"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
