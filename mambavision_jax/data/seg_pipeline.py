"""grain pipelines over the segmentation data sets (`seg_datasets`): training batches (infinite,
augmented with mmseg's train pipeline, resumable) and the evaluation images one by one (each at
its own size, as mmseg's whole-mode test).

Training batches per host: {"image": uint8 (B, S, S, 3), "label": uint8 (B, S, S) (255 = ignore,
also in the padding), "valid": int32 (B, 2) the unpadded crop's (h, w)}, S = the crop size; the
images are normalised on the devices, where the padding is set to 0 after normalisation (mmseg's
SegDataPreProcessor pads the normalised image with 0). Each example's augmentation draws from a
`numpy.random.RandomState` seeded from grain's per-example generator, in mmseg's order
(`seg_transforms`), so a run is a function of (seed, host, position) and resumes exactly.
"""

from __future__ import annotations

import grain
import numpy as np

from mambavision_jax.data.pipeline import _AttachIndex, _host, _per_host_batch, _to_iterator, shard_bounds
from mambavision_jax.data.seg_datasets import open_seg_source
from mambavision_jax.data.seg_transforms import (
    SegAugConfig,
    decode_image,
    eval_resize,
    load_label,
    train_augment_seg,
)
from mambavision_jax.errors import UserError


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class _SegTrainExample(grain.transforms.RandomMap):
    def __init__(self, augment: SegAugConfig, reduce_zero_label: bool):
        self.augment, self.reduce_zero_label = augment, reduce_zero_label

    def random_map(self, element, rng: np.random.Generator):
        _, record = element
        rs = np.random.RandomState(int(rng.integers(2**32)))  # mmseg draws from numpy's legacy API
        image = decode_image(record["image"])
        label = load_label(record["segmentation"], self.reduce_zero_label)
        if image.shape[:2] != label.shape:
            raise UserError(
                f"{_text(record.get('file_name', '')) or 'an example'}: image {image.shape[:2]} and "
                f"label map {label.shape} differ in size"
            )
        return train_augment_seg(image, label, rs, self.augment)


def make_seg_train_iterator(
    name: str,
    *,
    global_batch_size: int,
    augment: SegAugConfig,
    reduce_zero_label: bool,
    data_dir=None,
    split: str = "train",
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    num_threads: int = 4,
    prefetch_batches: int = 4,
):
    """Training batches of the segmentation data set `name` (see the module doc), shuffled per
    epoch, forever, incomplete last batch dropped; `get_state()` / `set_state()` as
    `pipeline.make_train_iterator`."""
    process_index, process_count = _host(process_index, process_count)
    batch = _per_host_batch(global_batch_size, process_count)
    source = open_seg_source(name, split, data_dir)
    start, end = shard_bounds(len(source), process_index, process_count, drop_remainder=True)
    if end - start < batch:
        raise UserError(
            f"{name}/{split}: a host shard of {end - start} examples is smaller than the per-host batch {batch}"
        )
    host_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
    ds = grain.MapDataset.source(source)[start:end].map_with_index(_AttachIndex(start))
    ds = ds.seed(host_seed).shuffle().repeat(None)
    ds = ds.random_map(_SegTrainExample(augment, reduce_zero_label))
    ds = ds.batch(batch, drop_remainder=True)
    return _to_iterator(ds, num_workers, num_threads, prefetch_batches)


class _SegEvalExample(grain.transforms.Map):
    def __init__(self, test_scale, reduce_zero_label):
        self.test_scale, self.reduce_zero_label = tuple(test_scale), reduce_zero_label

    def map(self, element):
        index, record = element
        image = decode_image(record["image"])
        label = load_label(record["segmentation"], self.reduce_zero_label)
        return {
            "image": eval_resize(image, self.test_scale),
            "label": label,
            "index": np.int64(index),
            "file_name": _text(record.get("file_name", "")),
        }


def seg_eval_examples(
    source, *, test_scale, reduce_zero_label: bool, max_examples: int = 0, num_threads: int = 4
):
    """Every record of `source` (random access: {"image": bytes, "segmentation": bytes[,
    "file_name"]}) in order, one at a time: {"image": uint8 (h', w', 3) resized to fit
    `test_scale` (mmseg's test Resize), "label": uint8 (h, w) at the original size, "index",
    "file_name"}. max_examples > 0: only the first ones."""
    n = len(source) if max_examples <= 0 else min(max_examples, len(source))
    ds = grain.MapDataset.source(source)[:n].map_with_index(_AttachIndex(0))
    ds = ds.map(_SegEvalExample(test_scale, reduce_zero_label))
    return iter(
        ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads))
    )


def make_seg_eval_iterator(
    name: str,
    *,
    test_scale,
    reduce_zero_label: bool,
    data_dir=None,
    split: str = "validation",
    max_examples: int = 0,
    num_threads: int = 4,
):
    """`seg_eval_examples` of the segmentation data set `name`'s `split`. Every process reads the
    whole split (the shapes of the jitted calls then agree across processes)."""
    return seg_eval_examples(
        open_seg_source(name, split, data_dir),
        test_scale=test_scale,
        reduce_zero_label=reduce_zero_label,
        max_examples=max_examples,
        num_threads=num_threads,
    )


class FolderSegSource:
    """(image, label map) file pairs as a random-access source of records, read on access."""

    def __init__(self, pairs):
        self.pairs = list(pairs)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        image, label = self.pairs[i]
        with open(image, "rb") as f:
            image_bytes = f.read()
        with open(label, "rb") as f:
            label_bytes = f.read()
        return {"image": image_bytes, "segmentation": label_bytes, "file_name": image}
