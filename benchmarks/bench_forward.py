"""Forward only, deploy net in TEST phase: jcaffe Net.forward vs pure JAX vs PyTorch eager.

    python benchmarks/bench_forward.py --net lenet|caffenet|googlenet [--repeats N]

The deploy net is the zoo net without loss/accuracy layers and auxiliary heads; each
contender returns the classifier output on the host (numpy), as net.forward() does.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import nets  # noqa: E402


def jcaffe_forward(name, batch):
    def setup():
        import jcaffe
        param = nets.net_param(name, batch, deploy=True)
        net = jcaffe.Net(param, jcaffe.TEST)
        nets.load_reference_params(net, param)
        for top, value in nets.feeds(param).items():
            net.blobs[top].data[...] = value
        final = nets.NETS[name][3]

        def run():
            return net.forward()[final]
        return run
    return setup


def jax_forward(name, batch):
    def setup():
        import jax
        import jax.numpy as jnp
        import numpy as np
        param = nets.net_param(name, batch, deploy=True)
        f = nets.jax_deploy_forward(param, nets.NETS[name][3])
        params = jax.tree_util.tree_map(jnp.asarray, nets.init_params(param))
        stats = jax.tree_util.tree_map(jnp.asarray, nets.init_stats(param))
        inputs = {k: jnp.asarray(v) for k, v in nets.feeds(param).items()}

        def run():
            return np.asarray(f(params, stats, inputs))
        return run
    return setup


def torch_forward(name, batch):
    def setup():
        import torch
        param = nets.net_param(name, batch, deploy=True)
        f = nets.torch_forward_fn(param, train=False)
        dev = nets.TORCH_DEVICE
        params = {k: [torch.from_numpy(a).to(dev) for a in v]
                  for k, v in nets.torch_params(param).items()}
        stats = {k: [torch.from_numpy(a).to(dev) for a in v]
                 for k, v in nets.init_stats(param).items()}
        inputs = {k: torch.from_numpy(v).to(dev) for k, v in nets.feeds(param).items()}
        final = nets.NETS[name][3]

        def run():
            with torch.inference_mode():
                return f(params, inputs, stats)[1][final].cpu().numpy()
        return run
    return setup


def contenders(name, batch):
    out = {"jcaffe Net.forward": jcaffe_forward(name, batch),
           "pure JAX (jit)": jax_forward(name, batch)}
    if harness.has_torch():
        out["PyTorch eager"] = torch_forward(name, batch)
    return out


if __name__ == "__main__":
    harness.net_main("Forward (deploy, TEST), %s", contenders)
