"""Built-in layers, one module per family; importing this registers them all."""
from . import data, neuron  # noqa: F401
from . import common, loss, vision  # noqa: F401
from . import recurrent  # noqa: F401
from . import loss_extra  # noqa: F401
from . import crop, deconv, im2col, pool_stochastic, spp  # noqa: F401
from . import neuron_extra, normalization, scale_bias  # noqa: F401
from . import embed, reduce, shaping  # noqa: F401
from . import data_layers  # noqa: F401
