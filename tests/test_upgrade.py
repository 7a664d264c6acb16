"""jcaffe.upgrade: old Caffe net and solver formats come out as the current schema."""
import logging

import pytest

from jcaffe import upgrade
from jcaffe.protoio import parse_prototxt
from jcaffe.proto import caffe_pb2 as pb
from jcaffe.upgrade import UpgradeError, upgrade_net_as_needed


def net(text):
    return parse_prototxt(text, pb.NetParameter)


# A LeNet in the V1 format (2014), with the transformation options still in
# data_param as they were before transform_param existed.
LENET_V1 = """
name: "LeNet"
layers {
  name: "mnist"  type: DATA  top: "data"  top: "label"
  data_param { source: "mnist_train_lmdb" backend: LMDB batch_size: 64
               scale: 0.00390625 }
  include { phase: TRAIN }
}
layers {
  name: "conv1"  type: CONVOLUTION  bottom: "data"  top: "conv1"
  blobs_lr: 1  blobs_lr: 2  weight_decay: 1  weight_decay: 0
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
                      weight_filler { type: "xavier" }
                      bias_filler { type: "constant" } }
}
layers {
  name: "pool1"  type: POOLING  bottom: "conv1"  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "ip1"  type: INNER_PRODUCT  bottom: "pool1"  top: "ip1"
  blobs_lr: 1  blobs_lr: 2
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } }
}
layers { name: "relu1"  type: RELU  bottom: "ip1"  top: "ip1" }
layers {
  name: "ip2"  type: INNER_PRODUCT  bottom: "ip1"  top: "ip2"
  param: "shared_w"  blob_share_mode: PERMISSIVE
  inner_product_param { num_output: 10 }
}
layers {
  name: "accuracy"  type: ACCURACY  bottom: "ip2"  bottom: "label"
  top: "accuracy"  include { phase: TEST }
}
layers {
  name: "loss"  type: SOFTMAX_LOSS  bottom: "ip2"  bottom: "label"
  top: "loss"  loss_weight: 1
}
"""

LENET_V2 = """
name: "LeNet"
layer {
  name: "mnist"  type: "Data"  top: "data"  top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "mnist_train_lmdb" backend: LMDB batch_size: 64 }
}
layer {
  name: "conv1"  type: "Convolution"  bottom: "data"  top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
                      weight_filler { type: "xavier" }
                      bias_filler { type: "constant" } }
}
layer {
  name: "pool1"  type: "Pooling"  bottom: "conv1"  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "ip1"  type: "InnerProduct"  bottom: "pool1"  top: "ip1"
  param { lr_mult: 1 }  param { lr_mult: 2 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } }
}
layer { name: "relu1"  type: "ReLU"  bottom: "ip1"  top: "ip1" }
layer {
  name: "ip2"  type: "InnerProduct"  bottom: "ip1"  top: "ip2"
  param { name: "shared_w" share_mode: PERMISSIVE }
  inner_product_param { num_output: 10 }
}
layer {
  name: "accuracy"  type: "Accuracy"  bottom: "ip2"  bottom: "label"
  top: "accuracy"  include { phase: TEST }
}
layer {
  name: "loss"  type: "SoftmaxWithLoss"  bottom: "ip2"  bottom: "label"
  top: "loss"  loss_weight: 1
}
"""


def test_v1_lenet_upgrades_to_v2(caplog):
    old = net(LENET_V1)
    assert upgrade.net_needs_data_upgrade(old)
    assert upgrade.net_needs_v1_to_v2_upgrade(old)
    with caplog.at_level(logging.INFO, logger="jcaffe"):
        assert upgrade_net_as_needed(old, "lenet.prototxt")
    assert not old.layers
    types = [layer.type for layer in old.layer]
    assert types == ["Data", "Convolution", "Pooling", "InnerProduct", "ReLU",
                     "InnerProduct", "Accuracy", "SoftmaxWithLoss"]
    conv = old.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert conv.convolution_param.num_output == 20
    assert list(conv.convolution_param.kernel_size) == [5]
    ip1 = old.layer[3]
    assert [p.lr_mult for p in ip1.param] == [1, 2]
    assert not ip1.param[0].HasField("decay_mult")  # stays at the schema default
    assert old.layer[5].param[0].share_mode == pb.ParamSpec.PERMISSIVE
    assert old.layer[0].transform_param.scale == pytest.approx(1 / 256)
    assert not old.layer[0].data_param.HasField("scale")
    assert old.layer[6].include[0].phase == pb.TEST
    assert list(old.layer[7].loss_weight) == [1]
    assert old == net(LENET_V2)
    assert "lenet.prototxt" in caplog.text
    assert "8 V1 'layers'" in caplog.text and "transform_param" in caplog.text


def test_current_net_is_left_alone(caplog):
    current = net(LENET_V2)
    with caplog.at_level(logging.INFO, logger="jcaffe"):
        assert not upgrade_net_as_needed(current)
    assert current == net(LENET_V2)
    assert not upgrade.net_needs_upgrade(current)
    assert caplog.text == ""


def test_v1_type_table_covers_the_enum():
    assert set(upgrade.V1_LAYER_TYPES) == set(pb.V1LayerParameter.LayerType.keys())
    assert upgrade.upgrade_v1_layer_type(pb.V1LayerParameter.SOFTMAX_LOSS) == "SoftmaxWithLoss"
    assert upgrade.upgrade_v1_layer_type(pb.V1LayerParameter.NONE) == ""
    with pytest.raises(UpgradeError, match="unknown V1 layer type 999"):
        upgrade.upgrade_v1_layer_type(999)


def test_v1_param_fields_all_exist_in_layer_parameter():
    layer_fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
    for name in upgrade._V1_PARAM_FIELDS:
        v1_type = pb.V1LayerParameter.DESCRIPTOR.fields_by_name[name].message_type
        assert layer_fields[name].message_type is v1_type
    assert len(upgrade._V1_PARAM_FIELDS) == 30


def test_mixing_layer_and_layers_is_refused():
    mixed = net('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }')
    with pytest.raises(UpgradeError, match="mixes 'layer'.*'layers'"):
        upgrade_net_as_needed(mixed)


# ---------------------------------------------------------------------------
# V0

# A V0 net (2013): string types, options directly in the layer, and a
# separate padding layer in front of a convolution.
SMALL_V0 = """
name: "tiny"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
layers { layer { name: "pad1" type: "padding" pad: 2 }
         bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 8 kernelsize: 5
                 stride: 2 group: 1 biasterm: false
                 weight_filler { type: "gaussian" std: 0.01 }
                 blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.5 }
         bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 4 }
         bottom: "norm1" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""


def test_v0_net_upgrades_to_current(caplog):
    old = net(SMALL_V0)
    assert upgrade.net_needs_v0_to_v1_upgrade(old)
    with caplog.at_level(logging.INFO, logger="jcaffe"):
        assert upgrade_net_as_needed(old, "tiny.prototxt")
    names = [layer.name for layer in old.layer]
    assert names == ["input", "conv1", "relu1", "pool1", "norm1", "fc", "prob"]
    assert [layer.type for layer in old.layer] == [
        "Input", "Convolution", "ReLU", "Pooling", "LRN", "InnerProduct", "Softmax"]
    conv = old.layer[1]
    assert list(conv.bottom) == ["data"]  # the padding layer is folded away
    cp = conv.convolution_param
    assert (list(cp.pad), list(cp.kernel_size), list(cp.stride)) == ([2], [5], [2])
    assert cp.num_output == 8 and cp.bias_term is False and cp.group == 1
    assert cp.weight_filler.type == "gaussian"
    assert cp.weight_filler.std == pytest.approx(0.01)
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    pp = old.layer[3].pooling_param
    assert (pp.pool, pp.kernel_size, pp.stride) == (pb.PoolingParameter.AVE, 3, 2)
    assert old.layer[4].lrn_param.local_size == 3
    assert old.layer[5].inner_product_param.num_output == 4
    assert list(old.layer[0].input_param.shape[0].dim) == [1, 3, 9, 9]
    assert "V0" in caplog.text and "tiny.prototxt" in caplog.text


def test_v0_option_without_a_place_is_dropped_with_a_warning(caplog):
    old = net('input: "x" layers { layer { name: "r" type: "relu" num_output: 3 } '
              'bottom: "x" top: "y" }')
    with caplog.at_level(logging.INFO, logger="jcaffe"):
        upgrade_net_as_needed(old)
    assert old.layer[0].type == "ReLU" and not old.layer[0].HasField("relu_param")
    assert not old.input  # no shape given, so no Input layer either
    assert "num_output" in caplog.text and "'relu'" in caplog.text
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_v0_transformation_options_go_to_transform_param():
    old = net('layers { layer { name: "d" type: "data" source: "db" batchsize: 8 '
              'meanfile: "mean.binaryproto" cropsize: 4 mirror: true scale: 0.5 } '
              'top: "data" top: "label" }')
    upgrade_net_as_needed(old)
    layer = old.layer[0]
    assert (layer.data_param.source, layer.data_param.batch_size) == ("db", 8)
    tp = layer.transform_param
    assert (tp.mean_file, tp.crop_size, tp.mirror, tp.scale) == (
        "mean.binaryproto", 4, True, 0.5)


def test_v0_padding_into_a_non_conv_layer_is_refused():
    bad = net('input: "data" '
              'layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "data" top: "p" } '
              'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }')
    with pytest.raises(UpgradeError, match="padding layer 'pad' feeds layer 'r' of type 'relu'"):
        upgrade_net_as_needed(bad)


def test_v0_unknown_blob_and_unknown_type_are_refused():
    with pytest.raises(UpgradeError, match="unknown blob 'nowhere'"):
        upgrade_net_as_needed(net('layers { layer { name: "r" type: "relu" } '
                                  'bottom: "nowhere" top: "r" }'))
    bad = net('input: "x" '
              'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" } '
              'layers { layer { name: "c" type: "conv" } bottom: "p" top: "c" } '
              'layers { layer { name: "w" type: "warp_drive" } bottom: "c" top: "w" }')
    before = str(bad)
    with pytest.raises(UpgradeError, match="unknown V0 layer type 'warp_drive'"):
        upgrade_net_as_needed(bad)
    assert str(bad) == before  # a failed upgrade changes nothing


# ---------------------------------------------------------------------------
# Data transformation options (V1 nets of early 2014)

def test_data_transformation_upgrade():
    old = net('layers { name: "d" type: IMAGE_DATA top: "data" top: "label" '
              'image_data_param { source: "list.txt" mean_file: "m.binaryproto" '
              'crop_size: 227 mirror: true } }')
    assert upgrade.net_needs_data_upgrade(old)
    upgrade.upgrade_net_data_transformation(old)
    layer = old.layers[0]
    assert layer.image_data_param.source == "list.txt"
    for name in ("mean_file", "crop_size", "mirror", "scale"):
        assert not layer.image_data_param.HasField(name)
    tp = layer.transform_param
    assert (tp.mean_file, tp.crop_size, tp.mirror) == ("m.binaryproto", 227, True)
    assert not tp.HasField("scale")
    assert not upgrade.net_needs_data_upgrade(old)


# ---------------------------------------------------------------------------
# Net-level inputs

def test_input_dim_becomes_a_leading_input_layer():
    old = net('input: "data" input_dim: 10 input_dim: 3 input_dim: 227 input_dim: 227 '
              'input: "label" input_dim: 10 input_dim: 1 input_dim: 1 input_dim: 1 '
              'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert upgrade_net_as_needed(old)
    first = old.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data", "label"])
    assert [list(s.dim) for s in first.input_param.shape] == [[10, 3, 227, 227],
                                                              [10, 1, 1, 1]]
    assert old.layer[1].name == "r"
    assert not old.input and not old.input_dim and not old.input_shape


def test_input_shape_becomes_an_input_layer():
    old = net('input: "x" input_shape { dim: 2 dim: 5 }')
    upgrade.upgrade_net_input(old)
    assert [list(s.dim) for s in old.layer[0].input_param.shape] == [[2, 5]]


def test_input_without_shape_is_just_dropped():
    """Old .caffemodel files list the inputs by name only."""
    old = net('input: "data" layer { name: "r" type: "ReLU" }')
    upgrade.upgrade_net_input(old)
    assert [layer.name for layer in old.layer] == ["r"] and not old.input


def test_too_few_input_dims_is_refused():
    with pytest.raises(UpgradeError, match="2 net inputs need 8 input_dim values"):
        upgrade_net_as_needed(net('input: "a" input: "b" input_dim: 1 input_dim: 2 '
                                  'input_dim: 3 input_dim: 4'))


# ---------------------------------------------------------------------------
# BatchNorm

def test_batch_norm_param_specs_are_frozen():
    old = net('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" '
              'param { lr_mult: 1 } param { name: "v" lr_mult: 1 } param { lr_mult: 1 } } '
              'layer { name: "other" type: "Scale" bottom: "x" top: "x" '
              'param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }')
    assert upgrade.net_needs_batch_norm_upgrade(old)
    assert upgrade_net_as_needed(old)
    specs = old.layer[0].param
    assert [(p.lr_mult, p.decay_mult) for p in specs] == [(0, 0)] * 3
    assert specs[1].name == "v"  # names (and so sharing) are kept
    assert [p.lr_mult for p in old.layer[1].param] == [1, 1, 1]
    assert not upgrade.net_needs_batch_norm_upgrade(old)
    assert not upgrade_net_as_needed(old)


# ---------------------------------------------------------------------------
# Solver

@pytest.mark.parametrize("old, new", [
    ("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
    ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_upgrade(old, new, caplog):
    solver = parse_prototxt("base_lr: 0.01 solver_type: %s" % old, pb.SolverParameter)
    with caplog.at_level(logging.INFO, logger="jcaffe"):
        assert upgrade.upgrade_solver_as_needed(solver, "solver.prototxt")
    assert solver.type == new and not solver.HasField("solver_type")
    assert solver.base_lr == pytest.approx(0.01)
    assert "solver.prototxt" in caplog.text and new in caplog.text
    assert not upgrade.upgrade_solver_as_needed(solver)


def test_solver_with_both_type_fields_is_refused():
    solver = parse_prototxt('solver_type: ADAM type: "Adam"', pb.SolverParameter)
    with pytest.raises(UpgradeError, match="both"):
        upgrade.upgrade_solver_as_needed(solver)


def test_snapshot_prefix(tmp_path):
    solver = pb.SolverParameter()
    assert upgrade.upgrade_snapshot_prefix(solver, "models/lenet_solver.prototxt")
    assert solver.snapshot_prefix == "models/lenet_solver"
    solver.snapshot_prefix = str(tmp_path)
    assert upgrade.upgrade_snapshot_prefix(solver, "models/lenet_solver.prototxt")
    assert solver.snapshot_prefix == str(tmp_path / "lenet_solver")
    assert not upgrade.upgrade_snapshot_prefix(solver, "models/lenet_solver.prototxt")
