"""A solver's history with the small params' arrays packed into one.

Each learnable param has ``num_history`` history arrays (SGD's momentum, Adam's m and
v). A fused step passes all of them to its compiled call and gets all of them back, and
the runtime's work per call grows with the number of arrays (reading each one's layout
and signature, a few microseconds each: benchmarks/bench_host.py). ResNet-50 has 320
params, 265 of them BatchNorm and Scale vectors, so 640 of the 1842 arrays of its step
were history.

``HistoryLayout`` keeps the history of every param of at most ``max_bytes`` (of the
first param's dtype) in one flat array, all first slots then all second slots; the
others keep one array each (``loose``). A solver holds its history as the pair
``(packed, loose)``: ``packed`` is that flat array (None where no param is packed),
``loose[k]`` the k-th slot's arrays of the loose params, in param order. Inside a
compiled step ``unpack`` slices the flat array into each param's arrays and ``pack``
concatenates the new ones. Big params stay loose: the step updates their arrays in
place (donated), where packing would write and read every one of them again (CaffeNet's
fc6 momentum: 144 MB).

An SGD step's param diff is its new momentum (Caffe copies the history into the diff):
a packed param's diff is then a view of the packed array (``view``), sliced out when
someone reads it, all of that array's views by one program.

Off by default (``Solver.history_pack_max_bytes`` None: every param loose). Measured on
the 2-core CPU (benchmarks/NOTES.md, thirty-third session), a ResNet-50 step at batch 2
passed 622 arrays instead of 924 and spent 6.7 instead of 8.4 ms of host work; the
steps' times did not change (interleaved A/Bs on LeNet, CaffeNet and ResNet-50); and
its compile took 2.8 s longer: each fusion that reads a slice of the packed array has
its own offsets, so XLA compiles it as a kernel of its own, where params of one shape
shared one (about 9.5 ms a kernel; a toy of 300 updates compiled in 2.7 s instead of
0.4). Where the host's work is what a step waits for (a GPU), the A/B is
benchmarks/variants_engine.py's ``pack``.
"""
import jax
import jax.numpy as jnp
import numpy as np

from .blob import View, device_zeros


class HistoryLayout:
    """Where each param's history lives: in the packed array, or loose."""

    def __init__(self, shapes, dtypes, num_history, max_bytes):
        self.num_history = int(num_history)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.dtypes = [np.dtype(d) for d in dtypes]
        n = len(self.shapes)
        self.dtype = self.dtypes[0] if n else np.dtype(np.float32)
        sizes = [int(np.prod(s)) for s in self.shapes]
        small = [max_bytes is not None and self.dtypes[i] == self.dtype
                 and sizes[i] * self.dtype.itemsize <= max_bytes for i in range(n)]
        if sum(small) < 2:      # one array packed is still one array
            small = [False] * n
        self.packed_ids = [i for i in range(n) if small[i]]
        self.loose_ids = [i for i in range(n) if not small[i]]
        self.places = []        # (slot k, param i, offset, size), in the packed order
        offset = 0
        for k in range(self.num_history):
            for i in self.packed_ids:
                self.places.append((k, i, offset, sizes[i]))
                offset += sizes[i]
        self.total = offset
        self._index = {(k, i): j for j, (k, i, _, _) in enumerate(self.places)}
        self._views = {}
        self._pack_jit = jax.jit(self._pack_arrays)
        self._unpack_jit = jax.jit(self._unpack_arrays)
        self._last = None       # (a packed array, its arrays unpacked by _unpack_jit)

    # -- traceable (inside a compiled step) --------------------------------------------
    def _pack_arrays(self, arrays):
        return jnp.concatenate([jnp.reshape(a, (-1,)) for a in arrays])

    def _unpack_arrays(self, packed):
        return [jnp.reshape(jax.lax.slice(packed, (off,), (off + size,)), self.shapes[i])
                for _, i, off, size in self.places]

    def pack(self, history, concatenate=None):
        """history[k][i] (every param's) -> (packed, loose). ``concatenate`` (of the
        packed params' arrays): traced, or a compiled call (packed_state)."""
        concatenate = concatenate or self._pack_arrays
        packed = (concatenate([history[k][i] for k, i, _, _ in self.places])
                  if self.places else None)
        loose = tuple(tuple(slot[i] for i in self.loose_ids) for slot in history)
        return packed, loose

    def unpack(self, state):
        """(packed, loose) -> history[k][i] (every param's)."""
        packed, loose = state
        arrays = self._unpack_arrays(packed) if self.places else []
        return self._assemble(arrays, loose)

    def _assemble(self, arrays, loose):
        out = [[None] * len(self.shapes) for _ in range(self.num_history)]
        for k in range(self.num_history):
            for j, i in enumerate(self.loose_ids):
                out[k][i] = loose[k][j]
        for (k, i, _, _), a in zip(self.places, arrays):
            out[k][i] = a
        return tuple(tuple(slot) for slot in out)

    # -- outside (one compiled call each) ------------------------------------------------
    def zeros(self):
        """The state of an all-zero history (no program compiled)."""
        packed = device_zeros((self.total,), self.dtype) if self.places else None
        loose = tuple(tuple(device_zeros(self.shapes[i], self.dtypes[i]) for i in self.loose_ids)
                      for _ in range(self.num_history))
        return packed, loose

    def packed_state(self, history):
        """``pack`` of concrete arrays: the loose ones as they are (not copied)."""
        return self.pack(history, self._pack_jit)

    def history_of(self, state):
        """``unpack`` of a concrete state: the packed arrays sliced out by one program
        (kept for the views of the same array), the loose ones as they are."""
        packed, loose = state
        return self._assemble(self._unpacked(packed) if self.places else [], loose)

    def _unpacked(self, packed):
        if self._last is None or self._last[0] is not packed:
            self._last = (packed, self._unpack_jit(packed))
        return self._last[1]

    def view(self, k, i):
        """Param ``i``'s k-th history inside a packed array, as a blob's view (made
        once for each place)."""
        view = self._views.get((k, i))
        if view is None:
            view = self._views[(k, i)] = _HistoryView(self, self._index[(k, i)])
        return view

    def is_packed(self, i):
        return (0, i) in self._index


class _HistoryView(View):
    """One place of a packed history array (see HistoryLayout.view)."""

    def __init__(self, layout, j):
        self.layout, self.j = layout, j

    def __call__(self, packed):
        return self.layout._unpacked(packed)[self.j]
