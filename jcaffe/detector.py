"""pycaffe's ``caffe.Detector``: classify windows of images, as R-CNN does.

    det = caffe.Detector("deploy.prototxt", "weights.caffemodel",
                         mean=np.array([104., 117., 123.]), raw_scale=255,
                         channel_swap=(2, 1, 0), context_pad=16)
    dets = det.detect_windows([("cat.jpg", [(10, 20, 110, 140)])])
    dets[0]["prediction"]          # the net's first output for that window

Windows are ``(ymin, xmin, ymax, xmax)``: rows first, as pycaffe has them (not
the ``(x, y, w, h)`` of most other tools). Images are read with
``caffe.io.load_image`` (RGB floats in [0, 1]), so the preprocessing options
mean what they mean for jcaffe.Classifier.
"""
import os

import numpy as np

from . import io as caffe_io
from .classifier import configured_transformer
from .net import TEST, Net

__all__ = ["Detector"]

_SELECTIVE_SEARCH = "selective_search_ijcv_with_python"


class Detector(Net):
    """A Net in TEST phase that classifies image windows (crops warped to the net's
    input size), with R-CNN's optional context padding. A window is (ymin, xmin,
    ymax, xmax): rows first.

    ``mean``, ``input_scale``, ``raw_scale``, ``channel_swap``: the Transformer's
    options for the first input, as for jcaffe.Classifier. ``context_pad``: take
    enough context around each window that a border of ``context_pad`` pixels of
    the (square) net input is context; the part of that border outside the image
    is filled with the mean, so it preprocesses to zero.
    """

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = configured_transformer(self, mean, input_scale, raw_scale,
                                                  channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Classify windows: ``images_windows`` is an iterable of (image filename,
        windows) pairs, each window ``(ymin, xmin, ymax, xmax)``. Returns one dict
        per window, in order: ``{"window": window, "prediction": the net's first
        output for it, "filename": image filename}``."""
        images_windows = [(fname, list(windows)) for fname, windows in images_windows]
        in_ = self.inputs[0]
        window_inputs = []
        for fname, windows in images_windows:
            image = caffe_io.load_image(fname).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))
        if not window_inputs:
            return []
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2])
                            + self.blobs[in_].data.shape[2:], np.float32)
        for i, window_in in enumerate(window_inputs):
            caffe_in[i] = self.transformer.preprocess(in_, window_in)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections = []
        for fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[len(detections)],
                                   "filename": fname})
        return detections

    def detect_selective_search(self, image_fnames):
        """detect_windows over Selective Search proposals for each image. Needs the
        ``selective_search_ijcv_with_python`` module (and the MATLAB it runs), as
        pycaffe does; the filenames are made absolute for it."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError as err:
            raise ImportError(
                "Detector.detect_selective_search needs the '%s' module, which is not "
                "installed: get it from https://github.com/sergeyk/"
                "selective_search_ijcv_with_python (it runs MATLAB), put it on the Python "
                "path, or pass windows to detect_windows() yourself" % _SELECTIVE_SEARCH,
                name=_SELECTIVE_SEARCH) from err
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im, window):
        """The part of ``im`` (``H x W x K``) that ``window`` (ymin, xmin, ymax, xmax)
        selects, for the net to classify.

        Without context padding: ``im[ymin:ymax, xmin:xmax]`` (ymax and xmax
        excluded), resized to the net input later by the Transformer. With it,
        pycaffe's arithmetic, which instead counts ymax and xmax in the window: the
        window's box is grown about its center by ``scale = S / (S - 2 *
        context_pad)`` (S the net input's width), rounded; the part of it inside
        the image (clipped to [0, H] and [0, W]) is resized to its share of an
        S x S canvas and placed where the box puts it, the rest of the canvas
        being the mean. Rounding is Python 3's (halves to even).
        """
        window = _checked_window(window, im)
        if not self.context_pad:
            if window[0] < 0 or window[1] < 0:     # numpy would count from the far edge
                raise ValueError("window %s starts outside the %s image (negative ymin or "
                                 "xmin); only context padding takes pixels beyond the border"
                                 % (tuple(int(v) for v in window), np.shape(im)))
            crop = im[window[0]:window[2], window[1]:window[3]]
            if crop.size == 0:
                raise ValueError("window %s selects no pixels of the %s image"
                                 % (tuple(int(v) for v in window), np.shape(im)))
            return crop
        crop_size = self.blobs[self.inputs[0]].width     # the input is square
        scale = crop_size / (1. * crop_size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.
        half_w = (window[3] - window[1] + 1) / 2.
        center = np.array([window[0] + half_h, window[1] + half_w])
        box = np.round(np.tile(center, 2) + scale * np.array([-half_h, -half_w, half_h, half_w]))
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        pad_y = round(max(0, -box[0]) * scale_h)      # canvas rows above the image
        pad_x = round(max(0, -box[1]) * scale_w)
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0., [im_h, im_w, im_h, im_w]).astype(int)
        crop_h = min(round((box[2] - box[0] + 1) * scale_h), crop_size - pad_y)
        crop_w = min(round((box[3] - box[1] + 1) * scale_w), crop_size - pad_x)
        context_crop = im[box[0]:box[2], box[1]:box[3]]
        if context_crop.size == 0 or crop_h <= 0 or crop_w <= 0:
            raise ValueError("window %s with context padding %d covers no pixels of the %s "
                             "image" % (tuple(int(v) for v in window), self.context_pad,
                                        np.shape(im)))
        context_crop = caffe_io.resize_image(context_crop, (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context_crop
        return crop

    def configure_crop(self, context_pad):
        """Set ``crop_dims`` (the net input as H x W x K) and ``context_pad``; with
        context padding, also ``crop_mean``: the Transformer's mean taken back to
        image space (transposed to H x W x K, channels unswapped, divided by
        raw_scale), or zeros without a mean."""
        in_ = self.inputs[0]
        transpose = self.transformer.transpose[in_]
        to_image = np.argsort(transpose)        # K x H x W -> H x W x K
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[to_image]
        self.context_pad = context_pad
        if not context_pad:
            return
        height, width = self.blobs[in_].data.shape[2:]
        if height != width:
            raise ValueError("context_pad needs a square net input (pycaffe's crop computes "
                             "with its width); input '%s' is %d x %d" % (in_, height, width))
        if 2 * context_pad >= width:
            raise ValueError("context_pad %d leaves nothing of a %d-pixel input for the window"
                             % (context_pad, width))
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        mean = np.asarray(mean, dtype=np.float32)
        if mean.ndim == 2:      # an H x W mean of a one-channel input
            mean = mean[np.newaxis]
        crop_mean = mean.transpose(to_image)
        swap = self.transformer.channel_swap.get(in_)
        if swap is not None:
            swap = list(swap)
            if sorted(swap) != list(range(len(swap))):
                raise ValueError("context_pad needs a channel_swap that is a permutation (to "
                                 "take the mean back to image channels), got %s" % (swap,))
            crop_mean = crop_mean[:, :, [swap.index(c) for c in range(len(swap))]]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean


def _checked_window(window, im):
    """``window`` as 4 ints (ymin, xmin, ymax, xmax), or a ValueError naming it."""
    if np.ndim(im) != 3:
        raise ValueError("Detector.crop takes an H x W x K image, got shape %s" % (np.shape(im),))
    arr = np.asarray(window)
    if arr.shape != (4,) or not np.issubdtype(arr.dtype, np.number) \
            or not np.all(np.round(arr) == arr):
        raise ValueError("window %r is not 4 whole numbers (ymin, xmin, ymax, xmax)" % (window,))
    arr = arr.astype(int)
    if arr[2] <= arr[0] or arr[3] <= arr[1]:
        raise ValueError("window %s is empty: windows are (ymin, xmin, ymax, xmax), with "
                         "ymax > ymin and xmax > xmin" % (tuple(int(v) for v in arr),))
    return arr
