"""python -m mambavision_jax.convert: official PyTorch checkpoints <-> orbax checkpoints.

  to-jax    SRC OUT_DIR   a .pth.tar / .safetensors / Hugging Face folder -> an orbax folder
  to-torch  SRC OUT       an orbax folder (or any readable checkpoint) -> .pth.tar or .safetensors
  info      SRC           which variant a checkpoint holds, and its parameter count

SRC is anything `mambavision_jax.weights` reads: also a hub id (nvidia/MambaVision-T-1K) or a
training run's workdir (--checkpoint best|latest|STEP, --ema / --no_ema pick its weights).

Refused before any work: a missing SRC; an existing OUT (to-torch replaces it only with
--overwrite; to-jax never writes into an existing folder); an OUT that is a folder (to-torch);
--use-ema on anything but a .pth.tar; an unknown --model. Refused while reading: a .pth.tar that
would run code to unpickle, truncated files, tensors that are not floating point where weights
belong, and NaN / inf weights (--allow-nonfinite loads those, for debugging). Outputs are
written to a temporary name and renamed into place (`paths.atomic_file` / `atomic_dir`), so an
interrupted run leaves the old output; a full disk or read-only target is one line, exit code 4.
SRC and OUT may be URLs (gs://bucket/...): there an output is built locally and uploaded whole,
a to-jax folder's mambavision_jax.json last.
"""

from __future__ import annotations

import argparse
import sys

from mambavision_jax import cli
from mambavision_jax.paths import check_output, is_remote, path_of

MAX_CLASSES = 1_000_000  # a head beyond this is a typo, not a data set (ImageNet-21k: 21,841)


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m mambavision_jax.convert",
        add_debug=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument(
            "src",
            help="checkpoint to read: .pth.tar/.pth (official training checkpoint "
            "or bare state_dict), .safetensors, a Hugging Face model folder "
            "(config.json + model.safetensors), an orbax folder from to-jax, a hub id, or a "
            "training run's workdir",
        )
        cli.add_model_argument(sp)
        cli.add_checkpoint_arguments(sp)
        sp.add_argument(
            "--allow-nonfinite",
            action="store_true",
            help="load weights holding NaN / inf values (refused by default; for debugging)",
        )

    j = sub.add_parser("to-jax", help="PyTorch / safetensors / HF folder -> orbax folder")
    common(j)
    j.add_argument("out", help="new folder for the orbax checkpoint (must not exist)")
    j.add_argument(
        "--use-ema",
        dest="ema",
        action="store_const",
        const=True,
        help="the same as --ema: take 'state_dict_ema' from a .pth.tar training checkpoint",
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


def _validate(args):
    """Every check that needs no weights, so a mistake is reported before minutes of loading; the
    weights resolved (`weights.resolve`: a hub id fetched once)."""
    from mambavision_jax import weights

    for what, value in (("SRC", args.src), ("OUT", getattr(args, "out", None))):
        if value == "":
            raise cli.UserError(f"{what} is an empty path; name a checkpoint file or folder")
    if args.model is not None:
        from mambavision_jax.models.registry import list_models

        if args.model not in list_models():
            raise cli.UserError(f"unknown --model {args.model!r}; choose one of {', '.join(list_models())}")
    if not weights.exists(args.src):
        raise FileNotFoundError(f"no such checkpoint: {path_of(args.src)}")
    if args.command == "to-jax":
        out = path_of(args.out)
        if out.exists() or (not is_remote(args.out) and out.is_symlink()):
            raise FileExistsError(
                f"{out} exists; to-jax writes a new folder: choose a path that does "
                f"not exist (or remove the old one)"
            )
        check_output(args.out, kind="dir")
    elif args.command == "to-torch":
        check_output(args.out, overwrite=args.overwrite)
    return weights.resolve(
        args.src, checkpoint=args.checkpoint, ema=args.ema, task="classification", needed_by="convert"
    )


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    source = _validate(args)

    import jax
    import numpy as np
    from flax import nnx

    from mambavision_jax import weights
    from mambavision_jax.convert import save_checkpoint, save_torch_checkpoint

    kw = {"num_classes": args.num_classes} if args.command == "to-jax" else {}
    model = weights.load(source, name=args.model, allow_nonfinite=args.allow_nonfinite, **kw).model
    out = None
    if args.command == "to-jax":
        out = save_checkpoint(model, args.out)
    elif args.command == "to-torch":
        out = save_torch_checkpoint(model, args.out, overwrite=args.overwrite)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    where = f" (step {source.step} of {source.path})" if source.step is not None else ""
    print(
        f"{model.name}: {n:,} parameters, {model.num_classes} classes{where}" + (f" -> {out}" if out else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
