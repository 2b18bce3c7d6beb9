"""One path type for local disks and object stores (gs://, s3://, ...): `etils.epath.Path`, the
type orbax and TFDS take, and atomic writes on both.

On a local disk a file is written to a temporary name beside its target and renamed over it, so
a reader (or a run killed mid-write) sees the old file or the new one, never half of one. An
object store has no rename, but a single object upload is already all-or-nothing, so there the
file is written in one piece directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator

from etils import epath

from mambavision_jax.errors import UserError

PathLike = str | os.PathLike

# "scheme:" then the rest; one-letter schemes are Windows drives, not URLs.
_URL_START = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(/*)")
# Schemes whose one-slash spelling (gs:/bucket) is a typo of a URL, not a local folder name.
_KNOWN_SCHEMES = ("gs", "gcs", "s3", "s3a", "az", "abfs", "abfss", "hf", "http", "https", "file", "memory")


def check_url(path: PathLike) -> None:
    """Refuse a path that is a misspelt URL before anything is written to a wrong place: a known
    scheme with one slash (`gs:/bucket/run`, which would silently be a local folder `gs:`) or a
    scheme no installed filesystem handles (`gss://bucket`)."""
    text = os.fspath(path)
    m = _URL_START.match(text)
    if m is None:
        return
    scheme, slashes = m.group(1).lower(), m.group(2)
    if slashes != "//":
        if scheme in _KNOWN_SCHEMES:
            raise UserError(
                f"{text}: not a URL ({scheme}:// needs two slashes) nor a local path; did you mean {scheme}://{text[m.end() :]}?"
            )
        return
    import fsspec

    if scheme not in fsspec.available_protocols():
        raise UserError(
            f"{text}: unknown URL scheme {scheme}:// (known: gs://, s3://, and the other fsspec protocols)"
        )


def as_path(path: PathLike) -> epath.Path:
    """A local path (made absolute, `~` expanded) or a URL such as gs://bucket/dir, as epath.Path.
    A misspelt URL is refused (`check_url`)."""
    check_url(path)
    if is_remote(path):
        return epath.Path(os.fspath(path))
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def is_remote(path: PathLike) -> bool:
    """Whether the path names an object store (has a URL scheme such as gs://)."""
    return "://" in os.fspath(path)


def path_of(path: PathLike) -> pathlib.Path | epath.Path:
    """The path for file calls: epath.Path for a URL, else pathlib.Path exactly as given (a relative
    path stays relative, so messages name the path the user typed)."""
    return epath.Path(os.fspath(path)) if is_remote(path) else pathlib.Path(path)


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[str]:
    """A local file name holding `path`'s bytes, for readers that take only local files (torch.load,
    safetensors): the path itself when it is local, else a temporary download removed afterwards."""
    if not is_remote(path):
        yield os.fspath(path)
        return
    url = os.fspath(path)
    fs, key = _fs(url)
    if not fs.isfile(key):
        raise FileNotFoundError(f"no such file: {url}")
    with tempfile.TemporaryDirectory(prefix="mambavision_jax-") as d:
        local = os.path.join(d, os.path.basename(key.rstrip("/")) or "file")
        fs.get_file(key, local)
        yield local


def upload_file(local: PathLike, url: PathLike) -> None:
    """Copy the local file `local` to the object `url` in one whole-object upload: a reader sees the
    old object or the new one, and an upload that fails midway leaves no partial object (the
    store's resumable upload is cancelled, never finalised)."""
    fs, key = _fs(os.fspath(url))
    fs.put_file(os.fspath(local), key)


def upload_dir(local_dir: PathLike, url: PathLike, *, last: str) -> None:
    """Put the finished local folder `local_dir` at the object-store folder `url`: each file one
    whole-object upload, the file named `last` (the one that tells a reader the folder is complete)
    removed first and written after all the others, then the objects under `url` that the new
    folder does not hold deleted, so a replaced folder keeps no stale file."""
    fs, root = _fs(os.fspath(url))
    root = root.rstrip("/")
    before = set(fs.find(root)) if fs.exists(root) else set()
    names = sorted(
        os.path.relpath(os.path.join(d, f), local_dir) for d, _, files in os.walk(local_dir) for f in files
    )
    if f"{root}/{last}" in before:
        fs.rm_file(f"{root}/{last}")
    for name in sorted(names, key=lambda n: n == last):
        fs.put_file(os.path.join(local_dir, name), f"{root}/{name}")
    stale = before - {f"{root}/{n}" for n in names} - {f"{root}/{last}"}
    if stale:
        fs.rm(sorted(stale))


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


def publish_dir(new: PathLike, final: PathLike, *, complete: str) -> None:
    """Rename the finished local folder `new` to `final`, which must not exist yet. If another
    process got there first (`final/complete` exists), theirs is kept and `new` discarded: for
    caches that several processes may fill at once. Any other failure removes `new` and raises."""
    new, final = os.fspath(new), os.fspath(final)
    try:
        os.rename(new, final)
    except OSError:
        shutil.rmtree(new, ignore_errors=True)
        if not os.path.isfile(os.path.join(final, complete)):
            raise


def _exchange(a: str, b: str) -> bool:
    """Atomically exchange two paths (Linux >= 3.15 with glibc >= 2.28); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
