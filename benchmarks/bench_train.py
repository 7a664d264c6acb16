"""One SGD-momentum training step: jcaffe Solver.step vs pure JAX vs PyTorch eager (CPU).

    python benchmarks/bench_train.py --net lenet [--repeats 20]
    python benchmarks/bench_train.py --net caffenet --repeats 5
    python benchmarks/bench_train.py --net resnet50 --steps 10
    python benchmarks/bench_train.py --net caffenet --solver Adam

--solver Adam: Adam's step instead (nets.ADAM's rates; jcaffe's AdamSolver, the same
update written in pure JAX, torch.optim.Adam).

--steps N: N steps per timed call, waiting only for the last one (``Solver.step(N)``;
N dispatches of pure JAX's step; N eager PyTorch steps, then a sync), as a training
loop runs: on an accelerator the host prepares a step while the device runs the one
before, so its work per step is hidden where it is shorter than the device's. One
step per call (the default) waits for every step, as a display iteration does.

Same architecture (tests/data/zoo/<net>.prototxt, data from an Input layer fed once),
same batch, same update (lr 0.01, momentum 0.9, weight decay 5e-4, Caffe's order).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import nets  # noqa: E402


def jcaffe_step(name, batch, steps=1, solver_type="SGD"):
    def setup():
        import jax
        solver = nets.jcaffe_solver(name, batch, solver_type)

        def run():
            solver.step(steps)
            jax.block_until_ready(solver._losses[-1])
        return run
    return setup


def jax_step(name, batch, steps=1, solver_type="SGD"):
    def setup():
        import jax
        import jax.numpy as jnp
        param = nets.net_param(name, batch)
        step = nets.jax_train_step(param, solver_type)
        params = jax.tree_util.tree_map(jnp.asarray, nets.init_params(param))
        state = {"p": params, "m": nets.jax_history(params, solver_type), "i": 0,
                 "s": jax.tree_util.tree_map(jnp.asarray, nets.init_stats(param))}
        inputs = {k: jnp.asarray(v) for k, v in nets.feeds(param).items()}
        key = jax.random.PRNGKey(0)

        def run():
            for _ in range(steps):
                state["i"] += 1
                state["p"], state["m"], state["s"], loss = step(
                    state["p"], state["m"], state["s"], inputs,
                    jax.random.fold_in(key, state["i"]), jnp.int32(state["i"] - 1))
            loss.block_until_ready()
        return run
    return setup


def torch_step(name, batch, steps=1, solver_type="SGD"):
    def setup():
        import torch
        param = nets.net_param(name, batch)
        f = nets.torch_forward_fn(param, train=True)
        frozen = nets.frozen_layers(param)      # lr_mult 0: neither updated nor differentiated
        dev = nets.TORCH_DEVICE
        params = {k: [torch.tensor(a, requires_grad=k not in frozen, device=dev) for a in v]
                  for k, v in nets.torch_params(param).items()}
        # (one rate and weight decay for every param, as a PyTorch user's optimizer has
        # them: the biases' lr_mult 2 and decay_mult 0 would need groups; the same work)
        trained = [t for k, v in params.items() if k not in frozen for t in v]
        if solver_type == "Adam":   # (torch adds its eps to sqrt(v) / sqrt(1 - b2^t), Caffe
            a = nets.ADAM           # its delta to sqrt(v): the same work)
            opt = torch.optim.Adam(trained, lr=a["base_lr"], betas=(a["momentum"], a["momentum2"]),
                                   eps=a["delta"], weight_decay=nets.WEIGHT_DECAY)
        else:
            opt = torch.optim.SGD(trained, lr=nets.LR, momentum=nets.MOMENTUM,
                                  weight_decay=nets.WEIGHT_DECAY)
        inputs = {k: torch.from_numpy(v).to(dev) for k, v in nets.feeds(param).items()}
        stats = {k: [torch.from_numpy(a).to(dev) for a in v]
                 for k, v in nets.init_stats(param).items()}

        def run():
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss, _ = f(params, inputs, stats)
                loss.backward()
                opt.step()
            nets.torch_sync()
        return run
    return setup


def contenders(name, batch, steps=1, solver_type="SGD"):
    out = {"jcaffe Solver.step": jcaffe_step(name, batch, steps, solver_type),
           "pure JAX (jit value_and_grad)": jax_step(name, batch, steps, solver_type)}
    if harness.has_torch():
        out["PyTorch eager"] = torch_step(name, batch, steps, solver_type)
    return out


if __name__ == "__main__":
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 1
    solver = sys.argv[sys.argv.index("--solver") + 1] if "--solver" in sys.argv else "SGD"
    title = ("Training step, %s" if steps == 1 else
             "Training steps, %%s, %d per call (waiting for the last)" % steps)
    harness.net_main(title + ("" if solver == "SGD" else " (%s)" % solver),
                     lambda net, batch, opts: contenders(net, batch, opts.steps, opts.solver),
                     extra_args=[(("--steps",), {"type": int, "default": 1}),
                                 (("--solver",), {"default": "SGD", "choices": nets.SOLVERS})])
