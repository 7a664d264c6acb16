"""net.explain() / `jcaffe explain`: the reasons it gives agree with what the Net does.

Every layer's backward is instrumented; after forward + backward the layers that
were called are exactly those explain() reports as needing backward, and each
was asked for exactly the bottom diffs explain() reports.
"""
import json

import numpy as np
import pytest

import jcaffe
from jcaffe import cli
from jcaffe.explain import RULES, classify_reason
from netutil import make_net, write_prototxt

DATA = """
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                     data_filler { type: "gaussian" std: 1 } } }
"""

PY_IDENT = 'python_param { module: "pylayers" layer: "Identity" }'
IP = 'inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } }'

NETS = {
    # Rule "nothing-learnable-below": the Python layer's backward is never called.
    "python_skipped": DATA + """
layer { name: "ident" type: "Python" bottom: "data" top: "ident" %s }
layer { name: "ip" type: "InnerProduct" bottom: "ident" top: "ip" %s
  param { lr_mult: 0 } param { lr_mult: 0 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
""" % (PY_IDENT, IP),
    # Rule "force-backward" (and a forced label bottom).
    "forced": "force_backward: true\n" + DATA + """
layer { name: "ident" type: "Python" bottom: "data" top: "ident" %s }
layer { name: "tanh" type: "TanH" bottom: "ident" top: "ident" }
layer { name: "ip" type: "InnerProduct" bottom: "ident" top: "ip" %s }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
""" % (PY_IDENT, IP),
    # Rules "learnable-params" and "bottom-needs-backward".
    "learnable_below": DATA + """
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" %s }
layer { name: "ident" type: "Python" bottom: "ip1" top: "ident" %s }
layer { name: "relu" type: "ReLU" bottom: "ident" top: "ident" }
layer { name: "loss" type: "EuclideanLoss" bottom: "ident" bottom: "label" top: "loss" }
""" % (IP, PY_IDENT),
    # Rule "no-loss-above": a learnable head that feeds no loss; the split of ip1.
    "no_loss": DATA + """
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" %s }
layer { name: "side" type: "InnerProduct" bottom: "ip1" top: "side" %s }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip1" bottom: "label" top: "loss" }
""" % (IP, IP),
    # Rule "diff-blocked-above": propagate_down: false stops the diff; ip2 still updates.
    "blocked": DATA + """
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } }
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" %s propagate_down: false }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "label" top: "loss" }
""" % IP,
    # lr_mult: 0 with an explicit decay_mult > 0 (a no-op that looks like a setting).
    "frozen_decay": DATA + """
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" %s
  param { lr_mult: 0 decay_mult: 1 } param { lr_mult: 0 decay_mult: 0 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip1" bottom: "label" top: "loss" }
""" % IP,
}


def instrument(net):
    """Wrap every layer's backward: -> {layer name: [propagate_down, ...]}."""
    calls = {}
    for layer in net.layers:
        orig = getattr(layer, "backward", None)
        if not callable(orig):
            continue

        def wrapper(*args, _orig=orig, _name=layer.name, _host=layer.is_host):
            pd = args[1] if _host else args[5]
            calls.setdefault(_name, []).append([bool(x) for x in pd])
            return _orig(*args)
        layer.backward = wrapper
    return calls


@pytest.mark.parametrize("which", sorted(NETS))
def test_explain_agrees_with_what_backward_calls(tmp_path, which):
    net = make_net(tmp_path, NETS[which])
    ex = net.explain()
    calls = instrument(net)
    net.forward()
    net.backward()
    reported = {r.name for r in ex.layers if r.needs_backward}
    assert set(calls) == reported, str(ex)
    for r in ex.layers:
        assert r.rule in RULES, (r.name, r.reason)
        if r.name in calls:
            assert calls[r.name][-1] == [b.receives_diff for b in r.bottom_diffs], r.name
    # Explain agrees with the Net's own flags too.
    assert {r.name: r.needs_backward for r in ex.layers} == dict(net.layer_need_backward)


def rules(ex):
    return {r.name: r.rule for r in ex.layers}


def kinds(ex):
    return sorted((w.kind, w.layer) for w in ex.warnings)


def test_each_rule_is_named(tmp_path):
    def ex(which):
        return make_net(tmp_path, NETS[which]).explain()

    assert rules(ex("python_skipped")) == {
        "data": "nothing-learnable-below", "ident": "nothing-learnable-below",
        "ip": "nothing-learnable-below", "loss": "nothing-learnable-below"}
    r = rules(ex("learnable_below"))
    assert r["ip1"] == "learnable-params"
    assert r["ident"] == r["relu"] == r["loss"] == "bottom-needs-backward"
    assert rules(ex("forced"))["ident"] == "force-backward"
    r = rules(ex("no_loss"))
    assert r["side"] == "no-loss-above" and r["ip1"] == "learnable-params"
    assert rules(ex("blocked"))["ip1"] == "diff-blocked-above"


def test_python_layer_that_never_runs_backward_is_warned_with_the_fix(tmp_path):
    ex = make_net(tmp_path, NETS["python_skipped"]).explain()
    (w,) = [w for w in ex.warnings if w.kind == "python-backward-never-runs"]
    assert w.layer == "ident" and "pylayers.Identity" in w.message
    assert "force_backward: true" in w.fix and "lr_mult" in w.fix
    # ... and the fix works: with force_backward the layer runs and the warning goes.
    text = NETS["python_skipped"].replace(DATA, "force_backward: true\n" + DATA)
    ex2 = make_net(tmp_path, text).explain()
    assert ex2.layer("ident").needs_backward
    assert "python-backward-never-runs" not in [w.kind for w in ex2.warnings]


def test_propagate_down_false_warnings(tmp_path):
    ex = make_net(tmp_path, NETS["blocked"]).explain()
    assert kinds(ex) == [("blocked-layer-still-decays", "ip1"),
                         ("learnable-layer-never-backward", "ip1"),
                         ("propagate-down-false-params-update", "ip2")]
    w = [w for w in ex.warnings if w.kind == "propagate-down-false-params-update"][0]
    assert "lr_mult: 0 decay_mult: 0" in w.fix
    bd = ex.layer("ip2").bottom_diffs[0]
    assert bd.receives_diff is False and bd.reason == "propagate_down: false"


def test_lr_mult_zero_with_decay(tmp_path):
    ex = make_net(tmp_path, NETS["frozen_decay"]).explain()
    assert kinds(ex) == [("lr-mult-zero-with-decay", "ip1")]
    assert "param 0" in ex.warnings[0].message
    p = ex.layer("ip1").params
    assert [(q.lr_mult, q.decay_mult, q.updates) for q in p] == [(0, 1, False), (0, 0, False)]


def test_forced_label_bottom_is_warned(tmp_path):
    ex = make_net(tmp_path, NETS["forced"]).explain()
    assert ("loss-label-forced", "loss") in kinds(ex)
    # SoftmaxWithLoss refuses a forced label diff (Caffe's LossLayer): no warning.
    text = "force_backward: true\n" + DATA.replace("dim: 4 dim: 2", "dim: 4") + """
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" %s }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
""" % IP
    ex2 = make_net(tmp_path, text).explain()
    assert "loss-label-forced" not in [w.kind for w in ex2.warnings]
    assert ex2.layer("loss").bottom_diffs[1].receives_diff is False


def test_splits_and_in_place_are_shown(tmp_path):
    ex = make_net(tmp_path, NETS["no_loss"]).explain()
    split = [r for r in ex.layers if r.auto_split]
    assert [s.name for s in split] == ["ip1_ip1_0_split"]
    assert split[0].tops == ["ip1_ip1_0_split_0", "ip1_ip1_0_split_1"]
    blob = {b.name: b for b in ex.blobs}
    assert blob["ip1_ip1_0_split_1"].split_of == "ip1"
    text = str(ex)
    assert "auto-inserted split" in text and "(copy of 'ip1')" in text
    ex2 = make_net(tmp_path, NETS["learnable_below"]).explain()
    assert ex2.layer("relu").in_place == ["ident"]
    assert "ident -> ident (in-place)" in str(ex2)
    assert ex2.layer("loss").loss_weights == [1.0]


def test_backward_range_that_misses_a_split(tmp_path):
    text = DATA + """
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" %s }
layer { name: "a" type: "TanH" bottom: "ip1" top: "a" }
layer { name: "b" type: "Sigmoid" bottom: "ip1" top: "b" }
layer { name: "sum" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "sum" }
""" % IP
    net = make_net(tmp_path, text)
    assert kinds(net.explain()) == []
    # Range stopping at 'a': the split that sums into ip1 is below it.
    ex = net.explain(start="sum", end="a")
    (w,) = ex.warnings
    assert w.kind == "backward-range-misses-split" and w.layer == "ip1_ip1_0_split"
    assert "net.blobs['ip1'].diff is not updated" in w.message
    # ... which is what happens: ip1's diff stays zero.
    net.forward()
    net.backward(start="sum", end="a")
    assert np.all(net.blobs["ip1"].diff == 0)
    assert np.any(net.blobs["ip1_ip1_0_split_0"].diff != 0)
    # Range starting below 'b': the split sums b's stale (zero) copy.
    ex = net.explain(start="a", end="ip1")
    (w,) = ex.warnings
    assert "'b'" in w.message and w.fix == "start the range at or above 'b'"
    # A full range is fine.
    assert net.explain(start="sum", end="data").warnings == []
    with pytest.raises(KeyError, match="no layer 'nope'"):
        net.explain(start="nope")


def test_as_data(tmp_path):
    ex = make_net(tmp_path, NETS["blocked"]).explain()
    d = json.loads(ex.to_json())
    assert d["net"] == "" and d["phase"] == "TRAIN"
    assert [l["name"] for l in d["layers"]] == ["data", "ip1", "ip2", "loss"]
    assert d["layers"][1]["params"][1]["lr_mult"] == 2
    assert {w["kind"] for w in d["warnings"]} >= {"propagate-down-false-params-update"}


def test_classify_reason_covers_the_nets_reasons():
    assert classify_reason("param 0 is learnable (lr_mult 1)") == "learnable-params"
    assert classify_reason("force_backward: true (otherwise: x)") == "force-backward"
    assert classify_reason("bottom 'x' comes from layers that need backward") == "bottom-needs-backward"


def test_cli_explain(tmp_path, capsys):
    path = write_prototxt(tmp_path, NETS["blocked"])
    assert cli.main(["explain", path]) == 0
    out = capsys.readouterr().out
    assert "#2   ip2  [InnerProduct]" in out
    assert "propagate-down-false-params-update" in out
    assert cli.main(["explain", path, "--phase", "TEST", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["phase"] == "TEST"
    assert cli.main(["explain", path, "--start", "loss", "--end", "ip2"]) == 0


def test_cli_explain_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: 'x' type: }")
    assert cli.main(["explain", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.prototxt" in err
    assert cli.main(["explain", str(tmp_path / "missing.prototxt")]) == 1
    assert cli.main(["explain"]) == 2
    assert cli.main(["explain", str(bad), "--phase", "VAL"]) == 2


def test_blocked_layer_really_decays_and_trains_on_its_own(tmp_path):
    """What the propagate_down warnings claim, checked with a solver step."""
    from google.protobuf import text_format
    from jcaffe.proto import caffe_pb2
    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.1 lr_policy: "fixed" weight_decay: 0.5 max_iter: 1 '
                      'snapshot_after_train: false random_seed: 1', param)
    text_format.Parse(NETS["blocked"], param.net_param)
    solver = jcaffe.SGDSolver(param)
    net = solver.net
    w1 = net.params["ip1"][0].data.copy()
    b1 = net.params["ip1"][1].data.copy()
    w2 = net.params["ip2"][0].data.copy()
    solver.step(1)
    np.testing.assert_allclose(net.params["ip1"][0].data, w1 * (1 - 0.1 * 0.5), rtol=1e-5)  # decay only
    np.testing.assert_allclose(net.params["ip1"][1].data, b1, rtol=1e-6)      # decay_mult 0: fixed
    assert not np.allclose(net.params["ip2"][0].data, w2 * (1 - 0.1 * 0.5))  # gradient too


EXAMPLES = {
    "python_backward_never_runs.prototxt": ({}, "python-backward-never-runs"),
    "propagate_down_still_updates.prototxt": ({}, "propagate-down-false-params-update"),
    "backward_range_misses_split.prototxt": ({"start": "loss", "end": "branch_a"},
                                             "backward-range-misses-split"),
    "lr_mult_zero_with_decay.prototxt": ({}, "lr-mult-zero-with-decay"),
    "force_backward_label.prototxt": ({}, "loss-label-forced"),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_show_their_trap(name, monkeypatch):
    import os
    here = os.path.join(os.path.dirname(__file__), "..", "examples", "explain")
    monkeypatch.syspath_prepend(here)
    net = jcaffe.Net(os.path.join(here, name), jcaffe.TRAIN)
    kw, kind = EXAMPLES[name]
    assert kind in [w.kind for w in net.explain(**kw).warnings]


def test_deploy_net_without_loss_warns_only_about_python_layers(tmp_path):
    text = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" %s }
layer { name: "py" type: "Python" bottom: "ip" top: "py" %s }
layer { name: "prob" type: "Softmax" bottom: "py" top: "prob" }
""" % (IP, PY_IDENT)
    ex = make_net(tmp_path, text).explain()
    assert ex.layer("ip").rule == "no-loss-above"
    assert kinds(ex) == [("python-backward-never-runs", "py")]
    assert "connect its tops to a loss" in ex.warnings[0].fix
