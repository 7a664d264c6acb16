"""benchmarks/bench_data.py: its Data layer reads the database it wrote, the Data-fed
step trains, and run_all's table puts each Data-fed row over the Input-fed row of the
same number of steps."""
import os
import sys

import numpy as np

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import bench_data  # noqa: E402
import run_all  # noqa: E402


def test_the_data_layer_reads_the_benchmarks_database():
    contenders = bench_data.contenders("lenet", 3)
    data, label = contenders["jcaffe Data.load_batch() alone"]()()
    assert data.shape == (3, 1, 28, 28) and data.dtype == np.float32
    assert 0 <= data.min() and data.max() <= 255 * 0.00390625 and data.std() > 0.2
    np.testing.assert_array_equal(label, [0, 1, 2])
    step = contenders["jcaffe Solver.step(1) from Data over LMDB"]()
    step()
    step()


def test_the_python_data_layer_feeds_one_fused_step():
    """py_data_layer's numpy data layer: the benchmark net's input shapes, the Data
    layer's transformation (ImageNet records cropped, mean subtracted), a fused step."""
    import jcaffe
    net = jcaffe.Net(bench_data.python_net_param("caffenet", 2), jcaffe.TRAIN)
    net.forward()
    data = net.blobs["data"].data
    assert data.shape == (2, 3, 227, 227) and -123 <= data.min() and data.max() <= 255 - 104
    assert 0 <= net.blobs["label"].data.min() and net.blobs["label"].data.max() <= 9
    solver = bench_data.data_solver("lenet", 3, 0, python=True)
    assert solver.net.layers[0].type == "Python" and solver._can_fuse()
    solver.step(2)
    assert np.isfinite(solver.smoothed_loss)


def test_imagenet_records_are_cropped_to_the_nets_input():
    shape, transform = bench_data.record_shape("caffenet")
    assert shape == (3, 256, 256) and transform["crop_size"] == 227 and transform["mirror"]
    param = bench_data.data_net_param("caffenet", 2, "unused", 4)
    assert param.layer[0].type == "Data" and param.layer[0].transform_param.crop_size == 227
    assert list(param.layer[0].transform_param.mean_value) == [104, 117, 123]


def test_run_all_table_compares_rows_with_the_same_steps():
    row = lambda ms: {"median_ms": ms, "min_ms": ms, "max_ms": ms, "compile_s": 1.0}
    table = run_all.data_table({"results": {
        "jcaffe Solver.step(1) from Input (fed once)": row(10.0),
        "jcaffe Solver.step(1) from Data over LMDB": row(11.0),
        "jcaffe Solver.step(10) from Input (fed once)": row(100.0),
        "jcaffe Solver.step(10) from Data over LMDB": row(105.0),
        "jcaffe Data.load_batch() alone": row(0.2)}})
    ratios = [line.split("|")[5].strip() for line in table.splitlines()[2:]]
    assert ratios == ["1.00x", "1.10x", "1.00x", "1.05x", "-"]
