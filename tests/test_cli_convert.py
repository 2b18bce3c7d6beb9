"""`python -m mambavision_jax.convert` run as a user would: every refusal is one `error:` line with
exit code 2, no traceback, and leaves every file as it was; --overwrite replaces atomically (a
SIGKILL mid-write leaves the old output loadable); outputs are 0644."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from cli_run import assert_user_error, popen_cli, run_cli, tree_hashes

CONVERT = "mambavision_jax.convert"
# Reduced T (official head counts, so config.json describes it fully); ~5 MB of weights.
TINY = dict(dim=32, in_dim=16, depths=(1, 1, 1, 1), window_size=(2, 2, 2, 1), num_classes=10)
BROKEN_KEY = "model.levels.0.blocks.0.conv1.weight"


def _hf_folder(folder: Path, sd: dict, config: dict) -> None:
    from safetensors.numpy import save_file

    folder.mkdir()
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace of checkpoints, written once: a Hugging Face folder of the tiny model, an
    existing .pth.tar, another model's folder, and copies with int32 / bool / NaN / inf weights."""
    from safetensors.numpy import load_file

    import mambavision_jax as mvj

    root = tmp_path_factory.mktemp("convert_cli")
    model = mvj.create_model("mamba_vision_T", **TINY)
    (root / "hf").mkdir()
    mvj.save_torch_checkpoint(model, root / "hf" / "model.safetensors")
    mvj.save_torch_checkpoint(model, root / "out.pth.tar")
    sd = load_file(root / "hf" / "model.safetensors")
    config = json.loads((root / "hf" / "config.json").read_text())
    assert BROKEN_KEY in sd
    _hf_folder(root / "other", sd, {**config, "num_classes": 5, "depths": [1, 1, 2, 1]})
    for name, breaks in {
        "int32": lambda a: (a * 100).astype(np.int32),
        "bool": lambda a: a > 0,
        "nan": lambda a: np.where(a > 0, np.nan, a).astype(a.dtype),
        "inf": lambda a: np.full_like(a, np.inf),
    }.items():
        _hf_folder(root / name, {**sd, BROKEN_KEY: breaks(sd[BROKEN_KEY])}, config)
    (root / "truncated.safetensors").write_bytes((root / "hf" / "model.safetensors").read_bytes()[:4096])
    (root / "existing_dir").mkdir()
    (root / "a_file").write_text("not a folder\n")
    os.mkfifo(root / "a_pipe")  # stands for /dev/null: an output that must not become a file
    return root


REFUSALS = [
    # (arguments, words the error line must contain)
    (["to-torch", "hf", "out.pth.tar"], ["out.pth.tar exists", "--overwrite"]),
    (["to-torch", "hf", "existing_dir"], ["existing_dir is a folder"]),
    (["to-torch", "hf", "other/x.safetensors"], ["config.json describes another model", "--overwrite"]),
    (["to-torch", "hf", "a_file/x.pth.tar"], ["a_file is a file"]),
    (["to-torch", "missing.pth.tar", "new.pth.tar"], ["no such checkpoint", "missing.pth.tar"]),
    (["to-jax", "hf", "existing_dir"], ["existing_dir exists"]),
    (["to-jax", "hf", "new_dir", "--use-ema"], ["--use-ema", "hugging face folder"]),
    (["to-jax", "hf/model.safetensors", "new_dir", "--use-ema"], ["--use-ema", ".safetensors file"]),
    (["to-jax", "hf", "new_dir", "--num-classes", "-5"], ["--num-classes", ">= 1"]),
    (["to-jax", "hf", "new_dir", "--num-classes", "0"], ["--num-classes", ">= 1"]),
    (["to-jax", "hf", "new_dir", "--num-classes", "ten"], ["--num-classes", "integer"]),
    (["to-jax", "hf", "new_dir", "--num-classes", "99999999999999"], ["--num-classes", "<= 1000000"]),
    (["to-torch", "hf", "a_pipe", "--overwrite"], ["a_pipe", "not a regular file"]),
    (["to-torch", "hf", ""], ["OUT is an empty path"]),
    (["info", ""], ["SRC is an empty path"]),
    (["info", "existing_dir"], ["no model.safetensors"]),
    (["info", "hf", "--model", "mamba_vision_Q"], ["unknown --model", "mamba_vision_T"]),
    (["info", "int32"], ["floating-point", BROKEN_KEY, "int32"]),
    (["info", "bool"], ["floating-point", BROKEN_KEY, "bool"]),
    (["to-jax", "nan", "new_dir"], ["NaN or inf", BROKEN_KEY, "--allow-nonfinite"]),
    (["to-torch", "inf", "new.pth.tar"], ["NaN or inf", BROKEN_KEY, "--allow-nonfinite"]),
    (["to-torch", "int32", "new.pth.tar", "--allow-nonfinite"], ["floating-point", "int32"]),
    (["info", "truncated.safetensors"], ["truncated.safetensors", "not a readable safetensors"]),
    (["bogus-command", "hf"], ["invalid choice"]),
]


@pytest.mark.parametrize("args,needles", REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_refusal_is_one_line_and_changes_nothing(ws, args, needles):
    before = tree_hashes(ws)
    result = run_cli(CONVERT, *args, cwd=ws)
    assert_user_error(result, *needles)
    assert tree_hashes(ws) == before


def test_debug_shows_the_traceback(ws):
    result = run_cli(CONVERT, "info", "int32", "--debug", cwd=ws)
    assert result.returncode != 0 and "Traceback" in result.stderr and "CheckpointError" in result.stderr


def test_allow_nonfinite_loads_nan_weights(ws):
    result = run_cli(CONVERT, "info", "nan", "--allow-nonfinite", cwd=ws)
    assert result.returncode == 0, result.stderr
    assert "mamba_vision_T" in result.stdout


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_to_torch_overwrite_replaces_file_with_mode_0644(ws, tmp_path):
    target = tmp_path / "model.pth.tar"
    target.write_bytes(b"old contents")
    result = run_cli(CONVERT, "to-torch", ws / "hf", target, "--overwrite")
    assert result.returncode == 0, result.stderr
    import torch

    sd = torch.load(target, weights_only=True)["state_dict"]
    assert "levels.0.blocks.0.conv1.weight" in sd
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    _no_temporaries(tmp_path)


def test_safetensors_into_another_models_folder_with_overwrite_replaces_both(ws, tmp_path):
    folder = tmp_path / "folder"
    shutil.copytree(ws / "other", folder)
    result = run_cli(CONVERT, "to-torch", ws / "hf", folder / "model.safetensors", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert json.loads((folder / "config.json").read_text()) == json.loads(
        (ws / "hf" / "config.json").read_text()
    )
    assert (folder / "model.safetensors").read_bytes() == (ws / "hf" / "model.safetensors").read_bytes()
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name
    _no_temporaries(folder)


def test_to_jax_writes_a_complete_folder_and_no_temporaries(ws, tmp_path):
    result = run_cli(CONVERT, "to-jax", ws / "hf", tmp_path / "orbax")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "orbax" / "mambavision_jax.json").is_file() and (tmp_path / "orbax" / "state").is_dir()
    _no_temporaries(tmp_path)


def test_sigkill_during_to_torch_overwrite_leaves_the_old_file(ws, tmp_path):
    """SIGSTOP the converter once its temporary file exists (it is then mid-write or about to
    rename); if the temporary is still there the rename has not happened, and SIGKILL must leave
    the previous output byte for byte. Retried if the write finished between two polls."""
    import torch

    target = tmp_path / "model.pth.tar"
    shutil.copy(ws / "out.pth.tar", target)
    before = tree_hashes(tmp_path)[target.name]
    for _ in range(5):
        proc = popen_cli(CONVERT, "to-torch", ws / "hf", target, "--overwrite")
        caught = False
        while proc.poll() is None:
            if any(p.name.startswith(".model.pth.tar.tmp-") for p in tmp_path.iterdir()):
                proc.send_signal(signal.SIGSTOP)
                caught = any(p.name.startswith(".model.pth.tar.tmp-") for p in tmp_path.iterdir())
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        if caught:
            break
        shutil.copy(ws / "out.pth.tar", target)  # the run finished first: restore and retry
    assert caught, "the converter finished writing before it could be stopped, five times"
    assert proc.returncode == -signal.SIGKILL
    assert tree_hashes(tmp_path)[target.name] == before
    assert "state_dict" in torch.load(target, weights_only=True)


def test_readers_refuse_bad_weights_in_the_api(ws):
    """The same checks in the Python API, with the opt-in for NaN / inf."""
    from mambavision_jax.convert import CheckpointError, read_state_dict

    for name in ("int32", "bool", "nan", "inf"):
        with pytest.raises(CheckpointError, match=BROKEN_KEY.removeprefix("model.")):
            read_state_dict(ws / name)
    sd, _ = read_state_dict(ws / "nan", allow_nonfinite=True)
    assert np.isnan(sd[BROKEN_KEY.removeprefix("model.")]).any()
    with pytest.raises(CheckpointError, match="floating-point"):
        read_state_dict(ws / "int32", allow_nonfinite=True)
