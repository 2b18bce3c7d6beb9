"""Running a model for inference: `Runner(model)` jits it once over this process's devices (the batch
split over them on the training mesh's axes, `mambavision_jax.mesh`; the weights replicated) and gives
`logits`, `topk_probs` and `metrics`. `evaluate`, `predict` and `export` are built on it."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mambavision_jax.errors import UserError
from mambavision_jax.mesh import BATCH_AXES, batch_sharding, local_mesh, replicated
from mambavision_jax.metrics import classification_metrics
from mambavision_jax.ops import ScanSharding

__all__ = ["NonFiniteOutputError", "Runner", "local_mesh"]


class NonFiniteOutputError(UserError):
    """The model's outputs are NaN or infinite: its weights cannot be right."""


def _eval_copy(model, mesh):
    """A copy in eval mode that shares the arrays, its Pallas scans run per device over `mesh`'s
    batch axes: the caller's model keeps its mode and its own scan sharding."""
    from mambavision_jax.models.mamba_vision import MambaVision

    graphdef, state = nnx.split(model)
    m = nnx.merge(graphdef, state)
    m.eval()
    if isinstance(m, MambaVision):  # another module (e.g. a test's stand-in) runs as given
        m.set_scan_sharding(ScanSharding(mesh, BATCH_AXES))
    return m


_PROGRAMS: list = []  # [(graphdef, k, mesh, programs)], most recent last


def _programs(graphdef, k: int, mesh):
    """The jitted programs of one architecture, shared by every Runner of it (a second Runner of
    the same model, e.g. after reloading weights, reuses the compiled code). Looked up with ==:
    equal NNX graphdefs do not always hash equal."""
    for i, (g, kk, mm, progs) in enumerate(_PROGRAMS):
        if kk == k and mm == mesh and g == graphdef:
            _PROGRAMS.append(_PROGRAMS.pop(i))
            return progs
    progs = _make_programs(graphdef, k, mesh)
    _PROGRAMS.append((graphdef, k, mesh, progs))
    del _PROGRAMS[:-8]
    return progs


def _make_programs(graphdef, k: int, mesh):
    """(logits, metrics, top-k probabilities): jitted, the weights replicated, the batch sharded."""
    rep, bat = replicated(mesh), batch_sharding(mesh)

    def logits_fn(state, images):
        return nnx.merge(graphdef, state)(images).astype(jnp.float32)

    def metrics_fn(state, images, labels, mask):
        return classification_metrics(logits_fn(state, images), labels, mask)

    def probs_fn(state, images):
        probs = jax.nn.softmax(logits_fn(state, images), axis=-1)
        return jax.lax.top_k(probs, k)

    return (
        jax.jit(logits_fn, in_shardings=(rep, bat), out_shardings=bat),
        jax.jit(metrics_fn, in_shardings=(rep, bat, bat, bat), out_shardings=rep),
        jax.jit(probs_fn, in_shardings=(rep, bat), out_shardings=bat),
    )


class Runner:
    """The model jitted once over the local devices: the batch is split over the devices, the
    weights are replicated. Batches are padded to a multiple of the device count (and to the
    largest batch seen, so the last, smaller batch reuses the compiled program).

    `logits(images)`, `topk_probs(images)` and `metrics(images, labels, mask)` return numpy /
    floats; `dispatch_metrics(batch)` returns the device arrays without waiting for them (a caller
    can queue the next batch before reading the last one back)."""

    def __init__(self, model, mesh=None, topk: int = 5):
        self.mesh = mesh if mesh is not None else local_mesh()
        self.n_dev = self.mesh.devices.size
        graphdef, state = nnx.split(_eval_copy(model, self.mesh))
        self.batch_sharding = batch_sharding(self.mesh)
        self.state = jax.device_put(state, replicated(self.mesh))
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.topk = max(1, min(topk, self.num_classes or topk))  # top-num_classes for fewer classes
        self._logits, self._metrics, self._probs = _programs(graphdef, self.topk, self.mesh)
        self._padded = 0

    def _pad_to(self, n: int) -> int:
        size = max(self._padded, -(-n // self.n_dev) * self.n_dev)
        self._padded = size
        return size

    def _put(self, x, size: int) -> jax.Array:
        x = np.asarray(x)
        if x.shape[0] < size:
            x = np.concatenate([x, np.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)])
        return jax.device_put(x, self.batch_sharding)

    def dispatch_metrics(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
        """`classification_metrics` sums of a batch {"image", "label"[, "mask"]}, not waited for."""
        images = np.asarray(batch["image"])
        n = images.shape[0]
        size = self._pad_to(n)
        mask = np.asarray(batch["mask"], bool) if "mask" in batch else np.ones((n,), bool)
        return self._metrics(
            self.state,
            self._put(images, size),
            self._put(np.asarray(batch["label"], np.int32), size),
            self._put(mask, size),
        )

    def metrics(self, images, labels, mask=None) -> dict[str, float]:
        batch = {"image": images, "label": labels}
        if mask is not None:
            batch["mask"] = mask
        return {k: float(v) for k, v in self.dispatch_metrics(batch).items()}

    def logits(self, images) -> np.ndarray:
        n = len(images)
        return np.asarray(self._logits(self.state, self._put(images, self._pad_to(n))))[:n]

    def topk_probs(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, class indices), each (n, topk), best first."""
        n = len(images)
        p, i = self._probs(self.state, self._put(images, self._pad_to(n)))
        return np.asarray(p)[:n], np.asarray(i)[:n]
