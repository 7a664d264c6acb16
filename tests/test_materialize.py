"""engine.materialize: a blob several layers read (a Split's bottom) is computed once and
stored, not recomputed inside each consumer's fusion by XLA, and its value is unchanged
to the bit."""
import re

import numpy as np
import pytest
from google.protobuf import text_format

import jax
import jax.numpy as jnp
import jcaffe
from jcaffe import engine
from jcaffe.proto import caffe_pb2


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.float16])
def test_materialize_is_the_identity_to_the_bit(dtype, x64):
    info = np.finfo(np.dtype(dtype))
    x = jnp.asarray(np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -3.5, info.tiny / 4,
                              -info.tiny, info.max], np.dtype(dtype)))     # (tiny / 4: denormal)

    def f(x, key):
        with engine.runtime_one(key):       # (read after an array whose first value is NaN)
            stored = engine.materialize_read_after(x, x * 2)
            return engine.materialize(x), stored.value, stored.read()
    for got in jax.jit(f)(x, jax.random.PRNGKey(7)):
        assert got.dtype == x.dtype
        if jax.default_backend() != "cpu":        # the CPU's rule only: x itself elsewhere
            np.testing.assert_array_equal(np.asarray(got).view(np.uint8),
                                          np.asarray(x).view(np.uint8))
            continue
        # XLA's CPU products flush denormals to zero (x * 1, x + 0 and max(x, 0) too), and
        # XLA may turn the division by one into a product by its reciprocal: a denormal
        # comes back as x or as x * 1; every other value to the bit
        same_as = jax.jit(lambda x, one: x * one)(x, jnp.ones((), x.dtype))
        normal = np.abs(np.asarray(x)) != info.tiny / 4
        np.testing.assert_array_equal(np.asarray(got)[normal].view(np.uint8),
                                      np.asarray(x)[normal].view(np.uint8))
        denormal = np.asarray(got)[~normal].view(np.uint8)
        assert any(np.array_equal(denormal, np.asarray(y)[~normal].view(np.uint8))
                   for y in (x, same_as)), denormal
    assert engine.materialize(x) is x                 # outside a compiled call: x itself
    assert engine.materialize_read_after(x, x) is x


def test_runtime_one_needs_an_input_and_leaves_integers_alone():
    def f(i, key):
        with engine.runtime_one(key):
            return engine.materialize(i), engine._ONE.get() is not None
    out, active = f(jnp.arange(3), jax.random.PRNGKey(0))
    assert active == (jax.default_backend() == "cpu") and out.dtype == jnp.arange(3).dtype
    with engine.runtime_one(()):                      # nothing to make it from
        assert engine._ONE.get() is None


def test_off_the_cpu_backend_materialize_leaves_its_blob(monkeypatch):
    """The division is the CPU backend's rule: on a GPU (an H200) GoogLeNet's deploy
    forward took 0.78x the time without it, so there runtime_one makes no 1."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    x = jnp.arange(3.0)
    with engine.runtime_one(x):
        assert engine._ONE.get() is None
        assert engine.materialize(x) is x


def _residual_chain(blocks):
    layers = ['layer { name: "data" type: "Input" top: "data" '
              'input_param { shape { dim: 2 dim: 8 dim: 6 dim: 6 } } }',
              'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }',
              'layer { name: "r0" type: "ReLU" bottom: "data" top: "r0" }']
    for k in range(1, blocks + 1):
        layers += [
            'layer { name: "c%d" type: "Convolution" bottom: "r%d" top: "c%d" convolution_param '
            '{ num_output: 8 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }'
            % (k, k - 1, k),
            'layer { name: "s%d" type: "Eltwise" bottom: "c%d" bottom: "r%d" top: "s%d" }'
            % (k, k, k - 1, k),
            'layer { name: "r%d" type: "ReLU" bottom: "s%d" top: "r%d" }' % (k, k, k)]
    layers += ['layer { name: "ip" type: "InnerProduct" bottom: "r%d" top: "ip" '
               'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }'
               % blocks,
               'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" '
               'top: "loss" }']
    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.1 lr_policy: "fixed" random_seed: 2 type: "SGD"', param)
    text_format.Parse("\n".join(layers), param.net_param)
    solver = jcaffe.get_solver(param)
    solver.net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((2, 8, 6, 6))
    return solver


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="engine.materialize is the CPU's rule")
def test_a_residual_chain_is_not_recomputed_in_each_block():
    """Each r_k = relu(conv(r_{k-1}) + r_{k-1}) feeds the next block twice (a Split). Without
    materialize XLA fused the ReLUs of all earlier blocks into each block's (ResNet-50:
    res3d_relu 216 ms for a 51 MB map); with it, no fusion holds more than one block's."""
    solver = _residual_chain(4)
    seen = []
    jitted = solver._jit_fused

    def spy(seg, stacked):
        fn = jitted(seg, stacked)

        def call(*args):
            seen.append(fn.lower(*args).compile().as_text())
            return fn(*args)
        call.trace = fn.trace
        return call
    solver._jit_fused = spy
    solver.step(1)
    fusions = re.split(r"\n(?=%fused|ENTRY)", seen[0])
    forward = [len(set(re.findall(r"(r\d)\.forward/max", f))) for f in fusions
               if f.startswith("%fused")]
    assert forward and max(forward) <= 1, max(forward)
    data = solver.net.blobs["r2"].data
    assert np.all(data >= 0) and np.any(data > 0)


def _zoo_net(name, batch):
    """The model zoo's prototxt ``name`` with its DummyData batch set to ``batch``."""
    import os
    from jcaffe import protoio
    net = protoio.read_prototxt(os.path.join(os.path.dirname(__file__), "data", "zoo",
                                             name + ".prototxt"))
    for layer in net.layer:
        if layer.type == "DummyData":
            for shape in layer.dummy_data_param.shape:
                shape.dim[0] = batch
    return net


def _solver_of(net):
    param = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", momentum=0.9)
    param.net_param.CopyFrom(net)
    return jcaffe.get_solver(param)


def _fusions(solver):
    """The fused computations of the solver's compiled step (which runs its first step)."""
    from netutil import compiled_step
    return [f for f in re.split(r"\n(?=%fused|ENTRY)", compiled_step(solver).as_text())
            if f.startswith("%fused")]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="engine.materialize is the CPU's rule")
def test_lrns_bottom_diff_is_computed_once_in_caffenets_step():
    """LRN's bottom diff (a window sum over the channels, powers) is stored once. In
    CaffeNet's step (its LRNs channels-last, between the pools and the grouped maps)
    XLA fused the whole expression into each of pool1's backward updates (one per
    kernel row) and into the diff returned: 29 ms for pool1's backward at batch 32,
    16 stored. (The model zoo's CaffeNet at batch 2: nets cut after conv2 or pool2 fused
    the expression into the pool's updates either way, so the check needs the whole
    net.)"""
    solver = _solver_of(_zoo_net("caffenet", 2))
    assert solver.net.layer_dict["conv2"]._groups_on_xla()
    fusions = _fusions(solver)
    final = [f.split(" ", 1)[0] for f in fusions if 'norm1.backward/sub"' in f]
    assert len(final) == 1, final                   # (its last op: dx = a - b)
    assert not [f for f in fusions if 'norm1.backward/sub"' in f and "pool1.backward/" in f]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="engine.materialize is the CPU's rule")
def test_a_dense_blocks_split_sums_are_computed_once():
    """DenseNet's dense block: each concat_k = Concat(concat_{k-1}, the layer's 3x3 output)
    feeds the next layer's BatchNorm and the next Concat (a Split), so each split's
    summed diff adds a slice of the next one's. Without the Split storing its sum XLA
    copied the chain of sums below it into every consumer's fusion (here, the zoo's
    DenseNet-121 cut after its third layer, batch 2 at 64x64: 9 and 14 fusions;
    DenseNet-121's concat_4_7 in the whole step: 39, the step 2.3x as long). Stored,
    each sum is in one fusion. (Smaller maps, or batch 1, were not fused so.)"""
    net = _zoo_net("densenet121", 2)
    names = [l.name for l in net.layer]
    kept = net.layer[:names.index("concat_2_3") + 1]
    del net.layer[:]
    net.layer.extend(kept)
    net.layer[0].dummy_data_param.shape[0].dim[2:] = [64, 64]
    text_format.Parse('layer { name: "gp" type: "Pooling" bottom: "concat_2_3" top: "gp" '
                      'pooling_param { pool: AVE global_pooling: true } } '
                      'layer { name: "ip" type: "InnerProduct" bottom: "gp" top: "ip" '
                      'inner_product_param { num_output: 10 weight_filler { type: "xavier" } } } '
                      'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" '
                      'top: "loss" }', net)
    solver = _solver_of(net)
    splits = [l.name for l in solver.net.layers if l.type == "Split" and "concat" in l.name]
    assert len(splits) == 2         # (concat_2_1's and concat_2_2's)
    fusions = _fusions(solver)
    for name in splits:
        holding = [f.split(" ", 1)[0] for f in fusions if name + '.backward/add"' in f]
        assert len(holding) == 1, (name, holding)
    diff = solver.net.params["conv2_1/x2"][0].diff      # (compiled_step ran the first step)
    assert np.all(np.isfinite(diff)) and np.any(diff != 0)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="engine.materialize is the CPU's rule")
@pytest.mark.parametrize("stored", [True, False])
def test_batchnorms_bottom_diff_is_computed_once(monkeypatch, stored):
    """Caffe's CIFAR-10 BatchNorm example: pool1's top diff is bn1's bottom diff (from
    the batch statistics: dE/dy less two of its reductions, over the standard deviation).
    BatchNorm stores it (BatchNorm.STORE_BOTTOM_DIFF); left to XLA, it was fused into
    each of pool1's backward fusions and recomputed per kernel offset (11.4 ms of a
    94 ms step at batch 100, against 5.2 ms behind a ReLU). Batch 4 fuses the same way."""
    from jcaffe.layers import normalization
    monkeypatch.setattr(normalization.BatchNorm, "STORE_BOTTOM_DIFF", stored)
    solver = _solver_of(_zoo_net("cifar10_full_sigmoid_bn", 4))
    fusions = _fusions(solver)
    assert [f for f in fusions if "pool1.backward/" in f]
    both = [f.split(" ", 1)[0] for f in fusions
            if "pool1.backward/" in f and "bn1.backward/" in f]
    assert (not both) if stored else len(both) >= 3, both
    diff = solver.net.params["conv1"][0].diff          # (compiled_step ran the first step)
    assert np.all(np.isfinite(diff)) and np.any(diff != 0)
