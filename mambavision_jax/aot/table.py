"""`--all-variants`: one markdown row per official variant for one target (the table of
benchmarks/RESULTS.md). A variant that fails to compile gets a row with the compiler's first line."""

from __future__ import annotations

import dataclasses
import sys

from mambavision_jax.aot import planner
from mambavision_jax.aot import targets as tg
from mambavision_jax.models.registry import list_models

HEADER = (
    "| model | px | global batch | args / dev | temp / dev | total / dev | fits in HBM | GFLOP / step "
    "| img/s at peak | img/s at 40% | all-gather | reduce-scatter | all-reduce | compile s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _coll(r, op) -> str:
    if r["collectives"] is None:
        return "-"  # the compiler refused the program: none to read
    c = r["collectives"].get(op)
    return f"{c['count']} / {c['bytes'] / 2**20:.0f} MiB" if c else "0"


def row(r) -> str:
    m, rf = r["memory_per_device"], r["roofline"]
    fits = "yes" if r["fits"] else f"no, short {_gib(-r['headroom_bytes'])}"
    if r["memory_source"] == "hbm_oom_error":
        fits += " (refused)"  # libtpu does not build it; the need is its error's
    elif m["total"] > r["hbm_bytes"]:
        fits += f" (peak {_gib(m['peak'])})"  # the verdict is the compiler's peak, not the total
    return (
        f"| {r['model']} | {r['image_size']} | {r['batch']} | {_gib(m['argument'])} | {_gib(m['temp'])} "
        f"| {_gib(m['total'])} | {fits} | {r['flops_per_step'] / 1e9:,.0f} "
        f"| {rf['images_per_s_at_peak']:,.0f} | {rf['images_per_s_at_40pct']:,.0f} "
        f"| {_coll(r, 'all-gather')} | {_coll(r, 'reduce-scatter')} | {_coll(r, 'all-reduce')} "
        f"| {r['lower_s'] + r['compile_s']:.0f} |"
    )


def variants_table(base: planner.Request, per_device: int, models=None) -> str:
    """The markdown table of `models` (default: all 11) compiled as `base` (its target, program,
    dtype, ...) at `per_device` images per device."""
    target = tg.parse_target(base.target)
    devices = tg.compile_only_devices(target)
    n = len(devices)
    lines = [
        f"{target.spec}: {n} x {devices[0].device_kind}, {tg.hosts_of(devices)} host(s); {base.program}, "
        f"{base.dtype}, {per_device} images per device, fsdp {base.fsdp}, remat {base.remat}; "
        f"HBM {_gib(target.chip.hbm_bytes)} per chip, peak {target.chip.peak_bf16_flops / 1e12:.0f} "
        "TFLOP/s bf16; collectives: ops / bytes per device per step\n",
        HEADER,
    ]
    for model in models or list_models():
        req = dataclasses.replace(base, model=model, batch=per_device * n)
        try:
            r = planner.plan(req, compile_only_devices=devices)
            line = row(r) + "\n"
            kernels = f"scan {r['scan_impl']}, attention {planner._attention(r)}"
        except Exception as e:  # noqa: BLE001 - a compiler refusal is a result of the table
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            line = f"| {model} | | {req.batch} | failed: {type(e).__name__}: {first} |\n"
            kernels = ""
        print(line.rstrip() + (f"  ({kernels})" if kernels else ""), file=sys.stderr, flush=True)
        lines.append(line)
    return "".join(lines)
