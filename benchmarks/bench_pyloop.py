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


def contenders(name, batch):
    return {"jcaffe Solver.step": step(name, batch),
            "jcaffe forward()+backward()+apply_update()": loop(name, batch, True),
            "jcaffe forward()+backward()": loop(name, batch, False)}


if __name__ == "__main__":
    harness.net_main("pycaffe loop vs Solver.step (%s)", contenders, default_repeats=20)
