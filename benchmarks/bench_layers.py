"""Every built-in layer's hand-written backward vs ``jax.vjp`` of its own forward.

    python benchmarks/bench_layers.py [--only TYPE[,TYPE...]] [--repeats N] [--sample-ms MS]
                                      [--recheck-above R] [--rechecks N] [--json FILE]

One row per case, float32, shapes of a real net (batch 32, 64 channels, 28x28
feature maps; 1000 classes; sequences of 20). Each contender is one jitted call
on the same arrays:

* ``forward``: the layer's forward alone (tops);
* ``explicit``: forward, then the layer's own backward (tops, and the diffs of
  every learned param and every bottom that is not a label), as jcaffe's fused
  step runs it;
* ``autodiff``: forward under ``jax.vjp``, then its pullback: the same tops and
  diffs, what ``jax.grad`` of the same forward would cost.

``explicit / autodiff`` above 1 means jax's own derivative of the layer's forward
is faster than the backward written for it: the backward (or what the forward
saves for it) is the place to look. ``CASES`` must name every registered layer
type that has a compiled backward; ``NO_BACKWARD`` says why the others are not
here (tests/test_bench_layers.py holds both to the registry, so a new layer type
cannot be left out).

Each timed sample is a run of back-to-back calls lasting about ``--sample-ms``
(``batched``); the table gives the time per call. A case whose ratio is above
``--recheck-above`` (1.15) is measured ``--rechecks`` (2) more times from a fresh
setup after the pass, and the table lists those ratios beside the first.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nets  # noqa: E402,F401  (puts this checkout's jcaffe first on sys.path)

N, C, H = 32, 64, 28
X = (N, C, H, H)
FILL = 'weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "constant" value: 0.1 }'

# type -> [(label, layer snippet, bottoms)]; a bottom is a shape (standard normal
# values) or (shape, kind): "label:K" integers in [0, K) (never differentiated),
# "uniform:A:B" values in [A, B) (positive inputs, probabilities, targets).
# Rows whose explicit / autodiff ratio is above RECHECK_ABOVE are measured RECHECKS
# more times after the pass (main, --recheck-above, --rechecks).
RECHECK_ABOVE = 1.15
RECHECKS = 2

CASES = {
    "AbsVal": [("", 'type: "AbsVal"', [X])],
    "BNLL": [("", 'type: "BNLL"', [X])],
    "BatchNorm": [("", 'type: "BatchNorm"', [X])],
    "BatchReindex": [("", 'type: "BatchReindex"', [(N, 1000), ((64,), "label:32")])],
    "Bias": [("learned, axis 1", 'type: "Bias" bias_param { filler { type: "constant" value: 0.1 } }',
              [X])],
    "Clip": [("", 'type: "Clip" clip_param { min: -1 max: 1 }', [X])],
    "Concat": [("2 bottoms, axis 1", 'type: "Concat"', [X, X])],
    "ContrastiveLoss": [("", 'type: "ContrastiveLoss"',
                         [(N, 256), (N, 256), ((N,), "label:2")])],
    "Convolution": [("3x3 pad 1, 64->64", 'type: "Convolution" convolution_param { num_output: 64 '
                     'kernel_size: 3 pad: 1 %s }' % FILL, [X]),
                    ("3x3 pad 1 depthwise (group 64)", 'type: "Convolution" convolution_param { '
                     'num_output: 64 kernel_size: 3 pad: 1 group: 64 %s }' % FILL, [X])],
    "Crop": [("axis 2, offset 1", 'type: "Crop" crop_param { axis: 2 offset: 1 }',
              [(N, C, H + 2, H + 2), X])],
    "Deconvolution": [("4x4 stride 2 pad 1, 64->32", 'type: "Deconvolution" convolution_param { '
                       'num_output: 32 kernel_size: 4 stride: 2 pad: 1 %s }' % FILL,
                       [(N, C, 14, 14)]),
                      ("4x4 stride 2 pad 1 depthwise (group 64)", 'type: "Deconvolution" '
                       'convolution_param { num_output: 64 kernel_size: 4 stride: 2 pad: 1 '
                       'group: 64 %s }' % FILL, [(N, C, 14, 14)])],
    "Dropout": [("", 'type: "Dropout"', [X])],
    "ELU": [("", 'type: "ELU"', [X])],
    "Eltwise": [("SUM", 'type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 }',
                 [X, X]),
                ("PROD", 'type: "Eltwise" eltwise_param { operation: PROD }', [X, X]),
                ("MAX", 'type: "Eltwise" eltwise_param { operation: MAX }', [X, X])],
    "Embed": [("vocab 10000, 256 out", 'type: "Embed" embed_param { num_output: 256 '
               'input_dim: 10000 %s }' % FILL, [((N, 20), "label:10000")])],
    "EuclideanLoss": [("", 'type: "EuclideanLoss"', [(N, 1000), (N, 1000)])],
    "Exp": [("", 'type: "Exp"', [X])],
    "Flatten": [("", 'type: "Flatten"', [(N, C, 7, 7)])],
    "HingeLoss": [("", 'type: "HingeLoss"', [(N, 1000), ((N,), "label:1000")])],
    "Im2col": [("3x3 pad 1", 'type: "Im2col" convolution_param { kernel_size: 3 pad: 1 }',
                [(N, 16, H, H)])],
    "InfogainLoss": [("", 'type: "InfogainLoss"',
                      [(N, 1000), ((N,), "label:1000"), ((1000, 1000), "uniform:0:1")])],
    "InnerProduct": [("1024->1000", 'type: "InnerProduct" inner_product_param { num_output: 1000 '
                      '%s }' % FILL, [(N, 1024)])],
    "LRN": [("across 5", 'type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }', [X]),
            ("within 3", 'type: "LRN" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 '
             'norm_region: WITHIN_CHANNEL }', [X])],
    "LSTM": [("T 20, 128->256", 'type: "LSTM" recurrent_param { num_output: 256 %s }' % FILL,
              [(20, N, 128), ((20, N), "label:2")])],
    "LSTMUnit": [("256 hidden", 'type: "LSTMUnit"',
                  [(1, N, 256), (1, N, 1024), ((1, N), "label:2")])],
    "Log": [("", 'type: "Log"', [(X, "uniform:0.1:2")])],
    "MVN": [("", 'type: "MVN"', [X])],
    "MultinomialLogisticLoss": [("", 'type: "MultinomialLogisticLoss"',
                                 [((N, 1000), "uniform:0.01:1"), ((N,), "label:1000")])],
    "PReLU": [("", 'type: "PReLU"', [X])],
    "Pooling": [("MAX 3x3 stride 2", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 '
                 'stride: 2 }', [X]),
                ("AVE 2x2 stride 2", 'type: "Pooling" pooling_param { pool: AVE kernel_size: 2 '
                 'stride: 2 }', [X]),
                ("MAX 3x3 stride 1 pad 1", 'type: "Pooling" pooling_param { pool: MAX '
                 'kernel_size: 3 stride: 1 pad: 1 }', [X]),
                ("MAX global, 1024x7x7", 'type: "Pooling" pooling_param { pool: MAX '
                 'global_pooling: true }', [(N, 1024, 7, 7)])],
    "Power": [("power 2", 'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', [X])],
    "RNN": [("T 20, 128->256", 'type: "RNN" recurrent_param { num_output: 256 %s }' % FILL,
             [(20, N, 128), ((20, N), "label:2")])],
    "ReLU": [("", 'type: "ReLU"', [X])],
    "Reduction": [("SUMSQ, axis 1", 'type: "Reduction" reduction_param { operation: SUMSQ axis: 1 }',
                   [(N, 1000)])],
    "Reshape": [("", 'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', [X])],
    "SPP": [("height 3, MAX", 'type: "SPP" spp_param { pyramid_height: 3 }', [(N, C, 13, 13)])],
    "Scale": [("learned, bias", 'type: "Scale" scale_param { bias_term: true }', [X])],
    "Sigmoid": [("", 'type: "Sigmoid"', [X])],
    "SigmoidCrossEntropyLoss": [("", 'type: "SigmoidCrossEntropyLoss"',
                                 [(N, 1000), ((N, 1000), "uniform:0:1")])],
    "Slice": [("axis 1 in 2", 'type: "Slice" top: "a" top: "b"', [X])],
    "Softmax": [("", 'type: "Softmax"', [(N, 1000)])],
    "SoftmaxWithLoss": [("", 'type: "SoftmaxWithLoss"', [(N, 1000), ((N,), "label:1000")]),
                        ("21 classes, 8x128x128", 'type: "SoftmaxWithLoss"',
                         [(8, 21, 128, 128), ((8, 128, 128), "label:21")])],
    "Split": [("2 tops", 'type: "Split" top: "a" top: "b"', [X])],
    "Swish": [("", 'type: "Swish"', [X])],
    "TanH": [("", 'type: "TanH"', [X])],
    "Tile": [("axis 1, 4 copies", 'type: "Tile" tile_param { axis: 1 tiles: 4 }',
              [(N, 16, H, H)])],
}

# Registered types without a compiled backward to time, and why.
NO_BACKWARD = {
    "Accuracy": "no backward (Caffe refuses one)",
    "ArgMax": "no backward (Caffe refuses one)",
    "Threshold": "no backward (Caffe refuses one)",
    "Data": "a source: no bottoms, tops filled on the host",
    "HDF5Data": "a source: no bottoms, tops filled on the host",
    "ImageData": "a source: no bottoms, tops filled on the host",
    "MemoryData": "a source: no bottoms, tops filled on the host",
    "WindowData": "a source: no bottoms, tops filled on the host",
    "Input": "a source: no bottoms, tops filled on the host",
    "DummyData": "a source: no bottoms, no params",
    "HDF5Output": "no tops: its forward writes a file",
    "Silence": "no tops: its backward writes zeros",
    "Parameter": "no bottoms: its param diff is its top diff",
    "Python": "a host layer (numpy, run by the user's code, not compiled)",
    "Filter": "a host layer (its output shape depends on values)",
}


def make_bottoms(spec, rng):
    """Float32 arrays of a case's bottoms, and which of them are labels."""
    import numpy as np
    arrays, labels = [], []
    for i, b in enumerate(spec):
        shape, kind = (b, "normal") if not (len(b) == 2 and isinstance(b[1], str)) else b
        if kind == "normal":
            a = rng.standard_normal(shape)
        elif kind.startswith("label:"):
            a = rng.integers(0, int(kind.split(":")[1]), size=shape)
            labels.append(i)
        elif kind.startswith("uniform:"):
            lo, hi = (float(v) for v in kind.split(":")[1:])
            a = rng.uniform(lo, hi, size=shape)
        else:
            raise ValueError("unknown bottom kind %r" % kind)
        arrays.append(a.astype(np.float32))
    return arrays, labels


def build(snippet, bottom_spec, seed=0):
    """(layer, params, bottoms, propagate_down) for one case, float32, TRAIN phase."""
    import numpy as np
    from gradcheck.layer_check import build_layer
    rng = np.random.default_rng(seed)
    shapes = [b if not (len(b) == 2 and isinstance(b[1], str)) else b[0] for b in bottom_spec]
    layer = build_layer(snippet, shapes, seed=seed, dtype=np.float32)
    bottoms, labels = make_bottoms(bottom_spec, rng)
    # Label-like bottoms a layer refuses to differentiate (Caffe's AllowForceBackward false).
    labels = sorted(set(labels) | {i for i in range(len(shapes)) if not layer.allow_force_backward(i)})
    params = [np.asarray(b.data, np.float32) for b in layer.blobs]
    pd = tuple(i not in labels for i in range(len(shapes)))
    return layer, params, bottoms, pd


def contenders(snippet, bottom_spec):
    """{"forward", "explicit", "autodiff": setup() -> run()} for one case."""
    import jax
    import jax.numpy as jnp
    layer, params, bottoms, pd = build(snippet, bottom_spec)
    learned = list(layer.param_propagate_down)
    key = jax.random.PRNGKey(0)
    p = [jnp.asarray(a) for a in params]
    xs = [jnp.asarray(a) for a in bottoms]
    rng = jax.random.PRNGKey(1)
    tops0 = layer.forward(p, xs, key)[0]
    dys = [jax.random.normal(jax.random.fold_in(rng, i), jnp.shape(t), jnp.result_type(t))
           for i, t in enumerate(tops0)]

    def forward(p, xs):
        return layer.forward(p, xs, key)[0]

    def explicit(p, xs, dys):
        tops, saved = layer.forward(p, xs, key)[:2]
        bd, pdiff = layer.backward(p, xs, tops, saved, dys, pd)
        return (tops, [d for d, want in zip(bd or [], pd) if want],
                [d for d, want in zip(pdiff or [], learned) if want])

    def autodiff(p, xs, dys):
        wp = [a for a, want in zip(p, learned) if want]
        wx = [a for a, want in zip(xs, pd) if want]

        def f(wp, wx):
            it_p, it_x = iter(wp), iter(wx)
            full_p = [next(it_p) if want else a for a, want in zip(p, learned)]
            full_x = [next(it_x) if want else a for a, want in zip(xs, pd)]
            return layer.forward(full_p, full_x, key)[0]
        tops, pull = jax.vjp(f, wp, wx)
        dp, dx = pull(list(dys))
        return tops, dx, dp

    def make(fn, *args):
        def setup():
            f = jax.jit(fn)

            def run():
                return jax.block_until_ready(f(*args))
            return run
        return setup
    return {"forward": make(forward, p, xs), "explicit": make(explicit, p, xs, dys),
            "autodiff": make(autodiff, p, xs, dys)}


def batched(contenders, sample_s):
    """The contenders with each run() made of n back-to-back calls, n chosen per
    contender (from one timed call after the compile) so that a timed sample lasts
    about ``sample_s``: one call of a layer that takes a millisecond or less is mostly
    dispatch and timer noise, and single rows' ratios moved by 0.2-0.5 between runs.
    Returns (contenders, info): info[name] = {"calls", "compile_s"} once set up."""
    info = {}

    def wrap(name, setup):
        def batched_setup():
            run = setup()
            t0 = time.perf_counter()
            run()
            t1 = time.perf_counter()
            run()
            one = time.perf_counter() - t1
            n = max(1, int(round(sample_s / max(one, 1e-6))))
            info[name] = {"calls": n, "compile_s": t1 - t0}

            def run_n():
                for _ in range(n):
                    out = run()
                return out
            return run_n
        return batched_setup
    return {name: wrap(name, setup) for name, setup in contenders.items()}, info


def all_cases(only=()):
    for type_name in sorted(CASES):
        if only and type_name not in only:
            continue
        for label, snippet, bottoms in CASES[type_name]:
            yield type_name, label, snippet, bottoms


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated layer types")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sample-ms", type=float, default=20.0,
                    help="time each sample as back-to-back calls lasting about this long")
    ap.add_argument("--recheck-above", type=float, default=RECHECK_ABOVE,
                    help="measure a case again when explicit / autodiff is above this")
    ap.add_argument("--rechecks", type=int, default=RECHECKS,
                    help="how many times (0: never)")
    ap.add_argument("--json", default="")
    opts = ap.parse_args(argv)
    import logging
    logging.getLogger("jcaffe").setLevel(logging.WARNING)
    import harness
    only = [t for t in opts.only.split(",") if t]
    unknown = sorted(set(only) - set(CASES))
    if unknown:
        ap.error("no case for %s; cases: %s" % (", ".join(unknown), ", ".join(sorted(CASES))))
    def one_row(type_name, label, snippet, bottoms):
        runs, info = batched(contenders(snippet, bottoms), opts.sample_ms / 1000)
        res = harness.measure(runs, opts.warmup, opts.repeats, log=lambda *a: None)
        return {"type": type_name, "case": label, **{
            k: {"median_ms": v["median_ms"] / info[k]["calls"],
                "min_ms": v["min_ms"] / info[k]["calls"],
                "max_ms": v["max_ms"] / info[k]["calls"],
                "calls_per_sample": info[k]["calls"], "compile_s": info[k]["compile_s"]}
            for k, v in res.items()}}

    rows = []
    started = time.time()
    cases = list(all_cases(only))
    for case in cases:
        print("%s %s" % case[:2], flush=True)
        rows.append(one_row(*case))
    # A ratio above the line is measured again, from a fresh setup, after the whole
    # pass: single rows of a millisecond or two moved by 0.2-0.3 between runs (PReLU
    # 0.90-1.23x over six runs, its explicit and autodiff programs the same four
    # fusions). The table keeps the first ratio and lists the others beside it.
    for case, row in zip(cases, rows):
        if ratio(row) > opts.recheck_above:
            row["again"] = []
            for _ in range(opts.rechecks):
                print("%s %s (again)" % case[:2], flush=True)
                row["again"].append(ratio(one_row(*case)))
    print(render(rows))
    print("\n(%d cases in %.0f s; repeats %d, samples of about %g ms)"
          % (len(rows), time.time() - started, opts.repeats, opts.sample_ms))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"rows": rows, "argv": sys.argv}, f, indent=1)
    return rows


def ratio(row):
    """explicit / autodiff, medians of forward + backward."""
    return row["explicit"]["median_ms"] / row["autodiff"]["median_ms"]


def render(rows):
    lines = ["| layer | case | forward ms | explicit fwd+bwd ms | autodiff fwd+bwd ms | "
             "explicit / autodiff | backward alone, explicit / autodiff | measured again |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        f, e, a = (r[k]["median_ms"] for k in ("forward", "explicit", "autodiff"))
        be, ba = e - f, a - f
        alone = "%.2fx" % (be / ba) if ba > 0.05 * f and be > 0 else "-"
        again = ", ".join("%.2fx" % x for x in r.get("again", ())) or "-"
        lines.append("| %s | %s | %.2f | %.2f | %.2f | %.2fx | %s | %s |"
                     % (r["type"], r["case"] or "", f, e, a, e / a, alone, again))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
