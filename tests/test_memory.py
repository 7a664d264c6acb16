"""Memory of the fused training step: the last step's blob arrays are donated and
become this step's (Caffe overwrites its blobs in place), param host copies are not
kept beside the device ones, and a long compile hands its heap back (jcaffe.memory).
What users read must not change: every blob and diff equals the unfused path's."""
import re

import numpy as np
import pytest
from google.protobuf import text_format

import jax
import jax.numpy as jnp
import jcaffe
from jcaffe import engine, memory
from jcaffe.solver import Solver
from jcaffe.proto import caffe_pb2
from netutil import calls_of, compiled_step

NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 2 dim: 8 dim: 8 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

BLOBS = ("conv", "pool", "ip", "loss")


def _solver(fuse=True, net=NET):
    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.1 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed" '
                      'random_seed: 3 type: "SGD"', param)
    text_format.Parse(net, param.net_param)
    solver = jcaffe.get_solver(param)
    solver.fuse_step = fuse
    rng = np.random.default_rng(0)
    blobs = solver.net.blobs
    blobs["data"].data[...] = rng.standard_normal(blobs["data"].shape)
    blobs["label"].data[...] = rng.integers(0, 5, blobs["label"].shape)
    return solver


def _assert_same(fused, plain):
    for name in BLOBS:
        np.testing.assert_allclose(fused.net.blobs[name].data, plain.net.blobs[name].data,
                                   rtol=1e-5, atol=1e-6, err_msg=name + " data")
    for name in ("conv", "pool", "ip"):
        np.testing.assert_allclose(fused.net.blobs[name].diff, plain.net.blobs[name].diff,
                                   rtol=1e-5, atol=1e-6, err_msg=name + " diff")
    for name in ("conv", "ip"):
        np.testing.assert_allclose(fused.net.params[name][0].data, plain.net.params[name][0].data,
                                   rtol=1e-5, atol=1e-6, err_msg=name + " weights")


def test_a_fused_step_writes_into_the_last_steps_blob_arrays():
    solver = _solver()
    solver.step(1)
    blobs = solver.net.blobs
    old = {name: blobs[name].device_data() for name in ("conv", "pool", "ip")}
    old_diff = {name: blobs[name].device_diff() for name in ("conv", "pool", "ip")}
    solver.step(1)
    for name in old:   # donated: XLA wrote this step's values into their buffers
        assert old[name].is_deleted(), name
        assert old_diff[name].is_deleted(), name
        assert not blobs[name].device_data().is_deleted()
    # the loss weight (the loss top's diff) is an input of the step, never donated
    assert float(blobs["loss"].diff) == 1.0


def test_recycled_blobs_hold_exactly_what_the_unfused_path_computes():
    fused, plain = _solver(), _solver(fuse=False)
    for _ in range(3):
        fused.step(1)
        plain.step(1)
        _assert_same(fused, plain)


def test_without_recycling_the_step_computes_the_same_and_donates_no_blob(monkeypatch):
    """Solver.recycle_buffers = False (the no_recycle variant for a GPU's A/B): the
    step passes no blob buffers, leaves the last step's blob arrays alone, and computes
    what the unfused path does."""
    monkeypatch.setattr(Solver, "recycle_buffers", False)
    fused, plain = _solver(), _solver(fuse=False)
    fused.step(1)
    plain.step(1)
    old = fused.net.blobs["pool"].device_data()
    passed = []
    real = fused._fused[1]
    fused._fused = (fused._fused[0], lambda *a: passed.append(a[2]) or real(*a)) + fused._fused[2:]
    for _ in range(2):
        fused.step(1)
        plain.step(1)
        _assert_same(fused, plain)
    assert passed == [[], []] and not old.is_deleted()


def test_blobs_read_or_written_between_fused_steps_stay_correct():
    """A host read between steps (the host copy stays current when the device array is
    donated), a slim forward leaving blobs pending (nothing to donate: zeros are used),
    and a new input written from Python."""
    fused, plain = _solver(), _solver(fuse=False)
    fused.step(1)
    plain.step(1)
    seen = fused.net.blobs["pool"].data.copy()    # host copy made, head synced
    fused.step(1)
    plain.step(1)
    _assert_same(fused, plain)
    assert not np.array_equal(seen, fused.net.blobs["pool"].data)
    for solver in (fused, plain):
        solver.net.forward()                     # slim: intermediates pending
        solver.net.blobs["data"].data[...] = 0.5
        solver.step(1)
    _assert_same(fused, plain)


def test_a_blob_keeps_its_host_copy_when_its_device_array_is_taken():
    solver = _solver()
    solver.step(1)
    blob = solver.net.blobs["ip"]
    values = blob.data.copy()                    # synced
    taken = blob.take_device_data()
    assert taken is not None
    np.testing.assert_array_equal(blob.data, values)
    assert blob.take_device_data() is None       # nothing left to give
    blob.set_device_data(jnp.ones(blob.shape, blob.dtype))
    kept = blob.device_data()
    assert blob.take_device_data(keep={id(kept)}) is None


def test_a_taken_blob_without_a_host_copy_reads_as_zeros_on_host_and_device():
    """A device-only blob whose array was given away holds no host zeros until read."""
    solver = _solver()
    solver.step(1)
    for read in ("host", "device", "reshape"):
        blob = solver.net.blobs["ip"]
        blob.set_device_data(jnp.ones(blob.shape, blob.dtype))
        assert blob.take_device_data() is not None
        assert blob._data._host is None              # nothing allocated for it
        if read == "host":
            np.testing.assert_array_equal(blob.data, np.zeros(blob.shape))
        elif read == "device":
            np.testing.assert_array_equal(np.asarray(blob.device_data()), 0)
        else:                                        # same count: content (zeros) kept
            shape = blob.shape
            blob.reshape((blob.count,))
            np.testing.assert_array_equal(blob.data, 0)
            blob.reshape(shape)


def test_the_step_does_not_keep_param_host_copies_while_it_runs():
    """The params' host copies (the fillers' values on the first step: CaffeNet 233 MB)
    are dropped before the step runs, not only when it has replaced the params."""
    solver = _solver()
    for b in solver.net._learnable:
        b.data                                   # host copies made and synced
    seen = []
    recycled = solver._recycled

    def spy(inputs):                             # called just before the compiled step
        seen.append([b._data._host is None for b in solver.net._learnable])
        return recycled(inputs)
    solver._recycled = spy
    solver.step(1)
    assert seen == [[True] * len(solver.net._learnable)]
    w = solver.net.params["conv"][0].data        # read again: made from the device
    assert np.all(np.isfinite(w))


def test_the_fused_step_updates_donated_weights_without_copying_them():
    """ip's weight is read by its data gradient (dpool = dip . W, W 5x27), which nothing in its
    own update depends on: unless the update is ordered after that read, XLA copies the
    donated weight before the step (CaffeNet: 233 MB per step). See solver._rate_after."""
    hlo = compiled_step(_solver()).as_text()
    weights = [line.strip() for line in hlo.splitlines()
               if " copy(%params" in line and "f32[5,27]" in line]
    assert weights == []
    assert "f32[5,27]" in hlo and "copy(" in hlo     # the check can see such copies


BRANCHES = """
name: "branches"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 16 dim: 29 dim: 29 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "a" type: "Convolution" bottom: "pool" top: "a"
        convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "b" type: "Convolution" bottom: "pool" top: "b"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
layer { name: "ip" type: "InnerProduct" bottom: "cat" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _entry(hlo):
    """The instructions of a compiled program's own computation (ENTRY), one a line."""
    return hlo.split("\nENTRY ", 1)[1].split("\n}", 1)[0].splitlines()


def _readers(lines, name):
    """The names of the instructions among ``lines`` that take %``name`` as an operand."""
    return {re.match(r"\s*(?:ROOT )?%(\S+) =", line).group(1) for line in lines
            if re.match(r"\s*(?:ROOT )?%\S+ = ", line)
            and re.search(r"%" + re.escape(name) + r"[,)]", line.split("=", 1)[1])}


def _arrays_of_dims(lines, dims):
    """The names of the float32 instructions among ``lines`` whose shape holds ``dims``
    in any order."""
    return [m.group(1) for m in (re.match(r"\s*(?:ROOT )?%(\S+) = f32\[([\d,]+)\]", line)
                                 for line in lines)
            if m and sorted(map(int, m.group(2).split(","))) == sorted(dims)]


def _readers_of_routed_diff(hlo, six):
    """The instructions reading the last array of a pool's routed dE/dx: the 6-d array
    (N, C, T_h, s_h, T_w, s_w) in any order of its dims ``six``, read by no other such
    array (the kernel rows' updates chain through it)."""
    lines = _entry(hlo)
    defs = _arrays_of_dims(lines, six)
    last = [n for n in defs if not _readers(lines, n) & set(defs)]
    assert len(last) == 1, (last, defs)
    return _readers(lines, last[0])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU's fusion of the crop")
def test_a_max_pools_routed_diff_is_stored_once_for_its_readers(monkeypatch):
    """Overlapping MAX windows route dE/dx by kernel rows into a padded array, then crop
    it (Pooling._route_back_by_rows). Left to XLA, the crop was fused into each reader
    (the layers below) and into the copy to the step's returned diff, which XLA ran
    late: in GoogLeNet's step (batch 32) the padded arrays stayed alive across the rest
    of the backward, about 190 MB of its temporaries, and the step ran 6% slower.
    Stored once (Pooling.STORE_ROUTED_DIFF), the padded array has one reader, the crop.
    The diffs are the same either way."""
    from jcaffe.layers.vision import Pooling
    six = (8, 32, 15, 2, 15, 2)     # 29 x 29 maps, 3x3 stride 2: 14 windows, 15 x 2 padded
    readers, diffs = {}, {}
    for store in (True, False):
        monkeypatch.setattr(Pooling, "STORE_ROUTED_DIFF", store)
        solver = _solver(net=BRANCHES)
        readers[store] = _readers_of_routed_diff(compiled_step(solver).as_text(), six)
        diffs[store] = solver.net.blobs["conv"].diff.copy()
    assert len(readers[True]) == 1, readers[True]
    assert len(readers[False]) > 1, readers[False]      # (the test can see the difference)
    np.testing.assert_allclose(diffs[True], diffs[False], rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU's fusion of the cut")
def test_an_ave_pools_cut_diff_is_stored_once_for_its_readers(monkeypatch):
    """AVE's dE/dx is its windows' shares scattered into an array longer than the image
    (5x5 stride 3 over 29 columns: 10 phases of 3), then cut. Left to XLA, the cut was
    fused into each reader and into the copy to the step's returned diff, run late
    (GoogLeNet's aux classifiers: 14 MB each at the step's peak). Stored once, one
    instruction cuts it. The diffs are the same either way."""
    from jcaffe.layers.vision import Pooling
    net = BRANCHES.replace("pool: MAX kernel_size: 3 stride: 2",
                           "pool: AVE kernel_size: 5 stride: 3")
    readers, diffs = {}, {}
    for store in (True, False):
        monkeypatch.setattr(Pooling, "STORE_ROUTED_DIFF", store)
        solver = _solver(net=net)
        lines = _entry(compiled_step(solver).as_text())
        # (the scattered rows and columns: stacked phases, padded; what reads them else
        # cuts them)
        uncut = {re.match(r"\s*%(\S+) =", line).group(1) for line in lines
                 if re.search(r'pool\.backward/(stack|pad)"', line)}
        assert uncut
        readers[store] = set().union(*(_readers(lines, n) for n in uncut)) - uncut
        diffs[store] = solver.net.blobs["conv"].diff.copy()
    assert len(readers[True]) == 1, readers[True]
    assert len(readers[False]) > 1, readers[False]      # (the test can see the difference)
    np.testing.assert_allclose(diffs[True], diffs[False], rtol=1e-6, atol=1e-7)


RELUS = """
name: "relus"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 8 dim: 32 dim: 32 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "conv2" type: "Convolution" bottom: "conv" top: "conv2"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool" type: "Pooling" bottom: "conv2" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU's fusion of the ReLU")
def test_an_in_place_relus_bottom_has_one_reader(monkeypatch):
    """An in-place ReLU after a convolution: left to XLA, max(x, 0) was fused into each
    reader of the blob's last value (the next layer, the copy to the returned blob, the
    ReLU's own backward), so the convolution's raw output stayed alive from the forward
    to the backward beside the stored top (GoogLeNet, batch 32: 200 MB of the step's
    temporaries). With ReLU.STORE_TOP the top is stored once: the raw output has one
    reader, the ReLU. The diffs are the same either way."""
    from jcaffe.layers.neuron import ReLU
    readers, diffs = {}, {}
    for store in (True, False):
        monkeypatch.setattr(ReLU, "STORE_TOP", store)
        solver = _solver(net=RELUS)
        lines = _entry(compiled_step(solver).as_text())
        conv = [re.match(r"\s*%(\S+) =", line).group(1) for line in lines
                if re.match(r"\s*%\S+ = f32\[8,32,32,16\]\S* convolution\(", line)]
        assert len(conv) == 1, conv      # conv's forward (conv2's is not an XLA convolution)
        readers[store] = _readers(lines, conv[0])
        diffs[store] = [solver.net.blobs[name].diff.copy() for name in ("conv", "conv2")]
    assert len(readers[True]) == 1, readers[True]
    assert len(readers[False]) > 1, readers[False]      # (the test can see the difference)
    for kept, stored in zip(diffs[False], diffs[True]):
        np.testing.assert_array_equal(stored, kept)


def test_relu_tops_are_stored_only_straight_after_a_convolution_or_inner_product(monkeypatch):
    """After a BatchNorm and Scale chain (ResNet's, MobileNet's) XLA keeps the chain's
    input for the BatchNorm's backward anyway, and a stored top cost time (ResNet-50's
    step 1.09-1.11x) and memory (MobileNet's peak RSS +65 MB): there the top is left to
    XLA. The rule looks at the layer that last wrote the bottom in the step."""
    from jcaffe.layers.neuron import ReLU
    net = RELUS.replace(
        'layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }',
        'layer { name: "bn" type: "BatchNorm" bottom: "conv2" top: "conv2" }\n'
        'layer { name: "scale" type: "Scale" bottom: "conv2" top: "conv2" '
        'scale_param { bias_term: true } }\n'
        'layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }')
    net = net.replace('layer { name: "ip" type: "InnerProduct" bottom: "pool"',
                      'layer { name: "relu3" type: "ReLU" bottom: "pool" top: "relu3" }\n'
                      'layer { name: "ip" type: "InnerProduct" bottom: "relu3"')
    decided = {}
    original = ReLU.stores_tops_after

    def spy(self, writers):
        decided[self.name] = ([w and w.type for w in writers], original(self, writers))
        return decided[self.name][1]
    monkeypatch.setattr(ReLU, "stores_tops_after", spy)
    _solver(net=net).step(1)
    assert decided == {"relu": (["Convolution"], True), "relu2": (["Scale"], False),
                       "relu3": (["Pooling"], False)}


POOL_LRN = """
name: "pool_lrn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 8 dim: 16 dim: 16 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm" type: "LRN" bottom: "pool" top: "norm" lrn_param { local_size: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "norm" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _padded_pool_input_read_in_backward(solver, dims):
    """Whether an instruction of the step's backward reads the pool's padded input (the
    one array of ``dims`` in any order): its readers' places in the compiled program's
    schedule (XLA prints a scheduled module's instructions in their order) against the
    first instruction of a layer's backward."""
    hlo = compiled_step(solver).as_text()
    assert "is_scheduled=true" in hlo.split("\n", 1)[0]
    lines = _entry(hlo)
    padded = _arrays_of_dims(lines, dims)
    assert len(padded) == 1, padded
    names = [m and m.group(1) for m in (re.match(r"\s*(?:ROOT )?%(\S+) =", l) for l in lines)]
    backward = next(i for i, line in enumerate(lines) if ".backward" in line)
    return max(names.index(r) for r in _readers(lines, padded[0])) > backward


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU's schedule")
def test_a_max_pools_padded_input_is_read_only_in_the_forward(monkeypatch):
    """A MAX pool's forward pads its input with -inf. Left to XLA, the window offsets the
    backward reads (a residual the step returns) were computed from the padded input
    late, in the backward, and the top again in some of its readers, so the padded
    input stayed alive into the backward (GoogLeNet, batch 32: pool1's 105 MB). With
    Pooling.STORE_MAX_RESULTS the offsets and the top are stored once, and the top's
    readers wait for the offsets: the padded input is read in the forward only. The
    blobs and diffs are the same either way."""
    from jcaffe.layers.vision import Pooling
    late, blobs = {}, {}
    for store in (True, False):
        monkeypatch.setattr(Pooling, "STORE_MAX_RESULTS", store)
        solver = _solver(net=POOL_LRN)
        # (16 x 16 maps, 3x3 stride 2: 8 windows, from 17 rows and columns)
        late[store] = _padded_pool_input_read_in_backward(solver, (8, 16, 17, 17))
        blobs[store] = [solver.net.blobs[name].data.copy() for name in ("pool", "norm")] + \
            [solver.net.blobs[name].diff.copy() for name in ("conv", "pool")]
    assert not late[True]
    assert late[False]                                  # (the test can see the difference)
    for kept, stored in zip(blobs[False], blobs[True]):
        np.testing.assert_array_equal(stored, kept)


def _read(top):
    """A top as its readers in the forward read it (engine.ReadAfter.read)."""
    return top.read() if isinstance(top, engine.ReadAfter) else top


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's rule")
def test_a_stored_max_pool_top_is_the_blob_the_step_returns(monkeypatch):
    """The stored top's readers in the forward wait for the offsets, but the blob the
    step returns is the stored array itself. Read through the wait, the returned blob
    was a copy XLA made at the step's end, and the stored top a temporary kept until
    then (GoogLeNet, batch 32: 44 MB of the step's temporaries, its pools' tops)."""
    lines, blobs = {}, {}
    stored = engine.materialize_read_after
    for returned in (True, False):
        if not returned:    # (the blob read through the wait, as its readers read it)
            monkeypatch.setattr(engine, "materialize_read_after",
                                lambda x, before: _read(stored(x, before)))
        solver = _solver(net=POOL_LRN)
        lines[returned] = _entry(compiled_step(solver).as_text())
        blobs[returned] = [solver.net.blobs[name].data.copy() for name in ("pool", "norm")]
    for returned, copies in ((True, False), (False, True)):
        entry = lines[returned]
        root = next(line for line in entry if line.lstrip().startswith("ROOT "))
        waits = [re.match(r"\s*(?:ROOT )?%(\S+) =", line).group(1) for line in entry
                 if "/read_after/" in line and re.match(r"\s*(?:ROOT )?%\S+ =", line)]
        assert any(re.search("%" + re.escape(w) + r"[,)]", root) for w in waits) == copies
    for kept, read in zip(blobs[True], blobs[False]):
        np.testing.assert_array_equal(kept, read)


def _fused_and_plain(net, bottom):
    """A fused and an unfused solver of ``net``, and the names of the two Split tops of
    blob ``bottom``."""
    fused, plain = _solver(net=net), _solver(False, net)
    splits = [n for n in fused.net.blobs if n.startswith(bottom + "_") and "split" in n]
    assert len(splits) == 2
    return fused, plain, splits


def test_the_split_tops_of_a_stored_max_pool_top_are_its_array():
    """A stored top read by two layers: the Split's tops keep the stored array too, one
    array for the three blobs, as for any split value (else the step returned two
    arrays of the same values: GoogLeNet's 37 MB, its pools before the inceptions)."""
    two = POOL_LRN.replace('bottom: "norm" top: "ip"', 'bottom: "sum" top: "ip"').replace(
        'layer { name: "ip"',
        'layer { name: "norm2" type: "LRN" bottom: "pool" top: "norm2" lrn_param { local_size: 5 } }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "norm" bottom: "norm2" top: "sum" }\n'
        'layer { name: "ip"')
    fused, plain, splits = _fused_and_plain(two, "pool")
    for step in range(2):
        fused.step(1)
        plain.step(1)
    pool = fused.net.blobs["pool"].device_data()
    assert all(fused.net.blobs[n].device_data() is pool for n in splits)
    for name in ("pool", "norm", "norm2", "sum"):
        np.testing.assert_allclose(fused.net.blobs[name].data, plain.net.blobs[name].data,
                                   rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(fused.net.blobs[name].diff, plain.net.blobs[name].diff,
                                   rtol=1e-5, atol=1e-6, err_msg=name + " diff")


def test_a_max_pool_that_pads_nothing_leaves_its_results_to_xla():
    """Where the windows fit the input (17 x 17 maps, 3x3 stride 2), the forward pads
    nothing: its input is a blob the step keeps anyway, and storing the offsets and the
    top only cost (CaffeNet's step 1.020x the time)."""
    solver = _solver(net=POOL_LRN.replace("dim: 16 dim: 16", "dim: 17 dim: 17"))
    pool = solver.net.layer_dict["pool"]
    tops, saved = [jnp.zeros((8, 16, 8, 8))], jnp.zeros((8, 16, 8, 8))
    with engine.runtime_one(saved):
        assert pool._pads() == ((0, 0), (0, 0))
        kept = pool.stored_for_backward(tops, saved)
    assert kept[0] is tops and kept[1] is saved


def test_a_long_compile_is_followed_by_malloc_trim(monkeypatch):
    calls = []
    monkeypatch.setitem(memory._state, "trim", lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(memory, "MIN_COMPILE_S", 0.0)
    memory.install()                              # already installed: idempotent
    jax.jit(lambda x: x * 3 + 1)(jnp.arange(7.0)).block_until_ready()
    assert calls and calls[-1] == 0
    calls.clear()
    monkeypatch.setattr(memory, "MIN_COMPILE_S", 1e9)
    jax.jit(lambda x: x * 5 - 2)(jnp.arange(9.0)).block_until_ready()
    assert not calls


@pytest.mark.skipif(memory._malloc_trim() is None, reason="not glibc")
def test_memory_listener_is_installed_with_jcaffe():
    assert memory._state["installed"] and memory._state["trim"] is not None


def _residuals(net):
    return [a for a in jax.tree_util.tree_leaves(net._saved) if isinstance(a, jax.Array)]


def test_a_fused_step_writes_its_residuals_into_the_last_steps():
    """The pooling layer's argmax offsets (what backward routes by) are donated like the
    blobs; net.backward() after a step still reads this step's, as in the unfused path."""
    fused, plain = _solver(), _solver(fuse=False)
    fused.step(1)
    old = _residuals(fused.net)
    assert old
    fused.step(1)
    plain.step(2)
    assert all(a.is_deleted() for a in old)
    assert not any(a.is_deleted() for a in _residuals(fused.net))
    for solver in (fused, plain):
        solver.net.blobs["ip"].diff[...] = 0.25
        solver.net.backward(start="ip")
    for name in ("pool", "conv"):
        np.testing.assert_allclose(fused.net.blobs[name].diff, plain.net.blobs[name].diff,
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_first_step_compiles_once_before_its_zero_buffers_are_made(monkeypatch):
    """Compiling is the first step's other big use of memory: it comes before the zeros
    that stand in for the blobs' buffers, and the call uses that compile."""
    from jax import monitoring
    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kw.get("fun_name"))
    monitoring.register_event_duration_secs_listener(listen)
    try:
        solver = _solver()
        recycled = solver._recycled
        seen = []
        monkeypatch.setattr(solver, "_recycled", lambda *a: seen.append(
            compiles.count("jit(step)")) or recycled(*a))
        solver.step(2)
    finally:
        monitoring.unregister_event_duration_listener(listen)
    assert seen == [1, 1] and compiles.count("jit(step)") == 1


def test_the_first_step_traces_the_iteration_once(monkeypatch):
    """The first step traces twice (the outputs' layout, then the call with the buffers
    to recycle); the iteration inside, forward and backward, is traced only the first
    time (a second trace was 0.45 s of GoogLeNet's first call). A step of a new shape
    traces it again."""
    from jcaffe import engine
    traced = []
    trace_forward = engine.Segment.trace_forward

    def counting(self, *a, **kw):
        traced.append(len(self.slots))
        return trace_forward(self, *a, **kw)
    monkeypatch.setattr(engine.Segment, "trace_forward", counting)
    solver = _solver()
    solver.step(3)
    assert len(traced) == 1
    solver.net.blobs["data"].reshape(2, *solver.net.blobs["data"].shape[1:])
    solver.net.blobs["label"].reshape(2)
    solver.step(2)
    assert len(traced) == 2


def test_a_step_reshapes_the_layers_again_only_after_a_shape_changed(monkeypatch):
    """Caffe reshapes every layer before each forward; a fused step does it (and derives
    its static spec and layouts) again only after a blob's shape changed: a new batch
    size, or a user's reshape of a blob the layers then reshape back."""
    from jcaffe.net import Net
    reshaped = calls_of(monkeypatch, Net, "_reshape_slot", lambda net, slot: slot.layer.name)
    solver = _solver()
    blobs = solver.net.blobs
    solver.step(3)
    layers = len(solver.net.layers)
    assert len(reshaped) == layers                    # the first step's only
    blobs["data"].reshape(2, *blobs["data"].shape[1:])
    blobs["label"].reshape(2)
    solver.step(2)
    assert len(reshaped) == 2 * layers and blobs["ip"].shape == (2, 5)
    assert np.isfinite(solver.smoothed_loss)
    blobs["ip"].reshape(10)                           # the InnerProduct's top: reshaped back
    solver.step(1)
    assert len(reshaped) == 3 * layers and blobs["ip"].shape == (2, 5)
    blobs["ip"].reshape(2, 5)                         # its own shape: nothing changed
    solver.step(1)
    assert len(reshaped) == 3 * layers


RESIDUAL_NET = """
name: "residual"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 2 dim: 6 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "branch" type: "Convolution" bottom: "conv" top: "branch"
        convolution_param { num_output: 3 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "branch" top: "sum" }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_a_fused_step_returns_each_value_once():
    """The split tops of "conv" are its value, and the in-place Scale's saved input is
    BatchNorm's saved output: one array each, not copies (XLA writes every output of a
    program to its own buffer; ResNet-50 returned 1.3 GB of such copies per step). What
    users read is the unfused path's, and the step after still donates every buffer."""
    fused, plain, splits = _fused_and_plain(RESIDUAL_NET, "conv")
    for step in range(3):
        fused.step(1)
        plain.step(1)
        net = fused.net
        for name in splits:
            assert net.blobs[name].device_data() is net.blobs["conv"].device_data()
        bn, scale = (net._slots[net._layer_index(n)].index for n in ("bn", "scale"))
        assert net._saved[scale] is net._saved[bn][0]
        for name in list(net.blobs):
            np.testing.assert_allclose(net.blobs[name].data, plain.net.blobs[name].data,
                                       rtol=1e-5, atol=1e-6, err_msg=name)
            if name not in ("data", "label"):
                np.testing.assert_allclose(net.blobs[name].diff, plain.net.blobs[name].diff,
                                           rtol=1e-5, atol=1e-5, err_msg=name + " diff")
    layout, avals, _ = fused._fused[3]
    assert len(avals) < len(layout.layout[1])       # fewer buffers than places
    old = fused.net.blobs["conv"].device_data()
    fused.step(1)
    assert old.is_deleted()                          # donated, as one buffer


def test_net_forward_returns_each_value_once():
    """The unfused path too: a forward's split tops share their bottom's array."""
    net = _solver(False, RESIDUAL_NET).net
    net.forward()
    splits = [name for name in net.blobs if "split" in name]
    assert splits
    for name in splits:
        assert net.blobs[name].device_data() is net.blobs["conv"].device_data()


def test_distinct_outputs_are_written_once():
    """engine.Distinct inside jit: a value returned under three names and an input
    returned as it came are one output buffer, and restore gives every name its array."""
    def f(x, w):
        y = jnp.tanh(x) * w
        return engine.Distinct.of({"a": y, "b": [y, x], "c": (y * 2, y)}, (x,))

    fn = jax.jit(f)
    x, w = jnp.arange(6.0).reshape(2, 3), jnp.float32(0.5)
    out = fn(x, w).restore((x,))
    assert out["a"] is out["b"][0] is out["c"][1]
    assert out["b"][1] is x
    np.testing.assert_allclose(out["c"][0], 2 * np.tanh(np.arange(6.0)).reshape(2, 3) * 0.5,
                               rtol=1e-6)
    def size(fn):
        return fn.lower(x, w).compile().memory_analysis().output_size_in_bytes
    assert size(fn) < 3 * x.nbytes                      # y and y * 2 (and a tuple's pointers)
    assert size(jax.jit(lambda x, w: f(x, w).restore((x,)))) >= 5 * x.nbytes   # without
