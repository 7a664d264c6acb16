"""The lent-GPU scripts (benchmarks/device_*): they run only on such a machine, so what
can be checked here is that the shell script parses and that the trace reader counts
what a trace holds."""
import gzip
import json
import os
import re
import subprocess
import sys

import numpy as np

import jcaffe
import netutil

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import device_kernels  # noqa: E402


def test_device_check_script_parses():
    subprocess.run(["bash", "-n", os.path.join(BENCH, "device_check.sh")], check=True)


def test_device_kernels_counts_the_gpu_events_of_each_call(tmp_path):
    """Two calls: the GPU's kernels (by kind, busy time, span per call); the host's events
    and metadata are left out."""
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/host:CPU"}}]
    kernels = [("sm90_xmma_fprop_implicit_gemm", 0, 100), ("loop_add_fusion", 150, 50),
               ("input_divide_transpose_fusion_3", 250, 30), ("MemcpyD2H", 290, 10),
               ("sm90_xmma_fprop_implicit_gemm", 1000, 100), ("loop_add_fusion", 1150, 50),
               ("input_divide_transpose_fusion_3", 1250, 30), ("MemcpyD2H", 1290, 10)]
    events = meta + [{"ph": "X", "pid": 1, "tid": 14, "ts": ts, "dur": dur, "name": name}
                     for name, ts, dur in kernels]
    events.append({"ph": "X", "pid": 7, "tid": 3, "ts": 0, "dur": 5000, "name": "python"})
    folder = tmp_path / "trace_net_train_jcaffe" / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    count, busy, span, by_kind, _ = device_kernels.summary(str(tmp_path / "trace_net_train_jcaffe"),
                                                           calls=2)
    assert count == 4 and busy == 190 and span == 650
    assert by_kind == {"convolution/library": 100, "fusion": 50, "divide+transpose": 30,
                       "memcpy/memset": 10}


def _write_trace(folder, events):
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)


# An optimized CPU module as XLA writes it: a fusion with its op_name, one whose fused
# computation has it, a product XLA remade without one (its input from conv2's forward,
# its user pool2's forward: named by both), a weight gradient without one (its user
# conv2's update), and a layer named with '/'.
HLO = """HloModule jit_step, entry_computation_layout={...}

%fused_computation.1 (param_0.1: f32[8]) -> f32[8] {
  %param_0.1 = f32[8]{0} parameter(0)
  ROOT %exponential.1 = f32[8]{0} exponential(%param_0.1), metadata={op_name="jit(step)/jit(iteration)/inception_3a/1x1.forward/exp" stack_frame_id=3}
}

ENTRY %main.9 (Arg_0.1: f32[8], Arg_1.2: f32[8,8]) -> f32[8] {
  %Arg_0.1 = f32[8]{0} parameter(0), metadata={op_name="params[0]"}
  %Arg_1.2 = f32[8,8]{1,0} parameter(1), metadata={op_name="rest[0]"}
  %cols_fusion = f32[8,8]{1,0} fusion(%Arg_1.2), kind=kLoop, calls=%fused_computation.2, metadata={op_name="jit(step)/jit(iteration)/conv2.forward/stack" stack_frame_id=1}
  %dot.11 = f32[8]{0} dot(%cols_fusion, %Arg_0.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %pool_fusion = f32[8]{0} fusion(%dot.11), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(step)/jit(iteration)/pool2.forward/max" stack_frame_id=2}
  %exp_fusion = f32[8]{0} fusion(%pool_fusion), kind=kLoop, calls=%fused_computation.1
  %convolution = f32[8]{0} convolution(%Arg_1.2, %exp_fusion), window={size=8}, dim_labels=b0f_0io->b0f
  ROOT %subtract_fusion = f32[8]{0} fusion(%Arg_0.1, %convolution), kind=kLoop, calls=%fused_computation.4, metadata={op_name="jit(step)/jit(iteration)/conv2.update/sub" stack_frame_id=4}
}
"""


def test_device_kernels_finds_the_dump_beside_each_trace():
    """Each trace folder's HLO dump, also for a net whose name holds '_' (taken as the
    trace name's second and third words, cifar10_full_sigmoid_bn's kernels all landed in
    '(other)')."""
    for net in ("lenet", "cifar10_full_sigmoid_bn"):
        for contender in ("jcaffe", "purejax"):
            trace = os.path.join("out", "trace_%s_train_%s" % (net, contender))
            assert device_kernels.hlo_dir(trace) == os.path.join("out", "hlo_%s_train" % net)
    assert device_kernels.hlo_dir("out/trace_densenet121_forward_jcaffe/") == \
        os.path.join("out", "hlo_densenet121_forward")


def test_device_kernels_names_each_kernels_layer_on_the_cpu(tmp_path):
    """A CPU trace (no GPU process): XLA's thunks are the kernels, named by their HLO
    instruction, each until its "end:" mark, overlapping ones sharing the time; by
    layer, through the dumped module's op_name scopes."""
    scopes = device_kernels.hlo_scopes(HLO)
    assert scopes["cols_fusion"] == "conv2.forward"
    assert scopes["exp_fusion"] == "inception_3a/1x1.forward"
    assert scopes["dot.11"] == "? conv2.forward > pool2.forward"     # the layers around it
    assert scopes["convolution"] == "conv2.backward"    # feeds conv2's update
    assert scopes["subtract_fusion"] == "conv2.update"
    assert device_kernels.layer_scope("params[0]") is None
    # the convolution returns at once (asynchronous) and is marked done at 80; the
    # exponential runs meanwhile, sharing those 10 us with it
    thunks = [("cols_fusion", 0, 10), ("dot.11", 10, 40), ("pool_fusion", 50, 5),
              ("convolution", 60, 1), ("exp_fusion", 62, 10), ("subtract_fusion", 80, 2)]
    events = [{"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/host:CPU"}},
              {"ph": "X", "pid": 7, "tid": 3, "ts": 0, "dur": 500, "name": "$solver.py step"}]
    for call in range(2):
        events += [{"ph": "X", "pid": 7, "tid": 4, "ts": 1000 * call + ts, "dur": dur,
                    "name": op, "args": {"hlo_module": "jit_step", "hlo_op": op}}
                   for op, ts, dur in thunks]
        events.append({"ph": "X", "pid": 7, "tid": 4, "ts": 1000 * call + 79, "dur": 1,
                       "name": "end: convolution", "args": {}})
    _write_trace(tmp_path / "trace_net_train_jcaffe" / "plugins" / "profile" / "run", events)
    (tmp_path / "hlo_net_train").mkdir()
    (tmp_path / "hlo_net_train" / "module_0001.jit_step.cpu_after_optimizations.txt"
     ).write_text(HLO)
    trace = str(tmp_path / "trace_net_train_jcaffe")
    count, busy, span, by_kind, _ = device_kernels.summary(trace, calls=2)
    assert device_kernels.device_events(trace)[1] == "CPU"
    assert count == 6 and busy == 77 and span == 541
    assert by_kind == {"fusion": 22, "gemm": 40, "convolution/library": 15}
    layers = device_kernels.by_layer(trace, str(tmp_path / "hlo_net_train"), calls=2)
    assert layers == {"conv2.forward": 10, "? conv2.forward > pool2.forward": 40,
                      "pool2.forward": 5, "inception_3a/1x1.forward": 5,
                      "conv2.backward": 15, "conv2.update": 2}


def _solver(net_text):
    """A momentum SGD solver over the net ``net_text``."""
    from google.protobuf import text_format
    from jcaffe.proto import caffe_pb2
    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.01 momentum: 0.9 lr_policy: "fixed"', param)
    text_format.Parse(net_text, param.net_param)
    return jcaffe.get_solver(param)


def _layout_plan(solver):
    """{layer name: its layout plan entry} of ``solver``'s net, after a step."""
    return {s.layer.name: p for seg in solver.net._segments.values() for s in seg.slots
            if s.layer.forward_writes_tops for p in [seg.layout_plan()[s.index]]}


STEP_NET = """
name: "scoped"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 3 dim: 12 dim: 12 } shape { dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 16 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_a_fused_steps_ops_are_named_by_layer(monkeypatch):
    """Every product of a fused step is traced under its layer's scope, the jitted
    convolution helpers' too (conv_gemm's, here for every map; inlined: a jitted
    helper's ops are named inside it only), and each param's update under its owner's
    ("conv.update"), for profiles and HLO dumps (device_kernels --layers)."""
    from jcaffe.layers import vision
    monkeypatch.setattr(vision.Convolution, "GEMM_MIN_MACS", 0)
    solver = _solver(STEP_NET)
    solver.net.blobs["label"].data[...] = np.arange(8) % 4
    hlo = netutil.lowered_step(solver).as_text(dialect="hlo", debug_info=True)
    products = re.findall(r" (?:dot|convolution)\(.*", hlo)
    assert products
    names = [re.search(r'op_name="([^"]*)"', line) for line in products]
    assert all(names), [p for p, n in zip(products, names) if not n]
    scopes = {device_kernels.layer_scope(n.group(1)) for n in names}
    assert {"conv.forward", "conv.backward", "ip.forward", "ip.backward"} <= scopes, scopes
    assert None not in scopes, [n.group(1) for n in names]
    assert any(n.group(1) == "conv.forward/dot_general" for n in names)    # conv_gemm's
    updates = {device_kernels.layer_scope(n) for n in re.findall(r'op_name="([^"]*)"', hlo)}
    assert {"conv.update", "ip.update"} <= updates


def test_device_kernels_names_gpu_kernels_by_their_fusion(tmp_path):
    """A GPU kernel without an hlo_op argument is named as its fusion ('.3' -> '_3');
    library kernels name no instruction: "(other)"."""
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}}]
    kernels = [("sm90_xmma_fprop_implicit_gemm", 0, 100), ("loop_add_fusion", 150, 50),
               ("input_divide_transpose_fusion_3", 250, 30)]
    _write_trace(tmp_path / "trace_net_train_jcaffe" / "plugins" / "profile" / "run",
                 meta + [{"ph": "X", "pid": 1, "tid": 14, "ts": ts, "dur": dur, "name": name}
                         for name, ts, dur in kernels])
    (tmp_path / "hlo_net_train").mkdir()
    (tmp_path / "hlo_net_train" / "module_0001.jit_step.gpu_after_optimizations.txt"
     ).write_text("""ENTRY %main (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  %loop_add_fusion = f32[8]{0} fusion(%p), kind=kLoop, calls=%c1, metadata={op_name="jit(step)/jit(iteration)/relu1.backward/add"}
  ROOT %input_divide_transpose_fusion.3 = f32[8]{0} fusion(%loop_add_fusion), kind=kInput, calls=%c2, metadata={op_name="jit(step)/jit(iteration)/split.forward/div"}
}
""")
    layers = device_kernels.by_layer(str(tmp_path / "trace_net_train_jcaffe"),
                                     str(tmp_path / "hlo_net_train"), calls=1)
    assert layers == {"(other)": 100, "relu1.backward": 50, "split.forward": 30}


# conv's top kept channels-last, for the ReLU and the next convolution (XLA's kernels)
CHAIN_NET = """
name: "chain"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } shape { dim: 2 } } }
layer { name: "conv0" type: "Convolution" bottom: "data" top: "conv0"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu0" type: "ReLU" bottom: "conv0" top: "conv0" }
layer { name: "conv" type: "Convolution" bottom: "conv0" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "conv2" type: "Convolution" bottom: "conv" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv2" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_a_layers_top_reorders_are_named_by_it():
    """The engine's reorders of a layer's tops into a channels-last run are traced under
    the layer's scope: XLA:CPU folds such a reorder into the convolution before it and
    remakes that without its own name, taking the reorder's (ResNet-50's step, batch 2:
    33 of its 36 convolutions named by their layer, against 17 without it; the other
    three, data gradients, are left to device_kernels' guess)."""
    solver = _solver(CHAIN_NET)
    hlo = netutil.lowered_step(solver).as_text(dialect="hlo", debug_info=True)
    plan = _layout_plan(solver)
    assert plan["conv0"][2] and plan["conv"][2]         # tops kept channels-last
    names = re.findall(r' transpose\(.*op_name="([^"]*)"', hlo)
    scopes = [device_kernels.layer_scope(n) for n in names]
    assert "conv0.forward" in scopes and "conv.forward" in scopes, names
