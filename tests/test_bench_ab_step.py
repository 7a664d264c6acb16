"""benchmarks/ab_step.py: each variant runs in processes of its own, with its apply()
called before its solver is built, in both orders; the ratio is of the medians."""
import os
import re
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def ab_step(variants, *args, check=True):
    """benchmarks/ab_step.py on LeNet at batch 2 with the variants module ``variants``."""
    return subprocess.run(
        [sys.executable, os.path.join(BENCH, "ab_step.py"), "--net", "lenet", "--batch", "2",
         "--variants", str(variants)] + list(args),
        check=check, capture_output=True, text=True, timeout=600)


def test_ab_step_runs_each_variant_in_its_own_processes(tmp_path):
    log = tmp_path / "applied.txt"
    variants = tmp_path / "variants.py"
    # "columns" sets conv_gemm.ROW_BYTES to 0 (no data gradient by kernel rows). Every
    # Convolution forward traced records its variant, the ROW_BYTES its trace saw, and
    # its process.
    variants.write_text(
        "import os\n"
        "from jcaffe.layers import conv_gemm, vision\n"
        "def apply(name):\n"
        "    if name == 'columns':\n"
        "        conv_gemm.ROW_BYTES = 0\n"
        "    forward = vision.Convolution._conv_forward\n"
        "    def traced(self, x, w, *rest):\n"
        "        with open(%r, 'a') as f:\n"
        "            f.write('%%s:%%d:%%d\\n' %% (name, conv_gemm.ROW_BYTES, os.getpid()))\n"
        "        return forward(self, x, w, *rest)\n"
        "    vision.Convolution._conv_forward = traced\n" % str(log))
    out = ab_step(variants, "--steps", "2", "rows", "columns").stdout
    records = [line.split(":") for line in log.read_text().split()]
    by_pid = {}
    for name, row_bytes, pid in records:
        by_pid.setdefault(pid, set()).add((name, int(row_bytes)))
    # four processes (two rounds), each tracing only its own variant's code
    assert len(by_pid) == 4, records
    assert sorted(len(v) for v in by_pid.values()) == [1, 1, 1, 1], records
    seen = sorted(next(iter(v)) for v in by_pid.values())
    assert [n for n, _ in seen] == ["columns", "columns", "rows", "rows"]
    assert all((rb == 0) == (n == "columns") for n, rb in seen)
    rounds = re.findall(r"round (\d) \((\w+) first\): .* columns / rows = ([0-9.]+)", out)
    assert [(r, first) for r, first, _ in rounds] == [("1", "rows"), ("2", "columns")], out
    assert re.search(r"columns / rows: [0-9.]+  \(lenet, batch 2, 2 rounds of 2 steps\)", out), out
    assert re.search(r"rounds' columns / rows: geometric mean [0-9.]+, 95% interval "
                     r"[0-9.]+-[0-9.]+: ", out), out
    losses = re.findall(r"first loss ([0-9.e+-]+), ([0-9.e+-]+)", out)
    assert len({round(float(v), 5) for pair in losses for v in pair}) == 1, out


def test_ab_step_names_the_variant_whose_process_failed(tmp_path):
    """A variant module that raises: the error names the variant and round, and carries
    the child's traceback, not a bare exit status."""
    variants = tmp_path / "variants.py"
    variants.write_text("def apply(name):\n"
                        "    if name == 'broken':\n"
                        "        raise ValueError('no such variant: broken')\n")
    res = ab_step(variants, "--steps", "1", "good", "broken", check=False)
    assert res.returncode != 0
    assert "variant 'broken' (round 1, lenet) failed" in res.stderr, res.stderr
    assert "ValueError: no such variant: broken" in res.stderr, res.stderr


def test_ab_step_forward_times_the_deploy_net(tmp_path):
    """--forward: each process builds the deploy net (TEST phase) and times its forward;
    no solver is made."""
    log = tmp_path / "made.txt"
    variants = tmp_path / "variants.py"
    variants.write_text(
        "import jcaffe\n"
        "def apply(name):\n"
        "    init = jcaffe.Net.__init__\n"
        "    def made(self, *args, **kwargs):\n"
        "        init(self, *args, **kwargs)\n"
        "        with open(%r, 'a') as f:\n"
        "            f.write('%%s:%%s\\n' %% (name, self.phase))\n"
        "    jcaffe.Net.__init__ = made\n"
        "    def no_solver(*args, **kwargs):\n"
        "        raise AssertionError('a solver was built')\n"
        "    jcaffe.get_solver = no_solver\n" % str(log))
    out = ab_step(variants, "--steps", "2", "--rounds", "1", "--forward", "a", "b").stdout
    import jcaffe
    assert sorted(log.read_text().split()) == ["a:%d" % jcaffe.TEST, "b:%d" % jcaffe.TEST]
    assert re.search(r"b / a: [0-9.]+  \(lenet deploy, batch 2, 1 rounds of 2 forwards\)",
                     out), out


def test_ab_step_interleave_alternates_the_two_processes_steps(tmp_path):
    """--interleave: a process per variant, both alive, set up one after the other (the
    first variant first in odd rounds), then their steps one by one, the first of each
    pair alternating; the interval is over the pairs."""
    log = tmp_path / "steps.txt"
    variants = tmp_path / "variants.py"
    variants.write_text(
        "import os\n"
        "from jcaffe.solver import Solver\n"
        "def apply(name):\n"
        "    step = Solver.step\n"
        "    def logged(self, *args, **kwargs):\n"
        "        with open(%r, 'a') as f:\n"
        "            f.write('%%s:%%d\\n' %% (name, os.getpid()))\n"
        "        return step(self, *args, **kwargs)\n"
        "    Solver.step = logged\n" % str(log))
    out = ab_step(variants, "--steps", "2", "--rounds", "2", "--interleave", "a", "b").stdout
    records = [line.split(":") for line in log.read_text().split()]
    assert len({pid for _, pid in records}) == 4, records          # two processes a round
    assert all(len({n for n, p in records if p == pid}) == 1 for _, pid in records)
    # each set up with its first call and two untimed ones, then two pairs of steps
    assert "".join(n for n, _ in records) == "aaabbbabba" + "bbbaaabaab", records
    assert re.search(r"b / a: [0-9.]+  \(lenet, batch 2, 2 rounds of 2 steps, interleaved\)",
                     out), out
    assert re.search(r"pairs' b / a: geometric mean [0-9.]+, 95% interval [0-9.]+-[0-9.]+: ",
                     out), out


def test_ab_step_interleave_names_the_variant_whose_process_failed(tmp_path):
    variants = tmp_path / "variants.py"
    variants.write_text("def apply(name):\n"
                        "    if name == 'broken':\n"
                        "        raise ValueError('no such variant: broken')\n")
    res = ab_step(variants, "--steps", "1", "--interleave", "good", "broken", check=False)
    assert res.returncode != 0
    assert "round 1, lenet: variant 'broken' exited with status 1 while setting up" \
        in res.stderr, res.stderr
    assert "ValueError: no such variant: broken" in res.stderr, res.stderr


def test_round_interval_is_a_t_interval_over_the_log_ratios():
    sys.path.insert(0, BENCH)
    import ab_step
    import numpy as np
    ratios = [0.9, 1.0, 1.1]
    mean, low, high = ab_step.round_interval(ratios)
    logs = np.log(ratios)
    half = 4.30 * logs.std(ddof=1) / np.sqrt(3)           # t(0.975, 2 df)
    np.testing.assert_allclose([mean, low, high],
                               np.exp([logs.mean(), logs.mean() - half, logs.mean() + half]))
    assert ab_step.verdict((mean, low, high), "a", "b").startswith("no difference")
    assert ab_step.verdict(ab_step.round_interval([0.94, 0.95, 0.96, 0.95]), "a", "b") == \
        "b faster"
    assert ab_step.verdict(ab_step.round_interval([1.05, 1.06, 1.04]), "a", "b") == "b slower"
    assert ab_step.round_interval([0.9]) is None
    assert ab_step.verdict(None, "a", "b") == "one round: no interval"
    # past the table, the normal quantile
    many = ab_step.round_interval([0.95, 1.05] * 40)
    logs = np.log([0.95, 1.05] * 40)
    assert np.isclose(np.log(many[2]) - logs.mean(), 1.96 * logs.std(ddof=1) / np.sqrt(80))


def test_the_engine_variants_each_switch_their_rule(monkeypatch):
    """benchmarks/variants_engine.py: each name changes the one setting it names (each
    restored after this test), and an unknown name lists the known ones."""
    import jax
    import pytest
    from jcaffe import engine
    from jcaffe.layers.vision import Convolution
    from jcaffe.solver import Solver
    sys.path.insert(0, BENCH)
    import variants_engine
    for owner, attr in ((Solver, "update_in_backward"), (Solver, "row_blocks_min_bytes"),
                        (Solver, "recycle_buffers"), (Solver, "history_pack_max_bytes"),
                        (engine.Segment, "ordered_backward"), (engine.Segment, "update_min_bytes"),
                        (engine.Segment, "channels_last"), (engine, "materialize"),
                        (Convolution, "SAME_XLA_MIN_CHANNELS")):
        monkeypatch.setattr(owner, attr, getattr(owner, attr))
    precision = jax.config.jax_default_matmul_precision
    try:
        variants_engine.apply("default")
        assert Solver.update_in_backward and engine.Segment.ordered_backward
        for name in ("update_at_end", "unordered", "caffe_order", "no_row_blocks"):
            variants_engine.apply(name)
        assert not Solver.update_in_backward and not engine.Segment.ordered_backward
        assert not engine.Segment.channels_last and Solver.row_blocks_min_bytes is None
        assert Solver.recycle_buffers and Solver.history_pack_max_bytes is None
        variants_engine.apply("no_recycle")
        variants_engine.apply("pack")
        assert not Solver.recycle_buffers and Solver.history_pack_max_bytes == 1 << 20
        assert engine.Segment.update_min_bytes > 0
        variants_engine.apply("wait_all")
        assert engine.Segment.update_min_bytes == 0
        variants_engine.apply("no_materialize")
        x = object()
        assert engine.materialize(x) is x
        variants_engine.apply("float32")
        assert jax.config.jax_default_matmul_precision == "highest"
        assert Convolution.SAME_XLA_MIN_CHANNELS == 32
        variants_engine.apply("rows_same_padded")
        assert Convolution.SAME_XLA_MIN_CHANNELS > 1 << 40
    finally:
        jax.config.update("jax_default_matmul_precision", precision)
    with pytest.raises(SystemExit, match="update_at_end"):
        variants_engine.apply("fast")
