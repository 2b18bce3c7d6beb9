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

from mambavision_jax import ops
from mambavision_jax.ops import default_impl, dispatch, pallas_common, pallas_gpu, pallas_tpu, selective_scan

PALLAS_IMPLS = ("pallas_gpu", "pallas_mosaic_gpu", "pallas_tpu")
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


def _scan_fn(impl, softplus=True, with_d=True, interpret=True):
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
            interpret=interpret,
        )

    return f


def _assert_close(x, ref, tol, name=""):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    scale = max(np.max(np.abs(ref)), 1e-6)
    err = np.max(np.abs(x - ref)) / scale
    assert err < tol, f"{name}: relative max error {err:.3g} >= {tol}"


# (impl, (batch, L, d, n), dtype, softplus + D + delta_bias). L = 37 covers two full chunks of 16
# and a partial one; d = 5, 196 are odd / not a multiple of the block; n = 3 is not a power of 2.
# The two backends share their kernel bodies, so the TPU one gets only the first case. The Mosaic
# GPU kernel runs in Mosaic GPU's interpreter (simulated SMEM, TMA copies, barriers; ~10 s a case).
CASES = [
    ("pallas_gpu", (2, 37, 5, 3), jnp.float32, True),
    ("pallas_gpu", (1, 20, 196, 8), jnp.bfloat16, True),
    ("pallas_gpu", (1, 18, 160, 8), jnp.float32, False),
    ("pallas_tpu", (2, 37, 5, 3), jnp.float32, True),
    ("pallas_mosaic_gpu", (1, 37, 5, 3), jnp.float32, True),
    pytest.param("pallas_mosaic_gpu", (1, 20, 130, 8), jnp.bfloat16, True, marks=pytest.mark.slow),
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
    ids=[
        "gpu-f32-5ch",
        "gpu-bf16-196ch",
        "gpu-f32-160ch-bare",
        "tpu-f32-5ch",
        "mgpu-f32-5ch",
        "mgpu-bf16-130ch",
    ],
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


def _batch_mesh():
    from mambavision_jax.train.sharding import make_mesh

    n = len(jax.devices())
    assert n >= 4, "needs >= 4 devices (tests/conftest.py simulates 8 on the CPU)"
    return make_mesh(n // 2, 2)


def _scan_shardings(mesh):
    """(u, delta, A, B, C, D, delta_bias): sequences over the batch axes, parameters replicated."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    seq, rep = NamedSharding(mesh, P(("data", "fsdp"))), NamedSharding(mesh, P())
    return (seq, seq, rep, seq, seq, rep, rep)


def _sharded_args(mesh, args):
    return [jax.device_put(a, s) for a, s in zip(args, _scan_shardings(mesh))]


def test_kernel_mesh_runs_per_device_with_the_same_values_and_grads():
    """With a ScanSharding the kernel runs under shard_map on each device's sequences; the
    replicated parameters' gradients are summed over the devices."""
    mesh = _batch_mesh()
    args = _sharded_args(mesh, make_inputs(5, 2 * mesh.size, 20, 40, 8))

    def loss_and_y(impl, sharding=None):
        def f(*a):
            y = selective_scan(*a, True, impl=impl, interpret=True, sharding=sharding)
            return jnp.sum(jnp.cos(y)), y

        return jax.value_and_grad(f, argnums=tuple(range(7)), has_aux=True)

    (_, y_ref), g_ref = jax.jit(loss_and_y("sequential"))(*args)
    fn = loss_and_y("pallas_gpu", ops.ScanSharding(mesh))
    assert "shard_map" in str(jax.make_jaxpr(fn)(*args))
    (_, y), g = jax.jit(fn)(*args)
    _assert_close(y, y_ref, 1e-5, "y")
    for name, a, r in zip(ARG_NAMES, g, g_ref):
        _assert_close(a, r, 2e-5, name)


def test_kernel_mesh_gives_each_device_its_share_of_the_batch():
    # The Triton call in the CUDA lowering: the whole batch without a sharding (XLA would
    # gather it on every device), batch / devices with it.
    import re

    mesh = _batch_mesh()
    b, l, d, n = 2 * mesh.size, 20, 64, 8
    shapes = ((b, l, d), (b, l, d), (d, n), (b, l, n), (b, l, n), (d,), (d,))
    args = [
        jax.ShapeDtypeStruct(shape, jnp.float32, sharding=s)
        for shape, s in zip(shapes, _scan_shardings(mesh))
    ]

    def triton_batch(fn):
        (call,) = [x for x in _lower(fn, args, "cuda").splitlines() if "xla.gpu.triton" in x]
        return {int(m) for m in re.findall(rf"tensor<(\d+)x{l}x{d}xf32>", call)}

    def scan(sharding, impl="pallas_gpu", interpret=False):
        return lambda *a: selective_scan(*a, True, impl=impl, interpret=interpret, sharding=sharding)

    sharding = ops.ScanSharding(mesh, batch_axes=("data", "fsdp"))
    assert triton_batch(scan(None)) == {b}
    assert triton_batch(scan(sharding)) == {2}
    # A batch that does not divide over the devices keeps the plain (whole-batch) call.
    u = jnp.ones((3, l, d))
    small = (u, u, jnp.ones((d, n)) * -1, jnp.ones((3, l, n)), jnp.ones((3, l, n)), None, None)
    assert "shard_map" not in str(jax.make_jaxpr(scan(sharding, interpret=True))(*small))
    # The XLA scans ignore the sharding: the partitioner splits them by itself.
    full = [jnp.ones(s) for s in shapes]
    assert "shard_map" not in str(jax.make_jaxpr(scan(sharding, impl="associative"))(*full))


def test_a_model_built_with_a_scan_sharding_runs_its_mixers_per_device(monkeypatch):
    """RuntimeConfig.scan_sharding (or MambaVision.set_scan_sharding) reaches every Mamba mixer:
    the forward holds one shard_map per mixer and gives the plain call's logits; the sharding stays
    out of the runtime's dict (it is process-local). The kernel's own values are tested above:
    here the XLA scan stands in for it under its name (the interpreter would take ~20 s)."""
    from flax import nnx

    from mambavision_jax import create_model
    from mambavision_jax.models.config import ConfigError, RuntimeConfig
    from mambavision_jax.ops import scan_xla

    stand_in = lambda *a, interpret=False: scan_xla.selective_scan_sequential(*a)  # noqa: E731
    monkeypatch.setitem(ops.SCAN_IMPLS, "pallas_gpu", stand_in)
    mesh = _batch_mesh()
    sharding = ops.ScanSharding(mesh)
    arch = dict(dim=8, in_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 1, 1, 1), window_size=(2, 2, 2, 1))
    model = create_model("mamba_vision_T", num_classes=3, scan_impl="pallas_gpu", **arch)
    built = create_model(
        "mamba_vision_T", num_classes=3, scan_impl="pallas_gpu", scan_sharding=sharding, **arch
    )
    assert built.runtime.scan_sharding == sharding and "scan_sharding" not in built.runtime.to_dict()
    with pytest.raises(ConfigError, match="scan_sharding must be None or a .*ScanSharding.*got Mesh"):
        RuntimeConfig(scan_sharding=mesh)
    plain_gd, state = nnx.split(model)
    model.set_scan_sharding(sharding)
    sharded_gd, _ = nnx.split(model)
    assert sharded_gd == nnx.split(built)[0] and sharded_gd != plain_gd
    images = np.random.default_rng(0).standard_normal((mesh.size, 32, 32, 3)).astype(np.float32)
    x = jax.device_put(images, _scan_shardings(mesh)[0])

    def forward(graphdef):
        return lambda s, x: nnx.merge(graphdef, s)(x)

    # Stage 3's and stage 4's Mamba blocks, each on one window (sequence) per device.
    assert str(jax.make_jaxpr(forward(sharded_gd))(state, x)).count("shard_map") == 2
    assert "shard_map" not in str(jax.make_jaxpr(forward(plain_gd))(state, x))
    y = jax.jit(forward(sharded_gd))(state, x)
    _assert_close(y, jax.jit(forward(plain_gd))(state, x), 1e-5, "logits")


class _FakeDevice:
    def __init__(self, platform, compute_capability=None):
        self.platform = platform
        if compute_capability is not None:
            self.compute_capability = compute_capability


@pytest.fixture
def probe(monkeypatch):
    """Stand-in for the GPU compile probe (no GPU here): record calls, optionally fail."""
    calls, fail = [], []  # fail: the kernels whose probe fails

    def fake_probe(impl="pallas_gpu"):
        calls.append(impl)
        if impl in fail:
            raise RuntimeError("PTX too new for this driver")

    monkeypatch.setattr(dispatch, "compile_pallas_gpu_probe", fake_probe)
    ops.pallas_gpu_compiles.cache_clear()
    yield calls, fail
    ops.pallas_gpu_compiles.cache_clear()


def test_auto_selection(probe):
    calls, _ = probe
    if jax.default_backend() == "cpu":
        assert default_impl() == "sequential"
    assert default_impl(device=_FakeDevice("cpu")) == "sequential"
    assert default_impl(device=_FakeDevice("gpu", "9.0")) == "pallas_gpu"  # H100: Triton (measured)
    assert default_impl(device=_FakeDevice("gpu", "8.0")) == "pallas_gpu"  # A100 (Triton)
    assert default_impl(device=_FakeDevice("gpu", "9.0")) == "pallas_gpu"
    # the compile probe runs once per device kind, kernel and process
    assert calls == ["pallas_gpu"]
    # A target without a device (ahead-of-time compilation): by compute capability, no probe.
    assert default_impl("gpu", compute_capability=9.0) == "pallas_gpu"
    assert default_impl("gpu", compute_capability=8.0) == "pallas_gpu"
    assert len(calls) == 1
    assert default_impl(device=_FakeDevice("gpu", "7.5")) == "associative"  # T4
    assert default_impl(device=_FakeDevice("gpu")) == "associative"
    assert default_impl(device=_FakeDevice("rocm")) == "associative"
    assert default_impl(device=_FakeDevice("tpu")) == "pallas_tpu"
    assert all(ops.pallas_available(name) for name in PALLAS_IMPLS)


def test_auto_falls_back_when_the_kernel_does_not_compile(probe):
    _, fail = probe
    fail.append("pallas_gpu")  # Hopper: Triton fails, Mosaic GPU is next
    with pytest.warns(RuntimeWarning, match="Triton kernel does not compile.*PTX too new.*falls back"):
        assert default_impl(device=_FakeDevice("gpu", "9.0")) == "pallas_mosaic_gpu"
    ops.pallas_gpu_compiles.cache_clear()
    with pytest.warns(RuntimeWarning, match="Triton kernel does not compile.*PTX too new.*associative"):
        assert default_impl(device=_FakeDevice("gpu", "8.0")) == "associative"  # Ampere: no Mosaic GPU
    fail.append("pallas_mosaic_gpu")
    ops.pallas_gpu_compiles.cache_clear()
    with pytest.warns(RuntimeWarning, match="Mosaic GPU kernel does not compile.*PTX too new.*associative"):
        assert default_impl(device=_FakeDevice("gpu", "9.0")) == "associative"


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the probe succeeds on a GPU")
def test_compile_probe_fails_cleanly_without_a_gpu():
    # The real probe on this CPU: the Triton kernel cannot compile for the host, so auto must not
    # pick it (this is the path a GPU with a broken Triton toolchain takes).
    ops.pallas_gpu_compiles.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="falls back"):
            assert ops.pallas_gpu_compiles("cpu-test") is False
    finally:
        ops.pallas_gpu_compiles.cache_clear()


# ------------------------------------------------------------------- compiled, on a CUDA GPU only
# The device check (benchmarks/device_check.sh) runs these on a lent GPU; the CPU covers the same
# kernels through interpret mode and the CUDA lowering above.
on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")

GPU_CASES = [
    ((2, 37, 5, 3), jnp.float32, True),
    ((2, 37, 5, 3), jnp.bfloat16, True),
    ((3, 196, 160, 8), jnp.float32, True),  # MambaVision-T stage 3
    ((3, 196, 160, 8), jnp.bfloat16, True),
    ((2, 49, 320, 8), jnp.bfloat16, True),  # stage 4
    ((2, 64, 196, 8), jnp.float32, True),  # L's odd channel count (padded to 224)
    ((2, 50, 392, 16), jnp.bfloat16, True),
    ((1, 18, 160, 8), jnp.float32, False),
]


def _gpu_cc():
    return float(getattr(jax.devices()[0], "compute_capability", 0) or 0)


@on_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("impl", list(dispatch.GPU_KERNELS))
@pytest.mark.parametrize("shape,dtype,full", GPU_CASES, ids=lambda v: str(v))
def test_compiled_kernel_values_and_grads(impl, shape, dtype, full):
    if _gpu_cc() < dispatch.GPU_KERNELS[impl]:
        pytest.skip(f"{impl} needs compute capability {dispatch.GPU_KERNELS[impl]}")
    args = make_inputs(sum(shape), *shape, dtype=dtype)
    if not full:
        args = (args[0], jnp.abs(args[1]), *args[2:])
    argnums = tuple(range(7)) if full else tuple(range(5))
    compiled = lambda impl: _scan_fn(impl, softplus=full, with_d=full, interpret=False)  # noqa: E731

    y, g = jax.jit(_vjp_fn(compiled(impl), argnums))(*args)
    y_ref, g_ref = jax.jit(_vjp_fn(compiled("sequential"), argnums))(*args)
    y_inf = jax.jit(compiled(impl))(*args)
    f32 = dtype == jnp.float32
    _assert_close(y, y_ref, 1e-5 if f32 else 1e-2, "y")
    _assert_close(y_inf, y_ref, 1e-5 if f32 else 1e-2, "y (inference kernel)")
    for i, a, r in zip(argnums, g, g_ref):
        assert a.shape == args[i].shape and a.dtype == args[i].dtype, ARG_NAMES[i]
        _assert_close(a, r, 5e-5 if f32 else 2e-2, ARG_NAMES[i])


@on_gpu
@pytest.mark.gpu
def test_auto_picks_the_kernel_on_this_gpu():
    cc = _gpu_cc()
    assert default_impl() == (
        "pallas_mosaic_gpu" if cc >= 9.0 else "pallas_gpu" if cc >= 8.0 else "associative"
    )
