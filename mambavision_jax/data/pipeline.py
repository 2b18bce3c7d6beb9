"""grain input pipelines over TFDS array_record sources: training (infinite, augmented, resumable)
and evaluation (one deterministic pass, padded, masked).

Both yield per-host batches of numpy arrays: {"image": float32 (B, H, W, 3) normalised, "label":
int32 (B,)} (+ "mask": bool (B,) for eval; + "index": int64 source record index with
with_index=True), B = global_batch_size / process_count. With normalize=False (the training loop)
images are uint8 (B, H, W, 3), 4x fewer bytes, and training batches carry "erase": int32 (B, K, 4),
the random-erasing boxes; `device_ops` normalises and erases on the devices, as timm's prefetcher. Hosts read disjoint contiguous shards.
Batches are formed before the iterator (`MapDataset.batch`), so the batch stream does not depend on
the number of threads or worker processes; only the saved iterator state does (resume with the same
num_workers).
"""

from __future__ import annotations

import os

import grain
import numpy as np
from grain.sharding import ShardOptions

from mambavision_jax.data.sources import default_eval_split, open_source
from mambavision_jax.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    TrainAugConfig,
    erasing_boxes,
    eval_crop_uint8,
    eval_transform,
    train_augment,
    train_transform,
)
from mambavision_jax.errors import UserError


def _host(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only when the caller did not say: keeps the data layer usable without devices

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    ShardOptions(shard_index=process_index, shard_count=process_count)  # validates the pair
    return int(process_index), int(process_count)


def _per_host_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise UserError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
    return global_batch_size // process_count


def shard_bounds(
    num_examples: int, process_index: int, process_count: int, drop_remainder: bool
) -> tuple[int, int]:
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


def default_num_workers(cpu_count: int | None = None) -> int:
    """Worker processes for `num_workers=-1`: every core but one (left to the training loop and
    the device transfers); none on a host of <= 2 cores, where process start-up and the batch IPC
    cost more than a second core of augmentation gains."""
    cpu_count = cpu_count or os.cpu_count() or 1
    return 0 if cpu_count <= 2 else cpu_count - 1


def default_num_threads(num_workers: int, cpu_count: int | None = None) -> int:
    """Threads (per worker process, or in this process) for `num_threads=-1`. PIL's decoders and
    resamplers release the GIL, so threads overlap: 2 per worker keeps each core busy while its
    other thread waits on a read; with no workers, one per core (at most 16)."""
    cpu_count = cpu_count or os.cpu_count() or 1
    return 2 if num_workers > 0 else max(1, min(cpu_count, 16))


def resolve_workers(num_workers: int, num_threads: int) -> tuple[int, int]:
    """(-1 = auto) -> the worker-process and thread counts used."""
    if num_workers < -1 or num_threads < -1 or num_threads == 0:
        raise UserError(
            f"num_workers must be >= 0 or -1 (auto), num_threads >= 1 or -1 (auto); got "
            f"{num_workers}, {num_threads}"
        )
    workers = default_num_workers() if num_workers == -1 else num_workers
    threads = default_num_threads(workers) if num_threads == -1 else num_threads
    return workers, threads


def _to_iterator(ds: grain.MapDataset, num_workers: int, num_threads: int, prefetch_batches: int):
    num_workers, num_threads = resolve_workers(num_workers, num_threads)
    if num_workers > 0:
        # Each worker holds its read-ahead plus one finished batch: with many workers, read ahead
        # only what its threads work on (memory: workers x (threads + 1) batches, not x 5).
        prefetch_batches = min(prefetch_batches, num_threads)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches))
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
    def __init__(self, image_size, augment, mean, std, image_key, label_key, with_index, normalize):
        self.image_size, self.augment, self.mean, self.std = image_size, augment, mean, std
        self.image_key, self.label_key, self.with_index = image_key, label_key, with_index
        self.normalize = normalize

    def random_map(self, element, rng: np.random.Generator):
        index, record = element
        image, aug = record[self.image_key], self.augment
        if self.normalize:
            out = {"image": train_transform(image, rng, self.image_size, aug, self.mean, self.std)}
        else:
            # The same draws in the same order as train_transform, minus the erasing noise (drawn
            # on the device), so the crops, flips, ops and boxes equal the float path's.
            out = {"image": train_augment(image, rng, self.image_size, aug, self.mean)}
            if aug.re_prob > 0:
                out["erase"] = erasing_boxes(
                    rng, self.image_size, self.image_size, aug.re_prob, max_count=aug.re_count
                )
        out["label"] = np.int32(record[self.label_key])
        if self.with_index:
            out["index"] = np.int64(index)
        return out


class _EvalExample(grain.transforms.Map):
    def __init__(
        self,
        image_size,
        crop_pct,
        crop_mode,
        interpolation,
        mean,
        std,
        image_key,
        label_key,
        with_index,
        normalize,
    ):
        self.args = (image_size, crop_pct, crop_mode, mean, std, interpolation)
        self.image_key, self.label_key, self.with_index = image_key, label_key, with_index
        self.normalize = normalize

    def map(self, element):
        index, record = element
        size, crop_pct, crop_mode, mean, std, interpolation = self.args
        image = record[self.image_key]
        out = {
            "image": eval_transform(image, size, crop_pct, crop_mode, mean, std, interpolation)
            if self.normalize
            else eval_crop_uint8(image, size, crop_pct, crop_mode, interpolation),
            "label": np.int32(record[self.label_key]),
            "mask": np.bool_(True),
        }
        if self.with_index:
            out["index"] = np.int64(index)
        return out


class _PadExample(grain.transforms.Map):
    """Filler for the last eval batches: zero image, label 0, mask False (index -1)."""

    def __init__(self, image_size, with_index, normalize):
        self.image_size, self.with_index = image_size, with_index
        self.dtype = np.float32 if normalize else np.uint8

    def map(self, element):
        del element
        out = {
            "image": np.zeros((self.image_size, self.image_size, 3), self.dtype),
            "label": np.int32(0),
            "mask": np.bool_(False),
        }
        if self.with_index:
            out["index"] = np.int64(-1)
        return out


def make_train_iterator(
    name: str,
    *,
    global_batch_size: int,
    image_size: int,
    data_dir=None,
    split: str = "train",
    seed: int = 0,
    augment: TrainAugConfig = TrainAugConfig(),
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    num_threads: int = 4,
    prefetch_batches: int = 4,
    image_key: str = "image",
    label_key: str = "label",
    with_index: bool = False,
    normalize: bool = True,
):
    """Training batches of the TFDS dataset `name` (prepared in `data_dir`; 'mv_digits' is built on
    first use), shuffled per epoch, repeated `num_epochs` times (None: forever), augmented with
    `augment` (official recipe by default; `TrainAugConfig.none()` for none), incomplete last batch
    dropped.

    Reproducible: the shuffle order and every example's augmentation are functions of (seed, host,
    position in the stream). The returned grain iterator has `get_state()` / `set_state(state)`
    (a small dict to store in the checkpoint); a fresh iterator built with the same arguments and
    given that state continues with the same batches. process_index / process_count default to
    jax.process_index() / jax.process_count(). num_workers > 0 runs the transforms in that many
    processes; num_workers / num_threads = -1 pick them from the host's core count
    (`resolve_workers`). normalize=False: uint8 images + "erase" boxes (see the module doc).
    """
    process_index, process_count = _host(process_index, process_count)
    batch = _per_host_batch(global_batch_size, process_count)
    source = open_source(name, split, data_dir, image_key)
    start, end = shard_bounds(len(source), process_index, process_count, drop_remainder=True)
    if end - start < batch:
        raise UserError(
            f"{name}/{split}: a host shard of {end - start} examples is smaller than the "
            f"per-host batch {batch}"
        )
    # Fold the host into the seed: hosts must not draw the same augmentation at the same position.
    host_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
    ds = grain.MapDataset.source(source)[start:end].map_with_index(_AttachIndex(start))
    ds = ds.seed(host_seed).shuffle().repeat(num_epochs)
    ds = ds.random_map(
        _TrainExample(
            image_size, augment, tuple(mean), tuple(std), image_key, label_key, with_index, normalize
        )
    )
    ds = ds.batch(batch, drop_remainder=True)
    return _to_iterator(ds, num_workers, num_threads, prefetch_batches)


def eval_num_batches(num_examples: int, global_batch_size: int, process_count: int) -> int:
    """Batches every host yields for one eval pass (the same on all hosts, so collectives match)."""
    batch = _per_host_batch(global_batch_size, process_count)
    largest_shard = -(-num_examples // process_count)
    return max(1, -(-largest_shard // batch))


def make_eval_iterator(
    name: str,
    *,
    global_batch_size: int,
    image_size: int,
    crop_pct: float = 0.875,
    crop_mode: str = "center",
    interpolation: str = "bicubic",
    data_dir=None,
    split: str | None = None,
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    num_threads: int = 4,
    prefetch_batches: int = 4,
    image_key: str = "image",
    label_key: str = "label",
    with_index: bool = False,
    normalize: bool = True,
):
    """One deterministic pass over `split` (None: 'validation', else 'test') with the timm eval
    transform. Nothing is dropped: each host's last batches are padded (mask False), and every host
    yields `eval_num_batches(...)` batches, so summing metrics over mask counts each example once.
    normalize=False: uint8 images (normalise with `device_ops.normalize_on_device`).
    """
    process_index, process_count = _host(process_index, process_count)
    batch = _per_host_batch(global_batch_size, process_count)
    split = split or default_eval_split(name, data_dir)
    source = open_source(name, split, data_dir, image_key)
    start, end = shard_bounds(len(source), process_index, process_count, drop_remainder=False)
    total = eval_num_batches(len(source), global_batch_size, process_count) * batch
    parts = []
    if end > start:
        parts.append(
            grain.MapDataset.source(source)[start:end]
            .map_with_index(_AttachIndex(start))
            .map(
                _EvalExample(
                    image_size,
                    crop_pct,
                    crop_mode,
                    interpolation,
                    tuple(mean),
                    tuple(std),
                    image_key,
                    label_key,
                    with_index,
                    normalize,
                )
            )
        )
    if total > end - start:
        parts.append(
            grain.MapDataset.range(total - (end - start)).map(_PadExample(image_size, with_index, normalize))
        )
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)
    return _to_iterator(ds.batch(batch, drop_remainder=False), num_workers, num_threads, prefetch_batches)
