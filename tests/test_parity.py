"""Logits of the converted model against the official PyTorch MambaVision (mambavision==1.2.0).

Random weights, BatchNorm statistics, layer scales, A_log and D; batch > 1; non-square sizes that
are not multiples of the windows; float32 at the highest matmul precision.
"""

import pytest

import mambavision_jax as mvj

from helpers import images, jax_logits, official_logits, rel_err, save_official_hf, save_official_pth
from official import build_official

TOL = 1e-5
REDUCED = [1, 1, 3, 2]

CASES = [
    # name, architecture overrides (reduced depth keeps the fast suite fast), input (B, H, W)
    pytest.param("mamba_vision_T", {}, (2, 97, 130), id="T"),
    pytest.param("mamba_vision_T2", {}, (2, 75, 64), id="T2-odd-depth-split"),
    pytest.param("mamba_vision_B", {"depths": REDUCED}, (2, 70, 101), id="B-layer-scale"),
    pytest.param("mamba_vision_L", {"depths": [1, 1, 2, 1]}, (2, 65, 96), id="L-head-dim-49"),
    pytest.param(
        "mamba_vision_L2_512_21k",
        {"depths": [1, 1, 3, 1], "dim": 64, "in_dim": 32},
        (2, 200, 150),
        id="L2-512-windows-32-16",
    ),
    pytest.param("mamba_vision_B", {}, (2, 111, 97), id="B-full", marks=pytest.mark.slow),
    pytest.param("mamba_vision_L", {}, (2, 97, 111), id="L-full", marks=pytest.mark.slow),
    pytest.param("mamba_vision_L2_512_21k", {}, (1, 257, 190), id="L2-512-full", marks=pytest.mark.slow),
    pytest.param("mamba_vision_L3_256_21k", {}, (1, 129, 160), id="L3-256-full", marks=pytest.mark.slow),
]


def _hf_config(name, overrides):
    a = dict(mvj.models.model_args(name), **overrides)
    return {
        "architectures": ["MambaVisionModelForImageClassification"],
        "model_type": "mambavision",
        "dim": a["dim"],
        "in_dim": a["in_dim"],
        "depths": list(a["depths"]),
        "num_heads": list(a["num_heads"]),
        "window_size": list(a["window_size"]),
        "mlp_ratio": 4,
        "drop_path_rate": a["drop_path_rate"],
        "layer_scale": a.get("layer_scale"),
        "layer_scale_conv": None,
    }


@pytest.mark.parametrize("name, overrides, shape", CASES)
def test_logits_match_official(name, overrides, shape, tmp_path):
    ref_model = build_official(name, seed=1, **overrides)
    x = images(*shape)
    ref = official_logits(ref_model, x)

    # Path 1: an official training checkpoint (.pth.tar); the name comes from its args.
    pth = tmp_path / "ckpt.pth.tar"
    save_official_pth(ref_model, pth, model_name=name)
    model = mvj.load_torch_checkpoint(pth, **overrides)
    err_pth = rel_err(jax_logits(model, x), ref)

    # Path 2: a Hugging Face folder (config.json + model.safetensors); the architecture comes
    # from config.json alone.
    save_official_hf(ref_model, tmp_path / "hf", _hf_config(name, overrides))
    model = mvj.load_torch_checkpoint(tmp_path / "hf")
    err_hf = rel_err(jax_logits(model, x), ref)

    print(f"{name} {overrides} {shape}: rel err pth {err_pth:.2e}, safetensors {err_hf:.2e}")
    assert err_pth <= TOL, err_pth
    assert err_hf <= TOL, err_hf
