"""`train_and_evaluate(config, workdir)`: the training loop behind `python train.py`."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from mambavision_jax import data as mvdata
from mambavision_jax.data.device_ops import DevicePrefetch, normalize_on_device
from mambavision_jax.models.registry import pretrained_cfg
from mambavision_jax.ops import under_kernel_mesh
from mambavision_jax.paths import PathLike, as_path, atomic_write_text
from mambavision_jax.train import sharding as shd
from mambavision_jax.train.checkpoint import Checkpointer
from mambavision_jax.train.config import validate
from mambavision_jax.train.metrics import MetricWriter, Throughput
from mambavision_jax.train.optim import make_optimizer
from mambavision_jax.train.preemption import Preempted, PreemptionWatcher
from mambavision_jax.train.schedule import make_schedule, num_train_epochs
from mambavision_jax.train.state import create_train_state, graphdefs, model_configs, with_weights
from mambavision_jax.train.steps import make_eval_step, make_train_step


class NonFiniteLossError(RuntimeError):
    """The loss or the parameters stopped being finite; nothing from that state was saved."""


def _augment(config) -> mvdata.TrainAugConfig:
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


def _wait_for_all_processes(name: str, timeout_s: int = 1800) -> None:
    """A coordination-service barrier with a long timeout. The first cross-process collective (orbax's
    barrier) sets up the CPU collectives with a 30 s rendezvous: a host still compiling or reading
    the data set info that much later would fail the run."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    if distributed.global_state.client is not None:
        distributed.global_state.client.wait_at_barrier(name, timeout_s * 1000)


class _CompileThenAlign:
    """Several processes: compile a jitted function ahead of its first call, then wait for every
    process before running it, so that its collectives start together however unequal the compile
    times (the CPU collectives give a peer 30 s)."""

    def __init__(self, jitted, name: str):
        self.jitted, self.name, self.compiled = jitted, name, None

    def __call__(self, *args):
        if self.compiled is None:
            self.compiled = self.jitted.lower(*args).compile()
            _wait_for_all_processes(f"mambavision_jax_{self.name}_compiled")
        return self.compiled(*args)


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

    if config.data.name == mvdata.DIGITS_NAME:
        mvdata.build_digits(config.data.dir)
    info = mvdata.dataset_info(config.data.name, config.data.dir)
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
    cfg = pretrained_cfg(config.model.name)
    crop_pct = config.data.crop_pct if config.data.crop_pct > 0 else cfg.crop_pct
    crop_mode = config.data.crop_mode or cfg.crop_mode

    # ------------------------------------------------------------------ model, optimizer, state
    bn_groups = n_dev if config.bn_stats == "per_device" else 1
    schedule = make_schedule(config, steps_per_epoch)
    tx = make_optimizer(config, steps_per_epoch, schedule=schedule)
    train_gd, eval_gd = graphdefs(config, num_classes, bn_groups)
    state, shardings = create_train_state(config, num_classes, bn_groups, tx, mesh)
    writer = MetricWriter(workdir, total_steps)
    if jax.process_index() == 0:  # the run's config, and its architecture for readers of its checkpoints
        atomic_write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
        atomic_write_text(
            workdir / "model_config.json",
            json.dumps(model_configs(config, num_classes, bn_groups)[0].to_dict(), indent=2) + "\n",
        )
    _wait_for_all_processes("mambavision_jax_setup")
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)

    start_step, data_state = 0, None
    if ckpt.latest_step() is not None:
        start_step = int(ckpt.latest_step())
        state, data_state = ckpt.restore(start_step, state, shardings)
        writer.log(f"resumed from {ckpt.directory} at step {start_step}")
    elif config.init_from:
        state = _init_from(config, state, shardings, num_classes, bn_groups, writer)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    writer.log(
        f"{config.model.name}: {n_params:,} parameters, {n_dev} devices "
        f"(mesh {dict(mesh.shape)}), {num_classes} classes, {steps_per_epoch} steps/epoch, "
        f"{total_steps} steps, global batch {config.batch_size}"
    )

    # ------------------------------------------------------------------ steps
    batch_sharding = shd.batch_sharding(mesh)
    repl = shd.replicated(mesh)
    # The Pallas scans run per device on their share of the batch (see ops.kernel_mesh).
    train_step = jax.jit(
        _with_finite_flag(
            under_kernel_mesh(
                make_train_step(
                    config,
                    train_gd,
                    eval_gd,
                    tx,
                    schedule,
                    num_classes,
                    steps_per_epoch,
                    mix_groups=n_dev if config.bn_stats == "per_device" else 1,
                    mean=cfg.mean,
                    std=cfg.std,
                ),
                mesh,
                shd.BATCH_AXES,
            )
        ),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, repl),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(under_kernel_mesh(make_eval_step(eval_gd), mesh, shd.BATCH_AXES), out_shardings=repl)
    if jax.process_count() > 1:
        train_step, eval_step = _CompileThenAlign(train_step, "train"), _CompileThenAlign(eval_step, "eval")

    # ------------------------------------------------------------------ data
    mean, std = cfg.mean, cfg.std
    train_iter = mvdata.make_train_iterator(
        config.data.name,
        global_batch_size=config.batch_size,
        image_size=config.data.image_size,
        data_dir=config.data.dir,
        split=config.data.train_split,
        seed=config.seed,
        augment=_augment(config),
        mean=mean,
        std=std,
        num_workers=config.data.num_workers,
        num_threads=config.data.num_threads,
        normalize=False,
    )  # uint8; normalised in train_step
    # The next batches go to the devices while a step runs; get_state() is the consumed position.
    train_iter = DevicePrefetch(
        train_iter, lambda local: shd.global_batch(local, mesh), config.data.device_prefetch
    )
    if data_state is not None:
        train_iter.set_state(data_state)
    start, end = mvdata.shard_bounds(
        info.splits[config.data.train_split], jax.process_index(), jax.process_count(), drop_remainder=True
    )
    print(
        "data shard " + json.dumps({"process": jax.process_index(), "start": start, "end": end}), flush=True
    )

    to_float = jax.jit(functools.partial(normalize_on_device, mean=mean, std=std))

    def evaluate(step: int) -> dict:
        it = mvdata.make_eval_iterator(
            config.data.name,
            global_batch_size=eval_batch,
            image_size=config.data.image_size,
            crop_pct=crop_pct,
            crop_mode=crop_mode,
            data_dir=config.data.dir,
            split=config.data.eval_split or None,
            mean=mean,
            std=std,
            num_threads=config.data.num_threads,
            normalize=False,
        )
        weights = {"": (state.params, state.batch_stats)}
        if state.ema_params is not None:
            weights["ema_"] = (state.ema_params, state.ema_batch_stats)
        sums = {p: None for p in weights}
        for batch in DevicePrefetch(
            it,
            lambda local: shd.global_batch({k: local[k] for k in ("image", "label", "mask")}, mesh),
            config.data.device_prefetch,
        ):
            batch["image"] = to_float(batch["image"])  # uint8 -> normalised, on the devices
            for prefix, (params, stats) in weights.items():
                out = eval_step(params, stats, state.rngs, batch)
                sums[prefix] = out if sums[prefix] is None else jax.tree.map(jnp.add, sums[prefix], out)
        result = {}
        for prefix, s in sums.items():
            s = jax.device_get(s)
            n = max(float(s["count"]), 1.0)
            result.update(
                {
                    f"{prefix}top1": 100 * s["correct1"] / n,
                    f"{prefix}top5": 100 * s["correct5"] / n,
                    f"{prefix}loss": s["loss_sum"] / n,
                }
            )
        writer.write(step, "eval", result)
        writer.log(f"eval  step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))
        return result

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
            state, metrics = train_step(state, batch)
            step += 1
            pending.append(metrics)
            preempted = preemption.reached(step)
            is_ckpt = step % ckpt_every == 0 or step == total_steps or preempted
            is_eval = step % eval_every == 0 or step == total_steps
            if step % log_every == 0 or is_ckpt:
                _flush(pending, step, steps_per_epoch, meter, writer, ckpt)
                pending = []
            elif is_eval:
                _check_finite(pending, step, ckpt)  # best/ too holds only finite states
            if is_ckpt:
                ckpt.save(step, state, train_iter.get_state())
            if preempted:
                ckpt.wait()
                writer.log(f"preempted: checkpoint of step {step} written to {ckpt.directory}")
                raise Preempted(step, str(ckpt.directory))
            if is_eval:
                last_eval = evaluate(step)
                score = last_eval.get("ema_top1", last_eval["top1"])
                ckpt.save_best(step, state, score)
                meter.restart(step)
    finally:
        preemption.close()
        ckpt.wait()
        ckpt.close()
        writer.close()
    return last_eval


def _check_finite(pending, step, ckpt) -> list[dict]:
    """The metrics of the steps since the last report on the host (one sync); raises
    NonFiniteLossError naming the first step whose loss or updated weights are not finite."""
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


def _flush(pending, step, steps_per_epoch, meter, writer, ckpt) -> None:
    """Fetch the metrics of the steps since the last report (one host sync), log their mean, and
    stop on a non-finite loss or weights before anything is checkpointed."""
    rows = _check_finite(pending, step, ckpt)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "finite"}
    mean["lr"] = float(rows[-1]["lr"])
    ips, eta = meter.report(step)
    mean["img_per_s"] = ips
    writer.write(step, "train", mean)
    writer.log(
        f"step {step}/{meter.total} epoch {step / steps_per_epoch:.2f} loss {mean['loss']:.4f} "
        f"lr {mean['lr']:.2e} grad_norm {mean['grad_norm']:.2f} img/s {ips:.1f} ETA {eta}"
    )


def _init_from(config, state, shardings, num_classes, bn_groups, writer):
    """Fine-tuning: weights from a converted / PyTorch / orbax checkpoint (a new head when the
    number of classes differs)."""
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
