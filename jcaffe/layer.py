"""Layer bases and the layer registry.

Two kinds of layer live in a Net:

* :class:`JaxLayer` (every built-in layer, and user layers written in JAX): shape
  logic on the host (``setup``, ``reshape``) and two pure JAX functions,
  ``forward(params, bottoms, rng) -> (tops, saved)`` and
  ``backward(params, bottoms, tops, saved, top_diffs, propagate_down)
  -> (bottom_diffs, param_diffs)``. The Net traces runs of them into one
  jitted call. Backward is written by hand, Caffe style.
* :class:`Layer` (pycaffe's ``caffe.Layer``): a user Python layer working on
  numpy through real Blob objects, run on the host between compiled segments.

Rules kept from Caffe: bottom diffs are overwritten, param diffs accumulate
(the Net adds what ``backward`` returns to the param's diff); ``None`` stands
for a diff that is not wanted (``propagate_down`` false, ``lr_mult: 0``).
"""
import contextlib
import importlib
import sys

import numpy as np

from . import fillers, forks
from .blob import Blob, shape_string
from .errors import LayerSetupError, PythonLayerError, ShapeMismatchError, UnknownLayerTypeError
from .proto import caffe_pb2

_REGISTRY = {}


def register(type_name):
    """Class decorator: make ``cls`` the implementation of layer type ``type_name``."""
    def deco(cls):
        if type_name in _REGISTRY:
            raise ValueError("layer type %r is registered twice (%s and %s)"
                             % (type_name, _REGISTRY[type_name].__qualname__, cls.__qualname__))
        cls.type = type_name
        _REGISTRY[type_name] = cls
        return cls
    return deco


def layer_type_list():
    """Registered layer types, sorted (pycaffe's caffe.layer_type_list())."""
    _load_builtin_layers()
    return sorted(_REGISTRY)


def layer_class(type_name, layer_name="?"):
    _load_builtin_layers()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        hint = forks.layer_hint(type_name)   # a fork's layer: what BVLC writes instead
        raise UnknownLayerTypeError(
            "Unknown layer type: '%s' (layer '%s')%s. Known types: %s"
            % (type_name, layer_name, ". " + hint if hint else "",
               ", ".join(sorted(_REGISTRY)))) from None


def _load_builtin_layers():
    # By module name: ``from . import layers`` would return pycaffe's NetSpec
    # ``jcaffe.layers`` attribute instead of importing the subpackage.
    importlib.import_module(__package__ + ".layers")  # registers on import


def _param_field_for(type_name):
    """The LayerParameter field holding ``<Type>Parameter``, from the descriptor."""
    wanted = type_name + "Parameter"
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.name == wanted:
            return field.name
    return None


class _LayerCommon:
    """What the Net needs from any layer: names, param blobs, loss weights."""

    type = None
    # Arity, as Caffe's ExactNumBottomBlobs() & co. (-1: no constraint).
    exact_num_bottom_blobs = -1
    min_bottom_blobs = -1
    max_bottom_blobs = -1
    exact_num_top_blobs = -1
    min_top_blobs = -1
    max_top_blobs = -1
    equal_num_bottom_top_blobs = False
    auto_top_blobs = False
    # Does it carry a state from one forward to the next, outside its blobs (a recurrent
    # layer's h_T, which Caffe copies into h_0 before the next forward)? Then its JAX
    # forward takes ``state=`` (a tuple of arrays shaped as state_shapes(); absent:
    # zeros) and returns (tops, saved, new_state); the net keeps it in ``hidden_state``.
    carries_state = False
    hidden_state = None
    # Loss weight of each top when the prototxt gives none (LossLayer: (1,)).
    default_loss_weights = ()

    def _init_common(self, layer_param, dtype):
        self.layer_param = layer_param
        self.name = layer_param.name
        self.phase = layer_param.phase
        self.dtype = np.dtype(dtype)
        self.blobs = BlobVec((), dtype)
        for proto in layer_param.blobs:  # weights given inside the net param
            from .protoio import blobproto_to_array
            arr = blobproto_to_array(proto)
            blob = Blob(arr.shape, self.dtype)
            blob.data[...] = arr
            self.blobs.append(blob)
        self.param_propagate_down = []
        self.loss = []

    def wants_param_diff(self, index):
        """Caffe's param_propagate_down(index): should backward compute this param's diff?"""
        pd = self.param_propagate_down
        return pd[index] if index < len(pd) else True

    def allow_force_backward(self, bottom_index):
        """Caffe's AllowForceBackward: may force_backward send a diff to this bottom?"""
        return True

    def check_blob_counts(self, num_bottom, num_top):
        """Caffe's CheckBlobCounts, with messages naming the layer."""
        def fail(what, n, rule, k):
            raise LayerSetupError("%s layer '%s' takes %s %d %s blob%s, got %d"
                                  % (self.type, self.name, rule, k, what, "" if k == 1 else "s", n))
        for what, n, exact, lo, hi in (
                ("bottom", num_bottom, self.exact_num_bottom_blobs,
                 self.min_bottom_blobs, self.max_bottom_blobs),
                ("top", num_top, self.exact_num_top_blobs,
                 self.min_top_blobs, self.max_top_blobs)):
            if exact >= 0 and n != exact:
                fail(what, n, "exactly", exact)
            if lo >= 0 and n < lo:
                fail(what, n, "at least", lo)
            if hi >= 0 and n > hi:
                fail(what, n, "at most", hi)
        if self.equal_num_bottom_top_blobs and num_bottom != num_top:
            raise LayerSetupError("%s layer '%s' needs as many tops as bottoms, got %d bottoms and %d tops"
                                  % (self.type, self.name, num_bottom, num_top))

    def set_loss_weights(self, num_top):
        """Caffe's SetLossWeights (+ LossLayer's implicit weight 1 on top 0)."""
        weights = list(self.layer_param.loss_weight)
        if not weights and self.default_loss_weights:
            weights = list(self.default_loss_weights)[:num_top]
        if weights and len(weights) != num_top:
            raise LayerSetupError("layer '%s': loss_weight must be unspecified or given once per top "
                                  "blob (%d tops, %d loss_weight)" % (self.name, num_top, len(weights)))
        self.loss = [float(w) for w in weights] + [0.0] * (num_top - len(weights))


class JaxLayer(_LayerCommon):
    """Base of built-in layers: host shape logic plus pure-JAX forward and backward."""

    is_host = False
    # The LayerParameter field this layer reads (default: derived from the type name).
    param_field = None
    # Does forward consume randomness (Dropout, DummyData's random fillers)?
    needs_rng = False
    # Does forward return new values for its param blobs (BatchNorm's running stats)?
    # Then forward returns (tops, saved, new_params).
    updates_params_in_forward = False
    # False for layers whose tops are filled from outside (Input).
    forward_writes_tops = True
    # Does forward act outside its tops (HDF5Output writes a file)? Then the net never
    # recomputes it to fill a blob that was left pending (see jcaffe.engine).
    forward_has_effects = False
    # Its tops are its bottom (Split): the engine stores a bottom it computed once
    # (engine.materialize) before the layers reading the tops.
    shares_bottom = False
    # Elementwise and blind to which axis is which (no param per channel, no shapes
    # drawn): the engine may hand it 4-d bottoms held channels-last, as they came from a
    # convolution (see jcaffe.engine, "channels-last runs"), and keep its tops so. Other
    # layers that can compute so define channels_last_ok, and either
    # channels_last_context (their own forward and backward, with the axes they use
    # moved for the call) or the *_channels_last methods.
    layout_free = False

    def state_shapes(self):
        """The shapes of the carried state (``carries_state``) for the last reshape."""
        return []

    def stores_tops_after(self, writers):
        """Whether the engine stores this layer's tops once (engine.materialize) in a
        compiled call, given the layers that last wrote its bottoms before it (None: an
        input of the call). ReLU's rule; no other layer's."""
        return False

    def stored_for_backward(self, tops, saved):
        """The tops and residuals of a forward whose backward will run, as the engine
        keeps them: a layer may store some once (engine.materialize) in a compiled call,
        and give a top as an engine.ReadAfter (the blob keeps it, the forward's later
        layers read it after another array). MAX pooling's rule; unchanged here."""
        return tops, saved

    def kernel_layout(self):
        """A permutation of the axes of this layer's first blob, the layout its forward's
        kernel reads it in, or None. A TEST-phase net's forward hands that blob so, laid
        out once while it stays unchanged (jcaffe.engine.KernelLayout), and the layer's
        forward sees it in Caffe's order as ever. (A backward takes it as it is.)"""
        return None

    def channels_last_ok(self):
        """Whether ``forward_channels_last`` / ``backward_channels_last`` take 4-d bottoms
        (and give tops, diffs) held channels-last, (N, H, W, C)."""
        return self.layout_free

    def channels_last_context(self):
        """A context inside which ``forward`` and ``backward`` compute on 4-d arrays held
        channels-last (a layer sets the axes it reads for the call, and restores them)."""
        return contextlib.nullcontext()

    def forward_channels_last(self, params, bottoms, rng):
        with self.channels_last_context():
            return self.forward(params, bottoms, rng)

    def backward_channels_last(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        with self.channels_last_context():
            return self.backward(params, bottoms, tops, saved, top_diffs, propagate_down)

    def channels_last_top(self):
        """Whether this layer's 4-d tops come out of a computation that writes them
        channels-last (XLA CPU's convolutions), or can at no cost (``forward_top_last``):
        the engine then keeps them in that order for the layers after it that compute so."""
        return False

    def channels_last_reader(self):
        """Whether this layer would rather be handed its 4-d bottoms channels-last (it
        computes faster so, ``forward_channels_last``): the engine then keeps the layers
        before it that can compute so channels-last, as it does for a convolution on XLA's
        kernel (jcaffe.engine, "channels-last runs")."""
        return False

    def channels_last_backward_ok(self):
        """Whether ``backward_channels_last`` is no slower than ``backward`` (with the
        transposes around it): where it is not, a layer whose backward runs computes in
        Caffe's order, and only a forward-only net runs it channels-last."""
        return True

    def forward_top_last(self, params, bottoms, rng):
        """``forward`` where the engine keeps the tops channels-last (``channels_last_top``
        and a reader after it): a layer may compute them so, and transpose them to the
        order it returns; the engine's transpose back cancels that one."""
        return self.forward(params, bottoms, rng)

    def backward_top_last(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        """``backward`` where ``forward_top_last`` ran (the top diffs come channels-last
        and are transposed to Caffe's order, a transpose the layer may cancel)."""
        return self.backward(params, bottoms, tops, saved, top_diffs, propagate_down)

    def __init__(self, layer_param, dtype=np.float32):
        self._init_common(layer_param, dtype)
        self.bottom_shapes = ()
        self.top_shapes = ()

    @property
    def param_str(self):
        """``python_param.param_str``: a layer written in JAX and named by a ``type:
        "Python"`` layer reads its options here, as a numpy Python layer does."""
        return self.layer_param.python_param.param_str

    @property
    def p(self):
        """This layer's ``*_param`` message (e.g. ``convolution_param``)."""
        field = self.param_field or _param_field_for(self.type)
        if field is None:
            raise AttributeError("%s layers have no *_param message" % self.type)
        return getattr(self.layer_param, field)

    def fail(self, message, *args):
        """Raise a LayerSetupError naming this layer."""
        raise LayerSetupError("%s layer '%s': %s" % (self.type, self.name, message % args))

    # -- host lifecycle ------------------------------------------------------
    def setup(self, bottom_shapes):
        """Caffe's LayerSetUp: read options, create param blobs (``init_params``)."""

    def reshape(self, bottom_shapes):
        """Return the list of top shapes for these bottom shapes."""
        raise NotImplementedError("%s must define reshape()" % type(self).__name__)

    def init_params(self, specs, rng):
        """Create and fill param blobs from ``[(shape, FillerParameter or None), ...]``.

        Like Caffe, params already given (weights inside the NetParameter) are
        kept ("Skipping parameter initialization").
        """
        if self.blobs:
            self._check_given_params(specs)
            return
        for shape, filler in specs:
            blob = Blob(shape, self.dtype)
            if filler is not None:
                try:
                    blob.data[...] = fillers.fill(filler, tuple(shape), rng, self.dtype)
                except LayerSetupError as e:
                    self.fail("param %d: %s", len(self.blobs), e)
            self.blobs.append(blob)

    def _check_given_params(self, specs):
        if len(self.blobs) != len(specs):
            raise ShapeMismatchError("%s layer '%s': %d param blobs given in the net, expected %d"
                                     % (self.type, self.name, len(self.blobs), len(specs)))
        for i, (blob, (shape, _)) in enumerate(zip(self.blobs, specs)):
            if tuple(blob.shape) != tuple(shape):
                raise ShapeMismatchError("%s layer '%s': param %d given in the net has shape %s, "
                                         "expected %s" % (self.type, self.name, i,
                                                          shape_string(blob.shape), shape_string(shape)))

    def layer_setup(self, bottom_shapes, num_top, rng):
        """Caffe's Layer::SetUp: check counts, LayerSetUp, Reshape, loss weights."""
        self.check_blob_counts(len(bottom_shapes), num_top)
        self.num_top = num_top
        self.filler_rng = rng
        self.bottom_shapes = tuple(tuple(s) for s in bottom_shapes)
        self.setup(self.bottom_shapes)
        top_shapes = self.do_reshape(self.bottom_shapes)
        self.set_loss_weights(num_top)
        return top_shapes

    def do_reshape(self, bottom_shapes):
        """Reshape for these bottom shapes (memoized: it runs before every forward)."""
        bottom_shapes = tuple(tuple(int(d) for d in s) for s in bottom_shapes)
        if bottom_shapes != self.bottom_shapes or not self.top_shapes:
            self.bottom_shapes = bottom_shapes
            self.top_shapes = tuple(tuple(int(d) for d in s) for s in self.reshape(bottom_shapes))
        return self.top_shapes

    # -- compiled computation --------------------------------------------------
    def forward(self, params, bottoms, rng):
        """Return ``(tops, saved)``: lists of arrays and whatever backward needs."""
        raise NotImplementedError("%s must define forward()" % type(self).__name__)

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        """Return ``(bottom_diffs, param_diffs)``; ``None`` where not wanted."""
        raise NotImplementedError("%s must define backward()" % type(self).__name__)


class Layer(_LayerCommon):
    """pycaffe's ``caffe.Layer``: base class of user Python layers.

    Override ``setup(bottom, top)``, ``reshape(bottom, top)``,
    ``forward(bottom, top)`` and ``backward(top, propagate_down, bottom)``;
    ``bottom`` and ``top`` are lists of Blob. ``self.param_str``,
    ``self.phase`` and ``self.blobs`` (learnable params, see ``add_blob``) are
    available. Caffe calls ``backward`` only when the net needs it (see
    ``Net.backward_reasons``): a Python layer with no learnable params whose
    bottoms need no gradient is never asked for one unless the net sets
    ``force_backward: true``.
    """

    is_host = True
    type = "Python"

    def __init__(self, layer_param=None):
        self._init_common(layer_param if layer_param is not None else caffe_pb2.LayerParameter(),
                          np.float32)
        self.param_str = self.layer_param.python_param.param_str

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def add_blob(self, *shape):
        """Add a learnable param blob of this shape (pycaffe's ``self.blobs.add_blob``)."""
        blob = Blob(shape, self.dtype)
        self.blobs.append(blob)
        return blob


_REGISTRY["Python"] = Layer


class BlobVec(list):
    """A list of Blob with pycaffe's ``add_blob(*shape)``."""

    def __init__(self, items=(), dtype=np.float32):
        super().__init__(items)
        self.dtype = np.dtype(dtype)

    def add_blob(self, *shape):
        self.append(Blob(shape, self.dtype))
        return self[-1]


def note_python_layer(error, layer, method):
    """Add a note naming the user Python layer (numpy or JAX) ``layer`` to ``error``,
    raised in its ``method``; other layers' errors name themselves."""
    where = getattr(layer, "python_class", None)
    if where is not None:
        error.add_note("(in %s() of Python layer '%s', %s)" % (method, layer.name, where))


def jax_python_layer(cls, layer_param, dtype):
    """A Python layer written in JAX (``cls`` a JaxLayer subclass): compiled into the
    net's segments (and a solver's fused step) like a built-in layer, not run on the host
    between them. Its type is "Python", as the prototxt names it (logs, errors,
    ``self.p`` and ``self.param_str`` read python_param)."""
    layer = cls(layer_param, dtype)
    layer.type = "Python"
    layer.python_class = "%s.%s" % (cls.__module__, cls.__name__)
    return layer


def create_python_layer(layer_param, dtype):
    """Import ``python_param.module``, instantiate ``python_param.layer`` (Caffe's PythonLayer)."""
    pp = layer_param.python_param
    where = "Python layer '%s'" % layer_param.name
    if not pp.module or not pp.layer:
        raise LayerSetupError("%s: python_param needs both 'module' and 'layer'" % where)
    try:
        module = importlib.import_module(pp.module)
    except ImportError as e:
        raise PythonLayerError(
            "%s: cannot import module '%s' (%s). The module must be importable from "
            "sys.path/PYTHONPATH; searched: %s" % (where, pp.module, e, ", ".join(sys.path[:6]) + " ...")) from e
    cls = getattr(module, pp.layer, None)
    if cls is None:
        raise PythonLayerError("%s: module '%s' (%s) has no class '%s'"
                               % (where, pp.module, getattr(module, "__file__", "?"), pp.layer))
    if isinstance(cls, type) and issubclass(cls, JaxLayer):
        return jax_python_layer(cls, layer_param, dtype)
    try:
        layer = cls(layer_param)
    except TypeError:
        layer = cls()
    if not isinstance(layer, Layer):
        raise PythonLayerError("%s: %s.%s must subclass jcaffe.Layer (numpy, run on the host) or "
                               "jcaffe.JaxLayer (JAX, compiled with the net)"
                               % (where, pp.module, pp.layer))
    if not hasattr(layer, "layer_param"):  # the user's __init__ skipped super().__init__
        Layer.__init__(layer, layer_param)
    layer.layer_param = layer_param
    layer.blobs = BlobVec(layer.blobs, dtype)
    layer.dtype = np.dtype(dtype)
    layer.python_class = "%s.%s" % (pp.module, pp.layer)
    return layer


def create_layer(layer_param, dtype=np.float32):
    """Caffe's LayerRegistry::CreateLayer."""
    if layer_param.type == "Python":
        return create_python_layer(layer_param, dtype)
    cls = layer_class(layer_param.type, layer_param.name)
    return cls(layer_param, dtype)
