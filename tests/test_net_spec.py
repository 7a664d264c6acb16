"""NetSpec: pycaffe's Python net description, checked through the proto it writes."""

import pytest
from google.protobuf import text_format

from jcaffe import net_spec
from jcaffe.net_spec import NetSpec, NetSpecError, layers as L, params as P, to_proto
from jcaffe.proto import caffe_pb2


def parse(net):
    """Round-trip through prototxt, as a user writing the file would."""
    parsed = text_format.Parse(str(net), caffe_pb2.NetParameter())
    assert parsed == net
    return parsed


def lenet(n, batch=50):
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch, 1, 28, 28]),
                                         dict(dim=[batch, 1, 1, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool1, num_output=500,
                           weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10,
                           weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def wiring(net):
    return [(l.name, l.type, list(l.bottom), list(l.top)) for l in net.layer]


def test_lenet_named():
    net = parse(lenet(NetSpec()))
    assert wiring(net) == [
        ("data", "DummyData", [], ["data", "label"]),
        ("conv1", "Convolution", ["data"], ["conv1"]),
        ("pool1", "Pooling", ["conv1"], ["pool1"]),
        ("ip1", "InnerProduct", ["pool1"], ["ip1"]),
        ("relu1", "ReLU", ["ip1"], ["ip1"]),
        ("ip2", "InnerProduct", ["ip1"], ["ip2"]),
        ("loss", "SoftmaxWithLoss", ["ip2", "label"], ["loss"]),
    ]
    data, conv, pool, ip1 = net.layer[:4]
    assert [list(s.dim) for s in data.dummy_data_param.shape] == [[50, 1, 28, 28], [50, 1, 1, 1]]
    assert data.transform_param.scale == pytest.approx(1 / 255)
    assert list(conv.convolution_param.kernel_size) == [5]
    assert conv.convolution_param.num_output == 20
    assert conv.convolution_param.weight_filler.type == "xavier"
    assert pool.pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert pool.pooling_param.kernel_size == 2 and pool.pooling_param.stride == 2
    assert ip1.inner_product_param.num_output == 500


def test_anonymous_tops_are_named_by_type_and_count():
    data, label = L.DummyData(shape=dict(dim=[2, 3]), ntop=2)
    ip1 = L.InnerProduct(data, num_output=4)
    relu = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu, num_output=2)
    net = parse(L.SoftmaxWithLoss(ip2, label).to_proto())
    assert wiring(net) == [
        ("DummyData1", "DummyData", [], ["DummyData1", "DummyData2"]),
        ("InnerProduct1", "InnerProduct", ["DummyData1"], ["InnerProduct1"]),
        ("ReLU1", "ReLU", ["InnerProduct1"], ["InnerProduct1"]),
        ("InnerProduct2", "InnerProduct", ["InnerProduct1"], ["InnerProduct2"]),
        ("SoftmaxWithLoss1", "SoftmaxWithLoss", ["InnerProduct2", "DummyData2"],
         ["SoftmaxWithLoss1"]),
    ]


def test_unnamed_intermediates_inside_a_netspec():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3]))
    hidden = L.TanH(L.InnerProduct(n.data, num_output=3))
    n.out = L.InnerProduct(hidden, num_output=1)
    assert wiring(parse(n.to_proto())) == [
        ("data", "Input", [], ["data"]),
        ("InnerProduct1", "InnerProduct", ["data"], ["InnerProduct1"]),
        ("TanH1", "TanH", ["InnerProduct1"], ["TanH1"]),
        ("out", "InnerProduct", ["TanH1"], ["out"]),
    ]


def test_data_layer_ntop2_and_enum_values():
    n = NetSpec()
    n.data, n.label = L.Data(source="train_lmdb", backend=P.Data.LMDB,
                             batch_size=64, include=dict(phase=caffe_pb2.TRAIN),
                             ntop=2)
    (layer,) = parse(n.to_proto()).layer
    assert list(layer.top) == ["data", "label"]
    assert layer.data_param.backend == caffe_pb2.DataParameter.LMDB
    assert layer.data_param.source == "train_lmdb" and layer.data_param.batch_size == 64
    assert layer.include[0].phase == caffe_pb2.TRAIN
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE
    assert P.Filler.AVERAGE == caffe_pb2.FillerParameter.AVERAGE


def test_ntop0_returns_function_and_names_layer():
    n = NetSpec()
    n.a, n.b = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence = L.Silence(n.a, n.b, ntop=0)
    assert isinstance(n.silence, net_spec.Function)
    assert wiring(parse(n.to_proto()))[1] == ("silence", "Silence", ["a", "b"], [])
    anon = to_proto(L.Silence(L.Input(shape=dict(dim=[1])), ntop=0))
    assert anon.layer[1].name == "Silence1" and not anon.layer[1].top


def test_repeated_params_and_loss_weight():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.ip = L.InnerProduct(n.data, num_output=4,
                          param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)],
                          bias_filler=dict(type="constant", value=0.1))
    n.loss = L.EuclideanLoss(n.ip, n.data, loss_weight=0.5)
    _, ip, loss = parse(n.to_proto()).layer
    assert [p.lr_mult for p in ip.param] == [1, 2]
    assert ip.param[1].decay_mult == 0
    assert ip.inner_product_param.bias_filler.value == pytest.approx(0.1)
    assert list(loss.loss_weight) == [0.5]


def test_python_layer():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1]))
    n.out = L.Python(n.data, python_param=dict(module="mymod", layer="MyLayer",
                                               param_str="{'k': 1}"))
    n.short = L.Python(n.out, module="m2", layer="L2")
    _, out, short = parse(n.to_proto()).layer
    assert out.type == "Python"
    assert out.python_param.module == "mymod" and out.python_param.layer == "MyLayer"
    assert out.python_param.param_str == "{'k': 1}"
    assert (short.python_param.module, short.python_param.layer) == ("m2", "L2")


def test_explicit_param_message_and_name_kwarg():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.up = L.Deconvolution(n.data, name="upsample",
                           convolution_param=dict(kernel_size=4, stride=2,
                                                  weight_filler=dict(type="bilinear")))
    up = parse(n.to_proto()).layer[1]
    assert (up.name, list(up.top)) == ("upsample", ["up"])
    assert up.convolution_param.weight_filler.type == "bilinear"


def test_shared_layer_is_written_once():
    data = L.Input(shape=dict(dim=[1]))
    a, b = L.Split(data, ntop=2)
    net = to_proto(L.Eltwise(a, b), b)
    assert [l.type for l in net.layer] == ["Input", "Split", "Eltwise"]
    assert a.to_proto() == to_proto(a)


def test_param_name_dict_comes_from_the_descriptor():
    names = net_spec.param_name_dict()
    assert names["Convolution"] == "convolution"
    assert names["InnerProduct"] == "inner_product"
    assert names["HDF5Data"] == "hdf5_data"
    assert "Deconvolution" not in names
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert all(v + "_param" in fields for v in names.values())


def test_unknown_kwarg_names_layer_type_and_field():
    data = L.Input(shape=dict(dim=[1]))
    with pytest.raises(NetSpecError, match="Convolution layer: unknown parameter 'kernal_size'"):
        L.Convolution(data, kernal_size=3)
    with pytest.raises(AttributeError):  # pycaffe raised AttributeError here too
        L.Convolution(data, kernal_size=3)
    with pytest.raises(NetSpecError, match="FillerParameter has no field 'typ'.*weight_filler"):
        L.Convolution(data, weight_filler=dict(typ="xavier"))
    with pytest.raises(NetSpecError, match="Deconvolution.*convolution_param=dict"):
        L.Deconvolution(data, kernel_size=4)
    with pytest.raises(TypeError, match="convolution_param.num_output"):
        L.Convolution(data, num_output="ten")


def test_bad_inputs_and_assignments():
    pair = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(pair, ntop=0)
    L.Silence(*pair, ntop=0)
    n = NetSpec()
    with pytest.raises(TypeError, match="ntop=2"):
        n.both = pair
    with pytest.raises(AttributeError, match="no top named 'missing'"):
        n.missing
    n["first"] = pair[0]
    assert n["first"] is n.first
    with pytest.raises(AttributeError, match="NoSuchParameter"):
        P.NoSuch
