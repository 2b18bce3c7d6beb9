"""The chips the planner compiles for, and compile-only meshes of them.

A target names a platform, a chip and a slice: `tpu:v5e:2x2` (a TPU slice topology, as in
`gcloud compute tpus ... --accelerator-type`), `gpu:h100x8` (one host of 8 GPUs), `gpu:h100:2x8`
(2 hosts of 8). `compile_only_devices(target)` gives devices that XLA's real TPU / GPU compilers
can compile for on a machine without the chip (jax.experimental.topologies, libtpu and the CUDA
plugin of the `aot` extra); `mesh(target, fsdp)` arranges them as the training loop's
(data, fsdp) mesh.
"""

from __future__ import annotations

import dataclasses
import math
import re
from importlib import resources

from mambavision_jax.errors import UserError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Public facts of one accelerator chip. hbm_bytes: memory per chip; peak_bf16_flops: dense
    bf16 FLOP/s per chip; interconnect_bytes_per_s: chip-to-chip bandwidth per chip (TPU ICI
    bidirectional, NVLink bidirectional; None where the source gives none); devices_per_host: the
    chips one host drives (full-size hosts); gpu_spec: XLA's GpuTargetConfigProto file in
    `mambavision_jax/ops/gpu_specs/` and compute_capability (GPUs only); xla_name: the generation as libtpu names it."""

    platform: str
    name: str
    hbm_bytes: int
    peak_bf16_flops: float
    interconnect_bytes_per_s: float | None
    devices_per_host: int
    xla_name: str = ""
    gpu_spec: str = ""
    compute_capability: float | None = None


# The one table of chip facts. Each row's source is the public page in the comment above it. HBM
# is the nominal capacity (the pages' "GB" are GiB); a program needs some headroom below it, and on
# a GPU JAX preallocates 75% of it unless XLA_PYTHON_CLIENT_MEM_FRACTION says more.
CHIPS: dict[str, Chip] = {
    # https://cloud.google.com/tpu/docs/v4 : 275 TFLOPs (bf16), HBM2 32 GiB; 4 chips per host.
    # The page gives no per-chip ICI bandwidth.
    "v4": Chip("tpu", "v4", 32 * GiB, 275e12, None, 4, xla_name="v4"),
    # https://cloud.google.com/tpu/docs/v5e : 197 TFLOPs (bf16), 16 GB HBM2, ICI 400 GBps
    # bidirectional per chip (1600 Gbps), 8 chips per host.
    "v5e": Chip("tpu", "v5e", 16 * GiB, 197e12, 400e9, 8, xla_name="v5e"),
    # https://cloud.google.com/tpu/docs/v5p : 459 TFLOPs (bf16), 95 GB HBM2e, ICI 4800 Gbps
    # (600 GBps) per chip, 4 chips per host.
    "v5p": Chip("tpu", "v5p", 95 * GiB, 459e12, 600e9, 4, xla_name="v5p"),
    # https://cloud.google.com/tpu/docs/v6e : 918 TFLOPs (bf16), 32 GB HBM, ICI 800 GBps
    # bidirectional per chip, 8 chips per host.
    "v6e": Chip("tpu", "v6e", 32 * GiB, 918e12, 800e9, 8, xla_name="v6e"),
    # https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM datasheet): 80 GB HBM3, BF16 Tensor
    # Core 1,979 TFLOPS with sparsity (989.4 dense), NVLink 900 GB/s; 8 per HGX host.
    "h100": Chip(
        "gpu", "h100", 80 * 10**9, 989.4e12, 900e9, 8, gpu_spec="h100_sxm.txtpb", compute_capability=9.0
    ),
    # https://www.nvidia.com/en-us/data-center/a100/ (A100 SXM 80GB datasheet): 80 GB HBM2e, BF16
    # Tensor Core 312 TFLOPS (dense), NVLink 600 GB/s; 8 per HGX host.
    "a100": Chip(
        "gpu", "a100", 80 * 10**9, 312e12, 600e9, 8, gpu_spec="a100_sxm_80.txtpb", compute_capability=8.0
    ),
}

EXAMPLES = "tpu:v5e:2x2, tpu:v5p:4x4x4, gpu:h100x8, gpu:a100x8, gpu:h100:2x8"


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed target: the chip and its slice (TPU topology "2x2", "4x4x4"; GPU hosts x GPUs)."""

    spec: str
    chip: Chip
    topology: str  # TPU: libtpu's topology ("2x2"); GPU: "1x<hosts>x<gpus per host>"
    num_devices: int

    @property
    def platform(self) -> str:
        return self.chip.platform


def parse_target(spec: str) -> Target:
    """`tpu:<chip>:<topology>`, `gpu:<chip>x<n>` or `gpu:<chip>:<hosts>x<n>`; anything else is a
    UserError listing the valid forms."""
    text = spec.strip().lower()
    tpus = ", ".join(k for k, c in CHIPS.items() if c.platform == "tpu")
    gpus = ", ".join(k for k, c in CHIPS.items() if c.platform == "gpu")
    bad = f"--target {spec!r}: expected tpu:<{tpus.replace(', ', '|')}>:<topology such as 2x2 or 4x4x4>, or gpu:<{gpus.replace(', ', '|')}>x<gpus> or gpu:<chip>:<hosts>x<gpus per host> (e.g. {EXAMPLES})"
    m = re.fullmatch(r"tpu:([a-z0-9]+):(\d+(?:x\d+){1,2})", text)
    if m:
        chip = CHIPS.get(m.group(1))
        if chip is None or chip.platform != "tpu":
            raise UserError(f"--target {spec!r}: unknown TPU {m.group(1)!r}; known: {tpus}")
        dims = [int(d) for d in m.group(2).split("x")]
        if min(dims) < 1:
            raise UserError(bad)
        return Target(spec, chip, m.group(2), math.prod(dims))
    m = re.fullmatch(r"gpu:([a-z0-9]+?)(?:x(\d+)|:(\d+)x(\d+))", text)
    if m:
        chip = CHIPS.get(m.group(1))
        if chip is None or chip.platform != "gpu":
            raise UserError(f"--target {spec!r}: unknown GPU {m.group(1)!r}; known: {gpus}")
        hosts, per_host = (1, int(m.group(2))) if m.group(2) else (int(m.group(3)), int(m.group(4)))
        if hosts < 1 or not 1 <= per_host <= chip.devices_per_host:
            raise UserError(
                f"--target {spec!r}: {hosts} host(s) x {per_host} GPUs; a host holds 1 to "
                f"{chip.devices_per_host} {chip.name} GPUs"
            )
        return Target(spec, chip, f"1x{hosts}x{per_host}", hosts * per_host)
    raise UserError(bad)


def gpu_target_config(chip: Chip) -> str:
    """XLA's GpuTargetConfigProto (text) for `chip`, shipped in mambavision_jax/ops/gpu_specs."""
    return resources.files("mambavision_jax.ops").joinpath("gpu_specs", chip.gpu_spec).read_text()


def compile_only_devices(target: Target) -> list:
    """Devices of `target` that XLA compiles for without the hardware (they cannot run). Needs the
    `aot` extra (libtpu for TPUs, jax-cuda12-plugin and ptxas for GPUs); a TPU topology libtpu
    refuses is a UserError."""
    import os

    from jax.experimental import topologies

    # libtpu locks /tmp/libtpu_lockfile so that one process owns a host's TPU chips; compile-only
    # devices own nothing, and several processes (pytest workers, parallel plans) may compile at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no TPU VM metadata server to ask (it would wait)
    try:
        if target.platform == "tpu":
            topo = topologies.get_topology_desc(f"{target.chip.xla_name}:{target.topology}", "tpu")
        else:
            topo = topologies.get_topology_desc(
                platform="cuda",
                topology_name="",
                target_config=gpu_target_config(target.chip),
                topology=target.topology,
            )
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"--target {target.spec!r}: no compile-only {target.platform.upper()} devices ({first}); "
            "is the aot extra installed (pip install -e '.[aot]')?"
        ) from e
    return list(topo.devices)


def hosts_of(devices) -> int:
    return len({d.process_index for d in devices})


def mesh(target: Target, fsdp: int = 1, devices=None):
    """The training loop's (data, fsdp) mesh over `target`'s compile-only devices."""
    from mambavision_jax.train import sharding as shd

    devices = compile_only_devices(target) if devices is None else devices
    if fsdp < 1 or len(devices) % fsdp:
        raise UserError(f"--fsdp {fsdp} does not divide the {len(devices)} devices of {target.spec}")
    return shd.make_mesh(-1, fsdp, devices=devices)
