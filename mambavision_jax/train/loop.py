"""`train_and_evaluate(config, workdir)`: the training loop behind `python train.py`."""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

import jax
import numpy as np

from mambavision_jax import data as mvdata
from mambavision_jax.data.device_ops import DevicePrefetch
from mambavision_jax.errors import UserError
from mambavision_jax.models.registry import pretrained_cfg
from mambavision_jax.paths import PathLike, as_path, atomic_write_text
from mambavision_jax.train import sharding as shd
from mambavision_jax.train.checkpoint import (
    CHECKPOINTS,
    RUN_CONFIG,
    RUN_MODEL_CONFIG,
    Checkpointer,
    checkpoint_steps,
    damage,
    move_aside,
    read_data_state,
    restore_step,
    step_metadata,
    unreadable_reason,
)
from mambavision_jax.train.config import validate
from mambavision_jax.train.evaluator import Evaluator
from mambavision_jax.train.metrics import MetricWriter, Throughput
from mambavision_jax.train.multihost import on_process_zero, wait_for_all_processes
from mambavision_jax.train.optim import make_optimizer
from mambavision_jax.train.preemption import Preempted, PreemptionWatcher
from mambavision_jax.train.schedule import make_schedule, num_train_epochs
from mambavision_jax.train.state import create_train_state, graphdefs, model_configs, with_weights
from mambavision_jax.train.steps import make_train_step
from mambavision_jax.train.task import Task, TrainProgram, jit_train_step
from mambavision_jax.train.workdir import (
    WorkdirLock,
    check_resume_config,
    environment_message,
)


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


def build_train_program(
    config, mesh, num_classes: int, steps_per_epoch: int, *, abstract: bool = False
) -> TrainProgram:
    """The optimizer, schedule, model graphdefs (their Pallas scans per device on the mesh), the
    initial sharded state and the jitted train step of `config`: what `train_and_evaluate` runs,
    and what the benchmarks time as the bare step. abstract: the state as sharded
    `jax.ShapeDtypeStruct`s, no arrays (`step.lower(state, batch)` for a compile-only mesh)."""
    bn_groups = _bn_groups(config, mesh)
    schedule = make_schedule(config, steps_per_epoch)
    tx = make_optimizer(config, steps_per_epoch, schedule=schedule)
    train_gd, eval_gd = graphdefs(config, num_classes, bn_groups, mesh)
    state, shardings = create_train_state(config, num_classes, bn_groups, tx, mesh, abstract=abstract)
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


# A restore that failed for these reasons says nothing about the checkpoint (the processes did not
# meet in time, a store was unreachable): the run stops instead of passing over the checkpoint.
_TRANSIENT = re.compile(r"DEADLINE_EXCEEDED|UNAVAILABLE|Gloo|barrier|coordination service", re.IGNORECASE)


class ResumePoint(NamedTuple):
    """Where a run continues: the restored `state` at `step`, this host's `data_state`, whether
    the eval due at `step` is still owed (`eval_pending`), and the newer checkpoints found damaged
    (`damaged`: (step, why), newest first)."""

    step: int
    state: Any
    data_state: dict
    eval_pending: bool
    damaged: list


def finished_step(directory, total_steps: int) -> int | None:
    """The step of the run's newest whole-looking checkpoint when it is at or past `total_steps`
    with no eval owed (nothing left to do), else None. Reads only."""
    for step in reversed(checkpoint_steps(directory)):
        if damage(directory, step, jax.process_count()) is None:
            owed = step_metadata(directory, step).get("eval_pending", False)
            return step if step >= total_steps and not owed else None
    return None


def find_resume_point(directory, state, shardings) -> ResumePoint | None:
    """The newest whole checkpoint under `directory` (a run's checkpoints/), restored: its metadata,
    state and every host's iterator position present and readable. None when there is no
    checkpoint at all; a UserError naming each one when none of them is whole (nothing is moved
    or deleted then). Reads only; the caller moves the damaged newer ones aside."""
    steps = list(reversed(checkpoint_steps(directory)))
    problems = []
    for step in steps:
        why = damage(directory, step, jax.process_count())
        if why is None:
            try:
                restored = restore_step(directory, step, state, shardings)
            except Exception as e:  # noqa: BLE001 - which checkpoint is whole is the question
                if environment_message(e) or _TRANSIENT.search(str(e)):  # not the checkpoint's fault
                    raise
                why = f"{as_path(directory) / str(step)} cannot be read: {unreadable_reason(e)}"
            else:
                meta = step_metadata(directory, step)
                return ResumePoint(
                    step,
                    restored,
                    read_data_state(directory, step, jax.process_index()),
                    bool(meta.get("eval_pending", False)),
                    problems,
                )
        problems.append((step, why))
    if not steps:
        return None
    raise UserError(
        f"no whole checkpoint to resume from in {directory}: "
        + "; ".join(f"step {s}: {why}" for s, why in problems)
        + ". Nothing was changed; move the folder away to start over, or use another --workdir"
    )


def train_and_evaluate(config, workdir: PathLike) -> dict:
    """Train `config` in `workdir` (a local path or a URL such as gs://bucket/run), resuming from
    its newest whole checkpoint. Returns the final eval ({} when the run had already finished).

    Everything that may refuse the run (the config against the stored one, the lock, the
    checkpoints) is checked before anything is written to the workdir. Raises `Preempted` after
    writing a checkpoint when the run got SIGTERM (see preemption.py), `NonFiniteLossError` when
    the loss or the weights stop being finite, UserError / EnvironmentFailure for refusals."""
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

    # ------------------------------------------------------------------ the record: checks, no writes
    ckpt_dir = workdir / CHECKPOINTS
    resuming = bool(checkpoint_steps(ckpt_dir))
    config_changes = check_resume_config(workdir, config) if resuming else []
    done = finished_step(ckpt_dir, total_steps)
    if done is not None:
        if jax.process_index() == 0:
            print(f"nothing to do: the run finished at step {done} (total_steps {total_steps})", flush=True)
        return {}
    lock = WorkdirLock(workdir)
    took_over = on_process_zero("workdir_lock", lock.acquire)  # process 0 holds it for the run
    notes = ([took_over] if took_over else []) + [f"config changed on resume: {c}" for c in config_changes]
    try:
        return _train(
            config,
            workdir,
            mesh,
            task,
            info,
            num_classes,
            steps_per_epoch,
            total_steps,
            eval_batch,
            notes,
        )
    finally:
        lock.release()


def _train(config, workdir, mesh, task, info, num_classes, steps_per_epoch, total_steps, eval_batch, notes):
    """`train_and_evaluate` once the workdir is locked and the config accepted."""
    n_dev = mesh.size
    ckpt_dir = workdir / CHECKPOINTS
    # ------------------------------------------------------------------ model, optimizer, state, step
    bn_groups = _bn_groups(config, mesh)
    program = task.build_program(config, mesh, num_classes, steps_per_epoch)
    state, shardings = program.state, program.shardings
    # The restore is the first cross-process collective (30 s rendezvous): start it together.
    wait_for_all_processes("mambavision_jax_restore")
    resume = find_resume_point(ckpt_dir, state, shardings)

    # ------------------------------------------------------------------ every check passed: write
    if jax.process_index() == 0:
        moved = [(s, why, move_aside(ckpt_dir, s)) for s, why in (resume.damaged if resume else [])]
        # the run's config, and its architecture for readers of its checkpoints
        atomic_write_text(workdir / RUN_CONFIG, config.to_json_best_effort(indent=2) + "\n")
        atomic_write_text(
            workdir / RUN_MODEL_CONFIG,
            json.dumps(task.model_config(config, num_classes, bn_groups), indent=2) + "\n",
        )
    wait_for_all_processes("mambavision_jax_setup")
    writer = MetricWriter(workdir, total_steps)
    for note in notes:
        writer.log(note)
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)

    start_step, data_state, eval_pending = 0, None, False
    if resume is not None:
        if jax.process_index() == 0:
            for s, why, where in moved:
                writer.log(f"checkpoint of step {s} is damaged and was moved to {where}: {why}")
        start_step, state, data_state, eval_pending = (
            resume.step,
            resume.state,
            resume.data_state,
            resume.eval_pending,
        )
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

    def evaluate(step):
        result = evaluator.run(state)
        writer.write(step, "eval", result)
        writer.log(f"eval  step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))
        ckpt.save_best(step, state, task.score(result))
        meter.restart(step)
        return result

    try:
        if eval_pending:  # a preemption stopped before this step's eval: do it first
            last_eval = evaluate(step)
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
                ckpt.save(step, state, train_iter.get_state(), eval_pending=is_eval and preempted)
            if preempted:
                ckpt.wait()
                writer.log(f"preempted: checkpoint of step {step} written to {ckpt.directory}")
                raise Preempted(step, str(ckpt.directory))
            if is_eval:
                last_eval = evaluate(step)
    except BaseException:
        # The first error is the one to report: closing after it must not raise another (an
        # async save that failed the same way).
        for close in (preemption.close, ckpt.wait, ckpt.close, writer.close):
            try:
                close()
            except Exception:  # noqa: BLE001, S110
                pass
        raise
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
    """Fine-tuning: `state` with the weights of `config.init_from` (any weights
    `mambavision_jax.weights.resolve` takes: a converted or PyTorch checkpoint, an orbax folder, a
    hub id, a training run's best checkpoint; the EMA weights with `config.init_from_ema`), a new
    head when the number of classes differs, placed with `shardings`. `writer.log` says where they
    came from."""
    from mambavision_jax import weights
    from mambavision_jax.train.state import split_model

    arch, runtime = model_configs(config, num_classes, bn_groups)
    arch_fields = {k: v for k, v in arch.to_dict().items() if k not in ("name", "num_classes")}
    source = weights.resolve(
        config.init_from,
        ema=True if config.init_from_ema else None,
        task="classification",
        needed_by="init_from (a classifier's training)",
    )
    model = weights.load(
        source, name=config.model.name, num_classes=num_classes, **arch_fields, **runtime.to_dict()
    ).model
    _, params, stats, _ = split_model(model)
    where = f" (step {source.step} of its {source.checkpoint})" if source.step is not None else ""
    writer.log(f"initialised from {config.init_from}{where}")
    return with_weights(state, params, stats, shardings)
