"""gradcheck's API: known-good layers pass, broken backwards are caught and named,
kinks are excluded and counted, Python layers' contracts, nets, the CLI."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradcheck
import jcaffe
from gradcheck.cli import main as cli_main
from jcaffe.errors import BackwardError, LayerSetupError, UnknownLayerTypeError
from jcaffe.layer import layer_class, layer_type_list

EXAMPLES = "examples/python_layers/"
IP = ('type: "InnerProduct" inner_product_param { num_output: 3 '
      'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')


def mutant(type_name, fix):
    """A subclass of a built-in layer whose backward results pass through ``fix``."""
    base = layer_class(type_name)

    class Mutant(base):
        def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
            bd, pd = base.backward(self, params, bottoms, tops, saved, top_diffs, propagate_down)
            return fix(list(bd), list(pd), bottoms)
    return Mutant


def flip_bottom(bd, pd, bottoms):
    return [-d if d is not None else None for d in bd], pd


@pytest.mark.parametrize("snippet, shapes", [
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', [(2, 3, 4)]),
    ('type: "TanH"', [(3, 4)]),
    (IP, [(2, 5)]),
    ('type: "EuclideanLoss"', [(3, 4), (3, 4)]),
    ('type: "SoftmaxWithLoss"', [(3, 5), (3,)]),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', [(4, 5)]),
])
def test_known_good_layers_pass(snippet, shapes):
    report = gradcheck.check_layer(snippet, shapes).assert_ok()
    assert report.checks and all(c.checked > 0 for c in report.checks)
    assert "max rel" in str(report)


def test_float64_does_not_leak():
    gradcheck.check_layer('type: "TanH"', [(2, 2)])
    assert jnp.zeros(1).dtype == jnp.float32


MUTATIONS = [   # (family, type, snippet, shapes, backward mutation)
    ("neuron", "TanH", 'type: "TanH"', [(3, 4)], flip_bottom),
    ("neuron", "Sigmoid", 'type: "Sigmoid"', [(3, 4)],
     lambda bd, pd, b: ([bd[0] * 1.01], pd)),       # 1% off: still caught
    ("neuron", "ReLU", 'type: "ReLU" relu_param { negative_slope: 0.2 }', [(3, 4)],
     lambda bd, pd, b: ([jnp.where(b[0] > 0, bd[0], bd[0] * 0.5)], pd)),
    ("common", "InnerProduct", IP, [(2, 3)],   # transposed weight grad (3x3 W: same shape)
     lambda bd, pd, b: (bd, [pd[0].T, pd[1]])),
    ("common", "InnerProduct", IP, [(4, 3)],   # bias summed over the wrong axis
     lambda bd, pd, b: (bd, [pd[0], jnp.full(3, 1.0) * jnp.sum(pd[1])])),
    ("common", "Softmax", 'type: "Softmax"', [(2, 3, 4)],   # wrong axis
     lambda bd, pd, b: ([bd[0] - jnp.mean(bd[0], axis=2, keepdims=True)], pd)),
    ("loss", "EuclideanLoss", 'type: "EuclideanLoss"', [(3, 4), (3, 4)],   # missing 1/N
     lambda bd, pd, b: ([d * b[0].shape[0] for d in bd], pd)),
    ("loss", "SoftmaxWithLoss", 'type: "SoftmaxWithLoss"', [(3, 5), (3,)],
     lambda bd, pd, b: ([-bd[0], None], pd)),
    ("vision", "Convolution", 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 '
     'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', [(1, 2, 3, 3)],
     lambda bd, pd, b: (bd, [jnp.flip(pd[0], axis=3), pd[1]])),
    ("vision", "Pooling", 'type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 1 }',
     [(1, 2, 3, 3)], lambda bd, pd, b: ([bd[0] * 4], pd)),
    ("vision", "LRN", 'type: "LRN" lrn_param { local_size: 3 alpha: 1 }', [(1, 4, 2, 2)],
     lambda bd, pd, b: ([bd[0].at[0, 1, 1, 0].add(1e-3)], pd)),   # one element off
]


@pytest.mark.parametrize("family, type_name, snippet, shapes, fix", MUTATIONS,
                         ids=["%s-%s-%d" % (m[0], m[1], i) for i, m in enumerate(MUTATIONS)])
def test_broken_backward_is_caught(family, type_name, snippet, shapes, fix):
    if type_name not in layer_type_list():
        pytest.skip("%s not registered yet" % type_name)
    good = gradcheck.check_layer(snippet, shapes)
    assert good.ok, str(good)
    bad = gradcheck.check_layer(snippet, shapes, layer_class=mutant(type_name, fix))
    assert not bad.ok
    failed = [c for c in bad.checks if not c.ok]
    assert failed[0].failures or failed[0].errors
    with pytest.raises(AssertionError, match="FAIL"):
        bad.assert_ok()


def test_recurrent_backward_from_a_carried_state_is_checked():
    """An RNN/LSTM without expose_hidden forwards from the state its net carries (the
    last forward's h_T); gradcheck draws one. A backward that forgets it (h_0 taken as
    zero in W_hh's t = 0 term) is caught."""
    from jcaffe.layers.recurrent import LSTM
    snippet = ('type: "LSTM" recurrent_param { num_output: 2 weight_filler { type: "gaussian" '
               'std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }')
    bottoms = [np.random.default_rng(0).standard_normal((3, 2, 2)), np.ones((3, 2))]
    good = gradcheck.check_layer(snippet, bottoms=bottoms, label_bottoms=[1])
    assert good.ok, str(good)
    assert any("carried state" in note for note in good.notes)

    class ForgetsTheState(LSTM):
        type = "LSTM"

        def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
            h0, c0, *rest = saved
            return super().backward(params, bottoms, tops, (0 * h0, c0, *rest), top_diffs,
                                    propagate_down)
    bad = gradcheck.check_layer(snippet, bottoms=bottoms, label_bottoms=[1],
                                layer_class=ForgetsTheState)
    assert not bad.ok and not bad["param 2"].ok and bad["bottom 0"].ok


def test_one_wrong_element_is_named():
    snippet = 'type: "LRN" lrn_param { local_size: 3 alpha: 1 }'
    fix = lambda bd, pd, b: ([bd[0].at[0, 1, 1, 0].add(1e-3)], pd)
    bad = gradcheck.check_layer(snippet, [(1, 4, 2, 2)], layer_class=mutant("LRN", fix))
    assert [e.index for e in bad["bottom 0"].failures] == [(0, 1, 1, 0)]


@pytest.mark.parametrize("type_name, snippet, shapes", [
    ("InnerProduct", IP, [(4, 5)]),
    ("Convolution", 'type: "Convolution" convolution_param { num_output: 5 kernel_size: 3 '
     'pad: 1 weight_filler { type: "gaussian" } }', [(1, 3, 6, 6)])])
def test_a_param_offered_by_rows_is_checked_against_the_backward(monkeypatch, type_name,
                                                                 snippet, shapes):
    """A param a layer offers by rows (row_blocked_params: a fused solver step updates it
    a block at a time from param_diff_rows) has those blocks checked against its
    backward's diff, and a wrong row is reported."""
    from jcaffe.layers.vision import Convolution
    monkeypatch.setattr(Convolution, "GEMM_MIN_MACS", 0)   # one image's weight diff by GEMM
    good = gradcheck.check_layer(snippet, shapes)
    assert good.ok, str(good)
    assert good["param 0 by rows"].checked == good["param 0"].shape[0] * int(
        np.prod(good["param 0"].shape[1:]))
    base = layer_class(type_name)
    rows = base.param_diff_rows
    monkeypatch.setattr(base, "param_diff_rows",
                        lambda self, *args: rows(self, *args).at[0].multiply(1 + 1e-6))
    bad = gradcheck.check_layer(snippet, shapes)
    assert not bad.ok and not bad["param 0 by rows"].ok and bad["param 0"].ok
    assert "param_diff_rows gives" in bad["param 0 by rows"].errors[0]


def test_projection_mode_narrows_to_the_wrong_element():
    fix = lambda bd, pd, b: (bd, [pd[0].at[7, 123].multiply(1.001), pd[1]])
    snippet = IP.replace("num_output: 3", "num_output: 40")
    good = gradcheck.check_layer(snippet, [(5, 300)], mode="projection")
    assert good.ok and good["param 0"].mode == "projection"
    bad = gradcheck.check_layer(snippet, [(5, 300)], mode="projection",
                                layer_class=mutant("InnerProduct", fix))
    indices = [e.index for e in bad["param 0"].failures]
    assert (7, 123) in indices, str(bad)


def test_projection_finds_fd_only_bug_without_vjp():
    """A forward jax cannot differentiate leaves finite differences only; still named."""
    base = layer_class("TanH")

    @jax.custom_vjp
    def opaque_tanh(x):
        return jnp.tanh(x)

    def no_bwd(res, g):
        raise NotImplementedError("no derivative rule")
    opaque_tanh.defvjp(lambda x: (jnp.tanh(x), None), no_bwd)

    class OpaqueTanH(base):   # jax.vjp fails; backward 2x wrong at one element
        def forward(self, params, bottoms, rng):
            return [opaque_tanh(bottoms[0])], None

        def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
            bd, pd = base.backward(self, params, bottoms, tops, saved, top_diffs, propagate_down)
            return [bd[0].at[3, 50].multiply(2.0)], pd

    r = gradcheck.check_layer('type: "TanH"', [(8, 400)], layer_class=OpaqueTanH, mode="projection")
    assert "vjp" in " ".join(r.notes)
    assert (3, 50) in [e.index for e in r["bottom 0"].failures], str(r)


def test_relu_kinks_at_zero_are_excluded_and_counted():
    x = np.random.default_rng(1).standard_normal((3, 4))
    x[0, 1] = x[2, 3] = 0.0
    for slope in (0, 0.3):
        r = gradcheck.check_layer('type: "ReLU" relu_param { negative_slope: %g }' % slope,
                                  bottoms=[x]).assert_ok()
        assert sorted(k.index for k in r["bottom 0"].kinks) == [(0, 1), (2, 3)]
        assert "non-differentiable" in str(r)


def test_projection_mode_excludes_kinks_and_still_catches_a_bug():
    """Large ReLU input with exact zeros: the projections that cross a kink are narrowed,
    the kinks excluded and counted, and the re-drawn directions pass; a wrong element
    elsewhere is still found and named."""
    x = np.random.default_rng(3).standard_normal((6, 500))
    zeros = [(0, 10), (2, 250), (5, 499)]
    for z in zeros:
        x[z] = 0.0
    r = gradcheck.check_layer('type: "ReLU"', bottoms=[x], mode="projection").assert_ok()
    assert r["bottom 0"].mode == "projection"
    assert {k.index for k in r["bottom 0"].kinks} <= set(zeros)
    assert r.num_kinks >= 1
    fix = lambda bd, pd, b: ([bd[0].at[4, 77].add(0.5)], pd)
    bad = gradcheck.check_layer('type: "ReLU"', bottoms=[x], mode="projection",
                                layer_class=mutant("ReLU", fix))
    assert (4, 77) in [e.index for e in bad["bottom 0"].failures], str(bad)


def test_kink_with_impossible_analytic_value_fails():
    x = np.zeros((2, 2))
    fix = lambda bd, pd, b: ([bd[0] + 5.0], pd)   # outside [left, right] at the kink
    r = gradcheck.check_layer('type: "ReLU"', bottoms=[x], layer_class=mutant("ReLU", fix))
    assert not r.ok and "outside" in str(r)


def test_max_pool_ties_are_excluded():
    if "Pooling" not in layer_type_list():
        pytest.skip("Pooling not registered yet")
    x = np.random.default_rng(2).standard_normal((1, 1, 4, 4))
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = 5.0          # a tie inside the first window
    r = gradcheck.check_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
                              bottoms=[x]).assert_ok()
    assert {(0, 0, 0, 0), (0, 0, 0, 1)} <= {k.index for k in r["bottom 0"].kinks}


def test_labels_are_not_perturbed_and_check_bottom_selects():
    r = gradcheck.check_layer('type: "SoftmaxWithLoss"', [(3, 5), (3,)])
    assert [c.name for c in r.checks] == ["bottom 0"]
    r = gradcheck.check_layer('type: "EuclideanLoss"', [(2, 3), (2, 3)], check_bottom=[1])
    assert [c.name for c in r.checks] == ["bottom 1"]


def test_dropout_uses_one_mask():
    r = gradcheck.check_layer('type: "Dropout" dropout_param { dropout_ratio: 0.5 }', [(6, 7)])
    assert r.ok and r.num_kinks == 0


def test_no_backward_layers_are_clear():
    with pytest.raises(BackwardError, match="Accuracy"):
        gradcheck.check_layer('type: "Accuracy"', [(3, 4), (3,)], propagate_down=[True, False])
    assert gradcheck.check_layer('type: "Accuracy"', [(3, 4), (3,)], propagate_down=[0, 0]).ok
    r = gradcheck.check_layer('type: "Input" input_param { shape { dim: 2 } }', [])
    assert r.ok and "filled from outside" in str(r)


def test_bad_use_is_clear():
    with pytest.raises(UnknownLayerTypeError, match="Known types"):
        gradcheck.check_layer('type: "NoSuchLayer"', [(2,)])
    with pytest.raises(LayerSetupError, match="InnerProduct"):
        gradcheck.check_layer(IP.replace("{ num_output", "{ axis: 5 num_output"), [(2, 3)])
    with pytest.raises(ImportError, match="no class"):
        gradcheck.check_python_layer("pylayers.NoSuchClass", [(2,)])
    with pytest.raises(ValueError, match="mode"):
        gradcheck.check_layer('type: "TanH"', [(2,)], mode="fast")


# -- Python layers -------------------------------------------------------------
def test_correct_python_euclidean_passes():
    r = gradcheck.check_python_layer(EXAMPLES + "euclidean_loss.py:EuclideanLossLayer",
                                     [(3, 4), (3, 4)]).assert_ok()
    assert not r.warnings


def test_pylayers_euclidean_is_right_for_loss_weight_1_only():
    """tests/pylayers.EuclideanLossLayer (the classic pycaffe example) computes in float32
    and ignores top[0].diff: right for loss_weight 1, flagged for other weights."""
    ok = gradcheck.check_python_layer("pylayers.EuclideanLossLayer", [(3, 4), (3, 4)],
                                      top_diff="ones").assert_ok()
    assert "float32" in ok.warnings[0]
    r = gradcheck.check_python_layer("pylayers.EuclideanLossLayer", [(3, 4), (3, 4)])
    assert not r.ok and "loss_weight 1" in str(r)


def test_buggy_python_euclidean_is_caught_and_named():
    r = gradcheck.check_python_layer(EXAMPLES + "euclidean_loss_buggy.py:EuclideanLossLayer",
                                     [(3, 4), (3, 4)], top_diff="ones")
    assert not r.ok
    first = r["bottom 0"].failures[0]
    assert first.index == (0, 0)
    assert first.analytic == pytest.approx(3 * first.numeric, rel=1e-6)   # num = 3 missing


def test_python_layer_with_param():
    gradcheck.check_python_layer("pylayers.ScaleByParam", [(2, 3)], "1.5").assert_ok()


def test_python_contract_violations():
    r = gradcheck.check_python_layer("pylayers.NoBackward", [(2, 3)])
    assert "no backward()" in str(r)
    r = gradcheck.check_python_layer(EXAMPLES + "one_hot.py:OneHotForgetsToZero", [(5,)], "4",
                                     label_bottoms=[0], num_classes=4)
    assert "does not write every element of top 0" in str(r)
    gradcheck.check_python_layer(EXAMPLES + "one_hot.py:OneHot", [(5,)], "4", label_bottoms=[0],
                                 num_classes=4).assert_ok()


def test_python_contract_bottom_write_and_propagate_down(tmp_path):
    (tmp_path / "bad_layers.py").write_text('''
import jcaffe
class ScalesBottom(jcaffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)
    def forward(self, bottom, top):
        bottom[0].data[...] *= 1.0 + 1e-3
        top[0].data[...] = bottom[0].data
    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
class IgnoresPropagateDown(ScalesBottom):
    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data
class DoesNothing(IgnoresPropagateDown):
    def backward(self, top, propagate_down, bottom):
        pass
class NoReshape(IgnoresPropagateDown):
    def reshape(self, bottom, top):
        pass
''')
    path = str(tmp_path / "bad_layers.py")
    assert "modified bottom 0" in str(gradcheck.check_python_layer(path + ":ScalesBottom", [(2, 2)]))
    assert "propagate_down[0] is False" in str(
        gradcheck.check_python_layer(path + ":IgnoresPropagateDown", [(2, 2)]))
    assert "did nothing" in str(gradcheck.check_python_layer(path + ":DoesNothing", [(2, 2)]))
    assert "gave top 0 no shape" in str(gradcheck.check_python_layer(path + ":NoReshape", [(2, 2)]))


# -- nets --------------------------------------------------------------------
NET = """
name: "t"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "gaussian" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { name: "w" }
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3" param { name: "w" }
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip3" bottom: "label" top: "loss" }
layer { name: "loss2" type: "EuclideanLoss" bottom: "ip2" bottom: "ip3" top: "loss2"
        loss_weight: 0.5 }
"""


def test_net_with_splits_in_place_shared_params_and_loss_weights(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    r = gradcheck.check_net(str(path)).assert_ok()
    names = [c.name for c in r.checks]
    assert "param ip2[0]" in names and "input data" in names and "input label" not in names


def test_net_with_python_layer(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace('type: "EuclideanLoss"', 'type: "Python" python_param { module: '
                                '"pylayers" layer: "EuclideanLossLayer" }'))
    # (seeded: in about 1 draw of 50, relu1 and the dropout zero all of ip1, ip2 and ip3
    # are then their zero biases and the Euclidean loss has no gradient to get wrong;
    # check_net warns of that, test_net_warns_when_a_gradient_is_zero_everywhere)
    jcaffe.set_random_seed(0)
    r = gradcheck.check_net(str(path))
    assert "Python layers" in " ".join(r.notes)
    assert not r.ok   # pylayers' EuclideanLossLayer ignores its loss_weight of 0.5
    assert not r.warnings


def test_net_warns_when_a_gradient_is_zero_everywhere(tmp_path):
    """A check of an all-zero gradient passes whatever the backward: the report says so."""
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace('bias_filler { type: "gaussian" }',
                                'bias_filler { type: "constant" value: -100 }'))
    r = gradcheck.check_net(str(path))
    assert r.ok
    assert len(r.warnings) == 1
    assert "gradient of param ip1[0], param ip1[1], param ip2[0], input data is zero" \
        in r.warnings[0]
    assert "warning: the gradient of param ip1[0]" in str(r)


class _NumpyReLU(jcaffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = np.maximum(bottom[0].data, 0)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * (bottom[0].data > 0)


def test_layer_checks_warn_when_a_gradient_is_zero_everywhere():
    """A ReLU fed only negative bottoms has a zero gradient: its check passes (so would a
    backward that scaled the right answer), and the report says so, built-in or Python."""
    x = -1 - np.random.default_rng(0).random((3, 4))
    warning = "the gradient of bottom 0 is zero everywhere for these bottoms"
    r = gradcheck.check_layer('type: "ReLU"', bottoms=[x]).assert_ok()
    assert len(r.warnings) == 1 and warning in r.warnings[0], r.warnings
    assert "warning: " + warning in str(r)
    assert not gradcheck.check_layer('type: "ReLU"', bottoms=[x + 1.5]).warnings
    r = gradcheck.check_python_layer(_NumpyReLU, bottoms=[x]).assert_ok()
    assert len(r.warnings) == 1 and warning in r.warnings[0], r.warnings
    assert not gradcheck.check_python_layer(_NumpyReLU, bottoms=[x + 1.5]).assert_ok().warnings


def test_net_catches_a_broken_layer(tmp_path, monkeypatch):
    import jcaffe.layer as registry
    monkeypatch.setitem(registry._REGISTRY, "TanH", mutant("TanH", flip_bottom))
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace('type: "ReLU"', 'type: "TanH"'))
    r = gradcheck.check_net(str(path))
    assert not r.ok and not r["param ip1[0]"].ok


# -- CLI ---------------------------------------------------------------------
def test_cli_layer_python_and_builtin(capsys):
    assert cli_main(["layer", EXAMPLES + "euclidean_loss.py:EuclideanLossLayer",
                     "--bottom", "2,3", "--bottom", "2,3"]) == 0
    assert cli_main(["layer", EXAMPLES + "euclidean_loss_buggy.py:EuclideanLossLayer",
                     "--bottom", "2,3", "--bottom", "2,3"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert cli_main(["layer", "--type", "ReLU", "--param", "relu_param { negative_slope: 0.1 }",
                     "--bottom", "2,3"]) == 0
    assert cli_main(["layer", "--type", "NoSuch", "--bottom", "2"]) == 1
    assert "Known types" in capsys.readouterr().err


def test_cli_net_subprocess(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    out = subprocess.run([sys.executable, "-m", "gradcheck.cli", "net", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "param ip1[0]" in out.stdout and "0 failed" in out.stdout


def test_python_layer_with_a_jax_forward_is_also_checked_against_vjp():
    report = gradcheck.check_python_layer("pylayers.JaxScaledTanh", [(3, 4)])
    assert report.ok, str(report)
    param = next(c for c in report.checks if c.name == "param 0")
    assert param.worst is not None and param.worst.vjp is not None

    bad = gradcheck.check_python_layer("pylayers.JaxScaledTanhWrongParamGrad", [(3, 4)])
    assert not bad.ok
    failures = next(c for c in bad.checks if c.name == "param 0").failures
    assert any("vs vjp" in f.note for f in failures), str(bad)

    mismatch = gradcheck.check_python_layer("pylayers.JaxScaledTanhWrongJaxForward", [(3, 4)])
    assert not mismatch.ok
    assert "jax_forward top 0 differs from forward()" in str(mismatch)
