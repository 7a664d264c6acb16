import os
import sys

import jax
import numpy as np
import pytest

# Strict dtype promotion: a layer that silently upcasts float32 to float64
# (or mixes dtypes) fails here instead of in a user's run.
jax.config.update("jax_numpy_dtype_promotion", "strict")

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


@pytest.fixture
def x64():
    """Run the test body with float64 enabled, restored afterwards."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
