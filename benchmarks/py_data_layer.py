"""A pycaffe-style Python data layer, as Caffe users write them (the kind of
examples/pycaffe/layers/pascal_multilabel_datalayers.py): numpy batches from
records held in memory, transformed on the host in ``forward``, copied into the tops.

bench_data.py feeds its benchmark nets with it (``python_param { module:
"py_data_layer" layer: "RandomBatches" param_str: "..." }``). param_str is JSON:
``{"batch": N, "shape": [C, H, W], "batches": B, "crop": 0 or the crop size,
"scale": s, "mean": [per channel]}``; the records are random uint8 images
(``batches`` batches of them, the layer cycling through), labels 0-9.
"""
import json

import numpy as np

import jcaffe


class RandomBatches(jcaffe.Layer):
    def setup(self, bottom, top):
        if bottom:
            raise ValueError("RandomBatches is a data layer: it takes no bottoms")
        p = json.loads(self.param_str)
        self.batch, self.crop = int(p["batch"]), int(p.get("crop", 0))
        self.scale = float(p.get("scale", 1.0))
        c, h, w = p["shape"]
        self.mean = np.asarray(p.get("mean", [0.0] * c), np.float32).reshape(1, c, 1, 1)
        rng = np.random.default_rng(0)
        n = int(p.get("batches", 5)) * self.batch
        self.images = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
        self.labels = np.arange(n) % 10
        self.rng = np.random.default_rng(1)
        self.position = 0
        self.out = (c,) + ((self.crop, self.crop) if self.crop else (h, w))

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, *self.out)
        top[1].reshape(self.batch)

    def forward(self, bottom, top):
        take = np.arange(self.position, self.position + self.batch) % len(self.images)
        self.position = (self.position + self.batch) % len(self.images)
        images = self.images[take]
        if self.crop:       # one random crop and mirror per batch (TRAIN)
            y = self.rng.integers(0, images.shape[2] - self.crop + 1)
            x = self.rng.integers(0, images.shape[3] - self.crop + 1)
            images = images[:, :, y:y + self.crop, x:x + self.crop]
            if self.rng.integers(2):
                images = images[:, :, :, ::-1]
        top[0].data[...] = (images.astype(np.float32) - self.mean) * self.scale
        top[1].data[...] = self.labels[take]

    def backward(self, top, propagate_down, bottom):
        pass
