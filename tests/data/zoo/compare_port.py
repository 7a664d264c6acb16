"""Compare a zoo net written by make_zoo.py with the published Caffe port it follows,
layer for layer: names, types, bottoms, tops and what each layer computes (convolution
geometry and bias filler, pooling, Eltwise's operation and coeff, BatchNorm's eps,
Scale's bias, Dropout's ratio, InnerProduct's outputs).

    python tests/data/zoo/compare_port.py inception_v3 PORT.prototxt

The ports are not in this repository. The ten taken from soeaver/caffe-model (commit
49dc8e06f8bc19d91ee7912a901132122b3b6e1c) are the files below, under cls/. The
comparison skips the layers that only one side has: the port's Softmax (a deploy
file's), and the DummyData, Accuracy and loss make_zoo adds. The one field from outside
BVLC's caffe.proto (that fork's ``ceil_mode: false``) is read as BVLC's round_mode
FLOOR. Fillers are not compared: a deploy file's are placeholders, and make_zoo's
docstrings say which each net uses.
"""
import os
import re
import sys

import numpy as np
from google.protobuf import text_format
from jcaffe.coord_map import _spatial
from jcaffe.proto import caffe_pb2

HERE = os.path.dirname(os.path.abspath(__file__))

PORTS = {
    "inception_v3": "cls/inception/deploy_inception-v3.prototxt",
    "inception_v4": "cls/inception/deploy_inception-v4.prototxt",
    "inception_resnet_v2": "cls/inception/deploy_inception-resnet-v2.prototxt",
    "xception": "cls/inception/deploy_xception.prototxt",
    "dpn92": "cls/dpn/deploy_dpn92.prototxt",
    "resnet50": "cls/resnet/deploy_resnet50.prototxt",
    "resnet101": "cls/resnet/deploy_resnet101.prototxt",
    "resnet152": "cls/resnet/deploy_resnet152.prototxt",
    "resnet101_v2": "cls/resnet-v2/deploy_resnet101-v2.prototxt",
    "wrn50_2": "cls/wider-resnet/deploy_wrn50-2.prototxt",
}
# Layers written another way in the port for the same computation, not compared past their
# names, bottoms (in any order) and tops (each printed when the script runs).
_GLOBAL_POOL5 = ("the port pools globally; the Caffe release (KaimingHe/deep-residual-"
                 "networks), which make_zoo follows, writes AVE 7x7 stride 1: the same at "
                 "224x224")
EQUIVALENT = {"resnet50": {"pool5": _GLOBAL_POOL5}, "resnet101": {"pool5": _GLOBAL_POOL5},
              "resnet152": {"pool5": _GLOBAL_POOL5},
              "wrn50_2": {"res8_elewise": "the port lists this sum's bottoms the other way "
                          "round (conv3, match_conv; its other projecting blocks, and make_zoo, "
                          "match_conv first): the same sum"}}
ONLY_PORT = {"Softmax"}
ONLY_OURS = {"DummyData", "Accuracy", "SoftmaxWithLoss"}


def read(path):
    with open(path) as f:
        text = re.sub(r"ceil_mode:\s*false", "round_mode: FLOOR", f.read())
    return text_format.Merge(text, caffe_pb2.NetParameter())


def _pair(param, field, prefix, default):
    """A 2-d convolution's or pooling's spatial field as (h, w), however it is written
    (once, per axis, or as <prefix>_h and <prefix>_w): coord_map's reading of it."""
    return tuple(int(v) for v in np.broadcast_to(_spatial(param, field, prefix, default), 2))


def signature(layer):
    """What the layer is and computes, as a comparable tuple."""
    out = [layer.name, layer.type, tuple(layer.bottom), tuple(layer.top)]
    if layer.type == "Convolution":
        c = layer.convolution_param
        out += [c.num_output, _pair(c, "kernel_size", "kernel", 0),
                _pair(c, "stride", "stride", 1), _pair(c, "pad", "pad", 0),
                _pair(c, "dilation", None, 1), c.group, c.bias_term,
                round(c.bias_filler.value, 6) if c.bias_term else None]
    elif layer.type == "Pooling":
        p = layer.pooling_param
        out += [p.pool, p.global_pooling, _pair(p, "kernel_size", "kernel", 0),
                _pair(p, "stride", "stride", 1), _pair(p, "pad", "pad", 0), p.round_mode]
    elif layer.type == "Eltwise":
        p = layer.eltwise_param
        out += [p.operation, tuple(round(c, 6) for c in p.coeff)]
    elif layer.type == "BatchNorm":
        out.append(round(layer.batch_norm_param.eps, 9))
    elif layer.type == "Scale":
        out.append(layer.scale_param.bias_term)
    elif layer.type == "Dropout":
        out.append(round(layer.dropout_param.dropout_ratio, 6))
    elif layer.type == "InnerProduct":
        out.append(layer.inner_product_param.num_output)
    elif layer.type == "Slice":
        out += [layer.slice_param.axis, tuple(layer.slice_param.slice_point)]
    elif layer.type == "Concat":
        out.append(layer.concat_param.axis)
    return tuple(out)


def compare(ours, port, equivalent=()):
    """-> (number of layers compared, [(port's, ours) signatures that differ]); the layers
    named in ``equivalent`` compared by their names, bottoms (in any order) and tops
    only."""
    a = [signature(l) for l in port.layer if l.type not in ONLY_PORT]
    b = [signature(l) for l in ours.layer if l.type not in ONLY_OURS]
    a, b = ([(x[0], x[1], tuple(sorted(x[2])), x[3]) if x[0] in equivalent else x
             for x in side] for side in (a, b))
    diffs = [(x, y) for x, y in zip(a, b) if x != y]
    if len(a) != len(b):
        diffs.append(("%d layers" % len(a), "%d layers" % len(b)))
    return len(a), diffs


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in PORTS:
        raise SystemExit("usage: compare_port.py {%s} PORT.prototxt (soeaver/caffe-model's "
                         "file for that net: %s)" % ("|".join(PORTS), PORTS))
    name, path = sys.argv[1:]
    ours = read(os.path.join(HERE, name + ".prototxt"))
    equivalent = EQUIVALENT.get(name, {})
    count, diffs = compare(ours, read(path), equivalent)
    for layer, why in equivalent.items():
        print("%s: %s" % (layer, why))
    for x, y in diffs[:10]:
        print("port:", x)
        print("ours:", y)
    print("%s: %d layers compared, %d differ" % (name, count, len(diffs)))
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
