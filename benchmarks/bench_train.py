"""One SGD-momentum training step: jcaffe Solver.step vs pure JAX vs PyTorch eager (CPU).

    python benchmarks/bench_train.py --net lenet [--repeats 20]
    python benchmarks/bench_train.py --net caffenet --repeats 5

Same architecture (tests/data/zoo/<net>.prototxt, data from an Input layer fed once),
same batch, same update (lr 0.01, momentum 0.9, weight decay 5e-4, Caffe's order).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import nets  # noqa: E402


def jcaffe_step(name, batch):
    def setup():
        import jax
        solver = nets.jcaffe_solver(name, batch)

        def run():
            solver.step(1)
            jax.block_until_ready(solver._losses[-1])
        return run
    return setup


def jax_step(name, batch):
    def setup():
        import jax
        import jax.numpy as jnp
        param = nets.net_param(name, batch)
        step = nets.jax_train_step(param)
        params = jax.tree_util.tree_map(jnp.asarray, nets.init_params(param))
        state = {"p": params, "m": jax.tree_util.tree_map(jnp.zeros_like, params), "i": 0,
                 "s": jax.tree_util.tree_map(jnp.asarray, nets.init_stats(param))}
        data, label = (jnp.asarray(a) for a in nets.inputs(param))
        key = jax.random.PRNGKey(0)

        def run():
            state["i"] += 1
            state["p"], state["m"], state["s"], loss = step(
                state["p"], state["m"], state["s"], data, label,
                jax.random.fold_in(key, state["i"]))
            loss.block_until_ready()
        return run
    return setup


def torch_step(name, batch):
    def setup():
        import torch
        param = nets.net_param(name, batch)
        f = nets.torch_forward_fn(param, train=True)
        frozen = nets.frozen_layers(param)      # lr_mult 0: neither updated nor differentiated
        dev = nets.TORCH_DEVICE
        params = {k: [torch.tensor(a, requires_grad=k not in frozen, device=dev) for a in v]
                  for k, v in nets.init_params(param).items()}
        opt = torch.optim.SGD([t for k, v in params.items() if k not in frozen for t in v],
                              lr=nets.LR, momentum=nets.MOMENTUM, weight_decay=nets.WEIGHT_DECAY)
        data, label = (torch.from_numpy(a).to(dev) for a in nets.inputs(param))
        stats = {k: [torch.from_numpy(a).to(dev) for a in v]
                 for k, v in nets.init_stats(param).items()}

        def run():
            opt.zero_grad(set_to_none=True)
            loss, _ = f(params, data, label, stats)
            loss.backward()
            opt.step()
            nets.torch_sync()
        return run
    return setup


def contenders(name, batch):
    out = {"jcaffe Solver.step": jcaffe_step(name, batch),
           "pure JAX (jit value_and_grad)": jax_step(name, batch)}
    if harness.has_torch():
        out["PyTorch eager"] = torch_step(name, batch)
    return out


if __name__ == "__main__":
    harness.net_main("Training step, %s", contenders)
