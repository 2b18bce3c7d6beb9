"""Backend-specific kernels behind one dispatcher each (`impl="auto"` picks by platform): the
selective scan (with `ScanSharding`, the Pallas scans run per device under a sharded jit), window
attention, convolutions with a CPU-friendly kernel gradient, the residual gradient barrier, and
the exact GELU. The model files call these and state the architecture only."""

from mambavision_jax.ops.activations import gelu_exact
from mambavision_jax.ops.attention import ATTN_IMPLS, attention, resolve_attn_impl
from mambavision_jax.ops.conv import CONV_IMPLS, conv_general_dilated, conv_hook, resolve_conv_impl
from mambavision_jax.ops.dispatch import (
    GPU_KERNELS,
    SCAN_IMPLS,
    ScanSharding,
    compile_pallas_gpu_probe,
    default_impl,
    pallas_available,
    pallas_gpu_compiles,
    selective_scan,
)
from mambavision_jax.ops.residual import residual_barrier

__all__ = [
    "ATTN_IMPLS",
    "CONV_IMPLS",
    "GPU_KERNELS",
    "SCAN_IMPLS",
    "ScanSharding",
    "attention",
    "compile_pallas_gpu_probe",
    "conv_general_dilated",
    "conv_hook",
    "default_impl",
    "gelu_exact",
    "pallas_available",
    "pallas_gpu_compiles",
    "residual_barrier",
    "resolve_attn_impl",
    "resolve_conv_impl",
    "selective_scan",
]
