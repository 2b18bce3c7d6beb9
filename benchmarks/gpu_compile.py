"""The GPU selective-scan kernels compiled for GPUs this machine does not have: a table.

  JAX_PLATFORMS=cpu python benchmarks/gpu_compile.py
  JAX_PLATFORMS=cpu python benchmarks/gpu_compile.py --lengths 196 --batch 128

Needs the jax CUDA plugin and ptxas (jax-cuda12-plugin, jax-cuda12-pjrt, nvidia-cuda-nvcc-cu12),
no GPU: compile-only devices from XLA's H100 / A100 descriptions (mambavision_jax/ops/gpu_specs).
Per (kernel, target, L, dtype) one program holds the three kernels (inference forward, forward
with saved states, backward: a gradient); XLA's GPU compiler builds it, and with it Mosaic GPU
(MLIR -> PTX -> ptxas, sm_90a) or Triton (-> PTX -> ptxas). "registers" are ptxas's report for
the Mosaic GPU kernels (forward with saved states / backward / inference forward; 0 spills
unless said); Triton's are not reported.
Compile seconds include tracing and lowering. tests/test_pallas_gpu_compile.py asserts the same.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import tempfile
import time

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from mambavision_jax import ops

SPECS = pathlib.Path(ops.__file__).parent / "gpu_specs"
TARGETS = {"h100": "h100_sxm.txtpb", "a100": "a100_sxm_80.txtpb"}


def device(target):
    from jax.experimental import topologies

    text = (SPECS / TARGETS[target]).read_text()
    return topologies.get_topology_desc(
        platform="cuda", topology_name="", target_config=text, topology="1x1x1"
    ).devices[0]


@contextlib.contextmanager
def captured_output():
    """The process's fds 1 and 2 (ptxas's report and MLIR errors come from C++) into a list."""
    lines = []
    with tempfile.TemporaryFile(mode="w+") as f:
        saved = [os.dup(1), os.dup(2)]
        for fd in (1, 2):
            os.dup2(f.fileno(), fd)
        try:
            yield lines
        finally:
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            f.seek(0)
            lines.extend(f.read().splitlines())


def registers(lines):
    """'fwd 62 / bwd 96 / inference 64' from ptxas's -v report of the Mosaic GPU kernels."""
    out, kernel = [], None
    for line in lines:
        if m := re.search(r"Compiling entry function 'selective_scan_(\w+?)_", line):
            kernel = m.group(1)
        elif (m := re.search(r"(\d+) bytes spill stores", line)) and int(m.group(1)):
            out.append(f"{kernel} spills {m.group(1)} B")
        elif m := re.search(r"Used (\d+) registers", line):
            out.append(f"{kernel} {m.group(1)}")
    return " / ".join(out)


def compile_case(impl, target, seq_len, dtype, batch, d, n):
    sh = SingleDeviceSharding(device(target))
    sd = lambda *s, dt=dtype: jax.ShapeDtypeStruct(s, dt, sharding=sh)  # noqa: E731
    f32 = jnp.float32
    args = (sd(batch, seq_len, d), sd(batch, seq_len, d), sd(d, n, dt=f32), sd(batch, seq_len, n))
    args += (sd(batch, seq_len, n), sd(d, dt=f32), sd(d, dt=f32))
    scan = lambda *a: ops.selective_scan(*a, True, impl=impl)  # noqa: E731

    def program(*a):
        grads = jax.grad(lambda *x: jnp.sum(scan(*x).astype(f32)), argnums=tuple(range(7)))(*a)
        return scan(*a), grads

    t = time.perf_counter()
    with captured_output() as lines:
        try:
            jax.jit(program).lower(*args).compile()
            result = "compiles"
        except Exception as e:  # noqa: BLE001 - the table reports it
            result = f"fails: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    why = [x for x in lines if "error:" in x][:1]
    if why:
        result += f" ({why[0].split('error:')[-1].strip()[:100]})"
    return result, time.perf_counter() - t, registers(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[196, 4096, 25600])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=160)
    p.add_argument("--state", type=int, default=8)
    a = p.parse_args()
    os.environ["MOSAIC_GPU_DUMP_PTXAS"] = "1"  # read by the CUDA plugin when it builds a kernel
    cases = [
        ("pallas_mosaic_gpu", "h100"),
        ("pallas_gpu", "a100"),
        ("pallas_gpu", "h100"),
        # Expected to fail (sm_90a only). Last, for two quirks of the CUDA plugin's Mosaic GPU
        # build: the first Mosaic compile in a process fixes ptxas's target (after an sm_80 one,
        # sm_90a kernels fail in ptxas), and built kernels are cached by their IR whatever the
        # target (so these shapes must differ from the H100 rows': L + 1).
        ("pallas_mosaic_gpu", "a100"),
    ]
    print(f"batch {a.batch}, d {a.channels}, n {a.state}; jax {jax.__version__}")
    print("| kernel | target | L | dtype | result | compile s | ptxas registers |")
    print("|---|---|---|---|---|---|---|")
    for impl, target in cases:
        for seq_len in a.lengths:
            seq_len += impl == "pallas_mosaic_gpu" and target == "a100"
            for dtype in (jnp.float32, jnp.bfloat16):
                result, secs, regs = compile_case(impl, target, seq_len, dtype, a.batch, a.channels, a.state)
                name = jnp.dtype(dtype).name
                print(
                    f"| {impl} | {target} | {seq_len} | {name} | {result} | {secs:.1f} | {regs} |", flush=True
                )


if __name__ == "__main__":
    main()
