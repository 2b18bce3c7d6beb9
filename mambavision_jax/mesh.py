"""The device mesh shared by training and inference: axes ('data', 'fsdp'), the batch split over
every device, the weights replicated. Below both `train` and the inference `runner`, so neither
layer imports the other for it."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mambavision_jax.errors import ConfigError

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A (data, fsdp) mesh over all devices; -1 takes what is left. Axes are Auto: Flax convs
    fail under the Explicit axes that `jax.make_mesh` defaults to."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ConfigError("mesh: at most one of mesh.data / mesh.fsdp may be -1")
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n:
        raise ConfigError(f"mesh: data={data} x fsdp={fsdp} does not use the {n} devices")
    dev = np.asarray(devices).reshape(data, fsdp)
    return Mesh(dev, BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def local_mesh(devices=None) -> Mesh:
    """The mesh over this process's devices with the batch split over all of them (inference)."""
    return make_mesh(-1, 1, devices=list(devices or jax.local_devices()))
