"""A training workdir is a record (issue 18): through the real command line, every resume is exact or
refused with one line and the workdir unchanged, one run writes at a time, a damaged latest checkpoint
falls back to the previous whole one, a SIGTERM at an eval step or at the last step loses no eval, and
the world's refusals (full disk, read-only, misspelt URL) are one line with their own exit code.

One uninterrupted run (`ref`) is shared: it is the reference of the resumed runs and the workdir
that the refused commands must leave byte for byte as it was."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from cli_run import command_stderr
from test_gcs import gcs  # noqa: F401 - the GCS emulator fixture
from train_runs import read_until, run_losses, train_cmd, train_env

from mambavision_jax.errors import EXIT_ENVIRONMENT, EXIT_PREEMPTED, EXIT_USER_ERROR

TOTAL = 6
COMMON = [
    f"--config.total_steps={TOTAL}",
    "--config.checkpoint_every_steps=3",
    "--config.eval_every_steps=1",  # every step an eval step: a SIGTERM always lands on one
    "--config.log_every_steps=1",
]


def _run(workdir, data_dir, *extra, timeout=600, cwd=None):
    return subprocess.run(
        train_cmd(workdir, f"--config.data.dir={data_dir}", *COMMON, *extra),
        env=train_env(1),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def _popen(workdir, data_dir):
    return subprocess.Popen(
        train_cmd(workdir, f"--config.data.dir={data_dir}", *COMMON),
        env={**train_env(1), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tree_hash(root) -> str:
    """sha256 over every file's relative path and bytes (and every folder's name) under `root`."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        h.update(os.path.relpath(dirpath, root).encode() + b"/\0")
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            h.update(os.path.relpath(p, root).encode() + b"\0" + Path(p).read_bytes())
    return h.hexdigest()


def eval_rows(workdir) -> dict[int, dict]:
    """{step: eval metrics} of a run's metrics.jsonl (time left out)."""
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k != "time"} for r in rows if r["kind"] == "eval"}


def best_of(workdir) -> tuple[int, float, list]:
    """(step, score, EMA weights) of a run's best/."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    best = Path(workdir) / "best"
    (step,) = [int(p.name) for p in best.iterdir() if p.name.isdigit()]
    score = json.loads((best / str(step) / "metrics" / "metrics").read_text())["score"]
    with ocp.StandardCheckpointer() as c:
        tree = c.restore(best / str(step) / "default")
    return step, score, [np.asarray(x) for x in jax.tree.leaves(tree["ema_params"])]


def _one_error_line(out, code):
    lines = [l for l in command_stderr(out).splitlines() if l.strip()]
    assert out.returncode == code, out.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def ref(digits_dir, tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints 3 and 6, an eval every step). While it trains, a
    second train.py on the same workdir is refused naming it (the two-process lock test)."""
    workdir = tmp_path_factory.mktemp("ref") / "run"
    proc, seen = _popen(workdir, digits_dir), []
    try:
        assert read_until(proc, "mamba_vision_T:", seen), "".join(seen)  # it holds the lock now
        proc.send_signal(signal.SIGSTOP)  # paused (still holding it) until the second one has tried
        try:
            second = _run(workdir, digits_dir)
        finally:
            proc.send_signal(signal.SIGCONT)
        proc.wait(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    line = _one_error_line(second, EXIT_USER_ERROR)
    assert f"in use by another training run: pid {proc.pid} on host {socket.gethostname()}" in line, line
    assert not (workdir / "train.lock").exists()  # released at the end
    return workdir


def test_finished_run_says_so_and_refused_resumes_change_nothing(ref, digits_dir, tmp_path):
    before = tree_hash(ref)
    out = _run(ref, digits_dir, "--config.total_steps=4")  # row 14
    assert out.returncode == 0, out.stderr[-3000:]
    assert "nothing to do: the run finished at step 6" in out.stdout
    # rows 2 and 4: guarded fields refused, each named old -> new, before anything is written
    out = _run(
        ref, digits_dir, "--config.total_steps=8", "--config.batch_size=32", "--config.model.num_classes=5"
    )
    line = _one_error_line(out, EXIT_USER_ERROR)
    assert "batch_size 16 -> 32" in line and "model.num_classes -1 -> 5" in line, line
    assert "--config.resume_changes=batch_size,model.num_classes" in line, line
    # row 11: a misspelt URL is refused before anything is made (no local folder "gs:")
    out = _run("gs:/b/run", digits_dir, cwd=tmp_path)
    assert "did you mean gs://b/run?" in _one_error_line(out, EXIT_USER_ERROR)
    assert not list(tmp_path.iterdir())
    assert tree_hash(ref) == before


def test_no_whole_checkpoint_left_is_refused_naming_each(ref, digits_dir, tmp_path):
    """Rows 7 and 10: a truncated array file in the latest checkpoint and a damaged _METADATA in
    the other: one line naming both files; nothing moved or deleted."""
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    data = max((run / "checkpoints" / "6" / "default").rglob("d/*"), key=lambda p: p.stat().st_size)
    os.truncate(data, 100)
    (run / "checkpoints" / "3" / "default" / "_METADATA").write_text('{"tree_metadata": {\n')
    before = tree_hash(run)
    line = _one_error_line(_run(run, digits_dir, "--config.total_steps=8"), EXIT_USER_ERROR)
    assert "no whole checkpoint to resume from" in line, line
    assert f"step 6: {run}/checkpoints/6 cannot be read: " in line and "byte range" in line, line
    assert f"step 3: {run}/checkpoints/3/default/_METADATA is not valid JSON" in line, line
    assert "strict=False" not in line
    assert tree_hash(run) == before


def test_damaged_latest_falls_back_to_the_previous_whole_checkpoint(ref, digits_dir, tmp_path):
    """Row 3: the latest checkpoint's data-iterator position is missing: reported, moved aside, and
    the run resumes from step 3 with the reference run's losses (the data did not restart). A stale
    lock of a dead process is taken over with a message (row 5)."""
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    (run / "checkpoints" / "data_state" / "6.0.json").unlink()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / "train.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": "x"}))
    out = _run(run, digits_dir, "--config.total_steps=7")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"took over the lock of {run} from pid {dead.pid}" in out.stdout, out.stdout
    assert "config changed on resume: total_steps 6 -> 7" in out.stdout
    assert f"checkpoint of step 6 is damaged and was moved to {run}/damaged_checkpoints/6: " in out.stdout
    assert "data_state/6.0.json (the data-iterator position of process 0) is missing" in out.stdout
    assert f"resumed from {run}/checkpoints at step 3" in out.stdout
    ref_losses, losses = run_losses(ref), run_losses(run)
    for s in range(4, TOTAL + 1):
        assert losses[s] == pytest.approx(ref_losses[s], rel=1e-6), s
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3", "6", "7", "data_state"]
    assert json.loads((run / "config.json").read_text())["total_steps"] == 7
    assert eval_rows(run)[6] == eval_rows(ref)[6]


def test_sigterm_at_an_eval_step_and_at_the_last_step_loses_no_eval(ref, digits_dir, tmp_path):
    """Row 1: SIGTERM lands after step 2 (an eval step) and, on the resumed run, after step 6 (the
    last): each checkpoint records the owed eval, the resumed run does it before another step, and
    eval rows and best/ are the uninterrupted run's."""
    run = tmp_path / "run"
    for after, stopped in ((1, 2), (5, TOTAL)):
        proc, seen = _popen(run, digits_dir), []
        try:
            # the eval of step `after` runs between this line and step `after + 1`'s preemption check
            assert read_until(proc, f"step {after}/", seen), "".join(seen)
            proc.send_signal(signal.SIGTERM)
            seen.extend(proc.stdout)
            proc.wait(timeout=600)
        finally:
            proc.kill()
        err = proc.stderr.read()
        assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
        assert f"stopped after step {stopped} " in err, err[-3000:]
        assert stopped not in eval_rows(run)  # its eval is owed
    out = _run(run, digits_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {run}/checkpoints at step {TOTAL}" in out.stdout
    assert eval_rows(run) == eval_rows(ref)
    (step, score, weights), (ref_step, ref_score, ref_weights) = best_of(run), best_of(ref)
    assert (step, score) == (ref_step, ref_score)
    for a, b in zip(weights, ref_weights):
        assert (a == b).all()


def _mount_tmpfs(path: Path, size: str):
    path.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if out.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.decode().strip()}): needs root, as in CI")


def test_full_disk_is_one_line_exit_4_and_the_next_start_cleans_up(digits_dir, tmp_path):
    """Rows 8, 12, 13: a workdir on a 3 MB tmpfs fills at the first checkpoint: one error line (the
    last on stderr, no orbax / asyncio follow-on), exit code 4; with space again the same command
    removes the unfinished save's temporary folder and finishes."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "3m")
    try:
        out = _run(disk / "run", digits_dir)
        line = _one_error_line(out, EXIT_ENVIRONMENT)
        assert "No space left on device" in line and str(disk / "run") in line, line
        assert list((disk / "run").rglob("*.orbax-checkpoint-tmp*"))  # an interrupted save left this
        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        out = _run(disk / "run", digits_dir)
        assert out.returncode == 0, out.stderr[-3000:]
        assert not list((disk / "run").rglob("*.orbax-checkpoint-tmp*"))
        assert sorted(eval_rows(disk / "run")) == list(range(1, TOTAL + 1))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_read_only_workdir_is_one_line_exit_4(ref, digits_dir, tmp_path):
    """Row 8: a read-only workdir (a tmpfs remounted read-only: root ignores file modes)."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "64m")
    try:
        shutil.copytree(ref, disk / "run")
        before = tree_hash(disk / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        line = _one_error_line(_run(disk / "run", digits_dir, "--config.total_steps=8"), EXIT_ENVIRONMENT)
        assert "Read-only file system" in line and str(disk / "run" / "train.lock") in line, line
        assert tree_hash(disk / "run") == before
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_bucket_lock_admits_one_writer_and_a_missing_bucket_is_exit_4(gcs, digits_dir):  # noqa: F811
    """Row 5 on gs://: the lock object is created under an ifGenerationMatch=0 precondition, so a
    second writer is refused naming the first; row 8: a missing bucket is one line, exit 4."""
    from mambavision_jax.errors import EnvironmentFailure, UserError
    from mambavision_jax.train.workdir import WorkdirLock

    env, fs = gcs
    first = WorkdirLock("gs://mv-test/run")
    assert first.acquire() is None
    try:
        with pytest.raises(
            UserError, match=rf"gs://mv-test/run is in use by another training run: pid {os.getpid()} "
        ):
            WorkdirLock("gs://mv-test/run").acquire()
    finally:
        first.release()
    assert not fs.exists("mv-test/run/train.lock")
    with pytest.raises(EnvironmentFailure, match="the bucket 'no-such-bucket' does not exist"):
        WorkdirLock("gs://no-such-bucket/run").acquire()
    out = subprocess.run(
        train_cmd("gs://no-such-bucket/run", f"--config.data.dir={digits_dir}", *COMMON),
        env={**train_env(1), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = _one_error_line(out, EXIT_ENVIRONMENT)
    assert "gs://no-such-bucket/run: the bucket 'no-such-bucket' does not exist" in line, line


def test_environment_message_finds_the_refusal_in_orbax_and_os_errors():
    import errno

    from mambavision_jax.train.workdir import environment_message

    ts = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "params.x/0" in OCDBT database at local file "/w/checkpoints/5/": '
        "Failed writing: \"/w/checkpoints/5/d/ab\": No space left on device [os_error_code='28']"
    )
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = ts
    assert environment_message(wrapped) == "No space left on device (/w/checkpoints/5/d/ab)"
    immutable = PermissionError(errno.EPERM, "Operation not permitted", "/w/train.lock")
    assert environment_message(immutable) == "Operation not permitted (/w/train.lock)"
    assert environment_message(ValueError("config.batch_size: must be > 0")) is None
    assert environment_message(FileNotFoundError(errno.ENOENT, "No such file", "/x")) is None


def test_stored_config_without_a_newer_field_resumes_when_the_field_has_its_default():
    from mambavision_jax.train.config import base_config
    from mambavision_jax.train.workdir import config_changes, config_record

    c = base_config()
    stored = config_record(c)
    del stored["resume_changes"]  # written by a version without the field
    assert config_changes(stored, config_record(c), config_record(base_config())) == {}
    c.seed = 5
    assert config_changes(stored, config_record(c), config_record(base_config())) == {"seed": (31, 5)}
