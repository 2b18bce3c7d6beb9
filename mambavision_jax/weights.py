"""The one way in for weights: `resolve` says what a weights spec is, `load` builds its model.

    src = weights.resolve("nvidia/MambaVision-T-1K")          # or a file, a folder, gs://..., a run
    model, pre = weights.load(src, dtype="bfloat16")          # the model (eval mode), its preprocessing

`resolve(spec, checkpoint=..., ema=..., revision=...)` looks at the spec once: a Hugging Face hub id
becomes the local folder of its converted copy (`hub.fetch`: downloaded and converted on first use,
cached); a local path or URL is checked to exist and its kind is found (`KINDS`, in order):

- `seg-run`: a segmentation training workdir (as below, its model_config.json a
  `SegmentationConfig`);
- `training-run`: a training workdir (`train.checkpoint`'s layout: checkpoints/, best/,
  model_config.json); `checkpoint` ('best', 'latest' or a step) picks the step folder, `ema`
  (None: the EMA weights when the run kept them; True: required; False: the raw weights);
- `seg-orbax`: a segmenter's orbax folder (`segmentation.checkpoint.save_checkpoint`; also what
  the segmentation hub cache holds);
- `orbax`: a folder written by `convert.save_checkpoint` (also what the hub cache holds);
- `hf-folder`: a Hugging Face model folder (config.json + model.safetensors);
- `safetensors`: a `.safetensors` file (config.json beside it is read when present);
- `mmseg-pth`: an mmseg UperNet checkpoint (the official ADE20K files; told by its key names);
- `pth`: a PyTorch file (an official `.pth.tar`; `ema=True` takes its state_dict_ema).

The `seg-*` and `mmseg-pth` kinds hold a segmenter (`SourceKind.task == "segmentation"`): `load`
gives a `segmentation.UperNet` and `None` as its preprocessing (a segmenter's is its config's
mean / std / test_scale, which `segmentation.inference` applies); `load_segmenter(spec)` is the
short way. A segmentation hub id (an official repo, `nvidia/mamba_vision_160k_ade20k-512x512_tiny`
...) is fetched and converted by `segmentation.checkpoint_io.fetch_hub`, before the classification
hub; its short names (tiny, small, base, l3, or the full segmenter names) only where
`task="segmentation"` (elsewhere "tiny" is a path). `task=` ("classification" / "segmentation")
refuses the other task's weights with one line naming both, before anything is downloaded where
the hub id tells.

A gs:// file is copied locally only by the readers of formats that need a local file (torch.load,
safetensors); orbax folders and training runs are read in place. Every command (`--weights`,
`segment` and `evaluate_seg` too), both trainings' `init_from`, `mvj.load_checkpoint`,
`convert.load_checkpoint`, `segmentation.checkpoint.load_checkpoint` and the `convert` command
line go through here.

Adding a source kind (e.g. a detection checkpoint) is one `register_kind(SourceKind(...))`:
`detect(path) -> bool` on a path that exists, `load(source, **kw) -> model`, and optionally
`preprocessing(source) -> dict` of hints and `one_set=True` when the format holds one set of
weights (`ema=True` is then refused), `task="segmentation"` for a segmenter and `run=True` for a
training workdir (`checkpoint` picks its step).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from mambavision_jax.errors import CheckpointError, HubError, UserError
from mambavision_jax.paths import as_path, is_remote, path_of

__all__ = [
    "KINDS",
    "Loaded",
    "SourceKind",
    "TASKS",
    "WeightsSource",
    "exists",
    "load",
    "load_checkpoint",
    "load_segmenter",
    "register_kind",
    "resolve",
]


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """What `resolve` found. spec: as given; kind: a `KINDS` name; path: the local path or URL
    that holds the weights (a hub id's converted folder); for a training run, the step folder
    `step_dir` of `checkpoint` and its `step`; `ema` as asked; `hub`: {"repo_id", "commit",
    "name"} when the spec was a hub id."""

    spec: str
    kind: str
    path: str
    checkpoint: str = "best"
    ema: bool | None = None
    step: int | None = None
    step_dir: str | None = None
    hub: dict[str, Any] | None = None

    def hf_config(self) -> dict[str, Any] | None:
        """The Hugging Face config.json that goes with the weights (a model folder's, or the one
        beside a .safetensors file), or None."""
        if _kind(self.kind).run:  # a run's config.json is its training config
            return None
        p = path_of(self.path)
        cfg = (
            p / "config.json"
            if p.is_dir()
            else (p.parent / "config.json" if p.suffix == ".safetensors" else None)
        )
        if cfg is None or not cfg.is_file():
            return None
        try:
            data = json.loads(cfg.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def info(self) -> dict[str, Any]:
        """What a summary (evaluate --json, export_config.json) records about the weights."""
        out: dict[str, Any] = {"kind": self.kind, "path": self.path}
        if self.step is not None:
            out.update(step=self.step, step_dir=self.step_dir)
        if self.hub:
            out["hub"] = self.hub
        return out


@dataclasses.dataclass(frozen=True)
class SourceKind:
    """One kind of weights. detect(path) is asked, in `KINDS` order, of a path that exists (local
    or a URL); load(source, *, name, num_classes, dtype, allow_nonfinite, **overrides) builds the
    model; preprocessing(source) gives the eval-preprocessing hints the weights carry
    ({"image_size", "crop_pct", "crop_mode", "mean", "std"}, each optional); one_set: the format
    holds one set of weights (`ema=True` is refused); task: what the model does ("classification",
    "segmentation": `load(source, **create_segmenter overrides)` gives a UperNet, and there is no
    preprocessing); run: a training workdir (its `checkpoint` picks a step folder)."""

    name: str
    detect: Callable[[str], bool]
    load: Callable[..., Any]
    preprocessing: Callable[[WeightsSource], dict[str, Any]] = lambda source: {}
    one_set: bool = True
    description: str = ""
    task: str = "classification"
    run: bool = False


class Loaded(NamedTuple):
    model: Any
    preprocessing: Any  # preprocessing.Preprocessing; None for a segmenter (its config's mean / std)


TASKS = ("classification", "segmentation")


# ----------------------------------------------------------------------------- the kinds
def _is_run(path: str) -> bool:
    from mambavision_jax.train.checkpoint import is_training_run

    return is_training_run(path)


def _is_orbax(path: str) -> bool:
    from mambavision_jax.convert.api import ORBAX_META

    return (path_of(path) / ORBAX_META).is_file()


def _is_hf_folder(path: str) -> bool:
    return path_of(path).is_dir()  # checked for model.safetensors by the reader, with its own message


def _is_safetensors(path: str) -> bool:
    return path_of(path).suffix == ".safetensors"


def _is_file(path: str) -> bool:
    return path_of(path).is_file()


def _load_run(
    source: WeightsSource, *, name=None, num_classes=None, dtype=None, allow_nonfinite=False, **overrides
):
    """A freshly initialised model of the architecture the run trained (its model_config.json),
    with the weights of the step folder."""
    from mambavision_jax.models.config import MambaVisionConfig
    from mambavision_jax.models.registry import create_model

    workdir = as_path(source.path)
    config = _run_config(workdir, MambaVisionConfig)
    # overrides apply on top, as for a file (e.g. another drop_path_rate for fine-tuning); ones that
    # change the parameters' shapes make the restore below fail with one line
    model = create_model(config, dtype=dtype, **overrides)
    if name is not None and name != model.name:
        raise CheckpointError(f"{workdir} trained {model.name}, not {name}")
    _restore_run(model, source)
    if num_classes is not None and num_classes != model.num_classes:
        model = _new_head(model, num_classes, dtype=dtype, **overrides)
    return model


def _restore_run(model, source: WeightsSource) -> None:
    """The weights of the run's step folder into `model` (`train.checkpoint.restore_weights`),
    and `model.checkpoint_info` = {"path", "step", "ema"}."""
    from flax import nnx

    from mambavision_jax.train.checkpoint import restore_weights

    _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    params, stats, used_ema = restore_weights(source.step_dir, params, stats, ema=source.ema)
    nnx.update(model, params, stats)
    model.checkpoint_info = {"path": source.step_dir, "step": source.step, "ema": used_ema}


def _run_config(workdir, config_class):
    """The `config_class` (MambaVisionConfig, SegmentationConfig) in a run's model_config.json."""
    from mambavision_jax.train.checkpoint import RUN_MODEL_CONFIG

    config_path = as_path(workdir) / RUN_MODEL_CONFIG
    if not config_path.is_file():
        raise CheckpointError(
            f"{workdir} is a training run without {RUN_MODEL_CONFIG} (written by the training loop): "
            f"the architecture of its checkpoints is unknown"
        )
    try:
        return config_class.from_dict(json.loads(config_path.read_text()))
    except ValueError as e:  # not JSON (JSONDecodeError), or a field missing / out of range (ConfigError)
        raise CheckpointError(f"{config_path}: {e}") from None


def _new_head(model, num_classes: int, **kwargs):
    """The model with a freshly initialised head of `num_classes` (fine-tuning)."""
    from mambavision_jax.convert.api import _HEAD_KEYS, load_state_dict, to_torch_state_dict
    from mambavision_jax.models.registry import create_model

    new = create_model(model.config, num_classes=num_classes, **kwargs)
    load_state_dict(new, to_torch_state_dict(model), skip=_HEAD_KEYS)
    return new


def _load_file(
    source: WeightsSource, *, name=None, num_classes=None, dtype=None, allow_nonfinite=False, **kw
):
    from mambavision_jax.convert.api import load_file as load_model_file

    return load_model_file(
        source.path,
        name,
        num_classes=num_classes,
        use_ema=bool(source.ema),
        dtype=dtype,
        allow_nonfinite=allow_nonfinite,
        **kw,
    )


def _run_preprocessing(source: WeightsSource) -> dict[str, Any]:
    """The eval preprocessing the run used (its config.json's data.image_size, crop_pct, crop_mode,
    where set)."""
    from mambavision_jax.train.checkpoint import run_data_config

    data = run_data_config(source.path)
    out: dict[str, Any] = {}
    if isinstance(data.get("image_size"), int) and data["image_size"] > 0:
        out["image_size"] = data["image_size"]
    if isinstance(data.get("crop_pct"), (int, float)) and 0 < data["crop_pct"] <= 1:
        out["crop_pct"] = float(data["crop_pct"])  # <= 0 in the config: the variant's
    if data.get("crop_mode") in ("center", "squash"):
        out["crop_mode"] = data["crop_mode"]
    return out


def _hf_preprocessing(source: WeightsSource) -> dict[str, Any]:
    cfg = source.hf_config() or {}
    out = {}
    for key in ("crop_pct", "crop_mode", "mean", "std"):
        if cfg.get(key) is not None:
            out[key] = tuple(cfg[key]) if key in ("mean", "std") else cfg[key]
    return out


KINDS: list[SourceKind] = [
    SourceKind(
        "training-run",
        _is_run,
        _load_run,
        _run_preprocessing,
        one_set=False,
        description="a training workdir",
        run=True,
    ),
    SourceKind("orbax", _is_orbax, _load_file, _hf_preprocessing, description="an orbax model folder"),
    SourceKind(
        "hf-folder", _is_hf_folder, _load_file, _hf_preprocessing, description="a Hugging Face folder"
    ),
    SourceKind(
        "safetensors", _is_safetensors, _load_file, _hf_preprocessing, description="a .safetensors file"
    ),
    SourceKind("pth", _is_file, _load_file, one_set=False, description="a PyTorch checkpoint file"),
]


def register_kind(kind: SourceKind, *, before: str | None = None) -> None:
    """Add a kind of weights (replacing one of the same name); it is detected before the kind
    named `before` (default: before the catch-all folder and file kinds, i.e. 'hf-folder')."""
    names = [k.name for k in KINDS]
    if kind.name in names:
        KINDS[names.index(kind.name)] = kind
        return
    anchor = before or "hf-folder"
    KINDS.insert(names.index(anchor) if anchor in names else len(KINDS), kind)


def _kind(name: str) -> SourceKind:
    return next(k for k in KINDS if k.name == name)


# ----------------------------------------------------------------------------- segmentation kinds
# A UperNet's weights; the readers live in segmentation.checkpoint_io, imported when asked (that
# module never imports this one: segmentation.checkpoint, which does, sits above both).
def _run_model_dict(path: str) -> dict[str, Any]:
    from mambavision_jax.train.checkpoint import RUN_MODEL_CONFIG

    try:
        data = json.loads((path_of(path) / RUN_MODEL_CONFIG).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_seg_run(path: str) -> bool:
    """A training run whose model_config.json is a SegmentationConfig (it has a backbone)."""
    return _is_run(path) and isinstance(_run_model_dict(path).get("backbone"), dict)


def _is_seg_orbax(path: str) -> bool:
    from mambavision_jax.segmentation.checkpoint_io import is_segmentation_folder

    return is_segmentation_folder(path)


def _is_mmseg_pth(path: str) -> bool:
    from mambavision_jax.segmentation.checkpoint_io import is_mmseg_file

    return is_mmseg_file(path)


def _load_seg_run(source: WeightsSource, **overrides):
    from mambavision_jax.segmentation.config import SegmentationConfig
    from mambavision_jax.segmentation.model import create_segmenter

    model = create_segmenter(_run_config(source.path, SegmentationConfig), **overrides)
    _restore_run(model, source)
    return model


def _load_seg_orbax(source: WeightsSource, **overrides):
    from mambavision_jax.segmentation.checkpoint_io import load_orbax_checkpoint

    return load_orbax_checkpoint(source.path, **overrides)


def _load_mmseg(source: WeightsSource, **overrides):
    from mambavision_jax.segmentation.checkpoint_io import load_mmseg_checkpoint

    return load_mmseg_checkpoint(source.path, **overrides)


_SEG = dict(task="segmentation")
register_kind(
    SourceKind(
        "seg-run",
        _is_seg_run,
        _load_seg_run,
        one_set=False,
        run=True,
        description="a segmentation training workdir",
        **_SEG,
    ),
    before="training-run",  # which would claim it
)
register_kind(
    SourceKind("seg-orbax", _is_seg_orbax, _load_seg_orbax, description="a segmenter's orbax folder", **_SEG),
    before="orbax",
)
register_kind(
    SourceKind("mmseg-pth", _is_mmseg_pth, _load_mmseg, description="an mmseg UperNet checkpoint", **_SEG),
    before="pth",  # the catch-all file kind
)

_NEEDS = {
    "classification": "a classifier: an official .pth.tar, .safetensors, a Hugging Face folder or hub id "
    "such as nvidia/MambaVision-T-1K, an orbax folder of mambavision_jax.convert or a classification "
    "training run (segmentation checkpoints: python -m mambavision_jax.segment / evaluate_seg, "
    "mambavision_jax.segmentation.checkpoint.load_checkpoint)",
    "segmentation": "a segmenter: an mmseg .pth, an orbax folder of segmentation.checkpoint."
    "save_checkpoint, a segmentation training run, or a hub id such as "
    "nvidia/mamba_vision_160k_ade20k-512x512_tiny (short names: tiny, small, base, l3)",
}


def _arch_name(kind: SourceKind, path: str) -> str | None:
    """The model name the source records, where a small json says it (for messages)."""
    from mambavision_jax.convert.api import ORBAX_META

    if kind.run:
        return _run_model_dict(path).get("name")
    try:
        meta = json.loads((path_of(path) / ORBAX_META).read_text())
        return (meta.get("config") or {}).get("name") or meta.get("name")
    except (OSError, ValueError, AttributeError):
        return None


def _wrong_task(text: str, found: str, what: str, task: str, needed_by: str | None) -> CheckpointError:
    article = "an" if found[0] in "aeiou" else "a"
    tail = ", not a MambaVision UperNet checkpoint" if task == "segmentation" else ""
    return CheckpointError(
        f"{text} is {article} {found} checkpoint ({what}){tail}; {needed_by or 'this'} needs {_NEEDS[task]}"
    )


# ----------------------------------------------------------------------------- resolve / load
def exists(spec, *, task: str | None = None) -> bool:
    """Whether `spec` names a hub id or a file / folder that exists (checked before any work);
    with task="segmentation" also a segmenter's short name (tiny, small, base, l3)."""
    from mambavision_jax import hub

    if task == "segmentation" and _seg_hub_repo(spec, short_names=True):
        return True
    return hub.is_hub_id(spec) or as_path(spec).exists()  # a misspelt URL (gs:/b) is refused


def _seg_hub_repo(spec, *, short_names: bool) -> str | None:
    """The official segmentation repo `spec` names (not an existing path), else None."""
    if not isinstance(spec, str) or os.path.exists(spec):
        return None
    from mambavision_jax.segmentation.checkpoint_io import hub_repo

    return hub_repo(spec, short_names=short_names)


def _is_classification_repo(repo_id: str) -> bool:
    from mambavision_jax.hub import HUB_PREFIX
    from mambavision_jax.models.registry import VARIANTS

    name = repo_id.removeprefix(HUB_PREFIX).lower()
    return name in {cfg.hf_hub_id.lower() for _, cfg in VARIANTS.values()}


def resolve(
    spec,
    *,
    checkpoint: str | int = "best",
    ema: bool | None = None,
    revision: str | None = None,
    cache_dir=None,
    token=None,
    task: str | None = None,
    needed_by: str | None = None,
) -> WeightsSource:
    """What `spec` is, resolved once (see the module docstring). A missing file is a
    FileNotFoundError; a checkpoint or EMA choice the source cannot give, a UserError. task:
    "classification" / "segmentation" refuses the other task's weights (a CheckpointError that
    says `needed_by`, e.g. "segment", needs which); None takes either."""
    from mambavision_jax import hub

    if task not in (None, *TASKS):
        raise UserError(f"weights: task must be one of {TASKS} or None, got {task!r}")
    if isinstance(spec, WeightsSource):
        if task is not None and _kind(spec.kind).task != task:
            raise _wrong_task(spec.spec, _kind(spec.kind).task, spec.kind, task, needed_by)
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise UserError(f"weights: expected a path, URL or hub id, got {type(spec).__name__}")
    text = os.fspath(spec)
    if not text:
        raise UserError("weights: the path is empty; name a checkpoint file or folder, or a hub id")
    hub_info = None
    seg_repo = _seg_hub_repo(text, short_names=task == "segmentation")
    if seg_repo or (task == "segmentation" and hub.is_hub_id(text)):
        # a segmentation hub id: told before anything is downloaded
        if task == "classification":
            raise _wrong_task(text, "segmentation", f"the hub repo {seg_repo}", task, needed_by)
        if _is_classification_repo(text):
            raise _wrong_task(text, "classification", "an official hub repo", "segmentation", needed_by)
        if ema:
            raise HubError(f"{text}: the hub weights hold one set of weights (no EMA); drop --ema")
        from mambavision_jax.segmentation.checkpoint_io import fetch_hub

        entry, hub_info = fetch_hub(text, revision=revision, cache_dir=cache_dir, token=token)
        path = os.fspath(entry)
    elif hub.is_hub_id(text):
        if ema:
            raise HubError(f"{text}: the hub weights hold one set of weights (no EMA); drop use_ema / --ema")
        entry, hub_info = hub.fetch(text, revision=revision, cache_dir=cache_dir, token=token)
        path = os.fspath(entry)
    else:
        if revision is not None:
            raise UserError(f"revision={revision!r} applies to hub ids; {text} is a path")
        path = text if is_remote(text) else os.path.abspath(os.path.expanduser(text))
        as_path(path)  # a misspelt URL (gs:/b, gss://) is refused here
        if not path_of(path).exists():
            raise FileNotFoundError(f"no such checkpoint: {text}")
    kind = next(k for k in KINDS if k.detect(path))
    if task is not None and kind.task != task:
        what = ", ".join(x for x in (kind.description, _arch_name(kind, path)) if x)
        raise _wrong_task(text, kind.task, what, task, needed_by)
    checkpoint = str(checkpoint)
    if not kind.run and checkpoint != "best":
        raise UserError(
            f"--checkpoint {checkpoint} (checkpoint={checkpoint!r}) applies to training runs (a "
            f"training workdir); {text} is {kind.description}"
        )
    if ema and kind.one_set:
        raise CheckpointError(
            f"{text} is {kind.description}, which holds one set of weights: drop --ema / --use-ema "
            f"(use_ema=True); EMA weights come from a training run or an official .pth.tar's "
            f"state_dict_ema"
        )
    step = step_dir = None
    if kind.run:
        from mambavision_jax.train.checkpoint import step_dir as run_step_dir

        folder = run_step_dir(path, checkpoint)
        step_dir, step = os.fspath(folder), int(folder.name)
    return WeightsSource(
        spec=text,
        kind=kind.name,
        path=path,
        checkpoint=checkpoint,
        ema=ema,
        step=step,
        step_dir=step_dir,
        hub=hub_info,
    )


def load(
    source,
    *,
    name: str | None = None,
    num_classes: int | None = None,
    dtype=None,
    allow_nonfinite: bool = False,
    image_size: int | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    **overrides,
) -> Loaded:
    """(the model in eval mode, its eval preprocessing) of a `WeightsSource` (or of a spec,
    resolved with the defaults). name: the variant expected (a mismatch is refused);
    num_classes: another head size gives a freshly initialised head; dtype: the compute dtype;
    overrides: `create_model` arguments (runtime options such as scan_impl; architecture fields
    must agree with the weights). image_size / crop_pct / crop_mode override the preprocessing
    that the variant and the weights give (`preprocessing.preprocessing_for`).

    A segmenter's source (`task == "segmentation"`) gives (UperNet in eval mode, None): its
    preprocessing is its config's (mean / std / test_scale); overrides are `create_segmenter`'s
    (runtime=, dtype, attn_impl, ...); the classification-only arguments are refused."""
    import jax.numpy as jnp

    from mambavision_jax.preprocessing import resolve_preprocessing

    source = resolve(source)
    kind = _kind(source.kind)
    if kind.task == "segmentation":
        classifier_only = {
            "name": name,
            "num_classes": num_classes,
            "image_size": image_size,
            "crop_pct": crop_pct,
            "crop_mode": crop_mode,
            "allow_nonfinite": allow_nonfinite or None,
        }
        return Loaded(_load_segmenter(source, kind, dtype, classifier_only, overrides), None)
    dtype = jnp.dtype(dtype if dtype is not None else jnp.float32)
    if source.hub is not None:
        model = _load_hub(source, kind, name=name, num_classes=num_classes, dtype=dtype, **overrides)
    else:
        model = kind.load(
            source,
            name=name,
            num_classes=num_classes,
            dtype=dtype,
            allow_nonfinite=allow_nonfinite,
            **overrides,
        )
    model.eval()
    hints = kind.preprocessing(source)
    explicit = {"image_size": image_size, "crop_pct": crop_pct, "crop_mode": crop_mode}
    pre = resolve_preprocessing(model, hints=hints, **explicit)
    return Loaded(model, pre)


def _load_segmenter(source: WeightsSource, kind: SourceKind, dtype, classifier_only, overrides):
    """`load` of a segmenter: the classification-only arguments must be left unset."""
    import jax.numpy as jnp

    given = [k for k, v in classifier_only.items() if v is not None]
    if given:
        raise UserError(
            f"{source.spec} is {kind.description}: {', '.join(given)} apply to classifiers (a "
            f"segmenter's architecture, classes and preprocessing are its config's)"
        )
    overrides = dict(overrides)
    if dtype is not None:  # else the runtime's (a runtime= override's, or float32)
        overrides["dtype"] = jnp.dtype(dtype).name
    model = kind.load(source, **overrides)
    model.eval()
    return model


def _load_hub(source: WeightsSource, kind: SourceKind, *, name, **kw):
    """A hub entry: loaded without the name (an official repo's model keeps its registry name),
    then the name checked by architecture (B and B_21k share one)."""
    from mambavision_jax.hub import same_architecture
    from mambavision_jax.models.registry import model_config

    model = kind.load(source, name=None, **kw)
    if name is not None and name != model.name and not same_architecture(model_config(name), model.config):
        raise HubError(f"{source.spec} holds {model.name}, not {name}; drop the model name or pick its repo")
    return model


def load_segmenter(
    spec,
    *,
    checkpoint: str | int = "best",
    revision: str | None = None,
    cache_dir=None,
    token=None,
    dtype=None,
    needed_by: str | None = None,
    **overrides,
):
    """A `segmentation.UperNet` (eval mode) from any segmenter's weights: an mmseg .pth, a
    segmenter's orbax folder, a segmentation training run (`checkpoint`: 'best', 'latest' or a
    step), a segmentation hub id or short name (tiny, small, base, l3; downloaded and converted
    once). Classification weights are refused in one line. overrides: `create_segmenter`'s
    (runtime=, attn_impl, ...). A run's model carries `checkpoint_info` = {"path", "step", "ema"}."""
    source = resolve(
        spec,
        checkpoint=checkpoint,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        task="segmentation",
        needed_by=needed_by or "load_segmenter",
    )
    return load(source, dtype=dtype, **overrides).model


def load_checkpoint(
    spec,
    name: str | None = None,
    *,
    checkpoint: str | int | None = None,
    which: str | int | None = None,
    ema: bool | None = None,
    use_ema: bool = False,
    num_classes: int | None = None,
    dtype=None,
    allow_nonfinite: bool = False,
    revision: str | None = None,
    **overrides,
):
    """The model (eval mode) of any weights: `load(resolve(spec, ...)).model`.

    spec: a training workdir, an orbax folder, a .pth.tar, a .safetensors file, a Hugging Face
    folder, a hub id, local or gs://. name: the variant expected (needed only where the weights
    are ambiguous). checkpoint (or which): a training run's 'best' (default), 'latest' or a step.
    ema: None: a training run's EMA weights when it kept them, a file's main weights; True: the
    EMA weights (a run's, or a .pth.tar's state_dict_ema; `use_ema=True` says the same), an error
    where there are none; False: the main weights. The model of a training run carries
    `checkpoint_info` = {"path", "step", "ema"}."""
    if checkpoint is not None and which is not None and str(checkpoint) != str(which):
        raise UserError(f"checkpoint={checkpoint!r} and which={which!r} disagree; pass one")
    chosen = checkpoint if checkpoint is not None else (which if which is not None else "best")
    if use_ema:
        if ema is False:
            raise UserError("use_ema=True and ema=False disagree; pass one")
        ema = True
    source = resolve(
        spec,
        checkpoint=chosen,
        ema=ema,
        revision=revision,
        task="classification",
        needed_by="load_checkpoint",
    )
    return load(
        source, name=name, num_classes=num_classes, dtype=dtype, allow_nonfinite=allow_nonfinite, **overrides
    ).model
