"""A fork's field or layer type is rejected as BVLC's Caffe rejects it, and the error
says what BVLC writes instead (jcaffe/forks.py)."""
import numpy as np
import pytest

import jcaffe
from jcaffe import forks, protoio
from jcaffe.errors import PrototxtError, UnknownLayerTypeError
from jcaffe.proto import caffe_pb2
from netutil import make_net, write_prototxt

INPUT = ('layer { name: "in" type: "Input" top: "x" '
         'input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }\n')


def test_ceil_mode_names_its_line_and_round_mode(tmp_path):
    """soeaver/caffe-model's ports write ``ceil_mode: false`` (36 of its 58 classification
    prototxts): the error keeps protobuf's location and says round_mode: FLOOR."""
    path = write_prototxt(tmp_path, INPUT + (
        'layer { name: "pool" type: "Pooling" bottom: "x" top: "y"\n'
        '  pooling_param { pool: MAX kernel_size: 2 stride: 2\n'
        '    ceil_mode: false } }\n'))
    with pytest.raises(PrototxtError) as info:
        protoio.read_prototxt(path)
    err = info.value
    assert (err.line, err.column) == (4, 5)
    assert 'has no field named "ceil_mode". ceil_mode is a field of Caffe\'s forks' in str(err)
    assert "round_mode: FLOOR" in str(err)


def test_round_mode_floor_is_what_ceil_mode_false_computes(tmp_path):
    """The hint's rewrite computes what the fork's file asked for: 5 -> 2 rounded down
    (3 with BVLC's default ceil, the fork's ceil_mode: true)."""
    pool = ('layer { name: "pool" type: "Pooling" bottom: "x" top: "y" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 %s } }')
    floor = make_net(tmp_path, INPUT + pool % "round_mode: FLOOR", phase=jcaffe.TEST)
    ceil = make_net(tmp_path, INPUT + pool % "", phase=jcaffe.TEST)
    assert floor.blobs["y"].shape == (1, 2, 2, 2)
    assert ceil.blobs["y"].shape == (1, 2, 3, 3)


def test_other_unknown_fields_have_no_hint(tmp_path):
    path = write_prototxt(tmp_path, INPUT.replace("top: \"x\"", "top: \"x\" bogus: 1"))
    with pytest.raises(PrototxtError) as info:
        protoio.read_prototxt(path)
    assert str(info.value).endswith('has no field named "bogus".')


@pytest.mark.parametrize("fork_type, says", [
    ("ConvolutionDepthwise", "Convolution whose group is its input channels"),
    ("ReLU6", "Clip with clip_param { min: 0 max: 6 }"),
    ("BN", "a BatchNorm followed by a Scale with bias_term: true"),
    ("PriorBox", "write it as a Python layer"),
])
def test_fork_layer_types_say_what_bvlc_writes(tmp_path, fork_type, says):
    with pytest.raises(UnknownLayerTypeError) as info:
        make_net(tmp_path, INPUT + 'layer { name: "f" type: "%s" bottom: "x" top: "y" }'
                 % fork_type)
    message = str(info.value)
    assert message.startswith("Unknown layer type: '%s' (layer 'f'). '%s' is "
                              % (fork_type, fork_type))
    assert says in message
    assert message.index(says) < message.index("Known types: ")


def test_each_hint_names_only_types_and_fields_bvlc_has():
    """Every layer type a hint tells the user to write is one jcaffe registers, and the
    fork's own types are not."""
    known = set(jcaffe.layer_type_list())
    assert not known & set(forks.LAYER_TYPES)
    for hint in forks.LAYER_TYPES.values():
        for named in ("Convolution", "Clip", "BatchNorm", "Scale", "Eltwise",
                      "Deconvolution", "Python"):
            if named in hint:
                assert named in known
    assert "FLOOR" in caffe_pb2.PoolingParameter.RoundMode.keys()


def test_depthwise_hint_builds_a_depthwise_convolution(tmp_path):
    """The hint's Convolution (group = input channels) runs: each output channel reads
    its own input channel."""
    net = make_net(tmp_path, INPUT + (
        'layer { name: "dw" type: "Convolution" bottom: "x" top: "y" convolution_param '
        '{ num_output: 2 group: 2 kernel_size: 1 bias_term: false } }'), phase=jcaffe.TEST)
    net.params["dw"][0].data[...] = np.array([2.0, 3.0]).reshape(2, 1, 1, 1)
    x = np.random.default_rng(0).random((1, 2, 5, 5)).astype(np.float32)
    y = net.forward(x=x)["y"]
    np.testing.assert_allclose(y, x * np.array([2.0, 3.0]).reshape(1, 2, 1, 1), rtol=1e-6)
