"""What a training task is to the loop (`Task`), what it builds (`TrainProgram`) and how its
step is jitted over the mesh (`jit_train_step`).

A leaf below `train.loop`: the loop runs any `Task` (classification is defined in loop.py,
segmentation in `segmentation.train_task`), and a task's module imports this one, never the loop,
so the two stay free of import cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mambavision_jax.train import sharding as shd
from mambavision_jax.train.multihost import CompileThenAlign


def with_finite_flag(train_step):
    """Adds `metrics["finite"]`: the loss and every updated parameter and BatchNorm statistic are
    finite. One reduction fused into the step, read on the host only where a checkpoint is due, so
    a checkpoint is never written from an exploded state."""

    def step(state, batch):
        new, metrics = train_step(state, batch)
        finite = jnp.isfinite(metrics["loss"])
        for x in jax.tree.leaves((new.params, new.batch_stats)):
            finite = finite & jnp.all(jnp.isfinite(x))
        return new, {**metrics, "finite": finite}

    return step


class TrainProgram(NamedTuple):
    """What `build_train_program` returns: `step(state, batch) -> (state, metrics)` jitted over the
    mesh (uint8 images in, normalised inside; metrics include "finite"), the initial `state` and
    its `shardings`, and the eval-mode graphdef for the evaluator."""

    step: Callable
    state: Any  # train.state.TrainState (arrays, or ShapeDtypeStructs when abstract)
    shardings: Any
    eval_gd: Any


def jit_train_step(step, shardings, mesh):
    """`step(state, batch) -> (state, metrics)` jitted over the mesh: the state donated and kept in
    its `shardings`, the batch split over the data axes, metrics (+ "finite") replicated."""
    step = jax.jit(
        with_finite_flag(step),
        in_shardings=(shardings, shd.batch_sharding(mesh)),
        out_shardings=(shardings, shd.replicated(mesh)),
        donate_argnums=(0,),
    )
    if jax.process_count() > 1:
        step = CompileThenAlign(step, "train")
    return step


class Task(NamedTuple):
    """What differs between training tasks; `train_and_evaluate` runs the rest (mesh, state,
    checkpoints, preemption, logging) the same way for each.

    dataset_info(config) -> .splits, .num_classes (prepares the embedded data sets);
    build_program(config, mesh, num_classes, steps_per_epoch) -> TrainProgram;
    model_config(config, num_classes, bn_groups) -> the model_config.json dict;
    init_from(config, state, shardings, num_classes, bn_groups, writer) -> state (config.init_from);
    evaluator(config, eval_gd, mesh, eval_batch) -> has run(state) -> {metric: value};
    train_iterator(config, mesh, num_examples) -> DevicePrefetch of global batches;
    score(eval) -> the number best/ keeps the maximum of."""

    dataset_info: Callable
    build_program: Callable
    model_config: Callable
    init_from: Callable
    evaluator: Callable
    train_iterator: Callable
    score: Callable
