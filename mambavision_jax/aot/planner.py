"""Build the real train / eval programs for a target this machine does not have, compile them with
the target's own XLA compiler, and read what the compiler says: memory per device, FLOPs,
collectives; then a roofline step time from the chip table.

`plan(...)` returns one dict (the CLI's table and its --json). The train program is
`train.loop.build_train_program`'s step (LAMB, EMA, mixup / cutmix, mesa, FSDP, the Pallas scans
per device through the model's `scan_sharding`) over sharded `jax.ShapeDtypeStruct`s: nothing is
allocated. The eval program is the training run's eval step (`train.evaluator.make_eval_step`).
A program over the chip's HBM is refused by libtpu (not by the CUDA compiler): its report says so
(`memory_source` "hbm_oom_error", not fitting, no collectives) instead of raising, so `--fit` and
`--all-variants` go on.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mambavision_jax import ops
from mambavision_jax.aot import targets as tg
from mambavision_jax.errors import UserError
from mambavision_jax.models.registry import list_models, pretrained_cfg
from mambavision_jax.ops import backend

PROGRAMS = ("train", "eval")
IMAGENET_TRAIN_EXAMPLES = 1_281_167  # steps per epoch only steer the schedule, not the program
NUM_CLASSES = 1000  # every official variant (the 21k ones were fine-tuned on ImageNet-1K)
REALISTIC_FRACTION = 0.4  # of the peak bf16 rate, for the second roofline column

# The official recipe each variant trains with (configs/*.py); the 21K / 512 / L3 variants, which
# have no ImageNet-1K recipe of their own, take the one of their architecture's family.
RECIPES = {
    "mamba_vision_T": "tiny.py",
    "mamba_vision_T2": "tiny2.py",
    "mamba_vision_S": "small.py",
    "mamba_vision_B": "base.py",
    "mamba_vision_B_21k": "base.py",
    "mamba_vision_L": "large.py",
    "mamba_vision_L_21k": "large.py",
    "mamba_vision_L2": "large2.py",
    "mamba_vision_L2_512_21k": "large2.py",
    "mamba_vision_L3_256_21k": "large2.py",
    "mamba_vision_L3_512_21k": "large2.py",
}
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"

# Without a GPU, XLA cannot autotune: its default Triton GEMM tiling for some of this model's
# fused dots fails ("Couldn't find output tile sizes"), so GEMMs go to cuBLAS, which a real GPU's
# autotuner may pick as well (FLOPs and buffers are the same; GEMM speed is not estimated here).
COMPILER_OPTIONS = {"gpu": {"xla_gpu_enable_triton_gemm": False}}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip


# ------------------------------------------------------------------ what "auto" is on the target
def scan_impl_for(target: tg.Target) -> str:
    """The selective scan `impl="auto"` picks on `target`'s devices (not on this host's CPU).
    `ops.default_impl` decides where it takes the target's compute capability; an older one
    (whose GPU answer needs a live GPU) is replaced by its rule: the Triton kernel on Ampere and
    later, Mosaic on TPU."""
    params = inspect.signature(ops.default_impl).parameters
    if "compute_capability" in params:
        cc = target.chip.compute_capability if target.platform == "gpu" else None
        return ops.default_impl(target.platform, compute_capability=cc)
    return "pallas_tpu" if target.platform == "tpu" else "pallas_gpu"


def attention_calls(hlo_text: str) -> dict[str, int]:
    """What window attention compiled to: {"cudnn": fused cuDNN attention calls in the compiled
    program (forward and backward), ...}. Attention's "auto" tries cuDNN on a GPU in bf16 and
    falls back to XLA where cuDNN's trace-time checks refuse a shape, so the program tells."""
    return {"cudnn": len(re.findall(r'custom_call_target="__cudnn\$fmha', hlo_text))}


# ------------------------------------------------------------------ the config train.py would run
def recipe_config(model: str, config_path: str | None = None):
    """`config_path`'s get_config() (default: the variant's recipe in configs/) for `model`."""
    if model not in RECIPES:
        raise UserError(f"--model {model!r}: unknown; valid: {', '.join(list_models())}")
    path = Path(config_path) if config_path else CONFIGS_DIR / RECIPES[model]
    if not path.is_file():
        raise UserError(
            f"config file {path} not found"
            + ("" if config_path else " (the recipes live in the repository's configs/; pass --config)")
        )
    spec = importlib.util.spec_from_file_location(f"_aot_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.name = model
    return config


@dataclasses.dataclass(frozen=True)
class Request:
    """One program to compile. batch: global; image_size 0: the variant's own; fsdp: the mesh's
    fsdp axis (data takes the rest); scan_impl / attn_impl "auto": the target's choice."""

    target: str
    model: str = "mamba_vision_T"
    batch: int = 256
    image_size: int = 0
    dtype: str = "bfloat16"
    program: str = "train"
    fsdp: int = 1
    remat: bool = False
    scan_impl: str = "auto"
    attn_impl: str = "auto"
    config: str | None = None


def _check(req: Request, target: tg.Target) -> None:
    if req.program not in PROGRAMS:
        raise UserError(f"--program {req.program!r}: valid: {', '.join(PROGRAMS)}")
    if req.batch % target.num_devices:
        raise UserError(
            f"--batch {req.batch} does not divide over the {target.num_devices} devices of {target.spec}; "
            f"use a multiple of {target.num_devices}"
        )
    if req.scan_impl != "auto" and req.scan_impl not in ops.SCAN_IMPLS:
        raise UserError(f"--scan_impl {req.scan_impl!r}: valid: auto, {', '.join(ops.SCAN_IMPLS)}")
    if req.attn_impl not in ops.ATTN_IMPLS:
        raise UserError(f"--attn_impl {req.attn_impl!r}: valid: {', '.join(ops.ATTN_IMPLS)}")


def build(req: Request, target: tg.Target, mesh):
    """(jitted program, abstract arguments, the config it was built from, the impls chosen)."""
    from mambavision_jax.train import sharding as shd
    from mambavision_jax.train.evaluator import make_eval_step
    from mambavision_jax.train.loop import build_train_program

    config = recipe_config(req.model, req.config)
    num_classes = config.model.num_classes if config.model.num_classes > 0 else NUM_CLASSES
    # The variant's own input size with its recipe (224 in every recipe file, 512 for the _512 ones).
    image_size = req.image_size or (
        config.data.image_size if req.config else pretrained_cfg(req.model).input_size[1]
    )
    # The scan is chosen here (its "auto" asks the default backend's devices); attention and
    # convolutions keep "auto", resolved while tracing under `target_platform` (see `plan`).
    impls = {
        "scan_impl": scan_impl_for(target) if req.scan_impl == "auto" else req.scan_impl,
        "attn_impl": req.attn_impl,
        "conv_impl": ops.resolve_conv_impl("auto", platform_name=target.platform),
    }
    config.batch_size = req.batch
    config.data.image_size = image_size
    config.model.dtype = req.dtype
    config.model.remat = req.remat
    config.model.scan_impl = impls["scan_impl"]
    config.model.overrides.attn_impl = impls["attn_impl"]
    config.model.overrides.conv_impl = impls["conv_impl"]
    config.mesh.fsdp = req.fsdp
    config.mesh.data = -1
    steps_per_epoch = max(1, IMAGENET_TRAIN_EXAMPLES // req.batch)
    program = build_train_program(config, mesh, num_classes, steps_per_epoch, abstract=True)
    b, sd = req.batch, jax.ShapeDtypeStruct
    batch_sharding = shd.batch_sharding(mesh)
    if req.program == "train":
        batch = {
            "image": sd((b, image_size, image_size, 3), jnp.uint8, sharding=batch_sharding),
            "label": sd((b,), jnp.int32, sharding=batch_sharding),
        }
        if config.data.re_prob > 0:  # the random-erasing boxes the host sends (data.pipeline)
            boxes = sd((b, config.data.re_count, 4), jnp.int32, sharding=batch_sharding)
            batch["erase"] = boxes
        return program.step, (program.state, batch), config, impls
    state = program.state
    batch = {
        "image": sd((b, image_size, image_size, 3), jnp.float32, sharding=batch_sharding),
        "label": sd((b,), jnp.int32, sharding=batch_sharding),
        "mask": sd((b,), jnp.bool_, sharding=batch_sharding),
    }
    step = jax.jit(make_eval_step(program.eval_gd), out_shardings=NamedSharding(mesh, P()))
    return step, (state.params, state.batch_stats, state.rngs, batch), config, impls


# ------------------------------------------------------------------ reading the compiled program
def _shape_bytes(text: str) -> list[int]:
    """Bytes of every array type in an HLO type string such as `(f32[8,80]{1,0}, bf16[4])`."""
    out = []
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text):
        if dtype in _DTYPE_BYTES:
            out.append(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d))
    return out


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{op: {"count", "bytes"}} of the collectives in a compiled HLO module's text: every
    instruction of `COLLECTIVES` (sync or the `-start` of an async pair), its bytes the size of its
    result per device (for an async start, whose result pairs operands and outputs, the outputs).
    Each instruction counts once, as in one step (a loop body would count once too; this model has
    no collective inside a loop)."""
    found: dict[str, dict[str, int]] = {}
    # `%name = TYPE op(...)`; a tuple TYPE may hold `/*index=5*/` comments, hence `=\s`.
    pattern = re.compile(r"=\s(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    for line in hlo_text.splitlines():
        m = pattern.search(line)
        if not m:
            continue
        type_text, op, start = m.groups()
        sizes = _shape_bytes(type_text)
        if start and type_text.startswith("("):
            # (operands..., outputs..., [u32[] contexts of a collective-permute])
            arrays = _shape_bytes(re.sub(r"u32\[\]", "", type_text))
            sizes = arrays[len(arrays) // 2 :]
        entry = found.setdefault(op, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += sum(sizes)
    return found


# libtpu refuses to build a program whose buffers exceed the chip's HBM (the CUDA compiler builds it
# and its memory analysis says by how much); its error states the program's need, e.g. "Ran out of
# memory on HBM, the total memory required for HLO temporaries (17.07G) exceeds available HBM
# (15.75G)", in tsl's 1024-based units. Despite the wording, the figure includes the arguments: a
# program with 20 GiB of temporaries asks for 20.25G with a 256 MiB argument shard, 22.00G with a
# 2 GiB one (v5e; "available" is the 16 GiB less a fixed 256 MiB).
_TPU_HBM_OOM = re.compile(
    r"Ran out of memory on HBM, the total memory required for HLO temporaries \(([\d.]+)([KMGTP]?)\)"
)


def hbm_oom_need_bytes(error: BaseException) -> int | None:
    """The bytes per device (arguments and temporaries) that libtpu's out-of-HBM compile error asks
    for (None: the error is another one)."""
    m = _TPU_HBM_OOM.search(str(error))
    if not m:
        return None
    return round(float(m.group(1)) * 1024 ** " KMGTP".index(m.group(2) or " "))


def argument_bytes_per_device(args) -> int:
    """The bytes one device holds of the (sharded) abstract arguments: each leaf's shard (a typed
    PRNG key's dtype has an itemsize too, its key data's)."""
    total = 0
    for leaf in jax.tree.leaves(args):
        sharding = getattr(leaf, "sharding", None)
        shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def _memory(compiled) -> dict[str, int]:
    ma = compiled.memory_analysis()
    if isinstance(ma, (list, tuple)):
        ma = ma[0]
    arg, out = int(ma.argument_size_in_bytes), int(ma.output_size_in_bytes)
    alias, temp = int(ma.alias_size_in_bytes), int(ma.temp_size_in_bytes)
    code = int(getattr(ma, "generated_code_size_in_bytes", 0) or 0)
    # Donated state: outputs that alias arguments take no second buffer.
    total = arg + out - alias + temp + code
    # The compiler's own peak of live bytes, what libtpu checks against the HBM: below `total` where
    # temporaries reuse donated arguments (mamba_vision_L2_512_21k's train step on a v5p: 85.77 GiB
    # at peak against 99.15 GiB of buffers).
    peak = int(getattr(ma, "peak_memory_in_bytes", 0) or 0) or total
    return {
        "argument": arg,
        "output": out,
        "alias": alias,
        "temp": temp,
        "code": code,
        "total": total,
        "peak": peak,
    }


def _xla_flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - the GPU client without a device implements none
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca or "flops" not in ca:
        return None
    return float(ca["flops"])


def jaxpr_flops(fn, args) -> float:
    """2 x the multiply-accumulates of every convolution and matrix product of `fn`'s jaxpr
    (`zoo.jaxpr_macs_of`): the whole program's FLOPs, all devices together."""
    from mambavision_jax.zoo import jaxpr_macs_of

    return 2.0 * jaxpr_macs_of(jax.make_jaxpr(fn)(*args).jaxpr)


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def plan(req: Request, *, compile_only_devices=None) -> dict[str, Any]:
    """Compile `req` for its target; the report as a JSON-safe dict (see `format_table`)."""
    target = tg.parse_target(req.target)
    _check(req, target)
    devices = compile_only_devices or tg.compile_only_devices(target)
    mesh = tg.mesh(target, req.fsdp, devices)
    t0 = time.perf_counter()
    with backend.target_platform(target.platform):
        fn, args, config, impls = build(req, target, mesh)
        lowered = fn.lower(*args)
    t1 = time.perf_counter()
    try:
        compiled = lowered.compile(compiler_options=COMPILER_OPTIONS.get(target.platform))
    except jax.errors.JaxRuntimeError as e:
        need = hbm_oom_need_bytes(e)
        if need is None:
            raise
        compiled = None  # too big for the chip: the report says by how much, from the error
    t2 = time.perf_counter()
    n = len(devices)
    chip = target.chip
    if compiled is not None:
        hlo, memory, memory_source = compiled.as_text(), _memory(compiled), "memory_analysis"
        flops_device = _xla_flops(compiled)
    else:
        # No program, so no outputs, code or HLO: the compiler's stated need, of which the
        # arguments' shards are known here and the rest is temporaries.
        arg = argument_bytes_per_device(args)
        memory = dict(argument=arg, output=0, alias=0, temp=need - arg, code=0, total=need, peak=need)
        hlo, memory_source, flops_device = None, "hbm_oom_error", None
    if flops_device is not None:
        flops_source, flops_total = "xla_cost_analysis", flops_device * n
    else:
        flops_source = "jaxpr_conv_matmul"
        with backend.target_platform(target.platform):
            flops_total = jaxpr_flops(fn, args)
        flops_device = flops_total / n
    step_s = flops_device / chip.peak_bf16_flops
    image_size = config.data.image_size
    return {
        "target": target.spec,
        "platform": target.platform,
        "chip": chip.name,
        "devices": n,
        "hosts": tg.hosts_of(devices),
        "device_kind": str(devices[0].device_kind),
        "model": req.model,
        "program": req.program,
        "batch": req.batch,
        "batch_per_device": req.batch // n,
        "image_size": image_size,
        "dtype": req.dtype,
        "fsdp": req.fsdp,
        "remat": req.remat,
        "mesa": req.program == "train" and config.mesa.weight > 0,
        "ema": req.program == "train" and bool(config.ema.enabled),
        **impls,
        "memory_per_device": memory,
        "memory_source": memory_source,
        "hbm_bytes": chip.hbm_bytes,
        "fits": compiled is not None and memory["peak"] <= chip.hbm_bytes,
        "headroom_bytes": chip.hbm_bytes - memory["peak"],
        "flops_per_step": flops_total,
        "flops_per_device": flops_device,
        "flops_source": flops_source,
        "peak_bf16_flops": chip.peak_bf16_flops,
        "roofline": {
            "step_s_at_peak": step_s,
            "images_per_s_at_peak": req.batch / step_s if step_s else None,
            "step_s_at_40pct": step_s / REALISTIC_FRACTION,
            "images_per_s_at_40pct": REALISTIC_FRACTION * req.batch / step_s if step_s else None,
        },
        "attention_calls": attention_calls(hlo) if hlo is not None else None,
        "collectives": collectives(hlo) if hlo is not None else None,
        "lower_s": round(t1 - t0, 1),
        "compile_s": round(t2 - t1, 1),
    }


def _attention(r) -> str:
    if r["attn_impl"] != "auto":
        return r["attn_impl"]
    if r["attention_calls"] is None:
        return "auto (no program built)"
    n = r["attention_calls"]["cudnn"]
    return f"auto: cuDNN fused ({n} calls)" if n else "auto: XLA"


def format_table(r: dict[str, Any]) -> str:
    """The report as an aligned text table."""
    m = r["memory_per_device"]
    refused = r["memory_source"] == "hbm_oom_error"
    fit = (
        f"fits ({_fmt_bytes(r['headroom_bytes'])} free)"
        if r["fits"]
        else f"does NOT fit: short by {_fmt_bytes(-r['headroom_bytes'])}"
    )
    if refused:
        fit += " (the compiler refused to build it; the need its error states)"
    rf = r["roofline"]
    rows = [
        ("target", f"{r['target']}: {r['devices']} x {r['device_kind']}, {r['hosts']} host(s)"),
        (
            "program",
            f"{r['model']} {r['program']}, global batch {r['batch']} ({r['batch_per_device']} per device), "
            f"{r['image_size']} px, {r['dtype']}, fsdp {r['fsdp']}, remat {r['remat']}"
            + (f", mesa {r['mesa']}, ema {r['ema']}" if r["program"] == "train" else ""),
        ),
        ("kernels", f"scan {r['scan_impl']}, attention {_attention(r)}, conv {r['conv_impl']}"),
        ("arguments / device", _fmt_bytes(m["argument"])),
        ("outputs / device", f"{_fmt_bytes(m['output'])} ({_fmt_bytes(m['alias'])} aliased to arguments)"),
        ("temp / device", _fmt_bytes(m["temp"])),
        ("total / device", f"{_fmt_bytes(m['total'])} (every buffer)"),
        ("peak / device", f"{_fmt_bytes(m['peak'])} of {_fmt_bytes(r['hbm_bytes'])} HBM: {fit}"),
        (
            "FLOPs / step",
            f"{r['flops_per_step']:.4g} ({r['flops_per_device']:.4g} per device; "
            + ("XLA cost analysis" if r["flops_source"] == "xla_cost_analysis" else "jaxpr conv+matmul count")
            + ")",
        ),
        (
            "roofline at peak",
            f"{rf['step_s_at_peak'] * 1e3:.1f} ms/step, {rf['images_per_s_at_peak']:,.0f} img/s "
            f"({r['peak_bf16_flops'] / 1e12:.0f} TFLOP/s bf16 per chip)",
        ),
        (
            f"at {REALISTIC_FRACTION:.0%} of peak",
            f"{rf['step_s_at_40pct'] * 1e3:.1f} ms/step, {rf['images_per_s_at_40pct']:,.0f} img/s",
        ),
    ]
    coll = r["collectives"]
    if coll is None:
        rows.append(("collectives", "unknown: no program was built"))
    else:
        for op in COLLECTIVES:
            if op in coll or op in ("all-gather", "reduce-scatter", "all-reduce"):
                c = coll.get(op, {"count": 0, "bytes": 0})
                rows.append((f"{op} / step", f"{c['count']} ops, {_fmt_bytes(c['bytes'])} per device"))
    rows.append(("compile", f"lowered in {r['lower_s']} s, compiled in {r['compile_s']} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
