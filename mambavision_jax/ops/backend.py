"""Which backend the code being traced will run on, read by the `impl="auto"` dispatchers."""

from __future__ import annotations

import jax


def platform() -> str:
    """The default backend's platform ("cpu", "gpu", "tpu"), decided at trace time."""
    return jax.default_backend()
