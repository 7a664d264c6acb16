"""Caffe's DataTransformer: Datum / image -> transformed float array (C, H, W).

Exactly Caffe's arithmetic, per element, for a datum (or image) of
``C x H x W`` and the ``transform_param``:

* crop: with ``crop_size`` the output is ``crop x crop``; the offsets are random
  (``h_off = Rand(H - crop + 1)``, ``w_off = Rand(W - crop + 1)``) in TRAIN and
  centred (``(H - crop) // 2``) in TEST;
* mirror: in any phase, when ``mirror`` is set and ``Rand(2)`` says so, the
  output is flipped left-right (drawn before the crop offsets, as Caffe);
* mean: ``mean_file`` (a ``.binaryproto`` of the full ``1 x C x H x W`` datum
  size, subtracted at the uncropped position) or ``mean_value`` (one, or one
  per channel); not both;
* ``out = (x - mean) * scale``.

Encoded datums (JPEG/PNG...) are decoded with Pillow into Caffe's layout: BGR
channel order for colour images as OpenCV gives, 1 channel for grayscale
(``force_color`` / ``force_gray`` force 3 / 1 channels). Randomness comes from
a numpy Generator seeded from :func:`jcaffe.set_random_seed` (deterministic
under the seed; not bit-identical to Caffe's boost RNG).
"""
import io as _io

import numpy as np

from . import common, protoio
from .db import DataSourceError
from .proto import caffe_pb2


def decode_image_bytes(data, force_color=False, force_gray=False, where="image"):
    """Decode encoded image bytes to a uint8 ``H x W x C`` array in OpenCV's layout
    (BGR for colour; ``C == 1`` for grayscale unless ``force_color``)."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - a core dependency
        raise DataSourceError("decoding images needs Pillow (pip install Pillow)") from e
    try:
        img = Image.open(_io.BytesIO(bytes(data)))
        img.load()
    except Exception as e:
        raise DataSourceError("%s: could not decode the encoded image (%s)" % (where, e)) from e
    return _pil_to_cv(img, force_color, force_gray)


def _pil_to_cv(img, force_color=False, force_gray=False):
    if force_color and force_gray:
        raise ValueError("cannot set both force_color and force_gray")
    gray = force_gray or (not force_color and img.mode in ("1", "L", "LA", "I", "I;16", "F"))
    if gray:
        arr = np.asarray(img.convert("L"), dtype=np.uint8)[:, :, None]
    else:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)[:, :, ::-1]   # RGB -> BGR
    return np.ascontiguousarray(arr)


def datum_to_chw(datum, force_color=False, force_gray=False, where="datum"):
    """The datum's pixels as a ``C x H x W`` array (uint8 for ``data``/encoded, float32
    for ``float_data``)."""
    if datum.encoded:
        return decode_image_bytes(datum.data, force_color, force_gray, where).transpose(2, 0, 1)
    c, h, w = datum.channels, datum.height, datum.width
    n = c * h * w
    if len(datum.data):
        if len(datum.data) != n:
            raise DataSourceError("%s: holds %d bytes of data, but channels x height x width = "
                                  "%d x %d x %d = %d" % (where, len(datum.data), c, h, w, n))
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data) != n:
        raise DataSourceError("%s: holds %d float_data values, but channels x height x width = "
                              "%d x %d x %d = %d" % (where, len(datum.float_data), c, h, w, n))
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)


class DataTransformer:
    """Caffe's DataTransformer for one layer (``transform_param``, phase)."""

    def __init__(self, param, phase, name="?", seed=None):
        self.param = param if param is not None else caffe_pb2.TransformationParameter()
        self.phase = phase
        self.name = name
        p = self.param
        if p.HasField("mean_file") and len(p.mean_value):
            raise DataSourceError("layer '%s': Cannot specify mean_file and mean_value at the same time"
                                  % name)
        if p.force_color and p.force_gray:
            raise DataSourceError("layer '%s': cannot set both force_color and force_gray" % name)
        self.mean = None
        if p.HasField("mean_file"):
            try:
                mean = protoio.read_blobproto(p.mean_file)
            except Exception as e:
                raise DataSourceError("layer '%s': cannot read mean_file '%s': %s"
                                      % (name, p.mean_file, e)) from e
            if mean.ndim == 4:
                if mean.shape[0] != 1:
                    raise DataSourceError("layer '%s': mean_file '%s' has shape %s; expected 1 x C x H x W"
                                          % (name, p.mean_file, mean.shape))
                mean = mean[0]
            if mean.ndim != 3:
                raise DataSourceError("layer '%s': mean_file '%s' has shape %s; expected C x H x W"
                                      % (name, p.mean_file, mean.shape))
            self.mean = mean.astype(np.float32)
        self.mean_values = [float(v) for v in p.mean_value]
        if seed is None:
            seed = int(common.filler_rng().integers(0, 2**63 - 1))
        self.rng = np.random.default_rng(seed)

    def _rand(self, n):
        return int(self.rng.integers(0, n))

    # -- shapes ----------------------------------------------------------------
    def infer_shape(self, chw_shape):
        """Output ``(C, H, W)`` for an input of ``chw_shape`` (Caffe's InferBlobShape)."""
        c, h, w = chw_shape
        crop = self.param.crop_size
        if crop:
            if h < crop or w < crop:
                raise DataSourceError("layer '%s': crop_size %d is larger than the input %d x %d"
                                      % (self.name, crop, h, w))
            return (c, crop, crop)
        return (c, h, w)

    def datum_array(self, datum, where="datum"):
        """The datum's raw ``C x H x W`` pixels, decoded with this transformer's force_* options."""
        if not datum.encoded and (self.param.force_color or self.param.force_gray):
            pass  # Caffe only logs: "force_color and force_gray only for encoded datum"
        return datum_to_chw(datum, self.param.force_color, self.param.force_gray, where)

    # -- transforms --------------------------------------------------------------
    def transform_datum(self, datum, where="datum"):
        return self.transform(self.datum_array(datum, where), where)

    def transform_image(self, hwc, where="image"):
        """Transform an OpenCV-layout ``H x W x C`` image (Caffe's Transform(cv::Mat))."""
        hwc = np.asarray(hwc)
        if hwc.ndim == 2:
            hwc = hwc[:, :, None]
        return self.transform(hwc.transpose(2, 0, 1), where)

    def transform(self, chw, where="input"):
        """The transformed float32 ``C x H x W`` array of a ``C x H x W`` input."""
        return self.transform_batch(np.asarray(chw)[None], lambda i: where)[0]

    def _mean_for(self, c, h, w, where):
        """The array subtracted from a ``c x h x w`` item (full size, or per channel), or None."""
        p = self.param
        if self.mean is not None:
            if self.mean.shape != (c, h, w):
                raise DataSourceError(
                    "layer '%s', %s: mean_file '%s' has shape %s but the data is %d x %d x %d"
                    % (self.name, where, p.mean_file, "x".join(map(str, self.mean.shape)), c, h, w))
            return self.mean
        if self.mean_values:
            mv = self.mean_values
            if len(mv) != 1 and len(mv) != c:
                raise DataSourceError("layer '%s': Specify either 1 mean_value or as many as "
                                      "channels: %d (got %d)" % (self.name, c, len(mv)))
            return np.asarray(mv if len(mv) == c else mv * c, np.float32)[:, None, None]
        return None

    def transform_batch(self, nchw, where=lambda i: "input %d" % i):
        """:meth:`transform` of each item of an ``N x C x H x W`` batch, in order: the same
        random draws per item (mirror, then the crop offsets) and the same float32
        arithmetic, ``(x - mean) * scale``, computed on the whole batch at once where no
        item is cropped or mirrored differently. ``where(i)`` names item ``i`` in errors."""
        p = self.param
        nchw = np.asarray(nchw)
        n, c, h, w = nchw.shape
        crop = p.crop_size
        mean = self._mean_for(c, h, w, where(0)) if n else None
        if crop and (h < crop or w < crop):
            raise DataSourceError("layer '%s', %s: crop_size %d is larger than the input %d x %d"
                                  % (self.name, where(0), crop, h, w))
        draws = []      # (mirror, h_off, w_off) per item, drawn in Caffe's order
        for _ in range(n):
            do_mirror = bool(p.mirror) and self._rand(2) == 1
            if crop and self.phase == caffe_pb2.TRAIN:
                h_off = self._rand(h - crop + 1)
                draws.append((do_mirror, h_off, self._rand(w - crop + 1)))
            else:
                draws.append((do_mirror, (h - crop) // 2 if crop else 0, (w - crop) // 2 if crop else 0))
        if not crop and not any(m for m, _, _ in draws):
            x = nchw.astype(np.float32)         # one pass over the batch
            if mean is not None:
                np.subtract(x, mean, out=x)
        else:
            oh, ow = (crop, crop) if crop else (h, w)
            x = np.empty((n, c, oh, ow), np.float32)
            full = mean is not None and mean.shape[1:] != (1, 1)
            for i, (do_mirror, h_off, w_off) in enumerate(draws):
                item = nchw[i, :, h_off:h_off + oh, w_off:w_off + ow].astype(np.float32)
                if mean is not None:
                    item -= mean[:, h_off:h_off + oh, w_off:w_off + ow] if full else mean
                x[i] = item[:, :, ::-1] if do_mirror else item
        if p.scale != 1:
            np.multiply(x, np.float32(p.scale), out=x)
        return x
