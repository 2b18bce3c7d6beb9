"""Selective-scan benchmark: every implementation available here, forward and forward+backward.

  python benchmarks/scan.py                       # MambaVision-T stage 3: B 8, L 196, d 160, n 8
  python benchmarks/scan.py --dtype bfloat16 --batch 128
  python benchmarks/scan.py --interpret --repeats 3   # also the Pallas kernels in interpret mode

Times are medians of --repeats jitted calls after warm-up (block_until_ready); "temp" is XLA's
compiled temporary buffer size (memory_analysis().temp_size_in_bytes); "x assoc" is the time
relative to the associative scan (< 1 is faster). The call is MambaVision's:
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
    if platform == "gpu" and default_impl() == "pallas_gpu":
        impls.append("pallas_gpu")
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=196)
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
    args = make_args(a.batch, a.length, a.channels, a.state, dtype)
    impls = a.impls or available_impls(a.interpret)
    dev = jax.devices()[0]
    print(
        f"device: {dev.platform} ({getattr(dev, 'device_kind', '')}), jax {jax.__version__}; "
        f"batch {a.batch}, L {a.length}, d {a.channels}, n {a.state}, {a.dtype}, "
        f"median of {a.repeats}"
    )
    rows = []
    for impl in impls:
        interpret = impl.startswith("pallas") and jax.default_backend() == "cpu"
        fwd, fwd_bwd = build(impl, interpret)
        try:
            row = dict(
                impl=impl + (" (interpret)" if interpret else ""),
                fwd=median_ms(fwd, args, a.repeats),
                bwd=median_ms(fwd_bwd, args, a.repeats),
                fwd_mem=temp_mib(fwd, args),
                bwd_mem=temp_mib(fwd_bwd, args),
            )
        except Exception as e:  # noqa: BLE001 - report and keep going
            print(f"{impl}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        rows.append(row)

    ref = next((r for r in rows if r["impl"] == "associative"), None)
    header = (
        f"| {'impl':<24} | {'fwd ms':>8} | {'fwd+bwd ms':>10} | {'fwd temp MiB':>12} | "
        f"{'fwd+bwd temp MiB':>16} | {'fwd x assoc':>11} | {'fwd+bwd x assoc':>15} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        rf = r["fwd"] / ref["fwd"] if ref else float("nan")
        rb = r["bwd"] / ref["bwd"] if ref else float("nan")
        print(
            f"| {r['impl']:<24} | {r['fwd']:8.2f} | {r['bwd']:10.2f} | {r['fwd_mem']:12.2f} | "
            f"{r['bwd_mem']:16.2f} | {rf:11.2f} | {rb:15.2f} |"
        )


if __name__ == "__main__":
    main()
