"""jcaffe: Caffe rebuilt on JAX, with pycaffe's API (``import jcaffe as caffe``)."""
from .blob import Blob
from .common import (Timer, has_nccl, init_log, set_device, set_mode_cpu, set_mode_gpu,
                     set_multiprocess, set_random_seed, set_solver_count, set_solver_rank,
                     solver_count, solver_rank)
from .common import log_message as log
from .layer import JaxLayer, Layer, layer_type_list, register
from .net import Net
from .proto import caffe_pb2
from .proto.caffe_pb2 import TEST, TRAIN

__version__ = "0.1.0"

__all__ = [
    "Blob", "Layer", "JaxLayer", "Net", "NetSpec", "TEST", "TRAIN", "Timer", "caffe_pb2",
    "has_nccl", "init_log", "layer_type_list", "layers", "log", "params", "register",
    "set_device", "set_mode_cpu", "set_mode_gpu", "set_multiprocess", "set_random_seed",
    "set_solver_count", "set_solver_rank", "solver_count", "solver_rank", "to_proto",
    "__version__",
]


def __getattr__(name):
    # NetSpec lives in its own module (pycaffe's caffe.net_spec); loaded on first use.
    if name in ("NetSpec", "layers", "params", "to_proto", "net_spec"):
        from . import net_spec
        return net_spec if name == "net_spec" else getattr(net_spec, name)
    raise AttributeError("module 'jcaffe' has no attribute %r" % name)
