"""Progress lines, `metrics.jsonl` and TensorBoard summaries (process 0 writes, everyone computes).

The workdir may be local or an object store (gs://...), which has no append and no rename:
- `metrics.jsonl` is kept in memory (with the rows of earlier runs in this workdir) and the whole
  file is replaced atomically (`paths.atomic_write_text`) at every write, so a reader or a killed
  run sees all rows up to some point, never a torn line.
- TensorBoard event files are written by tensorboardX to a local directory: the workdir's own
  `tensorboard/` when it is local, else a temporary directory whose event files are copied to
  `workdir/tensorboard/` (one object per event file, replaced whole) at every flush.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import jax

from mambavision_jax.paths import PathLike, as_path, atomic_write_bytes, atomic_write_text, is_remote


class MetricWriter:
    def __init__(self, workdir: PathLike, total_steps: int, tb_flush_secs: float = 60.0):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self._tb = None
        if not self.enabled:
            return
        workdir = as_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl_path = workdir / "metrics.jsonl"
        self._jsonl = self._jsonl_path.read_text() if self._jsonl_path.exists() else ""
        if self._jsonl and not self._jsonl.endswith("\n"):
            self._jsonl += "\n"
        self._tb_remote = workdir / "tensorboard" if is_remote(workdir) else None
        self._tb_mirrored: dict[str, int] = {}
        self._tb_flush_secs, self._tb_last_flush = tb_flush_secs, time.monotonic()
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            return
        local = tempfile.mkdtemp(prefix="mv_tb_") if self._tb_remote else str(workdir / "tensorboard")
        self._tb_local = Path(local)
        # A resumed run writes a new event file; the suffix keeps two runs started within the
        # same second (tensorboardX names files by the second) from replacing each other's.
        self._tb = SummaryWriter(local, filename_suffix=f".{uuid.uuid4().hex[:8]}")

    def write(self, step: int, kind: str, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {
            "step": int(step),
            "kind": kind,
            "time": round(time.time(), 3),
            **{k: float(v) for k, v in metrics.items()},
        }
        self._jsonl += json.dumps(row) + "\n"
        atomic_write_text(self._jsonl_path, self._jsonl)
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))
            if kind != "train" or time.monotonic() - self._tb_last_flush > self._tb_flush_secs:
                self.flush_tensorboard()

    def flush_tensorboard(self) -> None:
        """Flush the event files and, for a remote workdir, copy the ones that grew."""
        if not self.enabled or self._tb is None:
            return
        self._tb.flush()
        self._tb_last_flush = time.monotonic()
        self._mirror_tensorboard()

    def _mirror_tensorboard(self) -> None:
        if self._tb_remote is None:
            return
        for f in sorted(self._tb_local.rglob("*")):
            size = f.stat().st_size if f.is_file() else None
            rel = f.relative_to(self._tb_local).as_posix()
            if size is None or self._tb_mirrored.get(rel) == size:
                continue
            dst = self._tb_remote / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dst, f.read_bytes())
            self._tb_mirrored[rel] = size

    def log(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)

    def close(self) -> None:
        if self.enabled and self._tb is not None:
            self._tb.close()
            self._mirror_tensorboard()
            if self._tb_remote is not None:
                shutil.rmtree(self._tb_local, ignore_errors=True)
            self._tb = None


class Throughput:
    """images/s and ETA over the steps since the last report."""

    def __init__(self, start_step: int, total_steps: int, batch_size: int):
        self.t0, self.s0 = time.perf_counter(), start_step
        self.total, self.batch = total_steps, batch_size

    def report(self, step: int) -> tuple[float, str]:
        now = time.perf_counter()
        dt, ds = now - self.t0, step - self.s0
        rate = ds / dt if dt > 0 else 0.0
        self.t0, self.s0 = now, step
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        return rate * self.batch, _fmt(eta)

    def restart(self, step: int) -> None:
        """Exclude eval / checkpoint time from the training throughput."""
        self.t0, self.s0 = time.perf_counter(), step


def _fmt(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
