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
