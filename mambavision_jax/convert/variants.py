"""Which official variant a set of weights (or a Hugging Face config) belongs to."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from mambavision_jax.convert.checkpoint_io import CheckpointError
from mambavision_jax.models.config import ConfigError, MambaVisionConfig
from mambavision_jax.models.registry import CONFIGS


def architecture_of(sd: dict[str, np.ndarray]) -> dict[str, Any]:
    """What the tensor shapes reveal: dim, in_dim, depths, layer scale, classes. (Head counts and
    window sizes leave no trace in the shapes.)"""
    try:
        in_dim = int(sd["patch_embed.conv_down.0.weight"].shape[0])
        dim = int(sd["patch_embed.conv_down.3.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(
            f"not a MambaVision state dict: no key {e.args[0]!r} (first keys: {sorted(sd)[:5]})"
        ) from None
    depths = []
    for i in range(4):
        blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"levels\.{i}\.blocks\.(\d+)\.", k))}
        depths.append(max(blocks) + 1 if blocks else 0)
    head = sd.get("head.weight")
    return dict(
        dim=dim,
        in_dim=in_dim,
        depths=tuple(depths),
        layer_scale="levels.2.blocks.0.gamma_1" in sd,
        num_classes=int(head.shape[0]) if head is not None else 0,
    )


def candidates_for_weights(sd: dict[str, np.ndarray]) -> list[str]:
    arch = architecture_of(sd)
    return [
        n
        for n, c in CONFIGS.items()
        if (c.dim, c.in_dim, c.depths, c.layer_scale is not None)
        == (arch["dim"], arch["in_dim"], arch["depths"], arch["layer_scale"])
    ]


def infer_variant(sd: dict[str, np.ndarray]) -> str:
    """The variant the weights fit. Variants that differ only in what shapes cannot show (e.g.
    L2 and L2_512_21k: window sizes) are ambiguous: the caller must name one."""
    names = candidates_for_weights(sd)
    if not names:
        arch = architecture_of(sd)
        raise CheckpointError(
            f"the weights fit no official variant (dim={arch['dim']}, "
            f"in_dim={arch['in_dim']}, depths={arch['depths']}, "
            f"layer_scale={arch['layer_scale']}); pass the model name and overrides"
        )
    if len({(CONFIGS[n].num_heads, CONFIGS[n].window_size) for n in names}) > 1:
        raise CheckpointError(
            f"the weights fit several variants that differ in window size or heads: "
            f"{names}; pass the model name"
        )
    return names[0]


# The fields a Hugging Face config.json shares with MambaVisionConfig (the official hub configs
# carry the first five and the scales; `num_classes` is the head's size, read from the weights).
_REQUIRED = ("dim", "in_dim", "depths", "num_heads", "window_size")
_OPTIONAL = ("mlp_ratio", "drop_path_rate", "layer_scale", "layer_scale_conv", "in_chans")
JAX_CONFIG_KEY = "mambavision_jax_config"  # the whole MambaVisionConfig, in files this package writes


def config_from_hf(hf: dict[str, Any]) -> MambaVisionConfig:
    """The architecture in a Hugging Face `config.json`: the whole `MambaVisionConfig` this package
    stores there, else the official fields on top of the closest official variant (whose name is
    kept for its preprocessing). Bad values raise ConfigError naming the field."""
    if not isinstance(hf, dict):
        raise ConfigError(f"expected a JSON object, got {type(hf).__name__}")
    if JAX_CONFIG_KEY in hf:
        return MambaVisionConfig.from_dict(hf[JAX_CONFIG_KEY])
    missing = [f for f in _REQUIRED if f not in hf]
    if missing:
        raise ConfigError(f"lacks {missing}: not a MambaVision config")
    want = {f: hf[f] for f in (*_REQUIRED, *_OPTIONAL) if f in hf}
    if want.get("mlp_ratio") is None:
        want.pop("mlp_ratio", None)
    if want.get("drop_path_rate") is None:
        want.pop("drop_path_rate", None)
    name = hf.get("mambavision_jax_name")
    if name not in CONFIGS:

        def differences(n):
            c = CONFIGS[n].to_dict()
            return sum(_norm(c[f]) != _norm(v) for f, v in want.items())

        name = min(CONFIGS, key=differences)
    return CONFIGS[name].replace(**want)


def _norm(v):
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v
