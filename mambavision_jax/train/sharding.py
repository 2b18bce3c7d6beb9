"""Device mesh and sharding rules (big_vision style): the batch over every device, parameters and
optimizer state replicated or FSDP-sharded by size."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# The mesh and the batch / replicated shardings live below the training layer (inference uses
# them too); re-exported here for the training code.
from mambavision_jax.mesh import BATCH_AXES, batch_sharding, make_mesh, replicated  # noqa: F401


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
