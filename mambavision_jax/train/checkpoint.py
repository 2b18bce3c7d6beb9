"""Orbax checkpoints of the whole train state plus each host's data-iterator position.

`checkpoints/` keeps the last N (async, atomic: a run killed mid-save resumes from the previous
one); `best/` keeps the one with the best EMA top-1 (raw top-1 without EMA). The workdir may be
local or an object store (gs://...): orbax writes through tensorstore, the iterator JSON through
epath.

The caller saves only states it has checked to be finite (see loop.py), so every checkpoint here
is one that training can resume from.
"""

from __future__ import annotations

import json

import jax
import orbax.checkpoint as ocp

from mambavision_jax.paths import PathLike, as_path, atomic_write_text


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
    def __init__(self, workdir: PathLike, keep: int = 3):
        workdir = as_path(workdir)
        self.directory = workdir / "checkpoints"
        self.data_dir = workdir / "checkpoints" / "data_state"
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
        self.latest = ocp.CheckpointManager(self.directory, options=opts)
        best_opts = ocp.CheckpointManagerOptions(
            max_to_keep=1,
            create=True,
            best_fn=lambda m: m["score"],
            best_mode="max",
            enable_async_checkpointing=False,
        )
        self.best = ocp.CheckpointManager(workdir / "best", options=best_opts)

    def save(self, step: int, state, data_state: dict | None = None) -> None:
        if data_state is not None:
            # Every host writes its own iterator position before the state (small JSON, atomic).
            self.data_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                self.data_dir / f"{step}.{jax.process_index()}.json",
                json.dumps(data_state, default=_json_default),
            )
        # force: the loop decides when to save (its own interval, eval, preemption).
        self.latest.save(step, args=ocp.args.StandardSave(to_saveable(state)), force=True)

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
        target = _abstract_saveable(abstract_state, shardings)
        restored = self.latest.restore(step, args=ocp.args.StandardRestore(target))
        path = self.data_dir / f"{step}.{jax.process_index()}.json"
        data_state = json.loads(path.read_text()) if path.is_file() else None
        return from_saveable(restored, abstract_state), data_state

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _json_default(x):
    if isinstance(x, bytes):
        return x.decode("latin-1")
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"cannot store {type(x).__name__} in the data state")


# ------------------------------------------------------------------ reading a training run
# The layout of a workdir, for the Checkpointer above and for readers of a run's weights
# (`mambavision_jax.weights`): orbax CheckpointManagers in checkpoints/ (the last N) and best/
# (the best one), one item each, plus the run's config files beside them.
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
ITEM_NAME = "default"  # the item name a CheckpointManager gives its only item
RUN_CONFIG = "config.json"  # the training config (ConfigDict as JSON)
RUN_MODEL_CONFIG = "model_config.json"  # the model's MambaVisionConfig.to_dict()
RUN_CHECKPOINTS = {"best": BEST_DIR, "latest": CHECKPOINTS_DIR}


def is_training_run(path: PathLike) -> bool:
    """Whether `path` (local or a URL such as gs://bucket/run) is a training workdir (it has the
    orbax `checkpoints/` or `best/` folder)."""
    p = as_path(path)
    return p.is_dir() and any((p / d).is_dir() for d in RUN_CHECKPOINTS.values())


def finished_steps(directory) -> list[int]:
    """The steps of the finished checkpoints in one CheckpointManager folder, oldest first. Orbax
    names a finished step folder by the step alone; one still being written carries a
    '.orbax-checkpoint-tmp' suffix and is not a checkpoint yet."""
    directory = as_path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def step_dir(workdir: PathLike, checkpoint: str | int = "best"):
    """The folder of a run's checkpoint: 'best' (best validation top-1), 'latest', or a step
    number (in checkpoints/ or best/). A missing one is a FileNotFoundError that says what there is."""
    from mambavision_jax.errors import UserError  # (imported here: this part was added to the file)

    workdir = as_path(workdir)
    if isinstance(checkpoint, int) or (isinstance(checkpoint, str) and checkpoint.isdigit()):
        step = int(checkpoint)
        for d in (CHECKPOINTS_DIR, BEST_DIR):
            if (workdir / d / str(step)).is_dir():
                return workdir / d / str(step)
        steps = finished_steps(workdir / CHECKPOINTS_DIR)
        raise FileNotFoundError(f"{workdir} has no checkpoint of step {step} (steps: {steps or 'none'})")
    if checkpoint not in RUN_CHECKPOINTS:
        raise UserError(f"checkpoint must be 'best', 'latest' or a step number, got {checkpoint!r}")
    steps = finished_steps(workdir / RUN_CHECKPOINTS[checkpoint])
    if not steps:
        hint = (
            " (best/ is written at the first evaluation; pick --checkpoint latest)"
            if checkpoint == BEST_DIR and finished_steps(workdir / CHECKPOINTS_DIR)
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
    item_dir = step_folder / ITEM_NAME
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
