"""Blob: Caffe's N-d array with ``data`` and ``diff``, synced host <-> device.

Each of ``data`` and ``diff`` is a :class:`SyncedArray`, Caffe's SyncedMemory:
a device copy (an immutable ``jax.Array``) and/or a host copy (a writable
numpy array) and a head saying which one is current. Reading ``blob.data``
from Python returns the host array and makes the host the head, because the
caller may write into it (``net.blobs['data'].data[...] = x``), exactly as
pycaffe's ``mutable_cpu_data``; the next compiled call uploads it. Compiled
code only ever sees device arrays.

A SyncedArray can also be *pending*: a forward that returned only some blobs
(jcaffe.engine.PendingForward) holds the way to compute it; the first read of
its host or device copy computes it there. Writing a new value drops that.

Two blobs can share one SyncedArray (Caffe's ShareData/ShareDiff): that is how
shared params and test nets that share the train net's weights work.
"""
import abc
import math

import jax
import jax.numpy as jnp
import numpy as np

HOST, DEVICE, SYNCED = "host", "device", "synced"

MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes

# Counts the changes of any Blob's shape: what a fused solver step derives from the
# shapes (jcaffe.solver.Solver._steady_plan) holds while it is unchanged.
_shape_changes = 0


def shape_epoch():
    """A number that changes whenever a Blob's shape changes (Blob.reshape)."""
    return _shape_changes


def device_zeros(shape, dtype):
    """A zero array on the default device, copied from host zeros: nothing is compiled
    (``jnp.zeros`` compiles a program per shape: GoogLeNet's solver setup and first
    step spent 1.8 s and 4.6 s on them). Host zeros are calloc'd pages, read through
    the zero page; on CPU the array may keep them zero-copy, and nobody else holds them."""
    return jax.device_put(np.zeros(shape, dtype))


class View(abc.ABC):
    """The content of an array held inside another array, ``view(source)`` when read:
    SyncedArray.set_device_view (a solver's packed history: jcaffe.packed_history)."""

    @abc.abstractmethod
    def __call__(self, source):
        """This array's content, out of ``source``."""


class SyncedArray:
    """One array living on the host, the device, or both (head says which is current)."""

    def __init__(self, shape, dtype):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        # Zeros, made when first read, on the host or the device (host(), device()), as
        # Caffe's SyncedMemory allocates on first use: a net's blobs are mostly computed
        # on the device and never need host zeros. Made here, they cost GoogLeNet's
        # training step about 150 MB of peak RSS (3315-3341 -> 3175-3177 MB).
        self._host = None
        self._dev = None
        self.head = HOST
        self.pending = None         # a PendingForward that will compute the content
        self._pending_name = None
        self._reorder = None        # _dev holds the content in another order: see set_device
        self.watch = None           # (segment, blob name): a read is noted (watch_reads)

    def set_pending(self, pending, name):
        """The content is blob ``name`` of the forward ``pending``, not computed yet."""
        self.pending, self._pending_name = pending, name
        self.watch = None
        self._dev = None
        self._reorder = None
        self._host = None
        self.head = DEVICE

    def _resolve(self):
        pending, name = self.pending, self._pending_name
        pending.resolve()                 # sets this array (and the forward's others)
        pending.segment.read_pending(name)

    def watch_reads(self, segment, name):
        """Until this content is replaced, its first read (host or device) tells
        ``segment`` that blob ``name`` is read (Segment.read_pending)."""
        self.watch = (segment, name)

    def _note_read(self):
        segment, name = self.watch
        self.watch = None
        segment.read_pending(name)

    def host(self):
        """The host copy, synced from the device if the device is ahead."""
        if self.watch is not None:
            self._note_read()
        if self.pending is not None:
            self._resolve()
        self._settle()
        if self.head == DEVICE:
            self._host = np.array(self._dev, dtype=self.dtype)  # writable copy
            self.head = SYNCED
        elif self._host is None:    # given away by take_device: zeros, made when read
            self._host = np.zeros(self.shape, self.dtype)
        return self._host

    def mutable_host(self):
        """The host copy for writing: the device copy becomes stale."""
        arr = self.host()
        self.head = HOST
        return arr

    def device(self):
        """The device copy, uploaded from the host if the host is ahead."""
        if self.watch is not None:
            self._note_read()
        if self.pending is not None:
            self._resolve()
        self._settle()
        if self.head == HOST:
            # A private host copy, handed to device_put: on CPU it may become the device
            # buffer itself (device_put keeps big aligned arrays zero-copy), so never the
            # user's host array. jnp.array compiled a conversion per shape instead
            # (GoogLeNet's solver setup: 70 compiles, 0.5 s).
            self._dev = (device_zeros(self.shape, self.dtype) if self._host is None
                         else jax.device_put(np.array(self._host, dtype=self.dtype)))
            self.head = SYNCED
        return self._dev

    def set_device(self, value, reorder=None):
        """Make ``value`` (a jax array of this shape) the current content.

        ``reorder``: ``value`` holds the content in another order (a fused solver step
        leaves a blob computed channels-last so, jcaffe.engine), and ``reorder(value)``
        is it in this array's; applied when the content is first read, so a step whose
        blobs nobody reads never transposes them (the buffer is still donated to the
        next step as it is)."""
        if reorder is not None and tuple(value.shape) != self.shape:
            value, reorder = reorder(value), None       # (held by a view of another shape)
        if reorder is None and tuple(value.shape) != self.shape:
            value = jnp.reshape(value, self.shape)
        if value.dtype != self.dtype:
            value = value.astype(self.dtype)
        self._dev = value
        self._reorder = reorder
        self.head = DEVICE
        self.pending = None
        self.watch = None
        # The host copy is stale now, and host() makes a new one when asked: drop it
        # (a solver's params would otherwise keep their initial values resident).
        self._host = None

    def set_device_view(self, source, view):
        """Make ``view(source)`` (a :class:`View`) the current content, made when first
        read: ``source`` holds it among other arrays' contents, and a step whose param
        diffs nobody reads never slices them out."""
        self._dev = source
        self._reorder = view
        self.head = DEVICE
        self.pending = None
        self.watch = None
        self._host = None

    def take_device(self, keep=frozenset()):
        """Hand over the device copy for reuse as the buffer of this array's next value
        (a fused solver step donates it; see Solver._recycled): returns it, or None where
        there is none to give (pending, host only, already given, or its id in ``keep``).
        The content is lost until the next set_device: zeros if read before (made when
        read: a fused step takes every blob it rewrites, and reads of them are rare)."""
        value = self._dev
        if (self.pending is not None or value is None or id(value) in keep
                or isinstance(self._reorder, View) or value.is_deleted()):
            return None     # (a view's source holds other arrays' contents too)
        self._dev = None
        self._reorder = None
        if self.head == DEVICE:     # no current copy is left: zeros until set again
            self._host = None
        self.head = HOST
        return value

    def set_zeros(self):
        """Zeros as the content, made when first read (see __init__)."""
        self._host = None
        self._dev = None
        self._reorder = None
        self.head = HOST
        self.pending = None
        self.watch = None

    def is_zeros(self):
        """Whether the content is zeros not made yet (set_zeros, a new array, one taken
        by take_device): a reader that knows may use zeros of its own."""
        return (self.head == HOST and self._host is None and self._dev is None
                and self.pending is None)

    def _settle(self):
        """Put a device copy held in another order (set_device's ``reorder``) in this one."""
        if self._reorder is not None:
            if self._dev is not None:
                self._dev = self._reorder(self._dev)
            self._reorder = None

    def drop_host(self):
        """Forget the host copy where the device copy is as current (it is remade when
        read): a solver's params, about to be donated and replaced, need not keep it."""
        if self.head == SYNCED and self.pending is None:
            self._host = None
            self.head = DEVICE

    def set_host(self, value):
        self._host = np.array(value, dtype=self.dtype).reshape(self.shape)
        self.head = HOST
        self.pending = None
        self.watch = None
        self._reorder = None

    def reshape(self, shape):
        """Caffe's Reshape: keep the content when the count is unchanged, else zeros."""
        shape = tuple(shape)
        if shape == self.shape:
            return
        if math.prod(shape) == math.prod(self.shape):
            if self.pending is not None:
                self._resolve()
            self._settle()
            if self.head == DEVICE:
                self._dev = jnp.reshape(self._dev, shape)
            else:
                self._host = None if self._host is None else self._host.reshape(shape)
                self._dev = None if self._dev is None else jnp.reshape(self._dev, shape)
        else:
            self._host = None       # zeros, made when read (see __init__)
            self._dev = None
            self._reorder = None
            self.head = HOST
            self.pending = None
        self.shape = shape


def _as_shape(value, shape):
    return value if tuple(value.shape) == shape else jnp.reshape(value, shape)


def _device_of(synced, shape):
    """``synced``'s device copy in ``shape``. Its current copy as it is where nothing is
    left to do (the arguments of every step and forward: a ResNet-50 forward reads 322
    params), else through SyncedArray.device."""
    if (synced.head != HOST and synced.pending is None and synced.watch is None
            and synced._reorder is None and synced.shape == shape):
        return synced._dev
    return _as_shape(synced.device(), shape)


def shape_count(shape, start=0, end=None):
    """Product of ``shape[start:end]`` (Caffe's Blob::count(start, end))."""
    return int(math.prod(shape[start:end]))


def canonical_axis(axis, num_axes):
    """Caffe's CanonicalAxisIndex: negative axes count from the end; checks range."""
    if not -num_axes <= axis < max(num_axes, 1):
        raise IndexError("axis %d out of range for a %d-axis blob" % (axis, num_axes))
    return axis + num_axes if axis < 0 else axis


def shape_string(shape):
    """Caffe's shape_string: '2 3 4 5 (120)'."""
    return " ".join(str(d) for d in shape) + " (%d)" % shape_count(shape)


class Blob:
    """Caffe's Blob as pycaffe shows it: ``data``, ``diff``, ``shape``, ``count``, ``reshape``."""

    def __init__(self, shape=(), dtype=np.float32):
        shape = tuple(int(d) for d in shape)
        self._check_shape(shape)
        self._shape = shape
        self._data = SyncedArray(shape, dtype)
        self._diff = SyncedArray(shape, dtype)

    @staticmethod
    def _check_shape(shape):
        if len(shape) > MAX_BLOB_AXES:
            raise ValueError("blob shape %s has more than %d axes" % (shape, MAX_BLOB_AXES))
        if any(d < 0 for d in shape):
            raise ValueError("blob shape %s has a negative dimension" % (shape,))

    # -- pycaffe surface -------------------------------------------------
    @property
    def data(self):
        return self._data.mutable_host().reshape(self._shape)

    @data.setter
    def data(self, value):
        self.data[...] = value

    @property
    def diff(self):
        return self._diff.mutable_host().reshape(self._shape)

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    @property
    def shape(self):
        return self._shape

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def count(self):
        return shape_count(self._shape)

    @property
    def num_axes(self):
        return len(self._shape)

    def count_range(self, start=0, end=None):
        """Caffe's count(start, end): product of the dims in [start, end)."""
        return shape_count(self._shape, start, end)

    def canonical_axis_index(self, axis):
        return canonical_axis(axis, len(self._shape))

    def legacy_shape(self, index):
        """Caffe's LegacyShape: axes beyond a <4-d blob read as 1."""
        if index >= len(self._shape) or index < -len(self._shape):
            return 1
        return self._shape[index]

    num = property(lambda self: self.legacy_shape(0))
    channels = property(lambda self: self.legacy_shape(1))
    height = property(lambda self: self.legacy_shape(2))
    width = property(lambda self: self.legacy_shape(3))

    def reshape(self, *shape):
        """``blob.reshape(2, 3, 4)`` or ``blob.reshape((2, 3, 4))``."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        self._check_shape(shape)
        if self._data.shape == self._shape:  # not a view onto someone else's storage
            self._data.reshape(shape)
        if self._diff.shape == self._shape:
            self._diff.reshape(shape)
        if shape != self._shape:
            global _shape_changes
            _shape_changes += 1
        self._shape = shape

    def shape_string(self):
        return shape_string(self._shape)

    def __repr__(self):
        return "Blob(%s, %s)" % (self._shape, self.dtype.name)

    # -- Caffe's sharing ---------------------------------------------------
    def share_data(self, other):
        """Use ``other``'s data storage (counts must match), as Caffe's ShareData."""
        if other.count != self.count:
            raise ValueError("cannot share data: counts %d and %d differ" % (self.count, other.count))
        self._data = other._data

    def share_diff(self, other):
        if other.count != self.count:
            raise ValueError("cannot share diff: counts %d and %d differ" % (self.count, other.count))
        self._diff = other._diff

    # -- engine side (device arrays) ---------------------------------------
    # jnp.reshape is a dispatched op even to the same shape (an XLA call per blob per
    # step, and one that waits for the array): reshape only a shared view's storage.
    def device_data(self):
        return _device_of(self._data, self._shape)

    def device_diff(self):
        return _device_of(self._diff, self._shape)

    def set_device_data(self, value, reorder=None):
        self._data.set_device(value, reorder)

    def set_device_diff(self, value, reorder=None):
        self._diff.set_device(value, reorder)

    def set_device_diff_view(self, source, view):
        self._diff.set_device_view(source, view)

    def drop_host_data(self):
        self._data.drop_host()

    def clear_diff(self):
        """The diff becomes zeros, made when first read (SyncedArray.set_zeros)."""
        self._diff.set_zeros()

    def diff_is_zeros(self):
        """Whether the diff is zeros not made yet (SyncedArray.is_zeros)."""
        return self._diff.shape == self._shape and self._diff.is_zeros()

    def held_device_data(self):
        """The data's device array where it is still held in another order (a blob a
        forward returned channels-last: engine._held), as it is; else None."""
        d = self._data
        if (d.pending is None and d.watch is None and d._dev is not None
                and d._reorder is not None and not isinstance(d._reorder, View)
                and d.shape == self._shape):
            return d._dev
        return None

    def take_device_data(self, keep=frozenset()):
        """SyncedArray.take_device of the data (None for a view of another shape)."""
        return self._data.take_device(keep) if self._data.shape == self._shape else None

    def take_device_diff(self, keep=frozenset()):
        return self._diff.take_device(keep) if self._diff.shape == self._shape else None

    def watch_data_reads(self, segment, name):
        """SyncedArray.watch_reads of the data."""
        self._data.watch_reads(segment, name)

    def set_pending_data(self, pending, name):
        """The data is blob ``name`` of the slim forward ``pending`` (jcaffe.engine),
        computed when first read."""
        pending.wait(self._data, name)

    def host_data(self):
        """Read-only use of the host data (does not mark the host as ahead)."""
        return self._data.host().reshape(self._shape)

    def host_diff(self):
        return self._diff.host().reshape(self._shape)
