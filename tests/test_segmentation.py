"""Segmentation pieces against their PyTorch / mmseg definitions (fast): bilinear resize, adaptive
pooling, blockwise attention, the slide grid, the test-scale resize, configs, checkpoints (mmseg
files, orbax, fake hub) and the `segment` command. The whole model's parity against the official
segmentor: tests/test_segmentation_parity.py."""

from __future__ import annotations

import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_run import assert_user_error, run_cli
from flax import nnx
from PIL import Image
from test_hub import add_repo, hf_home  # noqa: F401 - the fixture

from mambavision_jax import ops
from mambavision_jax.convert import CheckpointError
from mambavision_jax.errors import UserError
from mambavision_jax.ops.attention import _attention_bhnd, attention_blockwise
from mambavision_jax.segmentation import (
    SEG_CONFIGS,
    SegmentationConfig,
    checkpoint,
    checkpoint_io,
    create_segmenter,
    inference,
)
from mambavision_jax.segmentation.layers import AdaptiveAvgPool2d, resize_bilinear

# A reduced UperNet: the heads' and backbone's structure, a fraction of the compute.
SMALL = dict(
    dim=16,
    in_dim=8,
    depths=(1, 1, 2, 2),
    num_heads=(1, 1, 2, 2),
    window_size=(8, 8, 8, 4),
    channels=32,
    aux_channels=16,
    test_scale=(96, 64),
    crop_size=(64, 64),
    stride=(40, 40),
)


@pytest.fixture(scope="module")
def small_model():
    return create_segmenter("tiny", rngs=nnx.Rngs(1), **SMALL)


@pytest.mark.parametrize("src, dst", [((15, 20), (60, 80)), ((7, 9), (32, 32)), ((64, 80), (33, 47))])
def test_resize_bilinear_is_torch_interpolate(src, dst):
    x = np.random.RandomState(0).randn(2, 3, *src)
    ref = F.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=False).numpy()
    got = resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32), dst)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("size, out", [((15, 20), 6), ((8, 10), 3), ((16, 16), 6), ((5, 7), 1)])
def test_adaptive_avg_pool_has_torch_overlapping_bins(size, out):
    x = np.random.RandomState(1).randn(1, 4, *size)
    ref = F.adaptive_avg_pool2d(torch.from_numpy(x), out).numpy()
    got = AdaptiveAvgPool2d(out)(jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, rtol=0, atol=1e-6)


def test_blockwise_attention_equals_the_full_matrix():
    # 1,100 tokens in blocks of 512: the last key block is mostly padding, which must be masked.
    qkv = jnp.asarray(np.random.RandomState(0).randn(2, 1100, 3, 2, 49).astype(np.float32))
    with jax.default_matmul_precision("highest"):
        a, b = attention_blockwise(qkv, block=512), _attention_bhnd(qkv)
        ga = jax.grad(lambda t: (attention_blockwise(t, block=512) ** 2).sum())(qkv)
        gb = jax.grad(lambda t: (_attention_bhnd(t) ** 2).sum())(qkv)
    assert float(jnp.abs(a - b).max() / jnp.abs(b).max()) < 1e-5
    assert float(jnp.abs(ga - gb).max() / jnp.abs(gb).max()) < 1e-5


def test_long_windows_take_blockwise_and_short_ones_are_unchanged():
    r = ops.resolve_attn_impl
    assert r("auto", jnp.float32, 48, platform_name="cpu", tokens=25_600) == "blockwise"  # small's 160²
    assert r("auto", jnp.float32, 40, platform_name="cpu", tokens=4096) == "bhnd"  # tiny's 64²
    assert r("auto", jnp.float32, 32, platform_name="cpu", tokens=196) == "bhnd"
    assert r("auto", jnp.float32, 32, platform_name="gpu", tokens=25_600) == "blockwise"
    assert r("auto", jnp.bfloat16, 32, platform_name="gpu", tokens=25_600) == "cudnn"
    assert r("auto", jnp.float32, 64, platform_name="tpu", tokens=4096) == "xla"


def test_rescale_size_is_mmcv():
    import mmcv

    for h, w in [(512, 683), (375, 500), (1024, 2048), (600, 400), (64, 80)]:
        want = mmcv.rescale_size((w, h), (2048, 512))  # mmcv: (w, h)
        assert inference.rescale_size(h, w, (2048, 512)) == (want[1], want[0])


def test_slide_inference_is_mmseg_slide_inference(monkeypatch):
    """mmseg's EncoderDecoder.slide_inference with its encode_decode replaced by a position-
    dependent function, against ours with the same function in place of the model."""
    import official_seg

    official_seg._install_seg_shims()
    from mmseg.models.segmentors import EncoderDecoder

    def fn(x):  # NCHW -> 3 "classes"
        return torch.cat([x[:, :1] * 2, x[:, 1:2] - x[:, 2:3], x.mean(1, keepdim=True) ** 2], 1)

    x = np.random.RandomState(0).randn(1, 3, 150, 230).astype(np.float32)
    owner = types.SimpleNamespace(
        test_cfg=types.SimpleNamespace(stride=(40, 40), crop_size=(64, 64)),
        out_channels=3,
        encode_decode=lambda crop, metas: fn(crop),
    )
    ref = EncoderDecoder.slide_inference(owner, torch.from_numpy(x), [{}]).numpy()
    monkeypatch.setattr(
        inference,
        "_logits",
        lambda m, c: jnp.asarray(
            fn(torch.from_numpy(np.asarray(c).transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
        ),
    )
    model = types.SimpleNamespace(config=types.SimpleNamespace(crop_size=(64, 64), stride=(40, 40)))
    got = inference.slide_logits(model, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, rtol=1e-6, atol=1e-6)


def test_config_round_trip_and_overrides():
    c = SEG_CONFIGS["mamba_vision_160k_ade20k-512x512_base"]
    assert SegmentationConfig.from_dict(c.to_dict()) == c
    assert c.backbone.window_size == (8, 8, 64, 32) and c.backbone.layer_scale == 1e-5
    assert c.backbone.layer_scale_conv is None and c.backbone.drop_path_rate == 0.2  # as MM_mamba_vision
    assert SEG_CONFIGS["mamba_vision_160k_ade20k-512x512_small"].backbone.window_size == (8, 8, 160, 56)
    with pytest.raises(TypeError, match="did you mean"):
        create_segmenter("tiny", chanels=3)
    with pytest.raises(ValueError, match="pool_scales"):
        SEG_CONFIGS["mamba_vision_160k_ade20k-512x512_tiny"].replace(pool_scales=())


def test_official_config_text_gives_windows_and_heads():
    import official_seg

    for variant in official_seg.CONFIGS:
        want = SEG_CONFIGS[official_seg.CONFIGS[variant].removesuffix(".py")]
        text = official_seg.official_config(variant).pretty_text  # what mmengine stores in meta["cfg"]
        assert checkpoint.config_from_mmseg_cfg(text, want) == want, variant
        # the windows, heads and scales come from the text, not from the fallback
        other = SEG_CONFIGS["mamba_vision_160k_ade20k-512x512_small"]
        got = checkpoint.config_from_mmseg_cfg(
            text, other.replace(backbone=want.backbone.replace(window_size=(1, 1, 1, 1)))
        )
        assert got.backbone.window_size == want.backbone.window_size, variant


def _backbone_keys(config) -> dict[str, np.ndarray]:
    """The keys (zero-strided arrays, no memory) by which shapes tell the variants apart."""
    b, z = config.backbone, np.float32(0)
    sd = {
        "backbone.patch_embed.conv_down.0.weight": np.broadcast_to(z, (b.in_dim, 3, 3, 3)),
        "backbone.patch_embed.conv_down.3.weight": np.broadcast_to(z, (b.dim, b.in_dim, 3, 3)),
        "decode_head.conv_seg.weight": np.broadcast_to(z, (150, 512, 1, 1)),
    }
    for i, d in enumerate(b.depths):
        for j in range(d):
            sd[f"backbone.levels.{i}.blocks.{j}.norm1.weight"] = np.broadcast_to(z, (b.stage_dims[i],))
            if b.layer_scale is not None and i >= 2:
                sd[f"backbone.levels.{i}.blocks.{j}.gamma_1"] = np.broadcast_to(z, (b.stage_dims[i],))
    return sd


def test_variant_of_each_official_segmenter():
    for name, config in SEG_CONFIGS.items():
        sd = _backbone_keys(config)
        assert checkpoint.is_mmseg_checkpoint({"state_dict": sd})
        assert checkpoint.variant_of(sd) == name


_forward = nnx.jit(lambda m, x: m(x))


def test_mmseg_file_round_trip_and_errors(small_model, tmp_path):
    path = checkpoint.save_mmseg_checkpoint(small_model, tmp_path / "m.pth")
    checkpoint.save_checkpoint(small_model, tmp_path / "orbax")
    x = jnp.asarray(np.random.RandomState(0).randn(1, 64, 96, 3).astype(np.float32))
    want = np.asarray(_forward(small_model, x))
    for source in (path, tmp_path / "orbax"):
        back = checkpoint.load_checkpoint(source)
        assert back.config == small_model.config
        np.testing.assert_array_equal(np.asarray(_forward(back, x)), want)
    with pytest.raises(FileExistsError):
        checkpoint.save_mmseg_checkpoint(small_model, path)
    sd = torch.load(path, weights_only=True)
    # no stored config: the architecture must be an official one
    del sd["meta"]
    torch.save(sd, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="fits no official segmenter"):
        checkpoint.load_checkpoint(tmp_path / "bare.pth")
    sd["state_dict"].pop("decode_head.fpn_bottleneck.conv.weight")
    sd["meta"] = {checkpoint.SEG_CONFIG_KEY: small_model.config.to_dict()}
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing keys.*fpn_bottleneck"):
        checkpoint.load_checkpoint(tmp_path / "missing.pth")
    torch.save(
        {"state_dict": {"patch_embed.conv_down.0.weight": torch.zeros(8, 3, 3, 3)}}, tmp_path / "cls.pth"
    )
    with pytest.raises(CheckpointError, match="not a MambaVision UperNet"):
        checkpoint.load_checkpoint(tmp_path / "cls.pth")


def test_hub_id_is_fetched_from_the_hub_cache_and_converted_once(small_model, tmp_path, hf_home, monkeypatch):  # noqa: F811
    from huggingface_hub import constants

    repo = "nvidia/mamba_vision_160k_ade20k-512x512_tiny"
    path = checkpoint.save_mmseg_checkpoint(small_model, tmp_path / "m.pth")
    add_repo(
        __import__("pathlib").Path(constants.HF_HUB_CACHE),
        repo,
        "c" * 40,
        {f"{repo.split('/')[1]}.pth": path.read_bytes()},
    )
    a = checkpoint.load_checkpoint(repo)
    calls = []
    monkeypatch.setattr(checkpoint_io, "load_mmseg_checkpoint", lambda *a, **k: calls.append(1))
    b = checkpoint.load_checkpoint("tiny")  # the short name: the same repo, now from the cache
    assert not calls and a.config == b.config == small_model.config
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        checkpoint.load_checkpoint("small")


def test_segment_command(small_model, tmp_path):
    weights = checkpoint.save_mmseg_checkpoint(small_model, tmp_path / "m.pth")
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (70, 90, 3), np.uint8)).save(img)
    out = tmp_path / "seg"
    r = run_cli("mambavision_jax.segment", img, "--weights", weights, "--out", out, "--mode", "slide")
    assert r.returncode == 0, r.stderr
    labels = np.asarray(Image.open(out / "photo.png"))
    assert labels.shape == (70, 90) and labels.max() < 150
    assert Image.open(out / "photo_overlay.jpg").size[1] >= 70
    before = (out / "photo.png").read_bytes()
    r = run_cli("mambavision_jax.segment", img, "--weights", weights, "--out", out)
    assert_user_error(r, "exists", "--overwrite")
    assert (out / "photo.png").read_bytes() == before
    r = run_cli("mambavision_jax.segment", tmp_path / "nope.jpg", "--weights", weights, "--out", out)
    assert_user_error(r, "no such image")
    r = run_cli("mambavision_jax.segment", img, "--weights", tmp_path / "none.pth", "--out", tmp_path / "o2")
    assert_user_error(r, "no such checkpoint")
    assert not (tmp_path / "o2").exists()


# ------------------------------------------------------------------ one way in: weights.resolve
@pytest.fixture(scope="module")
def seg_sources(small_model, tmp_path_factory):
    """The small segmenter as an mmseg .pth, an orbax folder and a training run (step 3), and a
    classifier's orbax folder."""
    from test_config_roundtrip import _custom_model, save_run

    from mambavision_jax.convert import save_checkpoint as save_classifier

    root = tmp_path_factory.mktemp("seg_sources")
    checkpoint.save_mmseg_checkpoint(small_model, root / "m.pth")
    checkpoint.save_checkpoint(small_model, root / "orbax")
    (root / "run").mkdir()
    save_run(small_model, root / "run", step=3)
    save_classifier(_custom_model(), root / "cls")
    return root


def test_resolve_says_each_segmentation_kind_and_load_builds_the_upernet(small_model, seg_sources):
    from mambavision_jax import weights

    x = jnp.asarray(np.random.RandomState(0).randn(1, 64, 96, 3).astype(np.float32))
    want = np.asarray(_forward(small_model, x))
    for name, kind in (("m.pth", "mmseg-pth"), ("orbax", "seg-orbax"), ("run", "seg-run")):
        source = weights.resolve(seg_sources / name, checkpoint="latest" if name == "run" else "best")
        assert source.kind == kind, name
        model, pre = weights.load(source)
        assert pre is None and model.config == small_model.config, name  # a segmenter's own mean / std
        np.testing.assert_array_equal(np.asarray(_forward(model, x)), want)
    run = weights.resolve(seg_sources / "run", checkpoint="latest")  # the run's step, by train.checkpoint
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):  # no evaluation yet: no best/
        weights.resolve(seg_sources / "run")
    assert (run.step, run.step_dir) == (3, str(seg_sources / "run" / "checkpoints" / "3"))
    assert weights.resolve(seg_sources / "run", checkpoint=3).step_dir == run.step_dir
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 4"):
        weights.resolve(seg_sources / "run", checkpoint=4)
    with pytest.raises(UserError, match="applies to training runs"):
        weights.resolve(seg_sources / "m.pth", checkpoint="latest")
    assert weights.resolve(seg_sources / "cls").kind == "orbax"  # the classifier's kinds are unchanged
    # the segmentation commands' loader reads the run too, its checkpoint chosen
    from mambavision_jax.evaluate_seg import load_segmenter

    model = load_segmenter(str(seg_sources / "run"), "3")
    assert model.checkpoint_info["step"] == 3 and model.config == small_model.config
    from mambavision_jax import segment

    img = seg_sources / "photo.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (30, 40, 3), np.uint8)).save(img)
    run_args = ["--weights", str(seg_sources / "run"), "--checkpoint", "latest", "--out"]
    assert segment.main([str(img), *run_args, str(seg_sources / "seg")]) == 0
    assert np.asarray(Image.open(seg_sources / "seg" / "photo.png")).shape == (30, 40)
    with pytest.raises(UserError, match="num_classes apply to classifiers"):
        weights.load(weights.resolve(seg_sources / "orbax"), num_classes=5)


def test_wrong_task_weights_are_refused_in_one_line(seg_sources, tmp_path, monkeypatch):
    import huggingface_hub

    import mambavision_jax as mvj
    from mambavision_jax import predict, segment, weights
    from mambavision_jax.convert.__main__ import main as convert_main

    def no_download(*a, **k):
        raise AssertionError("the task of a known hub id is told before any download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    img = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    cls = str(seg_sources / "cls")
    with pytest.raises(CheckpointError, match=r"classification checkpoint \(an orbax model folder"):
        segment.main([str(img), "--weights", cls, "--out", str(tmp_path / "seg")])
    assert not (tmp_path / "seg").exists()
    with pytest.raises(
        CheckpointError, match="not a MambaVision UperNet checkpoint; evaluate_seg needs a segm"
    ):
        from mambavision_jax.evaluate_seg import load_segmenter

        load_segmenter(cls)
    with pytest.raises(CheckpointError, match="segmentation checkpoint .*predict needs a classifier"):
        predict.main([str(img), "--weights", str(seg_sources / "m.pth")])
    with pytest.raises(CheckpointError, match="segmentation checkpoint .*convert needs a classifier"):
        convert_main(["to-torch", str(seg_sources / "run"), str(tmp_path / "x.pth.tar")])
    with pytest.raises(CheckpointError, match="segmentation checkpoint .*load_checkpoint needs a classifier"):
        mvj.load_checkpoint(seg_sources / "orbax")
    # hub ids: the other task's official repo is refused before anything is fetched
    with pytest.raises(CheckpointError, match="segmentation checkpoint"):
        weights.resolve("nvidia/mamba_vision_160k_ade20k-512x512_tiny", task="classification")
    with pytest.raises(CheckpointError, match="classification checkpoint"):
        weights.load_segmenter("nvidia/MambaVision-T-1K")
    # short names are a segmentation command's: elsewhere "tiny" is a (missing) path
    assert weights.exists("tiny", task="segmentation") and not weights.exists("tiny")
    with pytest.raises(FileNotFoundError, match="no such checkpoint: tiny"):
        weights.resolve("tiny")


def test_segmentation_hub_id_resolves_to_its_converted_entry_once(
    small_model,
    tmp_path,
    hf_home,  # noqa: F811 - the fixture
    monkeypatch,
):
    """weights.resolve of an official segmentation repo: the .pth read through the (fake, offline)
    hub cache, converted once into the package cache whole (no temporary folder left), then reused."""
    import huggingface_hub

    from mambavision_jax import weights

    repo = "nvidia/mamba_vision_160k_ade20k-512x512_tiny"
    path = checkpoint.save_mmseg_checkpoint(small_model, tmp_path / "m.pth")
    add_repo(hf_home / "hub", repo, "d" * 40, {f"{repo.split('/')[1]}.pth": path.read_bytes()})
    downloads, conversions = [], []
    real_download, real_convert = huggingface_hub.hf_hub_download, checkpoint_io.load_mmseg_checkpoint
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda *a, **k: downloads.append(a[1]) or real_download(*a, **k)
    )
    monkeypatch.setattr(
        checkpoint_io,
        "load_mmseg_checkpoint",
        lambda *a, **k: conversions.append(a[0]) or real_convert(*a, **k),
    )
    first = weights.resolve(repo)
    assert first.kind == "seg-orbax" and first.hub == {"repo_id": repo, "commit": "d" * 40, "name": repo[7:]}
    assert downloads == [f"{repo[7:]}.pth"] and len(conversions) == 1
    entry = hf_home / "mambavision_jax" / f"models--nvidia--{repo[7:]}" / ("d" * 40)
    assert [p.name for p in entry.iterdir()] == [Path(first.path).name]  # no temporary folder left behind
    again = weights.resolve(
        "tiny", task="segmentation"
    )  # the short name: the same entry, not converted again
    assert again.path == first.path and len(conversions) == 1
    model, pre = weights.load(again)
    assert pre is None and model.config == small_model.config


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_evaluator_modes_equal_segment_labels(small_model, mode):
    """evaluate_seg's jitted evaluator (whole, or slide over several crops inside one program)
    gives the areas of `segment_labels(mode=...)` image by image, through the numpy metric."""
    from mambavision_jax.evaluate_seg import evaluate_segmenter
    from mambavision_jax.segmentation.metrics import SegMetrics, intersect_and_union

    rs = np.random.RandomState(0)
    examples, want = [], SegMetrics(small_model.num_classes)
    for h, w in [(70, 90), (64, 64)]:  # 96x64 test scale: slide takes 2 and 1 crops of 64
        image = rs.randint(0, 256, (h, w, 3), np.uint8)
        label = rs.randint(0, small_model.num_classes, (h, w)).astype(np.uint8)
        size = inference.rescale_size(h, w, small_model.config.test_scale)
        examples.append({"image": inference.resize_image(image, size), "label": label})
        # segment_labels resizes the original itself; give it the resized image at its own size
        # so both see the same pixels, and compare at the label's size
        logits = inference.segment_image(small_model, examples[-1]["image"], mode=mode)
        pred = np.asarray(resize_bilinear(jnp.asarray(logits)[None], (h, w))[0]).argmax(-1)
        want.add(intersect_and_union(pred, label, small_model.num_classes))
    assert len(inference.slide_windows(*examples[0]["image"].shape[:2], (64, 64), (40, 40))) == 2
    got, n, _ = evaluate_segmenter(small_model, examples, mode=mode)
    assert n == 2
    for key in want.areas:
        np.testing.assert_array_equal(got.areas[key], want.areas[key], err_msg=key)
