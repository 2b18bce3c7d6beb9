"""Selective scan (Mamba S6) implementations behind one entry point, ``selective_scan``."""

from mambavision_jax.ops.dispatch import SCAN_IMPLS, default_impl, selective_scan

__all__ = ["selective_scan", "SCAN_IMPLS", "default_impl"]
