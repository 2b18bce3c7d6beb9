"""Selective scan as a Pallas kernel on the Mosaic GPU backend (NVIDIA Hopper, sm_90a).

Pallas's Triton backend (``pallas_gpu``) is deprecated upstream from JAX 0.11; this is the same
scan written for Mosaic GPU (``jax.experimental.pallas.mosaic_gpu``), which compiles for compute
capability 9.0 only. Same arguments and semantics as ``pallas_gpu.selective_scan``; float32
compute, activations read in their own dtype.

Design (the shared kernels' recurrence, see ``pallas_common``, in Mosaic GPU's terms):
- ``plgpu.kernel`` with grid ``(batch, d_padded / 128)``: one warpgroup (128 threads) per
  (sequence, block of 128 channels). Thread ``i`` owns channel ``i``: every per-channel value is a
  ``(128,)`` array in the warpgroup-strided layout (one element per thread), and the state is a
  tuple of ``n`` such arrays (state index unrolled in Python), so the recurrence and the sum over
  the state are thread-local arithmetic. ``A``, ``D`` and ``delta_bias`` are copied to SMEM once.
- ``plgpu.emit_pipeline`` streams ``(chunk, 128)`` tiles of ``u`` / ``delta`` (and ``(chunk, n)``
  tiles of ``B`` / ``C``) GMEM -> SMEM by TMA, double-buffered, with the state as the pipeline's
  carry; a ``fori_loop`` walks the tile's rows (the last tile's loop stops at ``L``, so ``L``
  needs no padding: TMA clips the partial tile). SMEM is bounded independently of ``L``.
- Backward (``jax.custom_vjp``): the forward saves the state at every tile boundary
  (``(batch, L / chunk, n, d)``); the backward pipeline walks the tiles last to first, recomputes
  the tile's states from its boundary into an SMEM scratch ``(chunk + 1, n, 128)``, then runs the
  reverse recurrence over it (the axlearn design, as in ``pallas_common``: no division by
  ``exp(dt A)``). ``dB_t`` / ``dC_t`` are sums over the program's channels (a warpgroup
  reduction per state entry and step), written per channel block and summed over blocks in XLA;
  ``dA``, ``dD`` and ``d delta_bias`` are carried in registers and written once per program.

Correctness off a GPU: Pallas's Mosaic GPU interpreter (``interpret=True`` here selects its
``InterpretGPUParams``, which simulates SMEM, TMA copies and barriers on the CPU) runs these
kernels; tests/test_pallas_scan.py compares them with the sequential reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from mambavision_jax.ops.pallas_common import _pad_axis, _round_up, _sigmoid

f32 = jnp.float32
LANES = 128  # channels per program: one per thread of a warpgroup
N_MULTIPLE = 8  # state padding: a TMA row must be a multiple of 16 bytes (8 bf16 values)


def chunk_size(n: int) -> int:
    """Rows per pipelined tile (= steps between saved states): the backward's recompute scratch
    ``(chunk + 1, n, 128)`` float32 must fit in SMEM beside the double-buffered tiles."""
    return max(4, min(16, 128 // n))


def _interpret_params(interpret):
    if not interpret:
        return None
    if interpret is True:
        # Not exported by jax.experimental.pallas.mosaic_gpu in jax 0.10; the generic interpreter
        # (interpret=True) does not know the Mosaic GPU primitives (TMA copies, barriers).
        try:
            from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # noqa: PLC0415
        except ImportError as e:  # pragma: no cover - depends on the installed jax
            raise NotImplementedError(f"this jax has no Mosaic GPU interpreter ({e})") from e
        return InterpretGPUParams()
    return interpret


def _kernel(name, body, out_type, scratch, interpret, *args):
    """``plgpu.kernel`` over the grid (batch, d / 128), one warpgroup per program. ``args`` are
    (u, delta, A (n, d), B, C, [D; delta_bias] (2, d), ...); the program's A, D and delta_bias
    are copied GMEM -> SMEM once and read into registers, then
    ``body(seq, blk, (A rows, D, delta_bias), *in_refs, *out_refs, *scratch_refs)`` runs."""
    bsz, _, d = args[0].shape
    n = args[2].shape[0]

    def kernel(*refs):
        *refs, a_s, dvb_s, bar = refs
        seq, blk = lax.axis_index("seq"), lax.axis_index("blk")
        cols = pl.ds(blk * LANES, LANES)
        plgpu.copy_gmem_to_smem(refs[2].at[:, cols], a_s, bar.at[0])
        plgpu.copy_gmem_to_smem(refs[5].at[:, cols], dvb_s, bar.at[1])
        plgpu.barrier_wait(bar.at[0])
        plgpu.barrier_wait(bar.at[1])
        body(seq, blk, ([a_s[k] for k in range(n)], dvb_s[0], dvb_s[1]), *refs)

    return plgpu.kernel(
        kernel,
        out_type=out_type,
        scratch_types=[
            *scratch,
            plgpu.SMEM((n, LANES), f32),
            plgpu.SMEM((2, LANES), f32),
            plgpu.Barrier(num_barriers=2),
        ],
        grid=(bsz, d // LANES),
        grid_names=("seq", "blk"),
        compiler_params=plgpu.CompilerParams(approx_math=False),
        interpret=_interpret_params(interpret),
        kernel_name=f"selective_scan_{name}_mosaic_gpu",
    )(*args)


def _softplus(x):
    # Mosaic GPU lowers log but not log1p: log1p(e) by Kahan's log(w) * e / (w - 1), w = 1 + e
    # (exact where w rounds to 1), so softplus stays accurate for very negative x.
    e = jnp.exp(-jnp.abs(x))
    w = 1.0 + e
    log1p = jnp.where(w == 1.0, e, jnp.log(w) * e / (w - 1.0))
    return jnp.maximum(x, 0.0) + log1p


def _dt(dl_s, t, bias, softplus):
    x = dl_s[t].astype(f32) + bias
    return x, (_softplus(x) if softplus else x)


def _zeros(interpret):
    """A (128,) zero vector in the per-thread (strided) layout: a loop carry must keep its layout,
    and a plain constant would be a splat. (The interpreter has no layouts, nor layout_cast.)"""
    z = jnp.zeros((LANES,), f32)
    return z if interpret else plgpu.layout_cast(z, plgpu.Layout.WG_STRIDED((LANES,), vec_size=1))


def _stream(num_tiles, ins, outs, body, init, *, reverse=False):
    """Runs ``carry = body(tile, *in_tiles, *out_tiles, carry)`` over ``num_tiles`` tiles (last to
    first if ``reverse``) with double-buffered TMA copies: tile ``i + 1`` is fetched while tile
    ``i`` is computed, and outputs are written back asynchronously.

    ``ins`` / ``outs``: ``(gmem_ref, rows)`` per stream, tiled along the leading axis: ``rows``
    rows per tile, or ``None`` for one squeezed index per tile. The tiles are SMEM refs.
    (``plgpu.emit_pipeline`` does the same, but its predicated output copies are not supported
    by the Mosaic GPU interpreter.)
    """
    order = (lambda s: num_tiles - 1 - s) if reverse else (lambda s: s)
    tile_of = lambda ref, rows, i: ref.at[i] if rows is None else ref.at[pl.ds(i * rows, rows)]
    buffers = lambda streams: [
        plgpu.SMEM((2, *(() if rows is None else (rows,)), *ref.shape[1:]), ref.dtype)
        for ref, rows in streams
    ]

    def scoped(in_bufs, out_bufs, bar):
        def fetch(step, slot):
            for (ref, rows), buf in zip(ins, in_bufs):
                plgpu.copy_gmem_to_smem(tile_of(ref, rows, order(step)), buf.at[slot], bar.at[slot])

        def loop(step, carry):
            slot = lax.rem(step, 2)

            @pl.when(step + 1 < num_tiles)
            def _():  # the other slot's tiles were last read by step - 1, before its commit_smem
                fetch(step + 1, 1 - slot)

            plgpu.barrier_wait(bar.at[slot])
            plgpu.wait_smem_to_gmem(1, wait_read_only=True)  # step - 2's writes left this slot
            tiles = [buf.at[slot] for buf in (*in_bufs, *out_bufs)]
            carry = body(order(step), *tiles, carry)
            plgpu.commit_smem()  # the tiles' SMEM writes are visible to TMA; all reads are done
            for (ref, rows), buf in zip(outs, out_bufs):
                plgpu.copy_smem_to_gmem(buf.at[slot], tile_of(ref, rows, order(step)), commit_group=False)
            plgpu.commit_smem_to_gmem_group()
            return carry

        fetch(0, 0)
        final = lax.fori_loop(0, num_tiles, loop, init)
        plgpu.wait_smem_to_gmem(0)
        return final

    return pl.run_scoped(
        scoped,
        in_bufs=buffers(ins),
        out_bufs=buffers(outs),
        bar=plgpu.Barrier(num_arrivals=len(ins), num_barriers=2),
    )


# --------------------------------------------------------------------------------------- forward


def _forward_call(softplus, save_states, chunk, seq_len, interpret, u, dl, a, b, c, dvb):
    """u, dl, b, c padded to a multiple of ``chunk`` rows; ``seq_len``: the real length."""
    bsz, _, d = u.shape
    n = a.shape[0]
    num_tiles = u.shape[1] // chunk
    out_type = [jax.ShapeDtypeStruct(u.shape, u.dtype)]
    if save_states:
        out_type.append(jax.ShapeDtypeStruct((bsz, num_tiles, n, d), f32))

    def kernel(seq, blk, params, u_g, dl_g, a_g, b_g, c_g, dvb_g, y_g, *hb_g):
        A, dvec, bias = params
        cols = pl.ds(blk * LANES, LANES)

        def tile(i, u_s, dl_s, b_s, c_s, y_s, *rest):
            *hb_s, h = rest
            if save_states:
                for k in range(n):
                    hb_s[0][k] = h[k]  # the state before the tile's first step

            def step(t, h):
                uu = u_s[t].astype(f32)
                _, dt = _dt(dl_s, t, bias, softplus)
                dtu = dt * uu
                y = dvec * uu
                new = []
                for k in range(n):
                    hk = jnp.exp(dt * A[k]) * h[k] + dtu * b_s[t, k].astype(f32)
                    y = y + hk * c_s[t, k].astype(f32)
                    new.append(hk)
                y_s[t] = y.astype(y_s.dtype)
                return tuple(new)

            # The padding rows past seq_len are not stepped through.
            return lax.fori_loop(0, jnp.minimum(chunk, seq_len - i * chunk), step, h)

        outs = [(y_g.at[seq, :, cols], chunk)]
        if save_states:
            outs.append((hb_g[0].at[seq, :, :, cols], None))
        ins = [(u_g.at[seq, :, cols], chunk), (dl_g.at[seq, :, cols], chunk)]
        ins += [(b_g.at[seq], chunk), (c_g.at[seq], chunk)]
        _stream(num_tiles, ins, outs, tile, tuple(_zeros(interpret) for _ in range(n)))

    name = "fwd" if save_states else "inference"
    outs = _kernel(name, kernel, out_type, (), interpret, u, dl, a, b, c, dvb)
    return (outs[0], outs[1]) if save_states else (outs[0], None)


# -------------------------------------------------------------------------------------- backward


def _backward_call(softplus, chunk, seq_len, interpret, u, dl, a, b, c, dvb, hb, dy):
    bsz, padded_len, d = u.shape
    n = a.shape[0]
    nblk = d // LANES
    num_tiles = hb.shape[1]
    out_type = [
        jax.ShapeDtypeStruct(u.shape, u.dtype),  # du
        jax.ShapeDtypeStruct(dl.shape, dl.dtype),  # d delta
        jax.ShapeDtypeStruct((bsz, n + 2, d), f32),  # [dA; dD; d delta_bias] per sequence
        jax.ShapeDtypeStruct((nblk, bsz, padded_len, n), f32),  # dB per channel block
        jax.ShapeDtypeStruct((nblk, bsz, padded_len, n), f32),  # dC per channel block
    ]

    def kernel(
        seq, blk, params, u_g, dl_g, a_g, b_g, c_g, dvb_g, hb_g, dy_g, du_g, ddl_g, dp_g, db_g, dc_g, hs, dp_s
    ):
        A, dvec, bias = params
        cols = pl.ds(blk * LANES, LANES)

        def tile(i, u_s, dl_s, b_s, c_s, dy_s, hb_s, du_s, ddl_s, db_s, dc_s, carry):
            count = jnp.minimum(chunk, seq_len - i * chunk)
            h0 = tuple(hb_s[k] for k in range(n))
            for k in range(n):
                hs[0, k] = h0[k]

            def recompute(t, h):  # hs[t + 1] = h_t (tile-local t); hs[0] = the boundary state
                uu = u_s[t].astype(f32)
                _, dt = _dt(dl_s, t, bias, softplus)
                new = tuple(jnp.exp(dt * A[k]) * h[k] + dt * uu * b_s[t, k].astype(f32) for k in range(n))
                for k in range(n):
                    hs[t + 1, k] = new[k]
                return new

            lax.fori_loop(0, count, recompute, h0)

            def rev_step(j, carry):
                dh, da, dd, dbias = carry
                t = count - 1 - j
                uu = u_s[t].astype(f32)
                x, dt = _dt(dl_s, t, bias, softplus)
                g = dy_s[t].astype(f32)
                ddt = jnp.zeros((LANES,), f32)
                dhb = jnp.zeros((LANES,), f32)  # sum_k dh_k B_k
                new_dh, new_da = [], []
                for k in range(n):
                    a_bar = jnp.exp(dt * A[k])
                    dhk = dh[k] + c_s[t, k].astype(f32) * g  # the total gradient wrt h_t
                    dc_s[t, k] = jnp.sum(hs[t + 1, k] * g)
                    g_abar = dhk * hs[t, k] * a_bar  # d/d(dt A) of exp(dt A)
                    new_da.append(da[k] + g_abar * dt)
                    ddt = ddt + g_abar * A[k]
                    dhb = dhb + dhk * b_s[t, k].astype(f32)
                    db_s[t, k] = jnp.sum(dhk * dt * uu)
                    new_dh.append(dhk * a_bar)
                ddt = ddt + dhb * uu
                du_s[t] = (dhb * dt + dvec * g).astype(du_s.dtype)
                if softplus:
                    ddt = ddt * _sigmoid(x)
                ddl_s[t] = ddt.astype(ddl_s.dtype)
                return tuple(new_dh), tuple(new_da), dd + g * uu, dbias + ddt

            return lax.fori_loop(0, count, rev_step, carry)

        row = lambda ref: (ref.at[seq, :, cols], chunk)
        ins = [row(u_g), row(dl_g), (b_g.at[seq], chunk), (c_g.at[seq], chunk), row(dy_g)]
        ins.append((hb_g.at[seq, :, :, cols], None))
        outs = [row(du_g), row(ddl_g), (db_g.at[blk, seq], chunk), (dc_g.at[blk, seq], chunk)]
        zeros = lambda k: tuple(_zeros(interpret) for _ in range(k))
        _, da, dd, dbias = _stream(num_tiles, ins, outs, tile, (zeros(n), zeros(n), *zeros(2)), reverse=True)
        for k in range(n):
            dp_s[k] = da[k]
        dp_s[n] = dd
        dp_s[n + 1] = dbias
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(dp_s, dp_g.at[seq, :, cols])
        plgpu.wait_smem_to_gmem(0)

    scratch = (plgpu.SMEM((chunk + 1, n, LANES), f32), plgpu.SMEM((n + 2, LANES), f32))
    du, ddl, dp, db, dc = _kernel("bwd", kernel, out_type, scratch, interpret, u, dl, a, b, c, dvb, hb, dy)
    dp = dp.sum(0)
    return du, ddl, dp[:n], dp[n:], db.sum(0), dc.sum(0)


# ------------------------------------------------------------------------------------ custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _scan_core(softplus, chunk, seq_len, interpret, u, dl, a, b, c, dvb):
    """Padded core: u, dl (bsz, L', d); a (n, d); b, c (bsz, L', n); dvb = [D; delta_bias] (2, d),
    with L' = L (``seq_len``) rounded up to a multiple of ``chunk``."""
    return _forward_call(softplus, False, chunk, seq_len, interpret, u, dl, a, b, c, dvb)[0]


def _scan_core_fwd(softplus, chunk, seq_len, interpret, u, dl, a, b, c, dvb):
    y, hb = _forward_call(softplus, True, chunk, seq_len, interpret, u, dl, a, b, c, dvb)
    return y, (u, dl, a, b, c, dvb, hb)


def _scan_core_bwd(softplus, chunk, seq_len, interpret, res, dy):
    u, dl, a, b, c, dvb, hb = res
    du, ddl, da, ddvb, db, dc = _backward_call(
        softplus, chunk, seq_len, interpret, u, dl, a, b, c, dvb, hb, dy
    )
    return du, ddl, da, db.astype(b.dtype), dc.astype(c.dtype), ddvb


_scan_core.defvjp(_scan_core_fwd, _scan_core_bwd)


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *, interpret=False):
    """Channels-last selective scan on the Mosaic GPU kernels (see ``ops.selective_scan``).

    u, delta: (bsz, L, d) (float32 / bfloat16 / float16); A: (d, n); B, C: (bsz, L, n);
    D, delta_bias: (d,) or None. Returns (bsz, L, d) in u.dtype; float32 accumulation.
    interpret: run in Pallas's Mosaic GPU interpreter on the CPU (True, or an
    ``InterpretGPUParams``).
    """
    u = jnp.asarray(u)
    out_dtype = u.dtype
    _, seq_len, d = u.shape
    n = A.shape[1]
    io = lambda x: x if x.dtype in (jnp.bfloat16, jnp.float16, f32) else x.astype(f32)
    u, delta, B, C = (io(jnp.asarray(x)) for x in (u, delta, B, C))
    D = jnp.zeros((d,), f32) if D is None else jnp.asarray(D).astype(f32)
    delta_bias = jnp.zeros((d,), f32) if delta_bias is None else jnp.asarray(delta_bias).astype(f32)

    dp, np_ = _round_up(d, LANES), _round_up(n, N_MULTIPLE)
    chunk = chunk_size(np_)
    lp = _round_up(seq_len, chunk)  # whole tiles for TMA (and the interpreter)
    u, delta = (_pad_axis(_pad_axis(x, 2, dp), 1, lp) for x in (u, delta))
    B, C = (_pad_axis(_pad_axis(x, 2, np_), 1, lp) for x in (B, C))
    a = _pad_axis(_pad_axis(jnp.asarray(A).astype(f32), 0, dp), 1, np_).T  # (n, d)
    dvb = jnp.stack([_pad_axis(D, 0, dp), _pad_axis(delta_bias, 0, dp)])
    y = _scan_core(bool(delta_softplus), chunk, seq_len, interpret, u, delta, a, B, C, dvb)
    return y[:, :seq_len, :d].astype(out_dtype)


__all__ = ["LANES", "chunk_size", "selective_scan"]
