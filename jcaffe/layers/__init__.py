"""Built-in layers, one module per family; importing this registers them all."""
from . import data, neuron  # noqa: F401
from . import common, loss, vision  # noqa: F401
from . import data_layers  # noqa: F401
