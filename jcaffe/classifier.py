"""pycaffe's ``caffe.Classifier``: a TEST-phase Net that classifies images.

    clf = caffe.Classifier("deploy.prototxt", "weights.caffemodel",
                           image_dims=(256, 256), mean=np.array([104., 117., 123.]),
                           raw_scale=255, channel_swap=(2, 1, 0))
    probs = clf.predict([caffe.io.load_image("cat.jpg")])     # N x C

Mind pycaffe's conventions, kept here: images are ``H x W x K`` floats (as
``caffe.io.load_image`` returns them: RGB in [0, 1]), so a model trained on
[0, 255] BGR pixels needs ``raw_scale=255`` and ``channel_swap=(2, 1, 0)``,
and ``mean`` is in the net's input space (after the swap and the scaling).
"""
import numpy as np

from . import io as caffe_io
from .net import TEST, Net

__all__ = ["Classifier"]


def configured_transformer(net, mean, input_scale, raw_scale, channel_swap):
    """A Transformer for ``net``'s first input: ``H x W x K`` images transposed to
    ``K x H x W``, then the options that are not None (as pycaffe's Classifier and
    Detector set it up)."""
    in_ = net.inputs[0]
    transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


def _checked_images(inputs, channels):
    """``inputs`` as a list of ``H x W x K`` arrays with the net's K, or a ValueError
    naming the first image that is not."""
    images = [np.asarray(im) for im in inputs]
    if not images:
        raise ValueError("predict() needs at least one image, got none")
    for i, im in enumerate(images):
        if im.ndim != 3:
            raise ValueError("image %d has shape %s: predict() takes H x W x K images (a "
                             "grayscale image is H x W x 1, as caffe.io.load_image(f, "
                             "color=False) gives it)" % (i, im.shape))
        if im.shape[2] != channels:
            raise ValueError("image %d has shape %s: %d channels, but the net's input takes %d"
                             % (i, im.shape, im.shape[2], channels))
    return images


class Classifier(Net):
    """A Net in TEST phase that predicts class scores for images: resize each image
    to ``image_dims``, take the net's input size out of it (10 crops, or the center
    one), preprocess with ``self.transformer`` and forward.

    ``model_file``, ``pretrained_file``: the deploy prototxt and its weights.
    ``image_dims``: (height, width) to resize images to before cropping; the net
    input's size (one whole-image crop) when not given. ``mean``, ``input_scale``,
    ``raw_scale``, ``channel_swap``: the Transformer's options for the first input
    (see jcaffe.io.Transformer); preprocessing is ``(image[swap] * raw_scale - mean)
    * input_scale``, so ``mean`` is in the swapped, raw-scaled space.
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = configured_transformer(self, mean, input_scale, raw_scale,
                                                  channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        if len(image_dims) != 2:
            raise ValueError("image_dims must be (height, width), got %r" % (image_dims,))
        self.image_dims = image_dims

    def predict(self, inputs, oversample=True):
        """Class scores of ``inputs`` (a sequence of ``H x W x K`` float images, in
        the range that ``raw_scale`` expects: [0, 1] for caffe.io.load_image's):
        an N x C array of the net's first output (outputs are sorted by name).

        With ``oversample`` (the default), each image's scores are the mean over 10
        crops of the net's input size: the 4 corners and the center of the resized
        image, and their left-right mirrors. Without it, the center crop only.
        """
        in_ = self.inputs[0]
        images = _checked_images(inputs, self.blobs[in_].data.shape[1])
        image_dims = tuple(int(d) for d in self.image_dims)
        if any(i < c for i, c in zip(image_dims, self.crop_dims)):
            raise ValueError("image_dims %s is smaller than the net input's %s: the crops "
                             "would not fit" % (image_dims, tuple(int(c) for c in self.crop_dims)))
        resized = np.zeros((len(images),) + image_dims + (images[0].shape[2],), np.float32)
        for i, im in enumerate(images):
            resized[i] = caffe_io.resize_image(im, image_dims)
        if oversample:
            crops = caffe_io.oversample(resized, self.crop_dims)
        else:
            crops = resized[(slice(None),) + self._center_crop(image_dims)]
        caffe_in = np.zeros((len(crops), crops.shape[3]) + crops.shape[1:3], np.float32)
        for i, crop in enumerate(crops):
            caffe_in[i] = self.transformer.preprocess(in_, crop)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(images), 10, -1)).mean(axis=1)
        return predictions

    def _center_crop(self, image_dims):
        """The slices of the crop of the net's input size centered in ``image_dims``
        (start = trunc(image / 2 - crop / 2), as pycaffe computes it)."""
        starts = [int(i / 2.0 - c / 2.0) for i, c in zip(image_dims, self.crop_dims)]
        return tuple(slice(s, s + int(c)) for s, c in zip(starts, self.crop_dims))
