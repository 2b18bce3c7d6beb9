"""grain input pipelines over TFDS array_record sources: training (infinite, augmented, resumable)
and evaluation (one deterministic pass, padded, masked).

Both yield per-host batches of numpy arrays: {"image": float32 (B, H, W, 3) normalised, "label":
int32 (B,)} (+ "mask": bool (B,) for eval; + "index": int64 source record index with
with_index=True), B = global_batch_size / process_count. Hosts read disjoint contiguous shards.
Batches are formed before the iterator (`MapDataset.batch`), so the batch stream does not depend on
the number of threads or worker processes; only the saved iterator state does (resume with the same
num_workers).
"""
from __future__ import annotations

import grain
import numpy as np
from grain.sharding import ShardOptions

from mambavision_jax.data.sources import default_eval_split, open_source
from mambavision_jax.data.transforms import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
                                             TrainAugConfig, eval_transform, train_transform)


def _host(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only when the caller did not say: keeps the data layer usable without devices

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    ShardOptions(shard_index=process_index, shard_count=process_count)  # validates the pair
    return int(process_index), int(process_count)


def _per_host_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
    return global_batch_size // process_count


def shard_bounds(num_examples: int, process_index: int, process_count: int,
                 drop_remainder: bool) -> tuple[int, int]:
    """[start, end) of this host's contiguous shard (contiguous keeps array_record reads local).
    drop_remainder=True: equal shards (training); False: the first hosts take one extra (eval)."""
    per, rem = divmod(num_examples, process_count)
    start = per * process_index + (0 if drop_remainder else min(process_index, rem))
    end = start + per + (0 if drop_remainder or process_index >= rem else 1)
    return start, end


def _ensure_absl_flags_parsed():
    # grain's worker processes read absl flags; outside absl.app.run they are unparsed.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _to_iterator(ds: grain.MapDataset, num_workers: int, num_threads: int, prefetch_batches: int):
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=prefetch_batches))
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it)


class _AttachIndex(grain.transforms.MapWithIndex):
    """(position in the shard, record) -> (record index in the split, record)."""

    def __init__(self, offset: int):
        self.offset = offset

    def map_with_index(self, index, element):
        return self.offset + index, element


class _TrainExample(grain.transforms.RandomMap):
    def __init__(self, image_size, augment, mean, std, image_key, label_key, with_index):
        self.image_size, self.augment, self.mean, self.std = image_size, augment, mean, std
        self.image_key, self.label_key, self.with_index = image_key, label_key, with_index

    def random_map(self, element, rng: np.random.Generator):
        index, record = element
        out = {"image": train_transform(record[self.image_key], rng, self.image_size, self.augment,
                                        self.mean, self.std),
               "label": np.int32(record[self.label_key])}
        if self.with_index:
            out["index"] = np.int64(index)
        return out


class _EvalExample(grain.transforms.Map):
    def __init__(self, image_size, crop_pct, crop_mode, interpolation, mean, std, image_key,
                 label_key, with_index):
        self.args = (image_size, crop_pct, crop_mode, mean, std, interpolation)
        self.image_key, self.label_key, self.with_index = image_key, label_key, with_index

    def map(self, element):
        index, record = element
        size, crop_pct, crop_mode, mean, std, interpolation = self.args
        out = {"image": eval_transform(record[self.image_key], size, crop_pct, crop_mode, mean, std,
                                       interpolation),
               "label": np.int32(record[self.label_key]), "mask": np.bool_(True)}
        if self.with_index:
            out["index"] = np.int64(index)
        return out


class _PadExample(grain.transforms.Map):
    """Filler for the last eval batches: zero image, label 0, mask False (index -1)."""

    def __init__(self, image_size, with_index):
        self.image_size, self.with_index = image_size, with_index

    def map(self, element):
        del element
        out = {"image": np.zeros((self.image_size, self.image_size, 3), np.float32),
               "label": np.int32(0), "mask": np.bool_(False)}
        if self.with_index:
            out["index"] = np.int64(-1)
        return out


def make_train_iterator(name: str, *, global_batch_size: int, image_size: int, data_dir=None,
                        split: str = "train", seed: int = 0,
                        augment: TrainAugConfig = TrainAugConfig(),
                        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                        num_epochs: int | None = None, process_index: int | None = None,
                        process_count: int | None = None, num_workers: int = 0, num_threads: int = 4,
                        prefetch_batches: int = 4, image_key: str = "image", label_key: str = "label",
                        with_index: bool = False):
    """Training batches of the TFDS dataset `name` (prepared in `data_dir`; 'mv_digits' is built on
    first use), shuffled per epoch, repeated `num_epochs` times (None: forever), augmented with
    `augment` (official recipe by default; `TrainAugConfig.none()` for none), incomplete last batch
    dropped.

    Reproducible: the shuffle order and every example's augmentation are functions of (seed, host,
    position in the stream). The returned grain iterator has `get_state()` / `set_state(state)`
    (a small dict to store in the checkpoint); a fresh iterator built with the same arguments and
    given that state continues with the same batches. process_index / process_count default to
    jax.process_index() / jax.process_count(). num_workers > 0 runs the transforms in that many
    processes.
    """
    process_index, process_count = _host(process_index, process_count)
    batch = _per_host_batch(global_batch_size, process_count)
    source = open_source(name, split, data_dir, image_key)
    start, end = shard_bounds(len(source), process_index, process_count, drop_remainder=True)
    if end - start < batch:
        raise ValueError(f"{name}/{split}: a host shard of {end - start} examples is smaller than the "
                         f"per-host batch {batch}")
    # Fold the host into the seed: hosts must not draw the same augmentation at the same position.
    host_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
    ds = grain.MapDataset.source(source)[start:end].map_with_index(_AttachIndex(start))
    ds = ds.seed(host_seed).shuffle().repeat(num_epochs)
    ds = ds.random_map(_TrainExample(image_size, augment, tuple(mean), tuple(std), image_key,
                                     label_key, with_index))
    ds = ds.batch(batch, drop_remainder=True)
    return _to_iterator(ds, num_workers, num_threads, prefetch_batches)


def eval_num_batches(num_examples: int, global_batch_size: int, process_count: int) -> int:
    """Batches every host yields for one eval pass (the same on all hosts, so collectives match)."""
    batch = _per_host_batch(global_batch_size, process_count)
    largest_shard = -(-num_examples // process_count)
    return max(1, -(-largest_shard // batch))


def make_eval_iterator(name: str, *, global_batch_size: int, image_size: int,
                       crop_pct: float = 0.875, crop_mode: str = "center",
                       interpolation: str = "bicubic", data_dir=None, split: str | None = None,
                       mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                       process_index: int | None = None, process_count: int | None = None,
                       num_workers: int = 0, num_threads: int = 4, prefetch_batches: int = 4,
                       image_key: str = "image", label_key: str = "label", with_index: bool = False):
    """One deterministic pass over `split` (None: 'validation', else 'test') with the timm eval
    transform. Nothing is dropped: each host's last batches are padded (mask False), and every host
    yields `eval_num_batches(...)` batches, so summing metrics over mask counts each example once.
    """
    process_index, process_count = _host(process_index, process_count)
    batch = _per_host_batch(global_batch_size, process_count)
    split = split or default_eval_split(name, data_dir)
    source = open_source(name, split, data_dir, image_key)
    start, end = shard_bounds(len(source), process_index, process_count, drop_remainder=False)
    total = eval_num_batches(len(source), global_batch_size, process_count) * batch
    parts = []
    if end > start:
        parts.append(grain.MapDataset.source(source)[start:end].map_with_index(_AttachIndex(start))
                     .map(_EvalExample(image_size, crop_pct, crop_mode, interpolation, tuple(mean),
                                       tuple(std), image_key, label_key, with_index)))
    if total > end - start:
        parts.append(grain.MapDataset.range(total - (end - start))
                     .map(_PadExample(image_size, with_index)))
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)
    return _to_iterator(ds.batch(batch, drop_remainder=False), num_workers, num_threads,
                        prefetch_batches)
