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


# tiny's windows (8, 8, 64, 32): at 256² stage 3 (16²) pads to one 64² window of 4,096 tokens,
# stage 4 (8²) to one 32² window; at 240x320 stage 4 is 8x10, where the PPM's adaptive pools of 3
# and 6 have overlapping bins. (The heads' cost grows with the area: 512² runs in the slow set.)
@pytest.mark.parametrize("h, w", [(256, 256), (240, 320)])
def test_tiny_matches_official(h, w):
    _check("tiny", h, w)


# 480x640: stages 3 and 4 are 30x40 and 15x20 (overlapping PPM bins at 15x20).
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tiny", "small", "base"])
@pytest.mark.parametrize("h, w", [(512, 512), (480, 640)])
def test_matches_official(variant, h, w):
    _check(variant, h, w)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tiny", "small", "base"])
def test_several_windows_match_official(variant):
    # 1056²: stage 3 is 66² (tiny/base: 2x2 windows of 64, the last padded by 62; small: one of
    # 160), stage 4 33² (2x2 windows of 32 / one of 56).
    _check(variant, 1056, 1056)


def test_round_trip_loads_strictly_into_the_official_segmentor(tmp_path):
    """official state_dict -> mmseg file -> JAX -> mmseg file -> a fresh official segmentor with
    strict=True: every tensor equal, and equal logits."""
    import torch

    from mambavision_jax.segmentation import checkpoint

    ref = _official("tiny")
    src = tmp_path / "official.pth"
    torch.save(
        {"meta": {"cfg": official_seg.official_config("tiny").pretty_text}, "state_dict": ref.state_dict()},
        src,
    )
    model = checkpoint.load_checkpoint(src)
    assert model.config.backbone.window_size == (8, 8, 64, 32)
    out = checkpoint.save_mmseg_checkpoint(model, tmp_path / "back.pth")
    fresh = official_seg.build_official_segmentor("tiny", seed=1)
    saved = torch.load(out, weights_only=True)
    assert set(saved["state_dict"]) == set(ref.state_dict())
    fresh.load_state_dict(saved["state_dict"], strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(fresh.state_dict()[k].to(v.dtype), v) or k.endswith("num_batches_tracked"), k
    x = np.random.RandomState(3).randn(1, 64, 96, 3).astype(np.float32)
    a = official_seg.official_outputs(fresh, x, double=False)["logits"]
    b = official_seg.official_outputs(ref.float(), x, double=False)["logits"]
    np.testing.assert_array_equal(a, b)
    # and the file written here reads back with its whole config
    assert checkpoint.load_checkpoint(out).config == model.config


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
