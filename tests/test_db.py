"""LMDB/LevelDB Datum databases: keys, order, wrap-around, errors, and Caffe's wire format."""
import os

import numpy as np
import pytest

from jcaffe import io as caffe_io
from jcaffe.db import Cursor, DataSourceError, make_key, open_db, parse_datum, read_datums


def write_db(path, n=5, backend="lmdb", shape=(1, 2, 3)):
    with open_db(path, "w", backend) as db:
        for i in range(n):
            arr = np.full(shape, i, np.uint8)
            db.put(make_key(i, "img%d.png" % i), caffe_io.array_to_datum(arr, i).SerializeToString())
    return str(path)


def test_keys_are_caffes():
    assert make_key(3, "a/b.jpg") == b"00000003_a/b.jpg"
    assert make_key(12) == b"00000012"


def test_lmdb_roundtrip_order_and_cursor_wraps(tmp_path):
    path = write_db(tmp_path / "db", n=3)
    assert sorted(os.listdir(path)) == ["data.mdb", "lock.mdb"]
    with open_db(path) as db:
        assert len(db) == 3
        cur = Cursor(db)
        seen = []
        for _ in range(7):
            seen.append(parse_datum(cur.value(), path, cur.key()).label)
            cur.next()
        assert seen == [0, 1, 2, 0, 1, 2, 0]
    got = read_datums(path)
    assert [k for k, _ in got] == ["00000000_img0.png", "00000001_img1.png", "00000002_img2.png"]
    np.testing.assert_array_equal(caffe_io.datum_to_array(got[2][1]), np.full((1, 2, 3), 2))


def test_lmdb_can_be_opened_twice_for_reading(tmp_path):
    path = write_db(tmp_path / "db", n=2)
    a, b = open_db(path), open_db(path)
    assert len(a) == len(b) == 2
    a.close()
    assert len(b) == 2
    b.close()


def test_create_refuses_an_existing_db(tmp_path):
    path = write_db(tmp_path / "db", n=1)
    with pytest.raises(DataSourceError, match="already exists"):
        open_db(path, "w")


def test_missing_and_corrupt_db_name_the_source(tmp_path):
    with pytest.raises(DataSourceError, match="nope.*does not exist"):
        open_db(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(b"this is not an lmdb file" * 200)
    with pytest.raises(DataSourceError, match=str(bad)):
        with open_db(bad) as db:
            db.keys()


def test_record_that_is_not_a_datum(tmp_path):
    path = str(tmp_path / "db")
    with open_db(path, "w") as db:
        db.put(make_key(0, "x"), b"\xff\xff\xff garbage")
    with pytest.raises(DataSourceError, match="record '00000000_x'.*not a Datum"):
        read_datums(path)


def test_leveldb_backend(tmp_path):
    pytest.importorskip("plyvel")
    path = write_db(tmp_path / "ldb", n=4, backend="leveldb")
    assert [d.label for _, d in read_datums(path, "leveldb")] == [0, 1, 2, 3]


def test_leveldb_missing_binding_is_a_clear_error(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "plyvel":
            raise ImportError("No module named 'plyvel'")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(DataSourceError, match="LevelDB backend needs the 'plyvel'"):
        open_db(tmp_path / "x", "w", "leveldb")


def _varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def decode_wire(buf):
    """Hand-decode protobuf wire format: [(field number, wire type, value)]."""
    out, i = [], 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        field, wt = tag >> 3, tag & 7
        if wt == 0:
            value, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            value, i = bytes(buf[i:i + n]), i + n
        elif wt == 5:
            value, i = bytes(buf[i:i + 4]), i + 4
        else:
            raise AssertionError("unexpected wire type %d" % wt)
        out.append((field, wt, value))
    return out


def test_digits_lmdb_wire_format_is_what_caffe_reads(tmp_path):
    """What Caffe's DataLayer reads: an LMDB environment directory whose unnamed main
    database maps ``%08d_<name>`` keys (in the order written) to Datum messages with
    channels(1) height(2) width(3) as varints, data(4) as C x H x W bytes, label(5),
    encoded(7) = false, fields in number order as Caffe's C++ protobuf writes them."""
    import lmdb
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "digits"))
    import create_digits
    images, labels, train, _ = create_digits.load_split()
    path = str(tmp_path / "digits_lmdb")
    create_digits.write_lmdb(path, images, labels, train[:20])
    env = lmdb.open(path, readonly=True, lock=False)   # the main (unnamed) database, as Caffe
    with env.begin() as txn:
        rows = list(txn.cursor())
    env.close()
    assert len(rows) == 20
    for n, (key, value) in enumerate(rows):
        assert key == b"%08d_digit_%04d" % (n, train[n])
        fields = decode_wire(value)
        assert [f for f, _, _ in fields] == [1, 2, 3, 4, 5, 7]
        d = dict((f, v) for f, _, v in fields)
        assert (d[1], d[2], d[3]) == (1, 8, 8)
        assert d[4] == images[train[n]].tobytes() and len(d[4]) == 64
        assert d[5] == labels[train[n]] and d[7] == 0


def test_a_reader_collected_while_another_opens_does_not_deadlock(tmp_path, monkeypatch):
    """A reader left in a reference cycle is closed by the garbage collector, which
    may run inside an allocation while this module holds its reader lock (lmdb.open
    opening another database: the CI hang of 2026-12-02). Its release must not wait
    for that lock; it happens at the next open or close."""
    import gc
    import threading

    import lmdb

    from jcaffe import db as jdb
    first, second = write_db(tmp_path / "a", n=2), write_db(tmp_path / "b", n=2)
    reader = open_db(first)
    reader.cycle = reader               # only the cycle collector can free it
    del reader
    real_open = lmdb.open

    def open_collecting(*args, **kwargs):
        gc.collect()                    # the collection that ran inside lmdb's env_keys
        return real_open(*args, **kwargs)
    monkeypatch.setattr(lmdb, "open", open_collecting)
    gc.disable()                        # no earlier collection frees it
    try:
        done = []
        t = threading.Thread(target=lambda: done.append(open_db(second)), daemon=True)
        t.start()
        t.join(20)
    finally:
        gc.enable()
    assert done, "open_db deadlocked on the reader lock while a reader was collected"
    done[0].close()
    monkeypatch.setattr(lmdb, "open", real_open)
    # (CPython's gc.collect() returns at once while another thread's collection runs: a
    # daemon thread left by an earlier test in this worker can make the thread's collect
    # miss the reader, which the collector then frees at any later moment, even after
    # the open below (fresh-clone CI, 2026-12-06). Collected here if it is not yet, its
    # release is still deferred to that open.)
    gc.collect()
    with open_db(first) as again:       # the collected reader was released: counts right
        assert len(again) == 2
    assert os.path.realpath(first) not in jdb._READ_ENVS
    assert os.path.realpath(second) not in jdb._READ_ENVS
