"""pycaffe's ``caffe.io``: blob/datum conversions, the input Transformer, image helpers.

Same names, arguments and results as pycaffe. Images are read with Pillow
instead of scikit-image: ``load_image`` returns float32 ``H x W x C`` RGB in
[0, 1] as pycaffe does (grayscale with scikit-image's luminance weights);
``resize_image`` interpolates with Pillow (bilinear for ``interp_order=1``),
so resized values may differ from scikit-image's in the last digits.
"""
import numpy as np

from . import protoio
from .proto import caffe_pb2

__all__ = ["blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
           "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array", "Transformer",
           "load_image", "resize_image", "oversample"]


# ---------------------------------------------------------------------------
# Blobs and datums

def blobproto_to_array(blob, return_diff=False):
    """A BlobProto's data (or diff) as an array of its shape (legacy 4-d when set)."""
    return protoio.blobproto_to_array(blob, return_diff)


def array_to_blobproto(arr, diff=None):
    """A BlobProto with ``shape`` from ``arr`` and ``data`` (and ``diff``) as float32."""
    return protoio.array_to_blobproto(arr, diff)


def arraylist_to_blobprotovector_str(arraylist):
    """A serialized BlobProtoVector of the arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(s):
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(s)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None):
    """A Datum of a ``C x H x W`` array: uint8 arrays go to ``data`` (bytes), any other
    dtype to ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape: a Datum holds C x H x W, got %s" % (arr.shape,))
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """A Datum's pixels as ``C x H x W``: uint8 from ``data``, float from ``float_data``.
    (Encoded datums are not decoded, as in pycaffe; see jcaffe.data_transformer.)"""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data).astype(float).reshape(shape)


# ---------------------------------------------------------------------------
# The input Transformer

class Transformer:
    """Turn images (``H x W x K`` float) into net input and back, per input blob.

    ``inputs``: {input name: input shape (N, C, H, W)}. preprocess: resize to
    the input's H x W, transpose, channel swap, ``*= raw_scale``, ``-= mean``,
    ``*= input_scale``; deprocess undoes them in reverse order.
    """

    def __init__(self, inputs):
        self.inputs = {k: tuple(v) for k, v in inputs.items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def __check_input(self, in_):
        if in_ not in self.inputs:
            raise Exception("{} is not one of the net inputs: {}".format(in_, self.inputs))

    def preprocess(self, in_, data):
        self.__check_input(in_)
        caffe_in = np.asarray(data).astype(np.float32, copy=False)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        else:
            caffe_in = caffe_in.copy()
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data):
        self.__check_input(in_)
        decaf_in = np.array(data, dtype=np.float32).squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """The axis order to apply (e.g. (2, 0, 1): H x W x K -> K x H x W)."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """The channel order to take (e.g. (2, 1, 0): RGB -> BGR), applied after transpose."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception("Channel swap needs to have the same number of dimensions as the input "
                            "channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Multiply raw input by this (e.g. 255 for [0, 1] images into [0, 255] models)."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean to subtract: one value per channel (shape (C,)) or an elementwise
        ``C x H x W`` (or ``H x W``) array of the input's shape."""
        self.__check_input(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            if ms != self.inputs[in_][1:]:
                raise ValueError("Mean shape incompatible with input shape.")
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply the input by this after mean subtraction (e.g. 0.017 for std scaling)."""
        self.__check_input(in_)
        self.input_scale[in_] = scale


# ---------------------------------------------------------------------------
# Images

def load_image(filename, color=True):
    """An image as float32 ``H x W x 3`` RGB (or ``H x W x 1`` with color=False) in [0, 1]."""
    from PIL import Image
    with Image.open(filename) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            raw = np.asarray(im, dtype=np.float64)
            img = raw / (65535.0 if im.mode.startswith("I;16") else max(raw.max(), 1.0))
            gray_src = True
        elif im.mode in ("1", "L", "LA"):
            img = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
            gray_src = True
        else:
            img = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
            gray_src = False
    if not color and not gray_src:   # scikit-image's rgb2gray weights
        img = img @ np.array([0.2125, 0.7154, 0.0721])
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


_PIL_ORDER = {0: "NEAREST", 1: "BILINEAR", 2: "BILINEAR", 3: "BICUBIC"}


def resize_image(im, new_dims, interp_order=1):
    """Resize ``H x W x K`` ``im`` to ``new_dims`` (height, width); float32 result."""
    from PIL import Image
    im = np.asarray(im, dtype=np.float32)
    new_h, new_w = int(new_dims[0]), int(new_dims[1])
    if im.shape[:2] == (new_h, new_w):
        return im.astype(np.float32)
    if im.size and im.max() == im.min():   # a constant image
        ret = np.empty((new_h, new_w, im.shape[-1]), dtype=np.float32)
        ret.fill(im.min())
        return ret
    resample = getattr(Image, _PIL_ORDER.get(int(interp_order), "BILINEAR"))
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(im[:, :, c]), mode="F")
                        .resize((new_w, new_h), resample), dtype=np.float32)
             for c in range(im.shape[2])]
    return np.stack(chans, axis=2).astype(np.float32)


def oversample(images, crop_dims):
    """10 crops of each ``H x W x K`` image: 4 corners and centre, and their mirrors."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0
    h_indices = (0, im_shape[0] - crop_dims[0])
    w_indices = (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    curr = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[curr] = (i, j, i + crop_dims[0], j + crop_dims[1])
            curr += 1
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0, crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]  # mirrors
    return crops
