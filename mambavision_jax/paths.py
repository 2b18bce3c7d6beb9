"""One path type for local disks and object stores (gs://, s3://, ...): `etils.epath.Path`, the
type orbax and TFDS take, and atomic writes on both.

On a local disk a file is written to a temporary name beside its target and renamed over it, so
a reader (or a run killed mid-write) sees the old file or the new one, never half of one. An
object store has no rename, but a single object upload is already all-or-nothing, so there the
file is written in one piece directly.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import uuid

from etils import epath

PathLike = str | os.PathLike


def as_path(path: PathLike) -> epath.Path:
    """A local path (made absolute, `~` expanded) or a URL such as gs://bucket/dir, as epath.Path."""
    if is_remote(path):
        return epath.Path(os.fspath(path))
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def is_remote(path: PathLike) -> bool:
    """Whether the path names an object store (has a URL scheme such as gs://)."""
    return "://" in os.fspath(path)


def _tmp_sibling(path: epath.Path) -> epath.Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(path: PathLike, data: bytes, *, mode: int = 0o644) -> epath.Path:
    """Write `data` to `path` so that the file is replaced whole or not at all."""
    path = as_path(path)
    if is_remote(path) or (os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path)):
        # an object store; or a device or pipe (`--out /dev/null`), which a rename would replace
        path.write_bytes(data)
        return path
    tmp = _tmp_sibling(path)
    try:
        tmp.write_bytes(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: PathLike, text: str, *, mode: int = 0o644) -> epath.Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def swap_dir_into_place(new: PathLike, final: PathLike) -> None:
    """Put the finished local folder `new` at `final`, replacing what is there: in one step where
    the system allows (Linux renameat2 RENAME_EXCHANGE), else by moving the old folder aside, renaming
    the new one in and restoring the old one if that fails. The old folder is removed afterwards."""
    new, final = os.fspath(new), os.fspath(final)
    os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
    if not os.path.lexists(final):
        os.rename(new, final)
        return
    if _exchange(new, final):
        shutil.rmtree(new)  # `new` now names the previous folder
        return
    old = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.old-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)
    try:
        os.rename(new, final)
    except OSError:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Atomically exchange two paths (Linux >= 3.15 with glibc >= 2.28); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
