"""The device side of the input pipeline: uint8 batches -> normalised (and randomly erased) float
images inside the jitted steps, and a device prefetcher that keeps the next batches in flight.

This is what timm's `PrefetchLoader` does on the GPU with `use_prefetcher=True`: the host ships uint8
images (4x fewer bytes than float32, and no per-pixel float work on the CPU); normalisation and the
random-erasing fill happen on the device. The erasing boxes are drawn on the host with timm's
algorithm (`transforms.erasing_boxes`, per example, so resuming a data stream reproduces them); the
fill noise is drawn here from a key of (seed, step, example), so a resumed run erases identically.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp

from mambavision_jax.data.transforms import ERASE_MODES

# Folded into the (seed, step) key for the erasing noise: another stream than mixup's key.
ERASE_STREAM = 0x45524153


def normalize_on_device(images, mean, std, dtype=jnp.float32):
    """uint8 (..., C) -> (x / 255 - mean) / std, computed in float32 as ToTensor + Normalize do
    (the host path `transforms.normalize`), then cast to `dtype`. Float input is returned as is
    (already normalised)."""
    if images.dtype != jnp.uint8:
        return images
    x = images.astype(jnp.float32) / jnp.float32(255.0)
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


def erase_on_device(key, images, boxes, mode: str = "pixel"):
    """timm RandomErasing's fill on a normalised batch.

    images: float (B, H, W, C); boxes: int (B, K, 4) rows of (top, left, h, w) from
    `transforms.erasing_boxes` (h = 0: no box); filled in order, as timm does, with N(0, 1) noise
    per pixel ('pixel'), per box colour ('rand') or zeros ('const'). Example i, box k draws from
    fold_in(fold_in(key, i), k): the fill does not depend on the batch's sharding or size.
    """
    if mode not in ERASE_MODES:
        raise ValueError(f"random erasing mode must be 'pixel', 'rand' or 'const', got {mode!r}")
    b, h, w, c = images.shape
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    example_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
    for k in range(boxes.shape[1]):
        top, left, bh, bw = (boxes[:, k, j][:, None, None] for j in range(4))
        inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
        box_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(example_keys, k)
        if mode == "pixel":
            fill = jax.vmap(lambda kk: jax.random.normal(kk, (h, w, c), jnp.float32))(box_keys)
        elif mode == "rand":
            fill = jax.vmap(lambda kk: jax.random.normal(kk, (1, 1, c), jnp.float32))(box_keys)
        else:
            fill = jnp.zeros((b, 1, 1, c), jnp.float32)
        images = jnp.where(inside[..., None], fill.astype(images.dtype), images)
    return images


def erase_key(seed: int, step):
    """The erasing noise key of one training step (a pure function of the seed and the step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), ERASE_STREAM)


class DevicePrefetch:
    """Iterate `put(batch)` over a host iterator with `size` batches already put on the devices.

    `put` (e.g. `train.sharding.global_batch`) starts asynchronous transfers, so the next batches
    move to the devices while the current step runs; nothing here waits on the devices.
    `get_state()` is the host iterator's state after the last batch this object yielded (not after
    the ones in flight), so a checkpoint resumes exactly where the consumer stopped; `set_state`
    drops the batches in flight. Iterators without get_state / set_state work too.
    """

    def __init__(self, iterator: Iterator, put: Callable, size: int = 2):
        if size < 1:
            raise ValueError(f"device prefetch size must be >= 1, got {size}")
        self._it, self._put, self._size = iterator, put, size
        self._buffer: collections.deque = collections.deque()
        self._state = self._host_state()

    def _host_state(self):
        return self._it.get_state() if hasattr(self._it, "get_state") else None

    def _fill(self):
        while len(self._buffer) < self._size:
            try:
                batch = next(self._it)
            except StopIteration:
                return
            self._buffer.append((self._put(batch), self._host_state()))

    def __iter__(self):
        return self

    def __next__(self):
        self._fill()
        if not self._buffer:
            raise StopIteration
        batch, self._state = self._buffer.popleft()
        self._fill()  # start the next transfer before the caller runs its step
        return batch

    def get_state(self):
        return self._state

    def set_state(self, state) -> None:
        self._buffer.clear()
        self._it.set_state(state)
        self._state = state

    def close(self) -> None:
        self._buffer.clear()
        if hasattr(self._it, "close"):
            self._it.close()
