"""Selective scan as a fused Pallas kernel on the Mosaic TPU backend.

See ``pallas_common`` for the kernel design (the same kernel bodies as the Triton backend).
TPU specifics: channels sit on the 128-wide lane axis, so the channel block is 128 (channels
padded to a multiple of 128) and the state (8 for MambaVision) on sublanes, padded to a multiple
of 8: one (8, 128) float32 state is exactly one vreg. Blocks span the whole sequence (L rows), so
VMEM use per program is about 2 x (4 + 4 n / 128) x L x 128 x 4 bytes in the backward (~1 MB at
L = 196, ~5 MB at L = 1024). The backward's recompute buffer is a VMEM scratch. Both grid axes
are independent ("parallel").
"""

from __future__ import annotations

import functools

from jax.experimental.pallas import tpu as pltpu

from mambavision_jax.ops import pallas_common

CHUNK = 16
BLOCK_D = 128


def _compiler_params(kind):
    del kind
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))


@functools.cache
def config(interpret=False) -> pallas_common.KernelConfig:
    """interpret: False (compile for TPU); True (Pallas's generic interpreter, runs anywhere);
    or a ``pltpu.InterpretParams()`` (the TPU interpreter: simulates TPU memory spaces and DMAs,
    catches more TPU-specific errors, but is ~1000x slower than the generic one on a CPU)."""
    return pallas_common.KernelConfig(
        name="mosaic",
        block_d=BLOCK_D,
        chunk=CHUNK,
        n_multiple=8,
        scratch_as_output=False,
        compiler_params=_compiler_params,
        barrier=None,
        lane_reduce_dot=True,
        interpret=interpret if isinstance(interpret, pltpu.InterpretParams) else bool(interpret),
    )


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *, interpret=False):
    cfg = config(interpret)
    return pallas_common.selective_scan(cfg, u, delta, A, B, C, D, delta_bias, delta_softplus)
