"""Reading and writing official checkpoint files: `.pth.tar`, `.safetensors`, Hugging Face folders.

Everything here speaks `{official key: numpy array}`; `api.py` maps that onto the NNX model.
Paths may be local or URLs (gs://...): a remote file is read from a temporary local copy, and an
output is written to a local temporary file first, then renamed into place (local) or uploaded as
one whole object (an object store).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mambavision_jax.paths import as_path, is_remote, local_copy, path_of, upload_file

HF_PREFIX = "model."
HF_WEIGHTS, HF_CONFIG = "model.safetensors", "config.json"
# Buffers that are integers in official checkpoints (BatchNorm's step counter); every other tensor
# is a parameter or a statistic and must be floating point.
INTEGER_BUFFERS = ("num_batches_tracked",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (the message says why)."""


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is an optional extra
        raise CheckpointError(
            "reading or writing .pth.tar files needs PyTorch: "
            "pip install 'mambavision-jax[torch]' (or use .safetensors)"
        ) from e
    return torch


def _to_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def read_torch_file(
    path: str | Path, *, use_ema: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A `.pth.tar` / `.pth` / `.bin`, loaded with `weights_only=True`: a file that would need to run
    code to load is refused, never executed."""
    torch = _torch()
    path = path_of(path)
    with local_copy(path) as local:  # a download failure is no corrupt-file error
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                ckpt = torch.load(local, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "weights_only" in str(e) or "Unsupported global" in str(e):
                raise CheckpointError(
                    f"{path}: refusing to load: the file needs arbitrary Python objects to unpickle, "
                    f"which could run code ({msg}). Re-save its state_dict with torch.save on a trusted "
                    f"machine, or convert it to .safetensors."
                ) from e
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {type(e).__name__}: {msg}"
            ) from e
    meta: dict[str, Any] = {}
    if isinstance(ckpt, dict) and isinstance(ckpt.get("args"), argparse.Namespace):
        meta["model_name"] = getattr(ckpt["args"], "model", None)
    if isinstance(ckpt, dict) and "mambavision_jax_config" in ckpt:  # written by save_torch_checkpoint
        meta["mambavision_jax_config"] = ckpt["mambavision_jax_config"]
    if isinstance(ckpt, dict) and isinstance(ckpt.get("meta"), dict):  # mmengine (mmseg / mmdet) checkpoints
        meta["mmengine_meta"] = ckpt["meta"]
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path}: expected a dict of tensors or a checkpoint dict, got {type(ckpt).__name__}"
        )
    if use_ema:
        for k in ("state_dict_ema", "model_ema"):
            if isinstance(ckpt.get(k), dict):
                sd = ckpt[k]
                break
        else:
            raise CheckpointError(
                f"{path}: use_ema=True but the file has no 'state_dict_ema' "
                f"(top-level keys: {sorted(ckpt)[:10]})"
            )
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

    path = path_of(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    with local_copy(path) as local:  # a download failure is no corrupt-file error
        try:
            sd = load_file(local)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{path}: not a readable safetensors file (truncated or corrupt?): {e}"
            ) from e
    meta: dict[str, Any] = {}
    config = path.with_name(HF_CONFIG)
    if config.is_file():
        meta["hf_config"] = read_hf_config(config)
    return sd, meta


def read_hf_config(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(path_of(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e


def read_state_dict(
    path: str | Path, *, use_ema: bool = False, allow_nonfinite: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Any official checkpoint -> ({official key: array}, metadata), keys normalised:
    `module.` (DDP), `model.` (Hugging Face), `encoder.` / `backbone.` (detection/segmentation)
    prefixes removed and `num_batches_tracked` dropped. Weights that cannot be right are refused
    (see `check_weights`); `use_ema` applies to `.pth.tar` training checkpoints only."""
    path = path_of(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    is_safetensors = path.is_dir() or path.suffix == ".safetensors"
    if use_ema and is_safetensors:
        raise CheckpointError(
            f"{path}: use_ema (--use-ema) takes the EMA weights ('state_dict_ema') of "
            f"a .pth.tar training checkpoint; a .safetensors file or Hugging Face "
            f"folder holds one set of weights: drop use_ema"
        )
    if path.is_dir():
        if not (path / HF_WEIGHTS).is_file():
            raise CheckpointError(
                f"{path}: a folder, but no {HF_WEIGHTS} in it (expected a Hugging "
                f"Face model folder: {HF_CONFIG} + {HF_WEIGHTS})"
            )
        sd, meta = read_safetensors_file(path / HF_WEIGHTS)
    elif is_safetensors:
        sd, meta = read_safetensors_file(path)
    else:
        sd, meta = read_torch_file(path, use_ema=use_ema)
    check_weights(sd, path, allow_nonfinite=allow_nonfinite)
    return normalise_keys(sd), meta


def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _is_float(dtype: np.dtype) -> bool:
    # ml_dtypes' bfloat16 / float8 (what safetensors.numpy returns for BF16) are kind 'V' to numpy
    return dtype.kind == "f" or "float" in dtype.name


def check_weights(sd: dict[str, np.ndarray], source: str | Path, *, allow_nonfinite: bool = False) -> None:
    """Refuse weights that cannot be a trained model's: a non-float tensor where a parameter or
    BatchNorm statistic belongs (only `num_batches_tracked` is an integer in official checkpoints),
    or NaN / inf values (a diverged run; `allow_nonfinite=True` loads them anyway, for debugging)."""
    wrong_type = [
        f"{k} ({v.dtype})"
        for k, v in sd.items()
        if not _is_float(v.dtype) and not k.endswith(INTEGER_BUFFERS)
    ]
    if wrong_type:
        raise CheckpointError(
            f"{source}: {len(wrong_type)} tensor(s) that must hold floating-point "
            f"weights have another dtype: {_few(wrong_type)}. The file is not a "
            f"model checkpoint, or was written with the wrong dtype"
        )
    if allow_nonfinite:
        return
    nonfinite = [
        k
        for k, v in sd.items()
        if _is_float(v.dtype) and not np.isfinite(v if v.dtype.kind == "f" else v.astype(np.float32)).all()
    ]
    if nonfinite:
        raise CheckpointError(
            f"{source}: NaN or inf values in {len(nonfinite)} tensor(s): "
            f"{_few(nonfinite)}. These weights cannot give a usable model (a "
            f"diverged run?); to load them anyway for debugging pass "
            f"--allow-nonfinite (allow_nonfinite=True)"
        )


def normalise_keys(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    for prefix in ("module.", HF_PREFIX):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    for prefix in ("encoder.", "backbone."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def write_torch_file(
    sd: dict[str, np.ndarray],
    path: str | Path,
    extra: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """The official layout: {'state_dict': {...}} plus `extra` entries (e.g. 'arch'). An existing
    file is replaced only with overwrite=True."""
    torch = _torch()
    path = check_output_file(path, overwrite=overwrite)
    tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}
    tmp = _write_tmp(path, lambda t: torch.save({"state_dict": tensors, **(extra or {})}, t))
    _commit([(tmp, path)])


def write_safetensors_file(
    sd: dict[str, np.ndarray], path: str | Path, hf_config: dict | None = None, *, overwrite: bool = False
) -> None:
    """Hugging Face layout: keys `model.` + official key; `config.json` written beside it.
    Refused without overwrite=True when `path` exists, or when the folder's config.json describes
    another model (it would stop matching that folder's own weights); with it, both files are
    written in full first and then renamed into place one right after the other."""
    from safetensors.numpy import save_file

    path = check_output_file(path, overwrite=overwrite)
    config_path = path.with_name(HF_CONFIG)
    config_text = None if hf_config is None else json.dumps(hf_config, indent=2) + "\n"
    if config_text is not None and config_path.exists():
        if config_path.is_dir():
            raise IsADirectoryError(
                f"{config_path} is a folder; the {HF_CONFIG} of {path.name} cannot be written beside it"
            )
        try:
            same = json.loads(config_path.read_text()) == json.loads(config_text)
        except (ValueError, UnicodeDecodeError):
            same = False
        if same:
            config_text = None  # already describes this model: leave the file alone
        elif not overwrite:
            raise FileExistsError(
                f"{config_path} describes another model; writing {path.name} beside it would replace "
                f"it and the folder's own weights would no longer load. Write into another folder, "
                f"or pass --overwrite (overwrite=True) to replace both"
            )
    arrays = {HF_PREFIX + k: np.ascontiguousarray(v) for k, v in sd.items()}
    pending = []
    try:
        pending.append((_write_tmp(path, lambda t: save_file(arrays, t, metadata={"format": "pt"})), path))
        if config_text is not None:
            pending.append((_write_tmp(config_path, lambda t: Path(t).write_text(config_text)), config_path))
    except BaseException:
        for tmp, final in pending:
            _discard(tmp, final)
        raise
    _commit(pending)


def check_output_file(path: str | Path, *, overwrite: bool = False) -> Path:
    """The output path, after refusing a folder, a missing or non-folder parent, and (unless
    overwrite) an existing file. Called before any work, so a refusal costs nothing."""
    if not os.fspath(path):
        raise ValueError("the output path is empty; name a file")
    remote = is_remote(path)  # an object store: no devices, no parent folders to check
    path = as_path(path) if remote else Path(path).absolute()
    if not remote and path.exists() and not path.is_dir() and not path.is_file():
        # os.replace would swap a device or pipe (e.g. /dev/null) for a regular file
        raise ValueError(f"{path} is not a regular file (a device, pipe or socket); name a file")
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder; name the output file inside it, e.g. "
            f"{path / 'model.pth.tar'} or {path / 'model.safetensors'}"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    if remote:
        return path
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a folder")
    return path


def _write_tmp(path: Path, write: Callable[[str], Any]) -> Path:
    # Written under a hidden temporary name beside the target (same file system, so the rename
    # that follows is atomic): a crash mid-write never leaves a truncated file under the real name.
    # For an object store, in a local temporary folder, uploaded whole by _commit.
    if is_remote(path):
        tmp = Path(tempfile.mkdtemp(prefix="mambavision_jax-")) / path.name
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(str(tmp))
        os.chmod(tmp, 0o644)  # safetensors creates 0600; checkpoints are meant to be shared like .pth.tar
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        _discard(tmp, path)
        raise
    return tmp


def _discard(tmp: Path, path) -> None:
    if is_remote(path):
        shutil.rmtree(tmp.parent, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def _commit(pending: list[tuple[Path, Path]]) -> None:
    try:
        for tmp, path in pending:
            if is_remote(path):
                upload_file(tmp, path)
            else:
                os.replace(tmp, path)
    finally:
        for tmp, path in pending:
            _discard(tmp, path)
