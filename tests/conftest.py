import os
import sys

# The command line keeps a persistent compilation cache by default (jcaffe.compile_cache):
# tests that run it in this process leave the user's cache alone; test_compile_cache.py
# turns it on where it tests it.
os.environ.setdefault("JCAFFE_COMPILATION_CACHE", "off")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

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


@pytest.fixture(autouse=True)
def restore_jcaffe_logger():
    """cli.main() and caffe.init_log() configure the 'jcaffe' logger (glog lines on a
    stream, propagate off); put it back after every test so no test leaks a handler on a
    closed capture stream, or a logger that caplog cannot see, into the tests after it.
    (Module-scoped fixtures that configure it use netutil.kept_jcaffe_logger themselves.)"""
    from netutil import kept_jcaffe_logger
    with kept_jcaffe_logger():
        yield
