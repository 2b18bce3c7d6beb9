"""The public converter API: official weights <-> NNX models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mambavision_jax.convert import checkpoint_io as io
from mambavision_jax.convert.keymap import jax_to_torch_array, path_to_torch_key, torch_to_jax_array
from mambavision_jax.convert.variants import (
    JAX_CONFIG_KEY,
    candidates_for_weights,
    config_from_hf,
    infer_variant,
)
from mambavision_jax.errors import CheckpointError, first_line
from mambavision_jax.models.config import ConfigError, MambaVisionConfig
from mambavision_jax.models.registry import CONFIGS, create_model, model_config
from mambavision_jax.paths import as_path, atomic_dir, check_output, path_of

_STATE = (nnx.Param, nnx.BatchStat)
ORBAX_META = "mambavision_jax.json"
_HEAD_KEYS = ("head.weight", "head.bias")


def _flat_state(model) -> list:
    return list(nnx.to_flat_state(nnx.state(model, _STATE)))


def to_torch_state_dict(model) -> dict[str, np.ndarray]:
    """{official key: float32 numpy array}, loadable by the official model with strict=True.
    (`num_batches_tracked` counters are left out; PyTorch fills them in.)"""
    return {
        path_to_torch_key(p): jax_to_torch_array(p, np.asarray(v.get_value())) for p, v in _flat_state(model)
    }


def torch_key_shapes(model) -> dict[str, tuple[int, ...]]:
    """{official key: shape} of a model, also of an abstract one from `nnx.eval_shape`."""
    return {
        path_to_torch_key(p): jax_to_torch_array(p, np.empty(v.shape, np.bool_)).shape
        for p, v in _flat_state(model)
    }


def load_state_dict(
    model, sd: dict[str, np.ndarray], *, strict: bool = True, skip: tuple[str, ...] = ()
) -> list[str]:
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

    name = model.name or "the model"
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


def _config_source(path: Path, meta: dict[str, Any]) -> Path:
    """The file the architecture was read from: config.json for a Hugging Face layout."""
    if "hf_config" in meta:
        return (path if path.is_dir() else path.parent) / io.HF_CONFIG
    return path


def _resolve_config(path: Path, name: str | None, sd, meta) -> MambaVisionConfig:
    """The architecture of a checkpoint: the whole config it stores (files this package writes),
    else the caller's `name`, the Hugging Face config.json, the training args' model name, or what
    the weights' shapes reveal. A stored config that is malformed or out of range is a
    CheckpointError naming the file and the field."""
    source = _config_source(path, meta)
    stored = meta.get(JAX_CONFIG_KEY)
    if stored is None and isinstance(meta.get("hf_config"), dict):
        stored = meta["hf_config"].get(JAX_CONFIG_KEY)
    try:
        if stored is not None:
            config = MambaVisionConfig.from_dict(stored)
            if name is not None and config.name is not None and name != config.name:
                raise CheckpointError(f"{path} holds {config.name}, not {name}")
            return config
        if name is not None:
            return model_config(name)
        if "hf_config" in meta:
            return config_from_hf(meta["hf_config"])
        if meta.get("model_name") in CONFIGS:
            return model_config(meta["model_name"])
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return model_config(infer_variant(sd))


def load_torch_checkpoint(
    path: str | Path,
    name: str | None = None,
    *,
    num_classes: int | None = None,
    use_ema: bool = False,
    dtype=jnp.float32,
    rngs: nnx.Rngs | None = None,
    allow_nonfinite: bool = False,
    **overrides,
):
    """An NNX model with the weights of an official checkpoint: a `.pth.tar` (`state_dict`,
    `state_dict_ema` with use_ema=True, `model`, or a bare dict), a `.safetensors` file, or a
    Hugging Face model folder (config.json + model.safetensors). `name` may be omitted where the
    weights, the checkpoint's args or config.json tell the variant; files written by this package
    carry their whole architecture. `overrides` (any `create_model` argument) apply on top. With
    `num_classes` different from the checkpoint's head, the head is freshly initialised
    (fine-tuning). Non-float or NaN / inf weights are refused unless allow_nonfinite=True (NaN / inf
    only, for debugging)."""
    sd, meta = io.read_state_dict(path, use_ema=use_ema, allow_nonfinite=allow_nonfinite)
    config = _resolve_config(path_of(path), name, sd, meta)
    head = sd.get("head.weight")
    ckpt_classes = int(head.shape[0]) if head is not None else 0
    n_cls = ckpt_classes if num_classes is None else num_classes
    model = create_model(config, num_classes=n_cls, dtype=dtype, rngs=rngs, **overrides)
    skip = _HEAD_KEYS if n_cls != ckpt_classes else ()
    load_state_dict(model, sd, skip=skip)
    model.eval()
    return model


def hf_config(model) -> dict[str, Any]:
    """A Hugging Face `config.json` for the model: the fields the official hub configs use (which
    the official `MambaVisionModelForImageClassification` reads), the preprocessing, and the whole
    `MambaVisionConfig` under "mambavision_jax_config" (what `load_torch_checkpoint` rebuilds from)."""
    c, pre = model.config, model.pretrained_cfg
    return {
        "architectures": ["MambaVisionModelForImageClassification"],
        "model_type": "mambavision",
        "mambavision_jax_name": c.name,
        "dim": c.dim,
        "in_dim": c.in_dim,
        "depths": list(c.depths),
        "num_heads": list(c.num_heads),
        "window_size": list(c.window_size),
        "mlp_ratio": c.mlp_ratio,
        "drop_path_rate": c.drop_path_rate,
        "layer_scale": c.layer_scale,
        "layer_scale_conv": c.layer_scale_conv,
        "in_chans": c.in_chans,
        "num_classes": c.num_classes,
        "crop_pct": pre.crop_pct,
        "crop_mode": pre.crop_mode,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "torch_dtype": "float32",
        JAX_CONFIG_KEY: c.to_dict(),
    }


def save_torch_checkpoint(model, path: str | Path, *, overwrite: bool = False) -> Path:
    """`.safetensors` (Hugging Face layout: keys `model.*`, config.json beside it) or `.pth.tar`
    (`{'state_dict': ..., 'arch': name, 'mambavision_jax_config': {...}}`); both load into the
    official model with strict=True and back into this package with no other argument. An existing
    file (or another model's config.json) is replaced only with overwrite=True."""
    path = io.check_output_file(path, overwrite=overwrite)
    sd = to_torch_state_dict(model)
    if path.suffix == ".safetensors":
        io.write_safetensors_file(sd, path, hf_config(model), overwrite=overwrite)
    else:
        io.write_torch_file(
            sd, path, extra={"arch": model.name, JAX_CONFIG_KEY: model.config.to_dict()}, overwrite=overwrite
        )
    return path


# ------------------------------------------------------------------ orbax
ORBAX_FORMAT = 2


def save_checkpoint(model, directory: str | Path) -> Path:
    """The model's parameters and BatchNorm statistics as an orbax checkpoint, with
    `mambavision_jax.json` = {"format": 2, "config": the model's MambaVisionConfig}, so that
    `load_checkpoint(directory)` rebuilds the model with no other argument. `directory` (local or
    gs://) must not exist; it appears whole or not at all (`paths.atomic_dir`)."""
    directory = check_output(directory, kind="dir")
    with atomic_dir(directory, last=ORBAX_META) as tmp:
        write_orbax(model, tmp)
    return directory


def write_orbax(model, folder: str | Path, *, task: str | None = None) -> None:
    """`save_checkpoint`'s files, written into the existing local `folder` (its `state/` and, last,
    `mambavision_jax.json`, which marks the checkpoint complete). task: recorded in the json for
    models other than classifiers ("segmentation": `segmentation.checkpoint.save_checkpoint`)."""
    import orbax.checkpoint as ocp

    folder = Path(folder)
    meta = {"format": ORBAX_FORMAT, **({"task": task} if task else {}), "config": model.config.to_dict()}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(folder / "state"), nnx.state(model, _STATE))
    (folder / ORBAX_META).write_text(json.dumps(meta, indent=2) + "\n")


def _orbax_config(path: Path, name: str | None) -> MambaVisionConfig:
    """The architecture in an orbax folder's mambavision_jax.json: {"format": 2, "config": {...}},
    or the first format's {"name": official name, "num_classes": n}."""
    source = path / ORBAX_META
    try:
        meta = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{source}: not valid JSON ({e})") from None
    try:
        if not isinstance(meta, dict):
            raise ConfigError(f"expected a JSON object, got {type(meta).__name__}")
        if meta.get("format") == ORBAX_FORMAT:
            config = MambaVisionConfig.from_dict(meta.get("config"))
        elif "format" in meta:
            raise ConfigError(f"unknown format {meta['format']!r} (this version reads {ORBAX_FORMAT})")
        else:  # the first format: an official name and the class count
            if meta.get("name") is None and name is None:
                raise ConfigError("no model name stored; pass the name")
            saved = meta.get("name")
            if saved is not None and not isinstance(saved, str):
                raise ConfigError(f"name must be a string, got {saved!r}")
            if saved is not None and saved not in CONFIGS:
                raise ConfigError(f"name {saved!r} is not an official model")
            config = model_config(saved or name).replace(num_classes=meta.get("num_classes", 1000))
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None
    if name is not None and config.name is not None and name != config.name:
        raise CheckpointError(f"{path} holds {config.name}, not {name}")
    return config


def _leaf_shapes(tree) -> dict[str, tuple[int, ...]]:
    out = {}
    for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in p]
        if keys and keys[-1] == "value":  # orbax's metadata of an nnx Variable
            keys = keys[:-1]
        out[".".join(keys)] = tuple(getattr(v, "shape", ()))
    return out


def _check_orbax_shapes(path: Path, ckptr, abstract) -> None:
    """One short CheckpointError if the saved arrays do not fit the model (orbax's own error
    prints whole arrays)."""
    try:
        saved = _leaf_shapes(ckptr.metadata(path / "state").item_metadata.tree)
    except Exception as e:  # noqa: BLE001 - a missing or corrupt state folder, in whatever form
        raise CheckpointError(
            f"{path / 'state'}: not a readable orbax checkpoint ({first_line(e, 200)})"
        ) from None
    want = _leaf_shapes(abstract.to_pure_dict())
    problems = sorted(set(want) ^ set(saved)) + [
        f"{k}: saved {saved[k]} vs model {s}" for k, s in want.items() if k in saved and saved[k] != s
    ]
    if problems:
        more = f", ... ({len(problems)} in all)" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{path}: the saved arrays do not fit the architecture in {ORBAX_META}: "
            f"{'; '.join(problems[:3])}{more}"
        )


def load_file(
    path: str | Path,
    name: str | None = None,
    *,
    num_classes: int | None = None,
    use_ema: bool = False,
    dtype=jnp.float32,
    allow_nonfinite: bool = False,
    **kwargs,
):
    """A model file or folder: an orbax folder written by `save_checkpoint`, or what
    `load_torch_checkpoint` reads (.pth.tar, .safetensors, Hugging Face folder); local or gs://.
    The architecture comes from the checkpoint; `kwargs` (any `create_model` argument) apply on
    top. (The reader behind `weights.load`, which also takes hub ids and training runs:
    `mambavision_jax.convert.load_checkpoint` is `weights.load_checkpoint`.)"""
    import orbax.checkpoint as ocp

    path = as_path(path)  # local or gs://...
    if not (path / ORBAX_META).is_file():
        return load_torch_checkpoint(
            os.fspath(path),
            name,
            num_classes=num_classes,
            use_ema=use_ema,
            dtype=dtype,
            allow_nonfinite=allow_nonfinite,
            **kwargs,
        )
    if use_ema:
        raise CheckpointError(
            f"{path}: an orbax model checkpoint holds one set of weights; use_ema "
            f"applies to official .pth.tar files"
        )
    config = _orbax_config(path, name)
    model = create_model(config, dtype=dtype, **kwargs)
    abstract = nnx.state(model, _STATE)
    with ocp.StandardCheckpointer() as ckptr:
        _check_orbax_shapes(path, ckptr, abstract)
        restored = ckptr.restore(path / "state", abstract)
    nnx.update(model, restored)
    io.check_weights(to_torch_state_dict(model), path, allow_nonfinite=allow_nonfinite)
    if num_classes is not None and num_classes != model.num_classes:
        # fine-tuning with another head: everything but the head carries over
        new = create_model(model.config, num_classes=num_classes, dtype=dtype, **kwargs)
        load_state_dict(new, to_torch_state_dict(model), skip=_HEAD_KEYS)
        model = new
    model.eval()
    return model
