"""Every command-line program BVLC Caffe ships, and the jcaffe command that does its
job, or why there is none. A command that goes missing fails here; so does a Caffe
program added to the list without a jcaffe command or a reason (the list is read
from BVLC Caffe's tree: tools/caffe.cpp's actions, tools/*.cpp, tools/extra/*,
python/*.py, and the converters and programs under examples/)."""
import pytest

from jcaffe import cli, cli_explain, cli_scripts, tools

# Caffe's program (and action) -> the jcaffe command that does its job
CAFFE_PROGRAMS = {
    "caffe train": "train",
    "caffe test": "test",
    "caffe time": "time",
    "caffe device_query": "device_query",
    "compute_image_mean": "compute_image_mean",
    "convert_imageset": "convert_imageset",
    "extract_features": "extract_features",
    "upgrade_net_proto_binary": "upgrade_net_proto_binary",
    "upgrade_net_proto_text": "upgrade_net_proto_text",
    "upgrade_solver_proto_text": "upgrade_solver_proto_text",
    "examples/mnist/convert_mnist_data": "convert_mnist_data",
    "examples/siamese/convert_mnist_siamese_data": "convert_mnist_siamese_data",
    "examples/cifar10/convert_cifar_data": "convert_cifar_data",
    "python/classify.py": "classify",
    "python/detect.py": "detect",
    "python/draw_net.py": "draw",
    "python/train.py": "train",               # multi-GPU: jcaffe train -gpu 0,1 / -devices N
    "tools/extra/summarize.py": "summarize",
    "tools/extra/parse_log.py": "plot",       # jcaffe plot LOG --csv DIR: parse_log's CSV files
    "tools/extra/plot_training_log.py.example": "plot",
}

# Caffe's programs with no jcaffe command, and why
LEFT_OUT = {
    "tools/extra/parse_log.sh": "the shell version of parse_log.py; jcaffe plot --csv writes "
                                "the same columns",
    "tools/extra/extract_seconds.py": "parse_log.sh's helper; jcaffe plot --x seconds and the "
                                      "CSV's Seconds column read the times from the log",
    "tools/extra/resize_and_crop_images.py": "a mincepie MapReduce job for ImageNet; "
                                             "convert_imageset -resize_height/-resize_width "
                                             "resizes while converting",
    "tools/extra/launch_resize_and_crop_images.sh": "launches resize_and_crop_images.py",
    "examples/cpp_classification/classification.cpp": "shows Caffe's C++ API; jcaffe is "
                                                      "Python (jcaffe classify does its job)",
    "examples/web_demo/app.py": "a Flask web page around caffe.Classifier, not a tool",
    "examples/finetune_flickr_style/assemble_data.py": "downloads Flickr images for one example",
}

ALL_COMMANDS = (set(cli.COMMANDS) | set(tools.TOOLS) | set(cli_explain.COMMANDS)
                | set(cli_scripts.COMMANDS))


def test_every_caffe_program_has_a_command_or_a_reason():
    assert not set(CAFFE_PROGRAMS) & set(LEFT_OUT)
    assert all(len(why) > 20 for why in LEFT_OUT.values())
    missing = {p: c for p, c in CAFFE_PROGRAMS.items() if c not in ALL_COMMANDS}
    assert not missing


@pytest.mark.parametrize("command", sorted(ALL_COMMANDS))
def test_usage_lists_the_command(command):
    assert command in cli.USAGE


@pytest.mark.parametrize("command", sorted((set(tools.TOOLS) | set(cli_explain.COMMANDS)
                                            | set(cli_scripts.COMMANDS))))
def test_each_command_answers_help(command, capsys):
    """`jcaffe <command> --help` reaches the command itself (its own usage), not the
    brew usage that an unknown command would print."""
    assert cli.main([command, "--help"]) in (0, 2)
    out = capsys.readouterr()
    text = out.out + out.err
    assert command in text and "commands:" not in text
