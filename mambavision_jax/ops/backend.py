"""Which backend the code being traced will run on, read by the `impl="auto"` dispatchers."""

from __future__ import annotations

import contextlib
import contextvars

import jax

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("mambavision_jax_target", default=None)


def platform() -> str:
    """The platform ("cpu", "gpu", "tpu") the code being traced will run on: the default backend's,
    decided at trace time, or the one `target_platform` names."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def target_platform(name: str):
    """Trace for `name`'s devices rather than the default backend's: a program compiled here for
    a chip this process does not have (`mambavision_jax.aot`) takes that chip's "auto" choices."""
    token = _TARGET.set(name)
    try:
        yield
    finally:
        _TARGET.reset(token)
