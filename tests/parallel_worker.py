"""Subprocess side of tests/test_parallel.py (the pytest process sees one device; these
runs need XLA_FLAGS=--xla_force_host_platform_device_count=N or several processes).

    python parallel_worker.py local OUT.json           # scenarios on 4 forced host devices
    python parallel_worker.py dist OUT.npz             # one process of a multi-process run
                                                       # (JCAFFE_* environment variables)
"""
import json
import os
import sys
import tempfile

import numpy as np
from google.protobuf import text_format

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import jcaffe  # noqa: E402
from jcaffe import cli  # noqa: E402
from jcaffe.errors import DeviceError  # noqa: E402
from jcaffe.proto import caffe_pb2  # noqa: E402

# LeNet's layer sequence (conv, max pool, conv, max pool, ip, relu, ip, softmax loss) on
# 1x12x12 inputs, small enough for a quick CPU test.
LENET = """
name: "LeNetSmall"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: %(n)d dim: 1 dim: 12 dim: 12 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: %(n)d } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 6 kernel_size: 2 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" }
"""

SOLVER = ('base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.1 '
          'power: 0.75 random_seed: 7 max_iter: 100 display: 0 iter_size: %d')

# A Python data layer as a host data source, then InnerProduct + loss (n: its batch).
FED_NET = """
name: "%(name)s"
layer { name: "feed" type: "Python" top: "x" top: "y"
  python_param { module: "%(module)s" layer: "%(layer)s" param_str: "%%(n)d" } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
"""
# BatchFeeder (tests/solver_layers.py): every process reads the same batches.
FEEDER_NET = FED_NET % {"name": "fed", "module": "solver_layers", "layer": "BatchFeeder"}

TINY_NET = """
name: "tiny"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: %(n)d dim: 3 } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: %(n)d dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
"""
# Caffe's Data layer over an LMDB (written by lmdb_source below), then InnerProduct + loss.
LMDB_NET = """
name: "lmdb"
layer { name: "d" type: "Data" top: "x" top: "y"
  data_param { source: "%(source)s" batch_size: %(n)d backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" top: "loss" }
"""


def lmdb_source(path, n=40):
    """An LMDB of n Datum records (1x2x3 uint8, label i % 5), keys in Caffe's style."""
    from jcaffe import io as caffe_io
    from jcaffe.db import make_key, open_db
    rng = np.random.default_rng(3)
    with open_db(path, "w", "lmdb") as db:
        for i in range(n):
            datum = caffe_io.array_to_datum(rng.integers(0, 255, (1, 2, 3)).astype(np.uint8), i % 5)
            db.put(make_key(i, "r%d" % i), datum.SerializeToString())
    return path


TINY_X = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
TINY_Y = np.random.default_rng(2).normal(size=(8, 2)).astype(np.float32)

class ShardedFeeder(jcaffe.Layer):
    """Tops x, y: the next ``param_str`` samples of its shard on each forward; shard
    ``rank`` of ``count`` holds samples rank, rank + count, rank + 2 count, ..."""

    def setup(self, bottom, top):
        self.batch, self.rank, self.count, self.pos = int(self.param_str), 0, 1, 0

    def set_shard(self, rank, count):
        self.rank, self.count = rank, count

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, 3)
        top[1].reshape(self.batch, 2)

    def forward(self, bottom, top):
        idx = (self.rank + self.count * np.arange(self.pos, self.pos + self.batch)) % len(TINY_XS)
        top[0].data[...] = TINY_XS[idx]
        top[1].data[...] = TINY_YS[idx]
        self.pos += self.batch


SHARDED_NET = FED_NET % {"name": "sharded", "module": "parallel_worker",
                         "layer": "ShardedFeeder"}

# Streams of a recurrent net: chunk c of time holds STREAM_X[c] (T, 4 streams, 2), cont 1
# everywhere (every stream goes on from the last chunk, Caffe's h_T carried over).
STREAM_T, STREAM_N = 3, 4
STREAM_X = np.random.default_rng(5).normal(size=(8, STREAM_T, STREAM_N, 2)).astype(np.float32)
STREAM_Y = np.random.default_rng(6).normal(size=(8, STREAM_T, STREAM_N, 3)).astype(np.float32)


class StreamFeeder(jcaffe.Layer):
    """Tops x (T, n, 2), cont (T, n), y (T, n, 3). ``param_str`` "wide": each forward
    the next chunk, all 4 streams; "halves": call k the half k % 2 of chunk k // 2, as
    two devices taking consecutive batches each go on with their own 2 streams."""

    def setup(self, bottom, top):
        self.halves, self.pos = self.param_str == "halves", 0

    def reshape(self, bottom, top):
        n = STREAM_N // 2 if self.halves else STREAM_N
        for t, shape in zip(top, ((STREAM_T, n, 2), (STREAM_T, n), (STREAM_T, n, 3))):
            t.reshape(*shape)

    def forward(self, bottom, top):
        if self.halves:
            chunk, n = self.pos // 2, STREAM_N // 2
            streams = slice(self.pos % 2 * n, (self.pos % 2 + 1) * n)
        else:
            chunk, streams = self.pos, slice(None)
        top[0].data[...] = STREAM_X[chunk][:, streams]
        top[1].data[...] = 1
        top[2].data[...] = STREAM_Y[chunk][:, streams]
        self.pos += 1


STREAM_INPUT_NET = """
name: "streams_in"
layer { name: "in" type: "Input" top: "x" top: "c" input_param { shape { dim: 4 dim: 2 dim: 2 }
                                                                 shape { dim: 4 dim: 2 } } }
layer { name: "emb" type: "TanH" bottom: "c" top: "cont" }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param { num_output: 3 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "h" top: "loss" }
"""
# (the wide net's loss weight 0.5: the mean of the two halves' losses, as two devices
# average their gradients)
STREAM_NET = """
name: "streams"
layer { name: "feed" type: "Python" top: "x" top: "cont" top: "y"
  python_param { module: "parallel_worker" layer: "StreamFeeder" param_str: "%(mode)s" } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
                    bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "y" top: "loss"
  loss_weight: %(weight)s }
"""
TINY_XS = np.random.default_rng(3).normal(size=(64, 3)).astype(np.float32)
TINY_YS = np.random.default_rng(4).normal(size=(64, 2)).astype(np.float32)

MIDDLE_PYTHON_NET = """
name: "middle"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ident" type: "Python" bottom: "ip" top: "out"
  python_param { module: "pylayers" layer: "Identity" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "y" top: "loss" }
"""

BATCH = 2           # per device
ITERS = 4
RNG = np.random.default_rng(0)
IMAGES = RNG.normal(size=(ITERS * 2, 8, 1, 12, 12)).astype(np.float32)
LABELS = RNG.integers(0, 10, size=(ITERS * 2, 8)).astype(np.float32)


def solver_param(net_text, n, iter_size=1):
    param = caffe_pb2.SolverParameter()
    text_format.Parse(SOLVER % iter_size, param)
    text_format.Parse(net_text % {"n": n}, param.net_param)
    return param


def lenet_solver(n, devices=None, iter_size=1):
    return jcaffe.get_solver(solver_param(LENET, n, iter_size), devices=devices)


def feed(solver, it, rows=None):
    """Iteration ``it``'s batch (all 8 rows, or ``rows``) into the Input blobs."""
    rows = slice(None) if rows is None else rows
    solver.net.blobs["data"].data[...] = IMAGES[it][rows]
    solver.net.blobs["label"].data[...] = LABELS[it][rows]


def train(solver, start, stop, rows=None):
    losses = []
    for it in range(start, stop):
        feed(solver, it, rows)
        solver.step(1)
        losses.append(solver.smoothed_loss)
    return losses


def params_of(solver):
    return [b.data.copy() for b in solver.net._learnable]


def max_diff(a, b):
    return float(max(np.abs(x - y).max() for x, y in zip(a, b)))


def error_of(fn):
    try:
        fn()
    except DeviceError as e:
        return str(e)
    return None


def local(out_path):
    import jax
    result = {"devices": jax.device_count()}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        # 4 devices x batch 2 against 1 device x batch 8 (SGD momentum, decay, inv lr)
        one = lenet_solver(8)
        one_losses = train(one, 0, ITERS)
        four = lenet_solver(BATCH, devices=4)
        result["input_shape_4"] = list(four.net.blobs["data"].shape)
        result["root_shape_4"] = list(four.net.blobs["ip2"].shape)
        four_losses = train(four, 0, ITERS // 2)
        four.param.snapshot_prefix = os.path.join(tmp, "lenet")
        _, state = four.snapshot()          # at ITERS/2: restored on 2 devices below
        four_losses += train(four, ITERS // 2, ITERS)
        result["losses_1"], result["losses_4"] = one_losses, four_losses
        result["params_diff_4_vs_1"] = max_diff(params_of(one), params_of(four))
        replicas = four.parallel.replica_params()
        result["replicas"] = len(replicas)
        result["replicas_identical"] = all(
            np.array_equal(r[i], replicas[0][i]) for r in replicas for i in range(len(r)))
        # the snapshot restored on 2 devices, 4 rows each, continues the same trajectory
        two = lenet_solver(BATCH, devices="0,1")
        two.restore(state)
        two.net.blobs["data"].reshape(8, 1, 12, 12)
        two.net.blobs["label"].reshape(8)
        train(two, ITERS // 2, ITERS)
        result["restored_on_2_diff"] = max_diff(params_of(one), params_of(two))
        # iter_size 2 (gradients accumulated on each device, then averaged)
        tiny1 = jcaffe.get_solver(solver_param(TINY_NET, 8, iter_size=2))
        tiny4 = jcaffe.get_solver(solver_param(TINY_NET, BATCH, iter_size=2), devices=[0, 1, 2, 3])
        for s in (tiny1, tiny4):
            s.net.blobs["x"].data[...] = np.concatenate([TINY_X] * (s.net.blobs["x"].shape[0] // 8))
            s.net.blobs["y"].data[...] = np.concatenate([TINY_Y] * (s.net.blobs["y"].shape[0] // 8))
            s.step(2)
        result["iter_size_diff"] = max_diff(params_of(tiny1), params_of(tiny4))
        # a Python data source: called once per device per iteration
        fed1 = jcaffe.get_solver(solver_param(FEEDER_NET, 8))
        fed4 = jcaffe.get_solver(solver_param(FEEDER_NET, BATCH), devices=4)
        fed1.step(3)
        fed4.step(3)
        result["source_diff"] = max_diff(params_of(fed1), params_of(fed4))
        result["source_root_shape"] = list(fed4.net.blobs["x"].shape)
        # a recurrent net fed by a data source: each device carries its own streams' state
        wide = jcaffe.get_solver(solver_param(STREAM_NET % {"mode": "wide", "weight": 0.5}, 0))
        halves = jcaffe.get_solver(solver_param(STREAM_NET % {"mode": "halves", "weight": 1},
                                                0), devices=2)
        wide.step(3)
        halves.step(3)
        result["stream_diff"] = max_diff(params_of(wide), params_of(halves))
        wide_h, root_h = (s.net.layer_dict["lstm"].hidden_state for s in (wide, halves))
        result["stream_state_diff"] = max_diff([np.asarray(a)[:STREAM_N // 2] for a in wide_h],
                                               [np.asarray(a) for a in root_h])
        result["stream_state_nonzero"] = bool(np.any(np.asarray(root_h[0])))
        # the same net fed by Input blobs: split along time, which a warning says
        import logging
        warned = []
        handler = logging.Handler()
        handler.emit = lambda record: warned.append(record.getMessage())
        logging.getLogger("jcaffe").addHandler(handler)
        jcaffe.get_solver(solver_param(STREAM_INPUT_NET, 0), devices=2)
        logging.getLogger("jcaffe").removeHandler(handler)
        result["time_split_warning"] = [line for line in warned if "timesteps" in line]
        # Caffe's Data layer (LMDB): batch_size is per device, each device its own records
        source = lmdb_source(os.path.join(tmp, "lmdb"))
        db1 = jcaffe.get_solver(solver_param(LMDB_NET.replace("%(source)s", source), 8))
        db4 = jcaffe.get_solver(solver_param(LMDB_NET.replace("%(source)s", source), 2), devices=4)
        db1.step(4)
        db4.step(4)
        result["lmdb_diff"] = max_diff(params_of(db1), params_of(db4))
        result["lmdb_root_shape"] = list(db4.net.blobs["x"].shape)
        # errors
        bad = lenet_solver(3, devices=2)
        bad.net.blobs["data"].reshape(3, 1, 12, 12)
        result["error_not_divisible"] = error_of(lambda: bad.step(1))
        result["error_too_many"] = error_of(lambda: lenet_solver(BATCH, devices=7))
        result["error_bad_id"] = error_of(lambda: lenet_solver(BATCH, devices="0,7"))
        result["error_middle_python"] = error_of(lambda: jcaffe.get_solver(
            solver_param(MIDDLE_PYTHON_NET.replace("%", "%%"), 0), devices=2))
        # the command line
        with open("net.prototxt", "w") as f:
            f.write(TINY_NET % {"n": BATCH})
        with open("solver.prototxt", "w") as f:
            f.write('net: "net.prototxt"\n' + SOLVER.replace(" ", "\n") % 1 + "\n")
        cli_rc = {}
        for flags in (["-devices", "4"], ["-gpu", "0,7"], ["-devices", "9"]):
            rc = cli.main(["train", "-solver", "solver.prototxt", "-iterations", "2"] + flags)
            cli_rc[" ".join(flags)] = rc
        result["cli_rc"] = cli_rc
        os.chdir(HERE)
    with open(out_path, "w") as f:
        json.dump(result, f)


def dist(out_path):
    """One process of a multi-process run: this process's rows of each 8-row batch."""
    jcaffe.init_distributed()
    import jax
    rank, local_rows = jax.process_index(), 8 // jax.process_count()
    param = solver_param(LENET, BATCH)
    param.random_seed += rank       # different fillers here: process 0's params are broadcast
    solver = jcaffe.get_solver(param, devices="all")
    prefix = os.path.join(os.path.dirname(out_path), "dist")
    solver.param.snapshot_prefix = prefix
    rows = slice(rank * local_rows, (rank + 1) * local_rows)
    losses = train(solver, 0, ITERS, rows)
    written = solver.snapshot()
    replicas = solver.parallel.replica_params()
    sharded = jcaffe.get_solver(solver_param(SHARDED_NET, BATCH))   # all local devices
    sharded.step(3)
    feeder = sharded.net.layer_dict["feed"]
    np.savez(out_path, *params_of(solver), losses=np.asarray(losses),
             sharded=np.concatenate([b.data.ravel() for b in sharded.net._learnable]),
             shard=np.asarray([feeder.rank, feeder.count]),
             devices=np.asarray([jax.device_count(), jax.local_device_count()]),
             wrote_snapshot=np.asarray(written is not None),
             replicas_identical=np.asarray(all(np.array_equal(r[i], replicas[0][i])
                                               for r in replicas for i in range(len(r)))))


if __name__ == "__main__":
    {"local": local, "dist": dist}[sys.argv[1]](sys.argv[2])
