"""The training run's evaluator (as big_vision's evaluators/classification.py): built once with the
mesh, the eval graphdef and the eval data settings; `run(state)` returns top-1 / top-5 / loss of
the state's weights (and of its EMA weights, prefixed "ema_") on the whole eval split."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from mambavision_jax import data as mvdata
from mambavision_jax.data.device_ops import DevicePrefetch, normalize_on_device
from mambavision_jax.metrics import classification_metrics, summarize
from mambavision_jax.train import sharding as shd
from mambavision_jax.train.multihost import CompileThenAlign

__all__ = ["Evaluator", "make_eval_step"]


def make_eval_step(eval_gd):
    """(params, batch_stats, rngs, batch) -> `classification_metrics` sums of the batch
    {"image" (normalised), "label", "mask" (False: padding)}: the metric of training and of
    `mambavision_jax.evaluate` alike."""

    def eval_step(params, batch_stats, rngs, batch):
        logits = nnx.merge(eval_gd, params, batch_stats, rngs)(batch["image"])
        return classification_metrics(logits, batch["label"], batch["mask"])

    return eval_step


class Evaluator:
    """Classification metrics of a `TrainState` on `config.data`'s eval split.

    eval_gd: the eval-mode graphdef (`train.state.graphdefs`, built with `mesh` so that its
    Pallas scans run per device); mesh: the training mesh, over which each eval batch is split;
    batch_size: the global eval batch; crop_pct, crop_mode, mean, std: the eval transform. The
    eval step is jitted once here; `run` reads the split again on every call (the last batch is
    padded and masked, so every example counts once).
    """

    def __init__(self, config, eval_gd, mesh, *, batch_size: int, crop_pct, crop_mode, mean, std):
        self.config, self.mesh, self.batch_size = config, mesh, batch_size
        self.crop_pct, self.crop_mode, self.mean, self.std = crop_pct, crop_mode, mean, std
        self.eval_step = jax.jit(make_eval_step(eval_gd), out_shardings=shd.replicated(mesh))
        if jax.process_count() > 1:
            self.eval_step = CompileThenAlign(self.eval_step, "eval")
        self.to_float = jax.jit(functools.partial(normalize_on_device, mean=mean, std=std))

    def batches(self):
        """The eval split as global batches on the devices, images normalised (float)."""
        d = self.config.data
        it = mvdata.make_eval_iterator(
            d.name,
            global_batch_size=self.batch_size,
            image_size=d.image_size,
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
            data_dir=d.dir,
            split=d.eval_split or None,
            mean=self.mean,
            std=self.std,
            num_threads=d.num_threads,
            normalize=False,
        )  # uint8: normalised on the devices
        keys = ("image", "label", "mask")
        for batch in DevicePrefetch(
            it, lambda local: shd.global_batch({k: local[k] for k in keys}, self.mesh), d.device_prefetch
        ):
            batch["image"] = self.to_float(batch["image"])
            yield batch

    def run(self, state) -> dict[str, float]:
        """{"top1", "top5" (in %), "loss"} of `state`'s weights, then "ema_top1", ... of its EMA
        weights when it keeps them (`metrics.summarize` of the summed batch metrics)."""
        weights = {"": (state.params, state.batch_stats)}
        if state.ema_params is not None:
            weights["ema_"] = (state.ema_params, state.ema_batch_stats)
        sums = dict.fromkeys(weights)
        for batch in self.batches():
            for prefix, (params, stats) in weights.items():
                # Summed on the host (the step's outputs are replicated scalars): an eager jnp.add of
                # arrays that span several processes is one more multi-process program, and two
                # processes were seen to stall in it, both waiting.
                out = jax.device_get(self.eval_step(params, stats, state.rngs, batch))
                sums[prefix] = out if sums[prefix] is None else jax.tree.map(np.add, sums[prefix], out)
        if sums[""] is None:
            d = self.config.data
            raise ValueError(f"config.data.eval_split={d.eval_split!r}: {d.name} gave no eval examples")
        result = {}
        for prefix, s in sums.items():
            result.update(summarize(s, prefix))
        return result
