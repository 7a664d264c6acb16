"""jcaffe.draw / `jcaffe draw`: the produced files are opened and checked (format,
non-empty, one node per layer and per blob), colours follow need-backward and diffs."""
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

pydot = pytest.importorskip("pydot")

import jcaffe  # noqa: E402
from jcaffe import cli, draw  # noqa: E402
from netutil import make_net, write_prototxt  # noqa: E402

NET = """
name: "drawn"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "py" type: "Python" bottom: "data" top: "py"
  python_param { module: "pylayers" layer: "Identity" } }
layer { name: "ip1" type: "InnerProduct" bottom: "py" top: "ip1"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "side" type: "TanH" bottom: "ip1" top: "side" }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "loss2" type: "EuclideanLoss" bottom: "side" bottom: "label" top: "loss2" }
"""


def have_renderer(fmt="svg"):
    try:
        draw.find_renderer(fmt)
        return True
    except draw.GraphvizNotFoundError:
        return False


needs_renderer = pytest.mark.skipif(not have_renderer(), reason="no Graphviz renderer (dot or graphviz-pure)")


@pytest.fixture
def net(tmp_path):
    return make_net(tmp_path, NET)


def expected_nodes(net):
    return len(net.layers) + len(net.blobs)


def test_graph_has_one_node_per_layer_and_blob(net):
    g = draw.get_pydot_graph(net, "LR")
    nodes = [n for n in g.get_nodes() if n.get_name() not in ("node", "edge", "graph")]
    assert len(nodes) == expected_nodes(net)
    # the auto-inserted splits (ip1 and label are read twice) are layers of the graph
    labels = " ".join(n.get("label") for n in nodes)
    assert "ip1_relu_0_split" in labels and "label_data_1_split" in labels


def test_colours_follow_need_backward_and_diffs(net):
    g = draw.get_pydot_graph(net, "TB")
    by_label = {n.get("label").strip('"').split("\\n")[0].split(" ")[0]: n for n in g.get_nodes()}
    assert by_label["ip1"].get("fillcolor") == draw.BACKWARD_COLOR       # learnable
    assert by_label["py"].get("fillcolor") == draw.NO_BACKWARD_COLOR     # nothing learnable below
    assert by_label["py"].get("shape") == "box3d"                        # a Python layer
    # blob nodes: data gets no diff, ip1 does; loss tops are marked as such
    blobs = {n.get("label").strip('"').split("\\n")[0]: n for n in g.get_nodes()
             if n.get("shape") == "octagon"}
    assert blobs["data"].get("fillcolor") == draw.NO_DIFF_BLOB_COLOR
    assert blobs["ip1"].get("fillcolor") == draw.DIFF_BLOB_COLOR
    assert blobs["loss"].get("fillcolor") == draw.LOSS_BLOB_COLOR
    split = [n for n in g.get_nodes() if "auto" not in (n.get("label") or "")
             and "split" in (n.get("label") or "") and n.get("shape") == "box"]
    assert split and all("dashed" in n.get("style") for n in split)
    in_place = [e for e in g.get_edges() if e.get("label") == "in-place"]
    assert len(in_place) == 1 and in_place[0].get("style") == "dashed"


def test_dot_file_needs_no_renderer(net, tmp_path):
    out = draw.draw_net_to_file(net, tmp_path / "n.dot")
    (g,) = pydot.graph_from_dot_file(out)
    names = {n.get_name() for n in g.get_nodes()} - {"node", "edge", "graph"}
    assert len(names) == expected_nodes(net)


@needs_renderer
def test_svg_file(net, tmp_path):
    out = draw.draw_net_to_file(net, tmp_path / "n.svg", rankdir="TB")
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    nodes = [g for g in root.iter() if g.tag.endswith("}g") and g.get("class") == "node"]
    assert len(nodes) == expected_nodes(net)


@needs_renderer
def test_png_file(net, tmp_path):
    out = draw.draw_net_to_file(net, tmp_path / "n.png")
    data = open(out, "rb").read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 50 and im.size[1] > 50


@pytest.mark.skipif(shutil.which("dot") is None, reason="pdf needs Graphviz's dot")
def test_pdf_file(net, tmp_path):
    out = draw.draw_net_to_file(net, tmp_path / "n.pdf")
    data = open(out, "rb").read()
    assert data.startswith(b"%PDF")


def test_missing_graphviz_is_a_clear_error(net, tmp_path, monkeypatch):
    monkeypatch.setattr(draw.shutil, "which", lambda *a, **k: None)
    with pytest.raises(draw.GraphvizNotFoundError, match="no Graphviz 'dot' program found"):
        draw.draw_net_to_file(net, tmp_path / "n.png")
    path = write_prototxt(tmp_path, NET)
    assert cli.main(["draw", path, str(tmp_path / "c.png")]) == 1
    assert not (tmp_path / "c.png").exists()


def test_pdf_without_dot_says_what_to_install(net, tmp_path, monkeypatch):
    real = shutil.which
    monkeypatch.setattr(draw.shutil, "which",
                        lambda prog, **k: None if prog == "dot" else real(prog, **k))
    if not have_renderer("svg"):
        pytest.skip("no graphviz-pure")
    with pytest.raises(draw.GraphvizNotFoundError, match="needs Graphviz's dot program"):
        draw.draw_net_to_file(net, tmp_path / "n.pdf")


def test_pycaffe_names_and_netparameter_input(tmp_path):
    from jcaffe import protoio
    for name in ("draw_net", "draw_net_to_file", "get_pydot_graph", "get_layer_label", "get_edge_label",
                 "choose_color_by_layertype", "get_pooling_types_dict", "get_layer_lr_mult"):
        assert callable(getattr(draw, name))
    param = protoio.read_net_param(write_prototxt(tmp_path, NET))
    g = draw.get_pydot_graph(param, "LR", phase=jcaffe.TRAIN)
    # 7 layers + 2 splits, 7 blobs + 4 split copies
    assert len(g.get_nodes()) == 20 == expected_nodes(jcaffe.Net(param, jcaffe.TRAIN))


def test_net_that_cannot_be_built_is_drawn_plain(tmp_path):
    from jcaffe import protoio
    text = """
layer { name: "data" type: "NoSuchData" top: "data" }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
"""
    param = protoio.read_net_param(write_prototxt(tmp_path, text))
    g = draw.get_pydot_graph(param, "LR")
    assert len(g.get_nodes()) == 3 + 2
    assert "not colour-coded" in g.get_label()


def test_cli_draw(tmp_path, capsys):
    path = write_prototxt(tmp_path, NET)
    out = tmp_path / "cli.dot"
    assert cli.main(["draw", path, str(out), "--rankdir", "TB"]) == 0
    assert "rankdir=TB" in out.read_text()
    assert cli.main(["draw", path, str(out), "--rankdir", "XX"]) == 2
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: ")
    capsys.readouterr()
    assert cli.main(["draw", str(bad), str(out)]) == 1
    assert re.search(r"bad\.prototxt:\d+", capsys.readouterr().err)


def test_cli_draw_stage_and_level(tmp_path):
    text = NET.replace('layer { name: "loss2"', 'layer { name: "loss2" include { stage: "extra" min_level: 1 }')
    path = write_prototxt(tmp_path, text)
    out = tmp_path / "s.dot"
    assert cli.main(["draw", path, str(out)]) == 0
    assert "loss2" not in out.read_text()
    assert cli.main(["draw", path, str(out), "--stage", "extra", "--level", "1"]) == 0
    assert "loss2" in out.read_text()
