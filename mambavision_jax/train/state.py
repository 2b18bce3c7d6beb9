"""The train state as one pytree, built directly into its shardings (no host copy of the model)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mambavision_jax.models.config import MambaVisionConfig, RuntimeConfig
from mambavision_jax.models.mamba_vision import MambaVision
from mambavision_jax.models.registry import model_config, split_overrides
from mambavision_jax.ops import ScanSharding
from mambavision_jax.train import sharding as shd


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nnx.State of nnx.Param
    batch_stats: Any  # nnx.State of nnx.BatchStat
    rngs: Any  # nnx.State of the DropPath RNG stream (empty without drop path)
    opt_state: Any
    ema_params: Any  # None without EMA
    ema_batch_stats: Any


def model_configs(
    config, num_classes: int, bn_groups: int, mesh=None
) -> tuple[MambaVisionConfig, RuntimeConfig]:
    """The model a training config describes: `config.model.name`'s architecture with
    `config.model.overrides` (any create_model argument), the drop path rate and the class count
    applied, and its runtime (dtype, scan, remat, BatchNorm groups). The same for init and
    fine-tuning. mesh: the training mesh, with which the Pallas scans run per device on each
    device's share of the batch (`runtime.scan_sharding`); None: the plain call."""
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config.model.overrides).items()}
    arch, run = split_overrides(overrides, "config.model.overrides")
    if config.model.drop_path_rate >= 0:
        arch["drop_path_rate"] = config.model.drop_path_rate
    model = model_config(config.model.name).replace(num_classes=num_classes, **arch)
    runtime = RuntimeConfig(
        dtype=config.model.dtype,
        scan_impl=config.model.scan_impl,
        remat=config.model.remat,
        bn_groups=bn_groups,
        scan_sharding=None if mesh is None else ScanSharding(mesh, shd.BATCH_AXES),
    ).replace(**run)
    return model, runtime


def split_model(model):
    return nnx.split(model, nnx.Param, nnx.BatchStat, ...)


def graphdefs(config, num_classes: int, bn_groups: int, mesh=None):
    """(train graphdef, eval graphdef): the mode (BatchNorm statistics, DropPath) is static. mesh:
    the mesh the steps are jitted over (see `model_configs`); pass it wherever the batch is
    sharded, else each device runs a Pallas scan on the whole batch."""
    arch, runtime = model_configs(config, num_classes, bn_groups, mesh)
    abstract = nnx.eval_shape(lambda: MambaVision(arch, runtime, rngs=nnx.Rngs(0)))
    abstract.train()
    train_gd = split_model(abstract)[0]
    abstract.eval()
    eval_gd = split_model(abstract)[0]
    return train_gd, eval_gd


def create_train_state(
    config,
    num_classes: int,
    bn_groups: int,
    tx: optax.GradientTransformation,
    mesh,
    *,
    abstract: bool = False,
) -> tuple[TrainState, Any]:
    """The initial state, created inside jit with its output shardings. Returns (state, shardings).
    abstract: the state as `jax.ShapeDtypeStruct`s carrying their shardings, nothing allocated
    (compiling for devices this process cannot run on: `mambavision_jax.aot`)."""
    arch, runtime = model_configs(config, num_classes, bn_groups)
    return init_train_state(
        lambda rngs: MambaVision(arch, runtime, rngs=rngs), config, tx, mesh, abstract=abstract
    )


def init_train_state(
    make_model, config, tx: optax.GradientTransformation, mesh, *, abstract: bool = False
) -> tuple[TrainState, Any]:
    """The initial state of the model `make_model(rngs)` (any NNX model; rngs seeded from
    config.seed), created inside jit with the shardings of `config.mesh`. Returns (state, shardings);
    abstract: as `create_train_state`."""

    def init():
        model = make_model(nnx.Rngs(params=config.seed, dropout=config.seed + 1))
        _, params, stats, rngs = split_model(model)
        ema = config.ema.enabled
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=stats,
            rngs=rngs,
            opt_state=tx.init(params),
            ema_params=params if ema else None,
            ema_batch_stats=stats if ema else None,
        )

    abstract_state = jax.eval_shape(init)
    shardings = shd.tree_shardings(abstract_state, mesh, config.mesh.min_size_to_shard_mb)
    if abstract:
        sds = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
        return jax.tree.map(sds, abstract_state, shardings), shardings
    state = jax.jit(init, out_shardings=shardings)()
    return state, shardings


def with_weights(state: TrainState, params, batch_stats, shardings) -> TrainState:
    """Replace the weights (fine-tuning from a checkpoint); the EMA starts from them too."""
    params = jax.device_put(params, shardings.params)
    batch_stats = jax.device_put(batch_stats, shardings.batch_stats)
    ema = state.ema_params is not None
    # may_alias=False: on one device device_put would hand back the same buffers, and the train
    # step donates the state, which must not hold an array twice.
    return state.replace(
        params=params,
        batch_stats=batch_stats,
        ema_params=jax.device_put(params, shardings.ema_params, may_alias=False) if ema else None,
        ema_batch_stats=jax.device_put(batch_stats, shardings.ema_batch_stats, may_alias=False)
        if ema
        else None,
    )
