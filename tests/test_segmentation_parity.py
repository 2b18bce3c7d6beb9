"""UperNet parity against the official mmseg segmentor (tests/official_seg.py): float32 JAX at the
highest matmul precision vs float64 PyTorch, random weights and norm statistics, every official
window configuration, sizes whose windows need padding (512², 480x640) and several windows (1056²).

Relative error of a tensor: max|jax - ref| / max|ref|. `python tests/test_segmentation_parity.py`
prints the whole table (slow: every variant and size).
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import official_seg
import pytest
from flax import nnx

from mambavision_jax.convert.api import load_state_dict
from mambavision_jax.segmentation import create_segmenter

MAX_REL = 1e-4
MIN_ARGMAX = 0.999


@functools.cache
def _official(variant: str):
    return official_seg.build_official_segmentor(variant, seed=0)


def _official_sd(variant: str) -> dict[str, np.ndarray]:
    sd = official_seg.state_dict_numpy(_official(variant))
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


@functools.cache
def _jax_model(variant: str):
    model = create_segmenter(variant)
    load_state_dict(model, _official_sd(variant))
    return model


@nnx.jit
def _forward(model, x):
    out = model.forward_heads(x)
    return out.features, out.decode, out.aux, model(x)


def rel_err(a, b) -> tuple[float, float]:
    """(max|a - b| / max|b|, max|a - b|)."""
    d = np.abs(np.asarray(a, np.float64) - b).max()
    return float(d / np.abs(b).max()), float(d)


def compare(variant: str, h: int, w: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """{tensor name: (relative error, max abs error)} and the final logits' argmax agreement."""
    x = np.random.RandomState(seed).randn(1, h, w, 3).astype(np.float32)
    ref = official_seg.official_outputs(_official(variant), x)
    with jax.default_matmul_precision("highest"):
        feats, decode, aux, logits = _forward(_jax_model(variant), jnp.asarray(x))
    assert logits.shape == (1, h, w, 150)
    errs = {f"features[{i}]": rel_err(a, b) for i, (a, b) in enumerate(zip(feats, ref["features"]))}
    errs |= {
        "decode": rel_err(decode, ref["decode"]),
        "aux": rel_err(aux, ref["aux"]),
        "logits": rel_err(logits, ref["logits"]),
    }
    errs["argmax"] = (float((np.asarray(logits).argmax(-1) == ref["logits"].argmax(-1)).mean()), 0.0)
    return errs


def _check(variant, h, w):
    errs = compare(variant, h, w)
    bad = {k: v for k, v in errs.items() if k != "argmax" and v[0] > MAX_REL}
    assert not bad, f"{variant} {h}x{w}: relative error above {MAX_REL}: {bad}"
    assert errs["argmax"][0] >= MIN_ARGMAX, f"{variant} {h}x{w}: argmax agreement {errs['argmax'][0]}"


# tiny's windows (8, 8, 64, 32): at 512² stage 3 (32²) pads to one 64² window, stage 4 (16²) to
# one 32² window; at 480x640 (30x40, 15x20) the PPM's adaptive pools have overlapping bins.
@pytest.mark.parametrize("h, w", [(512, 512), (480, 640)])
def test_tiny_matches_official(h, w):
    _check("tiny", h, w)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["small", "base"])
@pytest.mark.parametrize("h, w", [(512, 512), (480, 640)])
def test_matches_official(variant, h, w):
    _check(variant, h, w)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tiny", "small", "base"])
def test_several_windows_match_official(variant):
    # 1056²: stage 3 is 66² (tiny/base: 2x2 windows of 64, the last padded by 62; small: one of
    # 160), stage 4 33² (2x2 windows of 32 / one of 56).
    _check(variant, 1056, 1056)


if __name__ == "__main__":  # the parity table
    jax.config.update("jax_default_matmul_precision", "highest")
    sizes = [(512, 512), (480, 640), (1056, 1056)]
    variants = sys.argv[1:] or ["tiny", "small", "base"]
    for variant in variants:
        for h, w in sizes:
            errs = compare(variant, h, w)
            cells = " | ".join(f"{k} {v[0]:.1e} ({v[1]:.1e})" for k, v in errs.items() if k != "argmax")
            print(f"| {variant} | {h}x{w} | {cells} | argmax {errs['argmax'][0] * 100:.3f}% |", flush=True)
        _official.cache_clear()
        _jax_model.cache_clear()
