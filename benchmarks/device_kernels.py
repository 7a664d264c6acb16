"""Read the traces of benchmarks/device_profile.py (off the device machine, or here):
per contender, kernels per call, the device's busy time and the span from the first
kernel to the last, per call, the busy time by kind of kernel and, with ``--layers``,
by the jcaffe layer each kernel's HLO instruction came from.

    python benchmarks/device_kernels.py DIR [--calls 5] [--layers 15]

DIR holds device_profile's ``trace_<net>_<mode>_<contender>`` folders (and its
``hlo_<net>_<mode>`` dump, which ``--layers`` reads). On a GPU the kernels are the
events of the process named /device:GPU:...; busy time well under the span means the
GPU waited: on the host (Python, dispatch) or between launches. On the CPU (no GPU in
the trace) they are XLA's thunks, each from its start to the executor's "end:" mark of
it: an Eigen convolution returns at once and runs on the thread pool beside the next
thunks. Where kernels overlap, each moment is shared equally among those in flight, so
the kinds' and layers' times add up to the busy time (on two cores, two kernels in
flight each get half of it, whatever each really used). Kinds are read off the kernel
names XLA and the libraries give (a fused transpose that also divides counts as
"divide+transpose").

By layer: each instruction's ``op_name`` metadata in the optimized HLO carries the name
scope jcaffe traces it under ("conv1.forward", "conv1.backward", "conv1.update": the
solver's update of the params conv1 owns). XLA drops it on some instructions it makes
(a weight gradient's convolution, the transposes before it): a fusion without its own
is named by the instructions it fuses, an instruction with none by its neighbours: by
its users' layer when that is an update (a weight gradient: "X.update" -> "X.backward")
or one of its operands' too, else "? A > B", the layers it lies between (A made its
input, B reads its output: a data gradient's convolution of layer C lies between the
backward above C and the one below). The rest (the pure JAX contender, a step's glue)
is "(other)".
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re


def kind(name):
    n = name.lower()
    if "memcpy" in n or "memset" in n:
        return "memcpy/memset"
    if any(k in n for k in ("xmma", "cudnn", "conv", "implicit", "fprop", "dgrad", "wgrad",
                            "sm90_")):
        return "convolution/library"
    if "gemm" in n or "cutlass" in n or n.startswith("dot"):
        return "gemm"
    if n.startswith("ynn_fusion") or n.startswith("xnn_fusion"):
        return "library fusion (YNNPACK/XNNPACK)"
    if "transpose" in n:
        return "divide+transpose" if "divide" in n else "transpose"
    if "reduce" in n or "reduction" in n:
        return "reduce"
    if "fusion" in n:
        return "fusion"
    return "other"


def _events(trace_dir):
    paths = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise SystemExit("%s: no perfetto_trace.json.gz under it (device_profile.py writes "
                         "one per contender)" % trace_dir)
    with gzip.open(paths[0]) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def device_events(trace_dir):
    """(the trace's kernels, "GPU" or "CPU"): the complete events on the GPU (the process
    named /device:GPU:...) or, in a trace without one, XLA CPU's thunks (the complete
    events naming their HLO instruction, ``args.hlo_op``), each lasting until its
    "end: <instruction>" event (an asynchronous thunk returns at once: the executor
    marks its completion so); a thunk that runs others inside it (a loop) is left out,
    its body's count."""
    events = _events(trace_dir)
    gpu = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
           and "GPU" in e.get("args", {}).get("name", "")}
    if gpu:
        return [e for e in events if e.get("ph") == "X" and e.get("pid") in gpu], "GPU"
    complete = sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"])
    thunks = [dict(e) for e in complete if "hlo_op" in e.get("args", {})]
    if not thunks:
        raise SystemExit("%s: neither GPU kernels nor XLA CPU thunks in the trace" % trace_dir)
    # a loop's or call's thunk runs its body's thunks inside it, on its thread: only
    # those count
    by_thread = collections.defaultdict(list)
    for e in thunks:
        by_thread[e["tid"]].append(e)
    inner = set()
    for run in by_thread.values():
        for e, after in zip(run, run[1:]):
            if after["ts"] < e["ts"] + e["dur"]:
                inner.add(id(e))
    thunks = [e for e in thunks if id(e) not in inner]
    started = collections.defaultdict(collections.deque)
    for e in thunks:
        started[e["name"]].append(e)
    for e in complete:          # the k-th end of an instruction ends its k-th start
        if e["name"].startswith("end: ") and started.get(e["name"][5:]):
            thunk = started[e["name"][5:]].popleft()
            thunk["dur"] = max(thunk["dur"], e["ts"] + e["dur"] - thunk["ts"])
    return thunks, "CPU"


def shares(events):
    """Each event's share of the wall time: every moment is divided equally among the
    events in flight then (on the CPU thunks overlap; on a GPU stream they do not, and
    each gets its own duration). The shares add up to the time anything ran."""
    edges = sorted({e["ts"] for e in events} | {e["ts"] + e["dur"] for e in events})
    # (events sorted by start; a sweep over the elementary intervals between edges)
    order = sorted(range(len(events)), key=lambda i: events[i]["ts"])
    out = [0.0] * len(events)
    active, k = set(), 0
    for a, b in zip(edges, edges[1:]):
        while k < len(order) and events[order[k]]["ts"] <= a:
            active.add(order[k])
            k += 1
        active = {i for i in active if events[i]["ts"] + events[i]["dur"] > a}
        for i in active:
            out[i] += (b - a) / len(active)
    return out


def summary(trace_dir, calls):
    """Per call: (kernels, busy time: the time any ran, span, {kind: its share of the
    busy time}, {kind: kernels})."""
    events, _ = device_events(trace_dir)
    busy = collections.Counter()
    count = collections.Counter()
    for e, share in zip(events, shares(events)):
        busy[kind(e["name"])] += share / calls
        count[kind(e["name"])] += 1 / calls
    span = (max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)) / calls
    return len(events) / calls, sum(busy.values()), span, busy, count


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\b([a-z\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^\s*%?([\w.\-]+) .*\{\s*$")
_SCOPE = re.compile(r"^(?:[\w\-]+\([^/]*\)/)*(.+?\.(?:forward|backward|update))(?:/|$)")


def layer_scope(op_name):
    """The jcaffe name scope in an op_name ("jit(step)/jit(iteration)/conv1.forward/..."
    -> "conv1.forward"; a layer name with '/' is kept whole), or None."""
    m = _SCOPE.match(op_name)
    return m.group(1) if m else None


def hlo_scopes(text):
    """{instruction: its layer scope or None} of an optimized HLO module's text."""
    own, calls, operands, members = {}, {}, {}, collections.defaultdict(list)
    computation = None
    for line in text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            c = _COMPUTATION.match(line)
            if c and "=" not in line.split("{")[0]:
                computation = c.group(1)
            continue
        name, rest = m.group(1), m.group(3)
        meta = re.search(r'op_name="([^"]*)"', line)
        own[name] = layer_scope(meta.group(1)) if meta else None
        called = re.search(r"\bcalls=%?([\w.\-]+)", line)
        if called:
            calls[name] = called.group(1)
        operands[name] = re.findall(r"%([\w.\-]+)", rest.split("),")[0])
        members[computation].append(name)
    scopes = {}
    for name, scope in own.items():
        if scope is None and name in calls:     # a fusion: what it fuses, most of it
            inner = collections.Counter(own[i] for i in members.get(calls[name], ())
                                        if own.get(i))
            scope = inner.most_common(1)[0][0] if inner else None
        scopes[name] = scope
    users = collections.defaultdict(list)
    for name, ops in operands.items():
        for o in ops:
            users[o].append(name)

    def near(name, links, seen):
        """The scopes met first along ``links`` (users or operands), through
        instructions that have none."""
        out = []
        for other in links.get(name, ()):
            if other not in seen:
                seen.add(other)
                out += [scopes[other]] if scopes.get(other) else near(other, links, seen)
        return out
    found = {}
    for name in scopes:
        if scopes[name] is None:
            # A weight gradient (its user is its layer's update: "X.update" ->
            # "X.backward"), or the layer its operands and users agree on; else the
            # layers around it ("? A > B": a data gradient's convolution lies between
            # the backward that made its input and the one that reads its output).
            user = next(iter(near(name, users, {name})), None)
            if user and user.endswith(".update"):
                found[name] = user[:-len(".update")] + ".backward"
                continue
            ops = near(name, operands, {name})
            if user and user in ops:
                found[name] = user
            elif user or ops:
                found[name] = "? %s > %s" % (ops[0] if ops else "", user or "")
    scopes.update(found)
    return scopes


def _fusion_name(kernel):
    """A GPU kernel's HLO instruction where its trace gives no hlo_op: its name, with
    the fusion's '.3' written '_3'."""
    return re.sub(r"_(\d+)$", r".\1", kernel)


def by_layer(trace_dir, hlo_dir, calls):
    """{layer scope or "(other)": its share of the busy time per call}, each kernel named
    through the dumped module (under ``hlo_dir``) that holds the most of their
    instructions."""
    events, _ = device_events(trace_dir)
    ops = collections.Counter(e.get("args", {}).get("hlo_op") or e["name"] for e in events)
    best, best_hits = {}, -1
    for path in glob.glob(os.path.join(hlo_dir, "*after_optimizations.txt")):
        with open(path) as f:
            scopes = hlo_scopes(f.read())
        hits = sum(n for op, n in ops.items()
                   if op in scopes or _fusion_name(op) in scopes)
        if hits > best_hits:
            best, best_hits = scopes, hits
    out = collections.Counter()
    for e, share in zip(events, shares(events)):
        op = e.get("args", {}).get("hlo_op") or e["name"]
        scope = best.get(op) or best.get(_fusion_name(op))
        out[scope or "(other)"] += share / calls
    return out


def hlo_dir(trace_dir):
    """device_profile's HLO dump beside ``trace_dir``: trace_<net>_<mode>_<contender> ->
    hlo_<net>_<mode> (the net's name may hold "_": cifar10_full_sigmoid_bn)."""
    parent, name = os.path.split(os.path.normpath(trace_dir))
    return os.path.join(parent, "hlo_" + name[len("trace_"):].rsplit("_", 1)[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--calls", type=int, default=5, help="device_profile's --calls")
    ap.add_argument("--layers", type=int, default=0, metavar="N",
                    help="also the N layer scopes with the most busy time")
    opts = ap.parse_args()
    traces = sorted(glob.glob(os.path.join(opts.dir, "trace_*")))
    if not traces:
        raise SystemExit("%s: no trace_* folders (benchmarks/device_profile.py --out DIR)"
                         % opts.dir)
    for trace_dir in traces:
        kernels, busy, span, by_kind, count = summary(trace_dir, opts.calls)
        device = device_events(trace_dir)[1]
        print("%-36s %s kernels/call %5.0f  busy %6.2f ms  span %6.2f ms" % (
            os.path.basename(trace_dir)[6:], device, kernels, busy / 1000, span / 1000))
        for k, us in by_kind.most_common():
            print("    %-34s %8.2f ms  %5.0f kernels" % (k, us / 1000, count[k]))
        if opts.layers:
            layers = by_layer(trace_dir, hlo_dir(trace_dir), opts.calls)
            print("  by layer (busy ms per call):")
            for scope, us in layers.most_common(opts.layers):
                print("    %-34s %8.2f ms" % (scope, us / 1000))


if __name__ == "__main__":
    main()
