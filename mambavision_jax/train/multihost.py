"""Keeping several processes in step: a long coordination barrier, and compile-then-align for
jitted functions whose collectives must start together."""

from __future__ import annotations

import jax

__all__ = ["CompileThenAlign", "on_process_zero", "wait_for_all_processes"]


def coordination_client():
    """The coordination-service client of `jax.distributed.initialize`, or None. No public API
    gives it (jax.distributed has initialize / is_initialized / shutdown only;
    jax.experimental.multihost_utils uses this same private global)."""
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover - private module moved
        return None
    return getattr(distributed.global_state, "client", None)


def wait_for_all_processes(name: str, timeout_s: int = 1800) -> None:
    """A coordination-service barrier with a long timeout. The first cross-process collective (orbax's
    barrier) sets up the CPU collectives with a 30 s rendezvous: a host still compiling or reading
    the data set info that much later would fail the run."""
    if jax.process_count() == 1:
        return
    client = coordination_client()
    if client is not None:
        client.wait_at_barrier(name, timeout_s * 1000)


def on_process_zero(name: str, fn, timeout_s: int = 1800):
    """`fn()` run by process 0 alone (taking the workdir's lock); every process returns its result
    or raises its refusal (UserError / EnvironmentFailure, same message), so that a refused run
    stops on every host instead of leaving the others waiting at the next barrier."""
    from mambavision_jax.errors import EnvironmentFailure, UserError

    if jax.process_count() == 1:
        return fn()
    client = coordination_client()
    key = f"mambavision_jax_outcome/{name}"
    if jax.process_index() == 0:
        try:
            result = fn()
        except UserError as e:
            client.key_value_set(key, f"user\t{e}")
            raise
        except BaseException as e:
            client.key_value_set(key, f"env\t{e}" if isinstance(e, EnvironmentFailure) else f"bug\t{e!r}")
            raise
        client.key_value_set(key, "ok\t")
        return result
    kind, message = client.blocking_key_value_get(key, timeout_s * 1000).split("\t", 1)
    if kind == "ok":
        return None
    raise {"user": UserError, "env": EnvironmentFailure}.get(kind, RuntimeError)(
        message if kind != "bug" else f"process 0 failed: {message}"
    )


class CompileThenAlign:
    """Several processes: compile a jitted function ahead of its first call, then wait for every
    process before running it, so that its collectives start together however unequal the compile
    times (the CPU collectives give a peer 30 s)."""

    def __init__(self, jitted, name: str):
        self.jitted, self.name, self.compiled = jitted, name, None

    def __call__(self, *args):
        if self.compiled is None:
            self.compiled = self.jitted.lower(*args).compile()
            wait_for_all_processes(f"mambavision_jax_{self.name}_compiled")
        return self.compiled(*args)
