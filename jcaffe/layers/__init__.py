"""Built-in layers, one module per family; importing this registers them all."""
from . import data, neuron  # noqa: F401
from . import common, loss, vision  # noqa: F401
from . import embed, reduce, shaping  # noqa: F401
