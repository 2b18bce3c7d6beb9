"""Converters: export round trip, variant inference, orbax, and every bad-input error."""

import json
import pickle

import numpy as np
import pytest
import torch

import mambavision_jax as mvj
from mambavision_jax.convert import (
    CheckpointError,
    infer_variant,
    load_checkpoint,
    save_checkpoint,
    torch_key_shapes,
)

from helpers import images, jax_logits, official_logits, rel_err, save_official_pth
from official import build_official

SMALL = {"depths": [1, 1, 2, 1]}


@pytest.fixture(scope="module")
def small_official():
    return build_official("mamba_vision_T", seed=3, **SMALL)


@pytest.fixture(scope="module")
def small_sd(small_official):
    return {k: v for k, v in small_official.state_dict().items()}


@pytest.mark.parametrize("suffix", [".pth.tar", ".safetensors"])
def test_export_round_trip_is_bit_identical(small_official, small_sd, suffix, tmp_path):
    src = tmp_path / "src.pth.tar"
    save_official_pth(small_official, src, "mamba_vision_T")
    model = mvj.load_torch_checkpoint(src, **SMALL)
    out = mvj.save_torch_checkpoint(model, tmp_path / f"out{suffix}")

    fresh = build_official("mamba_vision_T", seed=99, **SMALL)
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        loaded = {k.removeprefix("model."): v for k, v in load_file(out).items()}
        cfg = json.loads((tmp_path / "config.json").read_text())
        assert cfg["depths"] == SMALL["depths"] and cfg["window_size"] == [8, 8, 14, 7]
    else:
        loaded = torch.load(out, weights_only=True)["state_dict"]
    fresh.load_state_dict(loaded, strict=True)
    exported = fresh.state_dict()
    for key, value in small_sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(exported[key], value), key
    # and the exported file gives the same logits through the official code
    x = images(2, 64, 80)
    assert rel_err(official_logits(fresh, x), official_logits(small_official, x)) == 0.0


def test_to_torch_state_dict_has_every_official_key(small_sd):
    model = mvj.create_model("mamba_vision_T", **SMALL)
    sd = mvj.to_torch_state_dict(model)
    official = {k for k in small_sd if not k.endswith("num_batches_tracked")}
    assert set(sd) == official
    for k in official:
        assert sd[k].shape == tuple(small_sd[k].shape), k


def test_ema_weights_on_request(small_official, tmp_path):
    path = tmp_path / "ema.pth.tar"
    save_official_pth(small_official, path, "mamba_vision_T", ema=True)
    plain = mvj.load_torch_checkpoint(path, **SMALL)
    ema = mvj.load_torch_checkpoint(path, use_ema=True, **SMALL)
    np.testing.assert_allclose(
        np.asarray(ema.head.bias[...]), np.asarray(plain.head.bias[...]) + 0.5, rtol=1e-6
    )


@pytest.mark.parametrize("prefix", ["module.", "encoder.", "backbone."])
def test_prefixed_keys(small_sd, prefix, tmp_path):
    path = tmp_path / "p.pth"
    torch.save({"model": {prefix + k: v for k, v in small_sd.items()}}, path)
    model = mvj.load_torch_checkpoint(path, "mamba_vision_T", **SMALL)
    # Every weight and statistic arrives under its unprefixed key (the seed-3 values, not an init).
    loaded = mvj.to_torch_state_dict(model)
    expected = {k: v.numpy() for k, v in small_sd.items() if not k.endswith("num_batches_tracked")}
    assert loaded.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(loaded[k], expected[k], err_msg=k)


def test_variant_inferred_from_weights():
    sd = mvj.to_torch_state_dict(mvj.create_model("mamba_vision_S"))
    assert infer_variant(sd) == "mamba_vision_S"
    sd = mvj.to_torch_state_dict(mvj.create_model("mamba_vision_T2"))
    assert infer_variant(sd) == "mamba_vision_T2"


def test_ambiguous_variant_asks_for_a_name():
    from flax import nnx

    abstract = nnx.eval_shape(lambda: mvj.create_model("mamba_vision_L2"))
    sd = {k: np.zeros(shape, np.float32) for k, shape in torch_key_shapes(abstract).items()}
    with pytest.raises(CheckpointError, match="mamba_vision_L2_512_21k"):
        infer_variant(sd)


def test_num_classes_override_reinitialises_head(small_official, tmp_path):
    path = tmp_path / "c.pth.tar"
    save_official_pth(small_official, path, "mamba_vision_T")
    model = mvj.load_torch_checkpoint(path, num_classes=10, **SMALL)
    assert model.head.kernel.shape == (640, 10)
    np.testing.assert_array_equal(
        np.asarray(model.levels[0].blocks[0].conv1.bias[...]),
        small_official.levels[0].blocks[0].conv1.bias.detach().numpy(),
    )


def test_orbax_round_trip(small_official, tmp_path):
    path = tmp_path / "c.pth.tar"
    save_official_pth(small_official, path, "mamba_vision_T")
    model = mvj.load_torch_checkpoint(path, **SMALL)
    save_checkpoint(model, tmp_path / "orbax")
    again = load_checkpoint(tmp_path / "orbax", **SMALL)
    x = images(1, 64, 64)
    np.testing.assert_array_equal(jax_logits(again, x), jax_logits(model, x))


# ------------------------------------------------------------------ errors
def test_wrong_variant_names_the_fitting_one(tmp_path):
    path = tmp_path / "s.pth.tar"
    torch.save({"state_dict": build_official("mamba_vision_S", seed=0, randomize=False).state_dict()}, path)
    with pytest.raises(
        CheckpointError, match=r"does not fit mamba_vision_T \(the weights look like mamba_vision_S\)"
    ) as e:
        mvj.load_torch_checkpoint(path, "mamba_vision_T")
    assert "levels.0.blocks.0.norm1.weight: checkpoint (96,) vs model (80,)" in str(e.value)


def test_missing_and_unexpected_keys_are_listed(small_sd, tmp_path):
    sd = dict(small_sd)
    del sd["levels.2.blocks.0.mixer.A_log"]
    sd["levels.2.blocks.0.mixer.extra"] = torch.zeros(3)
    path = tmp_path / "m.pth.tar"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError) as e:
        mvj.load_torch_checkpoint(path, "mamba_vision_T", **SMALL)
    msg = str(e.value)
    assert "missing keys (1): levels.2.blocks.0.mixer.A_log" in msg
    assert "unexpected keys (1): levels.2.blocks.0.mixer.extra" in msg


@pytest.mark.parametrize("suffix", [".pth.tar", ".safetensors"])
def test_truncated_file(small_official, suffix, tmp_path):
    good = tmp_path / f"good{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(dict(small_official.state_dict()), good)
    else:
        save_official_pth(small_official, good, "mamba_vision_T")
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        mvj.load_torch_checkpoint(bad, "mamba_vision_T", **SMALL)


def test_untrusted_pickle_is_refused_not_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.pth.tar"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil2.pth.tar")
    for p in (path, tmp_path / "evil2.pth.tar"):
        with pytest.raises(CheckpointError):
            mvj.load_torch_checkpoint(p, "mamba_vision_T")
    assert not (tmp_path / "pwned").exists() or (tmp_path / "pwned").stat().st_size == 0


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"unknown model 'mamba_vision_X'.*Known models: mamba_vision_T,"):
        mvj.create_model("mamba_vision_X")


def test_hf_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        mvj.load_torch_checkpoint(tmp_path)


def test_hf_folder_round_trip(small_official, tmp_path):
    model = mvj.load_torch_checkpoint(_pth(small_official, tmp_path), **SMALL)
    mvj.save_torch_checkpoint(model, tmp_path / "hf" / "model.safetensors")
    again = mvj.load_torch_checkpoint(tmp_path / "hf")  # variant and depths from config.json
    x = images(1, 64, 64)
    np.testing.assert_array_equal(jax_logits(again, x), jax_logits(model, x))


def _pth(official_model, tmp_path):
    path = tmp_path / "x.pth.tar"
    save_official_pth(official_model, path, "mamba_vision_T")
    return path


def test_cli_round_trip(small_official, tmp_path):
    from mambavision_jax import cli
    from mambavision_jax.convert.__main__ import main as convert_main

    def main(argv):
        return cli.run(convert_main, argv)

    src = _pth(small_official, tmp_path)
    assert (
        main(["to-jax", str(src), str(tmp_path / "orbax"), "--model", "mamba_vision_T"]) == 2
    )  # depths differ
    assert not (tmp_path / "orbax").exists() and not list(tmp_path.glob(".orbax*"))
    full = build_official("mamba_vision_T", seed=4)
    torch.save({"state_dict": full.state_dict()}, tmp_path / "full.pth.tar")
    assert main(["to-jax", str(tmp_path / "full.pth.tar"), str(tmp_path / "orbax")]) == 0
    assert main(["to-torch", str(tmp_path / "orbax"), str(tmp_path / "back.pth.tar")]) == 0
    assert main(["to-torch", str(tmp_path / "orbax"), str(tmp_path / "back.pth.tar")]) == 2  # exists
    back = torch.load(tmp_path / "back.pth.tar", weights_only=True)["state_dict"]
    for k, v in full.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(back[k], v), k


def test_save_torch_checkpoint_refuses_to_replace_without_overwrite(tmp_path):
    import stat

    model = mvj.create_model(
        "mamba_vision_T", dim=32, in_dim=16, depths=(1, 1, 1, 1), window_size=(2, 2, 2, 1), num_classes=3
    )
    for name in ("m.pth.tar", "m.safetensors"):
        out = tmp_path / name
        out.write_bytes(b"precious")
        with pytest.raises(FileExistsError, match="overwrite"):
            mvj.save_torch_checkpoint(model, out)
        assert out.read_bytes() == b"precious"
        mvj.save_torch_checkpoint(model, out, overwrite=True)
        assert out.read_bytes() != b"precious" and stat.S_IMODE(out.stat().st_mode) == 0o644
    with pytest.raises(IsADirectoryError):
        mvj.save_torch_checkpoint(model, tmp_path)
    # config.json of another model beside it: refused, then both replaced together
    other = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**other, "num_classes": 7}))
    with pytest.raises(FileExistsError, match="another model"):
        mvj.save_torch_checkpoint(model, tmp_path / "new.safetensors")
    assert not (tmp_path / "new.safetensors").exists()
    mvj.save_torch_checkpoint(model, tmp_path / "new.safetensors", overwrite=True)
    assert json.loads((tmp_path / "config.json").read_text()) == other
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_nonfinite_and_integer_weights_are_refused_with_an_opt_in(small_official, tmp_path):
    sd = {k: v.clone() for k, v in small_official.state_dict().items()}
    key = "levels.0.blocks.0.conv1.weight"
    sd[key][0, 0, 0, 0] = float("nan")
    torch.save({"state_dict": sd}, tmp_path / "nan.pth.tar")
    with pytest.raises(CheckpointError, match=f"NaN or inf.*{key}"):
        mvj.load_torch_checkpoint(tmp_path / "nan.pth.tar", **SMALL)
    model = load_checkpoint(tmp_path / "nan.pth.tar", "mamba_vision_T", allow_nonfinite=True, **SMALL)
    assert np.isnan(np.asarray(model.levels[0].blocks[0].conv1.kernel.get_value())).sum() == 1
    sd[key] = torch.ones_like(sd[key], dtype=torch.int32)  # num_batches_tracked (int64) stays allowed
    torch.save({"state_dict": sd}, tmp_path / "int.pth.tar")
    with pytest.raises(CheckpointError, match=f"floating-point.*{key} \\(int32\\)"):
        mvj.load_torch_checkpoint(tmp_path / "int.pth.tar", "mamba_vision_T", allow_nonfinite=True, **SMALL)
