"""hub: official weights by name or hub id, from a local Hugging Face cache, offline, converted once.

No network: the tests lay out a hub cache exactly as huggingface_hub does (blobs/, refs/main,
snapshots/<commit>/ with relative symlinks) from random-weight exports of a reduced model, and run
with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

import mambavision_jax as mvj
from mambavision_jax import hub
from mambavision_jax.convert import (
    CheckpointError,
    load_checkpoint,
    load_torch_checkpoint,
)
from mambavision_jax.convert.api import to_torch_state_dict
from mambavision_jax.paths import publish_dir

pytest.importorskip("huggingface_hub")

REPO = "nvidia/MambaVision-T-1K"
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
SMALL = {
    "dim": 16,
    "in_dim": 8,
    "depths": (1, 1, 1, 1),
    "num_heads": (1, 1, 1, 1),
    "window_size": (2, 2, 2, 1),
    "num_classes": 10,
}


def _export(tmp: Path, seed: int) -> dict[str, bytes]:
    m = mvj.create_model("mamba_vision_T", rngs=nnx.Rngs(seed), **SMALL)
    mvj.save_torch_checkpoint(m, tmp / "model.safetensors")  # writes config.json beside it
    return {f: (tmp / f).read_bytes() for f in ("config.json", "model.safetensors")}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return [_export(tmp_path_factory.mktemp(f"export{i}"), seed=i) for i in range(2)]


def add_repo(hub_cache: Path, repo_id: str, commit: str, files: dict[str, bytes], ref: str | None = "main"):
    """One snapshot in huggingface_hub's cache layout (content-addressed blobs, relative symlinks)."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """A fresh HF_HOME with HF_HUB_OFFLINE=1 (huggingface_hub reads its env at import: patch both)."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(hub.CACHE_ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


@pytest.fixture
def images():
    return np.random.default_rng(0).standard_normal((2, 32, 32, 3), dtype=np.float32)


def _count_conversions(monkeypatch):
    """The hub folders converted from PyTorch weights (`convert.api.load_torch_checkpoint` calls)."""
    from mambavision_jax.convert import api

    calls = []
    real = api.load_torch_checkpoint

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(api, "load_torch_checkpoint", counting)
    return calls


def _forbid_hub_and_conversion(monkeypatch):
    import huggingface_hub

    def boom(*a, **k):
        raise AssertionError("the cached conversion should have been used")

    from mambavision_jax.convert import api

    monkeypatch.setattr(api, "load_torch_checkpoint", boom)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)


def test_first_call_converts_second_loads_the_cache(hf_home, exports, images, monkeypatch):
    snapshot = add_repo(hf_home / "hub", REPO, COMMIT_A, exports[0])
    calls = _count_conversions(monkeypatch)
    model = hub.from_pretrained(REPO)
    assert calls == [snapshot]
    entry = (
        hf_home / "mambavision_jax" / "models--nvidia--MambaVision-T-1K" / COMMIT_A / f"v{mvj.__version__}"
    )
    assert (entry / "mambavision_jax.json").is_file() and (entry / "config.json").is_file()
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temporary folder left behind
    direct = load_torch_checkpoint(snapshot)
    want = np.asarray(direct(images))
    assert model.num_classes == 10 and model.name == "mamba_vision_T"
    np.testing.assert_array_equal(np.asarray(model(images)), want)

    # Second time: no download, no conversion, by name, by hub id, through load_checkpoint.
    _forbid_hub_and_conversion(monkeypatch)
    for m in (
        hub.from_pretrained("mamba_vision_T"),
        hub.from_pretrained("hf-hub:" + REPO),
        load_checkpoint(REPO),
        load_checkpoint(hub.resolve_weights(REPO)),
        mvj.create_model("mamba_vision_T", pretrained=True),
    ):
        np.testing.assert_array_equal(np.asarray(m(images)), want)
    assert hub.resolve_weights(REPO) == entry and hub.resolve_weights("w.safetensors") == "w.safetensors"


def test_cache_is_keyed_by_commit(hf_home, exports, images, monkeypatch):
    add_repo(hf_home / "hub", REPO, COMMIT_A, exports[0])
    a = np.asarray(hub.from_pretrained(REPO)(images))
    snap_b = add_repo(hf_home / "hub", REPO, COMMIT_B, exports[1])  # main moves on
    b = np.asarray(hub.from_pretrained(REPO)(images))
    np.testing.assert_array_equal(b, np.asarray(load_torch_checkpoint(snap_b)(images)))
    assert not np.array_equal(a, b)
    _forbid_hub_and_conversion(monkeypatch)
    np.testing.assert_array_equal(np.asarray(hub.from_pretrained(REPO, revision=COMMIT_A)(images)), a)


def test_num_classes_gives_a_fresh_head(hf_home, exports):
    add_repo(hf_home / "hub", REPO, COMMIT_A, exports[0])
    full = to_torch_state_dict(hub.from_pretrained(REPO))
    model = hub.from_pretrained(REPO, num_classes=3)
    sd = to_torch_state_dict(model)
    assert model.num_classes == 3 and sd["head.weight"].shape == (3, full["head.weight"].shape[1])
    for k in full:
        if not k.startswith("head."):
            np.testing.assert_array_equal(sd[k], full[k])
    # What the training config's init_from does with a hub id.
    again = to_torch_state_dict(load_checkpoint(REPO, "mamba_vision_T", num_classes=3))
    np.testing.assert_array_equal(
        again["levels.3.blocks.0.mlp.fc1.weight"], full["levels.3.blocks.0.mlp.fc1.weight"]
    )
    feats = hub.create_pretrained("mamba_vision_T", features_only=True, out_indices=(3,))
    assert len(feats(np.zeros((1, 32, 32, 3), np.float32))) == 1


def test_a_racing_writer_keeps_the_first_entry(tmp_path):
    final, tmp = tmp_path / "entry", tmp_path / ".tmp-entry"
    for d, text in ((final, "first"), (tmp, "second")):
        d.mkdir()
        (d / "mambavision_jax.json").write_text(text)
    publish_dir(tmp, final, complete="mambavision_jax.json")
    assert not tmp.exists() and (final / "mambavision_jax.json").read_text() == "first"


def test_publishing_over_an_incomplete_entry_fails_and_leaves_no_temporary(tmp_path):
    final, tmp = tmp_path / "entry", tmp_path / ".tmp-entry"
    (final / "half").mkdir(parents=True)  # no mambavision_jax.json: not a finished entry
    tmp.mkdir()
    (tmp / "mambavision_jax.json").write_text("new")
    with pytest.raises(OSError):
        publish_dir(tmp, final, complete="mambavision_jax.json")
    assert not tmp.exists() and not (final / "mambavision_jax.json").exists()


def _one_line_error(fn, match):
    with pytest.raises(CheckpointError, match=match) as e:
        fn()
    assert isinstance(e.value, hub.HubError) and "\n" not in str(e.value)
    return str(e.value)


def test_errors(hf_home, exports):
    _one_line_error(
        lambda: hub.from_pretrained("mamba_vision_TT"), r"unknown model .*did you mean mamba_vision_T"
    )
    msg = _one_line_error(lambda: hub.from_pretrained("nvidia/MambaVision-S-1K"), "HF_HUB_OFFLINE")
    assert "`hf download nvidia/MambaVision-S-1K config.json model.safetensors`" in msg
    _one_line_error(
        lambda: hub.from_pretrained("nvidia/MambaVision-T-1k-typo"), "did you mean nvidia/MambaVision-T-1K"
    )
    add_repo(
        hf_home / "hub",
        "someone/bert-base",
        COMMIT_A,
        {
            "config.json": json.dumps({"model_type": "bert"}).encode(),
            "model.safetensors": exports[0]["model.safetensors"],
        },
    )
    _one_line_error(
        lambda: hub.from_pretrained("someone/bert-base"),
        r"not a MambaVision repo \(config.json model_type='bert'",
    )
    add_repo(hf_home / "hub", REPO, COMMIT_A, exports[0])
    _one_line_error(lambda: hub.from_pretrained(REPO, revision="v9"), "HF_HUB_OFFLINE")
    _one_line_error(lambda: load_checkpoint(REPO, use_ema=True), "no EMA")
    _one_line_error(
        lambda: load_checkpoint(REPO, "mamba_vision_B"), "holds mamba_vision_T, not mamba_vision_B"
    )


@pytest.mark.parametrize(
    "spec, want",
    [
        ("nvidia/MambaVision-T-1K", True),
        ("hf-hub:org/x", True),
        ("user/my.model_v2", True),
        ("mamba_vision_T", False),
        ("ckpt/model.safetensors", False),
        ("runs/w.pth.tar", False),
        ("gs://bucket/ckpt", False),
        ("/abs/path", False),
        ("./rel/x", False),
        ("a/b/c", False),
        (Path("a/b"), False),
    ],
)
def test_is_hub_id(spec, want):
    assert hub.is_hub_id(spec) is want


def test_is_hub_id_prefers_an_existing_local_folder(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not hub.is_hub_id("org/name") and hub.resolve_weights("org/name") == "org/name"


def test_the_registry_carries_the_official_hub_ids():
    ids = [mvj.pretrained_cfg(n).hf_hub_id for n in mvj.list_models()]
    assert len(set(ids)) == 11 and all(hub.is_hub_id(i) and i.startswith("nvidia/MambaVision-") for i in ids)
    for n, i in zip(mvj.list_models(), ids):
        assert mvj.pretrained_cfg(n).url.startswith(f"https://huggingface.co/{i}/resolve/main/")


@pytest.mark.slow  # two fresh processes (about 40 s of CPU)
def test_predict_cli_takes_a_hub_id_offline(tmp_path, exports):
    """A fresh process, as a user runs it: HF_HOME and HF_HUB_OFFLINE come from the environment."""
    import subprocess
    import sys

    from PIL import Image

    home = tmp_path / "hf"
    add_repo(home / "hub", REPO, COMMIT_A, exports[0])
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(tmp_path / "x.png")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "MAMBAVISION_JAX"))
    }
    env.update(
        HF_HOME=str(home),
        HF_HUB_OFFLINE="1",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")]),
    )

    def run(weights):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "mambavision_jax.predict",
                str(tmp_path / "x.png"),
                "--weights",
                weights,
                "--json",
                "--image_size",
                "32",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    ok = run(REPO)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert len(json.loads(ok.stdout)[0]["predictions"]) == 5
    assert (home / "mambavision_jax" / "models--nvidia--MambaVision-T-1K" / COMMIT_A).is_dir()
    missing = run("nvidia/MambaVision-S-1K")
    assert missing.returncode != 0 and "hf download nvidia/MambaVision-S-1K" in missing.stderr
    assert str(home / "hub") in missing.stderr
