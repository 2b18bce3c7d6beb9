"""Compile-only TPU devices for tests: libtpu's compiler for a named chip, on a machine without it.

``tpu_device("v5e:2x2")`` is a device of that topology; arrays placed on it (``ShapeDtypeStruct``
with a ``SingleDeviceSharding``) lower and compile for that chip with no chip present. A test that
calls it is skipped, with the reason, only when libtpu is not installed.
"""

from __future__ import annotations

import functools
import os

import pytest


@functools.cache
def _topology(name: str):
    # Deviceless: no metadata server to ask, and no chip for the libtpu lockfile to guard (the
    # lock would refuse a second compiling process, e.g. a pytest-xdist worker).
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    return topologies.get_topology_desc(name, "tpu")


def tpu_device(topology: str):
    """The first device of ``topology`` ("v5e:2x2", "v6e:2x2", "v5p:2x2x1", "v4:2x2x1"). A v4
    topology lists each chip's two TensorCores as devices: this is core 0 of the first chip."""
    pytest.importorskip("libtpu", reason="libtpu is not installed: pip install 'jax[tpu]'")
    return _topology(topology).devices[0]
