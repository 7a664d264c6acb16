"""jcaffe.coord_map (pycaffe's caffe.coord_map): coordinate maps between NetSpec tops,
and the Crop layers they define, checked against hand-derived maps, the crop offsets
published with FCN's nets, and a forward pass that lines pixels up."""
import numpy as np
import pytest

import jcaffe as caffe
from jcaffe import coord_map as cm
from jcaffe import layers as L, params as P


def conv(bottom, ks, stride=1, pad=0, **kw):
    return L.Convolution(bottom, num_output=2, kernel_size=ks, stride=stride, pad=pad, **kw)


def deconv(bottom, ks, stride, pad=0):
    return L.Deconvolution(bottom, convolution_param=dict(
        num_output=2, kernel_size=ks, stride=stride, pad=pad, bias_term=False))


def conv_pool_deconv(ks=3, pad=0, pool=2, dstride=2, dpad=0):
    """data -> conv (ks, stride 1, pad) -> max pool (pool, stride pool) -> deconv
    (kernel 2 * dstride, stride dstride, dpad)."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 64, 64]))
    n.conv = conv(n.data, ks, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool)
    n.deconv = deconv(n.pool, 2 * dstride, dstride, dpad)
    return n


def check_map(got, axis, a, b):
    assert got[0] == axis
    np.testing.assert_allclose(np.broadcast_to(got[1], np.shape(a)), a)
    np.testing.assert_allclose(np.broadcast_to(got[2], np.shape(b)), b)


# The maps below are derived by hand, from data coordinate x forward:
# conv k3 s1 p0: x - 1;  pool k2 s2: y / 2 - 1/4;  deconv k4 s2: 2 y + 3/2  -> x.
# pool k4 s4: y / 4 - 3/8;  deconv k8 s4: 4 y + 7/2  ->  x + 1, so data = deconv - 1.
@pytest.mark.parametrize("kw, b", [
    (dict(), 0.0),
    (dict(pool=4, dstride=4), -1.0),
    (dict(pad=3), -3.0),            # conv padding moves the output right
    (dict(dpad=3), 3.0),            # deconv padding moves it back
    (dict(pad=3, dpad=3), 0.0),
    (dict(ks=5), 1.0),              # conv k5: x - 2
])
def test_conv_pool_deconv_maps(kw, b):
    n = conv_pool_deconv(**kw)
    check_map(cm.coord_map_from_to(n.deconv, n.data), 1, [1.0], [b])


def test_each_layer_map():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 64, 64]))
    n.c = conv(n.data, 5, stride=2, pad=1, dilation=3)       # effective kernel 13
    check_map(cm.coord_map(n.c.fn), 1, [0.5], [(1 - 6) / 2])
    n.p = L.Pooling(n.data, pooling_param=dict(kernel_size=3, stride=2, pad=1))
    check_map(cm.coord_map(n.p.fn), 1, [0.5], [0.0])
    n.d = deconv(n.data, 4, 2, 1)
    check_map(cm.coord_map(n.d.fn), 1, [2.0], [0.5])
    n.r = L.ReLU(n.data)
    assert cm.coord_map(n.r.fn) == (None, 1, 0)
    n.cr = L.Crop(n.d, n.data, axis=2, offset=[3, 4])
    check_map(cm.coord_map(n.cr.fn), 1, [1.0, 1.0], [-3.0, -4.0])
    assert cm.conv_params(n.c.fn)[2].tolist() == [13]


def test_param_message_and_keywords_read_the_same():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 32, 32]))
    n.a = L.Convolution(n.data, num_output=2, kernel_size=3, stride=2, pad=1)
    n.b = L.Convolution(n.data, convolution_param=dict(num_output=2, kernel_size=3, stride=2,
                                                       pad=1))
    n.c = L.Convolution(n.data, num_output=2, kernel_h=3, kernel_w=3, stride_h=2, stride_w=2,
                        pad_h=1, pad_w=1)
    maps = [cm.coord_map(top.fn) for top in (n.a, n.b, n.c)]
    for m in maps[1:]:
        check_map(m, 1, np.broadcast_to(maps[0][1], (2,)), np.broadcast_to(maps[0][2], (2,)))


def test_anisotropic_map_is_its_isotropic_parts():
    def stack(ks, stride, pad):
        n = caffe.NetSpec()
        n.data = L.Input(shape=dict(dim=[1, 1, 64, 64]))
        n.conv = conv(n.data, ks, stride=stride, pad=pad)
        n.deconv = deconv(n.conv, 4, 2)
        return cm.coord_map_from_to(n.deconv, n.data)
    _, a3, b3 = stack(3, 2, 0)
    _, a5, b5 = stack(5, 2, 10)
    ax, a, b = stack([3, 5], [2, 2], [0, 10])
    assert ax == 1 and a.tolist() == [a3[0], a5[0]] and b.tolist() == [b3[0], b5[0]]


def test_three_spatial_axes():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 16, 16, 16]))
    n.conv = conv(n.data, [3, 3, 3], pad=[0, 1, 2])
    n.deconv = deconv(n.conv, 3, 1)
    # conv: x - 1 + pad; deconv k3 s1 p0: y + 1  ->  data = deconv - pad
    check_map(cm.coord_map_from_to(n.deconv, n.data), 1, [1, 1, 1], [0, -1, -2])


def test_two_bottoms_two_tops_map_alike():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 32, 32]))
    n.aux = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.c_data, n.c_aux = L.Convolution(n.data, n.aux, ntop=2, num_output=2, kernel_size=5,
                                      stride=2)
    # conv k5 s2: c = x / 2 - 1, so x = 2 c + 2
    check_map(cm.coord_map_from_to(n.c_data, n.data), 1, [2.0], [2.0])
    check_map(cm.coord_map_from_to(n.c_aux, n.aux), 1, [2.0], [2.0])


def test_crop_of_a_crop_adds_its_offset():
    n = conv_pool_deconv(dpad=0, pad=0)
    n.cropped = L.Crop(n.deconv, n.data, axis=2, offset=4)
    check_map(cm.coord_map_from_to(n.cropped, n.data), 1, [1.0], [4.0])
    # the Crop's second bottom gives only a size: no path to 'data' through it
    n.other = L.Input(shape=dict(dim=[1, 1, 64, 64]))
    n.sized = L.Crop(n.other, n.data, axis=2, offset=0)
    with pytest.raises(RuntimeError, match="share no ancestor"):
        cm.coord_map_from_to(n.sized, n.deconv)


def test_compose_and_inverse():
    m = (1, np.array([0.25, 2.0]), np.array([-1.5, 3.0]))
    ax, a, b = cm.compose(m, cm.inverse(m))
    assert ax == 1 and a.tolist() == [1, 1] and b.tolist() == [0, 0]
    assert cm.compose((None, 1, 0), m)[0] == 1 and cm.compose(m, (None, 1, 0))[0] == 1
    # a1 (a2 x + b2) + b1
    assert cm.compose((1, 2.0, 1.0), (1, 3.0, 5.0)) == (1, 6.0, 11.0)
    with pytest.raises(cm.AxisMismatchException, match="axis 1 .* axis 2"):
        cm.compose((1, 1, 0), (2, 1, 0))


def vgg_fcn():
    """FCN's VGG-16 trunk (conv1_1 padded by 100), fc6/fc7 as convolutions, scores
    at 1/32, 1/16 and 1/8 and their upsamplings: FCN-32s, -16s and -8s."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 64, 64]))
    top, pool = n.data, {}
    for stage, convs in enumerate((2, 2, 3, 3, 3), 1):
        for i in range(convs):
            top = conv(top, 3, pad=100 if top is n.data else 1)
            top = L.ReLU(top, in_place=True)
        top = pool[stage] = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.fc7 = conv(L.Dropout(L.ReLU(conv(top, 7)), in_place=True), 1)
    n.score_fr = conv(n.fc7, 1)
    n.upscore32 = deconv(n.score_fr, 64, 32)            # FCN-32s
    n.upscore2 = deconv(n.score_fr, 4, 2)               # FCN-16s and -8s
    n.score_pool4 = conv(pool[4], 1)
    n.score_pool3 = conv(pool[3], 1)
    return n


def crop_offset(n, name):
    """(axis, offsets) of the Crop layer ``name`` in NetSpec ``n``'s prototxt."""
    layer, = [lp for lp in n.to_proto().layer if lp.name == name]
    assert layer.type == "Crop"
    return layer.crop_param.axis, list(layer.crop_param.offset)


def test_fcn_crop_offsets():
    """The offsets in FCN's published train.prototxt files (fcn.berkeleyvision.org)."""
    n = vgg_fcn()
    n.score32 = cm.crop(n.upscore32, n.data)
    assert crop_offset(n, "score32") == (2, [19])
    assert n.score32.fn.inputs == (n.upscore32, n.data)
    # FCN-16s: fuse pool4's scores with the 2x upsampling, upsample 16x
    n.score_pool4c = cm.crop(n.score_pool4, n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore16 = deconv(n.fuse_pool4, 32, 16)
    n.score16 = cm.crop(n.upscore16, n.data)
    assert crop_offset(n, "score_pool4c") == (2, [5])
    assert crop_offset(n, "score16") == (2, [27])
    # FCN-8s: one more fusion, with pool3, and an 8x upsampling
    n.upscore_pool4 = deconv(n.fuse_pool4, 4, 2)
    n.score_pool3c = cm.crop(n.score_pool3, n.upscore_pool4)
    n.fuse_pool3 = L.Eltwise(n.upscore_pool4, n.score_pool3c, operation=P.Eltwise.SUM)
    n.upscore8 = deconv(n.fuse_pool3, 16, 8)
    n.score8 = cm.crop(n.upscore8, n.data)
    assert crop_offset(n, "score_pool3c") == (2, [9])
    assert crop_offset(n, "score8") == (2, [31])
    assert 'type: "Crop"' in str(n.to_proto())


def delta_kernels(net, layer, index):
    """Make ``layer``'s one-channel kernel a delta at ``index`` (so it shifts)."""
    weights = net.params[layer][0].data
    weights[...] = 0
    weights[(0, 0) + tuple(index)] = 1


def one_channel(bottom, kind, **cp):
    cp.update(num_output=1, bias_term=False)
    return getattr(L, kind)(bottom, convolution_param=cp)


def test_crop_lines_pixels_up_through_shifting_layers(rng):
    """Convolutions whose kernels are deltas only move pixels: the Crop that crop()
    defines must give back the input exactly (offsets found by hand: 7 rows, 5 cols)."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 12, 12]))
    n.c1 = one_channel(n.data, "Convolution", kernel_size=3, pad_h=5, pad_w=3)  # in[y-4], [x-2]
    n.c2 = one_channel(n.c1, "Convolution", kernel_size=3, pad=4, dilation=2)  # in[y-2]
    n.r = L.ReLU(n.c2)
    n.d = one_channel(n.r, "Deconvolution", kernel_size=3)                     # in[y-1]
    n.out = cm.crop(n.d, n.data)
    assert crop_offset(n, "out") == (2, [7, 5])
    net = caffe.Net(n.to_proto(), caffe.TEST)
    for layer in ("c1", "c2", "d"):
        delta_kernels(net, layer, (1, 1))
    x = rng.uniform(0.5, 1.0, (1, 1, 12, 12)).astype(np.float32)   # positive: ReLU keeps it
    out = net.forward(data=x)["out"]
    np.testing.assert_array_equal(out, x)


def test_crop_lines_pixels_up_through_strides(rng):
    """conv k3 s2 p2 keeps data[2i - 1]; deconv k3 s2 puts it back at 2i + 1: the
    crop (offset 2) must put every kept (odd) pixel where it was, zeros between."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 11, 11]))
    n.c = one_channel(n.data, "Convolution", kernel_size=3, stride=2, pad=2)
    n.d = one_channel(n.c, "Deconvolution", kernel_size=3, stride=2)
    n.out = cm.crop(n.d, n.data)
    assert crop_offset(n, "out") == (2, [2])
    net = caffe.Net(n.to_proto(), caffe.TEST)
    delta_kernels(net, "c", (1, 1))
    delta_kernels(net, "d", (1, 1))
    x = rng.normal(size=(1, 1, 11, 11)).astype(np.float32)
    out = net.forward(data=x)["out"]
    odd = np.zeros((11, 11), bool)
    odd[1::2, 1::2] = True
    np.testing.assert_array_equal(out[0, 0], np.where(odd, x[0, 0], 0))


def test_crop_refuses_what_it_cannot_align():
    n = conv_pool_deconv(pool=3, dstride=2)                 # 1/3 then x2
    with pytest.raises(cm.CropError, match="scale mismatch"):
        cm.crop(n.deconv, n.data)
    n = conv_pool_deconv(dpad=10)                           # output shifted left of data
    with pytest.raises(AssertionError, match="negative offset"):   # pycaffe's exception type
        cm.crop(n.deconv, n.data)
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    n.c = conv(n.data, 2)                                   # even kernel: half-pixel shift
    n.d = deconv(n.c, 2, 1)
    n.dd = deconv(n.d, 2, 1)
    with pytest.raises(cm.CropError, match="fractional"):
        cm.crop(n.dd, n.d)
    n.r = L.ReLU(n.data)
    with pytest.raises(cm.CropError, match="pointwise"):
        cm.crop(n.r, n.data)


def test_unmappable_layers():
    n = conv_pool_deconv()
    n.ip = L.InnerProduct(n.deconv, num_output=3)
    with pytest.raises(RuntimeError, match="InnerProduct"):
        cm.coord_map_from_to(n.ip, n.data)
    with pytest.raises(cm.UndefinedMapException, match="InnerProduct"):
        cm.coord_map(n.ip.fn)
    n.g = L.Pooling(n.data, pool=P.Pooling.AVE, global_pooling=True)
    with pytest.raises(cm.UndefinedMapException, match="globally"):
        cm.coord_map(n.g.fn)
