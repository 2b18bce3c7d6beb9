"""The single ``selective_scan`` entry point and its implementation registry."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import warnings

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mambavision_jax.ops import scan_xla

__all__ = [
    "GPU_KERNELS",
    "SCAN_IMPLS",
    "ScanSharding",
    "compile_pallas_gpu_probe",
    "default_impl",
    "pallas_available",
    "pallas_gpu_compiles",
    "selective_scan",
]


@dataclasses.dataclass(frozen=True)
class ScanSharding:
    """Where a jitted caller's batch lives, for the Pallas scans: `selective_scan(...,
    sharding=ScanSharding(mesh))` runs a Pallas impl per device under `jax.shard_map`, with the
    leading (sequence) axis split over `batch_axes` of `mesh` (the names missing from the mesh
    are ignored) and the parameters replicated.

    A ``pallas_call`` is opaque to XLA's SPMD partitioner: under a jit whose inputs are sharded
    over the batch it would gather every sequence onto every device and run the whole batch's scan
    on each (right, but n_devices times the work and an all-gather per layer). The XLA impls ignore
    the sharding: the partitioner splits them by itself. A batch that does not divide over the
    axes (or a one-device mesh) keeps the plain call. Models take it as
    ``RuntimeConfig.scan_sharding`` (or ``MambaVision.set_scan_sharding``); it is hashable, so a
    graphdef that holds it stays a valid static argument.
    """

    mesh: Mesh
    batch_axes: tuple[str, ...] = ("data", "fsdp")

    def __post_init__(self):
        if not isinstance(self.mesh, Mesh):
            raise TypeError(f"ScanSharding.mesh must be a jax.sharding.Mesh, got {type(self.mesh).__name__}")
        axes = (self.batch_axes,) if isinstance(self.batch_axes, str) else self.batch_axes
        if not isinstance(axes, (tuple, list)) or not all(isinstance(a, str) for a in axes):
            raise TypeError(
                f"ScanSharding.batch_axes must be a tuple of mesh axis names, got {self.batch_axes!r}"
            )
        object.__setattr__(self, "batch_axes", tuple(axes))

    @property
    def axes(self) -> tuple[str, ...]:
        """The batch axes this mesh has."""
        return tuple(a for a in self.batch_axes if a in self.mesh.shape)

    @property
    def num_shards(self) -> int:
        """How many parts the batch is split into."""
        return math.prod(self.mesh.shape[a] for a in self.axes)


def _per_device(fn, mesh, axes, u, delta, A, B, C, D, delta_bias, delta_softplus):
    """fn (a Pallas impl) under shard_map: sequences split over `axes`, parameters replicated."""
    d = u.shape[-1]
    D = jnp.zeros((d,), jnp.float32) if D is None else jnp.asarray(D)
    delta_bias = jnp.zeros((d,), jnp.float32) if delta_bias is None else jnp.asarray(delta_bias)
    seq, rep = P(axes), P()

    def body(u, delta, A, B, C, D, delta_bias):
        return fn(u, delta, A, B, C, D, delta_bias, delta_softplus)

    # check_vma=False: pallas_call's outputs carry no varying-manual-axes annotation. The
    # transpose still sums the replicated parameters' per-device gradients over the axes.
    return jax.shard_map(
        body, mesh=mesh, in_specs=(seq, seq, rep, seq, seq, rep, rep), out_specs=seq, check_vma=False
    )(u, delta, A, B, C, D, delta_bias)


def _pallas_gpu(*args, interpret=False):
    from mambavision_jax.ops import pallas_gpu  # lazy: pallas/triton import cost

    return pallas_gpu.selective_scan(*args, interpret=interpret)


def _pallas_mosaic_gpu(*args, interpret=False):
    from mambavision_jax.ops import pallas_mosaic_gpu

    return pallas_mosaic_gpu.selective_scan(*args, interpret=interpret)


def _pallas_tpu(*args, interpret=False):
    from mambavision_jax.ops import pallas_tpu

    return pallas_tpu.selective_scan(*args, interpret=interpret)


# name -> callable(u, delta, A, B, C, D, delta_bias, delta_softplus, *, interpret)
SCAN_IMPLS = {
    "sequential": lambda *a, interpret=False: scan_xla.selective_scan_sequential(*a),
    "associative": lambda *a, interpret=False: scan_xla.selective_scan_associative(*a),
    "pallas_gpu": _pallas_gpu,
    "pallas_mosaic_gpu": _pallas_mosaic_gpu,
    "pallas_tpu": _pallas_tpu,
}
# The GPU kernels: Mosaic GPU needs Hopper (sm_90a); Pallas Triton runs on Ampere and newer.
# name -> minimum compute capability, in the order "auto" tries them. Triton comes first on Hopper
# too: its speed there is measured (benchmarks/RESULTS.md), the Mosaic GPU kernel's is not yet (it
# has only been compiled for H100, never run on one). Once benchmarks/device_check.sh shows Mosaic
# GPU at least as fast on Hopper, swap the two entries. Mosaic GPU is Hopper's fallback meanwhile,
# and its only kernel once a JAX without Pallas Triton is installed.
GPU_KERNELS = {"pallas_gpu": 8.0, "pallas_mosaic_gpu": 9.0}
PALLAS_KERNELS = (*GPU_KERNELS, "pallas_tpu")


def _gpu_compute_capability(device) -> float | None:
    cc = getattr(device, "compute_capability", None)
    if cc is None:
        return None
    try:
        return float(cc)
    except (TypeError, ValueError):
        return None


@functools.cache
def pallas_available(name: str) -> bool:
    """Whether the Pallas kernel module `name` ("pallas_gpu", "pallas_mosaic_gpu" or
    "pallas_tpu") imports with this jaxlib (checked once per process). It says nothing about
    compiling on a device: for the GPU kernels see `pallas_gpu_compiles`."""
    if name not in PALLAS_KERNELS:
        raise ValueError(f"pallas_available: unknown kernel {name!r}; valid: {list(PALLAS_KERNELS)}")
    try:
        importlib.import_module(f"mambavision_jax.ops.{name}")
    except Exception:  # pragma: no cover - depends on the installed jaxlib
        return False
    return True


def compile_pallas_gpu_probe(impl: str = "pallas_gpu") -> None:
    """Compile (not run) a GPU kernel's (`impl`: "pallas_gpu", the Triton one, or
    "pallas_mosaic_gpu") forward and backward for a tiny problem on the default GPU; raises
    whatever the lowering or the kernel compiler raises."""
    fn = SCAN_IMPLS[impl]
    sd = jax.ShapeDtypeStruct
    b, l, d, n = 1, 20, 40, 8  # two chunks, a padded channel block, bf16 activations
    args = (
        sd((b, l, d), jnp.bfloat16),
        sd((b, l, d), jnp.bfloat16),
        sd((d, n), jnp.float32),
        sd((b, l, n), jnp.bfloat16),
        sd((b, l, n), jnp.bfloat16),
        sd((d,), jnp.float32),
        sd((d,), jnp.float32),
    )

    def loss(*a):
        return jnp.sum(fn(*a, True).astype(jnp.float32))

    jax.jit(jax.grad(loss, argnums=tuple(range(7)))).lower(*args).compile()


@functools.cache
def pallas_gpu_compiles(device_kind: str, impl: str = "pallas_gpu") -> bool:
    """Whether the GPU kernel `impl` ("pallas_gpu", the Triton one, or "pallas_mosaic_gpu")
    compiles on this process's GPU (checked once per device kind and kernel).

    ``impl="auto"`` is resolved while a model is being traced, where a failing kernel compile would
    only surface later, inside the caller's jit. A jaxlib whose Pallas backend is missing or
    broken, or a driver / PTX toolchain that cannot build for the chip, falls back to the next
    kernel (on Hopper: Triton -> Mosaic GPU) or to XLA's associative scan with a warning instead. AOT
    lowering + compile needs no concrete arrays, so it also works while an outer function is
    being traced.

    The result is cached (`pallas_gpu_compiles.cache_clear()` forgets it).
    """
    try:
        compile_pallas_gpu_probe(impl)
    except Exception as e:  # noqa: BLE001 - any failure means: do not use the kernel here
        backend = "Mosaic GPU" if impl == "pallas_mosaic_gpu" else "Triton"
        warnings.warn(
            f"selective_scan: the Pallas {backend} kernel does not compile on this GPU ({device_kind}): "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}; "
            "impl='auto' falls back to the next GPU kernel or the XLA associative scan",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def default_impl(platform: str | None = None, device=None, *, compute_capability: float | None = None) -> str:
    """What ``impl="auto"`` resolves to on ``platform`` (default: the default backend's).

    CPU: sequential. TPU: pallas_tpu. CUDA GPU: by compute capability, the first of `GPU_KERNELS`
    the target supports: pallas_gpu (Triton) from 8.0 (Ampere, Hopper), then pallas_mosaic_gpu from
    9.0 (Hopper), else associative. With a real `device`
    (given, or the default backend's when neither `platform` nor `device` is) the GPU kernel must
    also pass a one-time compile probe (`pallas_gpu_compiles`), else the next one is taken.
    `compute_capability` without a device describes a target this process does not have (ahead-of-
    time compilation, e.g. ``default_impl("gpu", compute_capability=9.0)``): no probe; a GPU
    platform with neither gives associative.
    """
    if device is None and platform is None:
        device = jax.devices()[0]
    if platform is None:
        platform = device.platform
    if platform == "cpu":
        return "sequential"
    if platform == "tpu":
        return "pallas_tpu" if pallas_available("pallas_tpu") else "associative"
    if platform in ("gpu", "cuda"):
        cc = compute_capability
        if cc is None and device is not None:
            cc = _gpu_compute_capability(device)
        for name, min_cc in GPU_KERNELS.items():
            if cc is None or float(cc) < min_cc or not pallas_available(name):
                continue
            if device is None or pallas_gpu_compiles(str(getattr(device, "device_kind", "gpu")), name):
                return name
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
    sharding: ScanSharding | None = None,
):
    """Selective scan (Mamba S6), channels-last.

    u, delta: (batch, L, d); A: (d, n) (real, negative); B, C: (batch, L, n) shared by channels;
    D, delta_bias: (d,). Returns y: (batch, L, d) in u.dtype, computed in float32:
    dt = softplus(delta + delta_bias) if delta_softplus; h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t;
    y_t = C_t . h_t + D u_t.

    impl: "auto" (see `default_impl`: sequential on CPU; on CUDA GPUs pallas_gpu (Triton) from
    compute capability 8.0, then pallas_mosaic_gpu from 9.0, where the kernel compiles, checked
    once per process; pallas_tpu on TPU; associative elsewhere), or one of ``SCAN_IMPLS``.
    interpret: run a Pallas kernel in Pallas's interpreter (works on a CPU; slow). For pallas_tpu it
    may also be a ``jax.experimental.pallas.tpu.InterpretParams()`` (the TPU-semantics interpreter,
    much slower); pallas_mosaic_gpu always runs in Mosaic GPU's own interpreter (simulated SMEM,
    TMA copies and barriers). Ignored by the XLA impls.
    sharding: a `ScanSharding` (the caller's mesh and batch axes): the Pallas impls run per device
    on each device's share of the sequences; None: the plain call. Ignored by the XLA impls.
    """
    if impl == "auto":
        impl = default_impl()
    if impl not in SCAN_IMPLS:
        raise ValueError(f"unknown selective_scan impl {impl!r}; valid: {['auto', *SCAN_IMPLS]}")
    u = jnp.asarray(u)
    scan_xla.check_shapes(
        u, jnp.asarray(delta), jnp.asarray(A), jnp.asarray(B), jnp.asarray(C), D, delta_bias
    )
    fn = functools.partial(SCAN_IMPLS[impl], interpret=interpret)
    if sharding is not None and not isinstance(sharding, ScanSharding):
        raise TypeError(
            f"selective_scan: sharding must be a ScanSharding or None, got {type(sharding).__name__}"
        )
    if impl.startswith("pallas") and sharding is not None:
        shards = sharding.num_shards
        if shards > 1 and u.shape[0] % shards == 0:
            return _per_device(
                fn, sharding.mesh, sharding.axes, u, delta, A, B, C, D, delta_bias, delta_softplus
            )
    return fn(u, delta, A, B, C, D, delta_bias, delta_softplus)
