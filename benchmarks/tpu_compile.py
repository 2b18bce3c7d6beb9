"""The Mosaic TPU selective scan compiled for named TPUs on a machine without one (libtpu, deviceless).

  JAX_PLATFORMS=cpu python benchmarks/tpu_compile.py              # v5e v6e v5p v4 x L 196 4096 25600
  JAX_PLATFORMS=cpu python benchmarks/tpu_compile.py --targets v5e:2x2 --lengths 4096 --dtypes bfloat16

For each target, L and dtype, one row: the forward program (the inference kernel) and the
forward+backward program (jax.grad: the forward kernel that saves states, then the backward
kernel) on one device, MambaVision-T's stage-3 mixer shape (batch 2, d 160, n 8, softplus, D and
delta_bias), through ``selective_scan(..., impl="pallas_tpu")``. Columns:

- compiles: ok, or the compiler's refusal (E2003: Mosaic cannot prove a load aligned; E1001: a
  kernel's scoped VMEM over Mosaic's limit; VMEM x > y: the program over the chip's VMEM);
- Mosaic VMEM: each kernel's scoped VMEM (MiB) as Mosaic allocated it (the compiled HLO's
  used_scoped_memory_configs; for a refused kernel, the size in its E1001 message): the inference
  forward / the forward that saves states / the backward;
- blocks' count: the same from the kernels' blocks (``pallas_tpu.vmem_bytes``: 2 x every block,
  double-buffered, + scratch);
- temp: XLA's temporary HBM buffers of each compiled program (``memory_analysis()``).

The kernel in this checkout is measured; run it on an older checkout to compare (the columns it
cannot fill print "-").
"""

from __future__ import annotations

import argparse
import os
import re

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # deviceless: no metadata server to ask
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no chip for the libtpu lock to guard

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402

from mambavision_jax.ops import pallas_tpu, selective_scan  # noqa: E402

UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def abstract_args(device, length, dtype, batch=2, d=160, n=8):
    s = SingleDeviceSharding(device)
    sd = lambda shape, t: jax.ShapeDtypeStruct(shape, t, sharding=s)  # noqa: E731
    u, bc = sd((batch, length, d), dtype), sd((batch, length, n), dtype)
    par = lambda *shape: sd(shape, jnp.float32)  # noqa: E731
    return (u, u, par(d, n), bc, bc, par(d), par(d))


def programs():
    scan = lambda *a: selective_scan(*a, True, impl="pallas_tpu")  # noqa: E731
    grad = jax.grad(lambda *a: jnp.sum(scan(*a).astype(jnp.float32)), argnums=tuple(range(7)))
    return {"fwd": scan, "fwd+bwd": grad}


def kernel_kind(name):
    """The kernel a custom call name denotes: the inference forward, the forward that saves
    states (differentiated: its name starts with jvp), or the backward."""
    return "bwd" if "_bwd_" in name else "fwd+states" if "jvp" in name else "fwd"


def refused(text):
    """(a short status, {kernel: the scoped VMEM it asked for}) from a compiler error."""
    kernel = re.search(r"allocating on stack for %(\S+) =", text)
    size = re.search(r"Scoped allocation with size ([\d.]+)([KMG]?)", text)
    asked = {}
    if kernel and size:
        asked[kernel_kind(kernel.group(1))] = float(size.group(1)) * UNITS[size.group(2)]
    code = re.search(r"E\d{4}", text)  # E2003: unproven alignment; E1001: scoped VMEM over the limit
    # XLA's own check of the whole program's VMEM (the chip's capacity, not Mosaic's scoped limit)
    vmem = re.search(r"memory space vmem. Used ([\d.]+[KMG]?) of ([\d.]+[KMG]?) vmem", text)
    if code:
        return code.group(0), asked
    if vmem:
        return f"VMEM {vmem.group(1)} > {vmem.group(2)}", asked
    return text.splitlines()[0][:40], asked


def mib(x):
    return "-" if x is None else f"{x / 2**20:.2f}"


def measure(device, length, dtype):
    """One row: compiles, Mosaic's VMEM per kernel, the blocks' count, temp (fwd; fwd+bwd)."""
    args = abstract_args(device, length, dtype)
    status, used, temp = [], {}, []
    for fn in programs().values():
        try:
            compiled = jax.jit(fn).lower(*args).compile()
        except Exception as e:  # noqa: BLE001 - the compiler's refusal is the result
            code, asked = refused(str(e))
            status.append(code)
            used.update(asked)
            temp.append(None)
        else:
            status.append("ok")
            kernels = pallas_tpu.compiled_vmem_bytes(compiled.as_text())
            used.update({kernel_kind(k): v for k, v in kernels.items()})
            temp.append(compiled.memory_analysis().temp_size_in_bytes)
    count = getattr(pallas_tpu, "vmem_bytes", None)  # absent before the L blocks
    d, n = args[0].shape[-1], args[2].shape[-1]
    counted = "-" if count is None else " / ".join(mib(count(k, length, d, n, dtype)) for k in ("fwd", "bwd"))
    return [
        "; ".join(status),
        " / ".join(mib(used.get(k)) for k in ("fwd", "fwd+states", "bwd")),
        counted,
        "; ".join(mib(t) for t in temp),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--targets", nargs="+", default=["v5e:2x2", "v6e:2x2", "v5p:2x2x1", "v4:2x2x1"])
    p.add_argument("--lengths", type=int, nargs="+", default=[196, 4096, 25600])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    a = p.parse_args(argv)
    print(f"jax {jax.__version__}; batch 2, d 160, n 8; VMEM and temp in MiB")
    cols = [
        "target",
        "L",
        "dtype",
        "compiles: fwd; fwd+bwd",
        "Mosaic VMEM: fwd / fwd+states / bwd",
        "blocks' count: fwd+states / bwd",
        "temp: fwd; fwd+bwd",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for target in a.targets:
        device = topologies.get_topology_desc(target, "tpu").devices[0]
        for length in a.lengths:
            for dtype in a.dtypes:
                row = measure(device, length, jnp.dtype(dtype))
                print("| " + " | ".join([target, str(length), dtype, *row]) + " |", flush=True)


if __name__ == "__main__":
    main()
