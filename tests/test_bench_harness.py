"""benchmarks/harness.py and run_all's tables: what the harness times and how the
tables show it."""
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import harness  # noqa: E402
import run_all  # noqa: E402


def test_the_second_call_is_timed_and_shown():
    """A contender's second call may compile a second program (jcaffe's slim deploy
    forward): the harness times it on its own and the tables show it ('-' where it was
    not timed, as in runs from before it was)."""
    import time
    calls = []

    def setup(costs):
        def run():
            time.sleep(costs[min(len(calls), len(costs) - 1)])
            calls.append(1)
        return lambda: (calls.clear(), run)[1]
    out = harness.measure({"slim": setup([0.05, 0.2, 0.0])}, warmup=2, repeats=2,
                          log=lambda *a: None)
    assert 0.05 <= out["slim"]["compile_s"] < 0.2 <= out["slim"]["second_s"] < 0.4
    assert harness.measure({"none": setup([0.0])}, warmup=0, repeats=1,
                           log=lambda *a: None)["none"]["second_s"] is None

    row = lambda second: {"median_ms": 1.0, "min_ms": 1.0, "max_ms": 1.0, "compile_s": 2.0,
                          "second_s": second}
    data = {"results": {"jcaffe Net.forward": row(4.2), "PyTorch eager": row(None)}}
    cells = [line.split("|")[7].strip() for line in run_all.fmt_table(data).splitlines()[2:]]
    assert cells == ["4.20", "-"]
    old = {"results": {"jcaffe Net.forward": {"median_ms": 1.0, "min_ms": 1.0, "max_ms": 1.0,
                                              "compile_s": 2.0}}}
    assert run_all.fmt_table(old).splitlines()[2].split("|")[7].strip() == "-"
    assert harness.table(data["results"]).splitlines()[2].split("|")[7].strip() == "4.20"
