"""Key-value databases of ``Datum`` records, as Caffe's ``caffe::db``.

LMDB (the ``lmdb`` package) is the default backend; LevelDB works when the
``plyvel`` binding is installed (``pip install "jcaffe[leveldb]"``), else
opening one raises :class:`DataSourceError` naming the backend.

Records are serialized ``caffe.Datum`` messages under Caffe's keys:
``"%08d_%s" % (index, name)`` as ``convert_imageset`` writes them (or bare
``"%08d"`` as the MNIST/CIFAR converters do). A :class:`Cursor` iterates in
key order and, like Caffe's DataLayer, wraps around to the first record at
the end.

::

    with open_db("train_lmdb", "w") as db:
        db.put(make_key(0, "a.png"), datum.SerializeToString())
    for key, value in open_db("train_lmdb").items(): ...
"""
import os
import threading

from .errors import JcaffeError
from .proto import caffe_pb2


class DataSourceError(JcaffeError, IOError):
    """A database, list file or image that cannot be read: names the source (and record key)."""


BACKENDS = ("lmdb", "leveldb")
_LMDB_INITIAL_MAP = 1 << 24          # grows by doubling on MapFullError (Caffe's LMDB does too)


def make_key(index, name=None):
    """Caffe's record key: ``%08d_<name>`` (``%08d`` without a name)."""
    return ("%08d" % index if name is None else "%08d_%s" % (index, name)).encode()


def backend_name(backend):
    """Normalize ``backend`` (a string or DataParameter.DB value) to 'lmdb' / 'leveldb'."""
    if isinstance(backend, int):
        return {caffe_pb2.DataParameter.LMDB: "lmdb", caffe_pb2.DataParameter.LEVELDB: "leveldb"}[backend]
    name = str(backend).lower()
    if name not in BACKENDS:
        raise DataSourceError("Unknown database backend '%s' (known: %s)" % (backend, ", ".join(BACKENDS)))
    return name


def _import_lmdb():
    try:
        import lmdb
    except ImportError as e:  # pragma: no cover - a core dependency
        raise DataSourceError("the LMDB backend needs the 'lmdb' package (pip install lmdb): %s" % e) from e
    return lmdb


def _import_plyvel(source):
    try:
        import plyvel
    except ImportError as e:
        raise DataSourceError(
            "database '%s': the LevelDB backend needs the 'plyvel' binding, which is not installed "
            "(pip install \"jcaffe[leveldb]\"), or convert the database to LMDB" % source) from e
    return plyvel


def open_db(source, mode="r", backend="lmdb"):
    """Open ``source`` for reading (``mode='r'``), creating (``'w'``, Caffe's NEW: the
    database must not exist) or appending (``'a'``)."""
    source = os.fspath(source)
    backend = backend_name(backend)
    if mode not in ("r", "w", "a"):
        raise ValueError("mode must be 'r', 'w' or 'a', got %r" % (mode,))
    if backend == "lmdb":
        return LMDB(source, mode)
    return LevelDB(source, mode)


class _DB:
    source = None
    backend = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def cursor(self):
        return Cursor(self)

    def __len__(self):
        return self.count()

    def __repr__(self):
        return "<%s database '%s'>" % (self.backend, self.source)


class LMDB(_DB):
    """An LMDB environment directory (``data.mdb`` / ``lock.mdb``), as Caffe writes it."""

    backend = "lmdb"

    def __init__(self, source, mode="r"):
        lmdb = _import_lmdb()
        self.source, self.mode = source, mode
        self._pending = []
        try:
            if mode == "r":
                if not os.path.exists(source):
                    raise DataSourceError("LMDB database '%s' does not exist" % source)
                self.env = _shared_read_env(source)
            else:
                if _open_for_reading(source):
                    raise DataSourceError("cannot write LMDB database '%s': it is open for reading in "
                                          "this process (by a Data layer or open_db)" % source)
                if mode == "w" and os.path.exists(source):
                    raise DataSourceError("cannot create LMDB database '%s': it already exists" % source)
                os.makedirs(source, exist_ok=True)
                self.env = lmdb.open(source, map_size=_LMDB_INITIAL_MAP, subdir=True)
        except DataSourceError:
            raise
        except lmdb.Error as e:
            raise DataSourceError("cannot open LMDB database '%s': %s" % (source, e)) from e

    def _wrap(self, what, fn):
        lmdb = _import_lmdb()
        try:
            return fn()
        except lmdb.Error as e:
            raise DataSourceError("LMDB database '%s' is unreadable (%s): %s"
                                  % (self.source, what, e)) from e

    def count(self):
        return self._wrap("stat", lambda: self.env.stat()["entries"])

    def get(self, key):
        if isinstance(key, str):
            key = key.encode()
        def read():
            with self.env.begin() as txn:
                return txn.get(key)
        return self._wrap("get", read)

    def iter_values(self, keys):
        """Yield the value of each key (None where absent), read in one transaction as
        buffers into the map (no copy): each is valid until the next is asked for."""
        lmdb = _import_lmdb()
        try:
            with self.env.begin(buffers=True) as txn:
                for key in keys:
                    yield txn.get(key.encode() if isinstance(key, str) else key)
        except lmdb.Error as e:
            raise DataSourceError("LMDB database '%s' is unreadable (get): %s" % (self.source, e)) from e

    def keys(self):
        return [k for k, _ in self.items()]

    def items(self, start=None):
        """Yield (key bytes, value bytes) in key order, from key ``start`` on."""
        lmdb = _import_lmdb()
        try:
            with self.env.begin(buffers=False) as txn:
                cur = txn.cursor()
                ok = cur.set_range(start) if start is not None else cur.first()
                while ok:
                    yield cur.key(), cur.value()
                    ok = cur.next()
        except lmdb.Error as e:
            raise DataSourceError("LMDB database '%s' is unreadable: %s" % (self.source, e)) from e

    # -- writing (Caffe's Transaction: put, then commit) -------------------------
    def put(self, key, value):
        if self.mode == "r":
            raise DataSourceError("LMDB database '%s' is open for reading" % self.source)
        if isinstance(key, str):
            key = key.encode()
        self._pending.append((key, bytes(value)))
        if len(self._pending) >= 1000:
            self.commit()

    def commit(self):
        """Write the pending records (doubling the map size when it is full, as Caffe)."""
        lmdb = _import_lmdb()
        while self._pending:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in self._pending:
                        txn.put(k, v)
                self._pending = []
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self):
        if getattr(self, "env", None) is not None:
            if self.mode != "r":
                self.commit()
                self.env.sync()
                self.env.close()
            else:
                _release_read_env(self.source)
            self.env = None

    def __del__(self):
        # The garbage collector may call this inside _READ_ENVS_LOCK on the same thread
        # (a cycle collected while lmdb.open allocates): a reader's release never waits
        # for that lock here; the next open or release does it.
        if getattr(self, "mode", None) == "r" and getattr(self, "env", None) is not None:
            self.env = None
            _DEFERRED_RELEASES.append(self.source)
            return
        try:
            self.close()
        except Exception:
            pass


# LMDB allows one Environment per database per process: readers share it (refcounted).
_READ_ENVS = {}
_READ_ENVS_LOCK = threading.Lock()
_DEFERRED_RELEASES = []     # sources of readers freed by the garbage collector


def _release_deferred():
    """Under _READ_ENVS_LOCK: the releases __del__ left."""
    while _DEFERRED_RELEASES:
        _release_locked(os.path.realpath(_DEFERRED_RELEASES.pop()))


def _open_for_reading(source):
    with _READ_ENVS_LOCK:
        _release_deferred()
        return os.path.realpath(source) in _READ_ENVS


def _shared_read_env(source):
    lmdb = _import_lmdb()
    key = os.path.realpath(source)
    with _READ_ENVS_LOCK:
        _release_deferred()
        entry = _READ_ENVS.get(key)
        if entry is None:
            # lock=False: readers never write the lock file (a read-only folder works,
            # and the prefetch thread may read while the main thread opened it).
            env = lmdb.open(source, readonly=True, lock=False, readahead=False,
                            max_readers=256, subdir=os.path.isdir(source))
            entry = _READ_ENVS[key] = [env, 0]
        entry[1] += 1
        return entry[0]


def _release_read_env(source):
    with _READ_ENVS_LOCK:
        _release_deferred()
        _release_locked(os.path.realpath(source))


def _release_locked(key):
    entry = _READ_ENVS.get(key)
    if entry is not None:
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].close()
            del _READ_ENVS[key]


class LevelDB(_DB):
    """A LevelDB directory through ``plyvel`` (optional extra)."""

    backend = "leveldb"

    def __init__(self, source, mode="r"):
        plyvel = _import_plyvel(source)
        self.source, self.mode = source, mode
        if mode == "r" and not os.path.isdir(source):
            raise DataSourceError("LevelDB database '%s' does not exist" % source)
        try:
            self.db = plyvel.DB(source, create_if_missing=mode != "r", error_if_exists=mode == "w")
        except plyvel.Error as e:
            raise DataSourceError("cannot open LevelDB database '%s': %s" % (source, e)) from e
        self._batch = None

    def count(self):
        return sum(1 for _ in self.db.iterator(include_value=False))

    def get(self, key):
        return self.db.get(key.encode() if isinstance(key, str) else key)

    def iter_values(self, keys):
        for key in keys:
            yield self.get(key)

    def keys(self):
        return list(self.db.iterator(include_value=False))

    def items(self, start=None):
        plyvel = _import_plyvel(self.source)
        try:
            yield from self.db.iterator(start=start)
        except plyvel.Error as e:
            raise DataSourceError("LevelDB database '%s' is unreadable: %s" % (self.source, e)) from e

    def put(self, key, value):
        if self.mode == "r":
            raise DataSourceError("LevelDB database '%s' is open for reading" % self.source)
        if self._batch is None:
            self._batch = self.db.write_batch()
        self._batch.put(key.encode() if isinstance(key, str) else key, bytes(value))

    def commit(self):
        if self._batch is not None:
            self._batch.write()
            self._batch = None

    def close(self):
        if getattr(self, "db", None) is not None:
            self.commit()
            self.db.close()
            self.db = None


class Cursor:
    """Caffe's db::Cursor as the DataLayer uses it: key order, wrapping at the end.

    The key list is read once (keys are small); values are fetched one by one.
    """

    def __init__(self, db):
        self.db = db
        self._keys = db.keys()
        if not self._keys:
            raise DataSourceError("%s database '%s' is empty" % (db.backend, db.source))
        self.pos = 0

    def __len__(self):
        return len(self._keys)

    def key(self):
        return self._keys[self.pos]

    def value(self):
        value = self.db.get(self._keys[self.pos])
        if value is None:
            raise self._vanished(self.key())
        return value

    def values(self, keys):
        """Yield the values of ``keys`` (LMDB: one read transaction, each value a buffer
        valid until the next is asked for). Close it (``contextlib.closing``) to end the
        transaction when not reading to the end."""
        inner = self.db.iter_values(keys)
        try:
            for key, value in zip(keys, inner):
                if value is None:
                    raise self._vanished(key)
                yield value
        finally:
            inner.close()

    def _vanished(self, key):
        return DataSourceError("%s database '%s': record '%s' vanished while reading"
                               % (self.db.backend, self.db.source, key.decode(errors="replace")))

    def next(self):
        """Advance; at the end, start again from the first record (Caffe's DataLayer)."""
        self.pos += 1
        if self.pos >= len(self._keys):
            self.pos = 0

    def seek_to_first(self):
        self.pos = 0


def parse_datum(value, source, key):
    """A Datum from its bytes; a record that is not one gives an error naming source and key."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as e:  # protobuf's DecodeError
        raise DataSourceError("database '%s', record '%s': not a Datum (%s)"
                              % (source, _key_str(key), e)) from e
    return datum


def _key_str(key):
    return key.decode(errors="replace") if isinstance(key, bytes) else str(key)


def read_datums(source, backend="lmdb"):
    """All (key str, Datum) of a database, in key order."""
    with open_db(source, "r", backend) as db:
        return [(_key_str(k), parse_datum(v, source, k)) for k, v in db.items()]
