"""evaluate / predict / export through the real command line, as a user runs them: bad input gets
exit code 2 and one `error: ...` line naming the problem, no traceback, and no existing file is
changed; a training run's workdir is accepted as --weights."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import mambavision_jax as mvj

REPO = Path(__file__).resolve().parents[1]
ARCH = dict(dim=16, in_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=(2, 2, 2, 1))
NUM_CLASSES = 5
SIZE = 32


def _tiny(seed: int = 0):
    m = mvj.create_model("mamba_vision_T", num_classes=NUM_CLASSES, rngs=nnx.Rngs(seed), **ARCH)
    m.eval()
    return m


def make_training_run(workdir: Path, model, ema_scale: float = 0.5, step: int = 3) -> None:
    """A training workdir as train_and_evaluate leaves it (checkpoints/, best/, model_config.json),
    written with the training Checkpointer; its EMA weights are the weights * ema_scale."""
    from mambavision_jax.train.checkpoint import Checkpointer
    from mambavision_jax.train.state import TrainState, split_model

    _, params, stats, rngs = split_model(model)
    state = TrainState(
        step=jnp.int32(step),
        params=params,
        batch_stats=stats,
        rngs=rngs,
        opt_state={},
        ema_params=jax.tree.map(lambda x: x * ema_scale, params),
        ema_batch_stats=stats,
    )
    ckpt = Checkpointer(workdir)
    ckpt.save(step, state)
    ckpt.save_best(step, state, 50.0)
    ckpt.wait()
    ckpt.close()
    (workdir / "model_config.json").write_text(json.dumps(model.config.to_dict()))  # as the loop writes it
    # The training config (train.py writes it): its eval preprocessing is the run's.
    (workdir / "config.json").write_text(
        json.dumps({"data": {"image_size": SIZE, "crop_pct": 0.875, "crop_mode": ""}})
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One tiny checkpoint, a training run, images, a labels file, and a non-empty export folder."""
    root = tmp_path_factory.mktemp("cli")
    model = _tiny()
    mvj.save_torch_checkpoint(model, root / "w" / "model.safetensors")
    make_training_run(root / "run", model)
    nan_model = _tiny()
    nnx.update(nan_model, jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), nnx.state(nan_model, nnx.Param)))
    mvj.save_torch_checkpoint(nan_model, root / "nan" / "model.safetensors")
    (root / "garbage.safetensors").write_bytes(b"\x00" * 64)
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / "val" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                root / "val" / c / f"{i}.png"
            )
    (root / "bad_val" / "a").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "bad_val" / "a" / "0.png")
    (root / "bad_val" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "empty").mkdir()
    (root / "labels3.txt").write_text("x\ny\nz\n")
    (root / "bad.jpg").write_bytes(b"not an image")
    (root / "export_out").mkdir()
    (root / "export_out" / "keep.txt").write_text("user data")
    (root / "no_jax2onnx" / "jax2onnx").mkdir(parents=True)  # shadows the installed package
    (root / "no_jax2onnx" / "jax2onnx" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'jax2onnx'\")\n"
    )
    return root


def _run(module: str, args: list[str], cwd: Path, extra_path: Path | None = None):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(([str(extra_path)] if extra_path else []) + [str(REPO)]),
    )
    env.pop("MAMBAVISION_JAX_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", f"mambavision_jax.{module}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _hashes(root: Path) -> dict[str, str]:
    return {
        os.fspath(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


PNG = "val/a/0.png"
W = "w/model.safetensors"
SLOW = pytest.mark.slow  # each case is a fresh Python process (~3 s); the variants of a case are slow
# (command, arguments, words the error line must contain)
CASES = [
    ("predict", [PNG, "--weights", W, "--batch_size", "0"], ["--batch_size", ">= 1"]),
    pytest.param(
        "predict", [PNG, "--weights", W, "--batch_size", "-1"], ["--batch_size", ">= 1"], marks=SLOW
    ),
    ("predict", [PNG, "--weights", W, "--topk", "0"], ["--topk", ">= 1"]),
    pytest.param("predict", [PNG, "--weights", W, "--topk", "7"], ["--topk 7", "5 classes"], marks=SLOW),
    ("predict", [PNG, "--weights", W, "--image_size", "0"], ["--image_size", ">= 1"]),
    ("predict", [PNG, "--weights", W, "--crop_pct", "0"], ["--crop_pct", "> 0"]),
    ("predict", [PNG, "--weights", W, "--crop_pct", "2"], ["--crop_pct", "<= 1"]),
    pytest.param("predict", [PNG, "--weights", W, "--crop_pct", "nan"], ["--crop_pct"], marks=SLOW),
    ("predict", [PNG, "--weights", W, "--labels", "labels3.txt"], ["labels3.txt", "3 labels", "5 classes"]),
    pytest.param("predict", [PNG, "--weights", W, "--labels", "missing.txt"], ["missing.txt"], marks=SLOW),
    pytest.param("predict", [PNG, "--weights", "missing.safetensors"], ["missing.safetensors"], marks=SLOW),
    ("predict", [PNG, "--weights", "garbage.safetensors"], ["garbage.safetensors"]),
    ("predict", [PNG, "--weights", "nan/model.safetensors"], ["nan/model.safetensors"]),
    pytest.param("predict", ["bad.jpg", "--weights", W], ["bad.jpg"], marks=SLOW),
    pytest.param("predict", ["missing.png", "--weights", W], ["missing.png"], marks=SLOW),
    pytest.param(
        "predict", [PNG, "--weights", "run", "--checkpoint", "sometime"], ["--checkpoint"], marks=SLOW
    ),
    pytest.param("predict", [PNG, "--weights", "run", "--checkpoint", "99"], ["step 99"], marks=SLOW),
    ("evaluate", ["--weights", W, "--folder", "missing_dir"], ["--folder", "missing_dir"]),
    ("evaluate", ["--weights", W, "--folder", "empty"], ["empty", "class sub-folders"]),
    (
        "evaluate",
        ["--weights", W, "--folder", "bad_val", "--image_size", "32", "--no_progress"],
        ["broken.jpg", "--skip_unreadable"],
    ),
    pytest.param(
        "evaluate",
        ["--weights", W, "--folder", "val", "--json", "no_dir/out.json"],
        ["--json", "no_dir"],
        marks=SLOW,
    ),
    pytest.param(
        "evaluate", ["--weights", W, "--folder", "val", "--batch_size", "0"], ["--batch_size"], marks=SLOW
    ),
    ("export", ["--weights", W, "--out", "new_out", "--batch", "0"], ["--batch", ">= 1"]),
    pytest.param(
        "export", ["--weights", W, "--out", "new_out", "--batch", "-1"], ["--batch", ">= 1"], marks=SLOW
    ),
    ("export", ["--weights", W, "--out", "new_out", "--platforms", "bogus"], ["--platforms", "bogus"]),
    ("export", ["--weights", W, "--out", "export_out", "--jax"], ["export_out", "--overwrite"]),
]


def _case_id(case) -> str:
    module, args = (case.values if hasattr(case, "values") else case)[:2]
    return f"{module}:{' '.join(args[-2:])}"


@pytest.mark.parametrize("module,args,words", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_error_line(files, module, args, words):
    before = _hashes(files)
    out = _run(module, args, files)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len([line for line in lines if line.startswith("error:")]) == 1 and lines[-1].startswith(
        "error:"
    ), lines
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    assert "nan%" not in out.stdout
    assert _hashes(files) == before  # nothing written, nothing changed
    assert not (files / "new_out").exists()


def test_export_without_jax2onnx_names_the_install_command(files):
    before = _hashes(files)
    out = _run(
        "export", ["--weights", W, "--out", "new_out", "--onnx"], files, extra_path=files / "no_jax2onnx"
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "pip install --no-deps jax2onnx==0.17.1" in last
    assert _hashes(files) == before and not (files / "new_out").exists()


def test_debug_shows_the_traceback(files):
    out = _run("predict", [PNG, "--weights", W, "--labels", "labels3.txt", "--debug"], files)
    assert out.returncode != 0 and "Traceback" in out.stderr


# ----------------------------------------------------------------------------- training runs
def test_load_checkpoint_opens_a_training_run(files):
    model = _tiny()
    x = np.random.default_rng(1).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    raw = mvj.load_checkpoint(files / "run", ema=False)
    np.testing.assert_array_equal(np.asarray(raw(x)), np.asarray(model(x)))
    assert raw.checkpoint_info["step"] == 3 and raw.checkpoint_info["ema"] is False
    ema = mvj.load_checkpoint(files / "run")  # default: best, EMA weights
    nnx.update(model, jax.tree.map(lambda v: v * 0.5, nnx.state(model, nnx.Param)))
    np.testing.assert_array_equal(np.asarray(ema(x)), np.asarray(model(x)))
    assert ema.checkpoint_info["ema"] is True and ema.checkpoint_info["path"].endswith("best/3")
    latest = mvj.load_checkpoint(files / "run", which="latest", ema=False)
    assert latest.checkpoint_info["path"].endswith("checkpoints/3")
    with pytest.raises(ValueError, match="training runs"):
        mvj.load_checkpoint(files / W, which="latest")
    # Files go to the converters: the same weights as the training run's raw ones.
    np.testing.assert_array_equal(np.asarray(mvj.load_checkpoint(files / W)(x)), np.asarray(raw(x)))


def test_evaluate_and_predict_accept_a_training_run(files, tmp_path):
    out = _run(
        "evaluate",
        ["--weights", "run", "--folder", "val", "--no_progress", "--json", str(tmp_path / "s.json")],
        files,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    pre = summary["preprocessing"]  # the run's data config, the variant's crop mode
    assert (pre["image_size"], pre["crop_pct"], pre["crop_mode"]) == (SIZE, 0.875, "center")
    assert summary["n"] == 4 and summary["checkpoint"]["step"] == 3 and summary["checkpoint"]["ema"] is True
    assert 0 <= summary["top1"] <= 100 and np.isfinite(summary["loss"])
    out = _run("predict", [PNG, "--weights", "run", "--no_ema", "--topk", "2", "--json"], files)
    assert out.returncode == 0, out.stderr[-3000:]
    preds = json.loads(out.stdout)[0]["predictions"]
    assert len(preds) == 2 and all(0 <= p["prob"] <= 1 for p in preds)


@pytest.mark.slow
def test_evaluate_a_real_training_run_matches_its_last_eval(tmp_path):
    """train.py (the tiny test config, 2 steps), then `evaluate --weights WORKDIR` on the same split:
    the same top-1 / top-5 / loss as the run's own evaluation of its EMA weights."""
    from mambavision_jax.data import DIGITS_NAME, build_digits

    data = tmp_path / "tfds"
    build_digits(str(data))
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(REPO),
    )
    run = tmp_path / "run"
    train = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--config",
            str(REPO / "tests" / "small_train_config.py"),
            "--workdir",
            str(run),
            f"--config.data.dir={data}",
            "--config.total_steps=2",
            "--config.eval_every_steps=2",
            "--config.log_every_steps=1",
            "--config.eval_batch_size=64",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    last = [json.loads(line) for line in open(run / "metrics.jsonl") if '"eval"' in line][-1]
    out = _run(
        "evaluate",
        [
            "--weights",
            str(run),
            "--tfds",
            DIGITS_NAME,
            "--data_dir",
            str(data),
            "--image_size",
            "32",
            "--batch_size",
            "64",
            "--no_progress",
            "--json",
            "-",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    assert summary["checkpoint"]["ema"] is True and summary["checkpoint"]["step"] == 2
    assert summary["top1"] == pytest.approx(last["ema_top1"], abs=1e-4)
    assert summary["top5"] == pytest.approx(last["ema_top5"], abs=1e-4)
    assert summary["loss"] == pytest.approx(last["ema_loss"], rel=1e-4)
