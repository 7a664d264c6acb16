"""Draw a net as a graph, like pycaffe's ``caffe.draw`` (same function names),
with what jcaffe knows on top: layers coloured by whether they run backward,
blobs by whether they receive a diff, auto-inserted Split layers and in-place
edges visible.

Graphviz is used through pydot (the ``draw`` extra: ``pip install
jcaffe[draw]``). Rendering needs a Graphviz ``dot`` program: Graphviz's own when
it is on PATH, otherwise the ``graphviz-pure`` command (a self-contained port of
``dot`` installed from PyPI by the ``draw`` extra; it writes svg and png, not
pdf). Writing ``.dot`` needs no renderer.

``caffe_net`` may be a :class:`jcaffe.Net` (the coloured graph), a NetParameter
or a prototxt path: then a Net is built for ``phase`` (TRAIN when None) to get
the colours; if that fails (a data layer's source missing, say), the plain
pycaffe-style graph of the NetParameter is drawn instead.
"""
import os
import shutil
import sysconfig

from .errors import JcaffeError
from .proto import caffe_pb2

# pycaffe's styles, plus ours.
LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}

BACKWARD_COLOR = "#F4A582"      # layer runs backward
NO_BACKWARD_COLOR = "#D9D9D9"   # layer's backward is skipped
DIFF_BLOB_COLOR = "#92C5DE"     # blob receives a diff
NO_DIFF_BLOB_COLOR = "#FFFFFF"  # blob gets no diff
LOSS_BLOB_COLOR = "#FDDBC7"     # a loss top (its diff is the loss weight)

RENDERERS = ("dot", "graphviz-pure")
PURE_FORMATS = ("svg", "png", "jpg", "jpeg", "dot", "xdot", "json", "plain", "canon")


class GraphvizNotFoundError(JcaffeError, RuntimeError):
    """No Graphviz program to render the graph with."""


def _pydot():
    try:
        import pydot
    except ImportError:
        raise GraphvizNotFoundError(
            "drawing needs pydot: pip install 'jcaffe[draw]' (pydot and graphviz-pure)") from None
    return pydot


def find_renderer(fmt=None):
    """The Graphviz program to run: ``dot`` on PATH, else ``graphviz-pure`` (pdf and
    ps need Graphviz's own ``dot``). Raises GraphvizNotFoundError saying what to install."""
    scripts = sysconfig.get_path("scripts")
    for prog in RENDERERS:
        path = shutil.which(prog) or shutil.which(prog, path=scripts)
        if path is None:
            continue
        if prog == "graphviz-pure" and fmt is not None and fmt not in PURE_FORMATS:
            raise GraphvizNotFoundError(
                "format '%s' needs Graphviz's dot program, which is not on PATH (graphviz-pure, "
                "found at %s, writes %s only): install Graphviz (apt-get install graphviz, "
                "brew install graphviz) or choose .svg/.png" % (fmt, path, ", ".join(PURE_FORMATS)))
        return path
    raise GraphvizNotFoundError(
        "no Graphviz 'dot' program found on PATH (nor graphviz-pure): install Graphviz "
        "(apt-get install graphviz, brew install graphviz) or pip install 'jcaffe[draw]', "
        "or write a .dot file, which needs no renderer")


def get_pooling_types_dict():
    """{PoolMethod value: name} (pycaffe)."""
    d = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name
    return {v.number: k for k, v in d.items()}


def get_edge_label(layer):
    """Edge label: for a data layer its batch size, else the number of outputs (pycaffe)."""
    if layer.type == "Data":
        return "Batch " + str(layer.data_param.batch_size)
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """The lr_mults of a layer's params as a label (pycaffe)."""
    lr_mult = [p.lr_mult for p in layer.param]
    if layer.type in ("Convolution", "Deconvolution", "InnerProduct") and not lr_mult:
        lr_mult = [1.0, 1.0]
    return ", ".join("%g" % m for m in lr_mult) or "-"


def get_layer_label(layer, rankdir, display_lrm=False):
    """A layer node's label: name, type, and key params (pycaffe)."""
    separator = " " if rankdir in ("TB", "BT") else "\\n"
    label = "%s%s(%s)" % (layer.name, separator, layer.type)
    if layer.type in ("Convolution", "Deconvolution"):
        cp = layer.convolution_param
        k = cp.kernel_size[0] if cp.kernel_size else (cp.kernel_h or 1)
        s = cp.stride[0] if cp.stride else (cp.stride_h or 1)
        p = cp.pad[0] if cp.pad else (cp.pad_h or 0)
        label += "%skernel size: %d%sstride: %d%spad: %d" % (separator, k, separator, s, separator, p)
    elif layer.type == "Pooling":
        pp = layer.pooling_param
        label += "%spool: %s%skernel size: %d%sstride: %d%spad: %d" % (
            separator, get_pooling_types_dict()[pp.pool], separator, pp.kernel_size or pp.kernel_h,
            separator, pp.stride or pp.stride_h or 1, separator, pp.pad or pp.pad_h)
    if display_lrm:
        label += "%slr mult: %s" % (separator, get_layer_lr_mult(layer))
    return label


def choose_color_by_layertype(layertype):
    """pycaffe's colours by layer type (used when no Net could be built)."""
    if layertype in ("Convolution", "Deconvolution"):
        return "#FF5050"
    if layertype == "Pooling":
        return "#FF9900"
    if layertype == "InnerProduct":
        return "#CC33FF"
    return "#6495ED"


def _as_net(caffe_net, phase):
    from .net import Net
    from . import protoio
    if isinstance(caffe_net, Net):
        return caffe_net, None
    if isinstance(caffe_net, caffe_pb2.NetParameter):
        param = caffe_net
    else:
        param = protoio.read_net_param(os.fspath(caffe_net))
    try:
        stages, level = list(param.state.stage), param.state.level
        bare = caffe_pb2.NetParameter()
        bare.CopyFrom(param)
        bare.state.ClearField("stage")
        return Net(bare, caffe_pb2.TRAIN if phase is None else phase, level=level, stages=stages), None
    except JcaffeError as e:
        return None, (param, e)


def get_pydot_graph(caffe_net, rankdir="LR", label_edges=True, phase=None, display_lrm=False):
    """A pydot.Dot of the net. Node ids: ``layer<i>`` and ``blob<j>``; one node per
    layer (auto-inserted splits included) and one per blob."""
    pydot = _pydot()
    net, fallback = _as_net(caffe_net, phase)
    if net is None:
        return _plain_graph(pydot, fallback[0], rankdir, label_edges, phase, display_lrm, fallback[1])
    ex = net.explain()
    graph = pydot.Dot(net.name or "Net", graph_type="digraph", rankdir=rankdir, compound="true")
    graph.set_label(_legend(net.name, ex.phase, ex.force_backward))
    graph.set_labelloc("t")
    blob_ids = {}
    for j, b in enumerate(ex.blobs):
        blob_ids[b.name] = "blob%d" % j
        color = (LOSS_BLOB_COLOR if b.loss_weight else
                 DIFF_BLOB_COLOR if b.receives_diff else NO_DIFF_BLOB_COLOR)
        label = b.name + ("\\n(copy of %s)" % b.split_of if b.split_of else "")
        label += "\\n%s" % ("x".join(str(d) for d in b.shape) or "scalar")
        graph.add_node(pydot.Node(blob_ids[b.name], label=_q(label), shape="octagon",
                                  style="filled", fillcolor=color,
                                  tooltip=_q("diff: %s" % ("yes" if b.receives_diff else "no"))))
    for rep in ex.layers:
        lid = "layer%d" % rep.index
        lp = net._slots[rep.index].layer.layer_param
        label = get_layer_label(lp, rankdir, display_lrm)
        label += "\\nbackward: %s" % ("yes" if rep.needs_backward else "no")
        style = "filled,dashed" if rep.auto_split else "filled"
        shape = "box3d" if rep.python_class else "box"
        graph.add_node(pydot.Node(lid, label=_q(label), shape=shape, style=style,
                                  fillcolor=BACKWARD_COLOR if rep.needs_backward else NO_BACKWARD_COLOR,
                                  tooltip=_q(rep.reason)))
        edge_label = get_edge_label(lp) if label_edges else '""'
        for j, (b, bd) in enumerate(zip(rep.bottoms, rep.bottom_diffs)):
            graph.add_edge(pydot.Edge(blob_ids[b], lid, color="#B2182B" if bd.receives_diff else "#808080",
                                      penwidth="2" if bd.receives_diff else "1",
                                      tooltip=_q("diff to %s: %s" % (b, "yes" if bd.receives_diff else "no"))))
        for t in rep.tops:
            graph.add_edge(_top_edge(pydot, lid, blob_ids[t], t in rep.in_place, edge_label))
    return graph


def _top_edge(pydot, lid, blob_id, in_place, label):
    """Layer -> top edge: dashed "in-place" (not ranking the graph) when the top is a bottom."""
    if in_place:
        return pydot.Edge(lid, blob_id, style="dashed", label="in-place", constraint="false")
    return _edge(pydot, lid, blob_id, label=label)


def _edge(pydot, src, dst, **attrs):
    return pydot.Edge(src, dst, **{k: v for k, v in attrs.items() if v not in (None, '""')})


def _legend(name, phase, force_backward):
    return _q("%s (%s%s)\\norange layer: runs backward, grey: backward skipped; blue blob: receives a "
              "diff, pink: loss top; dashed box: auto-inserted split; dashed edge: in-place"
              % (name or "Net", phase, ", force_backward" if force_backward else ""))


def _q(s):
    return '"%s"' % s.replace('"', '\\"')


def _plain_graph(pydot, param, rankdir, label_edges, phase, display_lrm, error):
    """pycaffe's drawing of a NetParameter (no Net could be built: no colours)."""
    graph = pydot.Dot(param.name or "Net", graph_type="digraph", rankdir=rankdir)
    graph.set_label(_q("%s (not colour-coded: %s)" % (param.name or "Net", str(error).splitlines()[0]
                                                      .replace("\\", "/"))))
    blob_ids, n = {}, 0
    for i, layer in enumerate(param.layer):
        if phase is not None:
            included = (not layer.include or any(r.phase == phase for r in layer.include if r.HasField("phase"))
                        or any(not r.HasField("phase") for r in layer.include))
            if not included or any(r.HasField("phase") and r.phase == phase for r in layer.exclude):
                continue
        lid = "layer%d" % i
        graph.add_node(pydot.Node(lid, label=_q(get_layer_label(layer, rankdir, display_lrm)),
                                  shape="record", style="filled",
                                  fillcolor=choose_color_by_layertype(layer.type)))
        for b in layer.bottom:
            if b not in blob_ids:
                blob_ids[b] = "blob%d" % n
                n += 1
                graph.add_node(pydot.Node(blob_ids[b], label=_q(b), **BLOB_STYLE))
            graph.add_edge(pydot.Edge(blob_ids[b], lid))
        edge_label = get_edge_label(layer) if label_edges else None
        for t in layer.top:
            if t not in blob_ids:
                blob_ids[t] = "blob%d" % n
                n += 1
                graph.add_node(pydot.Node(blob_ids[t], label=_q(t), **BLOB_STYLE))
            graph.add_edge(_top_edge(pydot, lid, blob_ids[t], t in layer.bottom, edge_label))
    return graph


def draw_net(caffe_net, rankdir="LR", ext="png", phase=None, display_lrm=False):
    """The drawing as bytes in format ``ext`` (pycaffe)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    return render(graph, ext)


def render(graph, ext):
    ext = ext.lower().lstrip(".")
    if ext in ("dot", "gv"):
        return graph.to_string().encode("utf-8")
    prog = find_renderer(ext)
    try:
        return graph.create(prog=prog, format=ext)
    except Exception as e:  # pydot raises a bare exception with the program's stderr
        raise GraphvizNotFoundError("%s failed to render format '%s': %s" % (prog, ext, e)) from e


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Draw to ``filename``; the format is its extension (png, svg, pdf, dot, ...)."""
    filename = os.fspath(filename)
    ext = os.path.splitext(filename)[1].lstrip(".") or "png"
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    tmp = filename + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, filename)
    return filename
