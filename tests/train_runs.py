"""Helpers for tests that run `train.py` as a user would (subprocesses)."""

import json
import os
import subprocess
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


def run_processes(cmd, n: int = 2, devices: int = 2, timeout: int = 600) -> list[str]:
    """`cmd(flags)` run as `n` local processes of one jax.distributed job (`flags`: each one's
    --coordinator / --num_processes / --process_id), `devices` host devices each; their outputs
    (stdout and stderr) once every process exited 0."""
    import portpicker

    port = portpicker.pick_unused_port()
    procs = [
        subprocess.Popen(
            cmd([f"--coordinator=127.0.0.1:{port}", f"--num_processes={n}", f"--process_id={i}"]),
            env=train_env(devices),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "".join(o[-3000:] for o in outs)
    return outs
