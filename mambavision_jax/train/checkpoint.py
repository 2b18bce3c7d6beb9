"""Orbax checkpoints of the whole train state plus each host's data-iterator position.

`checkpoints/` keeps the last N (async, atomic: a run killed mid-save resumes from the previous
one); `best/` keeps the one with the best EMA top-1 (raw top-1 without EMA). The workdir may be
local or an object store (gs://...): orbax writes through tensorstore, the iterator JSON through
epath.

The caller saves only states it has checked to be finite (see loop.py), so every checkpoint here
is one that training can resume from. A checkpoint counts as whole only with its metadata, its
state and every host's iterator position readable (`damage`, then `restore_step`); the step's
`_CHECKPOINT_METADATA` also records how many hosts wrote it and whether the eval due at that step
is still owed (a preemption stops before it). Reading here never writes: `resumable_steps` and
`restore_step` work without a `CheckpointManager` (whose creation writes and cleans up).
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from mambavision_jax.paths import PathLike, as_path, atomic_write_text, is_remote

# The layout of a workdir, shared by the trainer and by readers of a run.
CHECKPOINTS = "checkpoints"  # the last `keep_checkpoints`, one folder per step
BEST = "best"  # the best eval score
DATA_STATE = "data_state"  # under CHECKPOINTS: <step>.<process>.json, each host's iterator position
DAMAGED = "damaged_checkpoints"  # damaged checkpoints newer than the one a run resumed from
STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's, per step; our custom metadata lives in it
STATE_ITEM = "default"  # the state's orbax item inside a step folder
TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax's name for an unfinished save (local disks)
COMMIT_MARKER = "commit_success.txt"  # written by orbax once a step's save is complete
RUN_CONFIG = "config.json"  # beside them: the training config (ConfigDict as JSON)
RUN_MODEL_CONFIG = "model_config.json"  # and the model's config.to_dict(), for readers of its checkpoints


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(tree):
    """Typed PRNG keys -> their uint32 data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_saveable(tree, like):
    return jax.tree.map(
        lambda x, l: jax.random.wrap_key_data(x, impl=jax.random.key_impl(l)) if _is_key(l) else x, tree, like
    )


def _abstract_saveable(state, shardings):
    def one(x, s):
        if _is_key(x):
            data = jax.eval_shape(jax.random.key_data, x)
            return jax.ShapeDtypeStruct(
                data.shape,
                data.dtype,
                sharding=jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec()),
            )
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return jax.tree.map(one, state, shardings)


class Checkpointer:
    """The writer: the last `keep` states under `checkpoints/` (async) and the best one under
    `best/`. Creating it creates both folders and removes the temporary folders of saves that
    were interrupted (a run killed mid-save): make it only once the run may write."""

    def __init__(self, workdir: PathLike, keep: int = 3):
        workdir = as_path(workdir)
        self.directory = workdir / CHECKPOINTS
        self.data_dir = workdir / CHECKPOINTS / DATA_STATE
        # Local disks: orbax saves into "<step>.orbax-checkpoint-tmp" and renames; those of a killed
        # save are removed here. Object stores have no rename: an unfinished save is a step folder
        # without its commit marker, which the resume moves aside as damaged (`damage`).
        cleanup = not is_remote(workdir)
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True, cleanup_tmp_directories=cleanup
        )
        self.latest = ocp.CheckpointManager(self.directory, options=opts)
        best_opts = ocp.CheckpointManagerOptions(
            max_to_keep=1,
            create=True,
            best_fn=lambda m: m["score"],
            best_mode="max",
            enable_async_checkpointing=False,
            cleanup_tmp_directories=cleanup,
        )
        self.best = ocp.CheckpointManager(workdir / BEST, options=best_opts)

    def save(self, step: int, state, data_state: dict | None = None, *, eval_pending: bool = False) -> None:
        """Save `state` at `step` with this host's iterator position; `eval_pending`: the eval due
        at this step has not run (a preemption), the resumed run does it first."""
        if data_state is not None:
            # Every host writes its own iterator position before the state (small JSON, atomic).
            self.data_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                self.data_dir / f"{step}.{jax.process_index()}.json",
                json.dumps(data_state, default=_json_default),
            )
        meta = {
            "processes": jax.process_count(),
            "data_state": data_state is not None,
            "eval_pending": eval_pending,
        }
        # force: the loop decides when to save (its own interval, eval, preemption).
        self.latest.save(
            step, args=ocp.args.StandardSave(to_saveable(state)), custom_metadata=meta, force=True
        )

    def save_best(self, step: int, state, score: float) -> None:
        if self.best.latest_step() == step:
            return
        self.best.save(
            step, args=ocp.args.StandardSave(to_saveable(state)), metrics={"score": float(score)}, force=True
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, step: int, abstract_state, shardings):
        """The state at `step` placed on the current mesh (any device count), and this host's data
        iterator state (None if it was not saved)."""
        state = restore_step(self.directory, step, abstract_state, shardings)
        path = self.data_dir / f"{step}.{jax.process_index()}.json"
        return state, (json.loads(path.read_text()) if path.is_file() else None)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


# ------------------------------------------------------------------ reading a run (no writes)
def checkpoint_steps(directory: PathLike) -> list[int]:
    """The finished step folders under `directory` (a run's checkpoints/ or best/), oldest first;
    unfinished saves (orbax's temporary folders) are not steps."""
    directory = as_path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _json_problem(path, what: str = "") -> tuple[object, str | None]:
    """(the JSON in `path`, None), or (None, why it cannot be read: missing, not JSON)."""
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return None, f"{path}{what} is missing"
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"{path}{what} is not valid JSON ({e})"


def step_metadata(directory: PathLike, step: int) -> dict:
    """The custom metadata the Checkpointer stored with `step` ({} for checkpoints of older
    versions); raises ValueError naming the file when it is missing or not JSON."""
    path = as_path(directory) / str(step) / STEP_METADATA
    meta, why = _json_problem(path)
    if why is None and not isinstance(meta, dict):
        why = f"{path} is not a JSON object"
    if why is not None:
        raise ValueError(why)
    return meta.get("custom_metadata") or {}


def damage(directory: PathLike, step: int, processes: int) -> str | None:
    """Why checkpoint `step` under `directory` (a run's checkpoints/) cannot be resumed from,
    naming the file, or None when its metadata, state metadata and every host's iterator position
    are present and readable (the arrays themselves are checked by restoring them). `processes`:
    the hosts whose positions must be there when the checkpoint does not say how many wrote it."""
    directory = as_path(directory)
    if not (directory / str(step) / COMMIT_MARKER).exists():
        return f"{directory / str(step) / COMMIT_MARKER} is missing (the save did not finish)"
    try:
        meta = step_metadata(directory, step)
    except ValueError as e:
        return str(e)
    why = _json_problem(directory / str(step) / STATE_ITEM / "_METADATA")[1]
    for p in range(int(meta.get("processes", processes))):
        if why is not None:
            break
        path = directory / DATA_STATE / f"{step}.{p}.json"
        why = _json_problem(path, f" (the data-iterator position of process {p})")[1]
    return why


def read_data_state(directory: PathLike, step: int, process: int) -> dict:
    return json.loads((as_path(directory) / DATA_STATE / f"{step}.{process}.json").read_text())


def restore_step(directory: PathLike, step: int, abstract_state, shardings):
    """The state saved at `step` under `directory`, placed with `shardings` (any device count):
    read only, no CheckpointManager."""
    target = _abstract_saveable(abstract_state, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(as_path(directory) / str(step) / STATE_ITEM, target)
    return from_saveable(restored, abstract_state)


def unreadable_reason(e: BaseException) -> str:
    """The first line of what tensorstore / orbax said, without orbax's advice to pad or truncate
    arrays (which would hide a checkpoint that does not fit)."""
    inner = e
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__
    text = " ".join(str(inner).split()) or type(inner).__name__
    return text.split(" Truncating/padding is disabled")[0][:400]


def move_aside(directory: PathLike, step: int) -> str:
    """Move checkpoint `step` out of `directory` (a run's checkpoints/) into the workdir's
    damaged_checkpoints/, so a resumed run can write that step again; returns the new place."""
    directory = as_path(directory)
    target_dir = directory.parent / DAMAGED
    target = target_dir / str(step)
    n = 1
    while target.exists():
        n += 1
        target = target_dir / f"{step}.{n}"
    if is_remote(directory):
        import fsspec

        fs, src = fsspec.core.url_to_fs(os.fspath(directory / str(step)))
        fs.mv(src, fsspec.core.url_to_fs(os.fspath(target))[1], recursive=True)
        # gcsfs caches listings (and orbax reaches the store through the same cached filesystem):
        # a stale listing still holds the moved step, and orbax's save of that step again would try
        # to delete objects that are gone.
        for same_kind in list(getattr(type(fs), "_cache", {}).values()) or [fs]:  # etils' instance too
            same_kind.invalidate_cache()
    else:
        target_dir.mkdir(parents=True, exist_ok=True)
        os.rename(directory / str(step), target)
    return str(target)


def _json_default(x):
    if isinstance(x, bytes):
        return x.decode("latin-1")
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"cannot store {type(x).__name__} in the data state")


# ------------------------------------------------------------------ reading a training run
# For readers of a run's weights (`mambavision_jax.weights`), with the layout names above.
RUN_CHECKPOINTS = {"best": BEST, "latest": CHECKPOINTS}


def run_data_config(workdir: PathLike) -> dict:
    """The `data` section of a training run's stored config (config.json), or {} where it cannot
    be read (missing, not JSON, another layout): what readers of a run take as hints."""
    try:
        data = json.loads((as_path(workdir) / RUN_CONFIG).read_text()).get("data", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return data if isinstance(data, dict) else {}


def is_training_run(path: PathLike) -> bool:
    """Whether `path` (local or a URL such as gs://bucket/run) is a training workdir (it has the
    orbax `checkpoints/` or `best/` folder)."""
    p = as_path(path)
    return p.is_dir() and any((p / d).is_dir() for d in RUN_CHECKPOINTS.values())


def step_dir(workdir: PathLike, checkpoint: str | int = "best"):
    """The folder of a run's checkpoint: 'best' (best validation top-1), 'latest', or a step
    number (in checkpoints/ or best/). A missing one is a FileNotFoundError that says what there is."""
    from mambavision_jax.errors import UserError  # (imported here: this part was added to the file)

    workdir = as_path(workdir)
    if isinstance(checkpoint, int) or (isinstance(checkpoint, str) and checkpoint.isdigit()):
        step = int(checkpoint)
        for d in (CHECKPOINTS, BEST):
            if (workdir / d / str(step)).is_dir():
                return workdir / d / str(step)
        steps = checkpoint_steps(workdir / CHECKPOINTS)
        raise FileNotFoundError(f"{workdir} has no checkpoint of step {step} (steps: {steps or 'none'})")
    if checkpoint not in RUN_CHECKPOINTS:
        raise UserError(f"checkpoint must be 'best', 'latest' or a step number, got {checkpoint!r}")
    steps = checkpoint_steps(workdir / RUN_CHECKPOINTS[checkpoint])
    if not steps:
        hint = (
            " (best/ is written at the first evaluation; pick --checkpoint latest)"
            if checkpoint == BEST and checkpoint_steps(workdir / CHECKPOINTS)
            else ""
        )
        raise FileNotFoundError(
            f"{workdir}: no {checkpoint} checkpoint in {workdir / RUN_CHECKPOINTS[checkpoint]}{hint}"
        )
    return workdir / RUN_CHECKPOINTS[checkpoint] / str(steps[-1])


def restore_weights(step_folder, params, batch_stats, *, ema: bool | None = None):
    """(params, batch stats, whether they are the EMA ones) of the train state saved in
    `step_folder`, restored alone (no optimizer state) into the structure of `params` /
    `batch_stats` (an NNX model's `nnx.Param` / `nnx.BatchStat` states), on one device.

    ema: None: the EMA weights when the run kept them, else its weights; True: the EMA weights (a
    CheckpointError where there are none); False: the weights. A checkpoint that cannot be read or
    does not fit is a CheckpointError naming the folder."""
    from mambavision_jax.errors import CheckpointError, first_line

    step_folder = as_path(step_folder)
    item_dir = step_folder / STATE_ITEM
    # The handler, not a Checkpointer: the step folder is read as it is, without the
    # Checkpointer's look for a step-metadata file that the manager keeps one level up.
    handler = ocp.PyTreeCheckpointHandler()
    try:
        try:
            saved = handler.metadata(item_dir).tree
        except Exception as e:  # noqa: BLE001 - whatever orbax raises, the user gets one line
            raise CheckpointError(
                f"{step_folder}: not a readable training checkpoint ({first_line(e)})"
            ) from None
        if not isinstance(saved, dict) or "params" not in saved:
            raise CheckpointError(f"{step_folder}: not a training checkpoint (no 'params' in it)")
        has_ema = bool(saved.get("ema_params"))
        if ema is True and not has_ema:
            raise CheckpointError(
                f"{step_folder}: the run kept no EMA weights (config.ema.enabled was off); "
                f"leave out --ema to use its weights"
            )
        use_ema = ema is not False and has_ema
        prefix = "ema_" if use_ema else ""
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {prefix + "params": params, prefix + "batch_stats": batch_stats}
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target)
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), abstract)
        try:
            restored = handler.restore(
                item_dir,
                args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True),
            )
        except Exception as e:  # noqa: BLE001 - a mismatched or corrupt checkpoint: one line
            raise CheckpointError(
                f"{step_folder}: cannot restore the model's weights ({first_line(e)}); is "
                f"{RUN_MODEL_CONFIG} the run's own?"
            ) from None
    finally:
        handler.close()
    return restored[prefix + "params"], restored[prefix + "batch_stats"], use_ema
