"""python -m mambavision_jax.aot --target tpu:v5e:2x2 --model mamba_vision_T --batch 256 --dtype bfloat16

Compiles train.py's train step (or the eval step) for a TPU or GPU this machine does not have,
with that chip's XLA compiler, and prints per-device memory against the chip's HBM, FLOPs per
step, a roofline step time and the collectives of the compiled program. Needs the `aot` extra
(`pip install -e ".[aot]"`: libtpu, the CUDA plugin and ptxas); runs on a CPU-only machine.

--fit batch|fsdp|remat searches, by compiling, the largest per-device batch that fits, or the
smallest fsdp, or whether remat is needed. --all-variants writes the table of all 11 variants
(benchmarks/RESULTS.md has the one for v5e 4x4, v5p 4x4x4 and 2 hosts of 8 H100).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import jax

from mambavision_jax import cli, paths
from mambavision_jax.aot import targets as tg
from mambavision_jax.models.config import FLOAT_DTYPES

# Compile-only devices need no accelerator: JAX runs on the CPU (else it would try libtpu and the
# CUDA plugin as backends, and the latter prints a traceback without a GPU). The package import
# already read the environment, so the platform is set through jax.config, before any backend starts.
if not os.environ.get("JAX_PLATFORMS"):
    jax.config.update("jax_platforms", "cpu")

# The global batch per target family that the --all-variants table uses by default: the official
# recipe's per-GPU 128 on GPUs; 32 per chip on v5e (16 GiB) and 128 on v5p.
DEFAULT_BATCH_PER_DEVICE = {"v4": 64, "v5e": 32, "v5p": 128, "v6e": 64, "h100": 128, "a100": 128}


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m mambavision_jax.aot",
        description=__doc__.split("\n\n")[1],
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", required=True, help=f"the chips to compile for: {tg.EXAMPLES}")
    p.add_argument("--model", default="mamba_vision_T", help="a variant (python -m mambavision_jax.zoo)")
    p.add_argument(
        "--all-variants",
        action="store_true",
        help="every official variant, one markdown row each (--batch: per device, default by chip)",
    )
    p.add_argument("--batch", type=cli.positive_int, default=None, help="global batch (default 256)")
    p.add_argument("--image_size", type=cli.non_negative_int, default=0, help="0: the variant's own")
    p.add_argument("--dtype", default="bfloat16", choices=[d for d in FLOAT_DTYPES if d != "float64"])
    p.add_argument("--program", default="train", choices=("train", "eval"))
    p.add_argument("--fsdp", type=cli.positive_int, default=1, help="the mesh's fsdp axis size")
    p.add_argument("--remat", action="store_true", help="recompute block activations in the backward")
    p.add_argument("--scan_impl", default="auto", help="auto: what the target picks")
    p.add_argument("--attn_impl", default="auto", help="auto: what the target picks")
    p.add_argument("--config", default=None, help="a training config file (default: the variant's recipe)")
    p.add_argument("--fit", choices=("batch", "fsdp", "remat"), default=None, help="search what fits")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", default=None, help="--all-variants: write the markdown table here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    target = tg.parse_target(args.target)  # a bad target: one line, before any import of jax
    from mambavision_jax.aot import planner

    req = planner.Request(
        target=args.target,
        model=args.model,
        batch=args.batch or 256,
        image_size=args.image_size,
        dtype=args.dtype,
        program=args.program,
        fsdp=args.fsdp,
        remat=args.remat,
        scan_impl=args.scan_impl,
        attn_impl=args.attn_impl,
        config=args.config,
    )
    if args.all_variants:
        from mambavision_jax.aot import table

        per_device = args.batch or DEFAULT_BATCH_PER_DEVICE[target.chip.name]
        text = table.variants_table(req, per_device)
        if args.out:
            paths.atomic_write_text(args.out, text)
        else:
            sys.stdout.write(text)
        return 0
    planner.recipe_config(req.model, req.config)  # an unknown model or config: before compiling
    if args.fit:
        from mambavision_jax.aot import fit

        log = (lambda s: print(s, file=sys.stderr)) if args.json else print
        result = fit.fit(req, args.fit, log=log)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            answer = "nothing fits" if result["value"] is None else f"{args.fit} = {result['value']}"
            if args.fit == "batch" and result["value"] is not None:
                answer += f" per device (global {result['report']['batch']})"
            print(f"--fit {args.fit}: {answer} ({result['compiles']} compiles)")
            print(planner.format_table(result["report"]))
        return 0
    report = planner.plan(req)
    print(json.dumps(report, indent=2) if args.json else planner.format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
