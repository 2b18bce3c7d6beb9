"""One path type for local disks and object stores (gs://, s3://, ...): `etils.epath.Path`, the
type orbax and TFDS take, and the one way out for files on both.

Every writer of the package goes through `check_output` (before any work: the path is usable, the
storage writable, an existing output not replaced without overwrite) and `atomic_file` /
`atomic_dir` (the output appears whole or not at all). On a local disk a file or folder is written
under a temporary name beside its target, fsynced and renamed into place, so a reader (or a run
killed mid-write) sees the old output or the new one, never half of one. An object store has no
rename, but a single object upload is all-or-nothing: there the output is written locally first
and uploaded whole (a folder file by file, the file that marks it complete last). A full disk or
read-only target is raised as `errors.EnvironmentFailure` (exit code 4) naming the target.
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

from mambavision_jax.errors import (
    ENVIRONMENT_ERRNOS,
    EnvironmentFailure,
    UserError,
    first_line,
    is_environment_failure,
)

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


# ------------------------------------------------------------------ the one way out for files
def check_output(
    target: PathLike,
    *,
    overwrite: bool = False,
    kind: str = "file",
    flag: str | None = None,
    parent_must_exist: bool = False,
    empty_dir_ok: bool = False,
) -> epath.Path:
    """Refuse, before any work, an output that cannot or must not be written; return its path.

    kind 'file': a folder, a device / pipe / socket, and (unless overwrite) an existing file are
    refused; kind 'dir': an existing file, and (unless overwrite) an existing folder (an empty one
    is accepted with empty_dir_ok). Locally the nearest existing ancestor must be a folder (the
    target's own folder with parent_must_exist) on a writable file system with free space; on an
    object store the bucket must exist. A mistake is a UserError / FileExistsError / ... (exit 2),
    a refusal of the store an EnvironmentFailure (exit 4). `flag` (e.g. "--json") starts the
    message."""
    what = f"{flag} {os.fspath(target)}" if flag else os.fspath(target)
    if not os.fspath(target):
        raise UserError(f"{flag + ': ' if flag else ''}the output path is empty; name a file or folder")
    path = as_path(target)
    if is_remote(path):
        if kind == "file" and path.is_dir():
            raise IsADirectoryError(f"{what} is a folder; name a file")
        if kind == "dir":
            _check_existing_dir(what, path, overwrite, empty_dir_ok)
        elif path.exists() and not overwrite:
            raise FileExistsError(f"{what} exists; pass --overwrite (overwrite=True) to replace it")
        _check_bucket(os.fspath(path))
        return path
    local = pathlib.Path(path)  # (epath calls a pipe a file)
    if local.exists() and not local.is_dir() and not local.is_file():
        # a rename would swap a device or pipe (e.g. /dev/null) for a regular file
        raise UserError(f"{what} is not a regular file (a device, pipe or socket); name a file")
    if kind == "file":
        if local.is_dir():
            raise IsADirectoryError(f"{what} is a folder; name the output file inside it")
        if local.exists() and not overwrite:
            raise FileExistsError(f"{what} exists; pass --overwrite (overwrite=True) to replace it")
    else:
        if local.exists() and not local.is_dir():
            raise UserError(f"{what} is a file, not a folder")
        _check_existing_dir(what, local, overwrite, empty_dir_ok)
    if parent_must_exist and not local.parent.is_dir():
        raise FileNotFoundError(f"{what}: the folder {local.parent} does not exist")
    ancestor = next(p for p in local.parents if p.exists())
    if not ancestor.is_dir():
        raise NotADirectoryError(f"cannot write {what}: {ancestor} is a file, not a folder")
    refusal = _storage_refusal(ancestor)
    if refusal:
        raise EnvironmentFailure(f"cannot write {what}: {refusal}")
    return path


def _check_existing_dir(what: str, path, overwrite: bool, empty_dir_ok: bool) -> None:
    """An existing output folder: replaced only with overwrite (an empty one also with empty_dir_ok)."""
    if overwrite or not path.is_dir():
        return
    if not empty_dir_ok:
        raise FileExistsError(f"{what} exists; choose a new folder or pass --overwrite to replace it")
    if any(path.iterdir()):
        raise UserError(f"{what} exists and is not empty; pass --overwrite to replace it")


def _check_bucket(url: str) -> None:
    """An object-store output whose bucket does not exist is the store's refusal, named as such."""
    fs, key = _fs(url)
    bucket = key.split("/", 1)[0]
    scheme = url.split("://", 1)[0]
    try:
        found = fs.exists(bucket)
    except Exception as e:  # noqa: BLE001 - the store cannot be reached: say where
        raise EnvironmentFailure(f"cannot write {url}: {scheme}://{bucket}: {first_line(e)}") from None
    if not found:
        raise EnvironmentFailure(
            f"cannot write {url}: the bucket {scheme}://{bucket} does not exist (or these credentials "
            f"cannot see it)"
        )


_MIN_FREE_BYTES = 64 * 1024  # less than this free: a write will fail (file-system metadata included)


def _storage_refusal(folder: PathLike, min_free: int = _MIN_FREE_BYTES) -> str | None:
    """Why nothing can be written in the local `folder` (read-only file system, no permission, a
    full disk: less than `min_free` bytes free), or None."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return f"{folder} is on a read-only file system"
    if not os.access(folder, os.W_OK):
        return f"{folder}: permission denied"
    if st.f_bavail * st.f_frsize < min_free:
        return f"no space left on the device of {folder} ({st.f_bavail * st.f_frsize:,} bytes free)"
    return None


# The messages of the storage's refusals, as libraries that do not raise OSError quote them
# (safetensors: "I/O error: No space left on device (os error 28)").
_REFUSAL_TEXTS = tuple((os.strerror(n), f"os error {n}") for n in sorted(ENVIRONMENT_ERRNOS))


def _environment_failure(target, error: BaseException) -> BaseException | None:
    """The EnvironmentFailure that a failed write of `target` was, or None (a bug, or the user's).
    Libraries report a full disk in their own ways (torch: RuntimeError "file write failed";
    safetensors: SafetensorError "os error 28"), so their message and the file system are asked
    as well."""
    if isinstance(error, EnvironmentFailure) or is_remote(target):
        return None
    reason = None
    if isinstance(error, OSError):
        if is_environment_failure(error):
            reason = error.strerror or str(error)
    else:
        text = str(error)
        reason = next(
            (strerror for strerror, code in _REFUSAL_TEXTS if strerror in text or code in text), None
        )
        if reason is None:
            parent = next((p for p in pathlib.Path(os.fspath(target)).absolute().parents if p.exists()), None)
            # a write that failed with under 1 MiB left: the disk filled up
            reason = _storage_refusal(parent, min_free=2**20) if parent is not None else None
    if reason is None:
        return None
    return EnvironmentFailure(f"cannot write {os.fspath(target)}: {reason}")


def _cleanup_and_raise(target, error: BaseException, cleanup) -> None:
    """Remove a failed write's leftovers and raise: the storage's refusal as an EnvironmentFailure
    naming `target` (asked before the cleanup frees space), anything else as it was."""
    refusal = _environment_failure(target, error)
    cleanup()
    if refusal is not None:
        raise refusal from error
    raise error


def _make_parents(path: pathlib.Path) -> list[pathlib.Path]:
    """Create the missing folders above `path`; the ones created, innermost first."""
    created = []
    for p in path.parents:
        if p.exists():
            break
        created.append(p)
    path.parent.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(folders: list[pathlib.Path]) -> None:
    for p in folders:  # innermost first
        try:
            p.rmdir()
        except OSError:
            break


def _fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(target: PathLike, *, mode: int = 0o644) -> Iterator[pathlib.Path]:
    """Write a file whole or not at all: yields a local temporary path to write; when the block
    ends without an error the file is fsynced, given `mode` and renamed over `target` (on an object
    store: uploaded as one whole object). On an error the temporary file and any folder this call
    created are removed, and a refusal of the storage (full disk, read-only) is raised as an
    EnvironmentFailure naming `target`. A device or pipe target (`--out /dev/null`) is written
    directly (a rename would replace it)."""
    remote = is_remote(target)
    path = as_path(target)
    if not remote and os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        yield pathlib.Path(path)
        return
    created: list[pathlib.Path] = []
    if remote:
        tmp_dir = tempfile.mkdtemp(prefix="mambavision_jax-")
        tmp = pathlib.Path(tmp_dir) / path.name
    else:
        final = pathlib.Path(path)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if not remote:
            created = _make_parents(final)
        yield tmp
        os.chmod(tmp, mode)  # safetensors and mkstemp create 0600; outputs are meant to be shared
        if remote:
            upload_file(tmp, path)
        else:
            _fsync_file(tmp)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
    except BaseException as e:

        def cleanup():
            if remote:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
                _remove_empty(created)

        _cleanup_and_raise(target, e, cleanup)
    else:
        if remote:
            shutil.rmtree(tmp_dir, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(
    target: PathLike,
    *,
    replace: bool = False,
    keep_existing: str | None = None,
    last: str | None = None,
    content: str | None = None,
    tmp_dir: PathLike | None = None,
    tmp_prefix: str | None = None,
) -> Iterator[pathlib.Path]:
    """Write a folder whole or not at all: yields a new local temporary folder to fill; when the
    block ends without an error it is put at `target` (beside it on the same disk, then renamed;
    on an object store uploaded file by file, `last` (the file that says the folder is complete)
    last). replace=True replaces an existing folder (`swap_dir_into_place`); else an existing
    target fails the rename (FileExistsError), except with keep_existing=NAME: a folder holding
    NAME that another process put there meanwhile is kept and ours discarded (caches filled by
    several processes). On an error the temporary folder and any folder this call created are
    removed; a refusal of the storage is raised as an EnvironmentFailure naming `target`.
    content: the sub-path of the yielded folder that becomes `target` (for a builder that writes
    its own layout under a root, e.g. TFDS's NAME/VERSION); tmp_dir / tmp_prefix: where (on the
    same file system) and under which name the temporary folder is made."""
    remote = is_remote(target)
    path = as_path(target)
    created: list[pathlib.Path] = []
    if remote:
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="mambavision_jax-"))
    else:
        final = pathlib.Path(path)
        created = _make_parents(final)
        try:
            tmp = pathlib.Path(
                tempfile.mkdtemp(
                    prefix=tmp_prefix or f".{final.name}.tmp-",
                    dir=os.fspath(tmp_dir) if tmp_dir is not None else final.parent,
                )
            )
        except BaseException as e:
            _cleanup_and_raise(target, e, lambda: _remove_empty(created))
    try:
        yield tmp
        source = tmp / content if content else tmp
        if remote:
            upload_dir(source, path, last=last)
        else:
            for d, _, files in os.walk(source):
                for f in files:
                    _fsync_file(os.path.join(d, f))
            os.chmod(source, 0o755)  # mkdtemp's folder is 0700
            if replace:
                swap_dir_into_place(source, final)
            elif keep_existing is not None:
                publish_dir(source, final, complete=keep_existing)
            else:
                if os.path.lexists(final):
                    raise FileExistsError(f"{final} exists (written meanwhile by another process?)")
                os.rename(source, final)
            _fsync_dir(final.parent)
            if content:
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as e:

        def cleanup():
            shutil.rmtree(tmp, ignore_errors=True)
            _remove_empty(created)

        _cleanup_and_raise(target, e, cleanup)
    else:
        if remote:
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: PathLike, data: bytes, *, mode: int = 0o644) -> epath.Path:
    """Write `data` to `path` so that the file is replaced whole or not at all (`atomic_file`)."""
    with atomic_file(path, mode=mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return as_path(path)


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
