"""Bring old Caffe net and solver definitions up to the current schema.

Caffe's schema changed several times; Caffe upgrades what it reads in memory,
and so do we, with the same rules and in the same order:

    V0 ``layers { layer { type: "conv" } }``   ->  V1 ``layers { type: CONVOLUTION }``
    scale/mean_file/crop_size/mirror in data params  ->  ``transform_param``
    V1 ``layers { type: CONVOLUTION blobs_lr: 1 }``  ->  ``layer { type: "Convolution"
                                                          param { lr_mult: 1 } }``
    net-level ``input`` + ``input_dim``/``input_shape``  ->  an ``Input`` layer
    BatchNorm's three ``param`` specs  ->  lr_mult and decay_mult forced to 0
    solver ``solver_type: ADAM``  ->  ``type: "Adam"``

Every step mutates the message in place and logs one INFO line on the
``jcaffe`` logger. Where Caffe would abort, we raise ``UpgradeError``; where
Caffe logs a problem and carries on (an option the new schema has no place
for), we log a warning and carry on too.
"""
import logging
import os

from .errors import JcaffeError
from .proto import caffe_pb2 as pb

log = logging.getLogger("jcaffe")

_V1 = pb.V1LayerParameter


class UpgradeError(JcaffeError, ValueError):
    """An old-format definition that cannot be upgraded (Caffe aborts on these)."""


# ---------------------------------------------------------------------------
# Tables (facts from Caffe's upgrade_proto.cpp)

# V0 type string -> V1 LayerType enum name.
V0_LAYER_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT",
    "conv": "CONVOLUTION", "data": "DATA", "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS", "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT",
    "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# V0 option -> {V0 type: "field.path" in the V1 layer}; type None = any type.
_V0_OPTIONS = {
    "num_output": {"conv": "convolution_param.num_output",
                   "innerproduct": "inner_product_param.num_output"},
    "biasterm": {"conv": "convolution_param.bias_term",
                 "innerproduct": "inner_product_param.bias_term"},
    "weight_filler": {"conv": "convolution_param.weight_filler",
                      "innerproduct": "inner_product_param.weight_filler"},
    "bias_filler": {"conv": "convolution_param.bias_filler",
                    "innerproduct": "inner_product_param.bias_filler"},
    "pad": {"conv": "convolution_param.pad", "pool": "pooling_param.pad"},
    "kernelsize": {"conv": "convolution_param.kernel_size",
                   "pool": "pooling_param.kernel_size"},
    "group": {"conv": "convolution_param.group"},
    "stride": {"conv": "convolution_param.stride",
               "pool": "pooling_param.stride"},
    "pool": {"pool": "pooling_param.pool"},
    "dropout_ratio": {"dropout": "dropout_param.dropout_ratio"},
    "local_size": {"lrn": "lrn_param.local_size"},
    "alpha": {"lrn": "lrn_param.alpha"},
    "beta": {"lrn": "lrn_param.beta"},
    "k": {"lrn": "lrn_param.k"},
    "source": {"data": "data_param.source",
               "hdf5_data": "hdf5_data_param.source",
               "images": "image_data_param.source",
               "window_data": "window_data_param.source",
               "infogain_loss": "infogain_loss_param.source"},
    "scale": {None: "transform_param.scale"},
    "meanfile": {None: "transform_param.mean_file"},
    "batchsize": {"data": "data_param.batch_size",
                  "hdf5_data": "hdf5_data_param.batch_size",
                  "images": "image_data_param.batch_size",
                  "window_data": "window_data_param.batch_size"},
    "cropsize": {None: "transform_param.crop_size"},
    "mirror": {None: "transform_param.mirror"},
    "rand_skip": {"data": "data_param.rand_skip",
                  "images": "image_data_param.rand_skip"},
    "shuffle_images": {"images": "image_data_param.shuffle"},
    "new_height": {"images": "image_data_param.new_height"},
    "new_width": {"images": "image_data_param.new_width"},
    "concat_dim": {"concat": "concat_param.concat_dim"},
    "det_fg_threshold": {"window_data": "window_data_param.fg_threshold"},
    "det_bg_threshold": {"window_data": "window_data_param.bg_threshold"},
    "det_fg_fraction": {"window_data": "window_data_param.fg_fraction"},
    "det_context_pad": {"window_data": "window_data_param.context_pad"},
    "det_crop_mode": {"window_data": "window_data_param.crop_mode"},
    "hdf5_output_param": {"hdf5_output": "hdf5_output_param"},
}

# V1 LayerType enum name -> the type string of the current schema.
V1_LAYER_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# Every V1 ``*_param`` message has a same-named field in LayerParameter.
_V1_PARAM_FIELDS = tuple(
    f.name for f in _V1.DESCRIPTOR.fields
    if f.name.endswith("_param") and f.message_type is not None)

# Data layers whose own params once held the transformation options.
_DATA_LAYER_PARAMS = {_V1.DATA: "data_param", _V1.IMAGE_DATA: "image_data_param",
                      _V1.WINDOW_DATA: "window_data_param"}
_OLD_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# SolverParameter.SolverType enum name -> solver type string.
SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}


# ---------------------------------------------------------------------------
# The whole net

def net_needs_upgrade(net):
    """True when any of the upgrade steps below would change ``net``."""
    return (net_needs_v0_to_v1_upgrade(net) or net_needs_v1_to_v2_upgrade(net)
            or net_needs_data_upgrade(net) or net_needs_input_upgrade(net)
            or net_needs_batch_norm_upgrade(net))


def upgrade_net_as_needed(net, source="<net>"):
    """Apply every needed upgrade step to ``net`` in place; True if any ran."""
    changed = False
    if net_needs_v0_to_v1_upgrade(net):
        ok = upgrade_v0_net(net)
        _report(source, "V0 layer definitions ('layers { layer {...} }') to V1", ok)
        changed = True
    if net_needs_data_upgrade(net):
        upgrade_net_data_transformation(net)
        log.info("%s: moved data-layer scale/mean_file/crop_size/mirror into "
                 "transform_param", source)
        changed = True
    if net_needs_v1_to_v2_upgrade(net):
        count = len(net.layers)
        ok = upgrade_v1_net(net)
        _report(source, "%d V1 'layers' (enum types, blobs_lr, weight_decay) "
                "to 'layer'" % count, ok)
        changed = True
    if net_needs_input_upgrade(net):
        names = list(net.input)
        if upgrade_net_input(net):
            log.info("%s: replaced net-level inputs %s with an Input layer", source, names)
        else:
            log.info("%s: dropped net-level inputs %s (no shapes given)", source, names)
        changed = True
    if net_needs_batch_norm_upgrade(net):
        upgrade_net_batch_norm(net)
        log.info("%s: set lr_mult and decay_mult to 0 in the param specs of "
                 "BatchNorm layers (their blobs are statistics, not weights)",
                 source)
        changed = True
    return changed


def _report(source, what, fully_compatible):
    log.info("%s: upgraded %s", source, what)
    if not fully_compatible:
        log.warning("%s: some options had no place in the new format and were "
                    "dropped (see the warnings above)", source)


# ---------------------------------------------------------------------------
# V0 -> V1

def net_needs_v0_to_v1_upgrade(net):
    """True when any ``layers`` entry still wraps a V0 ``layer`` message."""
    return any(conn.HasField("layer") for conn in net.layers)


def upgrade_v0_net(net):
    """Rewrite a V0 net as V1 in place; False if some option was dropped.

    Like Caffe, only the net's name, inputs, input_dim and force_backward
    survive next to the upgraded layers.
    """
    padded = _copy(net)  # on error, ``net`` is left as it was
    upgrade_v0_padding_layers(padded)
    new = pb.NetParameter()
    if padded.HasField("name"):
        new.name = padded.name
    ok = True
    for conn in padded.layers:
        ok &= upgrade_v0_layer_parameter(conn, new.layers.add())
    new.input.extend(padded.input)
    new.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        new.force_backward = padded.force_backward
    net.CopyFrom(new)
    return ok


def upgrade_v0_padding_layers(net):
    """Fold V0 "padding" layers into the pad of the conv/pool layer they feed."""
    old = [_copy(conn) for conn in net.layers]
    kept = []
    producer = {name: None for name in net.input}  # blob -> index of last writer
    for i, conn in enumerate(old):
        if conn.layer.type != "padding":
            kept.append(_copy(conn))
        for j, blob in enumerate(conn.bottom):
            if blob not in producer:
                raise UpgradeError("V0 layer '%s' (bottom %d) reads unknown blob "
                                   "'%s'" % (conn.layer.name, j, blob))
            src = producer[blob]
            if src is None or old[src].layer.type != "padding":
                continue
            _check_padding_pair(old[src], conn)
            kept[-1].layer.pad = old[src].layer.pad
            kept[-1].bottom[j] = old[src].bottom[0]
        for blob in conn.top:
            producer[blob] = i
    del net.layers[:]
    net.layers.extend(kept)


def _check_padding_pair(pad, conn):
    """Caffe folds a padding layer only into a one-input conv or pool layer."""
    name, kind = conn.layer.name, conn.layer.type
    if kind not in ("conv", "pool"):
        raise UpgradeError("V0 padding layer '%s' feeds layer '%s' of type '%s'; "
                           "only 'conv' and 'pool' layers can absorb padding"
                           % (pad.layer.name, name, kind))
    if len(conn.bottom) != 1:
        raise UpgradeError("V0 layer '%s' takes padded input but has %d bottoms "
                           "(expected 1)" % (name, len(conn.bottom)))
    if len(pad.bottom) != 1 or len(pad.top) != 1:
        raise UpgradeError("V0 padding layer '%s' must have exactly one bottom "
                           "and one top (has %d and %d)"
                           % (pad.layer.name, len(pad.bottom), len(pad.top)))


def upgrade_v0_layer_parameter(v0_conn, v1_layer):
    """Fill ``v1_layer`` from a V0 layer connection; False if an option was dropped."""
    v1_layer.Clear()
    v1_layer.bottom.extend(v0_conn.bottom)
    v1_layer.top.extend(v0_conn.top)
    if not v0_conn.HasField("layer"):
        return True
    v0 = v0_conn.layer
    if v0.HasField("name"):
        v1_layer.name = v0.name
    if v0.HasField("type"):
        v1_layer.type = upgrade_v0_layer_type(v0.type)
    v1_layer.blobs.extend(v0.blobs)
    v1_layer.blobs_lr.extend(v0.blobs_lr)
    v1_layer.weight_decay.extend(v0.weight_decay)
    ok = True
    for option, targets in _V0_OPTIONS.items():
        if not v0.HasField(option):
            continue
        target = targets.get(None) or targets.get(v0.type)
        if target is None:
            log.warning("V0 layer '%s': option '%s' does not apply to type '%s'; "
                        "dropped", v0.name, option, v0.type)
            ok = False
            continue
        _assign(v1_layer, target, getattr(v0, option),
                v0.DESCRIPTOR.fields_by_name[option])
    return ok


def upgrade_v0_layer_type(type_name):
    """V0 type string ("conv") -> V1 LayerType enum value (CONVOLUTION)."""
    if type_name not in V0_LAYER_TYPES:
        raise UpgradeError("unknown V0 layer type '%s' (known: %s)"
                           % (type_name, ", ".join(sorted(V0_LAYER_TYPES))))
    return _V1.LayerType.Value(V0_LAYER_TYPES[type_name])


def _assign(msg, path, value, source_field):
    """Set ``msg.<path>`` to value: append if repeated, copy if a message,
    and translate enums by name (V0 pool MAX -> PoolingParameter MAX)."""
    *parents, name = path.split(".")
    for parent in parents:
        msg = getattr(msg, parent)
    field = msg.DESCRIPTOR.fields_by_name[name]
    if field.enum_type is not None:
        label = source_field.enum_type.values_by_number[value].name
        value = field.enum_type.values_by_name[label].number
    if field.is_repeated:
        getattr(msg, name).append(value)
    elif field.message_type is not None:
        getattr(msg, name).CopyFrom(value)
    else:
        setattr(msg, name, value)


# ---------------------------------------------------------------------------
# Data transformation options

def net_needs_data_upgrade(net):
    """True when a V1 data layer keeps transformation options in its own param."""
    return any(_old_transform_fields(conn) for conn in net.layers)


def upgrade_net_data_transformation(net):
    """Move scale/mean_file/crop_size/mirror from data params to transform_param."""
    for conn in net.layers:
        if conn.type not in _DATA_LAYER_PARAMS:
            continue
        data_param = getattr(conn, _DATA_LAYER_PARAMS[conn.type])
        # Caffe's upgrade leaves both messages present, even when empty.
        data_param.SetInParent()
        conn.transform_param.SetInParent()
        for name in _old_transform_fields(conn):
            setattr(conn.transform_param, name, getattr(data_param, name))
            data_param.ClearField(name)


def _old_transform_fields(conn):
    if conn.type not in _DATA_LAYER_PARAMS:
        return []
    data_param = getattr(conn, _DATA_LAYER_PARAMS[conn.type])
    return [name for name in _OLD_TRANSFORM_FIELDS if data_param.HasField(name)]


# ---------------------------------------------------------------------------
# V1 -> current

def net_needs_v1_to_v2_upgrade(net):
    """True when the net has any V1 ``layers`` entries."""
    return len(net.layers) > 0


def upgrade_v1_net(net):
    """Turn every V1 ``layers`` entry into a ``layer``; False if something was dropped."""
    if len(net.layer):
        raise UpgradeError(
            "the net mixes 'layer' (current format) and 'layers' (V1 format) "
            "entries; rewrite the 'layers' entries as 'layer { type: \"...\" }' "
            "to continue")
    for v1_layer in net.layers:  # fail before changing anything
        if v1_layer.HasField("type"):
            upgrade_v1_layer_type(v1_layer.type)
    ok = True
    for i, v1_layer in enumerate(net.layers):
        if not upgrade_v1_layer_parameter(v1_layer, net.layer.add()):
            log.warning("V1 layer %d ('%s') was not upgraded completely",
                        i, v1_layer.name)
            ok = False
    del net.layers[:]
    return ok


def upgrade_v1_layer_parameter(v1_layer, layer):
    """Fill ``layer`` (LayerParameter) from ``v1_layer``; False if something was dropped."""
    layer.Clear()
    layer.bottom.extend(v1_layer.bottom)
    layer.top.extend(v1_layer.top)
    if v1_layer.HasField("name"):
        layer.name = v1_layer.name
    layer.include.extend(v1_layer.include)
    layer.exclude.extend(v1_layer.exclude)
    if v1_layer.HasField("type"):
        layer.type = upgrade_v1_layer_type(v1_layer.type)
    layer.blobs.extend(v1_layer.blobs)
    _upgrade_param_specs(v1_layer, layer)
    layer.loss_weight.extend(v1_layer.loss_weight)
    for name in _V1_PARAM_FIELDS:
        if v1_layer.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1_layer, name))
    if v1_layer.HasField("layer"):
        log.warning("V1 layer '%s' still holds a V0 'layer' message; ignored",
                    v1_layer.name)
        return False
    return True


def _upgrade_param_specs(v1_layer, layer):
    """V1's parallel lists (param names, share modes, blobs_lr, weight_decay)
    become one ParamSpec per learnable blob."""
    def spec(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1_layer.param):
        spec(i).name = name
    for i, mode in enumerate(v1_layer.blob_share_mode):
        label = _V1.DimCheckMode.Name(mode)
        spec(i).share_mode = pb.ParamSpec.DimCheckMode.Value(label)
    for i, lr in enumerate(v1_layer.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1_layer.weight_decay):
        spec(i).decay_mult = decay


def upgrade_v1_layer_type(v1_type):
    """V1 LayerType enum value (CONVOLUTION) -> type string ("Convolution")."""
    value = _V1.LayerType.DESCRIPTOR.values_by_number.get(v1_type)
    if value is None or value.name not in V1_LAYER_TYPES:
        raise UpgradeError("unknown V1 layer type %r" % v1_type)
    return V1_LAYER_TYPES[value.name]


# ---------------------------------------------------------------------------
# Net-level inputs

def net_needs_input_upgrade(net):
    """True when the net declares inputs with the net-level ``input`` field."""
    return len(net.input) > 0


def upgrade_net_input(net):
    """Replace ``input`` + ``input_shape``/``input_dim`` with a leading Input layer.

    Inputs without any shape (as in old .caffemodel files) are simply dropped.
    ``input_shape`` wins over ``input_dim`` when both are given, as in Caffe.
    Returns True if an Input layer was added.
    """
    names = list(net.input)
    if len(net.input_shape):
        shapes = list(net.input_shape)
        if len(shapes) < len(names):
            raise UpgradeError("%d net inputs but %d input_shape entries; give "
                               "one input_shape per input"
                               % (len(names), len(shapes)))
    elif len(net.input_dim):
        dims = list(net.input_dim)
        if len(dims) < 4 * len(names):
            raise UpgradeError("%d net inputs need %d input_dim values (4 per "
                               "input), got %d"
                               % (len(names), 4 * len(names), len(dims)))
        shapes = [pb.BlobShape(dim=dims[4 * i:4 * i + 4])
                  for i in range(len(names))]
    else:
        shapes = None
    if shapes is not None:
        layer = pb.LayerParameter(name="input", type="Input", top=names)
        layer.input_param.shape.extend(shapes[:len(names)])
        rest = [_copy(l) for l in net.layer]
        del net.layer[:]
        net.layer.extend([layer] + rest)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    return shapes is not None


# ---------------------------------------------------------------------------
# BatchNorm

def net_needs_batch_norm_upgrade(net):
    """True when a BatchNorm layer declares the three param specs of the old
    definition and one of them still lets the solver update its statistics.

    (Caffe's test stops at "three specs", so it re-runs on already upgraded
    nets; checking the values as well makes the upgrade report only real work.)
    """
    return any(_is_old_batch_norm(layer) and not all(
        _is_zero(spec, "lr_mult") and _is_zero(spec, "decay_mult")
        for spec in layer.param) for layer in net.layer)


def upgrade_net_batch_norm(net):
    """Set lr_mult and decay_mult to 0 in old-style BatchNorm param specs.

    The specs (and their names, which share blobs) stay, as in Caffe since
    2017; the first version of this upgrade removed them instead.
    """
    for layer in net.layer:
        if _is_old_batch_norm(layer):
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


def _is_old_batch_norm(layer):
    return layer.type == "BatchNorm" and len(layer.param) == 3


def _is_zero(spec, name):
    return spec.HasField(name) and getattr(spec, name) == 0


# ---------------------------------------------------------------------------
# Solver

def solver_needs_type_upgrade(solver):
    """True when the solver uses the old ``solver_type`` enum."""
    return solver.HasField("solver_type")


def upgrade_solver_type(solver):
    """Replace ``solver_type: ADAM`` with ``type: "Adam"``; False if nothing to do."""
    if not solver.HasField("solver_type"):
        return False
    if solver.HasField("type"):
        raise UpgradeError("the solver sets both the old 'solver_type' (enum) and "
                           "the new 'type' (string) field; keep only 'type'")
    label = pb.SolverParameter.SolverType.Name(solver.solver_type)
    if label not in SOLVER_TYPES:
        raise UpgradeError("unknown solver_type %s" % label)
    solver.type = SOLVER_TYPES[label]
    solver.ClearField("solver_type")
    return True


def upgrade_solver_as_needed(solver, source="<solver>"):
    """Apply every needed solver upgrade in place; True if any ran."""
    if not solver_needs_type_upgrade(solver):
        return False
    upgrade_solver_type(solver)
    log.info("%s: replaced the deprecated 'solver_type' enum with type: \"%s\"",
             source, solver.type)
    return True


def upgrade_snapshot_prefix(solver, param_file):
    """Give the solver a snapshot_prefix as Caffe does when reading a solver file.

    Unset: the solver file's path without its extension. A directory: that
    directory joined with the solver file's name without its extension.
    Returns True if the prefix changed.
    """
    stem = os.path.splitext(os.path.basename(param_file))[0]
    if not solver.HasField("snapshot_prefix"):
        solver.snapshot_prefix = os.path.splitext(param_file)[0]
        log.info("snapshot_prefix was not set; using %s", solver.snapshot_prefix)
    elif os.path.isdir(solver.snapshot_prefix):
        solver.snapshot_prefix = os.path.join(solver.snapshot_prefix, stem)
        log.info("snapshot_prefix is a directory; using %s",
                 solver.snapshot_prefix)
    else:
        return False
    return True


def _copy(msg):
    new = type(msg)()
    new.CopyFrom(msg)
    return new
