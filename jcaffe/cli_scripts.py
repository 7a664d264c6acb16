"""Caffe's Python scripts as ``jcaffe`` commands, with their flags.

    jcaffe summarize net.prototxt [-w N] [--color auto|always|never]   (tools/extra/summarize.py)
    jcaffe classify INPUT OUTPUT.npy --model_def deploy.prototxt --pretrained_model w.caffemodel
                    [--gpu] [--center_only] [--images_dim 256,256] [--mean_file mean.npy]
                    [--input_scale S] [--raw_scale 255] [--channel_swap 2,1,0] [--ext jpg]
                                                                         (python/classify.py)
    jcaffe detect INPUT.csv OUTPUT.csv --model_def ... --pretrained_model ... [--crop_mode list]
                  [--gpu] [--mean_file ...] [--input_scale S] [--raw_scale 255]
                  [--channel_swap 2,1,0] [--context_pad 16]                (python/detect.py)

Where they differ from Caffe's scripts, and why:

* ``--model_def``, ``--pretrained_model`` (and ``--mean_file``) have no default.
  Caffe's default to the reference CaffeNet and the ILSVRC 2012 mean inside a Caffe
  checkout, which jcaffe does not ship; a run without them would not be the run a
  Caffe user expects, so they must be named (``--mean_file ''`` for no mean).
* ``classify`` on a folder reads its images in sorted order and prints it, so the
  rows of OUTPUT.npy can be matched to files (Caffe's glob order is arbitrary).
* ``detect`` writes CSV (filename, ymin, xmin, ymax, xmax, class0..classN-1: the
  columns Caffe's script means to write, whose CSV branch fails on a missing
  'feat' column). Other output names, which Caffe writes as a pandas HDF5 table,
  are refused: pandas and PyTables are not dependencies of jcaffe.
* ``summarize`` colours blobs only on a terminal (or with ``--color always``);
  lr_mult and decay_mult print as ``x2``, ``Dx0`` (``%g``).
"""
import csv
import glob
import os
import re
import sys
import time

import numpy as np

from .cli_explain import _Parser, _Usage, run
from .errors import JcaffeError

# ---------------------------------------------------------------------------
# summarize

_COLORS = ["92", "93", "94", "95", "97", "96", "42", "43;30", "100", "444", "103;30", "107;30"]
_DISCONNECTED = "41"


def _number(v):
    return "%g" % v


def _param_str(param):
    """``(name xLR DxDECAY, ...)`` for the layer's ParamSpecs, '' when all are plain."""
    strs = []
    for spec in param:
        out = [spec.name] if spec.name else []
        if spec.lr_mult != 1:
            out.append("x" + _number(spec.lr_mult))
        if spec.decay_mult != 1:
            out.append("Dx" + _number(spec.decay_mult))
        strs.append(" ".join(out))
    return "(%s)" % ", ".join(strs) if any(strs) else ""


def _arg_str(layer):
    """Convolution ``k[/stride][+pad] num_output[/group]``, Pooling ``k[/stride][+pad]``."""
    if layer.type in ("Convolution", "Deconvolution"):
        c = layer.convolution_param
        if len(c.kernel_size) == 1:
            kernel = str(c.kernel_size[0])
        elif c.kernel_h or c.kernel_w:
            kernel = "%dx%d" % (c.kernel_h, c.kernel_w)
        else:
            kernel = "x".join(map(str, c.kernel_size))
        s = kernel
        if len(c.stride) and c.stride[0] != 1:
            s += "/%d" % c.stride[0]
        if len(c.pad) and c.pad[0] != 0:
            s += "+%d" % c.pad[0]
        s += " %d" % c.num_output
        if c.group != 1:
            s += "/%d" % c.group
        return s
    if layer.type == "Pooling":
        p = layer.pooling_param
        s = "global" if p.global_pooling else str(p.kernel_size or "%dx%d" % (p.kernel_h, p.kernel_w))
        if p.stride != 1:
            s += "/%d" % p.stride
        if p.pad != 0:
            s += "+%d" % p.pad
        return s
    return ""


def summarize_net(net_param, color=False):
    """The rows of Caffe's summarize.py for a NetParameter: name, type, params, bottoms,
    '->', tops (loss-weighted ones as ``w * top``), kernel arguments. Tops no later layer
    reads are bold and underlined, bottoms no earlier layer wrote on red, with ``color``.
    Every layer is listed, whatever its phase or stage."""
    disconnected = set()
    for layer in net_param.layer:
        disconnected |= set(layer.top)
        disconnected -= set(layer.bottom)

    def paint(code, text):
        return "\033[%sm%s\033[0m" % (code, text) if color else text

    colors, rows = {}, []
    for layer in net_param.layer:
        tops = []
        for i, top in enumerate(layer.top):
            code = colors.setdefault(top, _COLORS[len(colors) % len(_COLORS)])
            text = ("\033[1;4m" + top) if (color and top in disconnected) else top
            if i < len(layer.loss_weight):
                text = "%s * %s" % (_number(layer.loss_weight[i]), text)
            tops.append(paint(code, text))
        bottoms = [paint(colors.get(b, _DISCONNECTED), b) for b in layer.bottom]
        kind = (layer.python_param.module + "." + layer.python_param.layer
                if layer.type == "Python" else layer.type)
        rows.append([layer.name, kind, _param_str(layer.param), ", ".join(bottoms), "->",
                     ", ".join(tops), _arg_str(layer)])
    return rows


def _printed_len(s):
    return len(re.sub(r"\033\[[\d;]+m", "", s))


def format_table(rows, max_width=30):
    """Columns as narrow as their widest cell (at most ``max_width``); a longer cell
    overflows into the next column's space and the columns after it stay aligned where
    they can."""
    if not rows:
        return ""
    widths = [min(max(_printed_len(r[j]) + 1 for r in rows), max_width)
              for j in range(len(rows[0]))]
    lines = []
    for row in rows:
        line, right = "", 0
        for cell, width in zip(row, widths):
            right += width
            line += cell + " "
            line += " " * max(right - _printed_len(line), 0)
        lines.append(line.rstrip())
    return "\n".join(lines)


def summarize_cmd(argv):
    p = _Parser(prog="jcaffe summarize", description="Print a concise summary of net computation.")
    p.add_argument("prototxt", help="net prototxt file to summarize")
    p.add_argument("-w", "--max-width", type=int, default=30, help="maximum field width")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the blobs: on a terminal (auto), always or never")
    args = p.parse_args(argv)
    from . import protoio
    param = protoio.read_net_param(args.prototxt)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(format_table(summarize_net(param, color), args.max_width))
    return 0


# ---------------------------------------------------------------------------
# classify and detect

def _model_args(p):
    p.add_argument("--model_def", required=True, help="Model definition file (deploy prototxt).")
    p.add_argument("--pretrained_model", required=True, help="Trained model weights file.")
    p.add_argument("--gpu", action="store_true", help="Switch for gpu computation.")
    p.add_argument("--mean_file", required=True,
                   help="Data set image mean (numpy array, .npy); '' for no mean subtraction.")
    p.add_argument("--input_scale", type=float,
                   help="Multiply input features by this scale to finish preprocessing.")
    p.add_argument("--raw_scale", type=float, default=255.0,
                   help="Multiply raw input by this scale before preprocessing.")
    p.add_argument("--channel_swap", default="2,1,0",
                   help="Order to permute input channels. The default converts RGB -> BGR since "
                        "BGR is the Caffe default by way of OpenCV.")


def _ints(text, flag, count=None):
    try:
        values = [int(s) for s in text.split(",")]
    except ValueError:
        raise _Usage("%s wants comma-separated integers, got '%s'" % (flag, text)) from None
    if count is not None and len(values) != count:
        raise _Usage("%s wants %d comma-separated integers, got '%s'" % (flag, count, text))
    return values


def _load_mean(path):
    if not path:
        return None
    try:
        return np.load(path)
    except (OSError, ValueError) as e:
        raise JcaffeError("cannot read the mean file '%s' as a numpy array: %s" % (path, e)) from e


def _bad_input_is_an_error(command):
    """The library's ValueErrors (a context_pad too large for the net, an image of the
    wrong shape) and the ImportError of a missing selective search module are bad input
    here: exit status 1 with their message, not a traceback."""
    def run_command(argv):
        try:
            return command(argv)
        except (ValueError, ImportError) as e:
            raise JcaffeError(str(e)) from e
    run_command.__doc__ = command.__doc__
    return run_command


def _set_mode(gpu):
    from . import common
    if gpu:
        common.set_mode_gpu()
        print("GPU mode")
    else:
        common.set_mode_cpu()
        print("CPU mode")


@_bad_input_is_an_error
def classify_cmd(argv):
    p = _Parser(prog="jcaffe classify", description="Classify images with a Caffe model; save "
                "the class scores as a numpy array (one row per input).")
    p.add_argument("input_file", help="Input image, directory, or npy.")
    p.add_argument("output_file", help="Output npy filename.")
    _model_args(p)
    p.add_argument("--center_only", action="store_true",
                   help="Switch for prediction from center crop alone instead of averaging "
                        "predictions across crops (default).")
    p.add_argument("--images_dim", default="256,256",
                   help="Canonical 'height,width' dimensions of input images.")
    p.add_argument("--ext", default="jpg",
                   help="Image file extension to take as input when a directory is given as "
                        "the input file.")
    args = p.parse_args(argv)
    image_dims = _ints(args.images_dim, "--images_dim", 2)
    channel_swap = _ints(args.channel_swap, "--channel_swap") if args.channel_swap else None
    mean = _load_mean(args.mean_file)
    _set_mode(args.gpu)
    from . import io
    from .classifier import Classifier
    classifier = Classifier(args.model_def, args.pretrained_model, image_dims=image_dims,
                            mean=mean, input_scale=args.input_scale, raw_scale=args.raw_scale,
                            channel_swap=channel_swap)
    path = os.path.expanduser(args.input_file)
    if path.endswith("npy"):
        print("Loading file: %s" % path)
        inputs = np.load(path)
    elif os.path.isdir(path):
        print("Loading folder: %s" % path)
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*." + args.ext)))
        if not files:
            raise JcaffeError("no '*.%s' images in the folder '%s' (--ext)" % (args.ext, path))
        for i, f in enumerate(files):
            print("  row %d: %s" % (i, f))
        inputs = [io.load_image(f) for f in files]
    else:
        print("Loading file: %s" % path)
        inputs = [io.load_image(path)]
    print("Classifying %d inputs." % len(inputs))
    start = time.time()
    predictions = classifier.predict(inputs, not args.center_only)
    print("Done in %.2f s." % (time.time() - start))
    print("Saving results into %s" % args.output_file)
    np.save(args.output_file, predictions)
    return 0


COORD_COLS = ["ymin", "xmin", "ymax", "xmax"]


def read_windows_csv(path, windows=True):
    """A detect.py input CSV (a header naming ``filename`` and the four COORD_COLS, in any
    order) -> [(filename, int array of windows K x 4), ...] in the order files first appear.
    With ``windows=False`` only the filename column is needed (selective search)."""
    need = ["filename"] + (COORD_COLS if windows else [])
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise JcaffeError("%s: the header must name %s; it lacks %s (header: %s)"
                                  % (path, ", ".join(need), ", ".join(missing), reader.fieldnames))
            boxes = {}
            for row in reader:
                try:
                    box = [int(float(row[c])) for c in COORD_COLS] if windows else None
                except (TypeError, ValueError):
                    raise JcaffeError("%s:%d: window coordinates must be numbers, got %s"
                                      % (path, reader.line_num, [row[c] for c in COORD_COLS])) from None
                boxes.setdefault(row["filename"], []).append(box)
    except OSError as e:
        raise JcaffeError("cannot read the input file '%s': %s" % (path, e.strerror or e)) from e
    return [(name, np.array(b) if windows else None) for name, b in boxes.items()]


def write_detections_csv(path, detections):
    """One row per window: filename, ymin, xmin, ymax, xmax, class0..classN-1."""
    n = len(np.ravel(detections[0]["prediction"])) if detections else 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename"] + COORD_COLS + ["class%d" % i for i in range(n)])
        for d in detections:
            w.writerow([d["filename"]] + [int(v) for v in d["window"]]
                       + ["%r" % float(v) for v in np.ravel(d["prediction"])])


@_bad_input_is_an_error
def detect_cmd(argv):
    p = _Parser(prog="jcaffe detect", description="Score windows of images with a Caffe model "
                "(R-CNN style); write one CSV row per window.")
    p.add_argument("input_file", help="Input txt/csv filename. If .txt, must be list of "
                   "filenames (selective_search). If .csv, must be comma-separated file with "
                   "header 'filename, ymin, xmin, ymax, xmax' (list).")
    p.add_argument("output_file", help="Output csv filename.")
    _model_args(p)
    p.add_argument("--crop_mode", default="selective_search", choices=("list", "selective_search"),
                   help="How to generate windows for detection.")
    p.add_argument("--context_pad", type=int, default=16,
                   help="Amount of surrounding context to collect in input window.")
    args = p.parse_args(argv)
    if not args.output_file.lower().endswith("csv"):
        raise _Usage("jcaffe detect writes .csv (Caffe's detect.py writes other names as a "
                     "pandas HDF5 table, which needs pandas and PyTables): got '%s'"
                     % args.output_file)
    name = args.input_file.lower()
    if not name.endswith(("txt", "csv")):
        raise _Usage("Unknown input file type: not in txt or csv ('%s')" % args.input_file)
    if args.crop_mode == "list" and not name.endswith("csv"):
        raise _Usage("--crop_mode list reads its windows from a .csv input, got '%s'"
                     % args.input_file)
    channel_swap = _ints(args.channel_swap, "--channel_swap") if args.channel_swap else None
    mean = _load_mean(args.mean_file)
    if mean is not None and mean.ndim == 3 and mean.shape[1:] != (1, 1):
        mean = mean.mean(1).mean(1)              # detect.py: the per-channel mean
    _set_mode(args.gpu)
    from .detector import Detector
    detector = Detector(args.model_def, args.pretrained_model, mean=mean,
                        input_scale=args.input_scale, raw_scale=args.raw_scale,
                        channel_swap=channel_swap, context_pad=args.context_pad)
    start = time.time()
    print("Loading input...")
    if args.crop_mode == "list":
        detections = detector.detect_windows(read_windows_csv(args.input_file))
    else:
        if name.endswith("csv"):
            images = [f for f, _ in read_windows_csv(args.input_file, windows=False)]
        else:
            with open(args.input_file) as f:
                images = [line.strip() for line in f if line.strip()]
        detections = detector.detect_selective_search(images)
    print("Processed {} windows in {:.3f} s.".format(len(detections), time.time() - start))
    start = time.time()
    write_detections_csv(args.output_file, detections)
    print("Saved to {} in {:.3f} s.".format(args.output_file, time.time() - start))
    return 0


COMMANDS = {"summarize": summarize_cmd, "classify": classify_cmd, "detect": detect_cmd}


def main(argv):
    """``argv[0]`` is one of COMMANDS. -> exit status."""
    return run(COMMANDS, argv)
