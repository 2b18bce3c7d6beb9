"""XLA-CPU settings for fast convolutions, applied when `mambavision_jax` is imported.

jaxlib 0.10's XLA-CPU hands convolutions to YNNPACK, which ran MambaVision's 3x3 convolutions
2-2.5x slower than XLA's Eigen convolutions on the x86 CPUs measured here (MambaVision-T
inference, batch 8, 224: ~750 -> ~515 ms per step, float32, 2 cores; the patch embedding alone
32 -> 13 ms). One flag keeps dots and reductions on YNNPACK and takes the convolutions off it.

XLA reads XLA_FLAGS once, when JAX creates its backends, so the flag is added only if that has
not happened yet, the user has not set the option themselves, and the jaxlib is one that has the
flag (0.10.x: an unknown XLA flag is a fatal error). Opt out with MAMBAVISION_JAX_XLA_CPU_FLAGS=0.
"""
from __future__ import annotations

import os

EIGEN_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_state = {"eigen_convolutions": False}


def apply() -> bool:
    """Add EIGEN_CONVOLUTIONS to XLA_FLAGS where it can still take effect; returns whether XLA's
    CPU convolutions are (or will be) Eigen's."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _OPTION in flags:  # the user's own choice stands
        _state["eigen_convolutions"] = "-individual_convolution" in flags
    elif os.environ.get("MAMBAVISION_JAX_XLA_CPU_FLAGS", "1") != "0" and _flag_can_apply():
        os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
        _state["eigen_convolutions"] = True
    return _state["eigen_convolutions"]


def _flag_can_apply() -> bool:
    try:
        import jaxlib
        from jax._src import xla_bridge

        return jaxlib.__version__.startswith("0.10.") and not xla_bridge.backends_are_initialized()
    except Exception:  # noqa: BLE001 - a private API moved: leave XLA as it is
        return False


def eigen_convolutions() -> bool:
    """Whether `apply` routed XLA-CPU convolutions to Eigen (read by the models' conv hook)."""
    return _state["eigen_convolutions"]
