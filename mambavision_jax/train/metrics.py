"""Progress lines, `metrics.jsonl` and TensorBoard summaries (process 0 writes, everyone computes)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax


class MetricWriter:
    def __init__(self, workdir: str | Path, total_steps: int):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self._tb = None
        if self.enabled:
            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(str(workdir / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                pass

    def write(self, step: int, kind: str, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "kind": kind, "time": round(time.time(), 3),
               **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))

    def log(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


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
