"""python -m mambavision_jax.convert: official PyTorch checkpoints <-> orbax checkpoints.

  to-jax    SRC OUT_DIR   a .pth.tar / .safetensors / Hugging Face folder -> an orbax folder
  to-torch  SRC OUT       an orbax folder (or any readable checkpoint) -> .pth.tar or .safetensors
  info      SRC           which variant a checkpoint holds, and its parameter count
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
from flax import nnx


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mambavision_jax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("src", help="checkpoint to read: .pth.tar/.pth (official training checkpoint "
                        "or bare state_dict), .safetensors, a Hugging Face model folder "
                        "(config.json + model.safetensors), or an orbax folder from to-jax")
        sp.add_argument("--model", default=None, help="variant name (see mambavision_jax.list_models()); "
                        "inferred from the weights, the checkpoint's args or config.json when omitted")

    j = sub.add_parser("to-jax", help="PyTorch / safetensors / HF folder -> orbax folder")
    common(j)
    j.add_argument("out", help="new folder for the orbax checkpoint (must not exist)")
    j.add_argument("--use-ema", action="store_true", help="take 'state_dict_ema' from a .pth.tar")
    j.add_argument("--num-classes", type=int, default=None,
                   help="a new head with this many classes (freshly initialised) instead of the checkpoint's")

    t = sub.add_parser("to-torch", help="orbax folder (or any checkpoint) -> .pth.tar or .safetensors")
    common(t)
    t.add_argument("out", help="output file: *.safetensors writes the Hugging Face layout (keys "
                   "'model.*') plus config.json beside it; anything else a .pth.tar with 'state_dict'")

    i = sub.add_parser("info", help="print the variant and parameter count of a checkpoint")
    common(i)
    return p


def main(argv=None) -> int:
    from mambavision_jax import xla_cpu
    xla_cpu.use_eigen_convolutions()  # XLA-CPU's faster convolutions, before JAX starts its backends
    args = _parser().parse_args(argv)
    from mambavision_jax.convert import (CheckpointError, load_checkpoint, save_checkpoint,
                                         save_torch_checkpoint)
    try:
        if args.command == "to-jax":
            model = load_checkpoint(args.src, args.model, num_classes=args.num_classes, use_ema=args.use_ema)
            out = save_checkpoint(model, args.out)
        else:
            model = load_checkpoint(args.src, args.model)
            out = save_torch_checkpoint(model, args.out) if args.command == "to-torch" else None
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"{model.name}: {n:,} parameters, {model.num_classes} classes" + (f" -> {out}" if out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
