"""What to write instead of the fields and layer types of Caffe's forks.

Many published prototxts were written for a fork of Caffe, not for BVLC's: the ports of
PyTorch and TensorFlow models with ``pooling_param { ceil_mode: false }``, MobileNet's
``ConvolutionDepthwise``, SSD's ``PriorBox`` and ``DetectionOutput``, Faster R-CNN's
``ROIPooling``. BVLC Caffe rejects them, and so does jcaffe (its caffe.proto is BVLC's),
but its error then says where the thing comes from and what BVLC's Caffe writes for it:
a field or a layer of its own, or a Python layer where it has none. Nothing here
rewrites a file: a fork's layer can differ from its BVLC counterpart in details (its
rounding, its defaults), and a silent rewrite would hide that.
"""
import re

# (message type, field) -> what BVLC's caffe.proto writes instead
FIELDS = {
    ("caffe.PoolingParameter", "ceil_mode"): (
        "ceil_mode is a field of Caffe's forks (the ports of PyTorch and TensorFlow models "
        "use it), not of BVLC's caffe.proto. BVLC's Pooling rounds its output size up "
        "(round_mode: CEIL, the default, what ceil_mode: true asks for); for ceil_mode: "
        "false write round_mode: FLOOR"),
}

_PYTHON = ("; BVLC's Caffe has no layer for it: write it as a Python layer (type: "
           "\"Python\", python_param { module layer })")

_DEPTHWISE = ("a depthwise convolution of MobileNet's Caffe forks: in BVLC's Caffe, a "
              "Convolution whose group is its input channels (num_output a multiple of "
              "them), which jcaffe runs as a depthwise convolution")

# layer type -> where it comes from and what to write in BVLC's Caffe
LAYER_TYPES = {
    "ConvolutionDepthwise": _DEPTHWISE,
    "DepthwiseConvolution": _DEPTHWISE,
    "ReLU6": ("a fork's min(max(x, 0), 6): in BVLC's Caffe, Clip with clip_param "
              "{ min: 0 max: 6 }"),
    "BN": ("SegNet's fork's batch normalization with its own scale and shift: in BVLC's "
           "Caffe, a BatchNorm followed by a Scale with bias_term: true"),
    "Axpy": ("the SENet fork's a * x + y with a per channel: in BVLC's Caffe, a Scale with "
             "two bottoms (x, then a reshaped to (N, C)) and axis: 0, then an Eltwise SUM"),
    "Interp": ("a bilinear resize of the PSPNet and DeepLab forks" + _PYTHON
               + " (FCN's upsampling, a Deconvolution with a bilinear weight_filler and "
               "lr_mult: 0, scales by an integer factor, but its sizes and borders are not "
               "Interp's)"),
    "Upsample": "SegNet's fork's unpooling by the pooling indices" + _PYTHON,
    "Permute": "SSD's fork's transpose" + _PYTHON,
    "Normalize": "SSD's fork's L2 normalization across channels" + _PYTHON,
    "PriorBox": "SSD's fork's prior boxes" + _PYTHON,
    "DetectionOutput": "SSD's fork's box decoding and non-maximum suppression" + _PYTHON,
    "MultiBoxLoss": "SSD's fork's detection loss" + _PYTHON,
    "ROIPooling": "py-faster-rcnn's fork's region pooling" + _PYTHON,
    "PSROIPooling": "R-FCN's fork's position-sensitive region pooling" + _PYTHON,
    "ShuffleChannel": "ShuffleNet's forks' channel shuffle" + _PYTHON,
}

_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')


def field_hint(parse_error):
    """The hint for a text-format parse error about a fork's field ('' if none)."""
    m = _NO_FIELD.search(parse_error)
    return FIELDS.get(m.groups(), "") if m else ""


def layer_hint(type_name):
    """The hint for a layer type of a fork ('' if none)."""
    hint = LAYER_TYPES.get(type_name)
    return "'%s' is %s" % (type_name, hint) if hint else ""
