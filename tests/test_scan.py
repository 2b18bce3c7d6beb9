"""Selective scan: XLA implementations against a float64 NumPy reference in the official layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mambavision_jax.ops import SCAN_IMPLS, default_impl, selective_scan

XLA_IMPLS = ("sequential", "associative")


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def reference_scan_bdl(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """float64 NumPy port of mamba_ssm's ``selective_scan_ref`` in the official (b, d, l) layout.

    u, delta: (b, d, l); A: (d, n); B, C: (b, n, l); D, delta_bias: (d,). Returns (b, d, l) float64.
    """
    u, delta, A, B, C = (np.asarray(x, np.float64) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + np.asarray(delta_bias, np.float64)[:, None]
    if delta_softplus:
        delta = np.logaddexp(0.0, delta)
    b, d, l = u.shape
    n = A.shape[1]
    delta_a = np.exp(np.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = np.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = np.zeros((b, d, n))
    ys = []
    for i in range(l):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(np.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = np.stack(ys, axis=2)
    if D is not None:
        y = y + u * np.asarray(D, np.float64)[:, None]
    return y


def reference_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """The reference in our channels-last layout: transposes in and out of (b, d, l)."""
    t = lambda x: np.swapaxes(np.asarray(x, np.float64), 1, 2)
    y = reference_scan_bdl(t(u), t(delta), A, t(B), t(C), D, delta_bias, delta_softplus)
    return np.swapaxes(y, 1, 2)


def make_inputs(seed, b, l, d, n, dtype=np.float32):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((b, l, d))
    delta = 0.5 * rng.standard_normal((b, l, d))
    A = -np.exp(rng.standard_normal((d, n)) * 0.5)  # like -exp(A_log)
    B = rng.standard_normal((b, l, n))
    C = rng.standard_normal((b, l, n))
    D = rng.standard_normal(d)
    delta_bias = 0.3 * rng.standard_normal(d)
    cast = lambda x: jnp.asarray(x, dtype)
    return tuple(cast(x) for x in (u, delta, A, B, C, D, delta_bias))


def _relerr(x, ref):
    x = np.asarray(x, np.float64)
    return np.max(np.abs(x - ref)) / max(np.max(np.abs(ref)), 1e-6)


# (batch, L, d, n), use D, use delta_bias, softplus. Odd channel counts included (13, 5, 196).
CASES = [
    ((1, 1, 1, 1), True, True, True),
    ((3, 33, 13, 8), True, True, True),
    ((3, 33, 13, 8), False, False, False),
    ((2, 17, 5, 3), False, True, False),
    ((2, 196, 160, 8), True, True, True),  # MambaVision-T stage 3 window
    ((1, 49, 196, 8), True, True, True),  # MambaVision-L stage 4 window
]


@pytest.mark.parametrize("impl", XLA_IMPLS)
@pytest.mark.parametrize(
    "shape,use_d,use_bias,softplus",
    CASES,
    ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else str(c),
)
def test_matches_reference(impl, shape, use_d, use_bias, softplus):
    u, delta, A, B, C, D, bias = make_inputs(0, *shape)
    D = D if use_d else None
    bias = bias if use_bias else None
    # Without softplus, keep dt = delta + bias >= 0 (else exp(dt A) > 1 and the state overflows).
    if not softplus:
        delta = jnp.abs(delta)
        bias = None if bias is None else jnp.abs(bias)
    fn = jax.jit(selective_scan, static_argnames=("delta_softplus", "impl"))
    y = fn(u, delta, A, B, C, D, bias, delta_softplus=softplus, impl=impl)
    assert y.shape == u.shape and y.dtype == jnp.float32
    ref = reference_scan(u, delta, A, B, C, D, bias, softplus)
    assert _relerr(y, ref) < 2e-6, _relerr(y, ref)


@pytest.mark.parametrize("impl", XLA_IMPLS)
def test_bf16_inputs(impl):
    u, delta, A, B, C, D, bias = make_inputs(1, 2, 64, 24, 8, dtype=jnp.bfloat16)
    y = jax.jit(lambda *a: selective_scan(*a, True, impl=impl))(u, delta, A, B, C, D, bias)
    assert y.dtype == jnp.bfloat16 and y.shape == u.shape
    # Reference on the (already bf16-rounded) inputs in float64: the only error left is the final
    # bf16 rounding of y (float32 accumulation inside), i.e. ~2^-8 relative.
    ref = reference_scan(*(np.asarray(x.astype(jnp.float32)) for x in (u, delta, A, B, C, D, bias)), True)
    err = np.abs(np.asarray(y, np.float64) - ref)
    assert np.all(err <= 2**-8 * np.abs(ref) + 1e-3 * np.max(np.abs(ref))), err.max()


@pytest.mark.parametrize("impl", XLA_IMPLS)
def test_mixed_dtypes(impl):
    # The model feeds bf16 activations with float32 parameters (A, D, delta_bias).
    u, delta, A, B, C, D, bias = make_inputs(2, 2, 64, 24, 8)
    u, delta, B, C = (x.astype(jnp.bfloat16) for x in (u, delta, B, C))
    fn = jax.jit(lambda *a: selective_scan(*a, True, impl=impl))
    y = fn(u, delta, A, B, C, D, bias)
    assert y.dtype == jnp.bfloat16 and y.shape == u.shape
    # float64 reference on the same (bf16-rounded activations, float32 parameters) inputs. The scan
    # runs in float32, so what is left is the final rounding of y to bf16: at most half a bf16 ulp,
    # 2^-8 |y| (8 significand bits), plus float32 roundoff, far below 1e-5 of the output's range.
    ref = reference_scan(*(np.asarray(x.astype(jnp.float32)) for x in (u, delta, A, B, C, D, bias)), True)
    err = np.abs(np.asarray(y, np.float64) - ref)
    bound = 2**-8 * np.abs(ref) + 1e-5 * np.max(np.abs(ref))
    assert np.all(err <= bound), float(np.max(err / bound))
    # The parameters are used in float32: rounding them to bf16 instead moves y by far more.
    bf16 = jnp.bfloat16
    y_bf16_params = fn(u, delta, A.astype(bf16), B, C, D.astype(bf16), bias.astype(bf16))
    assert not np.all(np.abs(np.asarray(y_bf16_params, np.float64) - ref) <= bound)


def test_auto_is_sequential_on_cpu():
    assert jax.default_backend() == "cpu"
    assert default_impl() == "sequential"
    assert default_impl("tpu") in ("pallas_tpu", "associative")
    assert default_impl("gpu") == "associative"  # no device -> no compute capability -> fallback
    u, delta, A, B, C, D, bias = make_inputs(3, 2, 9, 5, 3)
    np.testing.assert_array_equal(
        selective_scan(u, delta, A, B, C, D, bias, True),
        selective_scan(u, delta, A, B, C, D, bias, True, impl="sequential"),
    )


def test_unknown_impl():
    u, delta, A, B, C, D, bias = make_inputs(3, 1, 4, 2, 2)
    with pytest.raises(ValueError, match="sequential.*associative"):
        selective_scan(u, delta, A, B, C, impl="cuda")
    assert {"sequential", "associative", "pallas_gpu", "pallas_tpu"} <= set(SCAN_IMPLS)


def test_bad_shapes():
    u, delta, A, B, C, D, bias = make_inputs(3, 1, 4, 2, 2)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B[:, :3], C)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A.T[:1], B, C)


def _loss(impl, softplus=True):
    def f(u, delta, A, B, C, D, bias):
        y = selective_scan(u, delta, A, B, C, D, bias, softplus, impl=impl)
        w = jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))  # a generic cotangent
        return jnp.sum(y * w)

    return jax.jit(f)


def test_grads_agree_between_impls():
    args = make_inputs(4, 2, 40, 11, 8)
    argnums = tuple(range(7))
    g_seq = jax.jit(jax.grad(_loss("sequential"), argnums))(*args)
    g_ass = jax.jit(jax.grad(_loss("associative"), argnums))(*args)
    for name, a, b in zip(("u", "delta", "A", "B", "C", "D", "delta_bias"), g_seq, g_ass):
        assert a.shape == b.shape
        scale = float(jnp.max(jnp.abs(a)))
        np.testing.assert_allclose(a, b, atol=2e-5 * scale, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("impl", XLA_IMPLS)
def test_grads_finite_differences_x64(impl):
    with jax.enable_x64(True):
        args = make_inputs(5, 2, 6, 3, 2, dtype=jnp.float64)
        y = selective_scan(*args, True, impl=impl)
        assert y.dtype == jnp.float64  # float64 stays float64 (compute dtype >= float32)
        check_grads(_loss(impl), args, order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
        if impl != "sequential":
            return  # the variant below only for one impl (the two impls' grads are compared above)
        # Without softplus and without D / bias too.
        loss = _loss(impl, softplus=False)
        f = lambda u, delta, A, B, C: loss(u, jnp.abs(delta), A, B, C, None, None)
        check_grads(f, args[:5], order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
