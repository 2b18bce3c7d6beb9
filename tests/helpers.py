"""Shared test helpers: run the official model and ours on the same images."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def images(batch: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """NHWC float32 images."""
    return np.random.RandomState(seed).randn(batch, h, w, 3).astype(np.float32)


def official_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def jax_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    if jax.default_backend() == "cpu":  # op by op: no whole-model compile for a single call
        return np.asarray(model(jnp.asarray(x_nhwc)))
    # On an accelerator every primitive run eagerly is its own compile: jit the forward instead.
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.asarray(x_nhwc)))


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def save_official_pth(model, path, model_name: str | None = None, ema: bool = False) -> None:
    """As the official train.py saves: {'state_dict', 'args', ...} (+ 'state_dict_ema')."""
    import torch

    ckpt = {
        "epoch": 3,
        "arch": model_name,
        "state_dict": model.state_dict(),
        "args": argparse.Namespace(model=model_name, lr=5e-3),
    }
    if ema:
        ckpt["state_dict_ema"] = {
            k: v.clone() + (0.5 if v.is_floating_point() else 0) for k, v in model.state_dict().items()
        }
    torch.save(ckpt, path)


def save_official_hf(model, folder, config: dict) -> None:
    """A Hugging Face model folder: config.json + model.safetensors with keys 'model.' + key."""
    import json
    import os

    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file(
        {"model." + k: v.contiguous() for k, v in model.state_dict().items()},
        os.path.join(folder, "model.safetensors"),
    )
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
