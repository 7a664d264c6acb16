"""Timing harness shared by the benchmark scripts.

Each script defines contenders: ``name -> setup()``, where ``setup`` builds the
model and returns ``run()``, one call of the measured operation that returns only
when its result is computed (``block_until_ready`` / torch's eager completion).

* The first call is timed on its own: "compile" (tracing + XLA compilation for
  JAX contenders; the first eager step for torch). So is the second (the first
  warm-up call): a contender may compile a second program there (jcaffe's deploy
  forward: its slim program, which returns only the outputs).
* Then ``warmup`` untimed calls each, and ``repeats`` timed calls, interleaved
  round-robin across contenders, so a change of load on a shared machine hits
  all of them alike. Each timed call follows one untimed call of the same
  contender, which starts once the previous contender's threads are idle
  (``quiesce``). Reported: median, min, max (ms).
* Peak resident memory: each contender again in its own subprocess
  (``--rss-of NAME``: setup + first call + ``RSS_CALLS - 1`` calls), VmHWM of that process.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Calls in a --rss-of process: the first (compilation) and five more. A training process
# runs for many steps: a heap that grows from step to step (jcaffe's did, until its
# step's residuals were recycled: CaffeNet 1360 MB after the first step, 1415 after the
# fifth) must show in the peak, which one more call did not show.
RSS_CALLS = 6


def _set_threads(contenders):
    """Same thread budget for everyone: all cores of this machine. PyTorch is imported
    only where a PyTorch contender runs: its import alone is about 225 MB resident,
    which the peak RSS of a JAX contender's own process must not include."""
    if not any("PyTorch" in name for name in contenders):
        return
    n = os.cpu_count() or 1
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass


def quiesce(window=0.002, limit=0.25):
    """Wait (at most ``limit`` s) until this process's threads stop using the CPU.

    PyTorch's OpenMP threads spin after each parallel region: measured after a LeNet
    forward, about 10 ms of CPU time over the next 8 ms, i.e. both cores of this
    machine. Whatever runs next in the same process loses them (jcaffe's LeNet forward:
    8.3 ms right after PyTorch, 5.8 ms on its own)."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        cpu = time.process_time()
        time.sleep(window)
        if time.process_time() - cpu < 0.1 * window:
            return


def measure(contenders, warmup, repeats, log=print):
    """{name: {"compile_s", "second_s", "median_ms", "min_ms", "max_ms", "times_ms"}}
    (``second_s``: the second call, the first of the ``warmup``; None without warm-up)."""
    runs, out = {}, {}
    for name, setup in contenders.items():
        t0 = time.perf_counter()
        run = setup()
        t1 = time.perf_counter()
        run()
        t2 = time.perf_counter()
        second = None
        for _ in range(warmup):
            run()
            if second is None:
                second = time.perf_counter() - t2
        runs[name] = run
        out[name] = {"setup_s": t1 - t0, "compile_s": t2 - t1, "second_s": second,
                     "times_ms": []}
        log("  %-28s setup %.2fs, first call %.2fs, second %s s" % (
            name, t1 - t0, t2 - t1, second_call(out[name])))
    # Interleaved, the order rotating every repeat, and each timed call after quiesce():
    # a contender that ran right after PyTorch would pay for its OpenMP threads still
    # spinning.
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run = runs[name]
            quiesce()
            run()           # untimed: the timed call runs with this one's threads warm
            t0 = time.perf_counter()
            run()
            out[name]["times_ms"].append((time.perf_counter() - t0) * 1000)
    for name, r in out.items():
        ts = sorted(r["times_ms"])
        r["median_ms"] = ts[len(ts) // 2] if len(ts) % 2 else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2])
        r["min_ms"], r["max_ms"] = ts[0], ts[-1]
    return out


def peak_rss_mb():
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over
    from the parent through fork and exec, so every child would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_in_subprocess(script, args, name):
    """Run ``script --rss-of name`` in a fresh interpreter; its peak RSS in MB."""
    cmd = [sys.executable, script, "--rss-of", name] + args
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(HERE))
    for line in res.stdout.splitlines():
        if line.startswith("RSS "):
            return float(line.split()[1])
    sys.stderr.write(res.stdout[-2000:] + res.stderr[-4000:])
    return float("nan")


def second_call(result):
    """The second call's seconds as a table cell ('-': not timed, or a run from before
    it was)."""
    second = result.get("second_s")
    return "-" if second is None else "%.2f" % second


def table(results, rss=None, baseline=None, title=""):
    """Markdown table of the results, with each contender's median over the baseline's."""
    names = list(results)
    base = baseline or names[0]
    lines = []
    if title:
        lines.append("**%s**\n" % title)
    lines.append("| contender | median ms | min ms | max ms | ratio to %s | first call s | "
                 "second call s | peak RSS MB |" % base)
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in names:
        r = results[n]
        ratio = r["median_ms"] / results[base]["median_ms"]
        mem = "%.0f" % rss[n] if rss and n in rss else "-"
        lines.append("| %s | %.1f | %.1f | %.1f | %.2fx | %.2f | %s | %s |"
                     % (n, r["median_ms"], r["min_ms"], r["max_ms"], ratio, r["compile_s"],
                        second_call(r), mem))
    return "\n".join(lines)


def main(description, make_contenders, default_repeats, default_warmup=2, extra_args=None):
    """Command line of a benchmark script: all contenders in this process, then (unless
    --no-memory) one subprocess per contender for its peak RSS. Prints the table; with
    --json FILE writes the numbers."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=default_repeats)
    parser.add_argument("--warmup", type=int, default=default_warmup)
    parser.add_argument("--only", default="", help="comma-separated contenders")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", default="")
    parser.add_argument("--rss-of", default="", help=argparse.SUPPRESS)
    parser.add_argument("--torch-device", default="cpu",
                        help="where the PyTorch contender runs (cpu, or cuda on a GPU machine; "
                             "the JAX contenders run on JAX's default device)")
    for args, kwargs in (extra_args or []):
        parser.add_argument(*args, **kwargs)
    opts = parser.parse_args()
    import logging
    logging.getLogger("jcaffe").setLevel(logging.WARNING)
    import nets
    nets.TORCH_DEVICE = opts.torch_device
    contenders = make_contenders(opts)
    _set_threads([opts.rss_of] if opts.rss_of else contenders)
    if opts.rss_of:
        nets.STANDALONE_PROTO = not opts.rss_of.startswith("jcaffe")
        run = contenders[opts.rss_of]()
        for _ in range(RSS_CALLS):      # the first call (compilation), then steady state
            run()
        print("RSS %.1f" % peak_rss_mb())
        return
    if opts.only:
        wanted = opts.only.split(",")
        unknown = [w for w in wanted if w not in contenders]
        if unknown:
            parser.error("--only: no contender named %s; the contenders are: %s"
                         % (", ".join(map(repr, unknown)), ", ".join(map(repr, contenders))))
        contenders = {k: v for k, v in contenders.items() if k in wanted}
    print("%s (repeats %d, warmup %d)" % (description, opts.repeats, opts.warmup))
    results = measure(contenders, opts.warmup, opts.repeats)
    rss = {}
    if not opts.no_memory:
        passthrough = [a for a in sys.argv[1:]]
        for name in contenders:
            rss[name] = rss_in_subprocess(os.path.abspath(sys.argv[0]), passthrough, name)
    print(table(results, rss))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"title": description, "results": results, "rss_mb": rss,
                       "argv": sys.argv, "python": platform.python_version()}, f, indent=1)
    return results, rss


def net_main(title, contenders_of, default_repeats=None, extra_args=()):
    """main() of a script comparing contenders on one benchmark net (--net, --batch):
    ``contenders_of(net name, batch)`` -> {label: setup}; ``title`` has a %s for the net.
    With ``extra_args`` (the script's own options, as main's) it is called with the
    parsed options too: ``contenders_of(net name, batch, opts)``."""
    import nets
    net = sys.argv[sys.argv.index("--net") + 1] if "--net" in sys.argv else "lenet"

    def make(opts):
        batch = opts.batch or nets.NETS[opts.net][1]
        return contenders_of(opts.net, batch, opts) if extra_args else contenders_of(opts.net, batch)
    main(title % net, make,
         default_repeats=default_repeats or (20 if net == "lenet" else 5),
         extra_args=[(("--net",), {"default": "lenet", "choices": list(nets.NETS)}),
                     (("--batch",), {"type": int, "default": 0})] + list(extra_args))


def has_torch():
    """Whether the optional PyTorch contender can run (the bench extra)."""
    import importlib.util
    return importlib.util.find_spec("torch") is not None
