"""Caffe's HDF5 weight and solver-state files, through h5py.

Layouts, as Caffe's Net::ToHDF5 and SGDSolver::SnapshotSolverStateToHDF5
write them, so files move between Caffe and jcaffe either way:

* weights (``.caffemodel.h5``): group ``data/<layer name>/<param index>``, one
  float dataset per param blob in its shape (a param shared from another
  layer is written only by its owner); with ``write_diff`` also
  ``diff/<layer name>/<param index>`` for every param.
* solver state (``.solverstate.h5``): scalar int datasets ``iter`` and
  ``current_step``, string dataset ``learned_net``, and group
  ``history/<i>`` with one dataset per history blob, in the order of the
  binary SolverState.

Writes go to a temporary file renamed into place, like every jcaffe write.
"""
import os

import numpy as np

from .errors import ProtoFileError, ShapeMismatchError


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a dependency
        raise ProtoFileError("HDF5 files need the h5py package (pip install h5py)") from e
    return h5py


def is_hdf5(path):
    """Caffe's H5Fis_hdf5 test: does the file start with the HDF5 signature?"""
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _atomic_h5(path, write):
    h5py = _h5py()
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, ".%s.tmp%d" % (os.path.basename(path), os.getpid()))
    try:
        with h5py.File(tmp, "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_net(net, path, write_diff=False):
    """Net::ToHDF5: the net's params (and diffs) as ``data/`` (and ``diff/``) groups."""
    owners = set(net._param_owner_slot)

    def write(f):
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        for slot in net._slots:
            layer = slot.layer
            g = data.create_group(layer.name)
            gd = diff.create_group(layer.name) if write_diff else None
            for k, blob in enumerate(layer.blobs):
                if (slot.index, k) in owners:   # a shared param's data: its owner's only
                    g.create_dataset(str(k), data=blob.host_data())
                if write_diff:
                    gd.create_dataset(str(k), data=np.asarray(blob.host_diff()))
    _atomic_h5(path, write)


def copy_from(net, path, log=None):
    """Net::CopyTrainedLayersFromHDF5: copy ``data/<layer>/<k>`` by layer name."""
    h5py = _h5py()
    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ProtoFileError("%s: cannot open as HDF5 weights (%s)" % (path, e)) from e
    with f:
        if "data" not in f:
            raise ProtoFileError("%s: no 'data' group: not a Caffe HDF5 weights file" % path)
        names = {slot.layer.name: slot for slot in net._slots}
        owners = set(net._param_owner_slot)
        for layer_name, group in f["data"].items():
            slot = names.get(layer_name)
            if slot is None:
                if log is not None:
                    log.info("Ignoring source layer %s", layer_name)
                continue
            blobs = slot.layer.blobs
            if len(group) > len(blobs):
                raise ShapeMismatchError("Incompatible number of blobs for layer %s: %s has %d, "
                                         "the net expects %d" % (layer_name, path, len(group),
                                                                 len(blobs)))
            for k, blob in enumerate(blobs):
                if str(k) not in group:
                    if (slot.index, k) not in owners:
                        continue   # weight-shared in the target: the owner's copy suffices
                    raise ShapeMismatchError("Incompatible number of blobs for layer %s: %s has no "
                                             "param %d" % (layer_name, path, k))
                arr = np.asarray(group[str(k)])
                if arr.shape != tuple(blob.shape):
                    raise ShapeMismatchError(
                        "Cannot copy param %d weights from layer '%s'; shape mismatch.  Source "
                        "param shape is %s; target param shape is %s (weights: %s)"
                        % (k, layer_name, " ".join(map(str, arr.shape)), blob.shape_string(), path))
                blob.data[...] = arr


def save_solver_state(path, iter, current_step, learned_net, history):
    """SnapshotSolverStateToHDF5: iter, learned_net, current_step, history/<i>."""
    def write(f):
        f.create_dataset("iter", data=np.int32(iter))
        f.create_dataset("learned_net", data=np.bytes_(learned_net))
        f.create_dataset("current_step", data=np.int32(current_step))
        g = f.create_group("history")
        for i, h in enumerate(history):
            g.create_dataset(str(i), data=np.asarray(h))
    _atomic_h5(path, write)


def load_solver_state(path):
    """(iter, current_step, learned_net or None, [history arrays]) from a .solverstate.h5."""
    h5py = _h5py()
    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ProtoFileError("%s: cannot open solver state as HDF5 (%s)" % (path, e)) from e
    with f:
        for key in ("iter", "current_step", "history"):
            if key not in f:
                raise ProtoFileError("%s: no '%s' in the HDF5 solver state" % (path, key))
        learned = None
        if "learned_net" in f:
            raw = f["learned_net"][()]
            learned = raw.decode() if isinstance(raw, bytes) else str(raw)
        hist = f["history"]
        history = [np.asarray(hist[str(i)]) for i in range(len(hist))]
        return int(f["iter"][()]), int(f["current_step"][()]), learned, history
