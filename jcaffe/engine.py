"""Compiled execution: a contiguous run of JaxLayers traced into one jitted call.

A segment's forward is a pure function of the data blobs it reads, the loss
weights (diffs of loss tops), the learnable params and a PRNG key; it returns
the final value of every blob it writes, each layer's ``saved`` residuals,
updated params (BatchNorm statistics), the loss and the new carried state of the
layers that carry one from forward to forward (a recurrent layer's h_T: the
``state`` in and out, {layer index: arrays}). Its backward is a pure
function of blob data, the top diffs it reads, the saved residuals and the
param diffs so far; it returns every diff it writes and the accumulated param
diffs. Blob I/O happens outside, in the Net. The trace functions are kept
separate from ``jax.jit`` so a Solver can fuse forward, backward and update
into a single call.

A forward that no backward follows need not return every blob it writes (each
returned intermediate is memory XLA must fill and keep, and it blocks fusion).
After a segment's first forward, such a forward returns only the blobs read
outside it: the net's outputs, loss tops, bottoms of layers outside the run,
the blobs a caller asked for, and the blobs that were read after an earlier
forward. Every other blob it writes becomes *pending* (:class:`PendingForward`):
reading one runs the full forward on the inputs the forward had, fills all its
pending blobs at once, and the next forward returns that blob directly.
"""
import contextlib
import contextvars
import functools
import typing
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import xla_options
from .blob import shape_string
from .errors import ShapeMismatchError
from .layer import note_python_layer

# -- values computed once ------------------------------------------------------------
# XLA's CPU fusion copies cheap elementwise producers into each consumer, also where the
# producer is stored anyway. Along a chain of blobs that each feed two layers (a residual
# net: relu(bn(conv(x)) + x), block after block) every block recomputed the whole chain
# before it: ResNet-50's res3d_relu forward computed the four blocks of its stage again
# (216 ms for a 51 MB map). Division is an op XLA will not copy into consumers, and
# x / 1 is x exactly (NaN, infinities and -0 included), as long as XLA cannot see the 1:
# it is made from the bits of a runtime input, (bits | ONE) & ONE.
# The CPU's rule only. On a GPU a recomputed elementwise producer costs little inside a
# memory-bound kernel, and the division costs a kernel and a pass over the blob of its
# own. Measured on an H200 (benchmarks/NOTES.md, thirty-first session): GoogLeNet's
# deploy forward took 0.78x the time without it (first call 7.1 -> 2.4 s), its training
# step compiled in 11.4 s instead of 28.2.
_ONE = contextvars.ContextVar("jcaffe_runtime_one", default=None)


@contextlib.contextmanager
def runtime_one(inputs):
    """While tracing a compiled call, :func:`materialize` divides by an exact 1 made from
    the first array among ``inputs`` (the call's own inputs, not values it computes: a 1
    computed from the chain would join the chain's fusion). The outermost call wins.
    Only on the CPU backend: elsewhere :func:`materialize` leaves its blob to XLA."""
    if _ONE.get() is not None or jax.default_backend() != "cpu":
        yield
        return
    first = next((a for a in jax.tree_util.tree_leaves(inputs) if np.size(a)), None)
    if first is None:
        yield
        return
    if jnp.issubdtype(first.dtype, jax.dtypes.prng_key):
        first = jax.random.key_data(first)
    word = _first(first)
    word = (lax.bitcast_convert_type(word, jnp.uint32) if word.dtype.itemsize == 4
            else lax.convert_element_type(word, jnp.uint32))
    bits = jnp.uint32(0x3F800000)                   # 1.0 in float32
    token = _ONE.set(lax.bitcast_convert_type((word | bits) & bits, jnp.float32))
    try:
        yield
    finally:
        _ONE.reset(token)


def materialize(x):
    """``x`` itself, but a value XLA computes once and stores (see above) inside a
    compiled call that set :func:`runtime_one`; ``x`` unchanged elsewhere."""
    one = _ONE.get()
    if one is None or not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x / one.astype(x.dtype)


class ReadAfter(typing.NamedTuple):
    """A top as :func:`materialize_read_after` gives it to the engine: the blob keeps
    ``value`` (the array the call returns, which the backward reads), and the forward's
    later layers read ``value`` after the array ``before`` is computed."""
    value: jax.Array
    before: jax.Array

    def read(self):
        """``value`` times a one made from ``before``'s first element (:func:`_waiting`),
        named ``read_after`` in HLO dumps."""
        with jax.named_scope("read_after"):
            return _waiting(self.value, _first(self.before))


def materialize_read_after(x, before):
    """:func:`materialize` of ``x`` as a :class:`ReadAfter` top: its readers in the
    forward each read it after the array ``before`` is computed; ``x`` unchanged outside
    a compiled call that set :func:`runtime_one`. (The wait on the readers, not on ``x``:
    ``materialize(_waiting(x, ...))`` XLA rewrote into one product by a scalar, which it
    copied into each reader. And not on the blob the call returns: read through the
    wait, it was a copy XLA made at the step's end, the stored value a temporary kept
    until then: Pooling.STORE_MAX_RESULTS.)"""
    if _ONE.get() is None or not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return ReadAfter(materialize(x), before)


class LayerSlot:
    """What the engine needs to know of one layer in the net (names, ids, flags)."""

    def __init__(self, index, layer, bottoms, tops, param_ids):
        self.index = index
        self.layer = layer
        self.bottoms = bottoms          # blob names
        self.tops = tops                # blob names (in-place: same as a bottom)
        self.param_ids = param_ids      # learnable param index of each layer blob
        self.bottom_need_backward = [False] * len(bottoms)
        self.need_backward = False


def _scope(layer, phase):
    """The name scope of a layer's ops in traces and HLO dumps (jax.profiler, XLA_FLAGS
    dumps): "conv1.forward", "conv1.backward"; '/' in Caffe layer names kept."""
    return "%s.%s" % (layer.name, phase)


@jax.tree_util.register_pytree_node_class
class KernelLayout:
    """A param handed to a forward in the layout its layer's kernel reads (``perm`` of
    Caffe's axes: a convolution's (O, C, kh, kw) as (kh, kw, C, O) for XLA's CPU
    kernel), made once while the param stays unchanged (jcaffe.net keeps it). The
    forward transposes it back to Caffe's order, a transpose XLA folds into the
    kernel's operand, so a deploy forward does not lay every weight out again on every
    call (OpenPose's 67 convolutions: 209 MB a call)."""

    def __init__(self, array, perm):
        self.array = array
        self.perm = tuple(perm)

    def logical(self):
        """The param in Caffe's order."""
        return jnp.transpose(self.array, tuple(np.argsort(self.perm)))

    def tree_flatten(self):
        return (self.array,), self.perm

    @classmethod
    def tree_unflatten(cls, perm, children):
        return cls(children[0], perm)


_kernel_layout_of = jax.jit(lambda value, perm: jnp.transpose(value, perm), static_argnums=1)


def kernel_layout_of(value, perm):
    """``value`` (a param in Caffe's order) as a :class:`KernelLayout` ``perm``."""
    return KernelLayout(_kernel_layout_of(value, tuple(perm)), perm)


def _layer_params(slot, params):
    out = []
    for blob, pid in zip(slot.layer.blobs, slot.param_ids):
        value = params[pid]
        if isinstance(value, KernelLayout):
            value = value.logical()
        if tuple(value.shape) != tuple(blob.shape):  # PERMISSIVE sharing: same count
            value = jnp.reshape(value, blob.shape)
        out.append(value)
    return out


class PendingForward:
    """The blobs a slim forward did not return, computed together when one is read.

    It holds the forward's inputs (device arrays, which never change), so a read
    returns what that forward computed, whatever was written into the params or
    input blobs since. Params that a later call donates (the Solver's fused step
    updates them in place) would be lost: :func:`resolve_pending` computes the
    pending blobs of forwards holding them first.
    """

    _live = weakref.WeakSet()

    def __init__(self, segment, args):
        self.segment = segment
        self.args = args            # (params, data, loss_weights, base_key, count, state)
        self.waiting = []           # (weakref to SyncedArray, blob name)
        PendingForward._live.add(self)

    def wait(self, synced, name):
        synced.set_pending(self, name)
        self.waiting.append((weakref.ref(synced), name))

    def holds(self, ids):
        return self.args is not None and any(id(a) in ids for a in self.args[0].values())

    def resolve(self):
        """Run the full forward once and give every still-pending blob its value."""
        if self.args is None:
            return
        written = self.segment.run_full(*self.args)[0]   # if it raises, a later read retries
        self.args = None
        for ref, name in self.waiting:
            synced = ref()
            if synced is not None and synced.pending is self:
                synced.set_device(written[name])
        self.waiting = []


def resolve_pending(arrays):
    """Compute the pending blobs of every forward that holds one of ``arrays``
    (call before donating them)."""
    ids = {id(a) for a in arrays}
    for pending in list(PendingForward._live):
        if pending.holds(ids):
            pending.resolve()


class RowBlocks:
    """A param diff that a fused solver step computes a block of rows at a time, each
    block consumed by its update at once, so the whole diff never exists in memory.

    ``rows(start, size)`` gives rows ``[start, start + size)`` (``start`` may be traced,
    ``size`` is static). A layer offers this for a param by listing its index in
    ``row_blocked_params`` and defining ``param_diff_rows``; Segment.trace_backward
    returns one where its caller asks (``deferred``). CaffeNet's fc6 weight diff is
    4096 x 9216 floats (144 MB): materialized, it was most of the step's XLA
    temporaries (196 MB)."""

    def __init__(self, shape, dtype, rows):
        self.shape, self.dtype, self.rows = tuple(shape), dtype, rows

    def full(self):
        return self.rows(0, self.shape[0])


@jax.tree_util.register_pytree_node_class
class Distinct:
    """A jitted function's outputs ``tree`` with each distinct traced value once.

    XLA gives every output of a program its own buffer, so a value returned twice is
    written twice, and an input returned is copied: a Split's tops and its bottom (one
    value, as Caffe's split tops share their bottom's data), BatchNorm's saved output and
    the in-place Scale's saved input after it (one value again). ResNet-50 (batch 16)
    returned 1.3 GB of such copies per training step. Made inside the trace with
    :meth:`of`, returned, and outside it :meth:`restore` gives ``tree`` back, repeats
    sharing one array. The layout (which leaf is which value or input) is the pytree's
    static part, so each compiled variant carries its own."""

    def __init__(self, values, layout):
        self.values = list(values)
        self.layout = layout        # (treedef of tree, per leaf: k >= 0 a value, -1-j input j)

    @classmethod
    def of(cls, tree, inputs=()):
        """``inputs``: arguments of the traced function whose arrays the caller keeps (not
        donated); a leaf that is one of them is given back as the caller's array."""
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        index = {id(a): -1 - j for j, a in enumerate(jax.tree_util.tree_leaves(inputs))}
        values, where = [], []
        for leaf in leaves:
            k = index.get(id(leaf))
            if k is None:
                k = index[id(leaf)] = len(values)
                values.append(leaf)
            where.append(k)
        return cls(values, (treedef, tuple(where)))

    def restore(self, inputs=()):
        """The tree, from outside the trace (``inputs``: the arrays passed as ``of``'s)."""
        given = jax.tree_util.tree_leaves(inputs) if any(k < 0 for k in self.layout[1]) else ()
        return self.layout[0].unflatten([self.values[k] if k >= 0 else given[-1 - k]
                                         for k in self.layout[1]])

    def positions(self):
        """The tree with each leaf's index among its leaves in its place."""
        return self.layout[0].unflatten(range(len(self.layout[1])))

    def tree_flatten(self):
        return self.values, self.layout

    @classmethod
    def tree_unflatten(cls, layout, values):
        return cls(values, layout)


# -- the backward's order ------------------------------------------------------------
# A segment's backward is one XLA program, and XLA's CPU scheduler orders its ops by
# data dependence alone. Measured (jaxlib 0.10, the memory-optimized schedule a fused
# step asks for) it ran the data gradients first, down to the first layer, and the
# weight gradients and updates after them: every layer's top diff, and what its weight
# gradient reads, stayed live until the end of the step (MobileNet, batch 32: 2.4 GB of
# temporaries, mapped afresh on every call; ResNet-50, batch 16: 1.0 GB). Caffe's
# Backward computes a layer's weight gradient before it moves to the layer below. The
# engine asks for the same order: a layer's params are read through ``_waiting``,
# behind the param diffs of the layers its top diffs come from (``Segment.
# ordered_backward``). Temporaries and step times (A/Bs, this order / XLA's): MobileNet
# 0.39 GB, 0.77x; ResNet-50 0.25 GB, 0.81x; ResNeXt-50 0.67x; GoogLeNet 0.96x; the
# others within noise (benchmarks/NOTES.md, twenty-third session).
#
# The order has a cost of its own: a param read through ``_waiting`` by a product XLA
# fuses it into (the transpose before its convolution, a dot) is read as the param
# itself, unordered against the param's in-place update at the end of a fused step, and
# XLA copied it before the step (ResNet-50: 159 params and histories, 94 MB a step). So
# a fused step updates each param inside the backward, as soon as its diff is complete,
# and the layers below wait for the new param instead of the diff (``update`` of
# trace_backward). A param of ``update_min_bytes`` or more is updated after its layers'
# data gradients (the update overwrites what they read): no copy. A smaller one waits
# for its ordered copy only: XLA may copy it (little to copy), and orders the layer's
# own products as it likes; made to wait for the data gradient, FCN-32s's conv1-2 (one
# 500x500 image, maps of 124 MB) computed it before the weight gradient, whose inputs
# then shared the peak with it, and the step took 1.03x the time of updates at the end,
# against 0.96x so (benchmarks/NOTES.md, twenty-fourth session).
def _waiting(x, after):
    """``x`` times a one computed from the scalar ``after``: the same values (a product
    by one is exact; XLA on CPU flushes subnormals to zero in every op, this one as the
    layer's own), made to depend on ``after`` in a way XLA cannot fold away."""
    return x * _one_after(after, x.dtype)


def _one_after(after, dtype):
    """:func:`_waiting`'s one (1 if ``after`` is NaN too), in lax's few operations: a
    step traces one per layer that waits, and each operation costs the step's first
    call its tracing and lowering."""
    return lax.max(lax.convert_element_type(lax.ne(after, after), dtype),
                   lax.full((), 1, dtype))


def _first(x):
    """``x``'s first element, a scalar, in one slice (``jnp.ravel(x)[0]`` traced four
    operations; a fused step takes one from each layer's diffs and new params to order
    its backward)."""
    return lax.reshape(lax.slice(x, (0,) * x.ndim, (1,) * x.ndim), ())


@contextlib.contextmanager
def _user_layer(layer, method):
    """Errors raised while tracing a user's Python layer written in JAX name it."""
    try:
        yield
    except Exception as e:
        note_python_layer(e, layer, method)
        raise


def _check_user_tops(layer, names, tops):
    """A user's JAX layer returns tops of the shapes its reshape() gave (the blobs')."""
    for name, top, shape in zip(names, tops, layer.top_shapes):
        if tuple(jnp.shape(top)) != tuple(shape):
            raise ShapeMismatchError(
                "Python layer '%s' (%s): forward() returned top '%s' of shape %s, but its "
                "reshape() gave %s" % (layer.name, layer.python_class, name,
                                        shape_string(jnp.shape(top)), shape_string(shape)))


def _total(scalars):
    """The sum of ``scalars``, or None for none."""
    scalars = list(scalars)
    return sum(scalars[1:], scalars[0]) if scalars else None


# -- channels-last runs -----------------------------------------------------------------
# XLA CPU computes a convolution channels-last: it transposes the (N, C, H, W) input to
# (N, H, W, C), convolves, and transposes the output back. Fused into the layers around
# it, those transposes read across the layout: in FCN-32s's step (one 500x500 image,
# VGG's 3x3 maps) the ReLU and pooling loops that read a convolution's output or write
# the next one's input took about 2.1 s of 6.2. Inside a compiled call the engine keeps a
# convolution's 4-d top channels-last (a transpose XLA cancels against its own) and hands
# it so to the layers after it that compute in that order (ReLU and the other elementwise
# neurons, Eltwise, Split, Concat, MAX and AVE pooling, LRN, BatchNorm, per-channel Scale
# and Bias, depthwise and 1x1 convolutions: ``channels_last_ok``), and their diffs alike
# in the backward; any other layer gets it in Caffe's order. ResNet's and MobileNet's
# blocks run channels-last from their first convolution to their global pooling,
# GoogLeNet from its first convolution to its last inception, CaffeNet from conv1 to
# conv5 (its grouped maps split into XLA's convolutions, group by group). Every blob and diff
# leaves the call in Caffe's order (blobs always hold it), so the layout is never seen
# outside. FCN-32s's step took 0.82x the time (benchmarks/NOTES.md, twenty-first session).
def _to_last(x):
    return jnp.transpose(x, (0, 2, 3, 1))


def _to_first(x):
    return jnp.transpose(x, (0, 3, 1, 2))


def _as(x, last, want):
    """``x`` (channels-last when ``last``) in the order ``want`` asks."""
    if x is None or last == want:
        return x
    return _to_last(x) if want else _to_first(x)


def _carried(s):
    """Per bottom of slot ``s``: whether it is 4-d, the layout a channels-last run moves.
    A layer's other bottoms (the (N, C) weights of an SE block's Scale) are handed to it
    as they are, and their diffs come back so."""
    return tuple(len(shape) == 4 for shape in s.layer.bottom_shapes)


def _held(x):
    """A channels-last (N, H, W, C) value as it is held in a blob of Caffe's shape
    (N, C, H, W) by a fused solver step: the same bytes, reshaped, not transposed."""
    n, h, w, c = x.shape
    return jnp.reshape(x, (n, c, h, w))


def _unheld(x):
    """The channels-last value of a blob array holding it as :func:`_held` left it."""
    n, c, h, w = x.shape
    return jnp.reshape(x, (n, h, w, c))


@jax.jit
def reorder_held(x):
    """A blob array held channels-last (:func:`_held`) in Caffe's order."""
    return _to_first(_unheld(x))


@jax.jit
def hold_blob(x):
    """A blob array in Caffe's order as :func:`_held` holds it (a held blob that was read
    or written since: one transpose)."""
    return _held(_to_last(x))


class ReorderOnce:
    """reorder_held for one value that a call returned under several names (a Split's
    tops, held channels-last): the first blob read reorders it, and the others share
    that array, as they share the value (one array each, not copies)."""

    def __init__(self):
        self._done = None

    def __call__(self, x):
        if self._done is None or self._done[0] is not x:
            self._done = (x, reorder_held(x))
        return self._done[1]


def _returned(values, last, held):
    """{name: value} of ``values`` leaving a call: in Caffe's order, or as :func:`_held`
    where ``held``; a value under several names (a Split's tops) converted once."""
    done, out = {}, {}
    for name, value in values.items():
        if name in last:
            key = id(value)
            if key not in done:
                done[key] = _held(value) if held else _to_first(value)
            value = done[key]
        out[name] = value
    return out


class Segment:
    """Layers ``slots`` (in execution order), all JaxLayers, run as one jitted call."""

    # Keep convolution tops channels-last inside the call (see "channels-last runs").
    channels_last = True

    # Full forwards of a segment before its forwards return only the blobs read
    # outside it (None: always return every blob).
    slim_after = 1

    # Each layer's backward waits for the param diffs of the layers its top diffs come
    # from, as in Caffe's Backward ("the backward's order", above). Params over
    # ordered_max_bytes are left out: their ordered copy (and their product, fused with
    # the update no more) would cost more than the order saves.
    ordered_backward = True
    ordered_max_bytes = 16 << 20
    # Params updated inside a fused step's backward wait for their layers' data gradients
    # from this size up, for their ordered copy below it (see "the backward's order").
    update_min_bytes = 1 << 20

    def __init__(self, slots, keep=()):
        self.slots = slots
        written, reads, loss_tops = set(), [], []
        for s in slots:
            if not s.layer.forward_writes_tops:
                continue
            for b in s.bottoms:
                if b not in written and b not in reads:
                    reads.append(b)
            for t, w in zip(s.tops, s.layer.loss):
                written.add(t)
                if w and t not in loss_tops:
                    loss_tops.append(t)
        self.reads = reads
        self.writes = sorted(written)
        self.loss_tops = loss_tops
        self.param_ids = sorted({p for s in slots for p in s.param_ids})
        self.needs_rng = any(s.layer.needs_rng for s in slots)
        # The layers that carry a state from one forward to the next (a recurrent
        # layer's h_T, Caffe's copy into h_0): their index, in order.
        self.state_slots = tuple(s.index for s in slots
                                 if s.layer.carries_state and s.layer.forward_writes_tops)
        # Blobs every forward returns (read outside the run), and those found read
        # after a slim forward; the rest may be left pending when no backward follows.
        self.keep = set(keep) | (set(reads) & written) | set(loss_tops)
        self.learned = set()
        self.full_forwards = 0
        self._slim = None           # (frozenset of returned blobs, jitted forward)
        self._may_slim = not any(s.need_backward or s.layer.forward_has_effects for s in slots)
        # The key is folded inside the call: (base key, forward count) in, so a forward
        # dispatches one XLA call, not a separate fold_in before it.
        # Outputs as Distinct: a value written under several names (a Split's tops) once;
        # a blob read back unchanged is the input array (never params: a fused step
        # donates them).
        # A forward whose backward follows (pycaffe's net.forward() then net.backward())
        # returns the blobs it computed channels-last as they are held (_held: the
        # bytes as computed, reordered when first read), and the backward takes them
        # so, as a fused step's two halves do: in Caffe's order the forward transposed
        # each such blob at its end and the backward transposed it back.
        self.holds = any(s.need_backward for s in slots)
        self._forward_jit = xla_options.jit(self._forward_fn(self.writes, self.holds))
        self._backward_jit = {}
        self._layouts = (None, {})      # (the layers' shapes, {what: layout result})

    def _orders(self, x):
        """Whether the backward's order goes through the param (or param diff) ``x``."""
        return self.ordered_backward and x.size * x.dtype.itemsize <= self.ordered_max_bytes

    def _layout_cached(self, what, compute):
        """``compute()``, computed once for the layers' current shapes (a fused step asks
        for last_writes and last_diffs every step: 3.5 ms for GoogLeNet's 300 layers)."""
        key = (self.channels_last,
               tuple((s.layer.bottom_shapes, s.layer.top_shapes) for s in self.slots))
        if self._layouts[0] != key:
            self._layouts = (key, {})
        found = self._layouts[1]
        if what not in found:
            found[what] = compute()
        return found[what]

    def layout_plan(self):
        """{layer index: (bottoms given channels-last, runs channels-last, tops kept
        channels-last)}: :meth:`_layout_plan`, once for the layers' current shapes."""
        return self._layout_cached("plan", self._layout_plan)[0]

    def last_writes(self):
        """The blobs this segment's forward leaves channels-last (layout_plan)."""
        return self._layout_cached("plan", self._layout_plan)[1]

    def _layout_plan(self):
        """(the plan, the blobs written channels-last), from the layers' current shapes
        (a compiled call is traced for those).

        A layer whose computation writes its tops channels-last (``channels_last_top``:
        a convolution on XLA's kernel, or a GEMM one writing its product so) keeps them
        so, and a layer that can compute so (``channels_last_ok``) runs channels-last
        where more than half of its 4-d bottoms come so (the rest of those are
        transposed in: one branch of a GoogLeNet inception's Concat that is a GEMM
        convolution; with half, as at a ResNeXt block's Eltwise, it computes in Caffe's
        order; its other bottoms, an SE block's (N, C) weights, pass as they are:
        ``_carried``); but only where
        the values flow on, through such layers, into a layer that reads them
        channels-last (``channels_last_reader``: a convolution on XLA's kernel, a
        depthwise or 1x1 map, a grouped map split into XLA's convolutions). Such a
        reader runs channels-last whenever its bottoms come so. Elsewhere (into a
        PReLU, an InnerProduct, or only out of the call) the transpose back would just
        move, and the blob returned in Caffe's order would cost one copy more
        (CaffeNet's step 1.06x with every convolution top kept channels-last, when its
        grouped maps still read Caffe's order)."""
        if not self.channels_last:
            return {s.index: ((False,) * len(s.bottoms), False, False) for s in self.slots
                    if s.layer.forward_writes_tops}, frozenset()
        slots = [s for s in self.slots if s.layer.forward_writes_tops]
        # (4-d tops, and 4-d bottoms but for those a channels-last run hands over as they
        # are: _carried)
        four = {s.index: any(_carried(s)) and all(len(shape) == 4 for shape in s.layer.top_shapes)
                for s in slots}
        sink = {s.index: four[s.index] and s.layer.channels_last_top() for s in slots}
        # (a layer whose backward runs here computes channels-last only where its
        # backward is as good so: channels_last_backward_ok)
        both = {s.index: four[s.index] and (not s.need_backward
                                            or s.layer.channels_last_backward_ok())
                for s in slots}
        can = {s.index: both[s.index] and s.layer.channels_last_ok() for s in slots}
        reads = {s.index: both[s.index] and s.layer.channels_last_reader() for s in slots}
        # Where each slot's tops flow into a channels-last reader (walking backwards: the
        # readers of a top are the later slots reading it, up to one that rewrites it).
        useful = {}
        for k in range(len(slots) - 1, -1, -1):
            s, hit = slots[k], False
            for t in s.tops:
                for c in slots[k + 1:]:
                    if t in c.bottoms and (reads[c.index] or (can[c.index] and useful[c.index])):
                        hit = True
                    if hit or t in c.tops:
                        break
            useful[s.index] = hit
        last, plan = set(), {}
        for s in self.slots:
            if not s.layer.forward_writes_tops:
                last.difference_update(s.tops)
                continue
            given = tuple(b in last for b in s.bottoms)
            moved = [g for g, c in zip(given, _carried(s)) if c]
            run = can[s.index] and 2 * sum(moved) > len(moved) and (useful[s.index] or reads[s.index])
            top = run or (sink[s.index] and useful[s.index])
            plan[s.index] = (given, run, top)
            (last.update if top else last.difference_update)(s.tops)
        return plan, frozenset(last & set(self.writes))

    # -- forward ---------------------------------------------------------------
    def trace_forward(self, params, data, loss_weights, rng, held=False, state=None):
        """(params {pid: a}, data {blob: a}, loss_weights {blob: a}, rng) ->
        (written {blob: a}, saved {layer index: pytree}, new params {pid: a}, loss,
        new state {layer index: tuple of a}).

        ``state``: {layer index: tuple of arrays} for the layers in ``state_slots``,
        the state each starts from (what the last forward left); a layer not in it
        starts from its zero state, and its new state is not returned.

        ``held``: the blobs computed channels-last (:meth:`last_writes`) are returned as
        :func:`_held` (a fused solver step: no transpose for blobs nobody reads; their
        Blob reorders them when read)."""
        env = dict(data)
        saved, new_params, new_state = {}, {}, {}
        loss = None
        written_here = set()
        plan = self.layout_plan()
        last = set()                    # blobs whose value in env is channels-last
        writer = {}                     # blob: the layer that last wrote it in this call
        kept = {}                       # blob: its value where env's is read through a wait
        for s in self.slots:
            layer = s.layer
            if not layer.forward_writes_tops:
                last.difference_update(s.tops)      # (filled from outside: Caffe's order)
                continue
            _, run, top_last = plan[s.index]
            key = jax.random.fold_in(rng, s.index) if layer.needs_rng else None
            lp = _layer_params(s, {**params, **new_params})
            shared = None
            if layer.shares_bottom and s.bottoms[0] in written_here:
                # (its tops are its bottom, read by several layers: stored once, and the
                # blob keeps that same value, so it is returned once; where it is stored
                # already, its readers waiting (ReadAfter), the tops' blobs keep it too)
                if s.bottoms[0] in kept:
                    shared = _as(kept[s.bottoms[0]], s.bottoms[0] in last, run)
                else:
                    env[s.bottoms[0]] = materialize(env[s.bottoms[0]])
            with jax.named_scope(_scope(layer, "forward")), _user_layer(layer, "forward"):
                fn = (layer.forward_channels_last if run
                      else layer.forward_top_last if top_last else layer.forward)
                if state is not None and s.index in state:   # (its own forward, Caffe's order)
                    fn = functools.partial(layer.forward, state=state[s.index])
                out = fn(lp, [_as(env[b], b in last, run and c)
                              for b, c in zip(s.bottoms, _carried(s))], key)
            tops = out[0]
            if layer.stores_tops_after([writer.get(b) for b in s.bottoms]):
                tops = [materialize(t) for t in tops]
            writer.update(dict.fromkeys(s.tops, layer))
            if s.need_backward:  # residuals are kept only where backward will use them
                tops, saved[s.index] = layer.stored_for_backward(tops, out[1])
            if layer.updates_params_in_forward:
                for pid, value in zip(s.param_ids, out[2]):
                    if value is not None:
                        new_params[pid] = value
            if state is not None and s.index in state:
                new_state[s.index] = tuple(out[2])
            if len(tops) != len(s.tops):
                raise ValueError("%s layer '%s' returned %d tops, expected %d"
                                 % (layer.type, layer.name, len(tops), len(s.tops)))
            if getattr(layer, "python_class", None) is not None:
                _check_user_tops(layer, s.tops, tops)
            for name, value, w in zip(s.tops, tops, layer.loss):
                # (its tops' reorders and loss_weight named by it too: XLA folds a reorder
                # into the convolution before it, which takes the reorder's name)
                with jax.named_scope(_scope(layer, "forward")):
                    kept.pop(name, None)
                    if isinstance(value, ReadAfter):    # (the blob keeps value.value)
                        kept[name] = _as(value.value, run, top_last)
                        value = value.read()
                    elif shared is not None:
                        kept[name] = _as(shared, run, top_last)
                    env[name] = _as(value, run, top_last)
                    (last.add if top_last else last.discard)(name)
                    written_here.add(name)
                    if w:
                        term = jnp.vdot(_as(value, run, False),
                                        loss_weights[name].astype(value.dtype))
                        loss = term if loss is None else loss + term
        # (a backward in the same trace transposes these back where it runs channels-last:
        # XLA cancels the two transposes)
        written = _returned({name: kept.get(name, env[name]) for name in self.writes}, last,
                            held)
        return written, saved, new_params, loss, new_state

    def _forward_fn(self, returned, held=False):
        """The function a forward jits: the blobs ``returned`` (all it writes, or a slim
        forward's; ``held``: those computed channels-last as trace_forward's ``held``),
        residuals, params and loss as a Distinct (a value written under several names, a
        Split's tops, once; a blob read back unchanged is the input array, never params:
        a fused step donates them)."""
        def forward(params, data, loss_weights, base_key, count, state):
            with runtime_one(base_key):
                written, saved, new_params, loss, new_state = self.trace_forward(
                    params, data, loss_weights, jax.random.fold_in(base_key, count), held,
                    state)
            return Distinct.of(({n: written[n] for n in returned}, saved, new_params, loss,
                                new_state), data)
        return forward

    def run_full(self, params, data, loss_weights, base_key, count, state):
        self.full_forwards += 1
        return self._forward_jit(params, data, loss_weights, base_key, count,
                                 state).restore(data)

    def run_forward(self, params, data, loss_weights, base_key, count, wanted=(), state=None):
        """The forward with the key ``fold_in(base_key, count)`` (count: a host int),
        from the carried ``state`` (see trace_forward; None: every layer from zero).

        -> (written, saved, new params, loss, new state, pending): ``written`` holds every blob
        it writes, or, once the segment may run slim, the blobs read outside it plus
        ``wanted``; then ``pending`` is the :class:`PendingForward` of the others."""
        args = (params, data, loss_weights, base_key, np.uint32(count), state or {})
        if not self._may_slim or self.slim_after is None or self.full_forwards < self.slim_after:
            return self.run_full(*args) + (None,)
        self.learned |= set(wanted) & set(self.writes)     # asked for once: keep returning it
        returned = frozenset((self.keep | self.learned) & set(self.writes))
        if len(returned) == len(self.writes):
            return self.run_full(*args) + (None,)
        if self._slim is None or self._slim[0] != returned:
            self._slim = (returned, xla_options.jit(self._forward_fn(returned)))
        out = self._slim[1](*args).restore(data)
        return out + (PendingForward(self, args),)

    def kernel_layouts(self):
        """{param id: perm} of the params this segment's forward may take as
        :class:`KernelLayout`: a layer's ``kernel_layout()`` of its first blob, for the
        layers' current shapes, a param no other slot shares."""
        return self._layout_cached("kernel_layouts", self._kernel_layouts)

    def _kernel_layouts(self):
        users = {}
        for s in self.slots:
            for pid in s.param_ids:
                users[pid] = users.get(pid, 0) + 1
        perms = {}
        for s in self.slots:
            asks = getattr(s.layer, "kernel_layout", None)     # (a JaxLayer's)
            perm = asks() if asks is not None and s.param_ids else None
            if perm is not None and users[s.param_ids[0]] == 1:
                perms[s.param_ids[0]] = tuple(perm)
        return perms

    def read_pending(self, name):
        """A pending blob of this segment was read: later forwards return it."""
        self.learned.add(name)

    def dropped_when_slim(self):
        """The blobs a slim forward of this segment would leave pending now. Read after
        a full forward (the net watches them), they are returned by the first slim one:
        pycaffe's feature extraction reads an intermediate blob after every forward,
        and finding it only pending in the second forward cost a run of the full
        program at that read and a third compile (GoogLeNet: about 3 s)."""
        if not self._may_slim or self.slim_after is None:
            return ()
        return set(self.writes) - self.keep - self.learned

    # -- backward --------------------------------------------------------------
    def backward_plan(self):
        """Blobs whose data / top diffs the backward reads, the diffs it writes,
        and the params whose diffs it accumulates (only layers that need backward)."""
        active = [s for s in self.slots if s.need_backward]
        data, diffs, written, pids = [], [], set(), set()
        for s in reversed(active):
            for t in s.tops:
                if t not in written and t not in diffs:
                    diffs.append(t)
            for name in list(s.bottoms) + list(s.tops):
                if name not in data:
                    data.append(name)
            for b, need in zip(s.bottoms, s.bottom_need_backward):
                if need:
                    written.add(b)
            for pid, pd in zip(s.param_ids, s.layer.param_propagate_down):
                if pd:
                    pids.add(pid)
        return active, data, diffs, sorted(written), sorted(pids)

    def deferrable(self):
        """The params whose diff trace_backward can return as :class:`RowBlocks`: those
        that one layer alone contributes to, in a param slot it can compute by rows."""
        counts, offered = {}, set()
        for s in self.backward_plan()[0]:
            for k, (pid, pd) in enumerate(zip(s.param_ids, s.layer.param_propagate_down)):
                if pd:
                    counts[pid] = counts.get(pid, 0) + 1
                    if k in getattr(s.layer, "row_blocked_params", ()):
                        offered.add(pid)
        return frozenset(pid for pid in offered if counts[pid] == 1)

    def trace_backward(self, params, data, top_diffs, saved, param_diffs, probes=None,
                       deferred=frozenset(), held=False, update=None):
        """-> (written diffs {blob: a}, param diffs {pid: a} accumulated).

        ``probes``: a dict to fill with {pid: [first element of each bottom diff of the
        layers holding that param, or of the param's ordered copy where the backward
        read it through one (``ordered_backward``)]}, the values a fused solver step makes
        each param's in-place update depend on (see jcaffe.solver._rate_after).
        ``deferred``: pids (from :meth:`deferrable`) whose diff comes back as a
        :class:`RowBlocks` in place of the array (their ``param_diffs`` entry is
        ignored: the caller starts them at zero); the layer's own full diff is left
        unused, and XLA drops it.
        ``held``: ``data`` holds trace_forward's ``held`` blobs, and the diffs computed
        channels-last (:meth:`last_diffs`) are returned so too.
        ``update``: ``update(pid, diff, probes) -> new param``, a fused step's update of
        one param, called as soon as the param's diff is complete (after the last layer
        adding to it) for the params :meth:`updated_in_order` names; the layers below
        then wait for the new param, not for the diff, and the probes of such a param of
        ``update_min_bytes`` or more are its layers' data gradients (its update comes
        after them, as it overwrites the param they read: XLA need not copy it)."""
        active, _, _, written, _ = self.backward_plan()
        env = dict(top_diffs)
        last = set()                    # diffs in env held channels-last
        plan = self.layout_plan()
        held_data = self.last_writes() if held else frozenset()

        read = {}       # (blob, layout): its value, reshaped or transposed once

        def value(name, run):
            if (name, run) not in read:
                read[name, run] = (_as(_unheld(data[name]), True, run) if name in held_data
                                   else _as(data[name], False, run))
            return read[name, run]
        acc = dict(param_diffs)
        waits = {}          # blob: the param diffs its diff comes after (ordered_backward)
        in_order = self.updated_in_order(params, deferred) if update is not None else {}
        for s in reversed(active):
            layer = s.layer
            lp = _layer_params(s, params)
            after = _total(waits[t] for t in dict.fromkeys(s.tops) if t in waits)
            ordered = [after is not None and self._orders(p) for p in lp]
            ones = {}       # (one per dtype: a layer's params wait for the same diffs)
            for p, o in zip(lp, ordered):
                if o and p.dtype not in ones:
                    ones[p.dtype] = _one_after(after, p.dtype)
            lp = [p * ones[p.dtype] if o else p for p, o in zip(lp, ordered)]
            run, top_last = plan[s.index][1:] if s.index in plan else (False, False)
            carried = _carried(s)
            bottoms = [value(b, run and c) for b, c in zip(s.bottoms, carried)]
            tops = [value(t, run) for t in s.tops]
            dys = [_as(env[t], t in last, run) for t in s.tops]
            with jax.named_scope(_scope(layer, "backward")), _user_layer(layer, "backward"):
                fn = (layer.backward_channels_last if run
                      else layer.backward_top_last if top_last else layer.backward)
                bottom_diffs, p_diffs = fn(lp, bottoms, tops, saved.get(s.index), dys,
                                           tuple(s.bottom_need_backward))
            if probes is not None and s.param_ids:
                # (the barrier keeps XLA from computing the one element from a part of
                # the gradient only, e.g. the first group's share of a concatenation)
                firsts = [_first(jax.lax.optimization_barrier(d))
                          for d, need in zip(bottom_diffs, s.bottom_need_backward)
                          if need and d is not None and d.size]
                for pid, p, o in zip(s.param_ids, lp, ordered):
                    # an ordered param is read through its ordered copy: an update at
                    # the end of the step waits for that copy, not for the data
                    # gradient, which then need not stay live until then
                    probes.setdefault(pid, []).extend(
                        [_first(p)] if o and p.size and not (
                            pid in in_order and p.size * p.dtype.itemsize >= self.update_min_bytes)
                        else firsts)
            for name, need, diff, c in zip(s.bottoms, s.bottom_need_backward, bottom_diffs,
                                           carried):
                if need:
                    if diff is None:
                        raise ValueError("%s layer '%s' returned no diff for bottom '%s' although "
                                         "propagate_down is true" % (layer.type, layer.name, name))
                    env[name] = diff
                    (last.add if run and c else last.discard)(name)
            computed = []
            for k, (pid, pd, diff) in enumerate(zip(s.param_ids, layer.param_propagate_down,
                                                    p_diffs)):
                if pd and diff is not None and pid in deferred:
                    acc[pid] = RowBlocks(acc[pid].shape, acc[pid].dtype, functools.partial(
                        layer.param_diff_rows, lp, bottoms, dys, k))
                elif pd and diff is not None:
                    acc[pid] = acc[pid] + jnp.reshape(diff, acc[pid].shape).astype(acc[pid].dtype)
                    if in_order.get(pid) == s.index:    # its last diff: update it now
                        new = update(pid, acc[pid], probes.get(pid, ()) if probes is not None
                                     else ())
                        computed.append(_first(jax.lax.optimization_barrier(new)))
                    elif diff.size and self._orders(diff):
                        # (the barrier: the whole diff, as for the probes; a big diff
                        # left alone keeps its product fused with the param's update)
                        computed.append(_first(jax.lax.optimization_barrier(diff)))
            after = _total(computed) if computed else after
            for name, need in zip(s.bottoms, s.bottom_need_backward):
                if need and after is not None:
                    waits[name] = (after if name in s.tops or name not in waits
                                   else waits[name] + after)
        return _returned({name: env[name] for name in written}, last, held), acc

    def updated_in_order(self, params, deferred=frozenset()):
        """{pid: index of the last layer adding to its diff} of the params a fused step
        updates inside the backward (``update`` of trace_backward): with
        ``ordered_backward``, those with a diff of at most ``ordered_max_bytes``, not
        ``deferred``."""
        if not self.ordered_backward:
            return {}
        last = {}
        for s in self.backward_plan()[0]:
            for pid, pd in zip(s.param_ids, s.layer.param_propagate_down):
                p = params.get(pid)
                if pd and pid not in deferred and p is not None and self._orders(p):
                    last[pid] = s.index if pid not in last else min(last[pid], s.index)
        return last

    def last_diffs(self):
        """The diffs this segment's backward leaves channels-last (layout_plan)."""
        return self._layout_cached("diffs", self._last_diffs)

    def _last_diffs(self):
        active, _, _, written, _ = self.backward_plan()
        plan, last = self.layout_plan(), set()
        for s in reversed(active):
            run = plan[s.index][1] if s.index in plan else False
            for name, need, c in zip(s.bottoms, s.bottom_need_backward, _carried(s)):
                if need:
                    (last.add if run and c else last.discard)(name)
        return frozenset(last & set(written))

    def held_blobs(self):
        """The blobs this segment's forward returns held channels-last, and its backward
        takes so (``holds``); their diffs it computes channels-last come back held too
        (held_diffs)."""
        return self.last_writes() if self.holds else frozenset()

    def held_diffs(self):
        return self.last_diffs() if self.holds else frozenset()

    def run_backward(self, params, data, top_diffs, saved, param_diffs):
        """``param_diffs``: {pid: the diff to add to, or None for zeros (a cleared diff:
        Net.clear_param_diffs), which the call makes itself, reading nothing}. ``data``
        holds the blobs of held_blobs() held (hold_blob), and the diffs of held_diffs()
        come back so."""
        fn = self._backward_jit.get("fn")
        if fn is None:
            # (a diff passed through unchanged is the caller's array: a param's diff no
            # layer here adds to, a top diff an identity backward gives its bottom)
            def backward(params, data, top_diffs, saved, param_diffs):
                given = {pid: d for pid, d in param_diffs.items() if d is not None}
                start = {pid: jnp.zeros_like(params[pid]) if d is None else d
                         for pid, d in param_diffs.items()}
                out = self.trace_backward(params, data, top_diffs, saved, start,
                                          held=self.holds)
                return Distinct.of(out, (top_diffs, given))
            fn = self._backward_jit["fn"] = xla_options.jit(backward)
        return fn(params, data, top_diffs, saved, param_diffs).restore(
            (top_diffs, {pid: d for pid, d in param_diffs.items() if d is not None}))
