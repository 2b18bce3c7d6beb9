"""The Mosaic TPU selective-scan kernel without a TPU.

Values: Pallas's generic interpreter and its TPU-semantics interpreter (simulated VMEM, DMAs,
NaN-filled uninitialised memory, out-of-bounds reads raise) against the sequential XLA scan,
forward and every gradient, with L blocks small enough that the state and the backward's carries
cross several of them. Compiles: libtpu's compiler for named chips (deviceless), forward and
backward, float32 and bfloat16, up to L = 25,600, each kernel's VMEM (as Mosaic allocated it)
within a count from its blocks that does not grow with L.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_targets import tpu_device
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import SingleDeviceSharding
from test_pallas_scan import ARG_NAMES, make_inputs

from mambavision_jax.ops import pallas_common, pallas_tpu, selective_scan

f32, bf16 = jnp.float32, jnp.bfloat16
ARGNUMS = tuple(range(7))


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _kernel(block_l=None, interpret=True, softplus=True):
    """The scan on the Mosaic kernel; ``block_l``: rows per L block (None: the shipped size)."""
    cfg = pallas_tpu.config(interpret)
    if block_l is not None:
        cfg = dataclasses.replace(cfg, block_l=block_l)
    return lambda *a: pallas_common.selective_scan(cfg, *a, softplus)


def _reference(softplus=True):
    return lambda *a: selective_scan(*a, softplus, impl="sequential")


def _values_and_grads(f, args, cotangent_dtype):
    """y and the vjp of every argument for a fixed cotangent, rounded to ``cotangent_dtype``."""

    def run(*a):
        y, vjp = jax.vjp(f, *a)
        w = jnp.cos(jnp.arange(y.size, dtype=f32).reshape(y.shape))
        return y, vjp(w.astype(cotangent_dtype).astype(y.dtype))

    return jax.jit(run)(*args)


def _check(got, ref, name):
    """float32 results: within 1e-5 of the reference's largest magnitude. bfloat16 results (the
    kernel computes in float32 and rounds once): within one bfloat16 rounding, 2^-8 relative."""
    assert np.all(np.isfinite(np.asarray(got, np.float32))), name
    a, r = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = np.abs(r).max()
    if scale == 0:  # e.g. dA at L = 1 (h_0 = 0)
        assert np.all(a == 0), name
    elif got.dtype == f32:
        err = np.abs(a - r).max() / scale
        assert err <= 1e-5, f"{name}: relative max error {err:.3g} > 1e-5"
    else:
        excess = np.abs(a - r) - (2.0**-8 * np.abs(r) + 1e-5 * scale)
        assert excess.max() <= 0, f"{name}: {np.sum(excess > 0)} values beyond one bfloat16 rounding"


def _compare(kernel, args, softplus=True):
    """The kernel against the sequential scan run in float32 on the same (rounded) inputs."""
    dtype = args[0].dtype
    y, grads = _values_and_grads(kernel, args, dtype)
    y_ref, grads_ref = _values_and_grads(_reference(softplus), [a.astype(f32) for a in args], dtype)
    assert y.dtype == dtype and y.shape == args[0].shape
    _check(y, y_ref, "y")
    for name, x, g, r in zip(ARG_NAMES, args, grads, grads_ref):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        _check(g, r, f"d{name}")
    return y_ref


# (batch, L, d, n), dtype, rows per L block. L is never a multiple of the block; d = 5, 130 are
# below / above one 128-channel block; n = 3 is not a multiple of 8.
@pytest.mark.parametrize(
    "shape,dtype,block_l",
    [
        ((2, 37, 5, 3), f32, 16),  # 3 L blocks, the last one partial
        ((1, 50, 130, 8), bf16, 32),  # 2 L blocks x 2 channel blocks, bfloat16 staging
    ],
    ids=["f32-3blocks", "bf16-2x2blocks"],
)
def test_generic_interpreter_values_and_grads(shape, dtype, block_l):
    args = make_inputs(sum(shape), *shape, dtype=dtype)
    y_ref = _compare(_kernel(block_l), args)
    # The inference kernel (no saved states).
    _check(jax.jit(_kernel(block_l))(*args), y_ref, "y (inference kernel)")


@pytest.mark.parametrize(
    "shape,dtype", [((1, 20, 5, 3), f32), ((2, 20, 5, 8), bf16)], ids=["f32-2blocks", "bf16-2blocks"]
)
def test_tpu_interpreter_values_and_grads(shape, dtype):
    # The parallel grid axes in a random order (random_seed): the L axis must not depend on them.
    args = make_inputs(sum(shape) + 1, *shape, dtype=dtype)
    try:
        _compare(_kernel(16, pltpu.InterpretParams(random_seed=0)), args)
    finally:
        pltpu.reset_tpu_interpret_mode_state()  # as its docs ask after a failure


def test_padded_rows_are_never_run():
    # Without softplus, the zero padding of L gives dt = delta_bias on the padded rows: -3 here,
    # so exp(dt A) = exp(24) per padded row, and 15 of them overflow the state to inf; the real
    # rows have dt = delta - 3 in [0, 0.3]. A kernel that ran the padded rows would return NaN
    # gradients (a zero gradient times inf).
    rng = np.random.default_rng(7)
    b, l, d, n = 1, 17, 5, 8
    u, _, _, B, C, D, _ = make_inputs(7, b, l, d, n)
    delta = jnp.asarray(3.0 + 0.3 * rng.random((b, l, d)), f32)
    A = jnp.full((d, n), -8.0, f32)
    bias = jnp.full((d,), -3.0, f32)
    _compare(_kernel(16, softplus=False), (u, delta, A, B, C, D, bias), softplus=False)


# ------------------------------------------------------------------------------------ compiles
# MambaVision-T's stage-3 mixer (d_inner / 2 = 160 channels, state 8), 2 sequences; L 196 (a
# 14 x 14 window), 4,096 and 25,600 (stage-3 windows of the segmentation models at a 512 crop).
LENGTHS = (196, 4096, 25600)


def _abstract_args(device, length, dtype, batch=2, d=160, n=8):
    s = SingleDeviceSharding(device)
    sd = lambda shape, t: jax.ShapeDtypeStruct(shape, t, sharding=s)  # noqa: E731
    act = lambda *shape: sd(shape, dtype)  # noqa: E731
    par = lambda *shape: sd(shape, f32)  # noqa: E731
    u, bc = act(batch, length, d), act(batch, length, n)
    return (u, u, par(d, n), bc, bc, par(d), par(d))


def _forward_and_grad(scan):
    grad = jax.grad(lambda *a: jnp.sum(scan(*a).astype(f32)), argnums=ARGNUMS)
    return lambda *a: (scan(*a), grad(*a))


def _compile(scan, device, length, dtype):
    """The inference forward, the forward with saved states and the backward, in one program."""
    compiled = jax.jit(_forward_and_grad(scan)).lower(*_abstract_args(device, length, dtype)).compile()
    assert compiled.as_text().count('custom_call_target="tpu_custom_call"') == 3
    return compiled


def _compile_cases(targets, **marks):
    return [
        pytest.param(t, length, dtype, id=f"{t}-L{length}-{jnp.dtype(dtype).name}", **marks)
        for t in targets
        for length in LENGTHS
        for dtype in (f32, bf16)
    ]


@pytest.mark.parametrize(
    "target,length,dtype",
    _compile_cases(("v5e:2x2", "v6e:2x2"))
    + _compile_cases(("v5p:2x2x1", "v4:2x2x1"), marks=pytest.mark.slow),
)
def test_compiles_for_tpu(target, length, dtype):
    scan = lambda *a: selective_scan(*a, True, impl="pallas_tpu")  # noqa: E731
    compiled = _compile(scan, tpu_device(target), length, dtype)
    # Mosaic's own VMEM allocation per kernel is within the count from the blocks (which does not
    # grow with L: test below) and a few KiB of Mosaic's own (2 KiB on v4).
    used = pallas_tpu.compiled_vmem_bytes(compiled.as_text())
    assert len(used) == 3
    for name, nbytes in used.items():
        kind = "bwd" if "_bwd_" in name else "fwd"
        assert 0 < nbytes <= pallas_tpu.vmem_bytes(kind, length, 160, 8, dtype) + 16 * 2**10, name


@pytest.mark.parametrize("dtype", [f32, bf16])
def test_vmem_count_does_not_grow_with_length(dtype):
    for kind in ("fwd", "bwd"):
        count = {L: pallas_tpu.vmem_bytes(kind, L, 160, 8, dtype) for L in (196, 4096, 25600, 10**6)}
        assert count[196] < count[4096] == count[25600] == count[10**6] < 4 * 2**20, (kind, count)
