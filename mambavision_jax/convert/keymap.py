"""The table between official PyTorch keys and this package's NNX state paths.

The module trees are the same, so a key is the path joined with dots; only leaf names and array
layouts differ:

| NNX leaf | official leaf | layout |
|---|---|---|
| kernel (4-D, HWIO) | weight (OIHW) | transpose (2, 3, 1, 0) |
| kernel (3-D, depthwise conv1d, (k, 1, C)) | weight ((C, 1, k)) | transpose (2, 1, 0) |
| kernel (2-D, Linear (in, out)) | weight ((out, in)) | transpose |
| scale (norms) | weight | copy |
| mean / var (BatchNorm) | running_mean / running_var | copy |
| bias, A_log, D, gamma, gamma_1, gamma_2 | same | copy |
"""

from __future__ import annotations

import numpy as np

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def path_to_torch_key(path: tuple) -> str:
    *mods, leaf = path
    return ".".join([str(m) for m in mods] + [_LEAF_TO_TORCH.get(str(leaf), str(leaf))])


def _perm(path: tuple, ndim: int):
    if str(path[-1]) != "kernel":
        return None
    return {4: (2, 3, 1, 0), 3: (2, 1, 0), 2: (1, 0)}.get(ndim)


def torch_to_jax_array(path: tuple, value: np.ndarray) -> np.ndarray:
    perm = _perm(path, value.ndim)
    return np.ascontiguousarray(value.transpose(perm)) if perm else np.asarray(value)


def jax_to_torch_array(path: tuple, value: np.ndarray) -> np.ndarray:
    perm = _perm(path, value.ndim)
    # Every permutation in the table is its own inverse except the 4-D one.
    if perm == (2, 3, 1, 0):
        perm = (3, 2, 0, 1)
    return np.ascontiguousarray(value.transpose(perm)) if perm else np.asarray(value)
