"""Reading and writing official checkpoint files: `.pth.tar`, `.safetensors`, Hugging Face folders.

Everything here speaks `{official key: numpy array}`; `api.py` maps that onto the NNX model.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

HF_PREFIX = "model."
HF_WEIGHTS, HF_CONFIG = "model.safetensors", "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (the message says why)."""


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is an optional extra
        raise CheckpointError("reading or writing .pth.tar files needs PyTorch: "
                              "pip install 'mambavision-jax[torch]' (or use .safetensors)") from e
    return torch


def _to_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def read_torch_file(path: str | Path, *, use_ema: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A `.pth.tar` / `.pth` / `.bin`, loaded with `weights_only=True`: a file that would need to run
    code to load is refused, never executed."""
    torch = _torch()
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path}: refusing to load: the file needs arbitrary Python objects to unpickle, "
                f"which could run code ({msg}). Re-save its state_dict with torch.save on a trusted "
                f"machine, or convert it to .safetensors.") from e
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {msg}") from e
    meta: dict[str, Any] = {}
    if isinstance(ckpt, dict) and isinstance(ckpt.get("args"), argparse.Namespace):
        meta["model_name"] = getattr(ckpt["args"], "model", None)
    if isinstance(ckpt, dict) and "mambavision_jax_config" in ckpt:  # written by save_torch_checkpoint
        meta["mambavision_jax_config"] = ckpt["mambavision_jax_config"]
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors or a checkpoint dict, got {type(ckpt).__name__}")
    if use_ema:
        for k in ("state_dict_ema", "model_ema"):
            if isinstance(ckpt.get(k), dict):
                sd = ckpt[k]
                break
        else:
            raise CheckpointError(f"{path}: use_ema=True but the file has no 'state_dict_ema' "
                                  f"(top-level keys: {sorted(ckpt)[:10]})")
    elif isinstance(ckpt.get("state_dict"), dict):
        sd = ckpt["state_dict"]
    elif isinstance(ckpt.get("model"), dict):
        sd = ckpt["model"]
    else:
        sd = ckpt
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(ckpt)[:10]})")
    return {k: _to_numpy(v) for k, v in tensors.items()}, meta


def read_safetensors_file(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    meta: dict[str, Any] = {}
    config = path.with_name(HF_CONFIG)
    if config.is_file():
        meta["hf_config"] = read_hf_config(config)
    return sd, meta


def read_hf_config(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e


def read_state_dict(path: str | Path, *, use_ema: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Any official checkpoint -> ({official key: array}, metadata), keys normalised:
    `module.` (DDP), `model.` (Hugging Face), `encoder.` / `backbone.` (detection/segmentation)
    prefixes removed and `num_batches_tracked` dropped."""
    path = Path(path)
    if path.is_dir():
        if not (path / HF_WEIGHTS).is_file():
            raise CheckpointError(f"{path}: a folder, but no {HF_WEIGHTS} in it (expected a Hugging "
                                  f"Face model folder: {HF_CONFIG} + {HF_WEIGHTS})")
        sd, meta = read_safetensors_file(path / HF_WEIGHTS)
    elif not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    elif path.suffix == ".safetensors":
        sd, meta = read_safetensors_file(path)
    else:
        sd, meta = read_torch_file(path, use_ema=use_ema)
    return normalise_keys(sd), meta


def normalise_keys(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    for prefix in ("module.", HF_PREFIX):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    for prefix in ("encoder.", "backbone."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def write_torch_file(sd: dict[str, np.ndarray], path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """The official layout: {'state_dict': {...}} plus `extra` entries (e.g. 'arch')."""
    torch = _torch()
    tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}
    _atomic_write(path, lambda tmp: torch.save({"state_dict": tensors, **(extra or {})}, tmp))


def write_safetensors_file(sd: dict[str, np.ndarray], path: str | Path, hf_config: dict | None = None) -> None:
    """Hugging Face layout: keys `model.` + official key; `config.json` written beside it."""
    from safetensors.numpy import save_file

    path = Path(path)
    arrays = {HF_PREFIX + k: np.ascontiguousarray(v) for k, v in sd.items()}
    _atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata={"format": "pt"}))
    if hf_config is not None:
        (path.parent / HF_CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")


def _atomic_write(path, write) -> None:
    # A crash mid-write must not leave a truncated file under the final name.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, path)
