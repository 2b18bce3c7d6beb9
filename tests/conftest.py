import os
import sys

from mambavision_jax import xla_cpu

xla_cpu.use_eigen_convolutions()  # as the entry points do, before JAX creates its backends

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    # Parity is checked in float32 at full matmul precision (DESIGN.md section 8).
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def rng():
    return np.random.RandomState(0)
