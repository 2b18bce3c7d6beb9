"""A training workdir as the record of one run: one writer at a time, and the config it was trained
with, compared with a resuming command's before anything is written.

- `WorkdirLock`: a local workdir is locked with `flock` on `train.lock` (host and pid inside, for the
  message that names the holder; the kernel drops the lock when its process dies, so a dead run's
  file is taken over); a gs:// workdir with an object created under a generation precondition
  (`ifGenerationMatch=0`: only one creator wins), taken over when its holder is a dead process of
  this host.
- `config_changes` / `check_resume_config`: the fields of the stored `config.json` that the new
  config changes. Fields in `MAY_CHANGE` (how long, how often, how fast) are accepted; every other
  field changes what the checkpoints mean (model, classes, batch, data, seed, augmentation,
  schedule, ...) and is refused unless `config.resume_changes` names it.
- `environment_message`: the one line for a refusal of the machine or the store (full disk,
  read-only, permission, missing bucket) buried in an orbax / tensorstore / gcsfs error.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import socket

from mambavision_jax.errors import ENVIRONMENT_ERRNOS, EnvironmentFailure, UserError, is_environment_failure
from mambavision_jax.paths import PathLike, as_path, is_remote
from mambavision_jax.train.checkpoint import RUN_CONFIG

LOCK_NAME = "train.lock"

# Fields a resumed run may change: they say how long, how often and how fast, not what is trained.
# A dotted name covers its sub-fields. Everything else is guarded (README, "Resuming").
MAY_CHANGE = (
    "total_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_batch_size",
    "data.dir",
    "data.num_workers",
    "data.num_threads",
    "data.device_prefetch",
    "model.scan_impl",
    "model.remat",
    "mesh",
    "init_from",  # read only when a run starts from nothing
    "init_from_ema",
    "resume_changes",
)


# ------------------------------------------------------------------ the config record
def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a.b": leaf} of a nested dict (lists are leaves)."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def config_record(config) -> dict:
    """The config as stored in the workdir's config.json (JSON types: tuples are lists)."""
    return json.loads(config.to_json_best_effort())


def _covered(field: str, names) -> bool:
    return any(field == n or field.startswith(n + ".") for n in names)


def config_changes(stored: dict, new: dict, defaults: dict | None = None) -> dict[str, tuple]:
    """{field: (stored value, new value)} for every field that differs (absent: `None`). A field
    the stored config lacks (added by a later version) counts with its value in `defaults`."""
    old, cur, fill = flatten(stored), flatten(new), flatten(defaults or {})
    for k in cur:
        if k not in old and k in fill and not any(o.startswith(k + ".") for o in old):
            old[k] = fill[k]
    return {k: (old.get(k), cur.get(k)) for k in sorted(set(old) | set(cur)) if old.get(k) != cur.get(k)}


def resume_changes(config) -> list[str]:
    """The fields `config.resume_changes` ("a,b.c") allows to change; an unknown name is refused."""
    names = [n.strip() for n in str(config.get("resume_changes", "") or "").split(",") if n.strip()]
    fields = flatten(config_record(config))
    for n in names:
        if not any(_covered(f, [n]) for f in fields):
            raise UserError(f"config.resume_changes: {n!r} is not a config field")
    return names


def _show(v) -> str:
    return "(absent)" if v is None else json.dumps(v)


def check_resume_config(workdir: PathLike, config) -> list[str]:
    """Compare `config` with the one stored in `workdir` (read only). Returns one line per accepted
    change (empty for a fresh workdir or the same config); raises UserError naming every refused
    field, old -> new."""
    allowed = resume_changes(config)
    path = as_path(workdir) / RUN_CONFIG
    if not path.exists():
        return []
    try:
        stored = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not the JSON of a training config ({e}); move it away to resume") from None
    accepted, refused = [], []
    from mambavision_jax.train.config import base_config

    defaults = config_record(base_config())
    for field, (old, new) in config_changes(stored, config_record(config), defaults).items():
        line = f"{field} {_show(old)} -> {_show(new)}"
        (accepted if _covered(field, (*MAY_CHANGE, *allowed)) else refused).append(line)
    if refused:
        names = ",".join(line.split(" ", 1)[0] for line in refused)
        raise UserError(
            f"{as_path(workdir)} was trained with another config: {'; '.join(refused)}. These change what its "
            f"checkpoints mean: resume with the stored values, start a fresh --workdir, or allow the change "
            f"with --config.resume_changes={names}"
        )
    return accepted


# ------------------------------------------------------------------ one writer per workdir
def _holder_record() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a process that left no name"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')})"


def _parse(text: str) -> dict | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _dead_here(holder: dict | None) -> bool:
    """The holder is a process of this host that no longer runs."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid")), 0)
    except ProcessLookupError:
        return True
    except (OSError, TypeError, ValueError):
        return False
    return False


class WorkdirLock:
    """`acquire()` makes this process the one writer of `workdir` (creating the folder) and returns
    a message when it took over a dead run's lock; `release()` removes the lock. A second writer
    gets a UserError naming the holder; a store that refuses the lock file an EnvironmentFailure."""

    def __init__(self, workdir: PathLike):
        self.workdir = as_path(workdir)
        self.path = self.workdir / LOCK_NAME
        self._fd = None
        self._remote = None

    def _busy(self, holder) -> UserError:
        return UserError(
            f"{self.workdir} is in use by another training run: {_describe(holder)}. Wait for it to end or "
            f"stop it, or use another --workdir (if that process is gone, delete {self.path})"
        )

    def acquire(self) -> str | None:
        try:
            return self._acquire_remote() if is_remote(self.workdir) else self._acquire_local()
        except (UserError, EnvironmentFailure):
            raise
        except OSError as e:
            raise EnvironmentFailure(
                f"cannot lock the workdir {self.workdir}: {environment_message(e) or e}"
            ) from e

    def _acquire_local(self) -> str | None:
        import fcntl

        os.makedirs(self.workdir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                os.close(fd)
                raise self._busy(holder) from None
            try:  # the holder may have removed the file between our open and our flock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder_record()).encode(), 0)
            os.fsync(fd)
        except OSError:
            self._fd = fd
            self.release()
            raise
        self._fd = fd
        if previous:
            return (
                f"took over the lock of {self.workdir} from {_describe(previous)}, which is no longer running"
            )
        return None

    def _acquire_remote(self) -> str | None:
        import fsspec

        fs, key = fsspec.core.url_to_fs(os.fspath(self.path))
        create = "create" if fs.protocol and {"gs", "gcs"} & set(fs.protocol) else None
        data = json.dumps(_holder_record()).encode()
        taken_over = None
        for _ in range(2):
            try:
                if create:
                    fs.pipe_file(key, data, mode=create)  # ifGenerationMatch=0: fails if it exists
                elif fs.exists(key):
                    raise FileExistsError(key)
                else:
                    fs.pipe_file(key, data)
                self._remote = (fs, key)
                return taken_over
            except FileExistsError:
                holder = _parse(fs.cat_file(key).decode("utf-8", "replace"))
                if not _dead_here(holder) or taken_over:
                    raise self._busy(holder) from None
                fs.rm_file(key)
                taken_over = f"took over the lock of {self.workdir} from {_describe(holder)}, which is no longer running"
            except FileNotFoundError:  # gcsfs: the bucket does not exist
                bucket = os.fspath(self.workdir).split("://", 1)[1].split("/", 1)[0]
                raise EnvironmentFailure(
                    f"{self.workdir}: the bucket {bucket!r} does not exist (or this account cannot see it)"
                ) from None
        raise self._busy(None)

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)  # while still holding it: a waiter re-checks the inode
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
        if self._remote is not None:
            fs, key = self._remote
            self._remote = None
            try:
                fs.rm_file(key)
            except OSError:
                pass


# ------------------------------------------------------------------ refusals of the world
_ERRNO_TEXT = {
    errno.ENOSPC: "No space left on device",
    errno.EROFS: "Read-only file system",
    errno.EACCES: "Permission denied",
    errno.EPERM: "Operation not permitted",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EIO: "Input/output error",
    errno.EFBIG: "File too large",
}
_TEXT_TO_ERRNO = {text.lower(): code for code, text in _ERRNO_TEXT.items()}
_OS_CODE = re.compile(r"os_error_code='?(\d+)")
_QUOTED_PATH = re.compile(r'"(/[^"]+|gs://[^"]+)"')
_BUCKET = re.compile(r"(bucket does not exist|no such bucket|notfound: .*bucket)", re.IGNORECASE)
_FORBIDDEN = re.compile(r"\b(403|forbidden|permission_denied|access denied)\b", re.IGNORECASE)


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def environment_message(e: BaseException) -> str | None:
    """'<what the store said> (<where>)' when `e` or an exception it came from is the machine's or
    the store's refusal (full disk, read-only or immutable target, permission, missing bucket, as
    an OSError or in the text of a tensorstore / orbax / gcsfs error), else None."""
    for x in _chain(e):
        if isinstance(x, EnvironmentFailure):
            return str(x)
        if is_environment_failure(x):
            where = x.filename or ""
            return f"{x.strerror or x}{f' ({where})' if where else ''}"
        text = str(x)
        code = _OS_CODE.search(text)
        number = int(code.group(1)) if code else None
        if number is None:
            low = text.lower()
            number = next((c for t, c in _TEXT_TO_ERRNO.items() if t in low), None)
        if number in ENVIRONMENT_ERRNOS:
            paths = _QUOTED_PATH.findall(text)
            where = f" ({paths[-1]})" if paths else ""
            return f"{_ERRNO_TEXT.get(number, os.strerror(number))}{where}"
        if _BUCKET.search(text):
            return f"no such bucket ({text.splitlines()[0][:200]})"
        if _FORBIDDEN.search(text) and ("gs://" in text or "storage" in text.lower()):
            return f"permission denied by the store ({text.splitlines()[0][:200]})"
    return None
