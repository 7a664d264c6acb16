"""jcaffe: Caffe rebuilt on JAX, with pycaffe's API (``import jcaffe as caffe``)."""
from .blob import Blob
from .common import (NCCL, Timer, has_nccl, init_log, set_device, set_mode_cpu, set_mode_gpu,
                     set_multiprocess, set_random_seed, set_solver_count, set_solver_rank,
                     solver_count, solver_rank)
from .common import log_message as log
from .layer import JaxLayer, Layer, layer_type_list, register
from .net import Net
from .parallel import init_distributed
from .solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                     SGDSolver, Solver, get_solver)
from . import layers as _builtin_layers  # noqa: F401  (registers them; jcaffe.layers is NetSpec's)
from . import net_spec, parallel
from . import io  # noqa: F401  (pycaffe's caffe.io)
from . import coord_map  # noqa: F401  (pycaffe's caffe.coord_map)
from .classifier import Classifier
from .detector import Detector
from .net_spec import NetSpec, layers, params, to_proto
from .proto import caffe_pb2
from .proto.caffe_pb2 import TEST, TRAIN
from . import memory as _memory
from .compile_cache import set_compilation_cache
from . import compile_cache as _compile_cache

_memory.install()
_compile_cache.from_environment()   # $JCAFFE_COMPILATION_CACHE, when set

__version__ = "0.1.0"

__all__ = [
    "AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Blob", "Classifier", "Detector",
    "JaxLayer", "Layer", "NCCL", "Net",
    "NesterovSolver", "NetSpec", "RMSPropSolver", "SGDSolver", "Solver", "TEST", "TRAIN", "Timer",
    "caffe_pb2", "coord_map", "get_solver", "io",
    "has_nccl", "init_distributed", "init_log", "layer_type_list", "layers", "log", "params", "register",
    "set_compilation_cache", "set_device", "set_mode_cpu", "set_mode_gpu", "set_multiprocess",
    "set_random_seed",
    "set_solver_count", "set_solver_rank", "solver_count", "solver_rank", "to_proto",
    "__version__",
]

