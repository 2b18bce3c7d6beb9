"""The package's exit codes and its error classes: what is the user's mistake, what is the world's
refusal; any other exception is a bug.

A leaf module (imports nothing of the package), so every layer can raise these without import
cycles. `cli.run` turns a `UserError` (and argparse's usage errors, raised as `UsageError` by
`cli.ArgumentParser`) into one `error:` line with exit code 2, an environment failure into one
line with exit code 4, and shows anything else with its traceback and a request for a bug report.
Exit codes of every command:

- 0 done;
- 2 (`EXIT_USER_ERROR`) a mistake in what was asked: a bad flag or config value, a refused or
  corrupt checkpoint, a missing input;
- 3 (`EXIT_NON_FINITE`) training only: the loss or the weights stopped being finite;
- 4 (`EXIT_ENVIRONMENT`) the world refused: a full disk, a read-only or immutable target, a
  missing bucket, no permission. Nothing was wrong with the command; fix the place and run it again;
- 143 (`EXIT_PREEMPTED`) training only: stopped by SIGTERM after writing a checkpoint.
"""

from __future__ import annotations

import errno

EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3
EXIT_ENVIRONMENT = 4
EXIT_PREEMPTED = 143

# OSError numbers that mean "the storage refused", not "you named the wrong file".
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
)


class UserError(ValueError):
    """A mistake in what the user asked for; the message names the problem and the fix (exit 2).
    (A ValueError subclass, so callers that caught the ValueErrors these replaced still do.)"""


class UsageError(UserError):
    """A command line that cannot be parsed or whose values do not go together."""


class ConfigError(UserError):
    """A configuration value of the wrong type or out of range (the message names the field)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model (the message says why)."""


class HubError(CheckpointError):
    """Official weights that cannot be fetched or are not a MambaVision (the message says why)."""


class EnvironmentFailure(Exception):
    """The machine or the store refused an operation (full disk, read-only target, missing bucket,
    permission): exit code 4. The message says what was being done and where."""


def is_environment_failure(e: BaseException) -> bool:
    """Whether `e` is the world's refusal (exit 4) rather than the user's mistake or a bug."""
    if isinstance(e, EnvironmentFailure):
        return True
    return isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS


def first_line(e: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, whitespace collapsed and cut at `limit` characters: how
    an exception of a library (orbax, torch, tensorstore) is quoted inside one of ours."""
    lines = str(e).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    text = text[:limit] + ("..." if len(text) > limit else "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
