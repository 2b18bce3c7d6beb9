"""Running a trained model: its eval preprocessing, loading it from any weights, and a batched,
sharded runner. `evaluate`, `predict` and `export` are built on this module.

- `Preprocessing` / `resolve_preprocessing(model, ...)`: the variant's official eval transform
  (its pretrained cfg: image size, crop_pct, crop_mode, interpolation, mean / std), as timm's
  validate.py applies it; a Hugging Face config.json beside the weights and explicit arguments win.
- `load_checkpoint(path, which="best", ema=True)`: a training run's workdir (orbax
  `checkpoints/` and `best/` written by `mambavision_jax.train`), or anything
  `mambavision_jax.convert.load_checkpoint` reads (orbax model folder, .pth.tar, .safetensors,
  Hugging Face folder). `load_model` is the same with the command lines' arguments.
- `Runner(model)`: the model jitted once, the batch split over the local devices (the training
  mesh's axes, `train/sharding.py`), the weights replicated; `logits`, `topk_probs`, `metrics`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mambavision_jax import cli
from mambavision_jax.metrics import classification_metrics
from mambavision_jax.models.registry import IMAGENET_MEAN, IMAGENET_STD
from mambavision_jax.ops import ScanSharding
from mambavision_jax.paths import as_path, is_remote, path_of

__all__ = [
    "RUN_MODEL_CONFIG",
    "NonFiniteOutputError",
    "Preprocessing",
    "Runner",
    "is_training_run",
    "load_checkpoint",
    "load_model",
    "preprocessing_for",
    "resolve_preprocessing",
    "training_run_preprocessing",
    "weights_config",
]

# Written by the training loop beside checkpoints/ and best/: the model's `config.to_dict()`.
RUN_MODEL_CONFIG = "model_config.json"
_RUN_DIRS = {"best": "best", "latest": "checkpoints"}


class NonFiniteOutputError(ValueError):
    """The model's outputs are NaN or infinite: its weights cannot be right."""


# ----------------------------------------------------------------------------- preprocessing
@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """The eval transform: bicubic resize (short side to floor(image_size / crop_pct) for 'center',
    both sides for 'squash'), center crop to image_size, normalise with mean / std."""

    image_size: int = 224
    crop_pct: float = 1.0
    crop_mode: str = "center"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    def __call__(self, img) -> np.ndarray:
        """A PIL image / encoded bytes / uint8 array -> float32 (image_size, image_size, 3)."""
        from mambavision_jax.data.transforms import eval_transform

        return eval_transform(
            img, self.image_size, self.crop_pct, self.crop_mode, self.mean, self.std, self.interpolation
        )


def weights_config(weights: str | os.PathLike | None) -> dict[str, Any] | None:
    """The Hugging Face config.json that goes with `weights` (a model folder, or a .safetensors file
    with config.json beside it), or None."""
    if weights is None or is_training_run(weights):  # a run's config.json is its training config
        return None
    from mambavision_jax import hub

    if hub.is_hub_id(weights):  # the converted copy's folder (cached by the model's loading)
        weights = hub.resolve_weights(weights)
    p = path_of(weights)
    cfg = (
        p / "config.json"
        if p.is_dir()
        else (p.parent / "config.json" if p.suffix == ".safetensors" else None)
    )
    if cfg is None or not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None


def training_run_preprocessing(weights: str | os.PathLike | None) -> dict[str, Any]:
    """The eval preprocessing a training run used (its config.json's data.image_size, crop_pct,
    crop_mode, where set), as resolve_preprocessing arguments; {} for anything else."""
    if weights is None or not is_training_run(weights) or not (path_of(weights) / "config.json").is_file():
        return {}
    try:
        data = json.loads((path_of(weights) / "config.json").read_text()).get("data", {})
    except (OSError, ValueError, AttributeError):
        return {}
    out: dict[str, Any] = {}
    if isinstance(data.get("image_size"), int) and data["image_size"] > 0:
        out["image_size"] = data["image_size"]
    if isinstance(data.get("crop_pct"), (int, float)) and 0 < data["crop_pct"] <= 1:
        out["crop_pct"] = float(data["crop_pct"])  # <= 0 in the config: the variant's
    if data.get("crop_mode") in ("center", "squash"):
        out["crop_mode"] = data["crop_mode"]
    return out


def preprocessing_for(
    model,
    weights,
    *,
    image_size: int | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
) -> Preprocessing:
    """The command lines' preprocessing: the variant's, then what the weights say (a Hugging Face
    config.json, or a training run's data config), then the explicit arguments."""
    run = training_run_preprocessing(weights)
    explicit = {"image_size": image_size, "crop_pct": crop_pct, "crop_mode": crop_mode}
    return resolve_preprocessing(
        model,
        hf_config=weights_config(weights),
        **{k: v if v is not None else run.get(k) for k, v in explicit.items()},
    )


def resolve_preprocessing(
    model=None,
    *,
    image_size: int | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    hf_config: dict | None = None,
) -> Preprocessing:
    """The model's official eval preprocessing (from `model.pretrained_cfg`, set by create_model /
    load_checkpoint), then the fields of a Hugging Face config (crop_pct, crop_mode, mean, std), then
    the explicit arguments, each overriding the one before."""
    cfg = getattr(model, "pretrained_cfg", None)
    kw: dict[str, Any] = {}
    if cfg is not None:
        kw = dict(
            image_size=int(cfg.input_size[-1]),
            crop_pct=float(cfg.crop_pct),
            crop_mode=cfg.crop_mode,
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
            interpolation=cfg.interpolation,
        )
    for key in ("crop_pct", "crop_mode", "mean", "std"):
        if hf_config and hf_config.get(key) is not None:
            kw[key] = tuple(hf_config[key]) if key in ("mean", "std") else hf_config[key]
    for key, val in (("image_size", image_size), ("crop_pct", crop_pct), ("crop_mode", crop_mode)):
        if val is not None:
            kw[key] = val
    pre = Preprocessing(**kw)
    if pre.crop_mode not in ("center", "squash"):
        raise ValueError(f"crop_mode must be 'center' or 'squash', got {pre.crop_mode!r}")
    if not 0 < pre.crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {pre.crop_pct}")
    if int(pre.image_size) < 1:
        raise ValueError(f"image_size must be >= 1, got {pre.image_size}")
    return pre


# ----------------------------------------------------------------------------- loading
def is_training_run(path: str | os.PathLike) -> bool:
    """Whether `path` (local or a URL such as gs://bucket/run) is a training workdir (it has the
    orbax `checkpoints/` or `best/` folder)."""
    p = path_of(path)
    return p.is_dir() and any((p / d).is_dir() for d in _RUN_DIRS.values())


def _steps(directory: Path) -> list[int]:
    # Orbax names a finished step folder by the step alone; one still being written carries a
    # '.orbax-checkpoint-tmp' suffix and is not a checkpoint yet.
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _run_step_dir(workdir: Path, which: str | int) -> Path:
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        step = int(which)
        for d in ("checkpoints", "best"):
            if (workdir / d / str(step)).is_dir():
                return workdir / d / str(step)
        raise FileNotFoundError(
            f"{workdir} has no checkpoint of step {step} (steps: {_steps(workdir / 'checkpoints') or 'none'})"
        )
    if which not in _RUN_DIRS:
        raise ValueError(f"which must be 'best', 'latest' or a step number, got {which!r}")
    steps = _steps(workdir / _RUN_DIRS[which])
    if not steps:
        hint = (
            " (best/ is written at the first evaluation; pick which='latest', --checkpoint latest)"
            if which == "best" and _steps(workdir / "checkpoints")
            else ""
        )
        raise FileNotFoundError(f"{workdir}: no {which} checkpoint in {workdir / _RUN_DIRS[which]}{hint}")
    return workdir / _RUN_DIRS[which] / str(steps[-1])


def _run_model(workdir: Path, dtype, **runtime):
    """A freshly initialised model of the architecture the run trained (its model_config.json,
    `MambaVisionConfig.to_dict()`, written by the training loop)."""
    from mambavision_jax.models.config import MambaVisionConfig
    from mambavision_jax.models.registry import create_model

    path = workdir / RUN_MODEL_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{workdir} is a training run without {RUN_MODEL_CONFIG} (written by the "
            f"training loop): the architecture of its checkpoints is unknown"
        )
    try:
        config = MambaVisionConfig.from_dict(json.loads(path.read_text()))
    except ValueError as e:  # not JSON, or a field missing / unknown / out of range (ConfigError)
        raise ValueError(f"{path}: {e}") from None
    return create_model(config, dtype=dtype, **runtime)


def _restore_run_weights(step_dir: Path, model, ema: bool, require_ema: bool) -> tuple[Any, Any, bool]:
    """(params, batch stats, whether they are the EMA ones) of the train state in `step_dir`,
    restored alone (no optimizer state) into the model's structure, on one device."""
    import orbax.checkpoint as ocp
    from etils import epath

    item_dir = epath.Path(step_dir / "default")  # the CheckpointManager's item name for one item
    # The handler, not a Checkpointer: the step folder is read as it is, without the
    # Checkpointer's look for a step-metadata file that the manager keeps one level up.
    handler = ocp.PyTreeCheckpointHandler()
    try:
        try:
            saved = handler.metadata(item_dir).tree
        except Exception as e:  # noqa: BLE001 - whatever orbax raises, the user gets one line
            raise ValueError(
                f"{step_dir}: not a readable training checkpoint ({type(e).__name__}: {_first_line(e)})"
            ) from None
        if not isinstance(saved, dict) or "params" not in saved:
            raise ValueError(f"{step_dir}: not a training checkpoint (no 'params' in it)")
        has_ema = bool(saved.get("ema_params"))
        if require_ema and not has_ema:
            raise ValueError(
                f"{step_dir}: the run kept no EMA weights (config.ema.enabled was off); "
                f"leave out --ema to use its weights"
            )
        use_ema = ema and has_ema
        prefix = "ema_" if use_ema else ""
        _, params, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {prefix + "params": params, prefix + "batch_stats": stats}
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target)
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), abstract)
        try:
            restored = handler.restore(
                item_dir,
                args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True),
            )
        except Exception as e:  # noqa: BLE001 - a mismatched or corrupt checkpoint: one line
            raise ValueError(
                f"{step_dir}: cannot restore the model's weights ({type(e).__name__}: "
                f"{_first_line(e)}); is {RUN_MODEL_CONFIG} the run's own?"
            ) from None
    finally:
        handler.close()
    return restored[prefix + "params"], restored[prefix + "batch_stats"], use_ema


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split("\n", 1)[0].split())
    return text[:limit] + ("..." if len(text) > limit else "")


def load_checkpoint(
    path: str | os.PathLike,
    which: str | int = "best",
    ema: bool = True,
    *,
    name: str | None = None,
    num_classes: int | None = None,
    dtype=jnp.float32,
    **kwargs,
):
    """A model (eval mode) from a training run or a model checkpoint.

    path: a training workdir (with `checkpoints/`, `best/` and `model_config.json`, as
        `mambavision_jax.train.train_and_evaluate` writes it), or anything
        `mambavision_jax.convert.load_checkpoint` reads (an orbax model folder, an official
        `.pth.tar`, a `.safetensors` file, a Hugging Face model folder).
    which: for a training run, 'best' (the checkpoint with the best validation top-1), 'latest',
        or a step number.
    ema: for a training run, its EMA weights when it kept them (else its weights); False: its
        weights. (Files hold one set of weights; an official `.pth.tar`'s `state_dict_ema` is
        selected with `use_ema=True`, forwarded with the other keyword arguments.)
    name, num_classes, dtype, **kwargs: as `convert.load_checkpoint` (a training run knows its
        architecture; there `kwargs` are runtime options such as scan_impl).
    The model carries `checkpoint_info` = {"path", "step", "ema"} for a training run.
    """
    if not is_training_run(path):
        if which != "best":
            raise ValueError(f"which={which!r} applies to training runs; {path} is a model checkpoint")
        from mambavision_jax.convert import load_checkpoint as load_model_checkpoint

        # `path` as given: a hub id or a gs:// URL is no local Path
        return load_model_checkpoint(path, name, num_classes=num_classes, dtype=dtype, **kwargs)
    p = path_of(path)
    if kwargs.pop("use_ema", None):
        raise ValueError(f"{p} is a training run: select its EMA weights with ema=True, not use_ema")
    return _load_run(
        p, which, ema=ema, require_ema=False, name=name, num_classes=num_classes, dtype=dtype, **kwargs
    )


def _load_run(
    workdir, which, *, ema: bool, require_ema: bool, name=None, num_classes=None, dtype=jnp.float32, **runtime
):
    workdir = as_path(workdir) if is_remote(workdir) else Path(workdir).absolute()
    step_dir = _run_step_dir(workdir, which)
    model = _run_model(workdir, jnp.dtype(dtype), **runtime)
    if name is not None and name != getattr(model, "name", name):
        raise ValueError(f"{workdir} trained {model.name}, not {name}")
    if num_classes is not None and num_classes != model.num_classes:
        raise ValueError(f"{workdir} trained a {model.num_classes}-class head, not {num_classes}")
    params, stats, used_ema = _restore_run_weights(step_dir, model, ema, require_ema)
    nnx.update(model, params, stats)
    model.eval()
    model.checkpoint_info = {"path": os.fspath(step_dir), "step": int(step_dir.name), "ema": used_ema}
    return model


def load_model(
    weights,
    model_name: str | None = None,
    *,
    dtype: str = "float32",
    ema: bool | None = None,
    scan_impl: str | None = None,
    which: str = "best",
):
    """`load_checkpoint` with the command lines' arguments; the model is in eval mode.

    ema: None: a training run's EMA weights when it kept them, a file's main weights; True: the
    EMA weights (a training run's, or an official .pth.tar's state_dict_ema), an error where there
    are none; False: the main weights."""
    kwargs: dict[str, Any] = {}
    if scan_impl and scan_impl != "auto":
        kwargs["scan_impl"] = scan_impl
    if is_training_run(weights):
        model = _load_run(
            weights,
            which,
            ema=ema is not False,
            require_ema=ema is True,
            name=model_name,
            dtype=dtype,
            **kwargs,
        )
    else:
        if which != "best":
            raise ValueError(
                f"--checkpoint {which} applies to a training workdir; {weights} is a model checkpoint"
            )
        if ema:
            kwargs["use_ema"] = True
        from mambavision_jax.convert import load_checkpoint as load_model_checkpoint

        model = load_model_checkpoint(weights, model_name, dtype=jnp.dtype(dtype), **kwargs)
    model.eval()
    return model


# ----------------------------------------------------------------------------- running the model
def local_mesh(devices=None):
    """The training mesh's layout (axes 'data', 'fsdp') over this process's devices: the batch is
    split over all of them."""
    from mambavision_jax.train.sharding import make_mesh

    return make_mesh(-1, 1, devices=list(devices or jax.local_devices()))


def _eval_copy(model, mesh):
    """A copy in eval mode that shares the arrays, its Pallas scans run per device over `mesh`'s
    batch axes: the caller's model keeps its mode and its own scan sharding."""
    from mambavision_jax.models.mamba_vision import MambaVision
    from mambavision_jax.train.sharding import BATCH_AXES

    graphdef, state = nnx.split(model)
    m = nnx.merge(graphdef, state)
    m.eval()
    if isinstance(m, MambaVision):  # another module (e.g. a test's stand-in) runs as given
        m.set_scan_sharding(ScanSharding(mesh, BATCH_AXES))
    return m


_PROGRAMS: list = []  # [(graphdef, k, mesh, programs)], most recent last


def _programs(graphdef, k: int, mesh):
    """The jitted programs of one architecture, shared by every Runner of it (a second Runner of
    the same model, e.g. after reloading weights, reuses the compiled code). Looked up with ==:
    equal NNX graphdefs do not always hash equal."""
    for i, (g, kk, mm, progs) in enumerate(_PROGRAMS):
        if kk == k and mm == mesh and g == graphdef:
            _PROGRAMS.append(_PROGRAMS.pop(i))
            return progs
    progs = _make_programs(graphdef, k, mesh)
    _PROGRAMS.append((graphdef, k, mesh, progs))
    del _PROGRAMS[:-8]
    return progs


def _make_programs(graphdef, k: int, mesh):
    """(logits, metrics, top-k probabilities): jitted, the weights replicated, the batch sharded."""
    from mambavision_jax.train.sharding import batch_sharding, replicated

    rep, bat = replicated(mesh), batch_sharding(mesh)

    def logits_fn(state, images):
        return nnx.merge(graphdef, state)(images).astype(jnp.float32)

    def metrics_fn(state, images, labels, mask):
        return classification_metrics(logits_fn(state, images), labels, mask)

    def probs_fn(state, images):
        probs = jax.nn.softmax(logits_fn(state, images), axis=-1)
        return jax.lax.top_k(probs, k)

    return (
        jax.jit(logits_fn, in_shardings=(rep, bat), out_shardings=bat),
        jax.jit(metrics_fn, in_shardings=(rep, bat, bat, bat), out_shardings=rep),
        jax.jit(probs_fn, in_shardings=(rep, bat), out_shardings=bat),
    )


class Runner:
    """The model jitted once over the local devices: the batch is split over the devices, the
    weights are replicated. Batches are padded to a multiple of the device count (and to the
    largest batch seen, so the last, smaller batch reuses the compiled program).

    `logits(images)`, `topk_probs(images)` and `metrics(images, labels, mask)` return numpy /
    floats; `dispatch_metrics(batch)` returns the device arrays without waiting for them (a caller
    can queue the next batch before reading the last one back)."""

    def __init__(self, model, mesh=None, topk: int = 5):
        self.mesh = mesh if mesh is not None else local_mesh()
        self.n_dev = self.mesh.devices.size
        graphdef, state = nnx.split(_eval_copy(model, self.mesh))
        from mambavision_jax.train.sharding import batch_sharding, replicated

        self.batch_sharding = batch_sharding(self.mesh)
        self.state = jax.device_put(state, replicated(self.mesh))
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.topk = max(1, min(topk, self.num_classes or topk))  # top-num_classes for fewer classes
        self._logits, self._metrics, self._probs = _programs(graphdef, self.topk, self.mesh)
        self._padded = 0

    def _pad_to(self, n: int) -> int:
        size = max(self._padded, -(-n // self.n_dev) * self.n_dev)
        self._padded = size
        return size

    def _put(self, x, size: int) -> jax.Array:
        x = np.asarray(x)
        if x.shape[0] < size:
            x = np.concatenate([x, np.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)])
        return jax.device_put(x, self.batch_sharding)

    def dispatch_metrics(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
        """`classification_metrics` sums of a batch {"image", "label"[, "mask"]}, not waited for."""
        images = np.asarray(batch["image"])
        n = images.shape[0]
        size = self._pad_to(n)
        mask = np.asarray(batch["mask"], bool) if "mask" in batch else np.ones((n,), bool)
        return self._metrics(
            self.state,
            self._put(images, size),
            self._put(np.asarray(batch["label"], np.int32), size),
            self._put(mask, size),
        )

    def metrics(self, images, labels, mask=None) -> dict[str, float]:
        batch = {"image": images, "label": labels}
        if mask is not None:
            batch["mask"] = mask
        return {k: float(v) for k, v in self.dispatch_metrics(batch).items()}

    def logits(self, images) -> np.ndarray:
        n = len(images)
        return np.asarray(self._logits(self.state, self._put(images, self._pad_to(n))))[:n]

    def topk_probs(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, class indices), each (n, topk), best first."""
        n = len(images)
        p, i = self._probs(self.state, self._put(images, self._pad_to(n)))
        return np.asarray(p)[:n], np.asarray(i)[:n]


# ----------------------------------------------------------------------------- command lines
# The arguments evaluate, predict and export share, and the checks made before any work.
def add_weights_arguments(p: argparse.ArgumentParser) -> None:
    """--weights, --model, --checkpoint, --ema / --no_ema: shared by evaluate, predict and export."""
    p.add_argument(
        "--weights",
        required=True,
        help="checkpoint: official .pth.tar, .safetensors, Hugging Face model folder "
        "(config.json + model.safetensors), an orbax folder from "
        "mambavision_jax.convert, or a training run's workdir",
    )
    p.add_argument(
        "--model",
        default=None,
        help="variant name, e.g. mamba_vision_T (default: inferred from the weights or "
        "config.json; needed where the weights are ambiguous, e.g. L2 vs L2_512_21k)",
    )
    p.add_argument(
        "--checkpoint",
        default="best",
        metavar="{best,latest,STEP}",
        help="a training workdir's checkpoint: best (best validation top-1), latest, or a "
        "step number (default best)",
    )
    ema = p.add_mutually_exclusive_group()
    ema.add_argument(
        "--ema",
        dest="ema",
        action="store_const",
        const=True,
        default=None,
        help="the EMA weights: an official .pth.tar's state_dict_ema, a training run's EMA "
        "(a training run's EMA weights are used by default when it kept them)",
    )
    ema.add_argument(
        "--no_ema",
        dest="ema",
        action="store_const",
        const=False,
        help="a training run's raw weights instead of its EMA",
    )


def add_preprocessing_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image_size",
        type=cli.positive_int,
        default=None,
        help="crop size (default: the variant's, e.g. 224; 512 for the *_512_21k models)",
    )
    p.add_argument(
        "--crop_pct",
        type=cli.float_range(0, 1, min_inclusive=False),
        default=None,
        help="in (0, 1]: resize to floor(image_size / crop_pct) before the center crop "
        "(default: the variant's, e.g. 1.0 for T, 0.98 T2, 0.93 S)",
    )
    p.add_argument(
        "--crop_mode",
        choices=("center", "squash"),
        default=None,
        help="'center': resize the short side, keep the aspect ratio; 'squash': resize "
        "both sides (default: the variant's)",
    )


def check_weights_arguments(args) -> None:
    """What can be checked about --weights / --checkpoint before anything is loaded."""
    from mambavision_jax import hub

    if not (hub.is_hub_id(args.weights) or path_of(args.weights).exists()):
        raise FileNotFoundError(
            f"--weights {args.weights}: no such file or folder (nor a hub id such as nvidia/MambaVision-T-1K)"
        )
    if not (args.checkpoint in ("best", "latest") or args.checkpoint.isdigit()):
        raise cli.UserError(f"--checkpoint must be best, latest or a step number, got {args.checkpoint!r}")


def check_output_file(flag: str, path: str) -> None:
    """An output file's folder must exist and the path must not be a folder: checked before work.
    (An object store has no folders to create: there only a folder of that name is refused.)"""
    p = path_of(path)
    if p.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder; give a file name")
    if not is_remote(p) and not p.absolute().parent.is_dir():
        raise FileNotFoundError(f"{flag} {path}: the folder {p.absolute().parent} does not exist")
