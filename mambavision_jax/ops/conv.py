"""2-D convolutions (NHWC / HWIO) with a choice of kernel gradient: `conv_general_dilated(...,
impl=)` and `conv_hook(impl)`, the `nnx.Conv(conv_general_dilated=...)` argument.

impl: "xla" (XLA's own convolution and gradients), "matmul_grad" (XLA's forward convolution and
input gradient, the kernel gradient as one matmul per kernel tap) or "auto" ("matmul_grad" on a
CPU whose convolutions run on YNNPACK, "xla" everywhere else).

XLA on the CPU computes a convolution's kernel gradient as a convolution whose "kernel" is the
whole feature map and whose output is the small (kh, kw, Cin, Cout) kernel: under YNNPACK (jaxlib
0.10) it ran 2-4x slower than the forward convolution. One matmul per tap, contracting over
(batch, height, width), is the same arithmetic at matmul speed. With XLA's Eigen convolutions
(`mambavision_jax.xla_cpu.use_eigen_convolutions`) XLA's own kernel gradient is the faster one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mambavision_jax import xla_cpu
from mambavision_jax.ops.backend import platform

CONV_IMPLS = ("auto", "xla", "matmul_grad")
_NHWC_HWIO = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(
    impl: str = "auto", *, platform_name: str | None = None, eigen_convolutions: bool | None = None
) -> str:
    """What `impl` means on `platform_name` (default: the backend being traced for)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; valid: {list(CONV_IMPLS)}")
    if impl != "auto":
        return impl
    if eigen_convolutions is None:
        eigen_convolutions = xla_cpu.eigen_convolutions()
    on_cpu = (platform_name or platform()) == "cpu"
    return "matmul_grad" if on_cpu and not eigen_convolutions else "xla"


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_matmul_grad(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC_HWIO, precision=precision)


def _conv_matmul_grad_fwd(x, w, strides, padding, precision):
    return _conv_matmul_grad(x, w, strides, padding, precision), (x, w)


def _conv_matmul_grad_bwd(strides, padding, precision, res, g):
    x, w = res
    _, x_vjp = jax.vjp(
        lambda x_: lax.conv_general_dilated(
            x_, w, strides, padding, dimension_numbers=_NHWC_HWIO, precision=precision
        ),
        x,
    )
    (dx,) = x_vjp(g)
    kh, kw, cin, cout = w.shape
    (sh, sw), (b, ho, wo, _) = strides, g.shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    g2 = g.reshape(-1, cout)
    taps = []
    for i in range(kh):
        for j in range(kw):
            xs = lax.slice(
                xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin), (1, sh, sw, 1)
            )
            taps.append(
                lax.dot_general(
                    xs.reshape(-1, cin),
                    g2,
                    (((0,), (0,)), ((), ())),
                    precision=precision,
                    preferred_element_type=jnp.float32,
                )
            )
    dw = jnp.stack(taps).reshape(w.shape).astype(w.dtype)
    return dx, dw


_conv_matmul_grad.defvjp(_conv_matmul_grad_fwd, _conv_matmul_grad_bwd)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    *,
    impl: str = "auto",
    **kwargs,
):
    """`lax.conv_general_dilated` with the kernel gradient chosen by `impl`. Only plain NHWC/HWIO
    convolutions (no dilation or groups, explicit non-negative padding) can take "matmul_grad";
    everything else is passed to XLA unchanged."""
    plain = (
        resolve_conv_impl(impl) == "matmul_grad"
        and lhs.ndim == 4
        and feature_group_count == 1
        and not kwargs.get("out_sharding")
        and kwargs.get("preferred_element_type") is None
        and kwargs.get("batch_group_count", 1) == 1
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and not isinstance(padding, str)
        and all(lo >= 0 and hi >= 0 for lo, hi in padding)
        and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC_HWIO)
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            **kwargs,
        )
    return _conv_matmul_grad(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision)


@functools.cache
def conv_hook(impl: str = "auto"):
    """`conv_general_dilated` with `impl` bound, for `nnx.Conv(conv_general_dilated=...)` (one
    function object per impl, so that equal models have equal graph definitions)."""
    resolve_conv_impl(impl, platform_name="cpu", eigen_convolutions=False)  # validates impl
    return functools.partial(conv_general_dilated, impl=impl)
