"""The train step (jitted by the loop); the eval step is `train.evaluator.make_eval_step`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mambavision_jax.data.device_ops import (
    erase_key,
    erase_on_device,
    normalize_on_device,
)
from mambavision_jax.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mambavision_jax.train.ema import ema_update
from mambavision_jax.train.mixup import mixup_cutmix
from mambavision_jax.train.state import TrainState, split_model

MESA_TEMPERATURE, MESA_SCALE = 3.0, 50.0  # the official kdloss: 50 * KL(.. / 3)


def mesa_kd(logits, teacher_logits):
    """50 * KL(softmax(teacher/3) || softmax(logits/3)), batch mean (torch KLDivLoss 'batchmean')."""
    log_p = jax.nn.log_softmax(logits / MESA_TEMPERATURE)
    log_q = jax.nn.log_softmax(teacher_logits / MESA_TEMPERATURE)
    kl = jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1)
    return MESA_SCALE * jnp.mean(kl)


def make_train_step(
    config,
    train_gd,
    eval_gd,
    tx,
    schedule,
    num_classes: int,
    steps_per_epoch: int,
    mix_groups: int,
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
):
    """batch: {"image": uint8 (B, H, W, 3), normalised here with mean / std (or float, already
    normalised), "label": int (B,), optional "erase": int (B, K, 4) random-erasing boxes, filled
    here with config.data.re_mode noise as timm's prefetcher does}."""
    mix, mesa = config.mixup, config.mesa
    ema_decay = float(config.ema.decay)
    re_mode = config.data.re_mode

    def train_step(state: TrainState, batch):
        images = normalize_on_device(batch["image"], mean, std)
        if "erase" in batch:
            images = erase_on_device(erase_key(config.seed, state.step), images, batch["erase"], re_mode)
        # The mixup key depends on the step alone, so a resumed run mixes exactly as before.
        key = jax.random.fold_in(jax.random.key(config.seed), state.step)
        images, targets = mixup_cutmix(
            key,
            images,
            batch["label"],
            num_classes,
            mixup_alpha=mix.mixup_alpha,
            cutmix_alpha=mix.cutmix_alpha,
            prob=mix.prob,
            switch_prob=mix.switch_prob,
            label_smoothing=mix.label_smoothing,
            num_groups=mix_groups,
        )

        def loss_fn(params):
            model = nnx.merge(train_gd, params, state.batch_stats, state.rngs, copy=True)
            logits = model(images)
            ce = jnp.mean(optax.softmax_cross_entropy(logits, targets))
            _, _, stats, rngs = split_model(model)
            kd = jnp.zeros((), jnp.float32)
            if mesa.weight > 0:
                # Official: active once epoch / epochs > mesa_start_ratio, teacher = EMA in eval mode.
                epoch = state.step // steps_per_epoch
                active = epoch / config.total_epochs > mesa.start_ratio

                def teacher_kd():
                    teacher = nnx.merge(
                        eval_gd, state.ema_params, state.ema_batch_stats, state.rngs, copy=True
                    )
                    return mesa_kd(logits, jax.lax.stop_gradient(teacher(images)))

                kd = jax.lax.cond(active, teacher_kd, lambda: jnp.zeros((), jnp.float32))
            return ce + mesa.weight * kd, (ce, kd, stats, rngs)

        (loss, (ce, kd, stats, rngs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(
            step=state.step + 1, params=params, batch_stats=stats, rngs=rngs, opt_state=opt_state
        )
        if state.ema_params is not None:
            ema_params, ema_stats = ema_update(
                (state.ema_params, state.ema_batch_stats), (params, stats), ema_decay
            )
            new = new.replace(ema_params=ema_params, ema_batch_stats=ema_stats)
        metrics = {
            "loss": loss,
            "ce": ce,
            "mesa_kd": kd,
            "lr": schedule(state.step),
            "grad_norm": optax.global_norm(grads),
        }
        return new, metrics

    return train_step
