"""The model zoo: parameters and compute of the 11 variants, measured, beside the paper's numbers.

    python -m mambavision_jax.zoo                  # markdown table of all 11 (a few minutes on a CPU)
    python -m mambavision_jax.zoo --models mamba_vision_T,mamba_vision_S --json zoo.json

Nothing is downloaded or initialised: each model is built abstractly (`nnx.eval_shape`), so the
largest variant costs no memory.
- params: the number of elements of every `nnx.Param` (BatchNorm running statistics excluded, as
  PyTorch's `sum(p.numel() for p in model.parameters())`).
- XLA GFLOPs: `jax.jit(f).lower(...).compile().cost_analysis()["flops"]` for one image at the
  variant's own input size. XLA's HloCostAnalysis counts a multiply-add as 2 flops (a dot or
  convolution as 2 x MACs) and every elementwise add / multiply / compare / select and every
  reduction element as 1 flop; exp / log / tanh / erf / rsqrt are counted separately
  ("transcendentals"), not as flops; a while loop's body is counted once, not per iteration, so
  the selective scan's `lax.scan` contributes a single step (its full cost is < 0.1% here).
- XLA GMACs = XLA GFLOPs / 2: comparable to the paper's "GFLOPs" column, which (like most vision
  papers, via fvcore / thop) counts multiply-accumulates. It is within ~1% of the conv + matmul
  MACs below: XLA adds the elementwise work (norms, activations, residual adds, softmax) but its
  optimised graph also rewrites some products.
- GMACs (conv + matmul): multiply-accumulates of every convolution and matrix product only, counted
  from the jaxpr (scan bodies times their length): the closest to the fvcore convention.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mambavision_jax import cli, paths

__all__ = [
    "PAPER",
    "count_params",
    "xla_cost",
    "jaxpr_macs",
    "jaxpr_macs_of",
    "zoo_rows",
    "markdown_table",
    "main",
]

# The paper / official README: top-1 (%), params (M), GFLOPs (MACs, G).
PAPER: dict[str, tuple[float, float, float]] = {
    "mamba_vision_T": (82.3, 31.8, 4.4),
    "mamba_vision_T2": (82.7, 35.1, 5.1),
    "mamba_vision_S": (83.3, 50.1, 7.5),
    "mamba_vision_B": (84.2, 97.7, 15.0),
    "mamba_vision_L": (85.0, 227.9, 34.9),
    "mamba_vision_L2": (85.3, 241.5, 37.5),
    "mamba_vision_L3_512_21k": (88.1, 739.6, 489.1),
}
# Exact parameter counts of the official PyTorch models, where known (docs/architecture.md).
OFFICIAL_PARAMS = {"mamba_vision_T": 31_794_248}


def _abstract_model(name: str, **overrides):
    from mambavision_jax.models.registry import create_model

    model = nnx.eval_shape(lambda: create_model(name, **overrides))
    model.eval()
    return model


def count_params(model) -> int:
    """Elements of every nnx.Param (works on abstract models from nnx.eval_shape)."""
    return int(sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))))


def _forward_and_args(model, batch: int, image_size: int):
    graphdef, state = nnx.split(model)

    def forward(state, images):
        return nnx.merge(graphdef, state)(images)

    abstract_state = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), state)
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, model.in_chans), jnp.float32)
    return forward, (abstract_state, images)


def xla_cost(model, *, batch: int = 1, image_size: int = 224, compile: bool = True) -> dict[str, float]:
    """XLA's cost analysis of the forward pass: {"flops", "transcendentals", "bytes_accessed"}.
    compile=False reads the analysis of the unoptimised lowering (seconds instead of a compile;
    within ~0.1% here)."""
    forward, args = _forward_and_args(model, batch, image_size)
    lowered = jax.jit(forward).lower(*args)
    ca = lowered.compile().cost_analysis() if compile else lowered.cost_analysis()
    if isinstance(ca, (list, tuple)):  # older JAX: one dict per device program
        ca = ca[0]
    return {
        "flops": float(ca.get("flops", 0.0)),
        "transcendentals": float(ca.get("transcendentals", 0.0)),
        "bytes_accessed": float(ca.get("bytes accessed", 0.0)),
    }


def _sub_jaxprs(params: dict[str, Any]):
    for v in params.values():
        for item in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def _eqn_macs(eqn) -> int:
    name = eqn.primitive.name
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
        return math.prod(eqn.outvars[0].aval.shape) * (math.prod(rhs) // rhs[out_feature_dim])
    return 0


def jaxpr_macs_of(jaxpr) -> int:
    """Multiply-accumulates of every convolution and dot_general in `jaxpr`: a scan's body counted
    `length` times, a cond's most expensive branch once, other sub-jaxprs (pjit, remat, custom_vjp)
    once."""
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        mult = int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else 1
        subs = list(_sub_jaxprs(eqn.params))
        if eqn.primitive.name == "cond":
            total += max((jaxpr_macs_of(j) for j in subs), default=0)
        else:
            total += mult * sum(jaxpr_macs_of(j) for j in subs)
    return total


def jaxpr_macs(model, *, batch: int = 1, image_size: int = 224) -> int:
    """Multiply-accumulates of every convolution and dot_general in the forward pass (scan bodies
    counted `length` times)."""
    forward, args = _forward_and_args(model, batch, image_size)
    return jaxpr_macs_of(jax.make_jaxpr(forward)(*args).jaxpr)


def zoo_rows(
    names: Sequence[str] | None = None, *, compile: bool = True, progress: bool = False, **overrides
) -> list[dict[str, Any]]:
    """One dict per variant: name, input size, params, XLA flops / MACs, conv+matmul MACs, and the
    paper's top-1 / params / GFLOPs (None where the paper gives none)."""
    from mambavision_jax.models.registry import list_models, pretrained_cfg

    rows = []
    for name in names or list_models():
        t = time.perf_counter()
        model = _abstract_model(name, **overrides)
        size = int(pretrained_cfg(name).input_size[-1])
        cost = xla_cost(model, image_size=size, compile=compile)
        paper = PAPER.get(name)
        rows.append(
            {
                "model": name,
                "input_size": size,
                "params": count_params(model),
                "xla_gflops": cost["flops"] / 1e9,
                "xla_gmacs": cost["flops"] / 2e9,
                "gmacs_conv_matmul": jaxpr_macs(model, image_size=size) / 1e9,
                "xla_transcendentals_g": cost["transcendentals"] / 1e9,
                "paper_top1": paper[0] if paper else None,
                "paper_params_m": paper[1] if paper else None,
                "paper_gflops": paper[2] if paper else None,
                "seconds": time.perf_counter() - t,
            }
        )
        if progress:
            r = rows[-1]
            print(
                f"  {name}: {r['params']:,} params, {r['xla_gmacs']:.2f} XLA GMACs ({r['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| model | input | params | params (paper) | XLA GFLOPs | XLA GMACs (= GFLOPs/2) | "
        "GMACs conv+matmul | GFLOPs (paper, MACs) | top-1 (paper) |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input_size']} | {r['params'] / 1e6:.2f}M ({r['params']:,}) | "
            f"{_fmt(r['paper_params_m'], '.1f')}{'M' if r['paper_params_m'] else ''} | "
            f"{r['xla_gflops']:.2f} | {r['xla_gmacs']:.2f} | {r['gmacs_conv_matmul']:.2f} | "
            f"{_fmt(r['paper_gflops'], '.1f')} | {_fmt(r['paper_top1'], '.1f')} |"
        )
    return "\n".join(lines)


NOTES = """\
Params are counted from the JAX model (nnx.Param elements; BatchNorm statistics excluded), compute
for one image at each variant's own input size. XLA GFLOPs come from XLA's cost analysis of the
compiled forward pass: it counts a multiply-add as 2 flops and also counts elementwise work (norms,
activations, residuals, softmax) but not exp/log/tanh/erf (counted as transcendentals), and a
while loop's body only once (the selective scan's lax.scan counts one step; its full cost is below
0.1%). The paper's "GFLOPs" are multiply-accumulates (fvcore convention), so compare them with XLA
GMACs = XLA GFLOPs / 2, or with the conv + matmul MACs counted from the jaxpr (every convolution and
dot_general, scan bodies times their length; the two agree within ~1%). Paper numbers: the paper and
the official README; "-" where the paper gives none."""


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m mambavision_jax.zoo",
        description="Markdown model-zoo table: params and FLOPs/MACs measured with XLA beside the "
        "paper's numbers, for the official variants.",
    )
    p.add_argument("--models", default=None, help="comma-separated variant names (default: all 11)")
    p.add_argument(
        "--no_compile",
        action="store_true",
        help="use the cost analysis of the unoptimised lowering (much faster; compiling "
        "all 11 takes minutes on a CPU)",
    )
    p.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")
    p.add_argument("--out", metavar="FILE", default=None, help="write the markdown to FILE instead of stdout")
    p.add_argument("--quiet", action="store_true", help="no per-model progress lines on stderr")
    return p


def _model_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    from mambavision_jax.models.registry import list_models

    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise cli.UserError(f"--models {text!r} has an empty name; give comma-separated variant names")
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise cli.UserError(
            f"--models: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(list_models())}"
        )
    return list(dict.fromkeys(names))  # each variant once, in the order given


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Everything checked before minutes of compiling.
    names = _model_names(args.models)
    for flag, path in (("--out", args.out), ("--json", args.json)):
        if path is not None:
            paths.check_output(path, flag=flag, overwrite=True, parent_must_exist=True)
    if args.out and args.json and paths.as_path(args.out) == paths.as_path(args.json):
        raise cli.UserError("--out and --json name the same file; give two different files")
    rows = zoo_rows(names, compile=not args.no_compile, progress=not args.quiet)
    text = markdown_table(rows) + "\n\n" + NOTES + "\n"
    if args.out:
        paths.atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    if args.json:
        paths.atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
