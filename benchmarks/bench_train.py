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
        state = {"p": params, "m": jax.tree_util.tree_map(jnp.zeros_like, params), "i": 0}
        data, label = (jnp.asarray(a) for a in nets.inputs(param))
        key = jax.random.PRNGKey(0)

        def run():
            state["i"] += 1
            state["p"], state["m"], loss = step(state["p"], state["m"], data, label,
                                                jax.random.fold_in(key, state["i"]))
            loss.block_until_ready()
        return run
    return setup


def torch_step(name, batch):
    def setup():
        import torch
        param = nets.net_param(name, batch)
        f = nets.torch_forward_fn(param, train=True)
        params = {k: [torch.tensor(a, requires_grad=True) for a in v]
                  for k, v in nets.init_params(param).items()}
        opt = torch.optim.SGD([t for v in params.values() for t in v], lr=nets.LR,
                              momentum=nets.MOMENTUM, weight_decay=nets.WEIGHT_DECAY)
        data, label = (torch.from_numpy(a) for a in nets.inputs(param))

        def run():
            opt.zero_grad(set_to_none=True)
            loss, _ = f(params, data, label)
            loss.backward()
            opt.step()
        return run
    return setup


def contenders(opts):
    batch = opts.batch or nets.NETS[opts.net][1]
    out = {"jcaffe Solver.step": jcaffe_step(opts.net, batch),
           "pure JAX (jit value_and_grad)": jax_step(opts.net, batch)}
    try:
        import importlib.util
        if importlib.util.find_spec("torch"):
            out["PyTorch eager"] = torch_step(opts.net, batch)
    except ImportError:
        pass
    return out


if __name__ == "__main__":
    net = sys.argv[sys.argv.index("--net") + 1] if "--net" in sys.argv else "lenet"
    harness.main("Training step, %s" % net, contenders,
                 default_repeats=20 if net == "lenet" else 5,
                 extra_args=[(("--net",), {"default": "lenet", "choices": list(nets.NETS)}),
                             (("--batch",), {"type": int, "default": 0})])
