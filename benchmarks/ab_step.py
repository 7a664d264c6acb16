"""A/B of jcaffe's training step: two variants of the code, whole steps, one process each.

    python benchmarks/ab_step.py --net resnet50 [--variants FILE] [A B] [--steps 8]
                                 [--rounds 2] [--forward] [--interleave]

For an engine change whose effect on one layer says little about whole steps (XLA
fuses across layers). ``FILE`` is a Python module with ``apply(name)``, called with a
variant's name before its solver is built; it sets module attributes (e.g.
``conv_gemm.PER_IMAGE_MIN_POSITIONS``) or compile options. Without ``--variants`` both
are this checkout's code, which measures the method's own noise.

Each variant runs in processes of its own, alternated by rounds (A B, then B A, ...),
``--steps`` timed steps (``--forward``: deploy forwards, TEST phase, the output fetched
to the host) after two untimed ones; the result is each variant's median
over all its steps, their ratio, and each round's ratio. The rounds share a
compilation cache (a temporary directory), so a variant compiles once.

Why not two solvers in one process: a variant that patches a module needs
``jax.clear_caches()`` before the second solver is built (jitted helpers keep their
traces), and that also drops the first solver's executable. Its next step traces and
compiles again, with the module as the second variant left it, so both solvers run
the second variant's code (seen 2026-12-02: benchmarks/NOTES.md, fifteenth session).

The last line reads the rounds' ratios as paired measurements: their geometric mean
and a 95% t-interval over their logs, and whether it holds 1 (no difference measured
at that many rounds: on this 2-core VM single rounds move by up to +-6%).

``--interleave``: each round starts a process per variant, both alive (set up one after
the other, compiles never overlapping), and runs ``--steps`` pairs of steps, one of each
variant, the first of each pair alternating; each process waits while the other steps.
The interval is then over the pairs' ratios. Steps seconds apart share the machine's
slow spells, which whole processes a minute apart do not: on the AMD Zen 1 VM,
process rounds of GoogLeNet's step read 0.85-1.18 where nothing differed much
(benchmarks/NOTES.md, forty-second session). Both processes hold their net at once.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nets  # noqa: E402  (puts this checkout's jcaffe first on sys.path)


def load_variants(path):
    if path is None:
        return lambda name: None
    spec = importlib.util.spec_from_file_location("ab_variants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.apply


# Student's t, two-sided 95%, by degrees of freedom (rounds - 1); 1.96 past the table.
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
         10: 2.23, 12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04}


def round_interval(ratios):
    """(geometric mean, low, high) of the rounds' B / A ratios: a 95% t-interval over
    their logs (each round is a pair of processes, one per variant, run back to back,
    so its ratio is one paired measurement). None with fewer than two rounds."""
    import numpy as np
    logs = np.log(np.asarray(ratios, float))
    if len(logs) < 2:
        return None
    df = len(logs) - 1
    t = next((T_975[k] for k in sorted(T_975) if k >= df), 1.96)
    half = t * logs.std(ddof=1) / np.sqrt(len(logs))
    mean = logs.mean()
    return float(np.exp(mean)), float(np.exp(mean - half)), float(np.exp(mean + half))


def verdict(interval, a, b):
    """What an interval from :func:`round_interval` says of B against A."""
    if interval is None:
        return "one round: no interval"
    _, low, high = interval
    if low > 1:
        return "%s slower" % b
    if high < 1:
        return "%s faster" % b
    return "no difference measured (the interval holds 1)"


def one_variant(net, batch, steps, path, name, cache, forward=False):
    """Apply variant ``name``, build the solver (``forward``: the deploy net, in TEST
    phase), time ``steps`` steps (forwards): {"times": [s...], "loss": first loss (the
    first forward's output sum), "first": first call s}."""
    call, out = _set_up(net, batch, path, name, cache, forward)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return dict(out, times=times)


def serve_variant(net, batch, path, name, cache, forward=False, lines=sys.stdin):
    """``--interleave``'s child: set variant ``name`` up as :func:`one_variant` does,
    print {"loss", "first"}, then one step's (forward's) seconds for each line "step"
    read, until another line or the end of ``lines``."""
    call, out = _set_up(net, batch, path, name, cache, forward)
    print(json.dumps(out), flush=True)
    for line in lines:
        if line.strip() != "step":
            break
        started = time.perf_counter()
        call()
        print(time.perf_counter() - started, flush=True)


def _set_up(net, batch, path, name, cache, forward):
    """Variant ``name``'s step (forward) as a call returning the loss, after its first
    call (timed) and two untimed ones: (call, {"loss", "first"})."""
    load_variants(path)(name)
    import jcaffe
    jcaffe.set_compilation_cache(cache)
    if forward:     # bench_forward's jcaffe contender: the output on the host
        import bench_forward
        run = bench_forward.jcaffe_forward(net, batch)()

        def call():
            return float(run().sum())
    else:
        solver = nets.jcaffe_solver(net, batch)

        def call():
            solver.step(1)
            return float(solver._losses[-1])
    started = time.perf_counter()
    loss = call()
    first = time.perf_counter() - started
    for _ in range(2):
        call()
    return call, {"loss": loss, "first": first}


def interleaved_round(child_cmd, a, b, steps, a_first):
    """One round of ``--interleave``: a process per variant (``child_cmd(name)``), set
    up one after the other (their compiles never overlap), then ``steps`` pairs of steps,
    one of each, alternating which goes first. Each process waits while the other
    steps. -> {name: {"times", "loss", "first"}}."""
    procs, runs = {}, {}
    try:
        for name in ((a, b) if a_first else (b, a)):
            err = tempfile.TemporaryFile(mode="w+")
            proc = subprocess.Popen(child_cmd(name), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, text=True)
            procs[name] = (proc, err)
            runs[name] = dict(json.loads(_read_line(procs, name, "setting up")), times=[])
        for i in range(steps):
            for name in ((a, b) if (i % 2 == 0) == a_first else (b, a)):
                proc = procs[name][0]
                proc.stdin.write("step\n")
                proc.stdin.flush()
                runs[name]["times"].append(float(_read_line(procs, name, "step %d" % (i + 1))))
    finally:
        for proc, err in procs.values():
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait()
            err.close()
    return runs


def _read_line(procs, name, doing):
    proc, err = procs[name]
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        err.seek(0)
        raise RuntimeError("variant %r exited with status %s while %s:\n%s"
                           % (name, proc.returncode, doing, err.read()[-4000:]))
    return line


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="lenet", choices=sorted(nets.NETS))
    ap.add_argument("--batch", type=int, help="default: the net's benchmark batch")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=2, help="processes per variant")
    ap.add_argument("--variants", help="module with apply(name)")
    ap.add_argument("--forward", action="store_true",
                    help="time the deploy net's forward (TEST phase), not training steps")
    ap.add_argument("--interleave", action="store_true",
                    help="both variants' processes side by side, their steps alternated "
                         "one by one (the interval over the pairs)")
    ap.add_argument("names", nargs="*", default=["A", "B"], help="the two variants")
    ap.add_argument("--child", help=argparse.SUPPRESS)     # NAME,CACHE: one process
    ap.add_argument("--serve", help=argparse.SUPPRESS)     # NAME,CACHE: --interleave's
    args = ap.parse_args(argv)
    if len(args.names) != 2 or args.names[0] == args.names[1]:
        ap.error("two different variant names, got %s" % args.names)
    batch = args.batch or nets.NETS[args.net][1]
    if args.child:
        name, cache = args.child.split(",", 1)
        print(json.dumps(one_variant(args.net, batch, args.steps, args.variants, name, cache,
                                     args.forward)))
        return
    if args.serve:
        name, cache = args.serve.split(",", 1)
        serve_variant(args.net, batch, args.variants, name, cache, args.forward)
        return
    import numpy as np
    a, b = args.names
    runs = {a: [], b: []}
    ratios = []

    def child_cmd(name, role):
        cmd = [sys.executable, os.path.abspath(__file__), "--net", args.net,
               "--batch", str(batch), "--steps", str(args.steps),
               role, "%s,%s" % (name, cache), a, b]
        if args.variants:
            cmd[2:2] = ["--variants", os.path.abspath(args.variants)]
        if args.forward:
            cmd[2:2] = ["--forward"]
        return cmd
    with tempfile.TemporaryDirectory(prefix="jcaffe-ab-") as cache:
        for r in range(args.rounds):
            if args.interleave:
                try:
                    got = interleaved_round(lambda name: child_cmd(name, "--serve"), a, b,
                                            args.steps, r % 2 == 0)
                except RuntimeError as e:
                    sys.exit("ab_step: round %d, %s: %s" % (r + 1, args.net, e))
                for name in (a, b):
                    runs[name].append(got[name])
                ratios.extend(np.divide(got[b]["times"], got[a]["times"]))
            for name in ([] if args.interleave else [a, b] if r % 2 == 0 else [b, a]):
                res = subprocess.run(child_cmd(name, "--child"), capture_output=True, text=True)
                if res.returncode != 0:
                    sys.exit("ab_step: variant %r (round %d, %s) failed with exit status %d:\n%s"
                             % (name, r + 1, args.net, res.returncode, res.stderr[-4000:]))
                runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
            ra, rb = runs[a][-1], runs[b][-1]
            if not args.interleave:
                ratios.append(np.median(rb["times"]) / np.median(ra["times"]))
            print("round %d (%s first): %s %.1f ms, %s %.1f ms, %s / %s = %.3f" % (
                r + 1, a if r % 2 == 0 else b, a, 1e3 * np.median(ra["times"]), b,
                1e3 * np.median(rb["times"]), b, a,
                np.median(rb["times"]) / np.median(ra["times"])), flush=True)
    med = {n: float(np.median([t for run in runs[n] for t in run["times"]])) for n in runs}
    for n in (a, b):
        print("%s: median %.1f ms over %d steps; first call %s s; first loss %s" % (
            n, 1e3 * med[n], sum(len(run["times"]) for run in runs[n]),
            ", ".join("%.1f" % run["first"] for run in runs[n]),
            ", ".join("%.7g" % run["loss"] for run in runs[n])))
    print("%s / %s: %.3f  (%s%s, batch %d, %d rounds of %d %s%s)" % (
        b, a, med[b] / med[a], args.net, " deploy" if args.forward else "", batch, args.rounds,
        args.steps, "forwards" if args.forward else "steps",
        ", interleaved" if args.interleave else ""))
    interval = round_interval(ratios)
    if interval is not None:
        print("%s' %s / %s: geometric mean %.3f, 95%% interval %.3f-%.3f: %s" % (
            ("pairs" if args.interleave else "rounds", b, a) + interval
            + (verdict(interval, a, b),)))


if __name__ == "__main__":
    main()
