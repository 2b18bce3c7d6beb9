"""What every command line of the package shares: argument types that check ranges, and one way
to turn a user's mistake into a one-line message with a non-zero exit code.

A user error (a bad argument, a refused or corrupt checkpoint, a missing file, an unreadable
image) ends the command with `error: <what is wrong and how to fix it>` on stderr and exit code 2,
no traceback; a refusal of the machine or the store (full disk, read-only target, no permission,
missing bucket) the same way with exit code 4 (`mambavision_jax.errors`). `--debug` on the command line, or MAMBAVISION_JAX_DEBUG=1, shows the traceback.
Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from mambavision_jax.errors import EXIT_ENVIRONMENT, EXIT_USER_ERROR, UserError, is_environment_failure


def _user_errors() -> tuple[type[BaseException], ...]:
    # Imported lazily: a CLI's --help must not pay for torch / orbax imports.
    errors: list[type[BaseException]] = [
        UserError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
    ]
    try:
        from mambavision_jax.images import ImageReadError

        errors.append(ImageReadError)
    except ImportError:  # pragma: no cover - PIL missing
        pass
    return tuple(errors)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("MAMBAVISION_JAX_DEBUG", "") not in ("", "0")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; a user error becomes `error: ...` on stderr and exit code 2, a refusal of
    the machine or the store the same with exit code 4."""
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
            raise
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return code


def _one_line(e: BaseException) -> str:
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


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """`--debug` (read by `run` before parsing) shown in --help."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors: under `run`, one `error: ...` line, exit 2."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")
