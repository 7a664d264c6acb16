"""The ``gradcheck`` command: check a layer, a net, or every built-in layer type.

    gradcheck layer path/to/mod.py:Class --bottom 2,3 --bottom 2,3 [--param-str S]
    gradcheck layer --type ReLU --param 'relu_param { negative_slope: 0.1 }' --bottom 2,3
    gradcheck net net.prototxt [--weights w.caffemodel] [--phase TEST]
    gradcheck all

Prints the report table(s); exit code 0 when every check passes, 1 otherwise.
"""
import argparse
import sys


def _shape(text):
    return tuple(int(d) for d in text.split(",") if d.strip())


def _parser():
    ap = argparse.ArgumentParser(prog="gradcheck", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    lay = sub.add_parser("layer", help="check one layer (Python class or built-in type)")
    lay.add_argument("cls", nargs="?", help="module.Class or path/to/mod.py:Class")
    lay.add_argument("--type", help="a built-in layer type instead of a Python class")
    lay.add_argument("--param", default="", help="layer param text, e.g. 'relu_param {...}'")
    lay.add_argument("--param-str", default="", help="python_param.param_str")
    lay.add_argument("--bottom", action="append", type=_shape, default=[], help="a bottom shape")
    lay.add_argument("--label", action="append", type=int, default=[], help="a label bottom index")
    lay.add_argument("--top-diff", choices=["random", "ones"], default="random")
    lay.add_argument("--mode", choices=["auto", "exhaustive", "projection"], default="auto")
    lay.add_argument("--seed", type=int, default=0)
    net = sub.add_parser("net", help="check a whole net's backward")
    net.add_argument("prototxt")
    net.add_argument("--weights")
    net.add_argument("--phase", choices=["TRAIN", "TEST"], default="TRAIN")
    net.add_argument("--samples", type=int, default=12)
    net.add_argument("--seed", type=int, default=0)
    every = sub.add_parser("all", help="every built-in layer type, three drawn cases each (the first is the simplest)")
    every.add_argument("--seed", type=int, default=0)
    return ap


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        reports = _run(args)
    except Exception as e:   # bad use: unknown type, missing class, rejected shapes
        print("gradcheck: error: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    for r in reports:
        print(r)
        print()
    failed = [r.title for r in reports if not r.ok]
    print("%d checked, %d failed" % (len(reports), len(failed)))
    return 1 if failed else 0


def _run(args):
    if args.command == "layer":
        return [_layer(args)]
    if args.command == "net":
        import jcaffe
        from .net_check import check_net
        phase = jcaffe.TRAIN if args.phase == "TRAIN" else jcaffe.TEST
        return [check_net(args.prototxt, phase, weights=args.weights, samples=args.samples,
                          seed=args.seed)]
    return _all(args.seed)


def _layer(args):
    if args.type:
        from .layer_check import check_layer
        snippet = 'type: "%s" %s' % (args.type, args.param)
        return check_layer(snippet, args.bottom, label_bottoms=args.label or None, mode=args.mode,
                           seed=args.seed)
    if not args.cls:
        raise ValueError("give a Python layer (module.Class or file.py:Class) or --type")
    from .python_check import check_python_layer
    return check_python_layer(args.cls, args.bottom, args.param_str, label_bottoms=args.label,
                              seed=args.seed, top_diff=args.top_diff)


def _all(seed):
    import jcaffe
    from hypothesis import HealthCheck, given, settings

    from . import strategies
    reports = []
    for type_name in jcaffe.layer_type_list():
        if type_name == "Python":
            continue
        if type_name not in strategies.SPECS:
            raise KeyError("layer type %r has no gradcheck strategy" % type_name)

        @settings(max_examples=3, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(strategies.SPECS[type_name])
        def one(case):
            reports.append(strategies.check_case(case))
        one()
    return reports


if __name__ == "__main__":
    sys.exit(main())
