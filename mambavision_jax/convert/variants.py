"""Which official variant a set of weights (or a Hugging Face config) belongs to."""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from mambavision_jax.models.registry import VARIANTS, model_args
from mambavision_jax.convert.checkpoint_io import CheckpointError


def architecture_of(sd: dict[str, np.ndarray]) -> dict[str, Any]:
    """What the tensor shapes reveal: dim, in_dim, depths, layer scale, classes. (Head counts and
    window sizes leave no trace in the shapes.)"""
    try:
        in_dim = int(sd["patch_embed.conv_down.0.weight"].shape[0])
        dim = int(sd["patch_embed.conv_down.3.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"not a MambaVision state dict: no key {e.args[0]!r} "
                              f"(first keys: {sorted(sd)[:5]})") from None
    depths = []
    for i in range(4):
        blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"levels\.{i}\.blocks\.(\d+)\.", k))}
        depths.append(max(blocks) + 1 if blocks else 0)
    head = sd.get("head.weight")
    return dict(dim=dim, in_dim=in_dim, depths=tuple(depths),
                layer_scale="levels.2.blocks.0.gamma_1" in sd,
                num_classes=int(head.shape[0]) if head is not None else 0)


def candidates_for_weights(sd: dict[str, np.ndarray]) -> list[str]:
    arch = architecture_of(sd)
    return [n for n in VARIANTS
            if (model_args(n)["dim"], model_args(n)["in_dim"], tuple(model_args(n)["depths"]),
                model_args(n).get("layer_scale") is not None)
            == (arch["dim"], arch["in_dim"], arch["depths"], arch["layer_scale"])]


def _runtime_arch(name: str) -> tuple:
    a = model_args(name)
    return tuple(a["num_heads"]), tuple(a["window_size"])


def infer_variant(sd: dict[str, np.ndarray]) -> str:
    """The variant the weights fit. Variants that differ only in what shapes cannot show (e.g.
    L2 and L2_512_21k: window sizes) are ambiguous: the caller must name one."""
    names = candidates_for_weights(sd)
    if not names:
        arch = architecture_of(sd)
        raise CheckpointError(f"the weights fit no official variant (dim={arch['dim']}, "
                              f"in_dim={arch['in_dim']}, depths={arch['depths']}, "
                              f"layer_scale={arch['layer_scale']}); pass the model name and overrides")
    if len({_runtime_arch(n) for n in names}) > 1:
        raise CheckpointError(f"the weights fit several variants that differ in window size or heads: "
                              f"{names}; pass the model name")
    return names[0]


def variant_from_hf_config(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(closest official name, overrides) so that create_model(name, **overrides) builds exactly the
    architecture in a Hugging Face `config.json`."""
    fields = ("dim", "in_dim", "depths", "num_heads", "window_size", "mlp_ratio", "layer_scale",
              "layer_scale_conv")
    missing = [f for f in ("dim", "in_dim", "depths", "num_heads", "window_size") if f not in config]
    if missing:
        raise CheckpointError(f"config.json lacks {missing}: not a MambaVision config")
    want = {f: (tuple(config[f]) if isinstance(config.get(f), list) else config.get(f)) for f in fields if f in config}
    best, best_diff = None, None
    for n in VARIANTS:
        a = dict(model_args(n), mlp_ratio=model_args(n).get("mlp_ratio", 4),
                 layer_scale=model_args(n).get("layer_scale"), layer_scale_conv=None)
        diff = {f: v for f, v in want.items() if _norm(a.get(f)) != _norm(v)}
        if best_diff is None or len(diff) < len(best_diff):
            best, best_diff = n, diff
    return best, best_diff


def _norm(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (float(v) if isinstance(v, (int, float)) else v)
