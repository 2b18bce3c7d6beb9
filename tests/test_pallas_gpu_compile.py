"""The GPU scan kernels built by the real compilers for GPUs this machine does not have.

With the CUDA plugin installed, ``jax.experimental.topologies`` gives compile-only devices for a
described GPU (XLA's H100 / A100 target descriptions, shipped in mambavision_jax/ops/gpu_specs):
XLA's GPU compiler runs, and with it the Mosaic GPU pipeline (MLIR -> PTX -> ptxas for sm_90a)
and Triton (-> PTX -> ptxas). What cannot be checked without the GPU is what the kernels
compute; tests/test_pallas_scan.py covers that in the interpreters (and on a GPU, -m gpu).

The Mosaic GPU kernel targets Hopper; the Triton kernel is compiled for Ampere and, at one length,
for Hopper ("auto" picks Triton on both until the Mosaic GPU kernel is timed on a Hopper GPU). L 196 is a MambaVision window; 4,096 and 25,600 are
the stage-3 windows of the official segmentation models at a 512 crop (windows 64 and 160).
"""

import jax
import jax.numpy as jnp
import pytest
from compile_targets import gpu_devices
from jax.sharding import SingleDeviceSharding

from mambavision_jax import ops

CUSTOM_CALL = {"pallas_mosaic_gpu": "mosaic_gpu_v2", "pallas_gpu": "__gpu$xla.gpu.triton"}


@pytest.fixture(scope="module")
def gpu():
    """name ("h100" / "a100") -> one compile-only device of that GPU."""
    return lambda name: gpu_devices(f"{name}x1")[0]


def _args(dev, dtype, seq_len, b=2, d=160, n=8):
    sd = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=SingleDeviceSharding(dev))  # noqa: E731
    act = lambda *s: sd(s, dtype)  # noqa: E731
    f32 = jnp.float32
    return (
        act(b, seq_len, d),
        act(b, seq_len, d),
        sd((d, n), f32),
        act(b, seq_len, n),
        act(b, seq_len, n),
    ) + (
        sd((d,), f32),
        sd((d,), f32),
    )


def _compile(impl, args, inference=True):
    """One program with the kernels: forward with saved states and backward (the gradient), and
    the inference forward (without saved states) if `inference`."""
    scan = lambda *a: ops.selective_scan(*a, True, impl=impl)  # noqa: E731

    def program(*a):
        grads = jax.grad(lambda *x: jnp.sum(scan(*x).astype(jnp.float32)), argnums=tuple(range(7)))(*a)
        return (scan(*a), grads) if inference else grads

    return jax.jit(program).lower(*args).compile()


CASES = [
    (impl, target, seq_len, dtype)
    for impl, target, lengths, dtypes in [
        ("pallas_mosaic_gpu", "h100", (196, 4096, 25600), (jnp.float32, jnp.bfloat16)),
        ("pallas_gpu", "a100", (196, 4096, 25600), (jnp.float32, jnp.bfloat16)),
        ("pallas_gpu", "h100", (196,), (jnp.bfloat16,)),
    ]
    for seq_len in lengths
    for dtype in dtypes
]


@pytest.mark.parametrize(
    "impl,target,seq_len,dtype",
    CASES,
    ids=[f"{i}-{t}-L{n}-{jnp.dtype(d).name}" for i, t, n, d in CASES],
)
def test_scan_kernels_compile_for_the_target(gpu, impl, target, seq_len, dtype):
    dev = gpu(target)
    # The inference forward's code is the saving forward's less the saves: once, at L 196 (each
    # Mosaic GPU kernel adds ~1 s of compile time here).
    inference = seq_len == 196
    compiled = _compile(impl, _args(dev, dtype, seq_len), inference)
    hlo = compiled.as_text()
    # The kernels are in the program, on the backend asked for (an explicit Triton
    # CompilerParams keeps pallas_gpu on Triton, where jax 0.10 defaults to Mosaic GPU).
    assert hlo.count(CUSTOM_CALL[impl]) == 2 + inference, hlo.count(CUSTOM_CALL[impl])
    other = CUSTOM_CALL["pallas_gpu" if impl == "pallas_mosaic_gpu" else "pallas_mosaic_gpu"]
    assert other not in hlo
    mem = compiled.memory_analysis()
    assert mem.output_size_in_bytes > 0


def test_the_mosaic_kernel_is_refused_for_ampere(gpu, capfd):
    # The compile check above can fail: Mosaic GPU's TMA and bulk-async ops need sm_90a.
    # Two quirks of the CUDA plugin's Mosaic GPU build: the first Mosaic compile in a process
    # fixes ptxas's target (after an sm_80 one, every sm_90a kernel fails in ptxas: hence an H100
    # compile first, whatever order the tests run in), and built kernels are cached by their IR
    # whatever the target (hence shapes of this test's own).
    def forward(target, seq_len):  # the inference kernel alone: the cheapest
        scan = lambda *a: ops.selective_scan(*a, True, impl="pallas_mosaic_gpu")  # noqa: E731
        return jax.jit(scan).lower(*_args(gpu(target), jnp.float32, seq_len, b=1, d=96)).compile()

    forward("h100", 99)
    with pytest.raises(Exception, match="Pass pipeline failed"):
        forward("a100", 100)
    assert "not supported on sm_80" in capfd.readouterr().err


def test_auto_picks_by_target_without_a_device():
    # What an ahead-of-time compilation for a named target resolves "auto" to: no probe.
    assert ops.default_impl("gpu", compute_capability=9.0) == "pallas_gpu"  # Triton: measured on H100
    assert ops.default_impl("gpu", compute_capability=8.0) == "pallas_gpu"
    assert ops.default_impl("cuda", compute_capability=8.6) == "pallas_gpu"
    assert ops.default_impl("gpu", compute_capability=7.5) == "associative"


def test_mosaic_kernel_compiles_per_device_on_8_h100s():
    # ScanSharding on a compile-only 8-GPU H100 host: the kernels run under shard_map, each on its
    # device's 2 sequences (an opaque custom call would otherwise get the whole batch everywhere).
    import re

    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from mambavision_jax.train import sharding as shd

    mesh = shd.make_mesh(4, 2, devices=gpu_devices("h100x8"))
    seq, rep = NamedSharding(mesh, P(("data", "fsdp"))), NamedSharding(mesh, P())
    b, seq_len, d, n = 16, 196, 160, 8
    act = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=seq)  # noqa: E731
    par = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32, sharding=rep)  # noqa: E731
    args = (act(b, seq_len, d), act(b, seq_len, d), par(d, n), act(b, seq_len, n), act(b, seq_len, n))
    args += (par(d), par(d))
    sharding = ops.ScanSharding(mesh)
    scan = lambda *a: ops.selective_scan(*a, True, impl="pallas_mosaic_gpu", sharding=sharding)  # noqa: E731
    grad = jax.grad(lambda *x: jnp.sum(scan(*x).astype(jnp.float32)), argnums=tuple(range(7)))
    hlo = jax.jit(grad).lower(*args).compile().as_text()
    calls = [line for line in hlo.splitlines() if "mosaic_gpu_v2" in line]
    assert len(calls) == 2
    # u's per-device block: 2 sequences, L padded to whole tiles, channels to whole 128-lane blocks
    assert all(re.search(r"bf16\[2,208,256\]", line) for line in calls)
