"""Preemption: SIGTERM to one process of a 2-process run; every process stops after the same step,
checkpoints it and exits with EXIT_PREEMPTED; the same command resumes with no step lost or
repeated, and the losses equal an uninterrupted run's step for step."""

import os
import re
import signal
import subprocess

import portpicker
import pytest
from train_runs import read_until, train_cmd, train_env, train_losses

from mambavision_jax.train.preemption import EXIT_PREEMPTED, SYNC_EVERY_ENV, PreemptionWatcher

TOTAL = 16
COMMON = [
    f"--config.total_steps={TOTAL}",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=100",
    "--config.eval_every_steps=100",
]


@pytest.fixture(scope="module")
def ref_losses(digits_dir, tmp_path_factory):
    """{step: loss} of the same 2-process run, uninterrupted (how the processes agree on a
    preemption step does not change the numbers)."""
    logs = tmp_path_factory.mktemp("ref")
    procs = _launch(logs / "ref", digits_dir, logs)
    assert _finish(procs, []) == [0, 0], (logs / "err0.txt").read_text()[-3000:]
    return train_losses((logs / "ref" / "metrics.jsonl").read_text())


def _launch(workdir, data_dir, logs, **env):
    """Process 0 with its stdout piped (read line by line), process 1 with its stdout in a file."""
    port = portpicker.pick_unused_port()
    procs = []
    for i in range(2):
        cmd = train_cmd(
            workdir,
            f"--config.data.dir={data_dir}",
            *COMMON,
            f"--coordinator=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        )
        out = subprocess.PIPE if i == 0 else open(logs / f"out{i}.txt", "w")
        procs.append(
            subprocess.Popen(
                cmd, env=train_env(2, **env), stdout=out, text=True, stderr=open(logs / f"err{i}.txt", "w")
            )
        )
    return procs


def _finish(procs, seen, timeout=900):
    seen.extend(procs[0].stdout)  # process 0's remaining lines, until it exits
    for p in procs:
        p.wait(timeout=timeout)
    return [p.returncode for p in procs]


def _preempt_and_resume(tmp_path, data_dir, ref_losses, **env) -> int:
    """SIGTERM to process 1 once the run trains; both processes must stop after the same step,
    checkpoint it with each one's iterator position and exit with EXIT_PREEMPTED; the same command
    then finishes the run with no step lost or repeated and the uninterrupted run's losses.
    Returns the step they stopped after."""
    run = tmp_path / "run"
    procs, seen = _launch(run, data_dir, tmp_path, **env), []
    try:
        assert read_until(procs[0], "step 3/", seen), "".join(seen)  # the run is training
        procs[1].send_signal(signal.SIGTERM)
        codes = _finish(procs, seen)
    finally:
        for p in procs:
            p.kill()
    errs = [(tmp_path / f"err{i}.txt").read_text() for i in range(2)]
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], errs[0][-3000:] + errs[1][-3000:]
    stopped = [int(re.search(r"preempted \(SIGTERM\): stopped after step (\d+)", e).group(1)) for e in errs]
    assert stopped[0] == stopped[1] and 3 <= stopped[0] < TOTAL, stopped
    step = stopped[0]
    assert (run / "checkpoints" / str(step)).is_dir()
    for i in range(2):
        assert (run / "checkpoints" / "data_state" / f"{step}.{i}.json").is_file()
    assert sorted(train_losses((run / "metrics.jsonl").read_text())) == list(range(1, step + 1))

    procs, seen = _launch(run, data_dir, tmp_path, **env), []
    assert _finish(procs, seen) == [0, 0], (tmp_path / "err0.txt").read_text()[-3000:]
    assert any(line.startswith(f"resumed from {run / 'checkpoints'} at step {step}") for line in seen), seen
    lines = [l for l in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in l]
    assert len(lines) == TOTAL  # no step lost or repeated
    losses = train_losses("\n".join(lines))
    assert sorted(losses) == list(range(1, TOTAL + 1))
    for s in range(1, TOTAL + 1):
        assert losses[s] == pytest.approx(ref_losses[s], rel=1e-6), s
    return step


def test_sigterm_to_one_process_checkpoints_every_host_and_resumes_exactly(tmp_path, digits_dir, ref_losses):
    _preempt_and_resume(tmp_path, digits_dir, ref_losses)  # JAX's preemption service picks the step


@pytest.mark.slow  # two more 2-process launches: 240 s on the shared 2-core machine
def test_without_jax_preemption_service_the_flags_are_all_gathered(tmp_path, digits_dir, ref_losses):
    """jax_enable_preemption_service off: the SIGTERM flag is exchanged every 4 steps, so the
    processes stop together at a multiple of 4."""
    step = _preempt_and_resume(
        tmp_path, digits_dir, ref_losses, JAX_ENABLE_PREEMPTION_SERVICE="false", **{SYNC_EVERY_ENV: "4"}
    )
    assert step % 4 == 0, step


def test_one_process_sigterm_sets_the_flag_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    watcher = PreemptionWatcher()
    try:
        assert watcher.mechanism == "SIGTERM flag" and not watcher.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.reached(2)
    finally:
        watcher.close()
    assert signal.getsignal(signal.SIGTERM) is before


def test_sync_every_from_the_environment_is_checked(monkeypatch):
    monkeypatch.setenv(SYNC_EVERY_ENV, "3")
    watcher = PreemptionWatcher()
    watcher.close()
    assert watcher.sync_every == 3
    monkeypatch.setenv(SYNC_EVERY_ENV, "0")
    with pytest.raises(ValueError, match=f"{SYNC_EVERY_ENV}='0': must be a whole number of steps >= 1"):
        PreemptionWatcher()
