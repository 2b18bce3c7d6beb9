"""What every command line of the package shares: the set-up and error handling of `run`, the
argument types that check ranges, and the flags several commands take (defined once here).

`run(main)` is every command's entry point. It sets XLA-CPU's faster convolutions before JAX
starts (`xla_cpu.use_eigen_convolutions`), then calls `main(argv)`. A user error (the package's
`errors.UserError` classes: a bad argument, a refused or corrupt checkpoint, a bad config value;
argparse's usage errors; a missing file; an unreadable image) ends the command with
`error: <what is wrong and how to fix it>` on stderr and exit code 2, no traceback; a refusal of
the machine or the store (full disk, read-only target, no permission, missing bucket) the same way
with exit code 4 (`mambavision_jax.errors`). `--debug` on the command line, or
MAMBAVISION_JAX_DEBUG=1, shows the traceback. Anything else is a bug: its traceback, then a line
asking for a report, exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from mambavision_jax.errors import (
    EXIT_ENVIRONMENT,
    EXIT_USER_ERROR,
    UsageError,
    UserError,
    is_environment_failure,
)

ISSUES_URL = "https://github.com/mambavision-jax/mambavision-jax/issues"
DTYPES = ("float32", "bfloat16", "float16")
CHECKPOINT_CHOICES = "{best,latest,STEP}"


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        UserError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
    ]
    if "mambavision_jax.images" in sys.modules:  # PIL's module loaded: an image may have failed
        from mambavision_jax.images import ImageReadError

        errors.append(ImageReadError)
    return tuple(errors)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("MAMBAVISION_JAX_DEBUG", "") not in ("", "0")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)` after the shared set-up; a user error becomes `error: ...` on stderr and
    exit code 2, a refusal of the machine or the store the same with exit code 4, a bug its
    traceback and a request for a report (exit code 1)."""
    from mambavision_jax import xla_cpu

    xla_cpu.use_eigen_convolutions()  # before JAX starts its backends
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if is_environment_failure(e):
            code = EXIT_ENVIRONMENT
        elif isinstance(e, _user_errors()):
            code = EXIT_USER_ERROR
        else:
            traceback.print_exc()
            print(
                f"this is a bug in mambavision-jax ({type(e).__name__}); please report it with the "
                f"command line and the traceback above: {ISSUES_URL}",
                file=sys.stderr,
            )
            return 1
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return code


def one_line(e: BaseException) -> str:
    """The message of an error the user sees, on one line (an OSError as `file: reason`)."""
    text = str(e) if str(e) else type(e).__name__
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    return " ".join(text.split())


# ------------------------------------------------------------------ argparse types
def _number(kind, minimum=None, maximum=None, *, min_inclusive=True, max_inclusive=True):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is float and value != value:  # NaN
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        low_ok = minimum is None or (value >= minimum if min_inclusive else value > minimum)
        high_ok = maximum is None or (value <= maximum if max_inclusive else value < maximum)
        if not (low_ok and high_ok):
            lo = "" if minimum is None else f"{'>=' if min_inclusive else '>'} {minimum}"
            hi = "" if maximum is None else f"{'<=' if max_inclusive else '<'} {maximum}"
            raise argparse.ArgumentTypeError(f"must be {' and '.join(s for s in (lo, hi) if s)}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(int, 1)(text)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(int, 0)(text)


def int_range(minimum: int | None = None, maximum: int | None = None):
    """argparse type: an integer in [minimum, maximum]."""
    return _number(int, minimum, maximum)


def float_range(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
):
    """argparse type: a finite float in the range (bounds inclusive unless told otherwise)."""
    return _number(float, minimum, maximum, min_inclusive=min_inclusive, max_inclusive=max_inclusive)


def checkpoint_choice(text: str) -> str:
    """argparse type of --checkpoint: best, latest or a step number."""
    if text in ("best", "latest") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"must be best, latest or a step number, got {text!r}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UsageErrors: under `run`, one `error: ...` line, exit 2.
    Every parser gets `--debug` (read by `run` before parsing) in its --help."""

    def __init__(self, *args, add_debug: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if add_debug:
            add_debug_flag(self)

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


# ------------------------------------------------------------------ shared flags
def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """`--debug` (read by `run` before parsing) shown in --help."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def add_weights_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--weights, --model, --checkpoint, --ema / --no_ema (`weights.resolve`'s arguments)."""
    p.add_argument(
        "--weights",
        required=required,
        help="checkpoint: official .pth.tar, .safetensors, Hugging Face model folder "
        "(config.json + model.safetensors), a hub id such as nvidia/MambaVision-T-1K, an orbax "
        "folder from mambavision_jax.convert, or a training run's workdir",
    )
    add_model_argument(p)
    add_checkpoint_arguments(p)


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="variant name, e.g. mamba_vision_T (default: inferred from the weights or "
        "config.json; needed where the weights are ambiguous, e.g. L2 vs L2_512_21k)",
    )


def add_checkpoint_argument(p: argparse.ArgumentParser, *, best: str = "best validation top-1") -> None:
    """--checkpoint: which checkpoint of a training run (`best`: what best/ keeps)."""
    p.add_argument(
        "--checkpoint",
        type=checkpoint_choice,
        default="best",
        metavar=CHECKPOINT_CHOICES,
        help=f"a training workdir's checkpoint: best ({best}), latest, or a step number (default best)",
    )


def add_seg_mode_argument(p: argparse.ArgumentParser) -> None:
    """--mode: a segmenter's test mode (`train.config.SEG_TEST_MODES`)."""
    from mambavision_jax.train.config import SEG_TEST_MODES  # ml_collections only: no JAX at parse time

    p.add_argument(
        "--mode",
        choices=SEG_TEST_MODES,
        default="whole",
        help="whole: the image resized to the test scale at once (the official test mode); slide: "
        "crops of the model's crop_size every stride (512 / 341 for the ADE20K models), averaged "
        "where they overlap (default whole)",
    )


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """--checkpoint and --ema / --no_ema: which weights of a training run (or of a .pth.tar)."""
    add_checkpoint_argument(p)
    ema = p.add_mutually_exclusive_group()
    ema.add_argument(
        "--ema",
        dest="ema",
        action="store_const",
        const=True,
        default=None,
        help="the EMA weights: an official .pth.tar's state_dict_ema, a training run's EMA "
        "(a training run's EMA weights are used by default when it kept them)",
    )
    ema.add_argument(
        "--no_ema",
        dest="ema",
        action="store_const",
        const=False,
        help="a training run's raw weights instead of its EMA",
    )


def add_preprocessing_arguments(p: argparse.ArgumentParser) -> None:
    """--image_size, --crop_pct, --crop_mode (`preprocessing.preprocessing_for`'s overrides)."""
    p.add_argument(
        "--image_size",
        type=positive_int,
        default=None,
        help="crop size (default: the variant's, e.g. 224; 512 for the *_512_21k models)",
    )
    p.add_argument(
        "--crop_pct",
        type=float_range(0, 1, min_inclusive=False),
        default=None,
        help="in (0, 1]: resize to floor(image_size / crop_pct) before the center crop "
        "(default: the variant's, e.g. 1.0 for T, 0.98 T2, 0.93 S)",
    )
    p.add_argument(
        "--crop_mode",
        choices=("center", "squash"),
        default=None,
        help="'center': resize the short side, keep the aspect ratio; 'squash': resize "
        "both sides (default: the variant's)",
    )


def add_dtype_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="compute dtype of the model (default float32, as the reported numbers)",
    )


def add_max_pixels_argument(p: argparse.ArgumentParser, *, what: str = "") -> None:
    from mambavision_jax.images import DEFAULT_MAX_PIXELS

    p.add_argument(
        "--max_pixels",
        type=non_negative_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"{what}refuse images with more pixels (a decompression-bomb guard; JPEGs are decoded "
        f"downscaled instead where that fits); 0: no limit (default {DEFAULT_MAX_PIXELS:,})",
    )


def load_weights(args, *, command: str, **overrides):
    """(WeightsSource, (model, preprocessing)) of the shared flags of a classification command
    (`command`, for the refusal of a segmenter's weights): --weights resolved once with
    --checkpoint / --ema, loaded with --model and, where the command has them, --dtype and the
    preprocessing flags; `overrides` go to `weights.load`."""
    from mambavision_jax import weights

    source = weights.resolve(
        args.weights, checkpoint=args.checkpoint, ema=args.ema, task="classification", needed_by=command
    )
    flags = ("dtype", "image_size", "crop_pct", "crop_mode")
    kw = {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}
    return source, weights.load(source, name=args.model, **kw, **overrides)


def check_weights_argument(weights: str, *, task: str = "classification") -> None:
    """What can be checked about --weights before anything is loaded: it names a file, a folder
    or a hub id (for task="segmentation" also a segmenter's short name)."""
    from mambavision_jax import weights as weights_lib

    if not weights_lib.exists(weights, task=task):
        example = (
            "nvidia/mamba_vision_160k_ade20k-512x512_tiny, or a short name: tiny, small, base, l3"
            if task == "segmentation"
            else "nvidia/MambaVision-T-1K"
        )
        raise FileNotFoundError(
            f"--weights {weights}: no such file or folder (nor a hub id such as {example})"
        )
