"""Helpers for tests that run `train.py` as a user would (subprocesses)."""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / f"mambavision_jax_test_cache_{os.getuid()}"


def compile_cache_vars() -> dict[str, str]:
    """Environment variables that make a subprocess (train.py, a notebook kernel) use one persistent
    XLA compilation cache shared by every run: the runs compile the same steps."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(CACHE),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def train_env(devices: int, **extra) -> dict:
    """The environment of a train.py subprocess with `devices` host devices."""
    return {
        **os.environ,
        **compile_cache_vars(),
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        **extra,
    }


def train_cmd(workdir, *overrides) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "tests" / "small_train_config.py"),
        "--workdir",
        str(workdir),
        *overrides,
    ]


def train_losses(jsonl_text: str) -> dict[int, float]:
    """{step: loss} of a metrics.jsonl (a later row of a step, written after a resume, wins)."""
    rows = [json.loads(line) for line in jsonl_text.splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def run_losses(workdir) -> dict[int, float]:
    """{step: loss} of a local run's metrics.jsonl."""
    return train_losses((Path(workdir) / "metrics.jsonl").read_text())


def read_until(proc, prefix: str, seen: list[str]) -> str | None:
    """Read `proc`'s stdout lines (kept in `seen`) until one starts with `prefix`; None at EOF."""
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return line
    return None
