"""Preemption: on SIGTERM (spot / preemptible VMs, maintenance events, Kubernetes) every process
stops after the same step, the loop writes a checkpoint there (with each host's data-iterator
position) and the run exits with `EXIT_PREEMPTED`; the same command resumes from that step.

How the processes agree on the step:
- several processes with JAX's preemption service (started by `jax.distributed.initialize`, on by
  default): the coordination service hears the SIGTERM of any one process and picks a step that
  every process reaches (`multihost_utils.reached_preemption_sync_point`, which orbax uses too);
- several processes without it (`jax_enable_preemption_service=False`): a SIGTERM handler sets a
  flag and every `sync_every` steps (default 10; $MAMBAVISION_JAX_PREEMPTION_SYNC_EVERY) the
  processes all-gather their flags through the coordination service's key-value store (host to
  host: no device collective, so the step pipeline is not drained and no new collective group has
  to meet within the CPU collectives' 30 s); all stop at the first such step where any flag is set;
- one process: the flag alone.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

# 143 = 128 + SIGTERM: what schedulers read as "terminated, may be retried"; the message on stderr
# tells a clean preemption checkpoint apart from a process killed by the signal.
from mambavision_jax.errors import EXIT_PREEMPTED  # noqa: F401  (re-exported: train.py, tests)
from mambavision_jax.train.multihost import coordination_client

SYNC_EVERY_ENV = "MAMBAVISION_JAX_PREEMPTION_SYNC_EVERY"
_EXCHANGE_TIMEOUT_MS = 30 * 60 * 1000  # a peer may be that far behind (evaluating, checkpointing)
_WATCHERS = itertools.count()  # watchers are made in the same order on every process


class Preempted(Exception):
    """Raised by the training loop once the preemption checkpoint at `step` is written."""

    def __init__(self, step: int, checkpoint_dir: str):
        self.step, self.checkpoint_dir = step, checkpoint_dir
        super().__init__(
            f"preempted (SIGTERM): stopped after step {step} and wrote its checkpoint to "
            f"{checkpoint_dir}; run the same command to resume from it"
        )


def _sync_every_from_env() -> int:
    text = os.environ.get(SYNC_EVERY_ENV, "10")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${SYNC_EVERY_ENV}={text!r}: must be a whole number of steps >= 1")
    return value


def _jax_service_running() -> bool:
    # No public API says whether JAX's preemption sync manager runs (jax.distributed.is_initialized
    # is true without it); reached_preemption_sync_point fails where it does not.
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover - private module moved
        return False
    return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


class PreemptionWatcher:
    """`reached(step)` is called after every step, by every process, with the same step; it is True
    on every process at the same step once any process got SIGTERM."""

    def __init__(self, sync_every: int | None = None):
        self.sync_every = max(1, sync_every if sync_every is not None else _sync_every_from_env())
        self._prefix = f"mambavision_jax_preemption/{next(_WATCHERS)}"
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
            + (" through the coordination service" if coordination_client() is not None else "")
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
        return self._any_flag(step)

    def _any_flag(self, step: int) -> bool:
        """Every process's flag at `step` (each sends the flag it had when it reached the step, so
        all decide on the same values)."""
        client = coordination_client()
        if client is None:  # several processes without jax.distributed: a device all-gather
            return bool(np.any(multihost_utils.process_allgather(np.int32(self._flag))))
        me, key = jax.process_index(), f"{self._prefix}/{step}"
        client.key_value_set(f"{key}/{me}", "1" if self._flag else "0")
        flags = [
            client.blocking_key_value_get(f"{key}/{p}", _EXCHANGE_TIMEOUT_MS)
            for p in range(jax.process_count())
        ]
        # Every process has read the flags of two exchanges ago (it wrote the last one after): drop ours.
        old = step - 2 * self.sync_every
        if old > 0:
            client.key_value_delete(f"{self._prefix}/{old}/{me}")
        return "1" in flags

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
