"""Selective scan as a fused Pallas kernel on the Mosaic TPU backend.

See ``pallas_common`` for the kernel design (the same recurrences as the Triton backend). TPU
specifics:

- Channels sit on the 128-wide lane axis, so the channel block is 128 (channels padded to a
  multiple of 128), and the state (8 for MambaVision) on sublanes, padded to a multiple of 8: one
  (8, 128) float32 state is exactly one vreg.
- The sequence is split into blocks of at most ``BLOCK_L`` rows on the grid's last axis,
  ``(batch, d_padded // 128, L blocks)``, which is sequential ("arbitrary"): the state (forward) and
  the backward's carries (d/dh, dA, dD, d delta_bias) stay in VMEM scratch from one L block to the
  next, so VMEM per program does not grow with L. The backward walks the L blocks last to first
  (its index maps reverse the block index). L is padded to a multiple of the block; the kernels
  stop at the true length, so the padded rows are never read and the padding cannot change a
  value or a gradient.
- The kernels read and write single rows at a dynamic step index. A bfloat16 (or float16) block
  packs two rows per sublane, and Mosaic refuses a one-row access at a row it cannot prove
  aligned (E2003). Such blocks are therefore copied once per L block, whole (aligned), into
  float32 VMEM scratch (and the outputs back, cast to their dtype), and the steps run on the
  float32 copies. Float32 blocks are used in place. All arithmetic is float32.
"""

from __future__ import annotations

import functools
import json
import math
import re

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mambavision_jax.ops import pallas_common

f32 = jnp.float32
CHUNK = 16  # steps between saved states; also a whole (16, 128) bfloat16 tile of rows
BLOCK_D = 128
BLOCK_L = 256  # rows per L block: a multiple of CHUNK


def _compiler_params(vmem_limit_bytes, kind):
    del kind
    return pltpu.CompilerParams(
        dimension_semantics=("parallel", "parallel", "arbitrary"), vmem_limit_bytes=vmem_limit_bytes
    )


# ------------------------------------------------------------------------------------ kernels


def _staged(refs, scratch):
    """Each ref itself if float32, else its next ``scratch`` float32 copy (filled here)."""
    out = []
    for ref in refs:
        if ref.dtype == f32:
            out.append(ref)
        else:
            copy = next(scratch)
            copy[...] = ref[...].astype(f32)
            out.append(copy)
    return out


def _rows_for(refs, scratch):
    """Where the steps write each output block: itself if float32, else a float32 scratch."""
    return [ref if ref.dtype == f32 else next(scratch) for ref in refs]


def _write_back(refs, rows):
    for ref, r in zip(refs, rows):
        if r is not ref:
            ref[...] = r[...].astype(ref.dtype)


def _valid_rows(block, seq_len, block_l):
    """Rows of L block ``block`` that lie before the true sequence length."""
    return jnp.minimum(block_l, seq_len - block * block_l)


def _fwd_kernel(*refs, seq_len, block_l, chunk, softplus, save_states):
    ins, y_ref = refs[:7], refs[7]
    hb_ref = refs[8] if save_states else None
    h_ref, *stage = refs[9:] if save_states else refs[8:]
    stage = iter(stage)  # the float32 copies: inputs, then outputs (``_stage_shapes``)
    block = pl.program_id(2)

    @pl.when(block == 0)
    def _():
        h_ref[...] = jnp.zeros(h_ref.shape, f32)

    ins = _staged(ins, stage)
    (y_rows,) = _rows_for((y_ref,), stage)
    h_ref[...] = pallas_common.forward_rows(
        ins,
        y_rows,
        hb_ref,
        h_ref[...],
        valid=_valid_rows(block, seq_len, block_l),
        chunk=chunk,
        softplus=softplus,
    )
    _write_back((y_ref,), (y_rows,))


def _bwd_kernel(*refs, seq_len, block_l, chunk, softplus):
    ins = refs[:9]
    du_ref, ddl_ref, da_ref, dd_ref, dbias_ref, db_ref, dc_ref = refs[9:16]
    recompute_ref, dh_ref, da_acc, dd_acc, dbias_acc, *stage = refs[16:]
    stage = iter(stage)
    step = pl.program_id(2)
    block = pl.num_programs(2) - 1 - step  # last L block first

    @pl.when(step == 0)
    def _():
        for ref in (dh_ref, da_acc, dd_acc, dbias_acc):
            ref[...] = jnp.zeros(ref.shape, f32)

    ins = _staged(ins, stage)
    outs = (du_ref, ddl_ref, db_ref, dc_ref)
    rows = _rows_for(outs, stage)
    dh, da, dd, dbias = pallas_common.backward_rows(
        ins,
        rows,
        recompute_ref,
        (dh_ref[...], da_acc[...], dd_acc[0], dbias_acc[0]),
        valid=_valid_rows(block, seq_len, block_l),
        chunk=chunk,
        softplus=softplus,
        barrier=None,
        lane_reduce_dot=True,
    )
    _write_back(outs, rows)
    dh_ref[...] = dh
    da_acc[...] = da
    dd_acc[0] = dd
    dbias_acc[0] = dbias
    # The per-sequence sums' output blocks stay put along L: the last block's values are written.
    da_ref[...] = da
    dd_ref[0] = dd
    dbias_ref[0] = dbias


# -------------------------------------------------------------------------------- pallas_calls


def _specs(lp, n, bd, block_l, chunk, reverse):
    """BlockSpecs on the grid (batch, channel blocks, L blocks); ``reverse``: last L block first."""
    nl = lp // block_l
    lb = (lambda s: nl - 1 - s) if reverse else (lambda s: s)
    return dict(
        row=pl.BlockSpec((None, block_l, bd), lambda b, j, s: (b, lb(s), j)),  # u, delta, y, du, ...
        a=pl.BlockSpec((n, bd), lambda b, j, s: (0, j)),
        bc=pl.BlockSpec((None, block_l, n), lambda b, j, s: (b, lb(s), 0)),
        vec=pl.BlockSpec((1, bd), lambda b, j, s: (0, j)),  # D, delta_bias as (1, d)
        hb=pl.BlockSpec((None, block_l // chunk, n, bd), lambda b, j, s: (b, lb(s), 0, j)),
        per_seq_a=pl.BlockSpec((None, n, bd), lambda b, j, s: (b, 0, j)),  # (bsz, n, d)
        per_seq_vec=pl.BlockSpec((None, 1, bd), lambda b, j, s: (b, 0, j)),  # (bsz, 1, d)
        per_blk_bc=pl.BlockSpec((None, None, block_l, n), lambda b, j, s: (j, b, lb(s), 0)),
    )


def _block_shape(spec):
    return tuple(x for x in spec.block_shape if x is not None)


def _stage_shapes(specs, arrays):
    """float32 VMEM copies of the blocks whose arrays are not float32, in order."""
    return [pltpu.VMEM(_block_shape(s), f32) for s, x in zip(specs, arrays) if x.dtype != f32]


def _plan(in_specs, inputs, out_specs, out_shape, carries):
    """pallas_call's block and scratch arguments: the carries, then the float32 copies of the
    non-float32 input blocks, then those of the output blocks (the kernels take them in order)."""
    scratch = carries + _stage_shapes(in_specs, inputs) + _stage_shapes(out_specs, out_shape)
    return dict(in_specs=in_specs, out_specs=out_specs, out_shape=out_shape, scratch_shapes=scratch)


def _forward_plan(cfg, seq_len, save_states, inputs):
    u, b = inputs[0], inputs[3]
    bsz, lp, d = u.shape
    n = b.shape[-1]
    block_l = pallas_common.block_len(cfg, seq_len)
    s = _specs(lp, n, cfg.block_d, block_l, cfg.chunk, False)
    out_shape = [jax.ShapeDtypeStruct(u.shape, u.dtype)]
    out_specs = [s["row"]]
    if save_states:
        out_shape.append(jax.ShapeDtypeStruct((bsz, lp // cfg.chunk, n, d), f32))
        out_specs.append(s["hb"])
    in_specs = [s["row"], s["row"], s["a"], s["bc"], s["bc"], s["vec"], s["vec"]]
    carries = [pltpu.VMEM((n, cfg.block_d), f32)]  # the state
    grid = (bsz, d // cfg.block_d, lp // block_l)
    return grid, block_l, _plan(in_specs, inputs, out_specs, out_shape, carries)


def _backward_plan(cfg, seq_len, inputs):
    u, dl, b = inputs[0], inputs[1], inputs[3]
    bsz, lp, d = u.shape
    n, bd = b.shape[-1], cfg.block_d
    block_l = pallas_common.block_len(cfg, seq_len)
    s = _specs(lp, n, bd, block_l, cfg.chunk, True)
    in_specs = [s["row"], s["row"], s["a"], s["bc"], s["bc"], s["vec"], s["vec"], s["hb"], s["row"]]
    out_specs = [s["row"], s["row"], s["per_seq_a"], s["per_seq_vec"], s["per_seq_vec"]]
    out_specs += [s["per_blk_bc"]] * 2
    out_shape = pallas_common.backward_out_shape(u, dl, n, d // bd)
    carries = [
        pltpu.VMEM((cfg.chunk + 1, n, bd), f32),  # one chunk's recomputed states
        pltpu.VMEM((n, bd), f32),  # d/dh
        pltpu.VMEM((n, bd), f32),  # dA so far
        pltpu.VMEM((1, bd), f32),  # dD so far
        pltpu.VMEM((1, bd), f32),  # d delta_bias so far
    ]
    grid = (bsz, d // bd, lp // block_l)
    return grid, block_l, _plan(in_specs, inputs, out_specs, out_shape, carries)


def _call(cfg, kind, kernel, grid, plan, *args):
    return pl.pallas_call(
        kernel,
        grid=grid,
        **plan,
        compiler_params=cfg.compiler_params(kind),
        interpret=cfg.interpret,
        name=f"selective_scan_{kind}_mosaic",
    )(*args)


def _forward_call(cfg, softplus, seq_len, save_states, *inputs):
    grid, block_l, plan = _forward_plan(cfg, seq_len, save_states, inputs)
    kernel = functools.partial(
        _fwd_kernel,
        seq_len=seq_len,
        block_l=block_l,
        chunk=cfg.chunk,
        softplus=softplus,
        save_states=save_states,
    )
    outs = _call(cfg, "fwd", kernel, grid, plan, *inputs)
    return outs if save_states else (outs[0], None)


def _backward_call(cfg, softplus, seq_len, *inputs):
    grid, block_l, plan = _backward_plan(cfg, seq_len, inputs)
    kernel = functools.partial(
        _bwd_kernel, seq_len=seq_len, block_l=block_l, chunk=cfg.chunk, softplus=softplus
    )
    du, ddl, da, dd, dbias, db, dc = _call(cfg, "bwd", kernel, grid, plan, *inputs)
    return du, ddl, da.sum(0), dd.sum(0), dbias.sum(0), db.sum(0), dc.sum(0)


# ---------------------------------------------------------------------------------- public API


@functools.cache
def config(interpret=False, vmem_limit_bytes: int | None = None) -> pallas_common.KernelConfig:
    """interpret: False (compile for TPU); True (Pallas's generic interpreter, runs anywhere);
    or a ``pltpu.InterpretParams()`` (the TPU interpreter: simulates TPU memory spaces and DMAs,
    catches more TPU-specific errors, but is ~1000x slower than the generic one on a CPU).
    vmem_limit_bytes: Mosaic's scoped VMEM limit per kernel (None: the chip's default); a kernel
    that needs more fails to compile (E1001)."""
    return pallas_common.KernelConfig(
        name="mosaic",
        block_d=BLOCK_D,
        chunk=CHUNK,
        n_multiple=8,
        scratch_as_output=False,
        compiler_params=functools.partial(_compiler_params, vmem_limit_bytes),
        barrier=None,
        lane_reduce_dot=True,
        interpret=interpret if isinstance(interpret, pltpu.InterpretParams) else bool(interpret),
        block_l=BLOCK_L,
        forward_call=_forward_call,
        backward_call=_backward_call,
    )


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *, interpret=False):
    cfg = config(interpret)
    return pallas_common.selective_scan(cfg, u, delta, A, B, C, D, delta_bias, delta_softplus)


# ------------------------------------------------------------------------------- VMEM estimate


def _tiled_bytes(shape, dtype):
    """Bytes of a VMEM buffer: the last two dims padded to Mosaic's tile, (8 x packing, 128)."""
    itemsize = jnp.dtype(dtype).itemsize
    *lead, rows, cols = shape
    sub = 8 * (4 // itemsize)
    return math.prod(lead) * (-(-rows // sub) * sub) * (-(-cols // 128) * 128) * itemsize


def vmem_bytes(kind, seq_len, d, n, dtype, *, cfg=None):
    """VMEM per program of the forward-with-states ("fwd") or backward ("bwd") kernel, counted
    from its blocks: 2 x every in/out block (Pallas double-buffers them) + the scratch."""
    cfg = cfg or config()
    block_l = pallas_common.block_len(cfg, seq_len)
    lp = -(-seq_len // block_l) * block_l
    n = -(-n // cfg.n_multiple) * cfg.n_multiple
    dp = -(-d // cfg.block_d) * cfg.block_d
    sd = jax.ShapeDtypeStruct
    u, b, vec = sd((1, lp, dp), dtype), sd((1, lp, n), dtype), sd((1, dp), f32)
    inputs = [u, u, sd((n, dp), f32), b, b, vec, vec]
    if kind == "fwd":
        _, _, plan = _forward_plan(cfg, seq_len, True, inputs)
    else:
        inputs += [sd((1, lp // cfg.chunk, n, dp), f32), u]
        _, _, plan = _backward_plan(cfg, seq_len, inputs)
    blocks = zip(plan["in_specs"] + plan["out_specs"], inputs + plan["out_shape"])
    total = 2 * sum(_tiled_bytes(_block_shape(spec), x.dtype) for spec, x in blocks)
    return total + sum(_tiled_bytes(s.shape, s.dtype) for s in plan["scratch_shapes"])


def compiled_vmem_bytes(hlo_text: str) -> dict[str, int]:
    """Mosaic's scoped VMEM allocation of each kernel in a compiled TPU program's HLO text
    (``compiled.as_text()``): {custom call name: bytes}, from its ``used_scoped_memory_configs``
    (memory space 1 is VMEM)."""
    out = {}
    for line in hlo_text.splitlines():
        call = re.match(r"\s*%?(\S+) = .*custom_call_target=\"tpu_custom_call\".*?backend_config=", line)
        if call:
            config, _ = json.JSONDecoder().raw_decode(line, call.end())
            used = config.get("used_scoped_memory_configs", [])
            out[call.group(1)] = sum(int(c["size"]) for c in used if str(c.get("memory_space")) == "1")
    return out
