"""What a MambaVision model is (`MambaVisionConfig`) and how it is computed (`RuntimeConfig`).

`MambaVisionConfig` holds every architecture field: two models with equal configs have the same
parameter tree, and a checkpoint that stores `config.to_dict()` rebuilds its model with
`MambaVisionConfig.from_dict`. `RuntimeConfig` holds what changes the computation but not the
weights (compute dtype, kernel choices, rematerialisation, BatchNorm groups).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from typing import TYPE_CHECKING, Any

from mambavision_jax.errors import ConfigError  # re-exported: it was defined here

if TYPE_CHECKING:
    from mambavision_jax.ops import ScanSharding

NUM_STAGES = 4  # two convolutional stages, two hybrid (Mamba + attention) stages, as the official
HYBRID_STAGES = (2, 3)  # the stages whose blocks have mixers, heads and windows


def unknown_names_message(what: str, unknown, valid, noun: str = "field") -> str:
    """ "{what}: unknown field(s) 'x' (did you mean 'y'?); valid fields: ..." """
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), valid, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"{what}: unknown {noun}(s) {', '.join(hints)}; valid {noun}s: {', '.join(valid)}"


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(owner: str, field: str, v, *, minimum: int) -> int:
    if not _is_int(v):
        raise ConfigError(f"{owner}.{field} must be an integer, got {v!r}")
    if v < minimum:
        raise ConfigError(f"{owner}.{field} must be >= {minimum}, got {v!r}")
    return int(v)


def _float(owner: str, field: str, v) -> float:
    if not _is_real(v):
        raise ConfigError(f"{owner}.{field} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ConfigError(f"{owner}.{field} must be finite, got {v!r}")
    return v


def _ints(owner: str, field: str, v) -> tuple[int, ...]:
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
        raise ConfigError(f"{owner}.{field} must be a tuple of {NUM_STAGES} integers, got {v!r}")
    if len(v) != NUM_STAGES:
        raise ConfigError(f"{owner}.{field} must have {NUM_STAGES} entries (one per stage), got {v!r}")
    if not all(_is_int(x) and x >= 1 for x in v):
        raise ConfigError(f"{owner}.{field} must hold positive integers, got {v!r}")
    return tuple(int(x) for x in v)


class _Fields:
    """`to_dict` / `from_dict` / `replace` shared by both configs."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists) that `from_dict` turns back into this config.
        Process-local fields (`metadata={"process_local": True}`, e.g. a device mesh) are left
        out: they mean nothing to another process."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
            if not f.metadata.get("process_local")
        }

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """The config from `to_dict()`'s output (e.g. read from JSON): unknown keys, missing
        required fields and bad values raise ConfigError naming the field."""
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}: expected a dict of fields, got {type(d).__name__}")
        names = cls.field_names()
        unknown = [k for k in d if k not in names]
        if unknown:
            raise ConfigError(unknown_names_message(cls.__name__, unknown, names))
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if k not in d]
        if missing:
            raise ConfigError(f"{cls.__name__}: missing field(s) {', '.join(missing)}")
        return cls(**d)

    def replace(self, **changes):
        """A copy with `changes` applied (and validated); an unknown field is a TypeError."""
        unknown = [k for k in changes if k not in self.field_names()]
        if unknown:
            raise TypeError(
                unknown_names_message(f"{type(self).__name__}.replace", unknown, self.field_names())
            )
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class MambaVisionConfig(_Fields):
    """Every architecture field of a MambaVision model (the official constructor's arguments).

    dim: channels of stage 1 (doubling per stage); in_dim: channels of the stem's first conv;
    depths, num_heads, window_size: per stage (heads and windows are used by stages 3-4);
    mlp_ratio: MLP hidden size / channels; drop_path_rate: the last block's stochastic depth
    (linear from 0); layer_scale / layer_scale_conv: the initial value of the per-channel residual
    scales of the hybrid / convolutional blocks (None: no scale); name: the official variant the
    config derives from (its preprocessing is used), None for a custom model.
    """

    dim: int
    in_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: tuple[int, ...]
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    layer_scale: float | None = None
    layer_scale_conv: float | None = None
    in_chans: int = 3
    num_classes: int = 1000
    name: str | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Normalise (lists -> tuples, ints -> floats where a float is meant) and check every
        field; raises ConfigError naming the first bad field and its value."""
        own = "MambaVisionConfig"
        set_ = object.__setattr__  # frozen: normalise in place once, here
        set_(self, "dim", _int(own, "dim", self.dim, minimum=1))
        set_(self, "in_dim", _int(own, "in_dim", self.in_dim, minimum=1))
        for field in ("depths", "num_heads", "window_size"):
            set_(self, field, _ints(own, field, getattr(self, field)))
        set_(self, "in_chans", _int(own, "in_chans", self.in_chans, minimum=1))
        set_(self, "num_classes", _int(own, "num_classes", self.num_classes, minimum=0))
        set_(self, "mlp_ratio", _float(own, "mlp_ratio", self.mlp_ratio))
        if self.mlp_ratio <= 0:
            raise ConfigError(f"{own}.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        set_(self, "drop_path_rate", _float(own, "drop_path_rate", self.drop_path_rate))
        if not 0 <= self.drop_path_rate < 1:
            raise ConfigError(f"{own}.drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        for field in ("layer_scale", "layer_scale_conv"):
            v = getattr(self, field)
            if v is not None:
                v = _float(own, field, v)
                if v <= 0:
                    raise ConfigError(f"{own}.{field} must be None or > 0, got {v!r}")
                set_(self, field, v)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ConfigError(f"{own}.name must be None or a non-empty string, got {self.name!r}")
        for i in HYBRID_STAGES:
            c, h = self.stage_dims[i], self.num_heads[i]
            if c % h:
                raise ConfigError(
                    f"{own}.num_heads[{i}]={h} does not divide stage {i + 1}'s {c} channels (dim * 2**{i})"
                )
            if int(c * self.mlp_ratio) < 1:
                raise ConfigError(
                    f"{own}.mlp_ratio={self.mlp_ratio!r} gives stage {i + 1} an empty MLP ({c} channels)"
                )

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.dim * 2**i for i in range(len(self.depths)))

    @property
    def num_features(self) -> int:
        """Channels of the last stage (the pooled feature size)."""
        return self.stage_dims[-1]


FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig(_Fields):
    """How a model is computed; none of it changes the parameters.

    dtype: the compute dtype (parameters stay float32; norms and the scan accumulate in float32),
    a name or a jnp dtype, stored as its name; scan_impl / attn_impl / conv_impl: the
    `mambavision_jax.ops` implementations ("auto" picks by platform); remat: recompute each
    block's activations in the backward pass; bn_groups: BatchNorm statistics per group of the
    batch (the official per-GPU BatchNorm), 1 for the whole batch; scan_sharding: an
    `ops.ScanSharding` (the mesh and batch axes of the jit the model runs under) with which the
    Pallas scans run per device, None for the plain call. scan_sharding holds devices: it is
    process-local, so `to_dict()` (and every file written from it) leaves it out.
    """

    dtype: str = "float32"
    scan_impl: str = "auto"
    attn_impl: str = "auto"
    conv_impl: str = "auto"
    remat: bool = False
    bn_groups: int = 1
    scan_sharding: ScanSharding | None = dataclasses.field(default=None, metadata={"process_local": True})

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        from mambavision_jax import ops  # the implementations' names live with them

        own = "RuntimeConfig"
        dtype = self.dtype
        if not isinstance(dtype, str):
            import numpy as np

            try:
                dtype = np.dtype(dtype).name
            except TypeError:
                raise ConfigError(f"{own}.dtype must be one of {FLOAT_DTYPES}, got {self.dtype!r}") from None
        if dtype not in FLOAT_DTYPES:
            raise ConfigError(f"{own}.dtype must be one of {FLOAT_DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)
        for field, valid in (
            ("scan_impl", ("auto", *ops.SCAN_IMPLS)),
            ("attn_impl", ops.ATTN_IMPLS),
            ("conv_impl", ops.CONV_IMPLS),
        ):
            v = getattr(self, field)
            if v not in valid:
                raise ConfigError(f"{own}.{field} must be one of {list(valid)}, got {v!r}")
        if not isinstance(self.remat, bool):
            raise ConfigError(f"{own}.remat must be True or False, got {self.remat!r}")
        object.__setattr__(self, "bn_groups", _int(own, "bn_groups", self.bn_groups, minimum=1))
        if self.scan_sharding is not None and not isinstance(self.scan_sharding, ops.ScanSharding):
            raise ConfigError(
                f"{own}.scan_sharding must be None or a mambavision_jax.ops.ScanSharding(mesh, "
                f"batch_axes), got {type(self.scan_sharding).__name__}"
            )

    @property
    def compute_dtype(self):
        import jax.numpy as jnp

        return jnp.dtype(self.dtype)
