"""benchmarks/bench_layers.py keeps up with the layer registry: every registered type
is either timed there or named in NO_BACKWARD with a reason, and every case sets up
(shapes only; the timing itself is the benchmark's, never a test's)."""
import importlib.util
import os

import numpy as np
import pytest

from jcaffe.layer import layer_type_list

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_layers", os.path.join(ROOT, "benchmarks", "bench_layers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()


def test_every_registered_type_is_timed_or_excused():
    registered = set(layer_type_list())
    timed, excused = set(bench.CASES), set(bench.NO_BACKWARD)
    assert not timed & excused, "both timed and excused: %s" % sorted(timed & excused)
    missing = registered - timed - excused
    assert not missing, ("layer types with no case in benchmarks/bench_layers.py (add one to "
                         "CASES, or to NO_BACKWARD with the reason): %s" % sorted(missing))
    assert not (timed | excused) - registered, "unknown types: %s" % sorted((timed | excused) - registered)


@pytest.mark.parametrize("type_name,label,snippet,bottoms", list(bench.all_cases()),
                         ids=["%s %s" % (c[0], c[1]) for c in bench.all_cases()])
def test_case_sets_up(type_name, label, snippet, bottoms):
    layer, params, xs, pd = bench.build(snippet, bottoms)
    assert layer.type == type_name
    assert all(x.dtype == np.float32 for x in xs + params)
    assert any(pd) or any(layer.param_propagate_down), "nothing to differentiate"


def test_one_case_runs_and_agrees():
    """The three contenders of a small case compute the same tops, and explicit and autodiff
    the same diffs (the harness times what it says it times)."""
    import jax
    runs = {k: setup() for k, setup in
            bench.contenders('type: "InnerProduct" inner_product_param { num_output: 3 '
                             'weight_filler { type: "gaussian" } }', [(4, 5)]).items()}
    fwd, exp, auto = runs["forward"](), runs["explicit"](), runs["autodiff"]()
    np.testing.assert_allclose(np.asarray(fwd[0]), np.asarray(exp[0][0]), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(exp), jax.tree_util.tree_leaves(auto)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_batched_samples_run_back_to_back_calls():
    """bench_layers.batched: each sample is n calls of the contender's run (n from one
    timed call, at least 1), returning the last call's result, and it records n."""
    import time
    calls = []

    def setup():
        def run():
            calls.append(1)
            time.sleep(0.001)
            return len(calls)
        return run
    runs, info = bench.batched({"c": setup}, 0.01)
    run = runs["c"]()
    assert len(calls) == 2                      # the compile call and the timed one
    n = info["c"]["calls"]
    assert 2 <= n <= 10 and info["c"]["compile_s"] >= 0.001
    assert run() == 2 + n and len(calls) == 2 + n


def test_rows_above_the_line_are_measured_again(monkeypatch):
    """main(): a case whose explicit / autodiff ratio is above --recheck-above is set up
    and measured --rechecks more times after the pass, and render() lists those ratios
    in the row's last column; rows at or under the line show '-'."""
    import harness
    medians = iter([1.0, 3.0, 2.0,      # AbsVal: explicit / autodiff 1.5, above 1.15
                    1.0, 2.0, 2.0,      # TanH: 1.0
                    1.0, 2.4, 2.0,      # AbsVal again: 1.2
                    1.0, 2.0, 2.0])     # and again: 1.0

    def measure(runs, warmup, repeats, log=print):
        return {name: {"median_ms": next(medians), "min_ms": 0.0, "max_ms": 0.0}
                for name in ("forward", "explicit", "autodiff")}
    monkeypatch.setattr(harness, "measure", measure)
    monkeypatch.setattr(bench, "batched", lambda runs, s: (runs, {
        k: {"calls": 1, "compile_s": 0.0} for k in runs}))
    rows = bench.main(["--only", "AbsVal,TanH", "--rechecks", "2"])
    assert [r["type"] for r in rows] == ["AbsVal", "TanH"]
    assert rows[0]["again"] == [1.2, 1.0] and "again" not in rows[1]
    table = bench.render(rows).splitlines()
    assert table[2].endswith("| 1.50x | 2.00x | 1.20x, 1.00x |"), table[2]
    assert table[3].endswith("| 1.00x | 1.00x | - |"), table[3]
