"""Write nets in Python: pycaffe's ``caffe.net_spec`` on jcaffe's caffe.proto.

    from jcaffe import NetSpec, layers as L, params as P

    n = NetSpec()
    n.data, n.label = L.Data(source="train_lmdb", backend=P.Data.LMDB,
                             batch_size=64, ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.relu1, n.label)
    print(n.to_proto())        # a caffe_pb2.NetParameter; str() is prototxt

``L.<Type>(*bottoms, **kwargs)`` describes one layer of that type. Keyword
values become proto fields: dicts become messages, lists become repeated
fields (a single value is accepted as a one-element list), and a keyword that
is a field of the type's own ``<type>_param`` message (``kernel_size`` for
Convolution) is put there, any other into LayerParameter itself (``name``,
``loss_weight``, ``param``, ``include``, ``convolution_param``...). Two
keywords are not fields: ``ntop`` (number of tops: 0 returns the
``Function``, 1 a ``Top``, more a tuple of Tops) and ``in_place`` (the tops
are the bottoms). Tops assigned to a ``NetSpec`` attribute take
that name; the others, and layers without a name, are named
``<Type><count>`` (``Convolution1``) as pycaffe names them.
"""

from collections import Counter

from .errors import JcaffeError
from .proto import caffe_pb2

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "to_proto",
           "param_name_dict", "assign_proto", "NetSpecError"]

_LAYER = caffe_pb2.LayerParameter.DESCRIPTOR


class NetSpecError(JcaffeError, AttributeError):
    """A layer keyword, or a key of a nested dict, that names no proto field."""


def param_name_dict():
    """Layer type -> prefix of its ``*_param`` field, read from LayerParameter.

    A ``foo_param`` field of message type ``FooBarParameter`` gives
    ``"FooBar": "foo"`` (``"InnerProduct": "inner_product"``). Types without a
    message of their own (Deconvolution, SoftmaxWithLoss) are absent.
    """
    names = {}
    for field in _LAYER.fields:
        message = field.message_type
        if field.name.endswith("_param") and message is not None \
                and message.name.endswith("Parameter"):
            names[message.name[:-len("Parameter")]] = field.name[:-len("_param")]
    return names


_param_names = param_name_dict()


def to_proto(*tops):
    """A NetParameter with every layer needed to compute ``tops``."""
    layers, names, autonames = {}, {}, Counter()
    for top in tops:
        top._to_proto(layers, names, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def assign_proto(proto, name, val):
    """Set field ``name`` of message ``proto`` from a Python value: dicts fill
    messages, lists (or single values) fill repeated fields."""
    _assign(proto, name, val, proto.DESCRIPTOR.name, "")


class Top:
    """One output blob of a layer: output ``n`` of Function ``fn``."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, its input Tops, and its keyword parameters.

    The keywords are checked against caffe.proto when the Function is made,
    so a misspelt option fails on the line that wrote it.
    """

    def __init__(self, type_name, inputs, params):
        for index, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError("%s input %d is not a Top (type is %s)"
                                % (type_name, index, type(inp)))
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))
        self._options = caffe_pb2.LayerParameter()
        for key, value in self.params.items():
            self._assign_kwarg(key, value)

    def _assign_kwarg(self, key, value):
        owner = "%s layer" % self.type_name
        own = _param_names.get(self.type_name)
        own_field = own and own + "_param"
        if own and key in _LAYER.fields_by_name[own_field].message_type.fields_by_name:
            _assign(getattr(self._options, own_field), key, value, owner, own_field)
        elif key in _LAYER.fields_by_name:
            _assign(self._options, key, value, owner, "")
        else:
            raise NetSpecError(_unknown_kwarg_message(self.type_name, key, own_field))

    def _get_name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name, bottom=bottoms)
        if self.in_place:
            layer.top.extend(bottoms)
        else:
            layer.top.extend(self._get_top_name(t, names, autonames) for t in self.tops)
        layer.name = self._get_name(names, autonames)
        # Keywords come last, as in pycaffe: name=... overrides the name above.
        layer.MergeFrom(self._options)
        layers[self] = layer


class NetSpec:
    """Tops assigned as attributes (``n.conv1 = L.Convolution(...)``) take the
    attribute's name; ``to_proto()`` serializes everything they need."""

    def __init__(self):
        super().__setattr__("tops", {})

    def __setattr__(self, name, value):
        if not isinstance(value, (Top, Function)):
            raise TypeError(
                "NetSpec.%s must be a Top (or the Function of an ntop=0 layer), "
                "got %s; a layer with ntop > 1 returns a tuple to unpack, "
                "e.g. n.data, n.label = L.Data(..., ntop=2)"
                % (name, type(value).__name__))
        self.tops[name] = value

    def __getattr__(self, name):
        tops = self.__dict__.get("tops", {})
        if name not in tops:
            raise AttributeError("NetSpec has no top named '%s'" % name)
        return tops[name]

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.__getattr__(item)

    def to_proto(self):
        """A NetParameter with the assigned tops' layers, in assignment order."""
        names = {v: k for k, v in self.tops.items()}
        layers, autonames = {}, Counter()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``L.Convolution(bottom, kernel_size=3)``: a layer of any type by name."""

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = name
        return layer_fn


class Parameters:
    """``P.Pooling.MAX``: enum values of caffe.proto's ``<Name>Parameter``."""

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return getattr(caffe_pb2, name + "Parameter")
        except AttributeError:
            raise AttributeError("caffe.proto has no message %sParameter"
                                 % name) from None


layers = Layers()
params = Parameters()


# --- assigning Python values to proto fields -----------------------------------

def _assign(proto, name, val, owner, path):
    """``proto.<name> = val`` with pycaffe's conversions; errors name
    ``owner`` (e.g. "Convolution layer") and the dotted field path."""
    here = path + "." + name if path else name
    field = proto.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise NetSpecError("%s: %s has no field '%s' (setting %s)"
                           % (owner, proto.DESCRIPTOR.name, name, here))
    repeated = _is_repeated(field)
    items = val if isinstance(val, (list, tuple)) else [val]
    if field.message_type is not None:
        if not repeated:
            _fill_message(getattr(proto, name), val, owner, here)
            return
        for item in items:
            _fill_message(getattr(proto, name).add(), item, owner, here)
        return
    try:
        if repeated:
            getattr(proto, name).extend(items)
        else:
            setattr(proto, name, val)
    except (TypeError, ValueError) as err:
        raise type(err)("%s: cannot set %s to %r: %s"
                        % (owner, here, val, err)) from err


def _fill_message(message, val, owner, path):
    """Fill a message field from a dict of its fields, or copy a message."""
    if isinstance(val, dict):
        for key, value in val.items():
            _assign(message, key, value, owner, path)
    elif isinstance(val, type(message)):
        message.CopyFrom(val)
    else:
        raise TypeError("%s: %s is a %s message: give a dict of its fields, "
                        "got %r" % (owner, path, message.DESCRIPTOR.name, val))


def _is_repeated(field):
    if hasattr(field, "is_repeated"):  # protobuf >= 5.x
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def _unknown_kwarg_message(type_name, key, own_field):
    where = ("%s or LayerParameter" % own_field if own_field else
             "LayerParameter (caffe.proto has no %sParameter)" % type_name)
    message = "%s layer: unknown parameter '%s' (not a field of %s)" % (
        type_name, key, where)
    holders = [f.name for f in _LAYER.fields if f.name.endswith("_param")
               and f.message_type is not None
               and key in f.message_type.fields_by_name]
    if holders:
        message += "; it is a field of %s: pass it as %s=dict(%s=...)" % (
            ", ".join(holders), holders[0], key)
    return message
