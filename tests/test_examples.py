"""The examples, shortened: quickstart, the README's main job (examples/digits), the Python-layer
examples and the saliency map; each trains and generalizes."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples", "quickstart"))

import train  # noqa: E402


def test_quickstart_trains_to_high_accuracy(tmp_path):
    lines = []
    accuracy = train.train(iters=150, out_dir=str(tmp_path), log=lines.append)
    assert accuracy > 0.9, lines
    assert os.path.getsize(tmp_path / "bars.caffemodel") > 0
    assert any(l.startswith("iteration  150") for l in lines)


# ---------------------------------------------------------------------------
# examples/digits (the README's main job), python_layers, saliency: shortened runs

import importlib.util  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from netutil import kept_jcaffe_logger  # noqa: E402

EXAMPLES = os.path.join(HERE, "..", "examples")


def load_example(relpath, name):
    """Import an example script under a unique module name (several are called train.py)."""
    folder = os.path.dirname(os.path.join(EXAMPLES, relpath))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("digits")
    digits = load_example("digits/train.py", "digits_train")
    lines = []
    with kept_jcaffe_logger():      # train() sends the log to this test's (soon closed) stdout
        accuracy = digits.train(iters=300, out_dir=str(out), log=lines.append, verbose=False)
    return out, accuracy, lines


def test_digits_example_trains_from_lmdb(digits_run):
    out, accuracy, lines = digits_run
    assert accuracy >= 0.93, lines          # the full run (2000 iterations) reaches >= 0.97
    assert os.path.getsize(out / "digits_lenet.caffemodel") > 0
    assert (out / "digits_train_lmdb" / "data.mdb").exists()
    right = [l for l in lines if l.endswith(" right")]
    assert right and int(right[0].split()[0]) >= 6, lines


def test_digits_solver_prototxt_runs_from_the_repo_root(tmp_path, monkeypatch, digits_run):
    """lenet_solver.prototxt as `jcaffe train -solver` would read it (paths from the repo root)."""
    import jcaffe
    out, _, _ = digits_run
    root = os.path.join(HERE, "..")
    monkeypatch.chdir(root)
    sp = jcaffe.protoio.read_solver_param("examples/digits/lenet_solver.prototxt")
    net = jcaffe.protoio.read_net_param(sp.net)
    assert [l.data_param.source for l in net.layer if l.type == "Data"] == [
        "examples/digits/output/digits_train_lmdb", "examples/digits/output/digits_test_lmdb"]
    assert sp.test_iter[0] * [l for l in net.layer if l.type == "Data"][1].data_param.batch_size == 360


def test_sign_task_backward_skipped_until_force_backward():
    sign = load_example("python_layers/sign_task.py", "sign_task")
    lines = []
    skipped = sign.run(False, iters=60, log=lines.append)
    forced = sign.run(True, iters=60, log=lines.append)
    assert skipped["backward_calls"] == 0 and skipped["input_grad"] == 0
    assert "softsign does not need backward computation." in skipped["lines"]
    assert forced["backward_calls"] == 61 and forced["input_grad"] > 0
    assert "softsign needs backward computation after all: force_backward is true." in forced["lines"]
    assert skipped["accuracy"] > 0.9 and forced["accuracy"] > 0.9


@pytest.mark.parametrize("jax_layers", [False, True])
def test_onehot_euclidean_lenet(digits_run, jax_layers):
    out, _, _ = digits_run
    onehot = load_example("python_layers/train_onehot_lenet.py", "train_onehot_lenet")
    lines = []
    accuracy = onehot.train(iters=150, out_dir=str(out), log=lines.append, verbose=False,
                            jax_layers=jax_layers)
    assert accuracy > 0.8, lines
    assert lines[-1].startswith("one-hot + Python EuclideanLoss LeNet (%s layers)"
                                % ("JAX" if jax_layers else "numpy"))


def test_saliency_map(digits_run, tmp_path):
    from PIL import Image
    out, _, _ = digits_run
    sal_mod = load_example("net_surgery_and_visualization/saliency.py", "saliency")
    png = tmp_path / "s.png"
    sal = sal_mod.main(["--weights", str(out / "digits_lenet.caffemodel"), "--out", str(png)],
                       log=lambda *_: None)
    assert sal.shape == (8, 8) and sal.max() > 0 and np.isfinite(sal).all()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (8 * 16 * 2 + 8, 8 * 16)
