"""Official weights from the Hugging Face hub in one call, converted once and cached.

    model = mambavision_jax.hub.from_pretrained("nvidia/MambaVision-T-1K")  # or "mamba_vision_T"

The hub files (`config.json`, `model.safetensors`) are fetched with `huggingface_hub.hf_hub_download`,
so its cache, `HF_HOME` / `HF_HUB_CACHE`, `HF_HUB_OFFLINE=1`, revisions and tokens behave as in every
other Hugging Face library. The converted model is kept as an orbax checkpoint under

    $MAMBAVISION_JAX_CACHE (default: $HF_HOME/mambavision_jax, i.e. ~/.cache/huggingface/mambavision_jax)
        models--<org>--<name>/<commit>/v<package version>/   state/, mambavision_jax.json, config.json

keyed by the resolved commit and the package version, so a later call neither downloads nor converts
(offline, the revision is resolved from the hub cache's `refs/`). An entry is built in a temporary
folder and renamed into place (`paths.atomic_dir`): a reader sees a whole entry or none, and two
processes racing to build the same one both end up loading the one that was renamed first.

This module downloads and converts; it never calls a loader that calls it back (`weights.resolve`
calls `fetch` for a hub id, and `from_pretrained` reads the converted entry with the orbax reader).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from mambavision_jax.convert.checkpoint_io import HF_CONFIG, HF_WEIGHTS
from mambavision_jax.errors import HubError
from mambavision_jax.paths import atomic_dir

__all__ = [
    "HubError",
    "cache_root",
    "create_pretrained",
    "download_file",
    "entry_dir",
    "fetch",
    "from_pretrained",
    "is_hub_id",
    "resolve_weights",
    "same_architecture",
]

CACHE_ENV = "MAMBAVISION_JAX_CACHE"
HUB_PREFIX = "hf-hub:"  # timm's spelling, accepted for familiarity
HUB_INFO = "hub_source.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Local checkpoint files: a path like "ckpt/model.safetensors" that does not exist is a typo, not a repo.
_FILE_SUFFIXES = (".safetensors", ".pth", ".tar", ".bin", ".pt", ".json", ".onnx", ".npz", ".msgpack")


# ----------------------------------------------------------------------------- names and ids
def is_hub_id(spec) -> bool:
    """Whether `spec` names a Hugging Face hub repo ("nvidia/MambaVision-T-1K", "hf-hub:org/name")
    rather than a local checkpoint. A string that exists on disk is always a local path."""
    if not isinstance(spec, str):
        return False
    if spec.startswith(HUB_PREFIX):
        return True
    if "://" in spec or os.path.exists(spec) or spec.lower().endswith(_FILE_SUFFIXES):
        return False
    return bool(_REPO_ID.match(spec)) and "--" not in spec and ".." not in spec


def _official_ids() -> dict[str, str]:
    """{hub id: variant name} for the 11 official variants."""
    from mambavision_jax.models.registry import VARIANTS

    return {cfg.hf_hub_id: name for name, (_, cfg) in VARIANTS.items()}


def _resolve_spec(spec: str) -> tuple[str, str | None]:
    """(hub repo id, official variant name or None) for a list_models() name or a hub id."""
    from mambavision_jax.models.registry import VARIANTS

    if not isinstance(spec, str):
        raise HubError(f"expected a model name or a hub id (str), got {type(spec).__name__}")
    spec = spec.removeprefix(HUB_PREFIX)
    ids = _official_ids()
    if spec in VARIANTS:
        return VARIANTS[spec][1].hf_hub_id, spec
    for repo_id, name in ids.items():
        if spec.lower() == repo_id.lower():  # the hub's ids are case-insensitive; the cache's are not
            return repo_id, name
    if not _REPO_ID.match(spec):
        raise HubError(
            f"unknown model {spec!r}{_suggest(spec)}: pass a name from list_models() or a hub "
            f"id such as nvidia/MambaVision-T-1K"
        )
    return spec, None


def _suggest(spec: str) -> str:
    from mambavision_jax.models.registry import VARIANTS

    known = {k.lower(): k for k in list(VARIANTS) + list(_official_ids())}
    close = [known[k] for k in difflib.get_close_matches(spec.lower(), list(known), n=3, cutoff=0.6)]
    return f" (did you mean {', '.join(close)}?)" if close else ""


# ----------------------------------------------------------------------------- cache locations
def cache_root() -> Path:
    """Where converted models are kept: $MAMBAVISION_JAX_CACHE, else $HF_HOME/mambavision_jax."""
    if os.environ.get(CACHE_ENV):
        return Path(os.path.expanduser(os.environ[CACHE_ENV]))
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "mambavision_jax"


def _hub_cache(cache_dir) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")  # huggingface_hub's own layout


def entry_dir(repo_id: str, commit: str) -> Path:
    """The package-cache folder of a hub repo's converted commit (for this package version)."""
    from mambavision_jax.version import __version__

    return cache_root() / _repo_folder(repo_id) / commit / f"v{__version__}"


# ----------------------------------------------------------------------------- hub access
def _fetch_command(repo_id: str, filename: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    files = f"{HF_CONFIG} {HF_WEIGHTS}" if filename in (HF_CONFIG, HF_WEIGHTS) else filename
    return f"hf download {repo_id} {files}{rev}"


def download_file(
    repo_id: str, filename: str, *, revision=None, cache_dir=None, token=None, known: bool = False
) -> Path:
    """One file of a hub repo, through huggingface_hub's cache (`hf_hub_download`: its path under
    .../snapshots/<commit>/), with its errors turned into one HubError line each. known: the repo is
    an official one (no "did you mean" hint)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                library_name="mambavision-jax",
            )
        )
    except GatedRepoError as e:
        raise HubError(
            f"{repo_id} is gated: accept its terms on huggingface.co and pass token= (or run `hf auth login`)"
        ) from e
    except RepositoryNotFoundError as e:
        hint = "" if known else _suggest(repo_id)
        raise HubError(
            f"no hub repo {repo_id!r}{hint} (nor a local file or folder of that name); a private "
            f"repo needs token= or `hf auth login`"
        ) from e
    except RevisionNotFoundError as e:
        raise HubError(f"{repo_id} has no revision {revision!r} (a branch, tag or commit hash)") from e
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE is set" if _offline() else "the hub could not be reached"
        hint = "" if known else _suggest(repo_id)
        raise HubError(
            f"{repo_id}{hint}: {filename} is not in the Hugging Face cache "
            f"({_hub_cache(cache_dir)}) and {why}; fetch it once with network access: "
            f"`{_fetch_command(repo_id, filename, revision)}` (or unset HF_HUB_OFFLINE)"
        ) from e
    except EntryNotFoundError as e:
        what = "not a MambaVision model repo" if filename == HF_CONFIG else "no converted weights there"
        raise HubError(
            f"{repo_id} has no {filename} ({what}); official repos: {', '.join(_official_ids())}"
        ) from e


def _cached_commit(repo_id: str, revision: str | None, cache_dir) -> str | None:
    """The commit a branch or tag points at in the local hub cache (refs/<revision>), if known."""
    rev = revision or "main"
    if _COMMIT.match(rev):
        return rev
    ref = _hub_cache(cache_dir) / _repo_folder(repo_id) / "refs" / rev
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.match(commit) else None


def check_mambavision_config(config: dict[str, Any], repo_id: str) -> None:
    model_type = config.get("model_type")
    archs = " ".join(config.get("architectures") or [])
    if model_type == "mambavision" or (model_type is None and "MambaVision" in archs):
        return
    raise HubError(
        f"{repo_id} is not a MambaVision repo (config.json model_type={model_type!r}, "
        f"architectures={config.get('architectures')}); official repos: "
        f"{', '.join(_official_ids())}"
    )


# ----------------------------------------------------------------------------- conversion cache
def same_architecture(a, b) -> bool:
    """Whether two MambaVisionConfigs build the same layers (names and head sizes aside)."""
    return a.replace(name=None, num_classes=0) == b.replace(name=None, num_classes=0)


def _name_override(config: dict[str, Any], official_name: str | None, repo_id: str) -> dict[str, Any]:
    """An official repo's model keeps its registry name (B and B_21k share one architecture, and
    config.json alone would name the first), which selects its preprocessing."""
    from mambavision_jax.convert.variants import config_from_hf
    from mambavision_jax.models.config import ConfigError
    from mambavision_jax.models.registry import model_config

    try:
        cfg = config_from_hf(config)
    except ConfigError as e:
        raise HubError(f"{repo_id}: config.json: {e}") from None
    if (
        official_name is not None
        and cfg.name != official_name
        and same_architecture(cfg, model_config(official_name))
    ):
        return {"name": official_name}
    return {}


def _build_entry(repo_id: str, commit: str, official_name: str | None, *, cache_dir, token) -> Path:
    """Download, check, convert and cache one hub commit; returns the entry folder."""
    from mambavision_jax.convert.api import ORBAX_META, load_torch_checkpoint, write_orbax
    from mambavision_jax.convert.checkpoint_io import read_hf_config

    final = entry_dir(repo_id, commit)
    if (final / ORBAX_META).is_file():
        return final
    known = official_name is not None
    config_path = download_file(
        repo_id, HF_CONFIG, revision=commit, cache_dir=cache_dir, token=token, known=known
    )
    config = read_hf_config(config_path)
    check_mambavision_config(config, repo_id)
    download_file(repo_id, HF_WEIGHTS, revision=commit, cache_dir=cache_dir, token=token, known=known)
    # config.json + model.safetensors, side by side in huggingface_hub's snapshot folder
    model = load_torch_checkpoint(config_path.parent, **_name_override(config, official_name, repo_id))
    with atomic_dir(final, keep_existing=ORBAX_META) as tmp:  # a concurrent builder's entry is kept
        write_orbax(model, tmp)
        (tmp / HF_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / HUB_INFO).write_text(json.dumps({"repo_id": repo_id, "commit": commit}, indent=2) + "\n")
    return final


def _ensure_entry(spec: str, *, revision=None, cache_dir=None, token=None) -> tuple[Path, str | None]:
    repo_id, official_name = _resolve_spec(spec)
    commit = _cached_commit(repo_id, revision, cache_dir) if _offline() else None
    if commit is None and revision is not None and _COMMIT.match(revision):
        commit = revision
    if commit is None:
        # Online (or offline with no ref): resolve the revision through huggingface_hub, which
        # checks the hub for a moved branch and otherwise fails with its own offline error.
        path = download_file(
            repo_id,
            HF_CONFIG,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            known=official_name is not None,
        )
        commit = path.parent.name  # .../snapshots/<commit>/config.json
    return _build_entry(repo_id, commit, official_name, cache_dir=cache_dir, token=token), official_name


# ----------------------------------------------------------------------------- public API
def fetch(
    spec: str, *, revision: str | None = None, cache_dir=None, token=None
) -> tuple[Path, dict[str, Any]]:
    """A hub id or official model name -> (the local folder of its converted orbax checkpoint,
    {"repo_id", "commit", "name"}): downloaded and converted on first use, then read from the
    cache. What `weights.resolve` calls for a hub id."""
    entry, official_name = _ensure_entry(spec, revision=revision, cache_dir=cache_dir, token=token)
    repo_id, _ = _resolve_spec(spec)
    return entry, {"repo_id": repo_id, "commit": entry.parent.name, "name": official_name}


def resolve_weights(spec, *, revision: str | None = None, cache_dir=None, token=None):
    """A hub id -> the local folder of its converted orbax checkpoint (`fetch`); anything else (a
    local path) is returned unchanged."""
    if not is_hub_id(spec):
        return spec
    return fetch(spec, revision=revision, cache_dir=cache_dir, token=token)[0]


def from_pretrained(
    name_or_repo_id: str,
    *,
    revision: str | None = None,
    num_classes: int | None = None,
    dtype=jnp.float32,
    cache_dir=None,
    token=None,
    **overrides,
):
    """An official MambaVision with its Hugging Face weights, in eval mode.

    name_or_repo_id: a `list_models()` name ("mamba_vision_T") or a hub id ("nvidia/MambaVision-T-1K",
    also any repo holding a MambaVision config.json + model.safetensors). revision: branch, tag or
    commit (default "main"). num_classes: another head size gives a freshly initialised head (for
    fine-tuning); None keeps the checkpoint's. cache_dir / token: as in `huggingface_hub`.
    overrides: runtime arguments for `create_model` (scan_impl, attn_impl, remat, ...).
    """
    from mambavision_jax.convert.api import load_file  # reads the orbax entry; never calls the hub

    entry, _ = _ensure_entry(name_or_repo_id, revision=revision, cache_dir=cache_dir, token=token)
    return load_file(entry, num_classes=num_classes, dtype=dtype, **overrides)


def create_pretrained(
    name: str,
    *,
    num_classes: int | None = None,
    dtype=jnp.float32,
    features_only: bool = False,
    out_indices=(0, 1, 2, 3),
    **kwargs,
):
    """`create_model(name, pretrained=True, ...)`: `from_pretrained`, optionally as a feature extractor."""
    model = from_pretrained(name, num_classes=num_classes, dtype=dtype, **kwargs)
    if features_only:
        from mambavision_jax.models.features import FeatureExtractor

        return FeatureExtractor(model, out_indices=out_indices)
    return model
