"""The jcaffe command line tool: flags, train/resume/finetune, test, time, errors, SIGINT."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jcaffe
from jcaffe import cli
from jcaffe.proto import caffe_pb2
from netutil import LogLines
from test_solver import DROPOUT_NET

SOLVER = """net: "net.prototxt"
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
max_iter: %(max_iter)d
display: %(display)d
snapshot: %(snapshot)d
snapshot_prefix: "out/drop"
random_seed: 3
test_iter: 1
test_interval: 1000000
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text(DROPOUT_NET)
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_solver(path, max_iter=6, display=2, snapshot=0):
    path.write_text(SOLVER % {"max_iter": max_iter, "display": display, "snapshot": snapshot})
    return str(path)


def test_flag_styles():
    for argv in (["train", "-solver", "s.pt"], ["train", "-solver=s.pt"], ["--solver", "s.pt", "train"],
                 ["train", "--solver=s.pt"]):
        positional, flags, given = cli.parse_flags(argv)
        assert positional == ["train"] and flags["solver"] == "s.pt" and given == {"solver"}
    _, flags, _ = cli.parse_flags(["test", "-iterations", "7", "--level=2"])
    assert flags["iterations"] == 7 and flags["level"] == 2 and flags["sigint_effect"] == "stop"


def test_train_resume_finetune_and_test(workdir):
    solver = write_solver(workdir / "solver.prototxt", max_iter=6, snapshot=4)
    with LogLines() as lines:
        assert cli.main(["train", "-solver", solver]) == 0
    assert "Optimization Done." in lines.lines and "Starting Optimization" in lines.lines
    assert sorted(os.listdir(workdir / "out")) == [
        "drop_iter_4.caffemodel", "drop_iter_4.solverstate",
        "drop_iter_6.caffemodel", "drop_iter_6.solverstate"]
    straight = jcaffe.Net("net.prototxt", jcaffe.TEST, weights="out/drop_iter_6.caffemodel")
    os.rename("out/drop_iter_6.caffemodel", "out/straight.caffemodel")
    # resume from 4 to 6: same weights as straight through
    assert cli.main(["train", "--solver", solver, "--snapshot=out/drop_iter_4.solverstate"]) == 0
    resumed = jcaffe.Net("net.prototxt", jcaffe.TEST, weights="out/drop_iter_6.caffemodel")
    for name in ("ip1", "ip2"):
        np.testing.assert_allclose(resumed.params[name][0].data, straight.params[name][0].data,
                                   rtol=1e-6)
    # -iterations overrides max_iter; -weights a,b finetunes
    with LogLines() as lines:
        assert cli.main(["train", "-solver", solver, "-iterations", "2",
                         "-weights", "out/straight.caffemodel,out/drop_iter_4.caffemodel"]) == 0
    assert "Finetuning from out/straight.caffemodel" in lines.lines
    assert "Finetuning from out/drop_iter_4.caffemodel" in lines.lines
    assert os.path.exists("out/drop_iter_2.solverstate")
    with LogLines() as lines:
        assert cli.main(["test", "-model", "net.prototxt", "-weights", "out/straight.caffemodel",
                         "-iterations", "3"]) == 0
    assert sum(l.startswith("Batch ") and ", loss = " in l for l in lines.lines) == 3
    assert any(l.startswith("loss = ") and "(* 1 = " in l for l in lines.lines)


def test_time_and_device_query(workdir):
    with LogLines() as lines:
        assert cli.main(["time", "-model", "net.prototxt", "-iterations", "2"]) == 0
    text = "\n".join(lines.lines)
    for expected in ("ip1\tforward: ", "ip1\tbackward: ", "Average Forward pass: ",
                     "Average Backward pass: ", "Average Forward-Backward: ", "Total Time: ",
                     "*** Benchmark ends ***"):
        assert expected in text, expected
    with LogLines() as lines:
        assert cli.main(["device_query"]) == 0
    assert any(l.startswith("Platform:") for l in lines.lines)


def test_time_charges_no_layer_with_the_warm_up(tmp_path, monkeypatch):
    """`jcaffe time` compiles every one-layer call before it times them; what those
    calls dispatched is waited for first, so the first layer timed (a DummyData, whose
    forward queues behind it) is not charged with the warm-up's backward: its forward
    takes a small part of the big InnerProduct's backward (it took the whole warm-up
    before, LRCN's DummyData 692 ms a forward over 2 iterations, 1.4 ms since)."""
    net = """
layer { name: "data" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 256 dim: 4096 } shape { dim: 256 dim: 4096 }
                           data_filler { type: "constant" value: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z"
        inner_product_param { num_output: 4096 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "y" top: "loss" }
"""
    (tmp_path / "big.prototxt").write_text(net)
    monkeypatch.chdir(tmp_path)
    with LogLines() as lines:
        assert cli.main(["time", "-model", "big.prototxt", "-iterations", "1"]) == 0
    ms = {}
    for line in lines.lines:
        for kind in ("forward", "backward"):
            if "\t%s: " % kind in line:
                name = line.split("\t")[0].strip()
                ms[(name, kind)] = float(line.split(": ")[-1].split()[0])
    assert ms[("data", "forward")] < ms[("ip", "backward")] / 3, ms


def test_time_hands_freed_memory_back_between_layers(workdir, monkeypatch):
    """`jcaffe time` returns the heap's freed pages to the system after every one-layer
    call, warm-up and timed (outside the timed interval): without it glibc kept what
    each layer's fresh tops and diffs left behind (ResNet-101-v2 at batch 32 was killed
    for memory at 24 GB)."""
    cli._release_freed()                    # (glibc's malloc_trim, or nothing elsewhere)
    calls = []
    monkeypatch.setattr(cli, "_release_freed", lambda: calls.append(time.perf_counter()))
    with LogLines():
        assert cli.main(["time", "-model", "net.prototxt", "-iterations", "2"]) == 0
    layers = len(jcaffe.Net("net.prototxt", jcaffe.TRAIN)._slots)
    assert len(calls) == 2 * layers * (1 + 2)


def test_time_runs_the_whole_net_once_untimed_before_timing_it(workdir, monkeypatch):
    """Caffe's `time` times right after its warm-up pass; jcaffe's runs its one-layer
    programs in between, so it passes the whole net once more, untimed, just before the
    timed iterations (LeNet's first timed one read 14.5-24.2 ms without it, 11.9-18.8
    with it, most later ones 10-12)."""
    events = []
    whole_pass = cli._whole_pass
    monkeypatch.setattr(cli, "_release_freed", lambda: events.append("layer"))
    monkeypatch.setattr(cli, "_whole_pass",
                        lambda net, n: events.append("whole") or whole_pass(net, n))
    with LogLines() as lines:
        assert cli.main(["time", "-model", "net.prototxt", "-iterations", "2"]) == 0
    assert events[-4:] == ["layer", "whole", "whole", "whole"], events
    assert events.count("whole") == 3
    assert sum(l.startswith("Iteration: ") for l in lines.lines) == 2


def test_cli_errors(workdir, capsys):
    assert cli.main(["train"]) == 2
    assert "Need a solver definition" in capsys.readouterr().err
    assert cli.main(["train", "-solver", "s", "-snapshot", "a", "-weights", "b"]) == 2
    assert cli.main(["train", "-bogus", "1"]) == 2
    assert "unknown command line flag 'bogus'" in capsys.readouterr().err
    assert cli.main(["fly"]) == 2
    solver = write_solver(workdir / "solver.prototxt")
    with LogLines() as lines:
        assert cli.main(["train", "-solver", solver, "-snapshot", "out/none.solverstate"]) == 1
        assert cli.main(["train", "-solver", "missing.prototxt"]) == 1
        assert cli.main(["train", "-solver", solver, "-sigint_effect", "explode"]) == 2
    assert any("out/none.solverstate" in l and "cannot read" in l for l in lines.lines)
    assert any("missing.prototxt" in l for l in lines.lines)


def test_sigint_stops_with_a_valid_snapshot(workdir):
    solver = write_solver(workdir / "solver.prototxt", max_iter=10 ** 8, display=200)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "jcaffe.cli", "train", "-solver", solver],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    for line in proc.stderr:   # wait until training runs
        if "] Iteration 200 (" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, rest
    assert "Optimization stopped early." in rest
    states = [f for f in os.listdir("out") if f.endswith(".solverstate")]
    assert len(states) == 1
    state = caffe_pb2.SolverState()
    with open(os.path.join("out", states[0]), "rb") as f:
        state.ParseFromString(f.read())
    assert state.iter >= 200 and os.path.exists(state.learned_net)
    assert states[0] == "drop_iter_%d.solverstate" % state.iter


def test_sigint_snapshot_effect_then_sighup_stop(workdir):
    solver = write_solver(workdir / "solver.prototxt", max_iter=10 ** 8, display=200)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "jcaffe.cli", "train", "-solver", solver,
                             "-sigint_effect", "snapshot", "-sighup_effect", "stop"],
                            stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "] Iteration 200 (" in line:
            proc.send_signal(signal.SIGINT)
        if "Snapshotting solver state" in line:
            proc.send_signal(signal.SIGHUP)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, "".join(seen) + rest
    assert "Optimization stopped early." in rest
    states = sorted(f for f in os.listdir("out") if f.endswith(".solverstate"))
    assert len(states) == 2, states      # one for SIGINT, one when SIGHUP stopped training


def test_off_the_cpu_the_log_says_float32_products_are_not_float32(monkeypatch, caplog):
    """JAX's default precision is TF32 on recent NVIDIA GPUs (2.9e-4 relative error on an
    H200): the command line says so, with the switch, unless a precision was chosen."""
    import logging
    import jax
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with caplog.at_level(logging.INFO, logger="jcaffe"):
        cli._log_precision()
        assert "JAX_DEFAULT_MATMUL_PRECISION=highest" in caplog.text and "GPU" in caplog.text
        caplog.clear()
        with jax.default_matmul_precision("highest"):
            cli._log_precision()
        monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
        cli._log_precision()
    assert "precision" not in caplog.text


@pytest.fixture
def restore_mode():
    import jax
    from jcaffe import common
    mode, device = common.mode(), jax.config.jax_default_device
    yield
    common._state["mode"] = mode
    jax.config.update("jax_default_device", device)


def test_train_reads_solver_mode_and_device_id_when_no_gpu_flag(workdir, monkeypatch, restore_mode):
    """As Caffe's train: solver_mode CPU keeps training on the CPU; GPU picks device_id; a
    -gpu flag wins over both; GPU where JAX sees no accelerator warns and trains on the CPU."""
    import jax
    from google.protobuf import text_format
    from jcaffe import common
    solver = workdir / "solver.prototxt"
    write_solver(solver, max_iter=1)
    solver.write_text(solver.read_text() + "solver_mode: CPU\n")
    common.set_mode_gpu()
    with LogLines() as lines:
        assert cli.main(["train", "-solver", str(solver)]) == 0
    assert common.mode() == "CPU" and jax.config.jax_default_device.platform == "cpu"
    assert any(l.startswith("Use CPU (") for l in lines.lines), lines.lines

    def device_flag(text, *argv):
        """The -gpu value train goes on with, after the solver's solver_mode."""
        param = caffe_pb2.SolverParameter()
        text_format.Parse(text, param)
        _, flags, given = cli.parse_flags(["train"] + list(argv))
        cli._solver_mode(param, flags, given)
        return flags["gpu"]
    with LogLines() as lines:
        assert device_flag("solver_mode: GPU") == ""
    assert any("solver_mode: GPU, but JAX sees no accelerator" in l for l in lines.lines)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert device_flag("solver_mode: GPU device_id: 2") == "2"
    assert device_flag("solver_mode: GPU") == "0"
    assert device_flag("device_id: 2") == ""           # no solver_mode: JAX's default device
    common.set_mode_gpu()
    assert device_flag("solver_mode: CPU", "-gpu", "1") == "1" and common.mode() == "GPU"
    assert device_flag("solver_mode: GPU", "-devices", "2") == ""
