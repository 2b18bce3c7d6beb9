"""Selective-scan benchmark: every implementation available here, forward and forward+backward.

  python benchmarks/scan.py                       # MambaVision-T stage 3: B 8, L 196, d 160, n 8
  python benchmarks/scan.py --dtype bfloat16 --batch 128
  python benchmarks/scan.py --interpret --repeats 3   # also the Pallas kernels in interpret mode
  python benchmarks/scan.py --batch 128 --length 196 784 --dtype bfloat16   # GPU target shape

Times are medians of --repeats jitted calls after warm-up (block_until_ready); "temp" is XLA's
compiled temporary buffer size (memory_analysis().temp_size_in_bytes, the scratch beyond inputs
and outputs); "speedup" is the associative scan's time over this row's (> 1 is faster). Several
--length values show how time and memory grow with L (linear for the kernels: they never hold a
(batch, L, d, n) tensor). The call is MambaVision's:
selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus=True).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mambavision_jax.ops import default_impl, selective_scan


def available_impls(interpret: bool) -> list[str]:
    platform = jax.default_backend()
    impls = ["sequential", "associative"]
    if platform == "gpu":
        impls.append("pallas_gpu")  # listed even where auto would not pick it: shows why
        if float(getattr(jax.devices()[0], "compute_capability", 0) or 0) >= 9.0:
            impls.append("pallas_mosaic_gpu")  # Hopper only (sm_90a)
    elif platform == "tpu":
        impls.append("pallas_tpu")
    elif interpret:
        impls += ["pallas_gpu", "pallas_tpu"]
    return impls


def make_args(batch, length, channels, state, dtype, seed=0):
    rng = np.random.default_rng(seed)
    act = lambda *s: jnp.asarray(rng.standard_normal(s), dtype)
    par = lambda x: jnp.asarray(x, jnp.float32)
    A = par(-np.tile(np.arange(1, state + 1, dtype=np.float64), (channels, 1)))  # -exp(A_log)
    return (
        act(batch, length, channels),
        act(batch, length, channels) * 0.5,
        A,
        act(batch, length, state),
        act(batch, length, state),
        par(np.ones(channels)),
        par(0.1 * rng.standard_normal(channels)),
    )


def build(impl, interpret):
    def fwd(*args):
        return selective_scan(*args, True, impl=impl, interpret=interpret)

    def loss(*args):
        y = fwd(*args).astype(jnp.float32)
        return jnp.sum(y * y)

    fwd_bwd = jax.value_and_grad(loss, argnums=tuple(range(7)))
    return jax.jit(fwd), jax.jit(fwd_bwd)


def median_ms(fn, args, repeats, warmup=2):
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def temp_mib(fn, args):
    try:
        mem = fn.lower(*args).compile().memory_analysis()
    except Exception:  # some backends have no memory analysis
        return float("nan")
    if mem is None:
        return float("nan")
    return mem.temp_size_in_bytes / 2**20


def main(argv=None):
    from mambavision_jax import xla_cpu

    xla_cpu.use_eigen_convolutions()  # XLA-CPU's faster convolutions, before JAX starts its backends
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, nargs="+", default=[196])
    p.add_argument("--channels", type=int, default=160)
    p.add_argument("--state", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument(
        "--interpret",
        action="store_true",
        help="on CPU, also run the Pallas kernels in interpret mode (very slow)",
    )
    p.add_argument("--impls", nargs="*", help="restrict to these implementations")
    a = p.parse_args(argv)

    dtype = jnp.dtype(a.dtype)
    impls = a.impls or available_impls(a.interpret)
    dev = jax.devices()[0]
    print(
        f"device: {dev.platform} ({getattr(dev, 'device_kind', '')}), jax {jax.__version__}; "
        f"batch {a.batch}, d {a.channels}, n {a.state}, {a.dtype}, median of {a.repeats}; "
        f"auto = {default_impl()}"
    )
    rows = []
    for length in a.length:
        args = make_args(a.batch, length, a.channels, a.state, dtype)
        for impl in impls:
            interpret = impl.startswith("pallas") and jax.default_backend() == "cpu"
            fwd, fwd_bwd = build(impl, interpret)
            try:
                row = dict(
                    impl=impl + (" (interpret)" if interpret else ""),
                    L=length,
                    fwd=median_ms(fwd, args, a.repeats),
                    bwd=median_ms(fwd_bwd, args, a.repeats),
                    fwd_mem=temp_mib(fwd, args),
                    bwd_mem=temp_mib(fwd_bwd, args),
                )
            except Exception as e:  # noqa: BLE001 - report and keep going
                print(
                    f"{impl} (L {length}): failed: {type(e).__name__}: "
                    f"{str(e).splitlines()[0][:300] if str(e) else ''}"
                )
                continue
            rows.append(row)
    print_table(rows)


def print_table(rows):
    cols = [
        "impl",
        "L",
        "fwd ms",
        "fwd+bwd ms",
        "fwd temp MiB",
        "fwd+bwd temp MiB",
        "fwd speedup",
        "fwd+bwd speedup",
    ]
    table = []
    for r in rows:
        ref = next((x for x in rows if x["impl"] == "associative" and x["L"] == r["L"]), None)
        sf = f"{ref['fwd'] / r['fwd']:.2f}x" if ref else "-"
        sb = f"{ref['bwd'] / r['bwd']:.2f}x" if ref else "-"
        table.append(
            [
                r["impl"],
                str(r["L"]),
                f"{r['fwd']:.3f}",
                f"{r['bwd']:.3f}",
                f"{r['fwd_mem']:.2f}",
                f"{r['bwd_mem']:.2f}",
                sf,
                sb,
            ]
        )
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(cols))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for t in table:
        print(line(t))


if __name__ == "__main__":
    main()
