"""Read the GPU traces of benchmarks/device_profile.py (off the device machine): per
contender, kernels per call, the GPU's busy time and the span from the first kernel to
the last, per call, and the busy time by kind of kernel.

    python benchmarks/device_kernels.py DIR [--calls 5]

DIR holds device_profile's ``trace_<net>_<mode>_<contender>`` folders. Busy time well
under the span means the GPU waited: on the host (Python, dispatch) or between
launches. Kinds are read off the kernel names XLA and the libraries give (a fused
transpose that also divides counts as "divide+transpose").
"""
import argparse
import collections
import glob
import gzip
import json
import os


def kind(name):
    n = name.lower()
    if "memcpy" in n or "memset" in n:
        return "memcpy/memset"
    if any(k in n for k in ("xmma", "cudnn", "conv", "implicit", "fprop", "dgrad", "wgrad",
                            "sm90_")):
        return "convolution/library"
    if "gemm" in n or "cutlass" in n:
        return "gemm"
    if "transpose" in n:
        return "divide+transpose" if "divide" in n else "transpose"
    if "reduce" in n or "reduction" in n:
        return "reduce"
    if "fusion" in n:
        return "fusion"
    return "other"


def device_events(trace_dir):
    """The trace's complete events on the GPU (the process named /device:GPU:...)."""
    path = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    gpu = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
           and "GPU" in e.get("args", {}).get("name", "")}
    return [e for e in events if e.get("ph") == "X" and e.get("pid") in gpu]


def summary(trace_dir, calls):
    events = device_events(trace_dir)
    busy = collections.Counter()
    count = collections.Counter()
    for e in events:
        busy[kind(e["name"])] += e["dur"] / calls
        count[kind(e["name"])] += 1 / calls
    span = (max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)) / calls
    return len(events) / calls, sum(busy.values()), span, busy, count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--calls", type=int, default=5, help="device_profile's --calls")
    opts = ap.parse_args()
    for trace_dir in sorted(glob.glob(os.path.join(opts.dir, "trace_*"))):
        kernels, busy, span, by_kind, count = summary(trace_dir, opts.calls)
        print("%-36s kernels/call %5.0f  busy %6.2f ms  span %6.2f ms" % (
            os.path.basename(trace_dir)[6:], kernels, busy / 1000, span / 1000))
        for k, us in by_kind.most_common():
            print("    %-20s %6.2f ms  %5.0f kernels" % (k, us / 1000, count[k]))


if __name__ == "__main__":
    main()
