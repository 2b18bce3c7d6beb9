"""The package's exit codes and the one error class that is neither the user's mistake nor a bug.

A leaf module (imports nothing of the package), so every layer can raise these without import
cycles. Exit codes of every command:

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
    """A mistake in what the user asked for; the message names the problem and the fix (exit 2)."""


class EnvironmentFailure(Exception):
    """The machine or the store refused an operation (full disk, read-only target, missing bucket,
    permission): exit code 4. The message says what was being done and where."""


def is_environment_failure(e: BaseException) -> bool:
    """Whether `e` is the world's refusal (exit 4) rather than the user's mistake or a bug."""
    if isinstance(e, EnvironmentFailure):
        return True
    return isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS
