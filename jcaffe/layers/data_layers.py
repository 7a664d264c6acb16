"""Data source layers: Data (LMDB/LevelDB), ImageData, MemoryData, HDF5Data, WindowData;
and HDF5Output.

How they run
------------
A source layer has no bottoms; its tops are *inputs* of the compiled code, the
way Input's are: ``forward_writes_tops`` is False, so the jitted segment never
traces it and reads its tops as arguments. Before each forward of a range that
contains the layer, the Net calls :meth:`SourceLayer.next_batch` on the host
and stores the arrays in the top blobs (``Net._load_sources``). A net whose
only non-JAX layers are sources therefore still runs as one compiled call, and
the solver's fused step (forward + backward + update in one jit) keeps working:
it fetches the batch on the host and passes it in as an argument.

Data and ImageData prefetch: a daemon thread reads, decodes and transforms the
next batches (``data_param.prefetch`` of them, Caffe's default 4) into a
bounded queue and puts them on the device, so host decoding overlaps device
compute. The thread checks a stop flag between every blocking step and is
stopped and joined (with a timeout) at interpreter exit, so exiting never
hangs on it.
"""
import atexit
import contextlib
import math
import os
import queue
import threading
import weakref

import jax
import numpy as np

from .. import common
from ..blob import shape_string
from ..data_transformer import DataTransformer, decode_image_bytes
from ..db import DataSourceError, backend_name, open_db, parse_datum
from ..layer import JaxLayer, register
from ..proto import caffe_pb2
from .common import legacy_shape

_LIVE = weakref.WeakSet()


def _stop_all_prefetchers():
    for p in list(_LIVE):
        p.stop(timeout=2.0)


atexit.register(_stop_all_prefetchers)


class _Failure:
    def __init__(self, exc):
        self.exc = exc


class Prefetcher:
    """A daemon thread calling ``produce()`` into a queue of ``depth`` items.

    ``produce`` is held through a weak reference (a bound method: its layer), so
    a layer that is garbage collected also ends its thread.
    """

    def __init__(self, produce, depth, name):
        self._produce = weakref.WeakMethod(produce) if hasattr(produce, "__self__") else (lambda: produce)
        self.queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="jcaffe-prefetch-%s" % name, daemon=True)
        _LIVE.add(self)
        self.thread.start()

    def _put(self, item):
        while not self._stop.is_set() and self._produce() is not None:
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        while not self._stop.is_set():
            produce = self._produce()
            if produce is None:       # the layer is gone
                return
            try:
                item = produce()
            except BaseException as e:  # handed to the consumer, which re-raises it
                self._put(_Failure(e))
                return
            del produce
            if not self._put(item):
                return

    def get(self):
        while True:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise DataSourceError("the prefetch thread %s stopped" % self.thread.name) from None
                continue
            if isinstance(item, _Failure):
                self.stop()
                raise item.exc
            return item

    def stop(self, timeout=5.0):
        self._stop.set()
        try:
            while True:
                self.queue.get_nowait()
        except queue.Empty:
            pass
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        _LIVE.discard(self)


class SourceLayer(JaxLayer):
    """Base of layers whose tops are filled on the host before each forward.

    Subclasses define ``source_setup()`` (returns the top shapes) and
    ``load_batch()`` (returns one numpy array per top). ``prefetch_depth`` > 0
    runs ``load_batch`` in a background thread.
    """

    is_source = True
    forward_writes_tops = False
    exact_num_bottom_blobs = 0
    prefetch_depth = 0

    def layer_setup(self, bottom_shapes, num_top, rng):
        self.check_blob_counts(len(bottom_shapes), num_top)
        self.num_top = num_top
        self.shard_rank, self.shard_count = 0, 1
        self._prefetcher = None
        self.top_shapes = tuple(tuple(int(d) for d in s) for s in self.source_setup(num_top))
        self.set_loss_weights(num_top)
        return self.top_shapes

    def reshape(self, bottom_shapes):
        return self.top_shapes

    def set_shard(self, rank, count):
        """Read only shard ``rank`` of ``count`` (data-parallel training, Caffe multi-GPU style).

        Contract: the records of the source, in order, are dealt round-robin:
        record number ``i`` of the stream (counting from the first record
        after rand_skip, continuing across wrap-arounds) goes to shard
        ``i % count``. The ``count`` shards are therefore disjoint and
        together cover every record exactly once per ``count`` batches'
        worth of reads, with no overlap and no loss. Each shard yields full
        batches of ``batch_size`` (the global batch is ``count * batch_size``).
        Calling it restarts reading from the beginning of the shard (any
        prefetched batches are dropped). ``set_shard(0, 1)`` reads everything.
        """
        rank, count = int(rank), int(count)
        if count < 1 or not 0 <= rank < count:
            raise ValueError("%s layer '%s': set_shard(rank=%d, count=%d) needs 0 <= rank < count"
                             % (self.type, self.name, rank, count))
        self.stop_prefetch()
        self.shard_rank, self.shard_count = rank, count
        self.reset_reader()

    def reset_reader(self):
        """Go back to the first record of this layer's shard."""

    def stop_prefetch(self):
        if getattr(self, "_prefetcher", None) is not None:
            self._prefetcher.stop()
            self._prefetcher = None

    def _produce(self):
        arrays = self.load_batch()
        return jax.device_put(arrays)

    def next_batch(self):
        """The next batch: one array per top (device arrays when prefetched)."""
        if self.prefetch_depth <= 0:
            return self.load_batch()
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self._produce, self.prefetch_depth, self.name)
        return self._prefetcher.get()

    def __del__(self):
        try:
            self.stop_prefetch()
        except Exception:
            pass

    def forward(self, params, bottoms, rng):
        raise AssertionError("source layers are filled on the host, not traced")

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        return [], []


def _rng_seed():
    return int(common.filler_rng().integers(0, 2**63 - 1))


@register("Data")
class Data(SourceLayer):
    """Caffe's DataLayer: Datum records from an LMDB (or LevelDB) database.

    ``data_param``: source, batch_size, backend (Caffe's default is LEVELDB:
    write ``backend: LMDB``), rand_skip (skip a random number of records in
    ``[0, rand_skip)`` at the start), prefetch (queue depth). One top (data)
    or two (data, label). Records are read in key order and wrap around.
    ``transform_param`` applies Caffe's DataTransformer.
    """

    min_top_blobs = 1
    max_top_blobs = 2

    def source_setup(self, num_top):
        p = self.layer_param.data_param
        self.source = p.source
        if not p.source:
            self.fail("data_param.source is not set")
        if p.batch_size < 1:
            self.fail("data_param.batch_size must be positive")
        self.batch_size = p.batch_size
        self.backend = backend_name(p.backend)
        self.prefetch_depth = p.prefetch
        self.output_labels = num_top > 1
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.name,
                                           seed=self._transform_seed())
        self.db = self._open()
        from ..db import Cursor
        self.cursor = Cursor(self.db)
        self.skip = 0
        if p.rand_skip:
            self.skip = int(common.filler_rng().integers(0, p.rand_skip))
        self.reset_reader()
        datum = self._datum()
        shape = self.transformer.infer_shape(self.transformer.datum_array(datum, self._where()).shape)
        self.datum_shape = shape
        shapes = [(self.batch_size,) + shape]
        if self.output_labels:
            shapes.append((self.batch_size,))
        return shapes

    def _transform_seed(self):
        tp = self.layer_param.transform_param
        if tp.mirror or (tp.crop_size and self.phase == caffe_pb2.TRAIN):
            return _rng_seed()
        return 0

    def _open(self):
        try:
            return open_db(self.source, "r", self.backend)
        except DataSourceError as e:
            hint = ""
            if self.backend == "leveldb" and os.path.exists(os.path.join(self.source, "data.mdb")):
                hint = " ('%s' looks like an LMDB database: set data_param { backend: LMDB })" % self.source
            raise DataSourceError("Data layer '%s': %s%s" % (self.name, e, hint)) from e

    def reset_reader(self):
        self.cursor.seek_to_first()
        self.offset = 0
        for _ in range(self.skip):
            self.cursor.next()

    def _where(self):
        return "database '%s', record '%s'" % (self.source, self.cursor.key().decode(errors="replace"))

    def _datum(self):
        return parse_datum(self.cursor.value(), self.source, self.cursor.key())

    def _next(self):
        self.cursor.next()
        self.offset += 1

    def _next_keys(self):
        """The keys of this shard's next ``batch_size`` records."""
        keys = []
        for _ in range(self.batch_size):
            while self.offset % self.shard_count != self.shard_rank:
                self._next()
            keys.append(self.cursor.key())
            self._next()
        return keys

    def load_batch(self):
        keys = self._next_keys()
        where = lambda i: "database '%s', record '%s'" % (self.source, keys[i].decode(errors="replace"))
        labels = np.empty(self.batch_size, np.float32)
        raw = self._plain_pixels(keys, labels)
        if raw is None:
            raw = self._decoded_pixels(keys, labels, where)
        if isinstance(raw, list):   # (records of several sizes, cropped: one at a time)
            data = np.stack([self.transformer.transform(r, _Where(where, i))
                             for i, r in enumerate(raw)])
        else:
            data = self.transformer.transform_batch(raw, where)
        return [data, labels] if self.output_labels else [data]

    def _plain_pixels(self, keys, labels):
        """The batch as one ``N x C x H x W`` uint8 array, copied record by record (one at
        a time: a batch of big images never holds every record at once), where every
        record holds its pixels undecoded in ``data`` with the first record's size, as
        convert_imageset writes them; None otherwise."""
        buf = None
        with contextlib.closing(self.cursor.values(keys)) as values:
            for i, value in enumerate(values):
                datum = parse_datum(value, self.source, keys[i])
                if buf is None:
                    shape = (datum.channels, datum.height, datum.width)
                    size = shape[0] * shape[1] * shape[2]
                    buf = memoryview(bytearray(len(keys) * size))
                if datum.encoded or len(datum.data) != size or not size or \
                        (datum.channels, datum.height, datum.width) != shape:
                    return None
                buf[i * size:(i + 1) * size] = datum.data
                labels[i] = datum.label
        return np.frombuffer(buf, np.uint8).reshape((len(keys),) + shape)

    def _decoded_pixels(self, keys, labels, where):
        """The batch record by record (decoding images, float_data): one array where all
        have one size; with crop_size, as Caffe, records of several sizes (each at least
        the crop) as a list, to be cropped one at a time."""
        raws = []
        with contextlib.closing(self.cursor.values(keys)) as values:
            for i, value in enumerate(values):
                datum = parse_datum(value, self.source, keys[i])
                raw = self.transformer.datum_array(datum, _Where(where, i))
                if raws and raw.shape != raws[0].shape and (
                        not self.transformer.param.crop_size or raw.shape[0] != raws[0].shape[0]):
                    raise DataSourceError(
                        "Data layer '%s': %s has size %s but %s in the same batch has %s (every record "
                        "of a batch must have the same channels x height x width, or, with "
                        "crop_size, the same channels)"
                        % (self.name, where(i), "x".join(map(str, raw.shape)), where(0),
                           "x".join(map(str, raws[0].shape))))
                raws.append(raw)
                labels[i] = datum.label
        if any(r.shape != raws[0].shape for r in raws):
            return raws
        return np.stack(raws)


class _Where:
    """Names record ``i`` of a batch in an error message, formatted only when shown."""

    def __init__(self, where, i):
        self.where, self.i = where, i

    def __str__(self):
        return self.where(self.i)


def _read_list_file(path, layer):
    try:
        with open(path) as f:
            lines = [l.rstrip("\n") for l in f]
    except OSError as e:
        raise DataSourceError("%s layer '%s': cannot read source list '%s': %s"
                              % (layer.type, layer.name, path, e)) from e
    return [l for l in lines if l.strip()]


def rooted(root, name):
    """Caffe's ``root_folder + name``: the root is prepended as text, no separator added
    (ImageData, WindowData, convert_imageset), as Caffe's own examples write it, with a
    trailing '/'."""
    return root + name


def root_hint(root):
    """What an error about a file missing under ``root`` adds: a root without a trailing
    '/' is a prefix of the file's name, in Caffe and here."""
    if not root or root.endswith(("/", os.sep)):
        return ""
    return (" (root_folder %r is prepended as text, as in Caffe, so the path is the root "
            "and the name run together: end root_folder with '/' for a folder)" % root)


def read_image(path, new_height=0, new_width=0, is_color=True, where=None, hint=""):
    """Caffe's ReadImageToCVMat: an ``H x W x C`` uint8 image (BGR colour, 1-channel gray),
    resized to ``new_height x new_width`` (bilinear) when both are given. ``hint``: added
    to the error when the file cannot be opened."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataSourceError("%s: cannot open image '%s': %s%s"
                              % (where or "image", path, e, hint)) from e
    img = decode_image_bytes(data, force_color=is_color, force_gray=not is_color,
                             where="%s: image '%s'" % (where or "image", path))
    if new_height > 0 and new_width > 0 and img.shape[:2] != (new_height, new_width):
        from PIL import Image
        chans = [np.asarray(Image.fromarray(img[:, :, c]).resize((new_width, new_height), Image.BILINEAR))
                 for c in range(img.shape[2])]
        img = np.stack(chans, axis=2)
    return img


@register("ImageData")
class ImageData(SourceLayer):
    """Caffe's ImageDataLayer: images named in a list file ``<path> <label>`` per line.

    ``image_data_param``: source, root_folder (prefix of every path), batch_size,
    new_height/new_width (resize), is_color, shuffle (reshuffled every epoch),
    rand_skip. Two tops: data and label.
    """

    exact_num_top_blobs = 2

    def source_setup(self, num_top):
        p = self.layer_param.image_data_param
        self.p_img = p
        self.source = p.source
        self.batch_size = p.batch_size
        if self.batch_size < 1:
            self.fail("image_data_param.batch_size must be positive")
        if (p.new_height > 0) != (p.new_width > 0):
            self.fail("new_height and new_width must be set together (Caffe resizes to both "
                      "or neither); got new_height %d, new_width %d", p.new_height, p.new_width)
        lines = _read_list_file(p.source, self)
        self.lines = []
        for n, line in enumerate(lines, 1):
            pos = line.rstrip().rfind(" ")
            if pos < 0:
                raise DataSourceError("ImageData layer '%s': %s:%d: expected '<image path> <label>', got %r"
                                      % (self.name, p.source, n, line))
            try:
                label = int(line[pos + 1:])
            except ValueError:
                raise DataSourceError("ImageData layer '%s': %s:%d: label %r is not an integer"
                                      % (self.name, p.source, n, line[pos + 1:])) from None
            self.lines.append((line[:pos], label))
        if not self.lines:
            raise DataSourceError("ImageData layer '%s': source list '%s' is empty" % (self.name, p.source))
        self.prefetch_depth = self.layer_param.data_param.prefetch if \
            self.layer_param.HasField("data_param") else 4
        self.shuffle_rng = np.random.default_rng(_rng_seed() if p.shuffle or p.rand_skip else 0)
        if p.shuffle:
            self._shuffle()
        self.skip = int(self.shuffle_rng.integers(0, p.rand_skip)) if p.rand_skip else 0
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.name,
                                           seed=self._transform_seed())
        self.reset_reader()
        img = self._read(self.lines[self.pos][0])
        shape = self.transformer.infer_shape(img.transpose(2, 0, 1).shape)
        return [(self.batch_size,) + shape, (self.batch_size,)]

    _transform_seed = Data._transform_seed

    def _shuffle(self):
        order = self.shuffle_rng.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]

    def reset_reader(self):
        self.pos = self.skip % len(self.lines)
        self.offset = 0

    def _read(self, name):
        p = self.p_img
        return read_image(rooted(p.root_folder, name), p.new_height, p.new_width, p.is_color,
                          where="ImageData layer '%s' (%s)" % (self.name, p.source),
                          hint=root_hint(p.root_folder))

    def _next(self):
        self.pos += 1
        self.offset += 1
        if self.pos >= len(self.lines):
            self.pos = 0
            if self.p_img.shuffle:
                self._shuffle()

    def load_batch(self):
        data, labels, shape = None, np.zeros(self.batch_size, np.float32), None
        for i in range(self.batch_size):
            while self.offset % self.shard_count != self.shard_rank:
                self._next()
            name, label = self.lines[self.pos]
            img = self._read(name)
            chw = img.transpose(2, 0, 1)
            if shape is None:
                shape, first = chw.shape, name
                data = np.empty((self.batch_size,) + self.transformer.infer_shape(shape), np.float32)
            elif chw.shape != shape and (not self.transformer.param.crop_size
                                         or chw.shape[0] != shape[0]):
                raise DataSourceError(
                    "ImageData layer '%s' (%s): image '%s' is %s but '%s' in the same batch is %s; "
                    "set new_height/new_width (or crop_size: Caffe crops images of several "
                    "sizes)" % (self.name, self.source, name, chw.shape, first, shape))
            data[i] = self.transformer.transform(chw, "image '%s'" % name)
            labels[i] = label
            self._next()
        return [data, labels]


@register("MemoryData")
class MemoryData(SourceLayer):
    """Caffe's MemoryDataLayer: batches from arrays given by ``net.set_input_arrays``.

    ``memory_data_param``: batch_size, channels, height, width. The arrays'
    first dimension must be a multiple of batch_size; each forward takes the
    next batch, wrapping around. Data is used as given (no transform). The
    label top is (batch_size,) after setup and (batch_size, 1, 1, 1) from the
    first forward on, as Caffe's Forward reshapes it.
    """

    exact_num_top_blobs = 2

    def source_setup(self, num_top):
        p = self.layer_param.memory_data_param
        self.batch_size, self.shape = p.batch_size, (p.channels, p.height, p.width)
        if self.batch_size < 1:
            self.fail("memory_data_param.batch_size must be positive")
        if not all(self.shape):
            self.fail("memory_data_param's channels, height and width must all be given, "
                      "positive; got %d, %d and %d", *self.shape)
        self.data = self.labels = None
        self.pos = 0
        return [(self.batch_size,) + self.shape, (self.batch_size,)]

    def set_input_arrays(self, data, labels):
        data = np.asarray(data)
        labels = np.asarray(labels)
        if data.ndim != 4:
            self.fail("data must be 4-d (N x C x H x W), got shape %s", data.shape)
        if labels.ndim == 1:
            labels = labels[:, None, None, None]
        if labels.ndim != 4 or labels.shape[1:] != (1, 1, 1):
            self.fail("labels must be N or N x 1 x 1 x 1, got shape %s", labels.shape)
        if data.shape[0] != labels.shape[0]:
            self.fail("data and labels must have the same first dimension (%d vs %d)",
                      data.shape[0], labels.shape[0])
        if data.shape[0] % self.batch_size:
            self.fail("the number of rows (%d) must be a multiple of batch_size (%d)",
                      data.shape[0], self.batch_size)
        if tuple(data.shape[1:]) != self.shape:
            self.fail("data is %s but the layer is set up for channels x height x width = %s",
                      data.shape[1:], self.shape)
        self.data = np.ascontiguousarray(data, np.float32)
        self.labels = np.ascontiguousarray(labels.reshape(-1), np.float32)
        self.reset_reader()

    def reset_reader(self):
        self.pos = self.shard_rank * self.batch_size
        if self.data is not None and self.shard_count > 1 and \
                len(self.data) % (self.batch_size * self.shard_count):
            self.fail("%d rows cannot be split into %d shards of batch_size %d", len(self.data),
                      self.shard_count, self.batch_size)

    def load_batch(self):
        if self.data is None:
            self.fail("no data: call net.set_input_arrays(data, labels) first")
        b, n = self.batch_size, len(self.data)
        out = [self.data[self.pos:self.pos + b].copy(),
               self.labels[self.pos:self.pos + b].reshape(b, 1, 1, 1).copy()]
        self.pos = (self.pos + b * self.shard_count) % n
        return out


@register("HDF5Data")
class HDF5Data(SourceLayer):
    """Caffe's HDF5DataLayer: rows of the datasets named by the tops, from .h5 files.

    ``hdf5_data_param.source`` lists one .h5 file per line; each top reads the
    dataset of the same name (all with the same number of rows). Rows are
    served in order, file after file, wrapping around; ``shuffle`` shuffles the
    file order and the rows inside each file (again every pass).
    """

    min_top_blobs = 1

    def source_setup(self, num_top):
        p = self.layer_param.hdf5_data_param
        if self.layer_param.HasField("transform_param"):
            self.fail("HDF5Data does not transform data (remove transform_param)")
        self.source, self.batch_size, self.shuffle = p.source, p.batch_size, p.shuffle
        if self.batch_size < 1:
            self.fail("hdf5_data_param.batch_size must be positive")
        base = os.path.dirname(p.source)
        self.files = [l.strip() for l in _read_list_file(p.source, self)]
        self.files = [f if os.path.isabs(f) or os.path.exists(f) else os.path.join(base, f)
                      for f in self.files]
        if not self.files:
            raise DataSourceError("HDF5Data layer '%s': source '%s' lists no files" % (self.name, p.source))
        self.top_names = list(self.layer_param.top)
        self.rng = np.random.default_rng(_rng_seed() if self.shuffle else 0)
        self.file_order = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.file_order)
        self._load(0)
        self.reset_reader()
        return [(self.batch_size,) + a.shape[1:] for a in self.arrays]

    def _load(self, k):
        import h5py
        path = self.files[self.file_order[k]]
        try:
            with h5py.File(path, "r") as f:
                arrays = []
                for name in self.top_names:
                    if name not in f:
                        raise DataSourceError("HDF5Data layer '%s': file '%s' has no dataset '%s' "
                                              "(it has: %s)" % (self.name, path, name, ", ".join(f.keys())))
                    arrays.append(np.asarray(f[name], dtype=np.float32))
        except DataSourceError:
            raise
        except OSError as e:
            raise DataSourceError("HDF5Data layer '%s': cannot read '%s' (listed in %s): %s"
                                  % (self.name, path, self.source, e)) from e
        rows = {a.shape[0] for a in arrays}
        if len(rows) != 1 or 0 in rows:
            raise DataSourceError("HDF5Data layer '%s': datasets of '%s' have different or zero row counts: %s"
                                  % (self.name, path, {n: a.shape for n, a in zip(self.top_names, arrays)}))
        if getattr(self, "arrays", None) is not None:
            for name, old, new in zip(self.top_names, self.arrays, arrays):
                if old.shape[1:] != new.shape[1:]:
                    raise DataSourceError("HDF5Data layer '%s': dataset '%s' is %s in '%s' but %s in an "
                                          "earlier file" % (self.name, name, new.shape[1:], path, old.shape[1:]))
        self.arrays = arrays
        self.current_file = k
        self.row_order = np.arange(arrays[0].shape[0])
        if self.shuffle:
            self.rng.shuffle(self.row_order)
        self.row = 0

    def reset_reader(self):
        if self.current_file != 0:
            self._load(0)
        self.row = 0
        self.offset = 0

    def _next(self):
        self.row += 1
        self.offset += 1
        if self.row >= len(self.row_order):
            k = self.current_file + 1
            if k >= len(self.files):
                k = 0
                if self.shuffle:
                    self.rng.shuffle(self.file_order)
            if len(self.files) > 1 or self.shuffle:
                self._load(k)
            self.row = 0

    def load_batch(self):
        out = [np.empty((self.batch_size,) + a.shape[1:], np.float32) for a in self.arrays]
        for i in range(self.batch_size):
            while self.offset % self.shard_count != self.shard_rank:
                self._next()
            r = self.row_order[self.row]
            for o, a in zip(out, self.arrays):
                o[i] = a[r]
            self._next()
        return out


_HDF5_OUTPUTS = {}     # real path -> weakref to the HDF5Output layer writing it


@register("HDF5Output")
class HDF5Output(JaxLayer):
    """Caffe's HDF5OutputLayer: appends its two bottoms to the datasets ``data`` and
    ``label`` of ``hdf5_output_param.file_name`` on every forward; no tops.

    As Caffe's, it reads each bottom through Blob's legacy accessors: the datasets are
    4-axis, (num, channels, height, width), a bottom of fewer axes padded with 1s (a
    (N, C) bottom is written (N, C, 1, 1)), a bottom of more is an error, and the two
    bottoms' nums must agree. Where Caffe's differs: it makes both datasets anew on
    every forward (``H5LTmake_dataset``), which HDF5 refuses once they exist, and its
    check on that stops Caffe at the second forward; this one appends every forward's
    rows.

    The file is created (truncated) at setup. The write is an ordered
    ``jax.experimental.io_callback`` inside the compiled forward, so the layer
    does not split the net into host and compiled parts. Backward, as Caffe's,
    sends nothing useful down: zero diffs.
    """

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 0
    forward_has_effects = True

    def setup(self, bottom_shapes):
        import h5py
        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise DataSourceError("HDF5Output layer '%s': hdf5_output_param.file_name is not set" % self.name)
        # An earlier HDF5Output of this process may still hold the file: jax's compiled
        # forwards keep their io_callback, and with it the layer, alive after its net is
        # gone (re-creating a net in a notebook). HDF5 refuses to truncate an open file,
        # so the new layer takes the file over: the old one is closed and writes nothing more.
        path = os.path.realpath(self.file_name)
        holder = _HDF5_OUTPUTS.get(path)
        holder = holder() if holder is not None else None
        if holder is not None and holder is not self and holder._file is not None:
            common.log.warning("HDF5Output layer '%s': '%s' is still open by an earlier "
                               "HDF5Output layer '%s'; closing it there", self.name,
                               self.file_name, holder.name)
            holder.close()
        _HDF5_OUTPUTS[path] = weakref.ref(self)
        try:
            self._file = h5py.File(self.file_name, "w")
        except OSError as e:
            raise DataSourceError("HDF5Output layer '%s': cannot create '%s': %s"
                                  % (self.name, self.file_name, e)) from e
        self._lock = threading.Lock()

    def reshape(self, bottom_shapes):
        flatten = ("Flatten it to 2 axes first (a Flatten layer); the file then holds "
                   "(N, the rest, 1, 1), as Caffe writes a 2-axis bottom.")
        data, label = (legacy_shape(self, s, i, flatten) for i, s in enumerate(bottom_shapes))
        if data[0] != label[0]:
            self.fail("data blob and label blob must have the same batch size (num): "
                      "bottom 0 has shape %s, bottom 1 %s", shape_string(bottom_shapes[0]),
                      shape_string(bottom_shapes[1]))
        return []

    def _write(self, data, label):
        with self._lock:
            if self._file is None:
                return
            for name, arr in (("data", np.asarray(data, np.float32)), ("label", np.asarray(label, np.float32))):
                arr = arr.reshape(arr.shape + (1,) * (4 - arr.ndim))    # (Caffe's 4 axes)
                if name not in self._file:
                    self._file.create_dataset(name, data=arr, maxshape=(None,) + arr.shape[1:], chunks=True)
                else:
                    ds = self._file[name]
                    if ds.shape[1:] != arr.shape[1:]:
                        raise DataSourceError("HDF5Output layer '%s': bottom '%s' changed shape from %s to %s"
                                              % (self.name, name, ds.shape[1:], arr.shape[1:]))
                    n = ds.shape[0]
                    ds.resize(n + arr.shape[0], axis=0)
                    ds[n:] = arr
            self._file.flush()

    def forward(self, params, bottoms, rng):
        from jax.experimental import io_callback
        io_callback(self._write, None, bottoms[0], bottoms[1], ordered=True)
        return [], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        import jax.numpy as jnp
        return [jnp.zeros_like(b) if pd else None for b, pd in zip(bottoms, propagate_down)], []

    def close(self):
        """Flush and close the file (also done when the layer is garbage collected)."""
        f = getattr(self, "_file", None)
        if f is not None:
            with self._lock:
                self._file = None
                f.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _cround(x):
    """C's round(): halves away from zero (Python's round() goes to even)."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


@register("WindowData")
class WindowData(SourceLayer):
    """Caffe's WindowDataLayer (R-CNN fine-tuning): windows of images, warped to crop_size.

    ``window_data_param.source`` is Caffe's window file::

        # <image index>
        <image path>
        <channels>
        <height>
        <width>
        <number of windows>
        <class index> <overlap> <x1> <y1> <x2> <y2>
        ...

    Windows with overlap >= fg_threshold are foreground (their class, > 0);
    below bg_threshold, background (label 0). Each batch holds
    ``int(batch_size * fg_fraction)`` foreground windows after the
    background ones, drawn at random; each is grown by ``context_pad``
    (``crop_mode: "square"`` makes it square first), clipped to the image,
    warped (bilinear) to ``crop_size`` (the clipped-off part stays 0),
    optionally mirrored, and gets ``(pixel - mean) * scale`` from
    ``transform_param`` (crop_size, mirror, scale, mean_file / mean_value),
    exactly Caffe's arithmetic. Images are read as BGR colour.
    """

    exact_num_top_blobs = 2

    def source_setup(self, num_top):
        p = self.layer_param.window_data_param
        tp = self.layer_param.transform_param
        self.source, self.batch_size = p.source, p.batch_size
        self.crop_size, self.mirror, self.scale = tp.crop_size, tp.mirror, tp.scale
        if self.crop_size <= 0:
            self.fail("transform_param.crop_size must be positive")
        if self.batch_size < 1:
            self.fail("window_data_param.batch_size must be positive")
        self.context_pad, self.use_square = p.context_pad, p.crop_mode == "square"
        self.fg_fraction, self.root = p.fg_fraction, p.root_folder
        self.images, self.fg, self.bg = [], [], []
        self._parse(p)
        if not self.fg and not self.bg:
            raise DataSourceError("WindowData layer '%s': window file '%s' has no windows"
                                  % (self.name, p.source))
        self.mean = None
        self.mean_values = [float(v) for v in tp.mean_value]
        if tp.HasField("mean_file"):
            from .. import protoio
            mean = protoio.read_blobproto(tp.mean_file)
            mean = mean.reshape(mean.shape[-3:])
            if mean.shape[1] != mean.shape[2]:
                raise DataSourceError("WindowData layer '%s': mean_file '%s' must be square, got %s"
                                      % (self.name, tp.mean_file, mean.shape))
            self.mean = mean.astype(np.float32)
            if self.mean_values:
                raise DataSourceError("WindowData layer '%s': Cannot specify mean_file and mean_value "
                                      "at the same time" % self.name)
        self.rng = np.random.default_rng(_rng_seed())
        self.prefetch_depth = 4
        self.offset = 0
        return [(self.batch_size, 3, self.crop_size, self.crop_size), (self.batch_size,)]

    def _parse(self, p):
        try:
            with open(p.source) as f:
                tokens = f.read().split("\n")
        except OSError as e:
            raise DataSourceError("WindowData layer '%s': cannot read window file '%s': %s"
                                  % (self.name, p.source, e)) from e
        lines = [l.strip() for l in tokens if l.strip()]
        i = 0
        try:
            while i < len(lines):
                if not lines[i].startswith("#"):
                    raise ValueError("expected '# <image index>', got %r" % lines[i])
                path = lines[i + 1]
                c, h, w, n = (int(lines[i + k]) for k in range(2, 6))
                index = len(self.images)
                self.images.append((rooted(self.root, path), (c, h, w)))
                i += 6
                for _ in range(n):
                    cls, overlap, x1, y1, x2, y2 = lines[i].split()
                    window = [index, int(cls), float(overlap), int(x1), int(y1), int(x2), int(y2)]
                    if window[2] >= p.fg_threshold:
                        if window[1] <= 0:
                            raise ValueError("foreground window with class %d (must be > 0)" % window[1])
                        self.fg.append(window)
                    elif window[2] < p.bg_threshold:
                        window[1], window[2] = 0, 0.0
                        self.bg.append(window)
                    i += 1
        except (ValueError, IndexError) as e:
            raise DataSourceError("WindowData layer '%s': window file '%s' near line %d: %s"
                                  % (self.name, p.source, i + 1, e)) from None

    def load_batch(self):
        from PIL import Image
        cs = self.crop_size
        data = np.zeros((self.batch_size, 3, cs, cs), np.float32)
        labels = np.zeros(self.batch_size, np.float32)
        num_fg = int(self.batch_size * self.fg_fraction)
        item = 0
        for is_fg, count in ((False, self.batch_size - num_fg), (True, num_fg)):
            pool = self.fg if is_fg else self.bg
            if count and not pool:
                raise DataSourceError("WindowData layer '%s': no %s windows in '%s'"
                                      % (self.name, "foreground" if is_fg else "background", self.source))
            for _ in range(count):
                window = pool[int(self.rng.integers(0, len(pool)))]
                do_mirror = bool(self.mirror) and int(self.rng.integers(0, 2)) == 1
                path = self.images[window[0]][0]
                img = read_image(path, where="WindowData layer '%s' (%s)" % (self.name, self.source),
                                 hint=root_hint(self.root))
                x1, y1, x2, y2 = window[3:7]
                pad_w = pad_h = 0
                crop_w = crop_h = cs
                if self.context_pad > 0 or self.use_square:
                    context_scale = cs / float(cs - 2 * self.context_pad)
                    half_h, half_w = (y2 - y1 + 1) / 2.0, (x2 - x1 + 1) / 2.0
                    cx, cy = x1 + half_w, y1 + half_h
                    if self.use_square:
                        half_h = half_w = max(half_h, half_w)
                    x1 = _cround((cx - half_w * context_scale))
                    x2 = _cround((cx + half_w * context_scale))
                    y1 = _cround((cy - half_h * context_scale))
                    y2 = _cround((cy + half_h * context_scale))
                    unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
                    pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
                    pad_x2 = max(0, x2 - img.shape[1] + 1)
                    pad_y2 = max(0, y2 - img.shape[0] + 1)
                    x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
                    scale_x, scale_y = cs / float(unclipped_w), cs / float(unclipped_h)
                    crop_w = _cround(((x2 - x1 + 1) * scale_x))
                    crop_h = _cround(((y2 - y1 + 1) * scale_y))
                    pad_x1, pad_x2 = _cround((pad_x1 * scale_x)), _cround((pad_x2 * scale_x))
                    pad_y1 = _cround((pad_y1 * scale_y))
                    pad_h = pad_y1
                    pad_w = pad_x2 if do_mirror else pad_x1
                    if pad_y1 + crop_h > cs:
                        crop_h = cs - pad_y1
                    if pad_x1 + crop_w > cs:
                        crop_w = cs - pad_x1
                x1, y1 = max(x1, 0), max(y1, 0)
                roi = img[y1:y2 + 1, x1:x2 + 1]
                if roi.size == 0 or crop_w <= 0 or crop_h <= 0:
                    raise DataSourceError("WindowData layer '%s': empty window %s in image '%s'"
                                          % (self.name, window[3:7], path))
                warped = np.stack([np.asarray(Image.fromarray(roi[:, :, c]).resize((crop_w, crop_h),
                                                                                  Image.BILINEAR))
                                   for c in range(roi.shape[2])], axis=0).astype(np.float32)
                if do_mirror:
                    warped = warped[:, :, ::-1]
                if self.mean is not None:
                    off = (self.mean.shape[2] - cs) // 2
                    mean = self.mean[:, off + pad_h:off + pad_h + crop_h, off + pad_w:off + pad_w + crop_w]
                    warped = warped - mean
                elif self.mean_values:
                    mv = self.mean_values if len(self.mean_values) == 3 else self.mean_values * 3
                    warped = warped - np.asarray(mv[:3], np.float32)[:, None, None]
                data[item, :, pad_h:pad_h + crop_h, pad_w:pad_w + crop_w] = warped * np.float32(self.scale)
                labels[item] = window[1]
                item += 1
        return [data, labels]
