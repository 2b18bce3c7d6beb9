"""Pallas selective-scan kernels on the CPU: interpret mode vs the sequential scan, and lowerings.

The kernels only run compiled on a GPU (Triton) or TPU (Mosaic). Here they run in Pallas
interpret mode (slow: keep shapes small) and are lowered for CUDA / TPU without a device, which
runs the Pallas -> Triton / Mosaic lowering (and its block-shape checks) but not the Triton
compiler or libtpu's Mosaic compiler.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mambavision_jax.ops import default_impl, dispatch, pallas_common, pallas_gpu, pallas_tpu
from mambavision_jax.ops import selective_scan

PALLAS_IMPLS = ("pallas_gpu", "pallas_tpu")
ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def make_inputs(seed, b, l, d, n, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    act = lambda *s: jnp.asarray(rng.standard_normal(s), dtype)
    par = lambda x: jnp.asarray(x, jnp.float32)  # parameters stay float32, as in the model
    A = par(-np.exp(0.5 * rng.standard_normal((d, n))))
    return (
        act(b, l, d),
        act(b, l, d) * 0.5,
        A,
        act(b, l, n),
        act(b, l, n),
        par(rng.standard_normal(d)),
        par(0.3 * rng.standard_normal(d)),
    )


def _scan_fn(impl, softplus=True, with_d=True):
    def f(u, delta, A, B, C, D, bias):
        return selective_scan(
            u,
            delta,
            A,
            B,
            C,
            D if with_d else None,
            bias if with_d else None,
            softplus,
            impl=impl,
            interpret=True,
        )

    return f


def _assert_close(x, ref, tol, name=""):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    scale = max(np.max(np.abs(ref)), 1e-6)
    err = np.max(np.abs(x - ref)) / scale
    assert err < tol, f"{name}: relative max error {err:.3g} >= {tol}"


# (impl, (batch, L, d, n), dtype, softplus + D + delta_bias). L = 37 covers two full chunks of 16
# and a partial one; d = 5, 196 are odd / not a multiple of the block; n = 3 is not a power of 2.
# The two backends share their kernel bodies, so the TPU one gets only the first case.
CASES = [
    ("pallas_gpu", (2, 37, 5, 3), jnp.float32, True),
    ("pallas_gpu", (1, 20, 196, 8), jnp.bfloat16, True),
    ("pallas_gpu", (1, 18, 160, 8), jnp.float32, False),
    ("pallas_tpu", (2, 37, 5, 3), jnp.float32, True),
]


def _vjp_fn(f, argnums):
    def run(*args):
        def g(*diff):
            full = list(args)
            for i, x in zip(argnums, diff):
                full[i] = x
            return f(*full)

        y, vjp = jax.vjp(g, *(args[i] for i in argnums))
        w = jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)).astype(y.dtype)
        return y, vjp(w)

    return run


@pytest.mark.parametrize(
    "impl,shape,dtype,full",
    CASES,
    ids=["gpu-f32-5ch", "gpu-bf16-196ch", "gpu-f32-160ch-bare", "tpu-f32-5ch"],
)
def test_interpret_values_and_grads(impl, shape, dtype, full):
    args = make_inputs(0, *shape, dtype=dtype)
    if not full:  # no softplus: keep dt >= 0 so that the state stays bounded
        args = (args[0], jnp.abs(args[1]), *args[2:])
    kw = dict(softplus=full, with_d=full)
    argnums = tuple(range(7)) if full else tuple(range(5))
    # One jit: the forward-with-residuals kernel (y) and the backward kernel (grads).
    y, g = jax.jit(_vjp_fn(_scan_fn(impl, **kw), argnums))(*args)
    y_ref, g_ref = jax.jit(_vjp_fn(_scan_fn("sequential", **kw), argnums))(*args)
    assert y.dtype == dtype and y.shape == args[0].shape
    # bf16: both accumulate in float32; the outputs may differ by one bf16 rounding.
    _assert_close(y, y_ref, 1e-5 if dtype == jnp.float32 else 1e-2, "y")
    for i, a, r in zip(argnums, g, g_ref):
        name, x = ARG_NAMES[i], args[i]
        assert a.shape == x.shape and a.dtype == x.dtype, name
        _assert_close(a, r, 2e-5 if dtype == jnp.float32 else 2e-2, name)
    if impl == "pallas_gpu" and dtype == jnp.float32 and full:
        # The inference forward kernel (no saved states) too.
        y_inf = jax.jit(_scan_fn(impl, **kw))(*args)
        _assert_close(y_inf, y_ref, 1e-5, "y (inference kernel)")


def test_tpu_semantics_interpreter_tiny():
    # pltpu.InterpretParams(): the interpreter that simulates TPU memory spaces (VMEM scratch, DMAs
    # of the blocks); ~1000x slower than the generic interpreter, so one tiny case with 2 chunks.
    from jax.experimental.pallas import tpu as pltpu

    args = make_inputs(1, 1, 18, 5, 3)
    f = lambda impl, it: _vjp_fn(
        lambda *a: selective_scan(*a, True, impl=impl, interpret=it), tuple(range(7))
    )
    y, g = jax.jit(f("pallas_tpu", pltpu.InterpretParams()))(*args)
    y_ref, g_ref = jax.jit(f("sequential", False))(*args)
    _assert_close(y, y_ref, 1e-5, "y")
    for name, a, r in zip(ARG_NAMES, g, g_ref):
        _assert_close(a, r, 2e-5, name)


def test_padding_choices():
    assert pallas_gpu.config(160, 8).block_d == 32
    assert pallas_gpu.config(196, 8).block_d == 32  # padded to 224
    assert pallas_gpu.config(392, 8).block_d == 32  # padded to 416
    assert pallas_gpu.config(256, 8).block_d == 64
    assert pallas_gpu.config(5, 3).block_d == 8
    assert pallas_tpu.config().block_d == 128


def _t_stage3_args(dtype, d=160):
    b, l, n = 4, 196, 8
    sd = jax.ShapeDtypeStruct
    return (
        sd((b, l, d), dtype),
        sd((b, l, d), dtype),
        sd((d, n), jnp.float32),
        sd((b, l, n), dtype),
        sd((b, l, n), dtype),
        sd((d,), jnp.float32),
        sd((d,), jnp.float32),
    )


def _lower(fn, args, platform):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def _fwd_and_grad(scan):
    fwd = lambda *a: scan(*a, True)
    grad = jax.grad(lambda *a: jnp.sum(scan(*a, True).astype(jnp.float32)), argnums=tuple(range(7)))
    return fwd, grad


@pytest.mark.parametrize("dtype,d", [(jnp.float32, 160), (jnp.bfloat16, 160), (jnp.float32, 196)])
def test_cuda_lowering(dtype, d):
    # MambaVision-T stage 3 (batch 4 windows of 196 tokens, d_inner/2 = 160, n = 8) and L's 196.
    args = _t_stage3_args(dtype, d)
    fwd, grad = _fwd_and_grad(lambda *a: selective_scan(*a, impl="pallas_gpu"))
    assert _lower(fwd, args, "cuda").count("__gpu$xla.gpu.triton") == 1
    # forward-with-residuals + backward kernels
    assert _lower(grad, args, "cuda").count("__gpu$xla.gpu.triton") == 2


def test_cuda_lowering_rejects_non_power_of_2_blocks():
    # The check above is meaningful: a 20-channel block fails the Triton lowering on the CPU.
    cfg = dataclasses.replace(pallas_gpu.config(160, 8), block_d=20)
    fwd, _ = _fwd_and_grad(lambda *a: pallas_common.selective_scan(cfg, *a))
    with pytest.raises(ValueError, match="power of 2"):
        _lower(fwd, _t_stage3_args(jnp.float32), "cuda")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tpu_lowering(dtype):
    # Runs the Pallas -> Mosaic lowering (block-shape rules, op lowering rules) without a TPU.
    args = _t_stage3_args(dtype)
    fwd, grad = _fwd_and_grad(lambda *a: selective_scan(*a, impl="pallas_tpu"))
    assert _lower(fwd, args, "tpu").count("@tpu_custom_call") == 1
    assert _lower(grad, args, "tpu").count("@tpu_custom_call") == 2


class _FakeDevice:
    def __init__(self, platform, compute_capability=None):
        self.platform = platform
        if compute_capability is not None:
            self.compute_capability = compute_capability


def test_auto_selection():
    assert default_impl() == "sequential"  # this CPU
    assert default_impl(device=_FakeDevice("cpu")) == "sequential"
    assert default_impl(device=_FakeDevice("gpu", "9.0")) == "pallas_gpu"  # H100
    assert default_impl(device=_FakeDevice("gpu", "8.0")) == "pallas_gpu"  # A100
    assert default_impl(device=_FakeDevice("gpu", "7.5")) == "associative"  # T4
    assert default_impl(device=_FakeDevice("gpu")) == "associative"
    assert default_impl(device=_FakeDevice("rocm")) == "associative"
    assert default_impl(device=_FakeDevice("tpu")) == "pallas_tpu"
    assert dispatch._pallas_available("pallas_gpu") and dispatch._pallas_available("pallas_tpu")
