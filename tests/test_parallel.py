"""Data-parallel training (jcaffe.parallel): N devices with batch b match one device with
batch N*b; two processes on localhost (jax.distributed, gloo) match one process with the
combined batch; snapshots restore on another device count; bad input gives clear errors.

The pytest process sees one CPU device, so the multi-device runs happen in subprocesses
(tests/parallel_worker.py) with XLA_FLAGS=--xla_force_host_platform_device_count=N. They
all start together when the first test of this module asks for them, and run concurrently
with each other and with the in-process tests; every subprocess has a timeout and is
killed if it outlives it.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import jcaffe
from jcaffe import cli
from jcaffe.errors import DeviceError
from jcaffe.parallel import init_distributed
from netutil import LogLines
import parallel_worker as worker

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TIMEOUT = 240       # seconds for any one subprocess (a loaded 2-core box is slow)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices, **extra):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=%d" % devices
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    for key in [k for k in env if k.startswith("JCAFFE_")]:
        del env[key]
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Runs:
    """The subprocesses, started together; ``result(name)`` waits for one of them."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = {}
        self.ended = {}
        solver = os.path.join(tmp, "solver.prototxt")
        with open(os.path.join(tmp, "net.prototxt"), "w") as f:
            f.write(worker.LENET % {"n": worker.BATCH})
        with open(solver, "w") as f:
            f.write('net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 2\n')
        worker_py = os.path.join(HERE, "parallel_worker.py")
        self._start("local", [worker_py, "local", os.path.join(tmp, "local.json")], _env(4))
        port = _free_port()
        for pid in (0, 1):
            self._start("dist%d" % pid, [worker_py, "dist", os.path.join(tmp, "dist%d.npz" % pid)],
                        _env(2, JCAFFE_COORDINATOR="127.0.0.1:%d" % port, JCAFFE_NUM_PROCESSES=2,
                             JCAFFE_PROCESS_ID=pid, JCAFFE_DISTRIBUTED_TIMEOUT=TIMEOUT))
        # nobody listens on these ports: process 1 cannot reach its coordinator, and process
        # 0 waits for a process 1 that never comes
        cmd = ["-m", "jcaffe.cli", "train", "-solver", solver, "-num_processes", "2",
               "-distributed_timeout", "3", "-coordinator"]
        self._start("unreachable", cmd + ["127.0.0.1:%d" % _free_port(), "-process_id", "1"],
                    _env(1))
        self._start("lonely", cmd + ["127.0.0.1:%d" % _free_port(), "-process_id", "0"], _env(1))

    def _start(self, name, args, env):
        out = open(os.path.join(self.tmp, name + ".log"), "w+")
        proc = subprocess.Popen([sys.executable] + args, cwd=self.tmp, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        self.procs[name] = (proc, out, time.monotonic())
        threading.Thread(target=self._note_end, args=(name, proc), daemon=True).start()

    def _note_end(self, name, proc):
        proc.wait()
        self.ended[name] = time.monotonic()

    def result(self, name):
        """(return code, seconds it ran, its output)."""
        proc, out, start = self.procs[name]
        try:
            rc = proc.wait(timeout=max(1.0, TIMEOUT - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout"
        out.seek(0)
        return rc, self.ended.get(name, time.monotonic()) - start, out.read()

    def close(self):
        for proc, out, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = Runs(str(tmp_path_factory.mktemp("parallel")))
    yield runs
    runs.close()


@pytest.fixture(scope="module")
def local(runs):
    rc, _, output = runs.result("local")
    assert rc == 0, output[-4000:]
    with open(os.path.join(runs.tmp, "local.json")) as f:
        return json.load(f), output


# ---------------------------------------------------------------------------
# in the pytest process (one device); the first test starts the subprocesses, which
# run meanwhile

def test_one_device_data_parallel_matches_the_ordinary_solver(runs):
    plain, par = worker.lenet_solver(4), worker.lenet_solver(4, devices=1)
    assert plain.parallel is None and par.parallel.num_devices == 1
    for it in range(2):
        for s in (plain, par):
            worker.feed(s, it, slice(0, 4))
            s.step(1)
    for a, b in zip(plain.net._learnable, par.net._learnable):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-7)


def test_debug_info_leaves_data_parallel_training_one_compiled_step(runs):
    """Solver debug_info makes the train net run layer by layer on display iterations;
    data-parallel training, which has no such path, keeps its one compiled step."""
    param = worker.solver_param(worker.LENET, 4, 1)
    param.display, param.debug_info = 1, True
    par = jcaffe.get_solver(param, devices=1)
    worker.feed(par, 0, slice(0, 4))
    par.step(1)
    assert par.iter == 1 and not par.net.debug_info


def test_more_devices_than_this_process_has():
    with pytest.raises(DeviceError, match=r"asked for 2 device\(s\); this process sees 1"):
        worker.lenet_solver(2, devices=2)
    with pytest.raises(DeviceError, match="device 3 does not exist"):
        worker.lenet_solver(2, devices=[3])
    with pytest.raises(DeviceError, match="bad device list"):
        worker.lenet_solver(2, devices="0,a")


def test_cli_gpu_7_on_a_one_device_machine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(worker.LENET % {"n": 2})
    (tmp_path / "s.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\n'
                                         'max_iter: 1\n')
    for flags in (["-gpu", "7"], ["-gpu", "0,7"], ["-devices", "7"]):
        with LogLines() as lines:
            assert cli.main(["train", "-solver", "s.prototxt"] + flags) == 1
        assert any("device 7 does not exist; this process sees 1 device(s)" in l or
                   "asked for 7 device(s); this process sees 1 device(s)" in l
                   for l in lines.lines), lines.lines[-3:]
    assert cli.main(["train", "-solver", "s.prototxt", "-gpu", "0,1", "-devices", "2"]) == 2


def test_cli_device_flags_choose_the_solver_devices():
    def devices(argv):
        _, flags, given = cli.parse_flags(argv)
        return cli._train_devices(flags, given, distributed=False)
    assert devices(["-gpu", "all"]) == "all"
    assert devices(["-gpu", "0,1"]) == "0,1"
    assert devices(["-devices", "3"]) == 3
    assert devices([]) is None


def test_init_distributed_checks_its_arguments(monkeypatch):
    for key in ("JCAFFE_COORDINATOR", "JCAFFE_NUM_PROCESSES", "JCAFFE_PROCESS_ID"):
        monkeypatch.delenv(key, raising=False)
    assert init_distributed() is False          # nothing asked for: one process
    with pytest.raises(DeviceError, match=r"missing: num_processes .*process_id"):
        init_distributed("127.0.0.1:1234")
    monkeypatch.setenv("JCAFFE_NUM_PROCESSES", "2")
    monkeypatch.setenv("JCAFFE_PROCESS_ID", "5")
    with pytest.raises(DeviceError, match=r"process_id must be in 0..1"):
        init_distributed("127.0.0.1:1234")
    with pytest.raises(DeviceError, match="host:port"):
        init_distributed("localhost", 2, 0)
    with pytest.raises(DeviceError, match="must be an integer"):
        init_distributed("127.0.0.1:1234", "two", 0)
    # this process's devices are up: too late to join a distributed run
    import jax
    assert jax.devices()
    with pytest.raises(DeviceError, match="before JAX starts its devices"):
        init_distributed("127.0.0.1:1234", 2, 0)


# ---------------------------------------------------------------------------
# four forced host devices in one process

def test_four_devices_match_one_device_with_four_times_the_batch(local):
    res, _ = local
    assert res["devices"] == 4
    np.testing.assert_allclose(res["losses_4"], res["losses_1"], rtol=1e-5)
    assert res["params_diff_4_vs_1"] < 1e-5
    assert res["iter_size_diff"] < 1e-5          # iter_size 2 accumulates on each device first
    # the Input blob holds the process's whole batch; the other blobs one device's share
    assert res["input_shape_4"] == [4 * worker.BATCH, 1, 12, 12]
    assert res["root_shape_4"] == [worker.BATCH, 10]


def test_params_identical_on_every_device(local):
    res, _ = local
    assert res["replicas"] == 4 and res["replicas_identical"]


def test_snapshot_restores_on_another_device_count(local):
    res, _ = local
    assert res["restored_on_2_diff"] < 1e-5


def test_python_data_source_feeds_each_device_its_own_batch(local):
    res, _ = local
    assert res["source_diff"] < 1e-6
    assert res["source_root_shape"] == [worker.BATCH, 3]


def test_recurrent_state_is_carried_per_device(local):
    """Two devices, each fed 2 streams of its own by a data source, carry each its own
    h_T/c_T from step to step: the same trajectory as one device with all 4 streams
    (whose first 2 are the root device's)."""
    res, _ = local
    assert res["stream_state_nonzero"]
    assert res["stream_diff"] < 1e-5
    assert res["stream_state_diff"] < 1e-5
    # fed by Input blobs, split along time: said at setup (cont through a TanH here)
    assert res["time_split_warning"] == [
        "Data-parallel training: LSTM layer 'lstm' reads its sequence indicators ('cont', "
        "#timesteps x #streams) from Input blobs, which the devices split along their first "
        "axis: each device gets timesteps of all streams, not sequences of its own as each "
        "of Caffe's solvers read. Feed the net from a data source layer (each device its "
        "own batch) instead."]


def test_lmdb_data_layer_gives_each_device_its_own_batch(local):
    # 4 devices x batch_size 2 read the same 8 records per step as 1 device x 8
    res, _ = local
    assert res["lmdb_diff"] < 1e-5
    assert res["lmdb_root_shape"] == [2, 1, 2, 3]


def test_errors_in_the_multi_device_process(local):
    res, output = local
    assert "cannot share evenly" in res["error_not_divisible"]
    assert "'data' has 3 rows" in res["error_not_divisible"]
    assert "asked for 7 device(s); this process sees 4 device(s)" in res["error_too_many"]
    assert "device 7 does not exist; this process sees 4 device(s)" in res["error_bad_id"]
    assert "Python layer 'ident'" in res["error_middle_python"]
    assert res["cli_rc"] == {"-devices 4": 0, "-gpu 0,7": 1, "-devices 9": 1}
    assert "Data-parallel training on 4 device(s)" in output
    assert "DeviceError: asked for 9 device(s)" in output


# ---------------------------------------------------------------------------
# two processes on localhost, two devices each

def test_two_processes_train_together_and_match_one_process(runs):
    single = worker.lenet_solver(8)     # one process, one device, the combined batch of 8
    losses = worker.train(single, 0, worker.ITERS)
    ref = jcaffe.get_solver(worker.solver_param(worker.SHARDED_NET, 8))
    ref.step(3)
    sharded_reference = np.concatenate([b.data.ravel() for b in ref.net._learnable])
    results = [runs.result("dist%d" % pid) for pid in (0, 1)]
    for rc, _, output in results:
        assert rc == 0, output[-4000:]
    a, b = (np.load(os.path.join(runs.tmp, "dist%d.npz" % pid)) for pid in (0, 1))
    assert list(a["devices"]) == [4, 2]
    n = len([k for k in a.files if k.startswith("arr_")])
    for i in range(n):   # bit-identical params on both processes
        np.testing.assert_array_equal(a["arr_%d" % i], b["arr_%d" % i])
    assert a["replicas_identical"] and b["replicas_identical"]
    np.testing.assert_allclose(a["losses"], losses, rtol=1e-5)
    for i, blob in enumerate(single.net._learnable):
        np.testing.assert_allclose(a["arr_%d" % i], blob.data, rtol=1e-5, atol=1e-6)
    # a source layer with set_shard: each process reads its own strided shard, and
    # together they read what one process with the combined batch reads
    assert list(a["shard"]) == [0, 2] and list(b["shard"]) == [1, 2]
    np.testing.assert_array_equal(a["sharded"], b["sharded"])
    np.testing.assert_allclose(a["sharded"], sharded_reference, rtol=1e-5, atol=1e-6)
    # the snapshot is written once, by process 0
    assert bool(a["wrote_snapshot"]) and not bool(b["wrote_snapshot"])
    assert sorted(f for f in os.listdir(runs.tmp) if f.startswith("dist_iter")) == [
        "dist_iter_4.caffemodel", "dist_iter_4.solverstate"]


def test_unreachable_coordinator_is_a_bounded_clear_error(runs):
    rc, seconds, output = runs.result("unreachable")
    assert rc == 1, output[-3000:]
    assert "is not reachable" in output and "after waiting 3 s" in output
    assert seconds < 60
    rc, seconds, output = runs.result("lonely")
    assert rc == 1, output[-3000:]
    assert "did not start within 3 s" in output
    assert seconds < 60
