"""The README's main job, shortened: the quickstart example trains and generalizes."""
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
