"""benchmarks/check_ports.py: a published deploy prototxt, run by jcaffe and by the
benchmarks' pure-JAX reference, blob for blob."""
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import check_ports  # noqa: E402
import nets  # noqa: E402

# a deploy file as the ports write them: net inputs by input/input_shape, a fork's
# ceil_mode, a final Softmax (10 classes: nets.feeds draws labels below 10)
PORT = """
name: "port"
input: "data"
input_shape { dim: 1 dim: 3 dim: 13 dim: 13 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { use_global_stats: true } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_a_port_agrees_blob_for_blob(tmp_path, capsys):
    (tmp_path / "deploy_a.prototxt").write_text(PORT)
    assert check_ports.main(str(tmp_path / "*.prototxt")) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK   ")
    assert "ceil_mode read as round_mode" in out and "1 of 1 OK" in out
    param, final, _ = check_ports.deploy_param(PORT)
    assert final == "fc" and [l.type for l in param.layer][-1] == "InnerProduct"
    assert list(param.layer[0].input_param.shape[0].dim) == [1, 3, 13, 13]


def test_a_difference_and_a_failure_are_reported(tmp_path, capsys, monkeypatch):
    (tmp_path / "deploy_a.prototxt").write_text(PORT)
    (tmp_path / "deploy_b.prototxt").write_text(
        PORT.replace('type: "ReLU"', 'type: "ReLU6"'))
    # jcaffe left with its own fillers' weights: the reference's differ
    monkeypatch.setattr(nets, "load_reference_params", lambda net, param: None)
    assert check_ports.main(str(tmp_path / "*.prototxt")) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("DIFF ") and "deploy_a" in lines[0]
    assert lines[1].startswith("FAIL ") and "ReLU6" in lines[1] and "Clip" in lines[1]
    assert lines[2] == "0 of 2 OK"


def test_train_compares_every_params_diff_with_jax_grad(tmp_path, capsys, monkeypatch):
    """--train: two images and labels, a SoftmaxWithLoss on the last top, BatchNorm on
    batch statistics; jcaffe's diffs against jax.grad of the reference."""
    (tmp_path / "deploy_a.prototxt").write_text(PORT)
    assert check_ports.main(str(tmp_path / "*.prototxt"), train=True) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK   ") and " 6 diffs," in out   # loss, conv1, scale1 x2, fc x2
    param, final, _ = check_ports.deploy_param(PORT)
    train = check_ports.train_param(param, final)
    assert [l.type for l in train.layer][-1] == "SoftmaxWithLoss"
    assert not any(l.batch_norm_param.HasField("use_global_stats") for l in train.layer)
    monkeypatch.setattr(nets, "load_reference_params", lambda net, param: None)
    assert check_ports.main(str(tmp_path / "*.prototxt"), train=True) == 1
    assert capsys.readouterr().out.startswith("DIFF ")
