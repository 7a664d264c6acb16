"""The training step fed by a Data layer over LMDB, as `jcaffe train` runs it, vs the
same step fed once through an Input layer: what reading, transforming and handing over
each batch costs.

    python benchmarks/bench_data.py --net lenet [--repeats N]
    python benchmarks/bench_data.py --net caffenet --repeats 7 --warmup 1

The database is written to a temporary folder first (random pixels, Caffe's Datum
records under convert_imageset's keys, several batches so the reader wraps around):

* LeNet: 1x28x28 records, ``transform_param { scale: 0.00390625 }`` (Caffe's MNIST
  example);
* the ImageNet nets: 3x256x256 records, ``crop_size`` the net's input (random crops in
  TRAIN), ``mirror: true``, ``mean_value: [104, 117, 123]`` (Caffe's ImageNet example
  with mean values).

Contenders: ``Solver.step(1)`` with the Input layer (the bench_train.py contender), with
the Data layer (its prefetch thread at Caffe's default depth 4) and with a numpy Python
data layer (py_data_layer.py: the same records, transformed in its forward), each waiting for
the step's loss, as bench_train.py does: the host's work for the next batch cannot
overlap the step. Then ``Solver.step(10)`` of each (the times are per call, ten steps),
as ``jcaffe train`` and ``solver.solve()`` run: the host reads and hands over the next
batch while the previous step computes. Last, the Data layer's ``load_batch()`` alone
(reading and transforming one batch on the host).
"""
import atexit
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import nets  # noqa: E402

BATCHES_IN_DB = 5
CHAIN = 10         # steps per call in the rows timing Solver.step(CHAIN)
MEAN_VALUES = (104, 117, 123)


def record_shape(name):
    """(C, H, W) of the records and the net's transform_param fields."""
    c, h, w = nets.NETS[name][2]
    if h >= 200:        # an ImageNet net: Caffe's 256x256 records, cropped and mirrored
        return (c, 256, 256), {"crop_size": h, "mirror": True, "mean_value": MEAN_VALUES}
    return (c, h, w), {"scale": 0.00390625}


def write_db(name, batch):
    """A temporary LMDB of ``BATCHES_IN_DB`` batches of random records; its path."""
    import numpy as np
    from jcaffe.db import make_key, open_db
    from jcaffe.proto import caffe_pb2
    folder = tempfile.mkdtemp(prefix="jcaffe-bench-data-")
    atexit.register(shutil.rmtree, folder, True)
    path = os.path.join(folder, "train_lmdb")
    shape, _ = record_shape(name)
    rng = np.random.default_rng(0)
    with open_db(path, "w", "lmdb") as db:
        for i in range(BATCHES_IN_DB * batch):
            datum = caffe_pb2.Datum(channels=shape[0], height=shape[1], width=shape[2], label=i % 10,
                                    data=rng.integers(0, 256, shape, dtype=np.uint8).tobytes())
            db.put(make_key(i, "img%d.png" % i), datum.SerializeToString())
    return path


def _input_replaced(name, batch, layer_type):
    """(the benchmark net, its first layer): the Input layer cleared and made a
    ``layer_type`` layer named "data" with tops data and label, for the caller to fill."""
    from jcaffe.proto import caffe_pb2 as pb2
    param = pb2.NetParameter()
    param.ParseFromString(nets.net_param(name, batch).SerializeToString())
    layer = param.layer[0]
    layer.Clear()
    layer.name, layer.type = "data", layer_type
    layer.top.extend(["data", "label"])
    return param, layer


def data_net_param(name, batch, source, prefetch):
    """The benchmark net with its Input layer replaced by a Data layer over ``source``."""
    from jcaffe.proto import caffe_pb2 as pb2
    param, layer = _input_replaced(name, batch, "Data")
    layer.data_param.source = source
    layer.data_param.batch_size = batch
    layer.data_param.backend = pb2.DataParameter.LMDB
    layer.data_param.prefetch = prefetch
    for field, value in record_shape(name)[1].items():
        if field == "mean_value":
            layer.transform_param.mean_value.extend(value)
        else:
            setattr(layer.transform_param, field, value)
    return param


def python_net_param(name, batch):
    """The benchmark net with its Input layer replaced by py_data_layer's numpy Python
    data layer (the same records and transformation as the Data layer's)."""
    import json
    param, layer = _input_replaced(name, batch, "Python")
    shape, transform = record_shape(name)
    layer.python_param.module, layer.python_param.layer = "py_data_layer", "RandomBatches"
    layer.python_param.param_str = json.dumps({
        "batch": batch, "shape": list(shape), "batches": BATCHES_IN_DB,
        "crop": transform.get("crop_size", 0), "scale": transform.get("scale", 1.0),
        "mean": list(transform.get("mean_value", [0] * shape[0]))})
    return param


def data_solver(name, batch, prefetch, python=False):
    import jcaffe
    from jcaffe.proto import caffe_pb2 as pb2
    sp = pb2.SolverParameter(base_lr=nets.LR, momentum=nets.MOMENTUM, weight_decay=nets.WEIGHT_DECAY,
                             lr_policy="fixed", max_iter=10 ** 9, display=0, random_seed=1, type="SGD")
    sp.net_param.CopyFrom(python_net_param(name, batch) if python else
                          data_net_param(name, batch, write_db(name, batch), prefetch))
    solver = jcaffe.get_solver(sp)
    nets.load_reference_params(solver.net, nets.net_param(name, batch))
    return solver


def stepper(make, steps):
    def setup():
        import jax
        solver = make()

        def run():
            solver.step(steps)
            jax.block_until_ready(solver._losses[-1])
        return run
    return setup


def load_batch(name, batch):
    def setup():
        import jcaffe
        net = jcaffe.Net(data_net_param(name, batch, write_db(name, batch), 0), jcaffe.TRAIN)
        layer = net.layers[0]
        return layer.load_batch
    return setup


def contenders(name, batch):
    if len(nets.net_param(name, batch).layer[0].input_param.shape[1].dim) != 1:
        raise SystemExit("bench_data.py: %s's labels are not one per image (a Data layer's are)" % name)
    fed_once = lambda: nets.jcaffe_solver(name, batch)
    from_db = lambda: data_solver(name, batch, 4)
    from_python = lambda: data_solver(name, batch, 0, python=True)
    return {"jcaffe Solver.step(1) from Input (fed once)": stepper(fed_once, 1),
            "jcaffe Solver.step(1) from Data over LMDB": stepper(from_db, 1),
            "jcaffe Solver.step(1) from a Python data layer": stepper(from_python, 1),
            "jcaffe Solver.step(%d) from Input (fed once)" % CHAIN: stepper(fed_once, CHAIN),
            "jcaffe Solver.step(%d) from Data over LMDB" % CHAIN: stepper(from_db, CHAIN),
            "jcaffe Solver.step(%d) from a Python data layer" % CHAIN: stepper(from_python, CHAIN),
            "jcaffe Data.load_batch() alone": load_batch(name, batch)}


if __name__ == "__main__":
    harness.net_main("Training step fed by a Data layer over LMDB (%s)", contenders)
