"""Selective scan (Mamba S6) implementations behind one entry point, ``selective_scan``."""

from mambavision_jax.ops.dispatch import (SCAN_IMPLS, default_impl, kernel_mesh, selective_scan,
                                          under_kernel_mesh)

__all__ = ["selective_scan", "SCAN_IMPLS", "default_impl", "kernel_mesh", "under_kernel_mesh"]
