"""MambaVisionConfig / RuntimeConfig validation, and every checkpoint writer storing the whole
architecture: a model with every architecture field overridden, saved and reloaded with no name or
overrides, gives bit-identical logits; hostile stored configs give one-line CheckpointErrors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mambavision_jax as mvj
from mambavision_jax.convert import CheckpointError, load_checkpoint, save_checkpoint
from mambavision_jax.models import ConfigError, MambaVisionConfig, RuntimeConfig, model_config

# Every architecture field differs from mamba_vision_T's.
CUSTOM = {
    "dim": 16,
    "in_dim": 8,
    "depths": (1, 2, 3, 1),
    "num_heads": (1, 2, 2, 4),
    "window_size": (4, 4, 3, 2),
    "mlp_ratio": 2.0,
    "drop_path_rate": 0.1,
    "layer_scale": 0.5,
    "layer_scale_conv": 0.25,
    "in_chans": 1,
    "num_classes": 10,
}
X = np.random.RandomState(0).randn(2, 40, 36, 1).astype(np.float32)


def _custom_model():
    model = mvj.create_model("mamba_vision_T", rngs=nnx.Rngs(5), **CUSTOM)
    # BatchNorm statistics away from their init, so that a lost statistic would show
    stats = nnx.state(model, nnx.BatchStat)
    rng = np.random.RandomState(1)
    stats = nnx.State.from_flat_path(
        [
            (p, v.replace(jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32)))
            for p, v in nnx.to_flat_state(stats)
        ]
    )
    nnx.update(model, stats)
    model.eval()
    return model


def _logits(model):
    return np.asarray(model(jnp.asarray(X)))


# ------------------------------------------------------------------ the configs
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dim", 0, "dim must be >= 1, got 0"),
        ("dim", "80", "dim must be an integer, got '80'"),
        ("dim", 80.0, "dim must be an integer"),
        ("in_dim", True, "in_dim must be an integer, got True"),
        ("depths", (1, 3, 8), "depths must have 4 entries"),
        ("depths", "1384", "depths must be a tuple"),
        ("num_heads", (2, 4, 0, 16), r"num_heads must hold positive integers, got \(2, 4, 0, 16\)"),
        ("num_heads", (2, 4, 3, 16), r"num_heads\[2\]=3 does not divide stage 3's 320 channels"),
        ("window_size", (8, 8, 0, 7), "window_size must hold positive integers"),
        ("window_size", (8, 8, 1.5, 7), "window_size must hold positive integers"),
        ("mlp_ratio", -1, "mlp_ratio must be > 0, got -1"),
        ("mlp_ratio", "4", "mlp_ratio must be a number, got '4'"),
        ("mlp_ratio", float("nan"), "mlp_ratio must be finite"),
        ("drop_path_rate", 1.0, r"drop_path_rate must be in \[0, 1\), got 1.0"),
        ("drop_path_rate", -0.1, "drop_path_rate must be in"),
        ("layer_scale", 0, "layer_scale must be None or > 0, got 0"),
        ("layer_scale_conv", "1e-5", "layer_scale_conv must be a number"),
        ("in_chans", 0, "in_chans must be >= 1, got 0"),
        ("num_classes", -5, "num_classes must be >= 0, got -5"),
        ("num_classes", False, "num_classes must be an integer, got False"),
        ("name", 3, "name must be None or a non-empty string, got 3"),
    ],
)
def test_bad_architecture_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        model_config("mamba_vision_T").replace(**{field: value})
    with pytest.raises(ConfigError, match=message):  # the same through create_model
        mvj.create_model("mamba_vision_T", **{field: value})


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dtype", "int8", "dtype must be one of"),
        ("dtype", jnp.int32, "dtype must be one of"),
        ("scan_impl", "cuda", "scan_impl must be one of"),
        ("attn_impl", "flash", "attn_impl must be one of"),
        ("conv_impl", "taps", "conv_impl must be one of"),
        ("remat", 1, "remat must be True or False, got 1"),
        ("bn_groups", 0, "bn_groups must be >= 1, got 0"),
    ],
)
def test_bad_runtime_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=f"RuntimeConfig.{message}"):
        RuntimeConfig(**{field: value})


def test_config_dict_round_trip_and_unknown_fields():
    config = model_config("mamba_vision_L2_512_21k").replace(num_classes=3, mlp_ratio=3)
    d = json.loads(json.dumps(config.to_dict()))  # JSON-safe: tuples come back as lists
    assert MambaVisionConfig.from_dict(d) == config
    assert isinstance(MambaVisionConfig.from_dict(d).depths, tuple)
    with pytest.raises(
        ConfigError,
        match=r"unknown field\(s\) 'window' \(did you mean 'window_size'\?\); "
        r"valid fields: dim, in_dim",
    ):
        MambaVisionConfig.from_dict({**d, "window": 7})
    del d["num_heads"]
    with pytest.raises(ConfigError, match="missing field.* num_heads"):
        MambaVisionConfig.from_dict(d)
    with pytest.raises(TypeError, match=r"unknown field\(s\) 'mlp_ration' \(did you mean 'mlp_ratio'\?\)"):
        config.replace(mlp_ration=2)
    assert RuntimeConfig(dtype=jnp.bfloat16).dtype == "bfloat16"
    assert RuntimeConfig.from_dict(RuntimeConfig(remat=True).to_dict()) == RuntimeConfig(remat=True)


def test_create_model_overrides():
    with pytest.raises(
        TypeError,
        match=r"create_model: unknown argument\(s\) 'num_class' "
        r"\(did you mean 'num_classes'\?\).*valid arguments: dim, .*bn_groups",
    ):
        mvj.create_model("mamba_vision_T", num_class=10)
    model = mvj.create_model(
        "mamba_vision_T",
        dtype=jnp.bfloat16,
        num_classes=0,
        depths=[1, 1, 1, 1],
        num_heads=(1, 1, 1, 1),
        dim=16,
        in_dim=8,
    )
    assert model.config == model_config("mamba_vision_T").replace(
        num_classes=0, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), dim=16, in_dim=8
    )
    assert model.runtime.dtype == "bfloat16" and model.head is None
    assert model.name == "mamba_vision_T" and model.pretrained_cfg.num_classes == 0
    custom = mvj.create_model(model.config.replace(name=None))
    assert custom.name is None and custom.pretrained_cfg.hf_hub_id is None


def _training_run(model, workdir):
    """A training workdir holding `model` as the loop writes one: the TrainState through the
    training Checkpointer, and model_config.json from the training config's model section."""
    import ml_collections

    from mambavision_jax.train.state import model_configs

    config = ml_collections.ConfigDict(
        {
            "model": {
                "name": "mamba_vision_T",
                "drop_path_rate": -1.0,
                "dtype": "float32",
                "scan_impl": "auto",
                "remat": False,
                "overrides": {k: v for k, v in CUSTOM.items() if k != "num_classes"},
            }
        }
    )
    arch, _ = model_configs(config, CUSTOM["num_classes"], 1)
    assert arch == model.config  # the training config describes this very model
    return save_run(model, workdir)


def save_run(model, workdir, step: int = 7):
    """The files of a training workdir holding `model` (a classifier or a segmenter) at `step`:
    its TrainState through the training Checkpointer, and model_config.json (model.config)."""
    from mambavision_jax.train.checkpoint import Checkpointer
    from mambavision_jax.train.state import TrainState, split_model

    _, params, stats, rngs = split_model(model)
    state = TrainState(
        step=jnp.int32(step),
        params=params,
        batch_stats=stats,
        rngs=rngs,
        opt_state={},
        ema_params=None,
        ema_batch_stats=None,
    )
    ckpt = Checkpointer(workdir)
    ckpt.save(step, state)
    ckpt.wait()
    ckpt.close()
    (workdir / "model_config.json").write_text(
        json.dumps(model.config.to_dict())
    )  # as train/loop.py writes it
    return workdir


# ------------------------------------------------------------------ every writer, every reader
@pytest.mark.parametrize("writer", ["pth", "safetensors", "hf-folder", "orbax", "training-run"])
def test_custom_model_round_trips_bit_identically(writer, tmp_path):
    model = _custom_model()
    if writer == "training-run":
        loaded = mvj.load_checkpoint(_training_run(model, tmp_path / "run"), which="latest", ema=False)
        assert loaded.config == model.config
        np.testing.assert_array_equal(_logits(loaded), _logits(model))
        return
    if writer == "orbax":
        path = save_checkpoint(model, tmp_path / "ckpt")
    elif writer == "hf-folder":
        mvj.save_torch_checkpoint(model, tmp_path / "hf" / "model.safetensors")
        path = tmp_path / "hf"
    else:
        path = mvj.save_torch_checkpoint(model, tmp_path / f"m.{'pth.tar' if writer == 'pth' else writer}")
    loaded = load_checkpoint(path)  # no name, no overrides
    assert loaded.config == model.config
    np.testing.assert_array_equal(_logits(loaded), _logits(model))


@pytest.mark.parametrize("writer", ["pth", "safetensors"])
def test_official_model_loads_the_custom_export(writer, tmp_path):
    import torch

    from helpers import official_logits
    from official import official_module

    model = _custom_model()
    path = mvj.save_torch_checkpoint(model, tmp_path / f"m.{'pth.tar' if writer == 'pth' else writer}")
    if writer == "pth":
        sd = torch.load(path, weights_only=True)["state_dict"]
    else:
        from safetensors.torch import load_file

        sd = {k.removeprefix("model."): v for k, v in load_file(path).items()}
        assert json.loads((tmp_path / "config.json").read_text())["mlp_ratio"] == 2.0
    c = model.config
    ref = official_module().MambaVision(
        dim=c.dim,
        in_dim=c.in_dim,
        depths=list(c.depths),
        window_size=list(c.window_size),
        mlp_ratio=c.mlp_ratio,
        num_heads=list(c.num_heads),
        drop_path_rate=c.drop_path_rate,
        in_chans=c.in_chans,
        num_classes=c.num_classes,
        layer_scale=c.layer_scale,
        layer_scale_conv=c.layer_scale_conv,
    )
    ref.load_state_dict(sd, strict=True)
    ref.eval()
    ref_logits = official_logits(ref, X)
    ours = _logits(model)
    assert np.abs(ours - ref_logits).max() <= 1e-5 * np.abs(ref_logits).max()


# ------------------------------------------------------------------ hostile stored configs
def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


@pytest.mark.parametrize(
    "key, value, field",
    [
        ("mlp_ratio", -1, "mlp_ratio"),
        ("window_size", [8, 8, 0, 7], "window_size"),
        ("num_heads", [0, 4, 8, 16], "num_heads"),
        ("dim", "16", "dim"),
        ("depths", None, "depths"),
    ],
)
@pytest.mark.parametrize("where", ["jax-config", "hub-fields"])
def test_hostile_config_json_is_a_checkpoint_error(key, value, field, where, tmp_path):
    mvj.save_torch_checkpoint(_custom_model(), tmp_path / "model.safetensors")
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if where == "hub-fields":  # an official-style config.json, without this package's entry
        del cfg["mambavision_jax_config"]
        cfg[key] = value
    else:
        cfg["mambavision_jax_config"][key] = value
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)
    msg = _one_line(e)
    assert msg.startswith(f"{cfg_path}: ") and field in msg


def test_config_json_missing_fields_and_bad_json(tmp_path):
    mvj.save_torch_checkpoint(_custom_model(), tmp_path / "model.safetensors")
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["mambavision_jax_config"]["depths"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json: MambaVisionConfig: missing field.* depths"):
        load_checkpoint(tmp_path)
    cfg_path.write_text('{"dim": 16,')
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "tamper, match",
    [
        (lambda m: "{not json", "not valid JSON"),
        (lambda m: "[1, 2]", "expected a JSON object, got list"),
        (lambda m: {**m, "format": 99}, "unknown format 99"),
        (lambda m: {"format": 2}, "expected a dict of fields, got NoneType"),
        (lambda m: {**m, "config": {**m["config"], "mlp_ratio": -1}}, "mlp_ratio must be > 0, got -1"),
        (lambda m: {**m, "config": {**m["config"], "window_size": [0, 1, 1, 1]}}, "window_size must hold"),
        (lambda m: {**m, "config": {**m["config"], "num_heads": "1111"}}, "num_heads must be a tuple"),
        (lambda m: {**m, "config": {**m["config"], "bogus": 1}}, r"unknown field\(s\) 'bogus'"),
        # valid values that do not fit the saved arrays: a short list, not orbax's dump of arrays
        (
            lambda m: {**m, "config": {**m["config"], "depths": [1, 2, 4, 1]}},
            "the saved arrays do not fit the architecture in mambavision_jax.json: levels.2.blocks.3",
        ),
        (lambda m: {**m, "config": {**m["config"], "dim": 32}}, "saved .* vs model"),
    ],
)
def test_tampered_orbax_metadata_is_a_checkpoint_error(tamper, match, tmp_path):
    path = save_checkpoint(_custom_model(), tmp_path / "ckpt")
    meta_path = path / "mambavision_jax.json"
    meta = json.loads(meta_path.read_text())
    assert meta["format"] == 2 and MambaVisionConfig.from_dict(meta["config"]) == _custom_model().config
    new = tamper(meta)
    meta_path.write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(path)
    _one_line(e)


def test_first_orbax_format_still_reads(tmp_path):
    model = mvj.create_model("mamba_vision_T", num_classes=3, rngs=nnx.Rngs(2), depths=(1, 1, 1, 1))
    path = save_checkpoint(model, tmp_path / "ckpt")
    # the first format held an official name and the class count only
    (path / "mambavision_jax.json").write_text(json.dumps({"name": "mamba_vision_T", "num_classes": 3}))
    with pytest.raises(CheckpointError, match="do not fit"):  # T's depths, not this model's
        load_checkpoint(path)
    loaded = load_checkpoint(path, depths=(1, 1, 1, 1))
    model.eval()
    x = jnp.asarray(np.random.RandomState(0).randn(1, 32, 32, 3), jnp.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize(
    "value, match",
    [
        ("garbage", "expected a dict of fields, got str"),
        ({"window_size": [1, 1, 0, 1]}, "window_size must hold positive integers"),
        ({"mlp_ratio": -1}, "mlp_ratio must be > 0"),
    ],
)
def test_hostile_config_in_a_pth_tar_is_a_checkpoint_error(value, match, tmp_path):
    import torch

    path = mvj.save_torch_checkpoint(_custom_model(), tmp_path / "m.pth.tar")
    ckpt = torch.load(path, weights_only=True)
    stored = ckpt["mambavision_jax_config"]
    ckpt["mambavision_jax_config"] = {**stored, **value} if isinstance(value, dict) else value
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(path)
    assert _one_line(e).startswith(f"{path}: ")
