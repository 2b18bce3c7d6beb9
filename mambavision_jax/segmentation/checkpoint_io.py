"""Segmentation checkpoint files: official mmseg files <-> UperNet, this package's orbax folders,
and the official hub repos converted once into the hub cache. The readers behind `weights`'
segmentation kinds (`mmseg-pth`, `seg-orbax`, `seg-run`, segmentation hub ids); load through
`segmentation.checkpoint.load_checkpoint` / `weights.load_segmenter`.

An mmseg checkpoint is `{"meta": {..., "cfg": config text}, "state_dict": {...}}` with keys
`backbone.*`, `decode_head.*`, `auxiliary_head.*` (mmengine's layout). The model tree of
`UperNet` is mmseg's, so keys are its paths (the table in `convert.keymap`). The architecture
comes from, in order: the config this package stores (`meta["mambavision_jax_seg_config"]`), the
mmengine config text in `meta["cfg"]` (the windows, heads and class count of the run), or the
official config of the variant the shapes reveal.
"""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from mambavision_jax.convert import checkpoint_io as io
from mambavision_jax.convert.api import (
    _STATE,
    ORBAX_FORMAT,
    ORBAX_META,
    _check_orbax_shapes,
    load_state_dict,
    to_torch_state_dict,
    write_orbax,
)
from mambavision_jax.convert.checkpoint_io import CheckpointError
from mambavision_jax.models.config import ConfigError
from mambavision_jax.paths import as_path, atomic_dir, check_output, path_of
from mambavision_jax.segmentation.config import SEG_ALIASES, SEG_CONFIGS, SegmentationConfig
from mambavision_jax.segmentation.model import UperNet, create_segmenter

SEG_CONFIG_KEY = "mambavision_jax_seg_config"  # in the meta of the mmseg files this package writes
_HEAD_PREFIXES = ("backbone.", "decode_head.", "auxiliary_head.")
# The official hub repos hold one mmseg file each, named as the repo.
HUB_IDS = {f"nvidia/{name}": name for name in SEG_CONFIGS}


# ----------------------------------------------------------------------------- detection
def is_mmseg_checkpoint(obj) -> bool:
    """Whether a loaded checkpoint (the dict torch.load returns, or its state_dict) is a MambaVision
    UperNet in mmseg's layout: backbone.patch_embed.* and decode_head.* keys."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        return False
    return "backbone.patch_embed.conv_down.0.weight" in sd and any(
        isinstance(k, str) and k.startswith("decode_head.") for k in sd
    )


_MMSEG_KEYS = (b"backbone.patch_embed.conv_down.0.weight", b"decode_head.")


def is_mmseg_file(path) -> bool:
    """Whether the file at `path` (local or a URL) is an mmseg UperNet checkpoint, read from the key
    names in the pickle of torch's zip format (no tensor is read); a legacy (non-zip) torch file is
    loaded whole to tell."""
    p = path_of(path)
    if not p.is_file():
        return False
    try:
        with p.open("rb") as f, zipfile.ZipFile(f) as z:
            pickles = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
            data = z.read(pickles[0]) if pickles else b""
        return all(key in data for key in _MMSEG_KEYS)
    except zipfile.BadZipFile:
        try:
            sd, _ = io.read_torch_file(p)
        except CheckpointError:
            return False
        return is_mmseg_checkpoint(sd)


def _backbone_arch(sd: dict[str, np.ndarray]) -> tuple:
    from mambavision_jax.convert.variants import architecture_of

    bb = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    a = architecture_of(bb)
    return a["dim"], a["in_dim"], a["depths"], a["layer_scale"]


def variant_of(sd: dict[str, np.ndarray]) -> str:
    """The official segmenter (a `SEG_CONFIGS` name) whose backbone the weights' shapes fit."""
    arch = _backbone_arch(sd)
    for name, c in SEG_CONFIGS.items():
        b = c.backbone
        if (b.dim, b.in_dim, b.depths, b.layer_scale is not None) == arch:
            return name
    raise CheckpointError(
        f"the backbone fits no official segmenter (dim={arch[0]}, in_dim={arch[1]}, depths={arch[2]}, "
        f"layer_scale={arch[3]}); official: {', '.join(SEG_CONFIGS)}"
    )


# ----------------------------------------------------------------------------- mmengine config
_BACKBONE_FIELDS = ("dim", "in_dim", "depths", "num_heads", "window_size", "mlp_ratio", "layer_scale")


def _dict_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "dict":
            out = {}
            for kw in node.keywords:
                if kw.arg is None:
                    continue
                try:
                    out[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    out[kw.arg] = kw.value  # a nested dict(...): walked on its own
            yield out


def _model_cfg(cfg) -> dict[str, dict[str, Any]]:
    """{"backbone", "decode_head", "auxiliary_head": their literal fields} from an mmengine config:
    its text (what mmengine stores in meta["cfg"]: `model = dict(backbone=dict(...), ...)`) or a
    dict with a "model" entry."""
    if isinstance(cfg, dict):
        model = cfg.get("model", cfg)
        return {
            k: dict(model[k])
            for k in ("backbone", "decode_head", "auxiliary_head")
            if isinstance(model.get(k), dict)
        }
    tree = ast.parse(cfg)
    found = {}
    for d in _dict_calls(tree):
        kind = d.get("type")
        if kind == "MM_mamba_vision":
            found["backbone"] = d
        elif kind == "UPerHead":
            found["decode_head"] = d
        elif kind == "FCNHead":
            found["auxiliary_head"] = d
    return found


def config_from_mmseg_cfg(cfg, fallback: SegmentationConfig) -> SegmentationConfig:
    """The SegmentationConfig an mmengine config describes (fields it does not set: `fallback`'s)."""
    parts = _model_cfg(cfg)
    bb = parts.get("backbone")
    if bb is None:
        raise ConfigError("no MM_mamba_vision backbone in the config")
    arch = {k: (tuple(v) if isinstance(v, list) else v) for k, v in bb.items() if k in _BACKBONE_FIELDS}
    seg: dict[str, Any] = {"backbone": fallback.backbone.replace(**arch)}
    head = parts.get("decode_head", {})
    for src, dst in (
        ("num_classes", "num_classes"),
        ("channels", "channels"),
        ("dropout_ratio", "dropout_ratio"),
    ):
        if src in head:
            seg[dst] = head[src]
    if "pool_scales" in head:
        seg["pool_scales"] = tuple(head["pool_scales"])
    aux = parts.get("auxiliary_head")
    seg["auxiliary"] = aux is not None
    if aux is not None:
        for src, dst in (
            ("channels", "aux_channels"),
            ("in_index", "aux_in_index"),
            ("num_convs", "aux_num_convs"),
            ("concat_input", "aux_concat_input"),
        ):
            if src in aux:
                seg[dst] = aux[src]
    return fallback.replace(**seg)


def _resolve_config(path, sd, meta: dict[str, Any]) -> SegmentationConfig:
    mm = meta.get("mmengine_meta") or {}
    try:
        if isinstance(mm.get(SEG_CONFIG_KEY), dict):
            return SegmentationConfig.from_dict(mm[SEG_CONFIG_KEY])
        fallback = SEG_CONFIGS[variant_of(sd)]
        if mm.get("cfg") is not None:
            return config_from_mmseg_cfg(mm["cfg"], fallback)
        # No config: the official one; the class count is the classifier's size.
        return fallback.replace(
            num_classes=int(sd["decode_head.conv_seg.weight"].shape[0]),
            auxiliary=any(k.startswith("auxiliary_head.") for k in sd),
        )
    except (ConfigError, SyntaxError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: the stored config is unusable: {type(e).__name__}: {e}") from None


# ----------------------------------------------------------------------------- mmseg files
def read_mmseg_state_dict(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """({mmseg key: array} without num_batches_tracked, metadata) of an mmseg `.pth` file."""
    path = path_of(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, but no {ORBAX_META} in it (not a segmentation checkpoint)")
    sd, meta = io.read_torch_file(path)
    io.check_weights(sd, path)
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if not is_mmseg_checkpoint(sd):
        raise CheckpointError(
            f"{path}: not a MambaVision UperNet checkpoint in mmseg's layout (no backbone.patch_embed.* "
            f"and decode_head.* keys; first keys: {sorted(sd)[:4]}). A classification checkpoint loads "
            f"with mambavision_jax.convert.load_checkpoint"
        )
    return sd, meta


def load_mmseg_checkpoint(path, *, runtime=None, **overrides) -> UperNet:
    """An official mmseg checkpoint (or one `save_mmseg_checkpoint` wrote) as a UperNet in eval mode."""
    sd, meta = read_mmseg_state_dict(path)
    config = _resolve_config(path, sd, meta)
    model = create_segmenter(config, runtime=runtime, **overrides)
    load_state_dict(model, sd)
    return model


def to_mmseg_state_dict(model: UperNet) -> dict[str, np.ndarray]:
    """{mmseg key: array} that loads into the official segmentor with strict=True (BatchNorm
    `num_batches_tracked` counters included, as 0)."""
    sd = to_torch_state_dict(model)
    for key in [k for k in sd if k.endswith(".running_mean")]:
        sd[key.removesuffix("running_mean") + "num_batches_tracked"] = np.zeros((), np.int64)
    return sd


def save_mmseg_checkpoint(model: UperNet, path, *, overwrite: bool = False) -> Path:
    """An mmseg checkpoint `{"meta": {...}, "state_dict": {...}}` that the official tools load
    (`mmengine.runner.load_checkpoint`), and `load_checkpoint` reads back with its whole config."""
    if not isinstance(model, UperNet):
        raise TypeError(f"save_mmseg_checkpoint: expected a UperNet, got {type(model).__name__}")
    path = io.check_output_file(path, overwrite=overwrite)
    meta = {SEG_CONFIG_KEY: model.config.to_dict(), "arch": model.name}
    io.write_torch_file(to_mmseg_state_dict(model), path, extra={"meta": meta}, overwrite=overwrite)
    return path


# ----------------------------------------------------------------------------- orbax
def save_checkpoint(model: UperNet, directory) -> Path:
    """Parameters and BatchNorm statistics as an orbax checkpoint with `mambavision_jax.json` =
    {"format": 2, "task": "segmentation", "config": the SegmentationConfig}. `directory` (local or
    gs://) must not exist; it appears whole or not at all (`paths.atomic_dir`)."""
    directory = check_output(directory, kind="dir")
    with atomic_dir(directory, last=ORBAX_META) as tmp:
        write_orbax(model, tmp, task="segmentation")
    return directory


def is_segmentation_folder(path) -> bool:
    """Whether `path` is an orbax folder holding a segmenter (its mambavision_jax.json says so)."""
    meta_file = as_path(path) / ORBAX_META
    if not meta_file.is_file():
        return False
    try:
        return json.loads(meta_file.read_text()).get("task") == "segmentation"
    except (ValueError, AttributeError):
        return False


def load_orbax_checkpoint(path, *, runtime=None, **overrides) -> UperNet:
    import orbax.checkpoint as ocp

    path = as_path(path)
    source = path / ORBAX_META
    try:
        meta = json.loads(source.read_text())
        if meta.get("format") != ORBAX_FORMAT or meta.get("task") != "segmentation":
            raise ConfigError(f"not a segmentation checkpoint of format {ORBAX_FORMAT}")
        config = SegmentationConfig.from_dict(meta.get("config"))
    except (ValueError, AttributeError) as e:
        raise CheckpointError(f"{source}: {e}") from None
    model = create_segmenter(config, runtime=runtime, **overrides)
    abstract = nnx.state(model, _STATE)
    with ocp.StandardCheckpointer() as ckptr:
        _check_orbax_shapes(path, ckptr, abstract)
        nnx.update(model, ckptr.restore(path / "state", abstract))
    io.check_weights(to_torch_state_dict(model), path)
    model.eval()
    return model


# ----------------------------------------------------------------------------- hub
def hub_repo(spec, *, short_names: bool = True) -> str | None:
    """The hub repo of the official segmenter `spec` names: its hub id (any case, "hf-hub:"
    allowed) or, with short_names, its `SEG_CONFIGS` name or short name (tiny, small, base, l3);
    else None. (Short names are a segmentation command's: elsewhere "tiny" is a path.)"""
    from mambavision_jax.hub import HUB_PREFIX

    if not isinstance(spec, str):
        return None
    name = spec.removeprefix(HUB_PREFIX)
    if short_names and (name in SEG_ALIASES or name in SEG_CONFIGS):
        return f"nvidia/{SEG_ALIASES.get(name, name)}"
    return {k.lower(): k for k in HUB_IDS}.get(name.lower())


def fetch_hub(spec: str, *, revision=None, cache_dir=None, token=None) -> tuple[Path, dict[str, Any]]:
    """A segmentation hub id (an official repo's, any repo holding `<repo name>.pth` in mmseg's
    layout, or a short name) -> (the folder of its converted orbax checkpoint, {"repo_id",
    "commit", "name"}): the .pth fetched through huggingface_hub's cache and converted once into
    the package cache (`hub.entry_dir`: keyed by commit and package version; `paths.atomic_dir`,
    a concurrent builder's entry kept). What `weights.resolve` calls for a segmentation hub id."""
    from mambavision_jax import hub

    repo_id = hub_repo(spec) or spec.removeprefix(hub.HUB_PREFIX)
    filename = f"{repo_id.split('/', 1)[1]}.pth"  # the official repos hold one file, named as the repo
    pth = hub.download_file(
        repo_id, filename, revision=revision, cache_dir=cache_dir, token=token, known=repo_id in HUB_IDS
    )
    commit = pth.parent.name  # .../snapshots/<commit>/<file>
    final = hub.entry_dir(repo_id, commit)
    if not (final / ORBAX_META).is_file():
        model = load_mmseg_checkpoint(pth)
        with atomic_dir(final, keep_existing=ORBAX_META) as tmp:
            write_orbax(model, tmp, task="segmentation")
            info = {"repo_id": repo_id, "file": filename, "commit": commit}
            (tmp / hub.HUB_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return final, {"repo_id": repo_id, "commit": commit, "name": HUB_IDS.get(repo_id)}


def resolve_hub_id(spec: str, *, revision=None, cache_dir=None, token=None) -> Path:
    """The folder of a segmentation hub id's converted orbax checkpoint (`fetch_hub`)."""
    return fetch_hub(spec, revision=revision, cache_dir=cache_dir, token=token)[0]
