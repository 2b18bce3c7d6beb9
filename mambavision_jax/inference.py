"""The inference API in one import, for code written against it before it was split along its jobs:

- `Preprocessing`, `resolve_preprocessing`: `mambavision_jax.preprocessing`;
- `Runner`, `NonFiniteOutputError`: `mambavision_jax.runner`;
- `load_checkpoint`, and everything about reading weights: `mambavision_jax.weights`;
- the command lines' shared flags: `mambavision_jax.cli`.
"""

from mambavision_jax.preprocessing import Preprocessing, resolve_preprocessing
from mambavision_jax.runner import NonFiniteOutputError, Runner
from mambavision_jax.weights import load_checkpoint

__all__ = ["NonFiniteOutputError", "Preprocessing", "Runner", "load_checkpoint", "resolve_preprocessing"]
