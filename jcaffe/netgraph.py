"""Net-level rewrites done before any layer exists: phase/stage/level filtering
and Split insertion, with Caffe's rules, names and log lines."""
import logging

from .errors import NetGraphError
from .proto import caffe_pb2

log = logging.getLogger("jcaffe")


def state_meets_rule(state, rule, layer_name):
    """Caffe's StateMeetsRule: phase, min/max level, all stages, no not_stage."""
    phase_name = caffe_pb2.Phase.Name
    if rule.HasField("phase") and rule.phase != state.phase:
        log.info("The NetState phase (%s) differed from the phase (%s) specified by a rule in layer %s",
                 phase_name(state.phase), phase_name(rule.phase), layer_name)
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        log.info("The NetState level (%d) is above the min_level (%d) specified by a rule in layer %s",
                 state.level, rule.min_level, layer_name)
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        log.info("The NetState level (%d) is above the max_level (%d) specified by a rule in layer %s",
                 state.level, rule.max_level, layer_name)
        return False
    for stage in rule.stage:
        if stage not in state.stage:
            log.info("The NetState did not contain stage '%s' specified by a rule in layer %s",
                     stage, layer_name)
            return False
    for stage in rule.not_stage:
        if stage in state.stage:
            log.info("The NetState contained a not_stage '%s' specified by a rule in layer %s",
                     stage, layer_name)
            return False
    return True


def filter_net(param):
    """Caffe's FilterNet: keep the layers whose include/exclude rules admit ``param.state``."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        if layer.include and layer.exclude:
            raise NetGraphError("layer '%s': specify either include rules or exclude rules; not both"
                                % layer.name)
        if layer.include:
            keep = any(state_meets_rule(param.state, r, layer.name) for r in layer.include)
        else:
            keep = not any(state_meets_rule(param.state, r, layer.name) for r in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


def split_layer_name(layer_name, blob_name, top_index):
    return "%s_%s_%d_split" % (blob_name, layer_name, top_index)


def split_blob_name(layer_name, blob_name, top_index, split_index):
    return "%s_%s_%d_split_%d" % (blob_name, layer_name, top_index, split_index)


def insert_splits(param):
    """Caffe's InsertSplits: a top read by several bottoms (a loss weight counts as a
    reader) gets a Split layer right after its producer, one top per reader."""
    last_producer = {}        # blob name -> (layer index, top index)
    source_of_bottom = {}     # (layer, bottom) -> (layer, top)
    readers = {}              # (layer, top) -> number of readers
    loss_weight_of = {}       # (layer, top) -> loss weight
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_producer:
                raise NetGraphError("Unknown bottom blob '%s' (layer '%s', bottom index %d)"
                                    % (name, layer.name, j))
            src = last_producer[name]
            source_of_bottom[(i, j)] = src
            readers[src] = readers.get(src, 0) + 1
        for j, name in enumerate(layer.top):
            last_producer[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            src = last_producer[layer.top[j]]
            loss_weight_of[src] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                readers[src] = readers.get(src, 0) + 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split_index = {}
    for i, layer in enumerate(param.layer):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            src = source_of_bottom[(i, j)]
            if readers.get(src, 0) > 1:
                k = next_split_index.get(src, 0)
                next_split_index[src] = k + 1
                new.bottom[j] = split_blob_name(param.layer[src[0]].name, name, src[1], k)
        for j, name in enumerate(layer.top):
            count = readers.get((i, j), 0)
            if count <= 1:
                continue
            weight = loss_weight_of.get((i, j), 0.0)
            split = out.layer.add()
            split.name = split_layer_name(layer.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            for k in range(count):
                split.top.append(split_blob_name(layer.name, name, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                del new.loss_weight[:]
                next_split_index[(i, j)] = next_split_index.get((i, j), 0) + 1
    return out
