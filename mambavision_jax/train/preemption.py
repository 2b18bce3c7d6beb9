"""Preemption: on SIGTERM (spot / preemptible VMs, maintenance events, Kubernetes) every process
stops after the same step, the loop writes a checkpoint there (with each host's data-iterator
position) and the run exits with `EXIT_PREEMPTED`; the same command resumes from that step.

How the processes agree on the step:
- several processes with JAX's preemption service (started by `jax.distributed.initialize`, on by
  default): the coordination service hears the SIGTERM of any one process and picks a step that
  every process reaches (`multihost_utils.reached_preemption_sync_point`, which orbax uses too);
- several processes without it (`jax_enable_preemption_service=False`): a SIGTERM handler sets a
  flag and every `sync_every` steps the processes all-gather their flags; all stop at the first
  such step where any flag is set;
- one process: the flag alone.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

# 128 + SIGTERM: what schedulers already read as "terminated, may be retried"; the message on
# stderr tells a clean preemption checkpoint apart from a process killed by the signal.
EXIT_PREEMPTED = 143


class Preempted(Exception):
    """Raised by the training loop once the preemption checkpoint at `step` is written."""

    def __init__(self, step: int, checkpoint_dir: str):
        self.step, self.checkpoint_dir = step, checkpoint_dir
        super().__init__(
            f"preempted (SIGTERM): stopped after step {step} and wrote its checkpoint to "
            f"{checkpoint_dir}; run the same command to resume from it"
        )


def _jax_service_running() -> bool:
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover - private module moved
        return False
    return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


class PreemptionWatcher:
    """`reached(step)` is called after every step, by every process, with the same step; it is True
    on every process at the same step once any process got SIGTERM."""

    def __init__(self, sync_every: int = 10):
        self.sync_every = max(1, sync_every)
        self._flag = False
        self._previous = None
        self._jax = jax.process_count() > 1 and _jax_service_running()
        if self._jax:
            return  # JAX's notifier owns SIGTERM
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    @property
    def mechanism(self) -> str:
        if self._jax:
            return "jax preemption service"
        return (
            "SIGTERM flag"
            if jax.process_count() == 1
            else f"SIGTERM flag, all-gathered every {self.sync_every} steps"
        )

    def _on_sigterm(self, signum, frame) -> None:
        self._flag = True

    def reached(self, step: int) -> bool:
        if self._jax:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        if jax.process_count() == 1:
            return self._flag
        if step % self.sync_every:
            return False
        flags = multihost_utils.process_allgather(np.int32(self._flag))
        return bool(np.any(flags))

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
