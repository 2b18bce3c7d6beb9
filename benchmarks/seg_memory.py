"""Peak memory and time of a segmenter forward on this machine, with a chosen attention impl.

    python benchmarks/seg_memory.py --model small --size 512 --attn-impl auto [--run]

Prints XLA's compiled memory analysis (temporary buffers: the attention score matrices live
there) and, with --run, the time of the second call. Run it under `/usr/bin/time -v` for the
process's peak resident memory.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx

from mambavision_jax.segmentation import create_segmenter


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="small")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--attn-impl", default="auto")
    p.add_argument("--run", action="store_true")
    a = p.parse_args()
    model = create_segmenter(a.model, attn_impl=a.attn_impl)
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    x = jnp.zeros((1, a.size, a.size, 3), jnp.float32)
    t = time.perf_counter()
    compiled = fwd.lower(state, x).compile()
    mem = compiled.memory_analysis()
    print(
        f"{a.model} {a.size}² attn_impl={a.attn_impl}: compile {time.perf_counter() - t:.1f} s, "
        f"temp {mem.temp_size_in_bytes / 2**30:.2f} GiB, arguments {mem.argument_size_in_bytes / 2**30:.2f} GiB",
        flush=True,
    )
    if a.run:
        jax.block_until_ready(compiled(state, x))
        t = time.perf_counter()
        jax.block_until_ready(compiled(state, x))
        print(f"forward {time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
