"""The pycaffe loop vs the fused step: what host round trips cost.

    python benchmarks/bench_pyloop.py [--net lenet] [--repeats N]

* ``Solver.step``: forward, backward and update in one jitted call.
* ``forward()+backward()+apply_update()``: the same iteration driven from Python as a
  pycaffe script does (net.forward() returns the outputs on the host, net.backward(),
  then the solver's update) -- one compiled call per phase and a host sync for the loss.
* ``forward()+backward()``: the two net calls alone (no update).
* ``Solver.step`` with the loss as Python layers (the net's SoftmaxWithLoss replaced
  by examples/python_layers' OneHot + EuclideanLoss): written with numpy (run on the
  host between compiled segments, layer by layer) and written in JAX (jax_layers.py,
  named by the same ``type: "Python"`` layers: one fused call).
* ``Solver.step`` with a numpy accuracy Python layer at the end of the net
  (py_metric_layer.py): it runs on the host after the one compiled call.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(HERE, os.pardir, "examples", "python_layers"))
import harness  # noqa: E402
import nets  # noqa: E402

# (OneHot, EuclideanLoss) of each kind: python_param module and layer
PYTHON_LOSS = {"numpy": (("one_hot", "OneHot"), ("euclidean_loss", "EuclideanLossLayer")),
               "JAX": (("jax_layers", "OneHot"), ("jax_layers", "EuclideanLoss"))}


def step(name, batch):
    def setup():
        import jax
        solver = nets.jcaffe_solver(name, batch)

        def run():
            solver.step(1)
            jax.block_until_ready(solver._losses[-1])
        return run
    return setup


def loop(name, batch, update):
    def setup():
        solver = nets.jcaffe_solver(name, batch)
        net = solver.net

        def run():
            net.forward()
            net.backward()
            if update:
                solver.apply_update()
            for b in net.learnable_params:      # wait for the last call's results
                (b.device_data() if update else b.device_diff()).block_until_ready()
        return run
    return setup


def python_loss_solver(name, batch, kind):
    """nets.jcaffe_solver's solver with the loss as two Python layers of ``kind``
    (PYTHON_LOSS): one-hot labels, then a Euclidean loss against them."""
    param = nets.net_param(name, batch)
    loss = param.layer[-1]
    if loss.type != "SoftmaxWithLoss" or len(param.layer[-1].bottom) != 2:
        raise SystemExit("bench_pyloop.py: %s does not end in one SoftmaxWithLoss" % name)
    scores, label = loss.bottom
    classes = next(lp.inner_product_param.num_output for lp in reversed(param.layer)
                   if scores in lp.top and lp.type == "InnerProduct")
    del param.layer[-1]
    (hot_module, hot), (loss_module, loss_class) = PYTHON_LOSS[kind]
    onehot = param.layer.add(name="onehot", type="Python", bottom=[label], top=["onehot"])
    onehot.python_param.module, onehot.python_param.layer = hot_module, hot
    onehot.python_param.param_str = str(classes)
    euclid = param.layer.add(name="loss", type="Python", bottom=[scores, "onehot"], top=["loss"],
                             loss_weight=[1.0])
    euclid.python_param.module, euclid.python_param.layer = loss_module, loss_class
    return _sgd_solver(param, name, batch)


def _sgd_solver(param, name, batch):
    """nets.jcaffe_solver's SGD settings over ``param`` (the zoo net ``name`` with Python
    layers added or swapped in), the reference params of its learned layers, the
    reference inputs fed once."""
    import jcaffe
    from jcaffe.proto import caffe_pb2 as pb2
    sp = pb2.SolverParameter(base_lr=nets.LR, momentum=nets.MOMENTUM, weight_decay=nets.WEIGHT_DECAY,
                             lr_policy="fixed", max_iter=10 ** 9, display=0, random_seed=1,
                             type="SGD")
    sp.net_param.CopyFrom(param)
    solver = jcaffe.get_solver(sp)
    original = nets.net_param(name, batch)      # (the same learned layers)
    nets.load_reference_params(solver.net, original)
    for top, value in nets.feeds(original).items():
        solver.net.blobs[top].data[...] = value
    return solver


def python_metric_solver(name, batch):
    """nets.jcaffe_solver's solver with a numpy accuracy Python layer at the end of the
    net (py_metric_layer.Accuracy on the loss's scores and labels)."""
    param = nets.net_param(name, batch)
    scores, label = param.layer[-1].bottom
    acc = param.layer.add(name="accuracy", type="Python", bottom=[scores, label], top=["accuracy"])
    acc.python_param.module, acc.python_param.layer = "py_metric_layer", "Accuracy"
    return _sgd_solver(param, name, batch)


def python_metric_step(name, batch):
    def setup():
        import jax
        solver = python_metric_solver(name, batch)

        def run():
            solver.step(1)
            jax.block_until_ready([b.device_data() for b in solver.net.learnable_params])
        return run
    return setup


def python_loss_step(name, batch, kind):
    def setup():
        import jax
        solver = python_loss_solver(name, batch, kind)

        def run():
            solver.step(1)
            # (the layer-by-layer path returns before its update is computed)
            jax.block_until_ready([b.device_data() for b in solver.net.learnable_params])
        return run
    return setup


def contenders(name, batch):
    return {"jcaffe Solver.step": step(name, batch),
            "jcaffe forward()+backward()+apply_update()": loop(name, batch, True),
            "jcaffe forward()+backward()": loop(name, batch, False),
            "jcaffe Solver.step, loss as numpy Python layers": python_loss_step(name, batch, "numpy"),
            "jcaffe Solver.step, loss as Python layers in JAX": python_loss_step(name, batch, "JAX"),
            "jcaffe Solver.step, numpy Python accuracy at the end":
                python_metric_step(name, batch)}


if __name__ == "__main__":
    harness.net_main("pycaffe loop vs Solver.step (%s)", contenders, default_repeats=20)
