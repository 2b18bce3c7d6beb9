"""python -m mambavision_jax.convert: official PyTorch checkpoints <-> orbax checkpoints.

  to-jax    SRC OUT_DIR   a .pth.tar / .safetensors / Hugging Face folder -> an orbax folder
  to-torch  SRC OUT       an orbax folder (or any readable checkpoint) -> .pth.tar or .safetensors
  info      SRC           which variant a checkpoint holds, and its parameter count

Refused before any work: a missing SRC; an existing OUT (to-torch replaces it only with
--overwrite; to-jax never writes into an existing folder); an OUT that is a folder (to-torch);
--use-ema on anything but a .pth.tar; an unknown --model. Refused while reading: a .pth.tar that
would run code to unpickle, truncated files, tensors that are not floating point where weights
belong, and NaN / inf weights (--allow-nonfinite loads those, for debugging). Outputs are
written to a temporary name and renamed into place, so an interrupted run leaves the old output.
SRC and OUT may be URLs (gs://bucket/...): there a file is uploaded as one whole object, and a
to-jax folder is complete once its mambavision_jax.json is written (last).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from pathlib import Path

from mambavision_jax import cli
from mambavision_jax.paths import as_path, is_remote, path_of

MAX_CLASSES = 1_000_000  # a head beyond this is a typo, not a data set (ImageNet-21k: 21,841)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mambavision_jax.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument(
            "src",
            help="checkpoint to read: .pth.tar/.pth (official training checkpoint "
            "or bare state_dict), .safetensors, a Hugging Face model folder "
            "(config.json + model.safetensors), or an orbax folder from to-jax",
        )
        sp.add_argument(
            "--model",
            default=None,
            help="variant name (see mambavision_jax.list_models()); "
            "inferred from the weights, the checkpoint's args or config.json when omitted",
        )
        sp.add_argument(
            "--allow-nonfinite",
            action="store_true",
            help="load weights holding NaN / inf values (refused by default; for debugging)",
        )
        cli.add_debug_flag(sp)

    j = sub.add_parser("to-jax", help="PyTorch / safetensors / HF folder -> orbax folder")
    common(j)
    j.add_argument("out", help="new folder for the orbax checkpoint (must not exist)")
    j.add_argument(
        "--use-ema", action="store_true", help="take 'state_dict_ema' from a .pth.tar training checkpoint"
    )
    j.add_argument(
        "--num-classes",
        type=cli.int_range(1, MAX_CLASSES),
        default=None,
        help="a new head with this many classes (freshly initialised) instead of the checkpoint's",
    )

    t = sub.add_parser("to-torch", help="orbax folder (or any checkpoint) -> .pth.tar or .safetensors")
    common(t)
    t.add_argument(
        "out",
        help="output file: *.safetensors writes the Hugging Face layout (keys "
        "'model.*') plus config.json beside it; anything else a .pth.tar with 'state_dict'",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT (and, for .safetensors, the config.json beside it)",
    )

    i = sub.add_parser("info", help="print the variant and parameter count of a checkpoint")
    common(i)
    return p


def _validate(args) -> None:
    """Every check that needs no weights, so a mistake is reported before minutes of loading."""
    from mambavision_jax.convert import checkpoint_io as io
    from mambavision_jax.convert.api import ORBAX_META

    for what, value in (("SRC", args.src), ("OUT", getattr(args, "out", None))):
        if value == "":
            raise cli.UserError(f"{what} is an empty path; name a checkpoint file or folder")
    src = path_of(args.src)
    if not src.exists():
        raise FileNotFoundError(f"no such checkpoint: {src}")
    if args.model is not None:
        from mambavision_jax.models.registry import list_models

        if args.model not in list_models():
            raise cli.UserError(f"unknown --model {args.model!r}; choose one of {', '.join(list_models())}")
    if getattr(args, "use_ema", False) and (src.is_dir() or src.suffix == ".safetensors"):
        kind = (
            "an orbax folder"
            if (src / ORBAX_META).is_file()
            else ("a Hugging Face folder" if src.is_dir() else "a .safetensors file")
        )
        raise cli.UserError(
            f"--use-ema takes the EMA weights of a .pth.tar training checkpoint; {src} is "
            f"{kind}, which holds one set of weights: drop --use-ema"
        )
    if args.command == "to-jax":
        out = path_of(args.out)
        if out.exists() or (not is_remote(out) and out.is_symlink()):
            raise FileExistsError(
                f"{out} exists; to-jax writes a new folder: choose a path that does "
                f"not exist (or remove the old one)"
            )
        parent = None if is_remote(out) else next((p for p in out.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise NotADirectoryError(f"cannot write {out}: {parent} is a file, not a folder")
    elif args.command == "to-torch":
        io.check_output_file(args.out, overwrite=args.overwrite)


def _save_orbax_atomically(model, out: str):
    # Built in a hidden sibling folder and renamed into place when complete: an interrupted
    # conversion leaves no half-written folder under the requested name. An object store has no
    # folder rename: there the folder is written in place, its mambavision_jax.json last (a
    # folder without it is no checkpoint to load_checkpoint), and removed again on failure.
    from mambavision_jax.convert import save_checkpoint

    if is_remote(out):
        out_path = as_path(out)
        try:
            return save_checkpoint(model, out_path)
        except BaseException:
            if out_path.exists():
                out_path.rmtree()
            raise
    out_path = Path(out).absolute()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        save_checkpoint(model, tmp)
        os.rename(tmp, out_path)  # fails rather than merging if `out` appeared meanwhile
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_path


def main(argv=None) -> int:
    from mambavision_jax import xla_cpu

    xla_cpu.use_eigen_convolutions()  # XLA-CPU's faster convolutions, before JAX starts its backends
    args = _parser().parse_args(argv)
    _validate(args)

    import jax
    import numpy as np
    from flax import nnx

    from mambavision_jax.convert import load_checkpoint, save_torch_checkpoint

    out = None
    if args.command == "to-jax":
        model = load_checkpoint(
            args.src,
            args.model,
            num_classes=args.num_classes,
            use_ema=args.use_ema,
            allow_nonfinite=args.allow_nonfinite,
        )
        out = _save_orbax_atomically(model, args.out)
    else:
        model = load_checkpoint(args.src, args.model, allow_nonfinite=args.allow_nonfinite)
        if args.command == "to-torch":
            out = save_torch_checkpoint(model, args.out, overwrite=args.overwrite)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"{model.name}: {n:,} parameters, {model.num_classes} classes" + (f" -> {out}" if out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
