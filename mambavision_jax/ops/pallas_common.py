"""Fused selective-scan Pallas kernels shared by the Triton (GPU) and Mosaic (TPU) backends.

One program per (sequence, block of ``block_d`` channels, block of L rows). On Triton a program's
L block is the whole sequence: grid ``(batch, d_padded // block_d)``. Mosaic splits L into blocks
on a sequential third grid axis and carries the state between them in VMEM scratch (see
``pallas_tpu``). Inside a program the state ``h`` is an ``(n, block_d)`` float32 value (state on
the second-minor axis, channels on the minor/lane axis, like apple/axlearn's Mamba kernels),
carried through a ``fori_loop`` over the block's rows (``forward_rows``). Per step the kernel
loads one row of ``u``, ``delta`` (``block_d`` values) and of ``B``, ``C`` (``n`` values), applies
``softplus(delta + delta_bias)``, discretises (``exp(dt A)``, ``dt B u``), updates ``h``,
contracts with ``C`` and adds ``D u``.

Backward (``jax.custom_vjp``): no ``(batch, L, d, n)`` tensor is materialised. The forward kernel
saves ``h`` at chunk boundaries (every ``chunk`` steps: ``(batch, L / chunk, n, d)``). The
backward kernel walks the chunks last to first (``backward_rows``); for each it recomputes the
chunk's ``chunk`` states from the saved boundary into a small per-program scratch buffer
(``(chunk + 1, n, block_d)``, slot 0 holding the boundary state), then runs the reverse
recurrence over the chunk, reading ``h_t`` and ``h_{t-1}`` from the scratch.
This is the axlearn design; it never divides by ``exp(dt A)`` (reversing the recurrence
analytically would be numerically unsound). Per-step ``dB_t`` / ``dC_t`` (sums over the program's
channels) are written per channel block and summed over blocks in XLA; ``dA``, ``dD`` and
``d delta_bias`` are accumulated in registers and written once per program, summed over the batch
in XLA. All of these extra tensors are at most ``d / block_d`` times the size of ``B``.

Padding: channels are zero-padded to a multiple of ``block_d`` and the state to ``n_multiple``
(zero rows of A, B, C keep the padded state at zero); with L blocks, L is zero-padded to a
multiple of the block, and the kernels stop at the true length (a padded step could overflow the
state to inf: with ``delta_softplus=False`` a negative ``delta_bias`` gives ``exp(dt A) > 1``, and
inf times a zero gradient is NaN). The result is sliced back. The padding is outside the
``custom_vjp``, so its gradient is the plain slice.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

f32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """How a backend runs the shared kernels (hashable: used as a custom_vjp static argument)."""

    name: str
    block_d: int  # channels per program (power of 2 on Triton, multiple of 128 on Mosaic)
    chunk: int  # steps between saved states (backward recompute granularity)
    n_multiple: int  # pad the state to a multiple of this (power-of-2 rounding if 0)
    scratch_as_output: bool  # Triton has no scratch buffers: use an extra (discarded) output
    compiler_params: Callable[[str], Any] | None = None  # kind ("fwd" / "bwd") -> CompilerParams
    barrier: Callable[[], None] | None = None  # Triton: order scratch writes before reads
    interpret: Any = False  # False, True, or backend interpret params
    lane_reduce_dot: bool = False  # sum over channels as a ones-row matmul (Mosaic) or jnp.sum
    # L blocks (Mosaic): 0, one program's block spans the sequence; else the most rows per block (a
    # multiple of ``chunk``); L is padded to a multiple of the block and ``forward_call`` /
    # ``backward_call`` (the backend's pallas_calls, same signatures as ``_forward_call`` /
    # ``_backward_call``) walk the blocks.
    block_l: int = 0
    forward_call: Callable[..., Any] | None = None
    backward_call: Callable[..., Any] | None = None


def _softplus(x):
    # max(x, 0) + log1p(exp(-|x|)): stable, and needs only exp / log1p (lowered by Triton and Mosaic).
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


def _load_params(a_ref, d_ref, bias_ref):
    """A (n, bd), D (bd,), delta_bias (bd,) in float32."""
    return a_ref[...].astype(f32), d_ref[0].astype(f32), bias_ref[0].astype(f32)


def _dt_row(dl_ref, bias, t, softplus):
    x = dl_ref[t].astype(f32) + bias
    return _softplus(x) if softplus else x


# ------------------------------------------------------------------------------ per-block bodies
# The recurrences over the rows of one block of the sequence, shared by every kernel: a Triton
# program's block is its whole sequence, a Mosaic program's one L block of it (the state and the
# backward's carries then travel between L blocks in VMEM scratch, see pallas_tpu). Rows at and
# beyond `valid` (the wrapper's padding of L) are never touched.


def forward_rows(ins, y_ref, hb_ref, h, *, valid, chunk, softplus):
    """Runs rows [0, valid) of a block from the state ``h`` (n, bd); returns the state after them.

    ins: the kernel's input refs (u, delta, A, B, C, D, delta_bias) with u, delta: (rows, bd) and
    B, C: (rows, n); y_ref: (rows, bd); hb_ref: None, or (rows / chunk, n, bd) to receive the state
    before each chunk's first row (the backward's recompute points).
    """
    u_ref, dl_ref, a_ref, b_ref, c_ref, d_ref, bias_ref = ins
    A, dvec, bias = _load_params(a_ref, d_ref, bias_ref)

    def step(t, h):
        u = u_ref[t].astype(f32)  # (bd,)
        dt = _dt_row(dl_ref, bias, t, softplus)  # (bd,)
        bt = b_ref[t].astype(f32)  # (n,)
        ct = c_ref[t].astype(f32)  # (n,)
        h = jnp.exp(dt[None, :] * A) * h + (dt * u)[None, :] * bt[:, None]
        y = jnp.sum(h * ct[:, None], axis=0) + dvec * u
        y_ref[t] = y.astype(y_ref.dtype)
        return h

    if hb_ref is None:
        return lax.fori_loop(0, valid, step, h)

    def chunk_body(c, h):
        hb_ref[c] = h  # the state before the chunk's first step
        start = c * chunk
        stop = jnp.minimum(start + chunk, valid)
        return lax.fori_loop(start, stop, step, h)

    return lax.fori_loop(0, hb_ref.shape[0], chunk_body, h)


def zero_grad_carry(n, bd):
    """(dh, dA, dD, d delta_bias): the backward's carries before the sequence's last step."""
    return (
        jnp.zeros((n, bd), f32),
        jnp.zeros((n, bd), f32),
        jnp.zeros((bd,), f32),
        jnp.zeros((bd,), f32),
    )


def backward_rows(ins, outs, scratch_ref, carry, *, valid, chunk, softplus, barrier, lane_reduce_dot):
    """Walks rows [0, valid) of a block last to first from the carries ``carry``
    (``zero_grad_carry``) after it; returns them before its first row.

    ins: the kernel's input refs (u, delta, A, B, C, D, delta_bias, saved states, dy), rows as in
    ``forward_rows``, the states (rows / chunk, n, bd); outs: (du, d delta) (rows, bd) and (dB, dC)
    (rows, n) (sums over this program's channels); scratch_ref: (chunk + 1, n, bd), the recompute
    buffer.
    """
    u_ref, dl_ref, a_ref, b_ref, c_ref, d_ref, bias_ref, hb_ref, dy_ref = ins
    du_ref, ddl_ref, db_ref, dc_ref = outs
    A, dvec, bias = _load_params(a_ref, d_ref, bias_ref)

    def fence():
        if barrier is not None:
            barrier()

    def recompute(t, h, start):
        u = u_ref[t].astype(f32)
        dt = _dt_row(dl_ref, bias, t, softplus)
        bt = b_ref[t].astype(f32)
        h = jnp.exp(dt[None, :] * A) * h + (dt * u)[None, :] * bt[:, None]
        scratch_ref[t - start + 1] = h  # scratch[k + 1] = h_{start + k}; scratch[0] = h_{start - 1}
        return h

    def store_channel_sum(ref, t, x):
        """ref[t, :] = x.sum(axis=1) for x: (n, bd), i.e. a sum over this program's channels."""
        if lane_reduce_dot:
            # Mosaic: a lane reduction yields a column; a (1, bd) x (n, bd)^T matmul yields the row.
            ones = jnp.ones((1, x.shape[1]), f32)
            r = lax.dot_general(
                ones,
                x,
                (((1,), (1,)), ((), ())),
                precision=lax.Precision.HIGHEST,
                preferred_element_type=f32,
            )
            ref[pl.ds(t, 1), :] = r.astype(ref.dtype)
        else:
            ref[t] = jnp.sum(x, axis=1).astype(ref.dtype)

    num_chunks = hb_ref.shape[0]

    def chunk_body(i, carry):
        c = num_chunks - 1 - i
        start = c * chunk
        count = jnp.minimum(chunk, valid - start)  # <= 0 for chunks wholly in the padding
        h_start = hb_ref[c].astype(f32)
        fence()  # the previous chunk's reads of the scratch are done
        scratch_ref[0] = h_start
        lax.fori_loop(start, start + count, functools.partial(recompute, start=start), h_start)
        fence()  # the scratch is written

        def rev_step(j, carry):
            dh, da, dd, dbias = carry
            k = count - 1 - j
            t = start + k
            h_t = scratch_ref[k + 1]
            h_prev = scratch_ref[k]
            u = u_ref[t].astype(f32)
            x = dl_ref[t].astype(f32) + bias
            dt = _softplus(x) if softplus else x
            bt = b_ref[t].astype(f32)
            ct = c_ref[t].astype(f32)
            dy = dy_ref[t].astype(f32)
            a_bar = jnp.exp(dt[None, :] * A)  # (n, bd)
            dh = dh + ct[:, None] * dy[None, :]  # total gradient wrt h_t
            store_channel_sum(dc_ref, t, h_t * dy[None, :])
            g_abar = dh * h_prev * a_bar  # d/d(dt A) of exp(dt A)
            da = da + g_abar * dt[None, :]
            dh_bt = dh * bt[:, None]
            ddt = jnp.sum(g_abar * A, axis=0) + jnp.sum(dh_bt, axis=0) * u
            store_channel_sum(db_ref, t, dh * (dt * u)[None, :])
            du_ref[t] = (jnp.sum(dh_bt, axis=0) * dt + dvec * dy).astype(du_ref.dtype)
            dd = dd + dy * u
            if softplus:
                ddt = ddt * _sigmoid(x)
            ddl_ref[t] = ddt.astype(ddl_ref.dtype)
            dbias = dbias + ddt
            return dh * a_bar, da, dd, dbias

        return lax.fori_loop(0, count, rev_step, carry)

    return lax.fori_loop(0, num_chunks, chunk_body, carry)


# ------------------------------------------------------------------------------ whole-sequence
# One program per (sequence, channel block), its block spanning the sequence (Triton's kernels).


def _fwd_kernel(*refs, seq_len, chunk, softplus, save_states):
    ins, y_ref = refs[:7], refs[7]
    hb_ref = refs[8] if save_states else None
    forward_rows(
        ins, y_ref, hb_ref, jnp.zeros(ins[2].shape, f32), valid=seq_len, chunk=chunk, softplus=softplus
    )


def _bwd_kernel(*refs, seq_len, chunk, softplus, barrier, lane_reduce_dot):
    ins = refs[:9]
    du_ref, ddl_ref, da_ref, dd_ref, dbias_ref, db_ref, dc_ref, scratch_ref = refs[9:]
    _, da, dd, dbias = backward_rows(
        ins,
        (du_ref, ddl_ref, db_ref, dc_ref),
        scratch_ref,
        zero_grad_carry(*ins[2].shape),
        valid=seq_len,
        chunk=chunk,
        softplus=softplus,
        barrier=barrier,
        lane_reduce_dot=lane_reduce_dot,
    )
    da_ref[...] = da
    dd_ref[0] = dd
    dbias_ref[0] = dbias


# ------------------------------------------------------------------------------------ pallas_call


def _specs(cfg: KernelConfig, bsz, seq_len, d, n):
    bd = cfg.block_d
    row = pl.BlockSpec((None, seq_len, bd), lambda b, j: (b, 0, j))  # u, delta, y, du, ...
    a = pl.BlockSpec((n, bd), lambda b, j: (0, j))
    bc = pl.BlockSpec((None, seq_len, n), lambda b, j: (b, 0, 0))
    vec = pl.BlockSpec((1, bd), lambda b, j: (0, j))  # D, delta_bias as (1, d)
    return row, a, bc, vec


def _params(cfg, kind):
    return None if cfg.compiler_params is None else cfg.compiler_params(kind)


def _forward_call(cfg, softplus, seq_len, save_states, u, dl, a, b, c, dvec, bias):
    bsz, _, d = u.shape
    n = a.shape[0]
    bd = cfg.block_d
    grid = (bsz, d // bd)
    row, a_spec, bc, vec = _specs(cfg, bsz, seq_len, d, n)
    num_chunks = pl.cdiv(seq_len, cfg.chunk)
    out_shape = [jax.ShapeDtypeStruct(u.shape, u.dtype)]
    out_specs = [row]
    if save_states:
        out_shape.append(jax.ShapeDtypeStruct((bsz, num_chunks, n, d), f32))
        out_specs.append(pl.BlockSpec((None, num_chunks, n, bd), lambda b, j: (b, 0, 0, j)))
    kernel = functools.partial(
        _fwd_kernel, seq_len=seq_len, chunk=cfg.chunk, softplus=softplus, save_states=save_states
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=[row, row, a_spec, bc, bc, vec, vec],
        out_specs=out_specs,
        compiler_params=_params(cfg, "fwd"),
        interpret=cfg.interpret,
        name=f"selective_scan_fwd_{cfg.name}",
    )(u, dl, a, b, c, dvec, bias)
    return outs if save_states else (outs[0], None)


def backward_out_shape(u, dl, n, nblk):
    """The backward kernel's outputs for u, dl (bsz, L, d) and ``nblk`` channel blocks."""
    bsz, seq_len, d = u.shape
    return [
        jax.ShapeDtypeStruct(u.shape, u.dtype),  # du
        jax.ShapeDtypeStruct(dl.shape, dl.dtype),  # d delta
        jax.ShapeDtypeStruct((bsz, n, d), f32),  # dA per sequence
        jax.ShapeDtypeStruct((bsz, 1, d), f32),  # dD per sequence
        jax.ShapeDtypeStruct((bsz, 1, d), f32),  # d delta_bias per sequence
        jax.ShapeDtypeStruct((nblk, bsz, seq_len, n), f32),  # dB per channel block
        jax.ShapeDtypeStruct((nblk, bsz, seq_len, n), f32),  # dC per channel block
    ]


def _backward_call(cfg, softplus, seq_len, u, dl, a, b, c, dvec, bias, hb, dy):
    bsz, _, d = u.shape
    n = a.shape[0]
    bd = cfg.block_d
    nblk = d // bd
    grid = (bsz, nblk)
    row, a_spec, bc, vec = _specs(cfg, bsz, seq_len, d, n)
    num_chunks = hb.shape[1]
    hb_spec = pl.BlockSpec((None, num_chunks, n, bd), lambda b, j: (b, 0, 0, j))
    per_seq_a = pl.BlockSpec((None, n, bd), lambda b, j: (b, 0, j))  # (bsz, n, d)
    per_seq_vec = pl.BlockSpec((None, 1, bd), lambda b, j: (b, 0, j))  # (bsz, 1, d)
    per_blk_bc = pl.BlockSpec((None, None, seq_len, n), lambda b, j: (j, b, 0, 0))  # (nblk, bsz, L, n)
    out_shape = backward_out_shape(u, dl, n, nblk)
    out_specs = [row, row, per_seq_a, per_seq_vec, per_seq_vec, per_blk_bc, per_blk_bc]
    scratch_shapes = ()
    if cfg.scratch_as_output:
        out_shape.append(jax.ShapeDtypeStruct((bsz, nblk, cfg.chunk + 1, n, bd), f32))
        out_specs.append(pl.BlockSpec((None, None, cfg.chunk + 1, n, bd), lambda b, j: (b, j, 0, 0, 0)))
    else:
        from jax.experimental.pallas import tpu as pltpu  # noqa: PLC0415

        scratch_shapes = (pltpu.VMEM((cfg.chunk + 1, n, bd), f32),)
    kernel = functools.partial(
        _bwd_kernel,
        seq_len=seq_len,
        chunk=cfg.chunk,
        softplus=softplus,
        barrier=cfg.barrier,
        lane_reduce_dot=cfg.lane_reduce_dot,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=[row, row, a_spec, bc, bc, vec, vec, hb_spec, row],
        out_specs=out_specs,
        scratch_shapes=scratch_shapes,
        compiler_params=_params(cfg, "bwd"),
        interpret=cfg.interpret,
        name=f"selective_scan_bwd_{cfg.name}",
    )(u, dl, a, b, c, dvec, bias, hb, dy)
    du, ddl, da, dd, dbias, db, dc = outs[:7]
    return du, ddl, da.sum(0), dd.sum(0), dbias.sum(0), db.sum(0), dc.sum(0)


def _calls(cfg):
    return cfg.forward_call or _forward_call, cfg.backward_call or _backward_call


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _scan_core(cfg, softplus, seq_len, u, dl, a, b, c, dvec, bias):
    """Padded core: u, dl (bsz, Lp, d); a (n, d); b, c (bsz, Lp, n); dvec, bias (1, d). Rows from
    seq_len on (padding of L) are neither read nor written."""
    return _calls(cfg)[0](cfg, softplus, seq_len, False, u, dl, a, b, c, dvec, bias)[0]


def _scan_core_fwd(cfg, softplus, seq_len, u, dl, a, b, c, dvec, bias):
    y, hb = _calls(cfg)[0](cfg, softplus, seq_len, True, u, dl, a, b, c, dvec, bias)
    return y, (u, dl, a, b, c, dvec, bias, hb)


def _scan_core_bwd(cfg, softplus, seq_len, res, dy):
    u, dl, a, b, c, dvec, bias, hb = res
    du, ddl, da, dd, dbias, db, dc = _calls(cfg)[1](
        cfg, softplus, seq_len, u, dl, a, b, c, dvec, bias, hb, dy
    )
    return (
        du,
        ddl,
        da.astype(a.dtype),
        db.astype(b.dtype),
        dc.astype(c.dtype),
        dd.astype(dvec.dtype),
        dbias.astype(bias.dtype),
    )


_scan_core.defvjp(_scan_core_fwd, _scan_core_bwd)


def _round_up(x, m):
    return -(-x // m) * m


def _pad_axis(x, axis, size):
    if x.shape[axis] == size:
        return x
    pads = [(0, 0)] * x.ndim
    pads[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pads)


def selective_scan(cfg: KernelConfig, u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """Channels-last selective scan on the shared Pallas kernels (see ``ops.selective_scan``).

    u, delta: (bsz, L, d) (float32 / bfloat16 / float16); A: (d, n); B, C: (bsz, L, n);
    D, delta_bias: (d,) or None. Returns (bsz, L, d) in u.dtype; float32 accumulation.
    """
    u = jnp.asarray(u)
    out_dtype = u.dtype
    bsz, seq_len, d = u.shape
    n = A.shape[1]
    # Activations are read in their own dtype (bf16 / f16 / f32; anything else, e.g. float64 with
    # x64, as f32) and upcast in the kernel.
    io = lambda x: x if x.dtype in (jnp.bfloat16, jnp.float16, f32) else x.astype(f32)
    u, delta, B, C = (io(jnp.asarray(x)) for x in (u, delta, B, C))
    A = jnp.asarray(A).astype(f32)
    D = jnp.zeros((d,), f32) if D is None else jnp.asarray(D).astype(f32)
    delta_bias = jnp.zeros((d,), f32) if delta_bias is None else jnp.asarray(delta_bias).astype(f32)

    dp = _round_up(d, cfg.block_d)
    np_ = _round_up(n, cfg.n_multiple) if cfg.n_multiple else max(1, 1 << (n - 1).bit_length())
    lp = _round_up(seq_len, block_len(cfg, seq_len)) if cfg.block_l else seq_len
    u, delta = _pad_axis(_pad_axis(u, 2, dp), 1, lp), _pad_axis(_pad_axis(delta, 2, dp), 1, lp)
    B, C = _pad_axis(_pad_axis(B, 2, np_), 1, lp), _pad_axis(_pad_axis(C, 2, np_), 1, lp)
    a = _pad_axis(_pad_axis(A, 0, dp), 1, np_).T  # (n, d)
    dvec = _pad_axis(D, 0, dp)[None, :]
    bias = _pad_axis(delta_bias, 0, dp)[None, :]
    y = _scan_core(cfg, bool(delta_softplus), seq_len, u, delta, a, B, C, dvec, bias)
    return y[:, :seq_len, :d].astype(out_dtype)


def block_len(cfg: KernelConfig, seq_len: int) -> int:
    """Rows per L block (``cfg.block_l`` > 0): ``cfg.block_l``, or L rounded up to a whole chunk
    when shorter (one block)."""
    return min(cfg.block_l, _round_up(seq_len, cfg.chunk))


def pick_block_d(d: int, candidates=(64, 32, 16)) -> int:
    """The largest power-of-2 block in ``candidates`` dividing ``d`` (no padding), else 32."""
    for bd in candidates:
        if d % bd == 0:
            return bd
    return 32 if d > 16 else max(1, 1 << (d - 1).bit_length())


__all__ = [
    "KernelConfig",
    "backward_out_shape",
    "backward_rows",
    "block_len",
    "forward_rows",
    "pick_block_d",
    "selective_scan",
    "zero_grad_carry",
]
