"""jcaffe.rng: the layers' in-step draws are JAX's classic threefry (partitionable off
while they trace, which compiles about ten times faster on the CPU), and the user's JAX
configuration is left as it was."""
import jax
import numpy as np

import jcaffe
from jcaffe import rng
from netutil import make_net


def test_draws_are_the_classic_threefry_and_jax_keeps_its_setting():
    before = jax.config.jax_threefry_partitionable
    key = jax.random.PRNGKey(5)
    with jax.threefry_partitionable(False):
        classic = (jax.random.bernoulli(key, 0.3, (4, 7)),
                   jax.random.uniform(key, (4, 7), np.float32, -1.0, 2.0),
                   jax.random.normal(key, (4, 7), np.float32))
    with jax.threefry_partitionable(True):
        partitionable = jax.random.normal(key, (4, 7), np.float32)
    for got in (jax.jit(lambda k: (rng.bernoulli(k, 0.3, (4, 7)),
                                   rng.uniform(k, (4, 7), np.float32, -1.0, 2.0),
                                   rng.normal(k, (4, 7), np.float32)))(key),
                (rng.bernoulli(key, 0.3, (4, 7)), rng.uniform(key, (4, 7), np.float32, -1.0, 2.0),
                 rng.normal(key, (4, 7), np.float32))):
        for g, c in zip(got, classic):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(c))
    assert not np.array_equal(np.asarray(classic[2]), np.asarray(partitionable))
    assert jax.config.jax_threefry_partitionable == before


def test_dropout_and_dummy_data_draw_the_same_whatever_jax_is_set_to(tmp_path):
    """Two nets of the same seed, one run with JAX's partitionable threefry on and one
    with it off, draw the same DummyData and Dropout values (without jcaffe.rng the
    first would draw JAX's partitionable stream)."""
    text = """
layer { name: "d" type: "DummyData" top: "g" top: "u" dummy_data_param {
  data_filler { type: "gaussian" std: 2 } data_filler { type: "uniform" min: -1 max: 1 }
  shape { dim: 3 dim: 5 } shape { dim: 3 dim: 5 } } }
layer { name: "drop" type: "Dropout" bottom: "g" top: "dropped" dropout_param { dropout_ratio: 0.5 } }
"""
    runs = []
    for i, partitionable in enumerate((True, False)):
        jcaffe.set_random_seed(11)
        (tmp_path / str(i)).mkdir()
        net = make_net(tmp_path / str(i), text, jcaffe.TRAIN)
        with jax.threefry_partitionable(partitionable):
            net.forward()
        runs.append({n: net.blobs[n].data.copy() for n in ("g", "u", "dropped")})
    for name in runs[0]:
        np.testing.assert_array_equal(runs[0][name], runs[1][name], err_msg=name)
    g, u, dropped = runs[0]["g"], runs[0]["u"], runs[0]["dropped"]
    kept = dropped != 0
    assert np.all(dropped[kept] == 2 * g[kept]) and 0 < kept.sum() < 15
    assert np.std(g) > 0 and np.all((u >= -1) & (u < 1))


def test_a_python_layer_in_jax_draws_with_the_nets_key(tmp_path):
    """A JaxLayer with needs_rng gets a key in its forward (the README's advice: draw with
    jcaffe.rng); each forward draws anew."""
    net = make_net(tmp_path, """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 6 } } }
layer { name: "noise" type: "Python" bottom: "x" top: "y"
  python_param { module: "pylayers" layer: "CompiledNoise" } }
""", jcaffe.TRAIN)
    net.blobs["x"].data[...] = 3.0
    net.forward()
    first = net.blobs["y"].data.copy()
    net.forward()
    second = net.blobs["y"].data
    assert np.all((first >= 3) & (first < 4)) and np.all((second >= 3) & (second < 4))
    assert not np.array_equal(first, second)


def test_bench_rng_prints_a_row_per_draw_and_shape(monkeypatch, capsys):
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "benchmarks"))
    import bench_rng
    monkeypatch.setattr(bench_rng, "SHAPES", [(2, 5), (3,)])
    bench_rng.main(["--repeats", "2"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| bernoulli") or line.startswith("| normal")]
    assert [(r[0], r[1]) for r in rows] == [("| bernoulli", "2x5"), ("| bernoulli", "3"),
                                            ("| normal", "2x5"), ("| normal", "3")]
    for r in rows:
        assert all(float(v.strip(" |")) > 0 for v in r[2:])
