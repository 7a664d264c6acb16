"""The lent-GPU scripts (benchmarks/device_*): they run only on such a machine, so what
can be checked here is that the shell script parses and that the trace reader counts
what a trace holds."""
import gzip
import json
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import device_kernels  # noqa: E402


def test_device_check_script_parses():
    subprocess.run(["bash", "-n", os.path.join(BENCH, "device_check.sh")], check=True)


def test_device_kernels_counts_the_gpu_events_of_each_call(tmp_path):
    """Two calls: the GPU's kernels (by kind, busy time, span per call); the host's events
    and metadata are left out."""
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/host:CPU"}}]
    kernels = [("sm90_xmma_fprop_implicit_gemm", 0, 100), ("loop_add_fusion", 150, 50),
               ("input_divide_transpose_fusion_3", 250, 30), ("MemcpyD2H", 290, 10),
               ("sm90_xmma_fprop_implicit_gemm", 1000, 100), ("loop_add_fusion", 1150, 50),
               ("input_divide_transpose_fusion_3", 1250, 30), ("MemcpyD2H", 1290, 10)]
    events = meta + [{"ph": "X", "pid": 1, "tid": 14, "ts": ts, "dur": dur, "name": name}
                     for name, ts, dur in kernels]
    events.append({"ph": "X", "pid": 7, "tid": 3, "ts": 0, "dur": 5000, "name": "python"})
    folder = tmp_path / "trace_net_train_jcaffe" / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    count, busy, span, by_kind, _ = device_kernels.summary(str(tmp_path / "trace_net_train_jcaffe"),
                                                           calls=2)
    assert count == 4 and busy == 190 and span == 650
    assert by_kind == {"convolution/library": 100, "fusion": 50, "divide+transpose": 30,
                       "memcpy/memset": 10}
