"""`train_and_evaluate(config, workdir)`: the training loop behind `python train.py`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mambavision_jax import data as mvdata
from mambavision_jax.data.device_ops import DevicePrefetch
from mambavision_jax.models.registry import pretrained_cfg
from mambavision_jax.paths import PathLike, as_path, atomic_write_text
from mambavision_jax.train import sharding as shd
from mambavision_jax.train.checkpoint import Checkpointer
from mambavision_jax.train.config import validate
from mambavision_jax.train.evaluator import Evaluator
from mambavision_jax.train.metrics import MetricWriter, Throughput
from mambavision_jax.train.multihost import CompileThenAlign, wait_for_all_processes
from mambavision_jax.train.optim import make_optimizer
from mambavision_jax.train.preemption import Preempted, PreemptionWatcher
from mambavision_jax.train.schedule import make_schedule, num_train_epochs
from mambavision_jax.train.state import TrainState, create_train_state, graphdefs, model_configs, with_weights
from mambavision_jax.train.steps import make_train_step


class NonFiniteLossError(RuntimeError):
    """The loss or the parameters stopped being finite; nothing from that state was saved."""


def train_augment_config(config) -> mvdata.TrainAugConfig:
    """The training augmentation `config.data` describes."""
    d = config.data
    return mvdata.TrainAugConfig(
        random_resized_crop=d.random_resized_crop,
        scale=tuple(d.scale),
        ratio=tuple(d.ratio),
        interpolation=d.interpolation,
        hflip=d.hflip,
        auto_augment=d.auto_augment or None,
        re_prob=d.re_prob,
        re_mode=d.re_mode,
        re_count=d.re_count,
        fast_decode=d.fast_decode,
        resampler=d.resampler,
    )


def _every(value: int, steps_per_epoch: int) -> int:
    return steps_per_epoch if value <= 0 else value


def _with_finite_flag(train_step):
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


def _train_iterator(config, mesh, mean, std, num_examples: int) -> DevicePrefetch:
    """This process's training batches (uint8 images, normalised in the train step), put on the
    devices ahead of the step that takes them; `get_state()` is the position consumed."""
    train_iter = mvdata.make_train_iterator(
        config.data.name,
        global_batch_size=config.batch_size,
        image_size=config.data.image_size,
        data_dir=config.data.dir,
        split=config.data.train_split,
        seed=config.seed,
        augment=train_augment_config(config),
        mean=mean,
        std=std,
        num_workers=config.data.num_workers,
        num_threads=config.data.num_threads,
        normalize=False,
    )
    start, end = mvdata.shard_bounds(
        num_examples, jax.process_index(), jax.process_count(), drop_remainder=True
    )
    print(
        "data shard " + json.dumps({"process": jax.process_index(), "start": start, "end": end}), flush=True
    )
    return DevicePrefetch(
        train_iter, lambda local: shd.global_batch(local, mesh), config.data.device_prefetch
    )


def _bn_groups(config, mesh) -> int:
    """BatchNorm statistics per device (the official DDP) or over the whole global batch."""
    return mesh.size if config.bn_stats == "per_device" else 1


class TrainProgram(NamedTuple):
    """What `build_train_program` returns: `step(state, batch) -> (state, metrics)` jitted over the
    mesh (uint8 images in, normalised inside; metrics include "finite"), the initial `state` and
    its `shardings`, and the eval-mode graphdef for the evaluator."""

    step: Callable
    state: TrainState
    shardings: Any
    eval_gd: Any


def build_train_program(config, mesh, num_classes: int, steps_per_epoch: int) -> TrainProgram:
    """The optimizer, schedule, model graphdefs (their Pallas scans per device on the mesh), the
    initial sharded state and the jitted train step of `config`: what `train_and_evaluate` runs,
    and what the benchmarks time as the bare step."""
    bn_groups = _bn_groups(config, mesh)
    schedule = make_schedule(config, steps_per_epoch)
    tx = make_optimizer(config, steps_per_epoch, schedule=schedule)
    train_gd, eval_gd = graphdefs(config, num_classes, bn_groups, mesh)
    state, shardings = create_train_state(config, num_classes, bn_groups, tx, mesh)
    cfg = pretrained_cfg(config.model.name)
    step = make_train_step(
        config,
        train_gd,
        eval_gd,
        tx,
        schedule,
        num_classes,
        steps_per_epoch,
        mix_groups=bn_groups,
        mean=cfg.mean,
        std=cfg.std,
    )
    return TrainProgram(jit_train_step(step, shardings, mesh), state, shardings, eval_gd)


def jit_train_step(step, shardings, mesh):
    """`step(state, batch) -> (state, metrics)` jitted over the mesh: the state donated and kept in
    its `shardings`, the batch split over the data axes, metrics (+ "finite") replicated."""
    step = jax.jit(
        _with_finite_flag(step),
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


def classification_dataset_info(config):
    if config.data.name == mvdata.DIGITS_NAME:
        mvdata.build_digits(config.data.dir)
    return mvdata.dataset_info(config.data.name, config.data.dir)


def classification_evaluator(config, eval_gd, mesh, eval_batch):
    cfg = pretrained_cfg(config.model.name)
    return Evaluator(
        config,
        eval_gd,
        mesh,
        batch_size=eval_batch,
        crop_pct=config.data.crop_pct if config.data.crop_pct > 0 else cfg.crop_pct,
        crop_mode=config.data.crop_mode or cfg.crop_mode,
        mean=cfg.mean,
        std=cfg.std,
    )


def task_of(config) -> Task:
    """config.task: "classification" (the default) or "segmentation" (segmentation.train_task)."""
    name = config.get("task", "classification")
    if name == "segmentation":
        from mambavision_jax.segmentation.train_task import SEGMENTATION

        return SEGMENTATION
    if name != "classification":
        raise ValueError(f"config.task: classification or segmentation, got {name!r}")
    return Task(
        dataset_info=classification_dataset_info,
        build_program=build_train_program,
        model_config=lambda config, n, groups: model_configs(config, n, groups)[0].to_dict(),
        init_from=init_from_checkpoint,
        evaluator=classification_evaluator,
        train_iterator=lambda config, mesh, n: _train_iterator(
            config, mesh, pretrained_cfg(config.model.name).mean, pretrained_cfg(config.model.name).std, n
        ),
        score=lambda last_eval: last_eval.get("ema_top1", last_eval["top1"]),
    )


def train_and_evaluate(config, workdir: PathLike) -> dict:
    """Train `config` in `workdir` (a local path or a URL such as gs://bucket/run), resuming from
    its latest checkpoint. Returns the final eval.

    Raises `Preempted` after writing a checkpoint when the run got SIGTERM (see preemption.py),
    and `NonFiniteLossError` when the loss or the weights stop being finite."""
    validate(config)
    workdir = as_path(workdir)
    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
    n_dev = mesh.size
    eval_batch = config.eval_batch_size if config.eval_batch_size > 0 else config.batch_size
    for field, b in (("batch_size", config.batch_size), ("eval_batch_size", eval_batch)):
        if b % n_dev:
            raise ValueError(
                f"config.{field}={b} is not divisible by the {n_dev} devices "
                f"({jax.process_count()} process(es)); use a multiple of {n_dev}"
            )

    task = task_of(config)
    info = task.dataset_info(config)
    if config.data.train_split not in info.splits:
        raise ValueError(
            f"config.data.train_split={config.data.train_split!r}: {config.data.name} "
            f"has splits {sorted(info.splits)}"
        )
    num_classes = config.model.num_classes if config.model.num_classes > 0 else info.num_classes
    steps_per_epoch = info.splits[config.data.train_split] // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"config.batch_size={config.batch_size} exceeds the "
            f"{info.splits[config.data.train_split]} training examples"
        )
    total_steps = (
        config.total_steps
        if config.total_steps > 0
        else steps_per_epoch * num_train_epochs(config.total_epochs, config.schedule.cooldown_epochs)
    )

    # ------------------------------------------------------------------ model, optimizer, state, step
    bn_groups = _bn_groups(config, mesh)
    program = task.build_program(config, mesh, num_classes, steps_per_epoch)
    state, shardings = program.state, program.shardings
    writer = MetricWriter(workdir, total_steps)
    if jax.process_index() == 0:  # the run's config, and its architecture for readers of its checkpoints
        atomic_write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
        atomic_write_text(
            workdir / "model_config.json",
            json.dumps(task.model_config(config, num_classes, bn_groups), indent=2) + "\n",
        )
    wait_for_all_processes("mambavision_jax_setup")
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)

    start_step, data_state = 0, None
    if ckpt.latest_step() is not None:
        start_step = int(ckpt.latest_step())
        state, data_state = ckpt.restore(start_step, state, shardings)
        writer.log(f"resumed from {ckpt.directory} at step {start_step}")
    elif config.init_from:
        state = task.init_from(config, state, shardings, num_classes, bn_groups, writer)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    writer.log(
        f"{config.model.name}: {n_params:,} parameters, {n_dev} devices "
        f"(mesh {dict(mesh.shape)}), {num_classes} classes, {steps_per_epoch} steps/epoch, "
        f"{total_steps} steps, global batch {config.batch_size}"
    )

    # ------------------------------------------------------------------ eval
    evaluator = task.evaluator(config, program.eval_gd, mesh, eval_batch)

    # ------------------------------------------------------------------ data
    train_iter = task.train_iterator(config, mesh, info.splits[config.data.train_split])
    if data_state is not None:
        train_iter.set_state(data_state)

    # ------------------------------------------------------------------ loop
    log_every = config.log_every_steps
    eval_every = _every(config.eval_every_steps, steps_per_epoch)
    ckpt_every = _every(config.checkpoint_every_steps, steps_per_epoch)
    meter = Throughput(start_step, total_steps, config.batch_size)
    pending, last_eval = [], {}
    step = start_step
    preemption = PreemptionWatcher()
    try:
        while step < total_steps:
            batch = next(train_iter)
            state, metrics = program.step(state, batch)
            step += 1
            pending.append(metrics)
            preempted = preemption.reached(step)
            is_ckpt = step % ckpt_every == 0 or step == total_steps or preempted
            is_eval = step % eval_every == 0 or step == total_steps
            if step % log_every == 0 or is_ckpt:
                report_train_metrics(pending, step, steps_per_epoch, meter, writer, ckpt)
                pending = []
            elif is_eval:
                check_finite(pending, step, ckpt)  # best/ too holds only finite states
            if is_ckpt:
                ckpt.save(step, state, train_iter.get_state())
            if preempted:
                ckpt.wait()
                writer.log(f"preempted: checkpoint of step {step} written to {ckpt.directory}")
                raise Preempted(step, str(ckpt.directory))
            if is_eval:
                last_eval = evaluator.run(state)
                writer.write(step, "eval", last_eval)
                writer.log(f"eval  step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in last_eval.items()))
                score = task.score(last_eval)
                ckpt.save_best(step, state, score)
                meter.restart(step)
    finally:
        preemption.close()
        ckpt.wait()
        ckpt.close()
        writer.close()
    return last_eval


def check_finite(pending, step, ckpt) -> list[dict]:
    """The metrics of the steps since the last report on the host (one sync); raises
    NonFiniteLossError naming the first step whose loss or updated weights are not finite.

    pending: the train steps' metrics dicts (device arrays; "finite" optional), the last one of
    `step`; ckpt: anything with `latest_step()` (the `Checkpointer`), named in the error."""
    rows = jax.device_get(pending)
    for i, r in enumerate(rows):
        loss, weights_ok = float(r["loss"]), bool(r.get("finite", True))
        if np.isfinite(loss) and weights_ok:
            continue
        bad = step - len(rows) + i + 1
        what = (
            f"the loss became {loss}"
            if not np.isfinite(loss)
            else f"the weights stopped being finite (loss {loss:.4g})"
        )
        latest = ckpt.latest_step()
        kept = (
            f"The last good checkpoint (step {latest}) is kept"
            if latest is not None
            else "No checkpoint had been written yet, so there is nothing to resume from"
        )
        raise NonFiniteLossError(
            f"{what} at step {bad}; stopping. {kept}; lower optimizer.lr or check the data."
        )
    return rows


def report_train_metrics(pending, step, steps_per_epoch, meter, writer, ckpt) -> None:
    """Fetch the metrics of the steps since the last report (one host sync), write their mean to
    `writer` (a "train" row and the progress line, with `meter`'s img/s and ETA), and stop on a
    non-finite loss or weights (`check_finite`) before anything is checkpointed."""
    rows = check_finite(pending, step, ckpt)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "finite"}
    mean["lr"] = float(rows[-1]["lr"])
    ips, eta = meter.report(step)
    mean["img_per_s"] = ips
    writer.write(step, "train", mean)
    writer.log(
        f"step {step}/{meter.total} epoch {step / steps_per_epoch:.2f} loss {mean['loss']:.4f} "
        f"lr {mean['lr']:.2e} grad_norm {mean['grad_norm']:.2f} img/s {ips:.1f} ETA {eta}"
    )


def init_from_checkpoint(config, state, shardings, num_classes, bn_groups, writer):
    """Fine-tuning: `state` with the weights of `config.init_from` (any checkpoint
    `convert.load_checkpoint` reads: converted, PyTorch, orbax, a hub id, a training run; the EMA
    weights with `config.init_from_ema`), a new head when the number of classes differs, placed
    with `shardings`. `writer.log` says where they came from."""
    from mambavision_jax.convert import load_checkpoint
    from mambavision_jax.train.state import split_model

    arch, runtime = model_configs(config, num_classes, bn_groups)
    arch_fields = {k: v for k, v in arch.to_dict().items() if k not in ("name", "num_classes")}
    model = load_checkpoint(
        config.init_from,
        config.model.name,
        num_classes=num_classes,
        use_ema=config.init_from_ema,
        **arch_fields,
        **runtime.to_dict(),
    )
    _, params, stats, _ = split_model(model)
    writer.log(f"initialised from {config.init_from}")
    return with_weights(state, params, stats, shardings)
