"""Segmentation checkpoints: load any segmenter's weights through the package's one resolver
(`weights.resolve` / `weights.load_segmenter`), and the file readers and writers of
`segmentation.checkpoint_io` (re-exported here: `save_mmseg_checkpoint`, `save_checkpoint`, ...).

    model = load_checkpoint("nvidia/mamba_vision_160k_ade20k-512x512_tiny")  # or "tiny", a .pth, a folder
"""

from __future__ import annotations

import os

from mambavision_jax import weights
from mambavision_jax.segmentation.checkpoint_io import (
    HUB_IDS,
    SEG_CONFIG_KEY,
    config_from_mmseg_cfg,
    fetch_hub,
    hub_repo,
    is_mmseg_checkpoint,
    is_mmseg_file,
    is_segmentation_folder,
    load_mmseg_checkpoint,
    load_orbax_checkpoint,
    read_mmseg_state_dict,
    resolve_hub_id,
    save_checkpoint,
    save_mmseg_checkpoint,
    to_mmseg_state_dict,
    variant_of,
)
from mambavision_jax.segmentation.model import UperNet

__all__ = [
    "HUB_IDS",
    "SEG_CONFIG_KEY",
    "config_from_mmseg_cfg",
    "fetch_hub",
    "hub_repo",
    "is_mmseg_checkpoint",
    "is_mmseg_file",
    "is_segmentation_folder",
    "load_checkpoint",
    "load_mmseg_checkpoint",
    "load_orbax_checkpoint",
    "read_mmseg_state_dict",
    "resolve_hub_id",
    "save_checkpoint",
    "save_mmseg_checkpoint",
    "to_mmseg_state_dict",
    "variant_of",
]


def load_checkpoint(
    path_or_hub_id, *, checkpoint="best", revision=None, cache_dir=None, token=None, runtime=None, **overrides
) -> UperNet:
    """A UperNet in eval mode from: an official mmseg `.pth` (or one `save_mmseg_checkpoint`
    wrote), an orbax folder `save_checkpoint` wrote, a segmentation training run (`checkpoint`:
    'best', 'latest' or a step), or a hub id / short name of an official segmenter (downloaded
    once, converted once, cached): `weights.load_segmenter`. `overrides`: `create_segmenter`'s."""
    spec = os.fspath(path_or_hub_id) if isinstance(path_or_hub_id, os.PathLike) else path_or_hub_id
    return weights.load_segmenter(
        spec,
        checkpoint=checkpoint,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        runtime=runtime,
        needed_by="segmentation.checkpoint.load_checkpoint",
        **overrides,
    )
