"""Classification metrics of a batch: the one top-1 / top-5 / cross-entropy of the package, used by
the training loop's eval step and by `mambavision_jax.evaluate` (as big_vision's
evaluators/classification.py: per-batch sums, a mask for padded examples, summed by the caller)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["classification_metrics", "summarize"]


def classification_metrics(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Sums over the batch of {"correct1", "correct5", "loss_sum" (cross-entropy), "count"}.

    logits (B, C), labels (B,) int, mask (B,) bool / 0-1 (False: a padding example, not counted).
    A model with fewer than 5 classes scores top-C as "correct5". Traceable (call it under jit).
    """
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    m = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hit = top == labels[:, None]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "correct1": jnp.sum(hit[:, 0] * m),
        "correct5": jnp.sum(jnp.any(hit, -1) * m),
        "loss_sum": jnp.sum(loss * m),
        "count": jnp.sum(m),
    }


def summarize(sums: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Summed metrics -> {prefix + "top1", prefix + "top5" (in %), prefix + "loss" (mean)}; NaN
    when nothing was counted."""
    n = float(sums["count"])
    div = (lambda x: float(x) / n) if n else (lambda x: float("nan"))
    return {
        f"{prefix}top1": 100 * div(sums["correct1"]),
        f"{prefix}top5": 100 * div(sums["correct5"]),
        f"{prefix}loss": div(sums["loss_sum"]),
    }
