"""Running a command line as a user would (a fresh `python -m ...` process) and checking that a
refusal left every file as it was."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    env.pop("MAMBAVISION_JAX_DEBUG", None)
    env.update(extra)
    return env


def run_cli(module: str, *args, cwd=None, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen_cli(module: str, *args, cwd=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tree_hashes(root: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (symlinks not followed; a link is hashed
    by its target's name), and every folder (hashed as 'dir'), hidden ones included: a refused
    command must change nothing, not even leave a temporary file behind."""
    root = Path(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            out[str(p.relative_to(root))] = "link:" + os.readlink(p) if p.is_symlink() else "dir"
        for f in filenames:
            p = Path(dirpath, f)
            if p.is_symlink():
                out[str(p.relative_to(root))] = "link:" + os.readlink(p)
            elif not p.is_file():  # a pipe or device: never read (it could block)
                out[str(p.relative_to(root))] = f"special:{p.lstat().st_mode:o}"
            else:
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def startup_noise(line: str) -> bool:
    """A line the CUDA plugin (the aot extra) writes to stderr when JAX starts on a machine without
    a GPU (its driver probe, before any of our code runs): not the command's own output."""
    return "cudart_stub" in line or line.startswith("WARNING: All log messages before absl")


def command_stderr(result: subprocess.CompletedProcess) -> str:
    """The command's own stderr: `startup_noise` lines left out."""
    return "".join(ln for ln in result.stderr.splitlines(keepends=True) if not startup_noise(ln))


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, no traceback, and one line naming the problem: `error: ...` from the command,
    or argparse's `usage:` lines followed by one `prog: error: ...` line."""
    err = command_stderr(result)
    assert result.returncode == 2, (result.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    error_lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(error_lines) == 1, err[-3000:]
    line = error_lines[0]
    if not line.startswith("error: "):  # argparse: the usage block, then "prog: error: ..."
        assert err.startswith("usage:") and ": error: " in line, err
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    return line
