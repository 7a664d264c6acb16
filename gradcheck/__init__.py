"""gradcheck: prove a layer's (or a net's) explicit backward right.

``check_layer`` (built-in and JAX-written layers: backward vs jax.vjp vs
finite differences; a param offered by rows, as a fused solver step updates big
weights, vs the backward's diff), ``check_python_layer`` (numpy pycaffe layers: backward
vs finite differences plus the layer contract), ``check_net`` (a whole net's
backward vs jax.grad of the composed loss and finite differences). Each
returns a :class:`Report`. Checks run in float64 inside
``jax.enable_x64(True)``; see ``gradcheck.numeric`` for steps and tolerances.
"""
from .layer_check import check_layer
from .numeric import tolerances
from .report import BlobCheck, Element, Report

__all__ = ["BlobCheck", "Element", "Report", "check_layer", "check_net", "check_python_layer",
           "tolerances"]


def __getattr__(name):   # keep `import gradcheck` light: the other checkers load on use
    if name == "check_python_layer":
        from .python_check import check_python_layer
        return check_python_layer
    if name == "check_net":
        from .net_check import check_net
        return check_net
    raise AttributeError("module 'gradcheck' has no attribute %r" % name)
