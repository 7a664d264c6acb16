"""A solver's history with its small params' arrays packed into one (jcaffe.packed_history):
the same training as with one array per param, fewer arrays per fused step, param diffs
that are views of the packed array until read."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import text_format

import jcaffe
from jcaffe.blob import View
from jcaffe.packed_history import HistoryLayout
from jcaffe.proto import caffe_pb2
from jcaffe.solver import Solver
from netutil import compiled_step

# ip1 weight 4x3 (48 bytes), its bias 4 (16 bytes); ip2 weight 2x4 (32), bias 2 (8):
# with history_pack_max_bytes 32 three are packed and ip1's weight is loose.
NET = """
name: "two"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "ip1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 4
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "tanh" type: "TanH" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 1 decay_mult: 1 }
  inner_product_param { num_output: 2
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: -0.2 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "y" top: "loss" }
"""

SOLVERS = {
    "SGD": 'type: "SGD" momentum: 0.9',
    "Nesterov": 'type: "Nesterov" momentum: 0.9',
    "AdaGrad": 'type: "AdaGrad"',
    "RMSProp": 'type: "RMSProp" rms_decay: 0.95',
    "AdaDelta": 'type: "AdaDelta" momentum: 0.95 delta: 1e-6',
    "Adam": 'type: "Adam" momentum: 0.9 momentum2: 0.999',
}


def make_solver(kind, max_bytes, fuse=True, extra=""):
    param = caffe_pb2.SolverParameter()
    text_format.Parse('%s base_lr: 0.05 weight_decay: 0.01 lr_policy: "fixed" random_seed: 3 %s'
                      % (SOLVERS[kind], extra), param)
    text_format.Parse(NET, param.net_param)
    old = Solver.history_pack_max_bytes
    Solver.history_pack_max_bytes = max_bytes
    try:
        solver = jcaffe.get_solver(param)
    finally:
        Solver.history_pack_max_bytes = old
    solver.fuse_step = fuse
    rng = np.random.default_rng(7)
    solver.net.blobs["x"].data[...] = rng.normal(size=(4, 3))
    solver.net.blobs["y"].data[...] = rng.normal(size=(4, 2))
    return solver


def test_the_layout_packs_small_params_of_one_dtype_and_round_trips(x64):
    layout = HistoryLayout([(4, 3), (4,), (2, 4), (2,), (3,)],
                           [np.float32] * 4 + [np.float64], 2, 32)
    assert layout.packed_ids == [1, 2, 3]       # (4, 3) is 48 bytes; (3,) another dtype
    assert layout.loose_ids == [0, 4]
    assert layout.total == 2 * (4 + 8 + 2)
    rng = np.random.default_rng(0)
    history = tuple(tuple(jnp.asarray(rng.normal(size=s), d) for s, d in
                          zip([(4, 3), (4,), (2, 4), (2,), (3,)], [np.float32] * 4 + [np.float64]))
                    for _ in range(2))
    state = layout.packed_state(history)
    assert state[0].shape == (layout.total,)
    assert [len(slot) for slot in state[1]] == [2, 2]
    assert state[1][0][0] is history[0][0]      # loose arrays are not copied
    for got, want in zip(jax.tree_util.tree_leaves(layout.history_of(state)),
                         jax.tree_util.tree_leaves(history)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    traced = jax.jit(lambda s: layout.pack(layout.unpack(s)))(state)
    np.testing.assert_array_equal(traced[0], state[0])


def test_one_small_param_or_no_limit_packs_nothing():
    assert HistoryLayout([(4, 3), (2,)], [np.float32] * 2, 1, 8).packed_ids == []
    assert HistoryLayout([(2,), (2,)], [np.float32] * 2, 1, None).packed_ids == []
    assert HistoryLayout([], [], 1, 32).zeros() == (None, ((),))


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "pycaffe"])
@pytest.mark.parametrize("kind", sorted(SOLVERS))
def test_packed_and_separate_histories_train_the_same(kind, fuse):
    packed, separate = make_solver(kind, 32, fuse), make_solver(kind, None, fuse)
    assert packed._layout.packed_ids == [1, 2, 3] and separate._layout.packed_ids == []
    packed.step(3)
    separate.step(3)
    for a, b in zip(packed.net.learnable_params, separate.net.learnable_params):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a.diff, b.diff, rtol=1e-6, atol=1e-7)
    assert len(packed.history) == len(separate.history) == 4 * packed._rule.num_history
    for a, b in zip(packed.history, separate.history):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert np.any(packed.history[1] != 0)       # a packed param's history moved


def test_the_fused_step_passes_the_small_params_history_as_one_array():
    solver = make_solver("Adam", 32)
    solver.step(1)
    packed, loose = solver._hist_state
    assert packed.shape == (2 * (4 + 8 + 2),)
    assert [[a.shape for a in slot] for slot in loose] == [[(4, 3)], [(4, 3)]]
    fn = solver._fused[1]
    seen = []
    solver._fused = (solver._fused[0], lambda *a: seen.append(a) or fn(*a)) + solver._fused[2:]
    solver.step(1)
    assert len(jax.tree_util.tree_leaves(seen[0][1])) == 3     # 8 history arrays as 3


def test_a_packed_sgd_diff_is_a_view_of_the_new_momentum_until_read():
    """Caffe's SGD leaves the momentum in the diff: a packed param's diff is sliced out of
    the packed history when read, and never given away as a buffer to recycle."""
    solver = make_solver("SGD", 32)
    solver.step(2)
    bias = solver.net.params["ip2"][1]
    assert isinstance(bias._diff._reorder, View)
    assert bias.take_device_diff() is None and isinstance(bias._diff._reorder, View)
    np.testing.assert_array_equal(bias.diff, solver.history[3])
    assert bias._diff._reorder is None
    weight = solver.net.params["ip1"][0]        # loose: the momentum's own array
    assert weight._diff._reorder is None
    assert weight.device_diff() is solver._hist_state[1][0][0]
    before = solver.history[3].copy()
    solver.step(1)                              # the next step's momentum, not the last's
    assert not np.array_equal(bias.diff, before)
    np.testing.assert_array_equal(bias.diff, solver.history[3])


def test_apply_update_after_a_packed_fused_step_reads_the_views():
    fused = make_solver("SGD", 32)
    fused.step(1)
    fused.apply_update()                        # grads = the fused step's diffs (views)
    other = make_solver("SGD", None)
    other.step(1)
    other.apply_update()
    for a, b in zip(fused.net.learnable_params, other.net.learnable_params):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-7)
    for a, b in zip(fused.history, other.history):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("into", [None, 32], ids=["into_separate", "into_packed"])
def test_a_packed_history_snapshot_restores_and_training_goes_on(tmp_path, into):
    packed = make_solver("Adam", 32, extra='snapshot_prefix: "%s/s"' % tmp_path)
    packed.step(2)
    _, state = packed.snapshot()
    restored = make_solver("Adam", into)
    restored.restore(state)
    for a, b in zip(packed.history, restored.history):
        np.testing.assert_array_equal(a, b)
    packed.step(2)
    restored.step(2)
    for a, b in zip(packed.net.learnable_params, restored.net.learnable_params):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-7)
    for a, b in zip(packed.history, restored.history):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_packed_fused_step_updates_donated_weights_without_copying_them():
    """The packed history is concatenated after the updates; computed again there from
    the weight (its decay), it would make XLA copy every packed weight before the step,
    which the update overwrites in place. The regularized gradient is kept instead
    (update_rules.make_update's ``packed``)."""
    hlo = compiled_step(make_solver("SGD", 32)).as_text()
    # (a bias may be copied, packed or not: 8 bytes here; ip2's weight is packed)
    weights = [line.strip() for line in hlo.splitlines()
               if " copy(%params" in line and "f32[2,4]" in line]
    assert weights == []
    assert "f32[2,4]" in hlo and " copy(%history" in hlo    # (a copy is seen: the packed array's)


def test_packing_is_off_unless_asked_for():
    assert Solver.history_pack_max_bytes is None
    param = caffe_pb2.SolverParameter()
    text_format.Parse('type: "SGD" base_lr: 0.1 lr_policy: "fixed"', param)
    text_format.Parse(NET, param.net_param)
    solver = jcaffe.get_solver(param)
    assert solver._layout.packed_ids == [] and solver._hist_state[0] is None
    solver.step(1)
    assert len(jax.tree_util.tree_leaves(solver._hist_state)) == 4


def test_a_pycaffe_backward_after_a_packed_fused_step_accumulates_onto_the_views():
    """Caffe's backward adds the param gradients to the diffs (hence ClearParamDiffs):
    after a fused step those diffs are views of the packed momentum."""
    packed, separate = make_solver("SGD", 32), make_solver("SGD", None)
    for solver in (packed, separate):
        solver.step(1)
        solver.net.forward()
        solver.net.backward()
    for a, b in zip(packed.net.learnable_params, separate.net.learnable_params):
        np.testing.assert_allclose(a.diff, b.diff, rtol=1e-6, atol=1e-7)
    assert np.any(packed.net.params["ip2"][1].diff != 0)
