"""benchmarks/bench_host.py: it times jcaffe's fused step and slim deploy forward (not a
fallback path), counts the arrays each jitted call passes and returns, and its table
reads the rows it was given."""
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import bench_host  # noqa: E402
import nets  # noqa: E402


def test_the_step_is_the_fused_call_with_its_params_and_history():
    row = bench_host.measure("lenet", 2, "step", calls=2, rounds=1)
    jc, pure = row["jcaffe"], row["pure JAX"]
    learnable = len(nets.jcaffe_solver("lenet", 2).net._learnable)      # 4 layers, w and b
    assert learnable == 8
    # params and their history in, both back, and the blobs the step rewrites
    assert jc["arrays_in"] > 2 * learnable and jc["arrays_out"] > 2 * learnable
    assert pure["arrays_in"] == 2 * learnable + 4    # params, momentum, data, label, key, t
    assert jc["arrays_in"] < 3 * learnable + 30     # (not the static spec's names and shapes)
    assert 0 < jc["call_ms"] <= jc["ms"] and pure["ms"] > 0
    assert len(jc["rounds_ms"]) == 1


def test_the_forward_is_the_slim_program():
    row = bench_host.measure("lenet", 2, "forward", calls=2, rounds=1)
    assert row["jcaffe"]["arrays_out"] == 1           # the output alone
    assert row["jcaffe"]["arrays_in"] >= 8 + 1        # params, data
    assert row["pure JAX"]["arrays_out"] == 1


def test_table_gives_each_row_and_the_ratio():
    c = lambda ms, call, n: {"ms": ms, "call_ms": call, "arrays_in": n, "arrays_out": n}
    text = bench_host.table({"lenet:step": {"jcaffe": c(3.0, 1.0, 40), "pure JAX": c(2.0, 1.5, 19)},
                             "lenet:forward": {"jcaffe": c(1.0, None, None),
                                               "pure JAX": c(2.0, 0.5, 9)}})
    lines = text.splitlines()
    assert lines[2] == "| lenet | training step | 3.00 | 1.00 | 40 / 40 | 2.00 | 19 / 19 | 1.50 |"
    assert lines[3] == "| lenet | deploy forward | 1.00 | - | - | 2.00 | 9 / 9 | 0.50 |"


def test_run_all_only_names_plan_entries_and_dates_them(tmp_path):
    import pytest
    import run_all
    with pytest.raises(SystemExit, match="no plan entries hots"):
        run_all.remeasure([("host", "bench_host.py", [])], ["hots"], str(tmp_path / "r.json"),
                          None)
    assert run_all.measured_apart({"host": {}}, "host") == []
    assert run_all.measured_apart({"host_measured": "then"}, "host") == [
        "Measured apart from the run in the header: then.", ""]
    elsewhere = {"host_measured": "then", "host_machine": {"machine": "AMD EPYC, 2 cores",
                                                           "peak": 71.25}}
    assert run_all.measured_apart(elsewhere, "host") == [
        "Measured apart from the run in the header: then, on another machine: AMD EPYC, 2 "
        "cores (float32 matmul peak 71.2 GFLOP/s).", ""]


def test_run_all_only_on_another_machine_stamps_it(tmp_path, monkeypatch):
    """A re-measure on another machine than the header's run stamps each entry with that
    machine and its matmul peak; one back on the header's machine drops the stamp."""
    import json
    import run_all
    raw = tmp_path / "results.json"
    raw.write_text(json.dumps({"machine": "Intel Xeon, 2 cores", "results": {}}))
    monkeypatch.setattr(run_all, "run", lambda script, args, out: {"results": {}})
    monkeypatch.setattr(run_all, "render", lambda state, opts: None)
    monkeypatch.setattr(run_all, "matmul_peak", lambda: 70.0)
    plan = [("host", "bench_host.py", []), ("train_nin", "bench_train.py", [])]
    monkeypatch.setattr(run_all, "machine", lambda: "AMD EPYC, 2 cores")
    run_all.remeasure(plan, ["host", "train_nin"], str(raw), None)
    results = json.loads(raw.read_text())["results"]
    assert results["train_nin_machine"] == {"machine": "AMD EPYC, 2 cores", "peak": 70.0}
    assert results["host_machine"] == results["train_nin_machine"]
    monkeypatch.setattr(run_all, "machine", lambda: "Intel Xeon, 2 cores")
    run_all.remeasure(plan, ["host"], str(raw), None)
    results = json.loads(raw.read_text())["results"]
    assert "host_machine" not in results and "train_nin_machine" in results


def test_run_all_only_jtime_runs_jcaffe_time_and_reports_its_median(tmp_path, monkeypatch):
    """``--only jtime`` runs `jcaffe time` again (LeNet, here 3 iterations) and dates its
    paragraph, which leads with the median of its timed iterations (what the targets
    table holds against the benchmark's median) and gives Caffe's average beside it."""
    import json
    import re
    import run_all
    raw = tmp_path / "results.json"
    raw.write_text(json.dumps({"machine": run_all.machine(), "results": {}, "jtime": ""}))
    monkeypatch.setattr(run_all, "render", lambda state, opts: None)
    monkeypatch.setattr(run_all, "JTIME_ITERATIONS", 3)
    run_all.remeasure([("host", "bench_host.py", [])], ["jtime"], str(raw), None)
    state = json.loads(raw.read_text())
    m = re.search(r"-iterations 3`: forward-backward, median of its iterations \*\*([0-9.]+) "
                  r"ms\*\* \(min ([0-9.]+), max ([0-9.]+); its Average Forward-Backward, "
                  r"Caffe's statistic, ([0-9.]+) ms\)", state["jtime"])
    assert m, state["jtime"]
    median, low, high, mean = map(float, m.groups())
    assert 0 < low <= median <= high and low <= mean <= high + 0.5   # (+ its log lines)
    assert "jtime_measured" in state["results"] and "host" not in state["results"]
    assert run_all.measured_apart(state["results"], "jtime")


def test_bench_train_steps_runs_that_many_steps_per_call(monkeypatch):
    """--steps N: each timed call of the jcaffe contender runs N solver iterations (and
    the others N steps), waiting for the last."""
    import bench_train
    made = []
    real = nets.jcaffe_solver
    monkeypatch.setattr(nets, "jcaffe_solver", lambda *a: made.append(real(*a)) or made[-1])
    run = bench_train.contenders("lenet", 2, steps=3)["jcaffe Solver.step"]()
    run()
    run()
    assert made[0].iter == 6
    bench_train.contenders("lenet", 2, steps=3)["pure JAX (jit value_and_grad)"]()()
