"""``jcaffe explain`` / ``jcaffe draw`` / ``jcaffe plot``: the net and its training, explained.

    jcaffe explain net.prototxt [--phase TRAIN|TEST] [--stage a,b] [--level N]
                                [--start LAYER] [--end LAYER] [--json]
    jcaffe draw net.prototxt out.{png,svg,pdf,dot} [--rankdir LR|TB|BT|RL] [--phase ...]
                                [--stage ...] [--level N] [--display-lrm]
    jcaffe plot train.log out.png [--x iters|seconds] [--csv DIR]

Exit status: 0 done, 1 bad input (a prototxt that does not parse, a log that is
not a training log, no Graphviz), 2 bad command line.
"""
import argparse
import logging
import sys

from .errors import JcaffeError

log = logging.getLogger("jcaffe")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _Usage("%s: %s\n%s" % (self.prog, message, self.format_usage().rstrip()))


class _Usage(Exception):
    pass


def _phase(value):
    from .proto import caffe_pb2
    v = value.upper()
    if v not in ("TRAIN", "TEST"):
        raise argparse.ArgumentTypeError("phase must be TRAIN or TEST, got '%s'" % value)
    return caffe_pb2.TRAIN if v == "TRAIN" else caffe_pb2.TEST


def _net_args(p):
    p.add_argument("--phase", "-phase", type=_phase, default=None, help="TRAIN (default) or TEST")
    p.add_argument("--stage", "-stage", default="", help="network stages, separated by ','")
    p.add_argument("--level", "-level", type=int, default=0, help="network level")


def _build_net(args):
    from .net import Net
    from .proto import caffe_pb2
    phase = caffe_pb2.TRAIN if args.phase is None else args.phase
    stages = [s for s in args.stage.split(",") if s]
    return Net(args.prototxt, phase, level=args.level, stages=stages)


def _quiet():
    """Net construction logs Caffe's init lines; these commands print their own report."""
    if not log.isEnabledFor(logging.DEBUG):
        log.setLevel(logging.WARNING)


def explain_cmd(argv):
    p = _Parser(prog="jcaffe explain", description="Explain which layers run backward and why, "
                "and warn about the known traps.")
    p.add_argument("prototxt")
    _net_args(p)
    p.add_argument("--start", help="check a planned net.backward(start=...) range")
    p.add_argument("--end", help="check a planned net.backward(end=...) range")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    _quiet()
    net = _build_net(args)
    try:
        ex = net.explain(start=args.start, end=args.end)
    except KeyError as e:
        raise JcaffeError(e.args[0]) from None
    print(ex.to_json(indent=1) if args.json else str(ex))
    return 0


def draw_cmd(argv):
    p = _Parser(prog="jcaffe draw", description="Draw the net: layers coloured by need-backward, "
                "blobs by whether they receive a diff.")
    p.add_argument("prototxt")
    p.add_argument("output", help="image file; its extension is the format (png, svg, pdf, dot)")
    p.add_argument("--rankdir", "-rankdir", default="LR", choices=("LR", "TB", "BT", "RL"))
    p.add_argument("--display-lrm", "--display_lrm", action="store_true", help="show lr_mult of each layer")
    _net_args(p)
    args = p.parse_args(argv)
    from . import draw, protoio
    _quiet()
    param = protoio.read_net_param(args.prototxt)
    if args.stage or args.level:
        param.state.stage.extend(s for s in args.stage.split(",") if s)
        param.state.level = args.level
    out = draw.draw_net_to_file(param, args.output, args.rankdir, phase=args.phase,
                                display_lrm=args.display_lrm)
    print("Drawing net to %s" % out)
    return 0


def plot_cmd(argv):
    p = _Parser(prog="jcaffe plot", description="Plot training curves from a Caffe/jcaffe log.")
    p.add_argument("log")
    p.add_argument("output", nargs="?", help="image file (png, svg, pdf)")
    p.add_argument("--x", choices=("iters", "seconds"), default="iters")
    p.add_argument("--csv", metavar="DIR", help="also write parse_log's CSV files (<log>.train, "
                   "<log>.test) into DIR")
    args = p.parse_args(argv)
    if not args.output and not args.csv:
        raise _Usage("jcaffe plot: give an output image and/or --csv DIR")
    from . import plot
    if args.csv:
        for path in plot.save_csv_files(args.log, args.csv):
            print("Wrote %s" % path)
    if args.output:
        print("Plotted %s" % plot.plot_log(args.log, args.output, x=args.x))
    return 0


COMMANDS = {"explain": explain_cmd, "draw": draw_cmd, "plot": plot_cmd}


def main(argv):
    """``argv[0]`` is one of COMMANDS. -> exit status."""
    return run(COMMANDS, argv)


def run(commands, argv):
    """Run ``commands[argv[0]]`` on the rest of argv (also jcaffe/cli_scripts.py's
    commands): usage errors exit 2, bad input 1 with one line naming it."""
    from . import common
    common.init_log()
    level = log.level
    try:
        return commands[argv[0]](list(argv[1:]))
    except _Usage as e:
        print(str(e), file=sys.stderr)
        return 2
    except SystemExit as e:          # argparse's -h
        return e.code or 0
    except (JcaffeError, OSError) as e:
        print("jcaffe %s: %s: %s" % (argv[0], type(e).__name__, e), file=sys.stderr)
        return 1
    finally:
        log.setLevel(level)
