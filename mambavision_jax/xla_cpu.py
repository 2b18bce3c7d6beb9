"""Faster XLA-CPU convolutions, as an explicit call: `use_eigen_convolutions()`.

jaxlib 0.10's XLA-CPU hands convolutions to YNNPACK, which ran MambaVision's 3x3 convolutions
2-2.5x slower than XLA's Eigen convolutions on the x86 CPUs measured (benchmarks/RESULTS.md). One
XLA flag keeps dots and reductions on YNNPACK and takes the convolutions off it. XLA reads
XLA_FLAGS once, when JAX creates its backends, so call this first thing in a program (the
package's command-line entry points do; importing `mambavision_jax` changes nothing):

    import mambavision_jax as mvj
    mvj.xla_cpu.use_eigen_convolutions()   # before the first jax.devices() / computation

The flag is added only if JAX's backends do not exist yet, the user has not set the option
themselves, and the jaxlib is one that has it (0.10.x: an unknown XLA flag is a fatal error).
MAMBAVISION_JAX_XLA_CPU_FLAGS=0 opts out.
"""

from __future__ import annotations

import os

EIGEN_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def use_eigen_convolutions() -> bool:
    """Add EIGEN_CONVOLUTIONS to XLA_FLAGS where it can still take effect; returns whether XLA's
    CPU convolutions are (or will be) Eigen's."""
    flags = os.environ.get("XLA_FLAGS", "")
    if (
        _OPTION not in flags
        and os.environ.get("MAMBAVISION_JAX_XLA_CPU_FLAGS", "1") != "0"
        and _flag_can_apply()
    ):
        os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
    return eigen_convolutions()


apply = use_eigen_convolutions  # the earlier name


def _flag_can_apply() -> bool:
    # No public API says whether the backends exist yet (jax.extend.backend.backends() would create
    # them, and then the flag would come too late): the private check, with a safe fallback.
    try:
        import jaxlib
        from jax._src import xla_bridge

        return jaxlib.__version__.startswith("0.10.") and not xla_bridge.backends_are_initialized()
    except Exception:  # noqa: BLE001 - a private API moved: leave XLA as it is
        return False


def eigen_convolutions() -> bool:
    """Whether XLA_FLAGS routes XLA-CPU convolutions to Eigen (read by `ops.conv`'s "auto")."""
    flags = os.environ.get("XLA_FLAGS", "")
    return _OPTION in flags and "-individual_convolution" in flags.split(_OPTION, 1)[1].split()[0]
