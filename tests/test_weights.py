"""weights: one way in for weights (`weights.resolve` / `weights.load`, a hub id resolved once, a
training workdir accepted wherever weights are read), the package's import graph without cycles,
and the failures of the world (full disk, read-only target) as one `error:` line with exit code 4
and nothing left behind, checked through the real command line."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from cli_run import REPO, run_cli, tree_hashes
from test_config_roundtrip import CUSTOM, X, _custom_model, _training_run  # a run as the loop writes it

import mambavision_jax as mvj
from mambavision_jax import weights
from mambavision_jax.errors import EXIT_ENVIRONMENT, CheckpointError, UserError

sys.path.insert(0, str(REPO / "scripts"))
import import_graph  # noqa: E402


def _logits(model):
    return np.asarray(model(X))  # test_config_roundtrip's custom model: one input channel


# ------------------------------------------------------------------ the import graph
def test_cycle_finder_finds_a_cycle_and_the_package_has_none():
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph.import_graph()
    # lazy (function-level) imports count: weights imports the hub only inside resolve()
    assert "mambavision_jax.hub" in graph["mambavision_jax.weights"]
    assert "mambavision_jax.weights" in graph["mambavision_jax.train.loop"]
    assert import_graph.cycles(graph) == []
    assert import_graph.cycles(import_graph.layer_graph(graph)) == []  # the picture, layer by layer
    doc = import_graph.DOC.read_text()
    assert import_graph.render(doc, graph) == doc, "docs/architecture.md: run python scripts/import_graph.py"


@pytest.mark.parametrize("module", ["mambavision_jax.weights", "mambavision_jax.hub"])
def test_module_imports_alone(module):
    out = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        env={"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]


# ------------------------------------------------------------------ resolve / load
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One model written in every format, and a training run of it."""
    root = tmp_path_factory.mktemp("weights")
    model = _custom_model()
    mvj.save_torch_checkpoint(model, root / "t.pth.tar")
    (root / "hf").mkdir()
    mvj.save_torch_checkpoint(model, root / "hf" / "model.safetensors")
    mvj.convert.save_checkpoint(model, root / "orbax")
    _training_run(model, root / "run")
    return model, root


def test_resolve_says_the_kind_once_and_load_gives_the_same_model(files):
    model, root = files
    want = _logits(model)
    kinds = {
        "t.pth.tar": "pth",
        "hf/model.safetensors": "safetensors",
        "hf": "hf-folder",
        "orbax": "orbax",
        "run": "training-run",
    }
    for name, kind in kinds.items():
        source = weights.resolve(root / name, checkpoint="latest" if kind == "training-run" else "best")
        assert source.kind == kind and source.path == str(root / name)
        loaded, pre = weights.load(source)
        np.testing.assert_array_equal(_logits(loaded), want, err_msg=name)
        assert pre.image_size == 224 and pre.mean == (0.485, 0.456, 0.406)
    run = weights.resolve(root / "run", checkpoint=7)
    assert (run.step, Path(run.step_dir)) == (7, root / "run" / "checkpoints" / "7")


def test_checkpoint_and_ema_choices_are_checked_against_the_kind(files):
    _, root = files
    with pytest.raises(UserError, match="applies to training runs"):
        weights.resolve(root / "t.pth.tar", checkpoint="latest")
    with pytest.raises(CheckpointError, match="holds one set of weights"):
        weights.resolve(root / "hf", ema=True)
    with pytest.raises(FileNotFoundError, match="no best checkpoint.*--checkpoint latest"):
        weights.resolve(root / "run")  # the fabricated run has no best/ yet
    with pytest.raises(CheckpointError, match="kept no EMA"):
        weights.load(weights.resolve(root / "run", checkpoint="latest", ema=True))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        weights.resolve(root / "missing.pth.tar")


def test_a_new_source_kind_is_one_registration(files, monkeypatch):
    from mambavision_jax.convert import load_state_dict, to_torch_state_dict

    model, root = files
    np.savez(root / "w.npz", **to_torch_state_dict(model))

    def load_npz(source, *, name=None, num_classes=None, dtype=None, allow_nonfinite=False, **overrides):
        m = mvj.create_model("mamba_vision_T", dtype=dtype, **CUSTOM)
        load_state_dict(m, dict(np.load(source.path)))
        return m

    monkeypatch.setattr(weights, "KINDS", list(weights.KINDS))
    weights.register_kind(
        weights.SourceKind("npz", lambda p: p.endswith(".npz"), load_npz, description="an npz")
    )
    assert weights.resolve(root / "w.npz").kind == "npz"
    np.testing.assert_array_equal(_logits(weights.load(root / "w.npz").model), _logits(model))
    with pytest.raises(CheckpointError, match="an npz, which holds one set"):
        weights.resolve(root / "w.npz", ema=True)


def test_init_from_a_training_workdir(files, tmp_path):
    """--config.init_from=WORKDIR: the best checkpoint of the run, a new head."""
    import shutil

    from mambavision_jax.train.loop import init_from_checkpoint
    from mambavision_jax.train.optim import make_optimizer
    from mambavision_jax.train.sharding import make_mesh
    from mambavision_jax.train.state import create_train_state

    model, root = files
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    c = _run_config()
    c.init_from = str(run)
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):  # best/ is written at an eval
        _init(c, init_from_checkpoint, make_optimizer, make_mesh, create_train_state)
    shutil.copytree(run / "checkpoints" / "7", run / "best" / "7")  # as the first eval would save it
    lines = []
    new = _init(c, init_from_checkpoint, make_optimizer, make_mesh, create_train_state, lines)
    assert new.params["head"]["kernel"].shape == (16 * 8, 3)  # a fresh 3-class head
    np.testing.assert_array_equal(
        np.asarray(new.params["levels"][2]["blocks"][0]["mixer"]["A_log"][...]),
        np.asarray(model.levels[2].blocks[0].mixer.A_log[...]),
    )
    assert lines == [f"initialised from {run} (step 7 of its best)"]


def _run_config():
    import ml_collections

    from mambavision_jax.train.config import base_config

    c = base_config()
    c.model.name = "mamba_vision_T"
    c.model.overrides = ml_collections.ConfigDict({k: v for k, v in CUSTOM.items() if k != "num_classes"})
    c.model.drop_path_rate = -1.0
    return c


def _init(c, init_from_checkpoint, make_optimizer, make_mesh, create_train_state, lines=None):
    class Writer:
        def log(self, text):
            (lines if lines is not None else []).append(text)

    mesh = make_mesh(1, 1, jax.devices()[:1])
    state, shardings = create_train_state(c, 3, 1, make_optimizer(c, 4), mesh)
    return init_from_checkpoint(c, state, shardings, 3, 1, Writer())


# ------------------------------------------------------------------ a hub id, resolved once
def test_predict_with_a_hub_id_resolves_it_once(tmp_path, monkeypatch, capsys):
    from test_hub import COMMIT_A, REPO, _export, add_repo

    from mambavision_jax import cli, hub, predict

    home = _offline_hub(tmp_path, monkeypatch)
    add_repo(home / "hub", REPO, COMMIT_A, _export(_mkdir(tmp_path / "export"), seed=0))
    calls = []
    real = hub.fetch
    monkeypatch.setattr(hub, "fetch", lambda *a, **k: calls.append(a) or real(*a, **k))
    image = tmp_path / "cat.png"
    from PIL import Image

    Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save(image)
    for _ in range(2):  # converting on first use, then from the cache: one resolution each time
        calls.clear()
        assert cli.run(predict.main, [str(image), "--weights", REPO, "--topk", "2", "--json"]) == 0
        assert calls == [(REPO,)]
        preds = json.loads(capsys.readouterr().out)[0]["predictions"]
        assert len(preds) == 2 and abs(sum(p["prob"] for p in preds) - 1) < 1


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


def _offline_hub(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    from mambavision_jax import hub

    home = tmp_path / "hf"
    for var, value in (("HF_HOME", home), ("HF_HUB_CACHE", home / "hub"), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(var, str(value))
    monkeypatch.delenv(hub.CACHE_ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


# ------------------------------------------------------------------ through the command line
CONVERT, EVALUATE, EXPORT, PREDICT = (
    "mambavision_jax.convert",
    "mambavision_jax.evaluate",
    "mambavision_jax.export",
    "mambavision_jax.predict",
)


def test_convert_takes_a_training_workdir(files, tmp_path, capsys):
    """Row 6 of issue 18: `convert to-torch WORKDIR` and `convert info WORKDIR` read the run."""
    model, root = files
    out = tmp_path / "from_run.safetensors"
    r = run_cli(CONVERT, "to-torch", root / "run", out, "--checkpoint", "latest", "--no_ema")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(step 7 of" in r.stdout
    np.testing.assert_array_equal(_logits(mvj.load_checkpoint(out)), _logits(model))
    from mambavision_jax import cli
    from mambavision_jax.convert.__main__ import main as convert_main

    capsys.readouterr()
    assert cli.run(convert_main, ["info", str(root / "run"), "--checkpoint", "7"]) == 0
    out = capsys.readouterr().out
    assert "mamba_vision_T" in out and "step 7" in out, out


@contextlib.contextmanager
def _tmpfs(path: Path, size: str = "1m"):
    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (not root?): {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def assert_environment_error(result, *needles) -> str:
    """Exit code 4, no traceback, one `error:` line naming the problem."""
    err = result.stderr
    assert result.returncode == EXIT_ENVIRONMENT, (result.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


def test_full_disk_is_one_line_exit_4_and_leaves_nothing(tmp_path):
    """Row 9: .safetensors (5 MB) onto a 1 MB disk: refused whole, no empty folder left."""
    src = tmp_path / "hf"
    src.mkdir()
    mvj.save_torch_checkpoint(
        mvj.create_model("mamba_vision_T", dim=32, in_dim=16, depths=(1, 1, 1, 1), window_size=(2, 2, 2, 1)),
        src / "model.safetensors",
    )
    with _tmpfs(tmp_path / "disk") as disk:
        r = run_cli(CONVERT, "to-torch", src, disk / "sub" / "model.safetensors")
        assert_environment_error(r, "model.safetensors", "no space left")
        assert list(disk.iterdir()) == []


def test_read_only_target_is_refused_before_any_work(files, tmp_path):
    """Row 9: evaluate --json, export --jax, convert onto a read-only file system: exit 4, one
    line, before the evaluation (no top-1 printed) and before any export."""
    from PIL import Image

    _, root = files
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "x.png")
    with _tmpfs(tmp_path / "ro") as ro:
        (ro / "exports").mkdir()
        _read_only(ro)
        before = tree_hashes(ro)
        r = run_cli(
            EVALUATE, "--weights", root / "hf", "--folder", tmp_path / "imgs", "--json", ro / "x.json"
        )
        assert_environment_error(r, "--json", "read-only")
        assert "top-1" not in r.stdout
        r = run_cli(EXPORT, "--weights", root / "orbax", "--out", ro / "exports" / "t", "--jax")
        assert_environment_error(r, "--out", "read-only")
        r = run_cli(CONVERT, "to-jax", root / "t.pth.tar", ro / "new")
        assert_environment_error(r, "read-only")
        assert tree_hashes(ro) == before


def test_predict_with_a_read_only_hub_cache_is_one_line(tmp_path):
    """Row 9: the hub files are in a read-only cache and not converted yet: the conversion cannot be
    stored, which is the environment's refusal (exit 4), not a traceback."""
    from test_hub import COMMIT_A, REPO, _export, add_repo

    image = tmp_path / "cat.png"
    from PIL import Image

    Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save(image)
    files = _export(_mkdir(tmp_path / "export"), seed=0)
    with _tmpfs(tmp_path / "hf", size="8m") as home:
        add_repo(home / "hub", REPO, COMMIT_A, files)
        _read_only(home)
        r = run_cli(
            PREDICT,
            image,
            "--weights",
            REPO,
            HF_HOME=str(home),
            HF_HUB_CACHE=str(home / "hub"),
            HF_HUB_OFFLINE="1",
        )
        assert_environment_error(r, "read-only", "mambavision_jax")


@pytest.mark.slow
def test_train_init_from_a_training_workdir(tmp_path, digits_dir):
    """`train.py --config.init_from=WORKDIR` (issue 18, row 6): a second run starts from the first
    run's best checkpoint, and says so."""
    from train_runs import train_cmd, train_env

    common = [f"--config.data.dir={digits_dir}", "--config.eval_every_steps=2", "--config.log_every_steps=1"]
    first, second = tmp_path / "first", tmp_path / "second"
    r = subprocess.run(
        train_cmd(first, *common, "--config.total_steps=2"),
        env=train_env(1),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (first / "best" / "2").is_dir()
    r = subprocess.run(
        train_cmd(second, *common, "--config.total_steps=1", f"--config.init_from={first}"),
        env=train_env(1),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"initialised from {first} (step 2 of its best)" in r.stdout + r.stderr
