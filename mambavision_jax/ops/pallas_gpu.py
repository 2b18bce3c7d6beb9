"""Selective scan as a fused Pallas kernel on the Triton backend (NVIDIA Ampere and newer).

See ``pallas_common`` for the kernel design. Triton specifics: every loaded / stored array must
have a power-of-2 size, so the channel block is a power of 2 (channels are padded to a multiple of
it: 160 -> 5 x 32, 196 -> 7 x 32 + padding to 224) and the state is padded to a power of 2; the
sequence is never loaded as a block (one row per step), so L (196, 49, 1024...) needs no padding.
Triton has no scratch buffers: the backward's per-program recompute buffer is an extra output,
and ``debug_barrier`` orders its writes before its reads.
"""

from __future__ import annotations

import functools

from jax.experimental.pallas import triton as plgpu

from mambavision_jax.ops import pallas_common

CHUNK = 16


def _compiler_params(block_d, n_pad, kind):
    # One warp per 256 state elements, at most 4: the state lives in registers.
    warps = max(1, min(4, (block_d * n_pad) // 256))
    return plgpu.CompilerParams(num_warps=warps, num_stages=2 if kind == "fwd" else 1)


@functools.cache
def config(d: int, n: int, interpret: bool = False) -> pallas_common.KernelConfig:
    block_d = pallas_common.pick_block_d(d)
    n_pad = max(1, 1 << (n - 1).bit_length())
    return pallas_common.KernelConfig(
        name="triton",
        block_d=block_d,
        chunk=CHUNK,
        n_multiple=0,
        scratch_as_output=True,
        compiler_params=functools.partial(_compiler_params, block_d, n_pad),
        barrier=None if interpret else plgpu.debug_barrier,
        interpret=bool(interpret),
    )


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *, interpret=False):
    cfg = config(u.shape[-1], A.shape[-1], bool(interpret))
    return pallas_common.selective_scan(cfg, u, delta, A, B, C, D, delta_bias, delta_softplus)
