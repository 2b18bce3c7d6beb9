"""The public converter API: official weights <-> NNX models."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mambavision_jax.convert import checkpoint_io as io
from mambavision_jax.convert.checkpoint_io import CheckpointError
from mambavision_jax.convert.keymap import jax_to_torch_array, path_to_torch_key, torch_to_jax_array
from mambavision_jax.convert.variants import candidates_for_weights, infer_variant, variant_from_hf_config
from mambavision_jax.models.registry import VARIANTS, create_model, model_args, pretrained_cfg
from mambavision_jax.paths import as_path, atomic_write_text

_STATE = (nnx.Param, nnx.BatchStat)
ORBAX_META = "mambavision_jax.json"
_HEAD_KEYS = ("head.weight", "head.bias")


def _flat_state(model) -> list:
    return list(nnx.to_flat_state(nnx.state(model, _STATE)))


def to_torch_state_dict(model) -> dict[str, np.ndarray]:
    """{official key: float32 numpy array}, loadable by the official model with strict=True.
    (`num_batches_tracked` counters are left out; PyTorch fills them in.)"""
    return {path_to_torch_key(p): jax_to_torch_array(p, np.asarray(v.get_value())) for p, v in _flat_state(model)}


def torch_key_shapes(model) -> dict[str, tuple[int, ...]]:
    """{official key: shape} of a model, also of an abstract one from `nnx.eval_shape`."""
    return {path_to_torch_key(p): jax_to_torch_array(p, np.empty(v.shape, np.bool_)).shape
            for p, v in _flat_state(model)}


def load_state_dict(model, sd: dict[str, np.ndarray], *, strict: bool = True,
                    skip: tuple[str, ...] = ()) -> list[str]:
    """Fill `model` in place from {official key: array}. Every key must be used and every
    parameter and BatchNorm statistic filled, else one CheckpointError lists the missing,
    unexpected and mis-shaped keys. Returns the keys in `skip` that were left as initialised."""
    missing, mismatched, updates = [], [], []
    used = set(skip)
    for path, var in _flat_state(model):
        key = path_to_torch_key(path)
        if key in skip:
            continue
        if key not in sd:
            missing.append(key)
            continue
        used.add(key)
        arr = torch_to_jax_array(path, sd[key])
        if arr.shape != tuple(var.shape):
            expected = jax_to_torch_array(path, np.empty(var.shape, np.bool_)).shape
            mismatched.append(f"{key}: checkpoint {tuple(sd[key].shape)} vs model {expected}")
            continue
        updates.append((path, var.replace(jnp.asarray(arr, dtype=var.get_value().dtype))))
    unexpected = sorted(set(sd) - used)
    if strict and (missing or unexpected or mismatched):
        raise CheckpointError(_mismatch_message(model, sd, missing, unexpected, mismatched))
    nnx.update(model, nnx.from_flat_state(updates))
    return [k for k in skip if k in sd]


def _mismatch_message(model, sd, missing, unexpected, mismatched) -> str:
    def few(items):
        return ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
    name = getattr(model, "name", type(model).__name__)
    hint = ""
    try:
        fits = candidates_for_weights(sd)
        if fits and name not in fits:
            hint = f" (the weights look like {', '.join(fits)})"
    except CheckpointError:
        pass
    lines = [f"the checkpoint does not fit {name}{hint}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {few(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {few(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}): {few(mismatched)}")
    return "\n".join(lines)


def _resolve_name(name, sd, meta) -> tuple[str, dict[str, Any]]:
    if name is not None:
        if name not in VARIANTS:
            create_model(name)  # raises the registry's "unknown model" error
        return name, {}
    if "hf_config" in meta:
        return variant_from_hf_config(meta["hf_config"])
    if meta.get("model_name") in VARIANTS:
        return meta["model_name"], {}
    return infer_variant(sd), {}


def load_torch_checkpoint(path: str | Path, name: str | None = None, *, num_classes: int | None = None,
                          use_ema: bool = False, dtype=jnp.float32, rngs: nnx.Rngs | None = None,
                          allow_nonfinite: bool = False, **overrides):
    """An NNX model with the weights of an official checkpoint: a `.pth.tar` (`state_dict`,
    `state_dict_ema` with use_ema=True, `model`, or a bare dict), a `.safetensors` file, or a
    Hugging Face model folder (config.json + model.safetensors). `name` may be omitted where the
    weights, the checkpoint's args or config.json tell the variant. With `num_classes` different
    from the checkpoint's head, the head is freshly initialised (fine-tuning). Non-float or
    NaN / inf weights are refused unless allow_nonfinite=True (NaN / inf only, for debugging)."""
    sd, meta = io.read_state_dict(path, use_ema=use_ema, allow_nonfinite=allow_nonfinite)
    name, cfg_overrides = _resolve_name(name, sd, meta)
    head = sd.get("head.weight")
    ckpt_classes = int(head.shape[0]) if head is not None else 0
    n_cls = ckpt_classes if num_classes is None else num_classes
    model = create_model(name, num_classes=n_cls, dtype=dtype, rngs=rngs, **{**cfg_overrides, **overrides})
    skip = _HEAD_KEYS if n_cls != ckpt_classes else ()
    load_state_dict(model, sd, skip=skip)
    model.eval()
    return model


def hf_config(model) -> dict[str, Any]:
    """A Hugging Face `config.json` for the model, in the fields the official hub configs use."""
    name = getattr(model, "name", "mamba_vision_T")
    a, cfg = model_args(name), pretrained_cfg(name)
    stage_dims = model.stage_dims
    return {
        "architectures": ["MambaVisionModelForImageClassification"],
        "model_type": "mambavision",
        "mambavision_jax_name": name,
        "dim": stage_dims[0],
        "in_dim": int(model.patch_embed.conv_down[0].kernel.shape[-1]),
        "depths": [len(level.blocks) for level in model.levels],
        "num_heads": list(a["num_heads"]),
        "window_size": [level.window_size for level in model.levels],
        "mlp_ratio": a.get("mlp_ratio", 4),
        "drop_path_rate": a["drop_path_rate"],
        "layer_scale": a.get("layer_scale"),
        "layer_scale_conv": None,
        "num_classes": model.num_classes,
        "crop_pct": cfg.crop_pct,
        "crop_mode": cfg.crop_mode,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "torch_dtype": "float32",
    }


def save_torch_checkpoint(model, path: str | Path, *, overwrite: bool = False) -> Path:
    """`.safetensors` (Hugging Face layout: keys `model.*`, config.json beside it) or `.pth.tar`
    (`{'state_dict': ..., 'arch': name}`); both load into the official model with strict=True.
    An existing file (or another model's config.json) is replaced only with overwrite=True."""
    path = io.check_output_file(path, overwrite=overwrite)
    sd = to_torch_state_dict(model)
    if path.suffix == ".safetensors":
        io.write_safetensors_file(sd, path, hf_config(model), overwrite=overwrite)
    else:
        io.write_torch_file(sd, path, extra={"arch": getattr(model, "name", None)}, overwrite=overwrite)
    return path


# ------------------------------------------------------------------ orbax
def save_checkpoint(model, directory: str | Path) -> Path:
    """The model's parameters and BatchNorm statistics as an orbax checkpoint, with a small JSON
    that names the variant, so `load_checkpoint(directory)` needs no other argument."""
    import orbax.checkpoint as ocp

    directory = as_path(directory)  # local or gs://...
    if directory.exists():
        raise FileExistsError(f"{directory} exists; choose a new folder")
    meta = {"name": getattr(model, "name", None), "num_classes": model.num_classes}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "state", nnx.state(model, _STATE))
    atomic_write_text(directory / ORBAX_META, json.dumps(meta, indent=2) + "\n")
    return directory


def load_checkpoint(path: str | Path, name: str | None = None, *, num_classes: int | None = None,
                    use_ema: bool = False, dtype=jnp.float32, allow_nonfinite: bool = False, **kwargs):
    """Any supported checkpoint: an orbax folder written by `save_checkpoint`, what
    `load_torch_checkpoint` reads (.pth.tar, .safetensors, Hugging Face folder), or a Hugging Face
    hub id such as "nvidia/MambaVision-T-1K" (see `mambavision_jax.hub`)."""
    import orbax.checkpoint as ocp

    from mambavision_jax import hub
    if hub.is_hub_id(path):  # "nvidia/MambaVision-T-1K": fetched, converted once, cached
        return hub.load_checkpoint(path, name, num_classes=num_classes, use_ema=use_ema, dtype=dtype, **kwargs)
    path = as_path(path)  # local or gs://...
    if not (path / ORBAX_META).is_file():
        return load_torch_checkpoint(os.fspath(path), name, num_classes=num_classes, use_ema=use_ema,
                                     dtype=dtype, allow_nonfinite=allow_nonfinite, **kwargs)
    if use_ema:
        raise CheckpointError(f"{path}: an orbax model checkpoint holds one set of weights; use_ema "
                              f"applies to official .pth.tar files")
    meta = json.loads((path / ORBAX_META).read_text())
    if name is not None and meta["name"] is not None and name != meta["name"]:
        raise CheckpointError(f"{path} holds {meta['name']}, not {name}")
    model = create_model(name or meta["name"], num_classes=meta["num_classes"], dtype=dtype, **kwargs)
    abstract = nnx.state(model, _STATE)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path / "state", abstract)
    nnx.update(model, restored)
    io.check_weights(to_torch_state_dict(model), path, allow_nonfinite=allow_nonfinite)
    if num_classes is not None and num_classes != model.num_classes:
        # fine-tuning with another head: everything but the head carries over
        new = create_model(model.name, num_classes=num_classes, dtype=dtype, **kwargs)
        load_state_dict(new, to_torch_state_dict(model), skip=_HEAD_KEYS)
        model = new
    model.eval()
    return model
