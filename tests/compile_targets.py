"""Compile-only devices for tests: the real TPU / GPU compilers for a named chip, on a machine
without it, through `mambavision_jax.aot.targets` (the planner's own target table).

``tpu_device("v5e:2x2")`` / ``gpu_devices("h100x8")`` are devices of that target; arrays placed
on them (``ShapeDtypeStruct`` with a sharding) lower and compile for that chip with no chip
present. A test that calls them is skipped, with the reason, only when libtpu or the CUDA plugin
is not installed (CI installs both: the aot extra).
"""

from __future__ import annotations

import functools
import importlib.util

import pytest

from mambavision_jax.aot import targets


@functools.cache
def _devices(spec: str) -> list:
    return targets.compile_only_devices(targets.parse_target(spec))


def tpu_device(topology: str):
    """The first device of ``topology`` ("v5e:2x2", "v6e:2x2", "v5p:2x2x1", "v4:2x2x1"). A v4
    topology lists each chip's two TensorCores as devices: this is core 0 of the first chip."""
    pytest.importorskip("libtpu", reason="libtpu is not installed: pip install -e '.[aot]'")
    return _devices(f"tpu:{topology}")[0]


def gpu_devices(spec: str) -> list:
    """The devices of a GPU target ("h100x1", "a100x1", "h100x8", "h100:2x8")."""
    if not any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13)):
        pytest.skip("the jax CUDA plugin is not installed: pip install -e '.[aot]'")
    return _devices(f"gpu:{spec}")
