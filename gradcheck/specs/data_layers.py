"""gradcheck specs for the data source layers and HDF5Output.

Source layers (Data, ImageData, MemoryData, HDF5Data, WindowData) have no bottoms and no
params: their tops are filled on the host, so gradcheck checks that they set
up (shapes from a real tiny source, made once per process in a temporary
folder). HDF5Output has no tops and no backward worth checking
(``backward=False``): its forward writes the file.
"""
import atexit
import os
import shutil
import tempfile

import numpy as np
from hypothesis import strategies as st

from ..strategies import Case

_DIR = {}


def _sources():
    """A tiny LMDB, image list and HDF5 list, made on first use."""
    if "root" in _DIR:
        return _DIR
    root = tempfile.mkdtemp(prefix="gradcheck_data_")
    atexit.register(shutil.rmtree, root, True)
    from PIL import Image

    from jcaffe import io as caffe_io
    from jcaffe.db import make_key, open_db
    import h5py
    rng = np.random.default_rng(0)
    lmdb = os.path.join(root, "lmdb")
    with open_db(lmdb, "w") as db:
        for i in range(4):
            arr = rng.integers(0, 256, (2, 5, 5)).astype(np.uint8)
            db.put(make_key(i, "r%d" % i), caffe_io.array_to_datum(arr, i).SerializeToString())
    with open(os.path.join(root, "images.txt"), "w") as f:
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)).save(
                os.path.join(root, "im%d.png" % i))
            f.write("im%d.png %d\n" % (i, i))
    with h5py.File(os.path.join(root, "a.h5"), "w") as f:
        f["x"] = rng.standard_normal((5, 3)).astype(np.float32)
        f["y"] = np.arange(5, dtype=np.float32)
    with open(os.path.join(root, "windows.txt"), "w") as f:
        f.write("# 0\n%s\n3\n6\n7\n2\n1 0.8 1 1 5 4\n2 0.1 0 0 3 3\n" % os.path.join(root, "im0.png"))
    with open(os.path.join(root, "h5.txt"), "w") as f:
        f.write(os.path.join(root, "a.h5") + "\n")
    _DIR.update(root=root, lmdb=lmdb)
    return _DIR


@st.composite
def _data(draw):
    d = _sources()
    crop = draw(st.sampled_from([0, 3]))
    return Case('type: "Data" top: "data" top: "label" transform_param { crop_size: %d mirror: %s } '
                'data_param { source: "%s" batch_size: %d backend: LMDB prefetch: 0 }'
                % (crop, draw(st.sampled_from(["true", "false"])), d["lmdb"], draw(st.integers(1, 5))),
                [], backward=False)


@st.composite
def _image_data(draw):
    d = _sources()
    return Case('type: "ImageData" top: "data" top: "label" image_data_param { source: "%s" '
                'root_folder: "%s/" batch_size: %d new_height: %d new_width: %d }'
                % (os.path.join(d["root"], "images.txt"), d["root"], draw(st.integers(1, 3)),
                   draw(st.integers(2, 5)), draw(st.integers(2, 5))), [], backward=False)


@st.composite
def _memory_data(draw):
    return Case('type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: %d '
                'channels: %d height: %d width: %d }' % tuple(draw(st.integers(1, 3)) for _ in range(4)),
                [], backward=False)


@st.composite
def _hdf5_data(draw):
    d = _sources()
    return Case('type: "HDF5Data" top: "x" top: "y" hdf5_data_param { source: "%s" batch_size: %d '
                'shuffle: %s }' % (os.path.join(d["root"], "h5.txt"), draw(st.integers(1, 4)),
                                   draw(st.sampled_from(["true", "false"]))), [], backward=False)


@st.composite
def _hdf5_output(draw):
    d = _sources()
    n = draw(st.integers(1, 3))
    return Case('type: "HDF5Output" hdf5_output_param { file_name: "%s" }'
                % os.path.join(d["root"], "out%d.h5" % draw(st.integers(0, 2**16))),
                [(n, draw(st.integers(1, 3))), (n,)], backward=False)


@st.composite
def _window_data(draw):
    d = _sources()
    return Case('type: "WindowData" top: "data" top: "label" transform_param { crop_size: %d } '
                'window_data_param { source: "%s" batch_size: %d context_pad: %d }'
                % (draw(st.integers(2, 5)), os.path.join(d["root"], "windows.txt"),
                   draw(st.integers(1, 4)), draw(st.integers(0, 1))), [], backward=False)


SPECS = {
    "Data": _data(),
    "HDF5Data": _hdf5_data(),
    "HDF5Output": _hdf5_output(),
    "ImageData": _image_data(),
    "MemoryData": _memory_data(),
    "WindowData": _window_data(),
}
