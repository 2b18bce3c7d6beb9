"""The single ``selective_scan`` entry point and its implementation registry."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mambavision_jax.ops import scan_xla

__all__ = ["selective_scan", "SCAN_IMPLS", "default_impl"]


def _pallas_gpu(*args, interpret=False):
    from mambavision_jax.ops import pallas_gpu  # lazy: pallas/triton import cost

    return pallas_gpu.selective_scan(*args, interpret=interpret)


def _pallas_tpu(*args, interpret=False):
    from mambavision_jax.ops import pallas_tpu

    return pallas_tpu.selective_scan(*args, interpret=interpret)


# name -> callable(u, delta, A, B, C, D, delta_bias, delta_softplus, *, interpret)
SCAN_IMPLS = {
    "sequential": lambda *a, interpret=False: scan_xla.selective_scan_sequential(*a),
    "associative": lambda *a, interpret=False: scan_xla.selective_scan_associative(*a),
    "pallas_gpu": _pallas_gpu,
    "pallas_tpu": _pallas_tpu,
}


def _gpu_compute_capability(device) -> float | None:
    cc = getattr(device, "compute_capability", None)
    if cc is None:
        return None
    try:
        return float(cc)
    except (TypeError, ValueError):
        return None


@functools.cache
def _pallas_available(name: str) -> bool:
    try:
        if name == "pallas_gpu":
            from mambavision_jax.ops import pallas_gpu  # noqa: F401
        else:
            from mambavision_jax.ops import pallas_tpu  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installed jaxlib
        return False
    return True


def default_impl(platform: str | None = None, device=None) -> str:
    """What ``impl="auto"`` resolves to on ``platform`` (default: the default backend)."""
    if device is None and platform is None:
        device = jax.devices()[0]
    if platform is None:
        platform = device.platform
    if platform == "cpu":
        return "sequential"
    if platform == "tpu":
        return "pallas_tpu" if _pallas_available("pallas_tpu") else "associative"
    if platform in ("gpu", "cuda"):
        cc = _gpu_compute_capability(device) if device is not None else None
        if cc is not None and cc >= 8.0 and _pallas_available("pallas_gpu"):
            return "pallas_gpu"
        return "associative"
    return "associative"  # rocm and anything else: plain XLA


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    delta_bias=None,
    delta_softplus=False,
    *,
    impl="auto",
    interpret=False,
):
    """Selective scan (Mamba S6), channels-last.

    u, delta: (batch, L, d); A: (d, n) (real, negative); B, C: (batch, L, n) shared by channels;
    D, delta_bias: (d,). Returns y: (batch, L, d) in u.dtype, computed in float32:
    dt = softplus(delta + delta_bias) if delta_softplus; h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t;
    y_t = C_t . h_t + D u_t.

    impl: "auto" (sequential on CPU; pallas_gpu on CUDA GPUs with compute capability >= 8.0;
    pallas_tpu on TPU; associative elsewhere), or one of ``SCAN_IMPLS``.
    interpret: run a Pallas kernel in Pallas's interpreter (works on a CPU; slow). For pallas_tpu it
    may also be a ``jax.experimental.pallas.tpu.InterpretParams()`` (the TPU-semantics interpreter,
    much slower). Ignored by the XLA impls.
    """
    if impl == "auto":
        impl = default_impl()
    if impl not in SCAN_IMPLS:
        raise ValueError(f"unknown selective_scan impl {impl!r}; valid: {['auto', *SCAN_IMPLS]}")
    u = jnp.asarray(u)
    scan_xla.check_shapes(
        u, jnp.asarray(delta), jnp.asarray(A), jnp.asarray(B), jnp.asarray(C), D, delta_bias
    )
    return SCAN_IMPLS[impl](u, delta, A, B, C, D, delta_bias, delta_softplus, interpret=interpret)
