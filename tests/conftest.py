"""Test-wide setup: 8 simulated host devices, full matmul precision, shared fixtures.

A bare `pytest` behaves as `bash scripts/test.sh` does (which sets the same XLA flag).
"""

import os
import sys

# JAX reads XLA_FLAGS once, when it creates its CPU backend: ask for 8 host devices before anything
# imports jax (the sharding tests need 8). An explicit device count in XLA_FLAGS is kept.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8") if f
    )

# ---- process-wide JAX / package setup that must precede the test modules ----
from mambavision_jax import xla_cpu  # noqa: E402

xla_cpu.use_eigen_convolutions()  # as the entry points do, before JAX creates its backends

import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py, official.py, small_train_config.py

from train_runs import compile_cache_vars  # noqa: E402

# The reference packages are part of the test environment (scripts/test.sh installs them): a missing
# one is an error, never a silently skipped parity check.
REFERENCE_PACKAGES = ("torch", "timm", "mambavision", "jax2onnx", "onnxruntime", "mmseg", "mmengine", "mmcv")


def pytest_configure(config):
    missing = [name for name in REFERENCE_PACKAGES if _missing(name)]
    if missing:
        raise pytest.UsageError(
            f"missing test dependencies {', '.join(missing)}: "
            "install them with `bash scripts/test.sh` (it installs them, then runs pytest)"
        )
    import jax

    # Parity with the official PyTorch model is checked in float32: full-precision matmuls (the
    # default lowers float32 matmuls to bf16 passes on TPU/GPU and to TF32 on Ampere+).
    jax.config.update("jax_default_matmul_precision", "highest")


def _missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


@pytest.fixture
def rng():
    return np.random.RandomState(0)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """A TFDS data_dir holding the embedded digits data set (`mv_digits`), built once per session."""
    from mambavision_jax.data import build_digits

    d = str(tmp_path_factory.mktemp("tfds"))
    build_digits(d)
    return d


@pytest.fixture(scope="session")
def compile_cache_env():
    """Environment variables for one persistent XLA compilation cache shared by every subprocess."""
    return compile_cache_vars()
