"""Device mesh and sharding rules (big_vision style): the batch over every device, parameters and
optimizer state replicated or FSDP-sharded by size."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A (data, fsdp) mesh over all devices; -1 takes what is left. Axes are Auto: Flax convs
    fail under the Explicit axes that `jax.make_mesh` defaults to."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of mesh.data / mesh.fsdp may be -1")
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} does not use the {n} devices")
    dev = np.asarray(devices).reshape(data, fsdp)
    return Mesh(dev, BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], itemsize: int, fsdp_size: int, min_size_mb: float) -> P:
    """Shard the largest axis divisible by the fsdp size, for arrays of at least `min_size_mb`;
    small arrays (norms, biases, scalars) stay replicated: sharding them costs more than it saves."""
    if fsdp_size <= 1 or math.prod(shape) * itemsize < min_size_mb * 2**20:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(abstract_tree, mesh: Mesh, min_size_mb: float = 1.0):
    """NamedShardings for a tree of arrays / ShapeDtypeStructs (params, optimizer state, EMA)."""
    fsdp_size = mesh.shape["fsdp"]

    def one(x):
        dtype = getattr(x, "dtype", np.float32)
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            return NamedSharding(mesh, P())  # RNG keys: tiny, replicated
        shape = tuple(getattr(x, "shape", ()))
        return NamedSharding(mesh, fsdp_spec(shape, np.dtype(dtype).itemsize, fsdp_size, min_size_mb))

    return jax.tree.map(one, abstract_tree)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """This host's part of the batch -> global arrays sharded over the mesh's batch axes."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()
    }
