"""The pycaffe loop vs the fused step: what host round trips cost.

    python benchmarks/bench_pyloop.py [--net lenet] [--repeats N]

* ``Solver.step``: forward, backward and update in one jitted call.
* ``forward()+backward()+apply_update()``: the same iteration driven from Python as a
  pycaffe script does (net.forward() returns the outputs on the host, net.backward(),
  then the solver's update) -- one compiled call per phase and a host sync for the loss.
* ``forward()+backward()``: the two net calls alone (no update).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import nets  # noqa: E402


def _solver(name, batch):
    import jcaffe
    from jcaffe.proto import caffe_pb2
    param = nets.net_param(name, batch)
    sp = caffe_pb2.SolverParameter(base_lr=nets.LR, momentum=nets.MOMENTUM,
                                   weight_decay=nets.WEIGHT_DECAY, lr_policy="fixed",
                                   max_iter=10 ** 9, display=0, random_seed=1, type="SGD")
    sp.net_param.CopyFrom(param)
    solver = jcaffe.get_solver(sp)
    data, label = nets.inputs(param)
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["label"].data[...] = label
    return solver


def step(name, batch):
    def setup():
        import jax
        solver = _solver(name, batch)

        def run():
            solver.step(1)
            jax.block_until_ready(solver._losses[-1])
        return run
    return setup


def loop(name, batch, update):
    def setup():
        solver = _solver(name, batch)
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


def contenders(opts):
    batch = opts.batch or nets.NETS[opts.net][1]
    return {"jcaffe Solver.step": step(opts.net, batch),
            "jcaffe forward()+backward()+apply_update()": loop(opts.net, batch, True),
            "jcaffe forward()+backward()": loop(opts.net, batch, False)}


if __name__ == "__main__":
    harness.main("pycaffe loop vs Solver.step", contenders, default_repeats=20,
                 extra_args=[(("--net",), {"default": "lenet", "choices": list(nets.NETS)}),
                             (("--batch",), {"type": int, "default": 0})])
