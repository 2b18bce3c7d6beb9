"""Train MambaVision: `python train.py --config configs/tiny.py --workdir runs/tiny`.

Any config field can be overridden: `--config.batch_size=256 --config.data.dir=/data/tfds`.
Several processes (TPU pods, SLURM, or `--coordinator/--num_processes/--process_id`) run the
same command; each reads its own shard of the data. `--workdir` may be local or gs://bucket/run.

An existing workdir is resumed from its newest whole checkpoint, with the config it was trained
with: a change to a field that changes what the checkpoints mean is refused (naming each field, old
-> new) unless `--config.resume_changes=field,...` allows it. One run writes to a workdir at a time.

Exit codes (one `error: ...` line on stderr; `--debug` or MAMBAVISION_JAX_DEBUG=1 for the traceback):
0 done (or nothing left to do: "nothing to do: the run finished at step N");
2 a bad flag or config value, a refused resume (another config, no whole checkpoint, the workdir
  in use by another run), a misspelt URL;
3 the loss or the weights stopped being finite (no checkpoint holds that state);
4 the machine or the store refused: a full disk, a read-only or immutable workdir, no permission,
  a missing bucket; fix it and run the same command to resume;
143 (`EXIT_PREEMPTED`) preempted by SIGTERM after writing a checkpoint at a step every process
  agreed on: run the same command to resume.
"""

import difflib
import importlib.util
import logging as py_logging
import os
import re
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

from mambavision_jax.cli import debug_requested
from mambavision_jax.errors import EXIT_ENVIRONMENT, EXIT_NON_FINITE, EXIT_USER_ERROR, UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Checkpoints, metrics.jsonl and TensorBoard logs go "
    "here (a local path or gs://...); an existing workdir is resumed from "
    "its latest checkpoint.",
)
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0 for a multi-process run.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_AUTO = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() with the cluster auto-detected (TPU pods, SLURM).",
)
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str, code: int = EXIT_USER_ERROR):
    # Past the _WithoutLoopNoise filter: a thread's traceback it is still holding (orbax's loop
    # dying beside a failed save) would take this line for its exception line and print with it.
    stream = sys.stderr.stream if isinstance(sys.stderr, _WithoutLoopNoise) else sys.stderr
    print(f"error: {' '.join(str(message).split())}", file=stream, flush=True)
    _silence_stderr()
    sys.exit(code)


def _silence_stderr() -> None:
    """After the one error line: nothing more on stderr. A failed orbax save leaves tensorstore
    callbacks and asyncio tasks that report the same failure again while the process shuts down."""
    if debug_requested():
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process


class _WithoutLoopNoise:
    """sys.stderr without the tracebacks "RuntimeError: Event loop is closed" that tensorstore's
    callbacks print once orbax's event loop has stopped after a failed save: the failure itself is
    reported once, by the main thread."""

    # Lines of those tracebacks that can come loose from their block when several threads print
    # at once (their writes interleave line by line).
    _LOOSE = re.compile(r"Event loop is closed|self\._check_closed\(\)|, in _check_closed$")

    def __init__(self, stream):
        self.stream, self.partial, self.block, self.noise = stream, "", None, False
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            return self._write(text)

    def _write(self, text: str) -> int:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if self.block is not None:
                if line and not line.startswith((" ", "Traceback")):  # the exception line ends it
                    if not self.noise and "Event loop is closed" not in line:
                        self.stream.write("\n".join([*self.block, line]) + "\n")
                    self.block = None
                else:
                    self.block.append(line)
                    self.noise = self.noise or bool(self._LOOSE.search(line))
            elif line.startswith("Traceback (most recent call last):"):
                self.block, self.noise = [line], False
            elif not self._LOOSE.search(line):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self.partial and self.block is None:
            self.stream.write(self.partial)
            self.partial = ""
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _config_file(argv) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a[len("--config=") :]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_field_message(argv) -> str | None:
    """'unknown config field ...' with the closest valid names, for the first --config.X override
    that names no field of the config file."""
    path = _config_file(argv)
    if path is None:
        return None
    try:
        spec = importlib.util.spec_from_file_location("_train_config", path.split(":")[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(*path.split(":")[1:2])
    except Exception:  # noqa: BLE001 - the original error is reported instead
        return None
    for a in argv:
        if not a.startswith("--config."):
            continue
        parts = a[len("--config.") :].split("=", 1)[0].split(".")
        node = config
        for depth, key in enumerate(parts):
            if not hasattr(node, "keys"):
                break
            if key not in node:
                where = ".".join(["config", *parts[:depth]])
                valid = sorted(node.keys())
                close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
                hint = (
                    "did you mean " + ", ".join(f"{where}.{c}" for c in close) + "?"
                    if close
                    else f"the fields of {where} are " + ", ".join(valid)
                )
                return f"unknown config field {where}.{key}; {hint}"
            node = node[key]
    return None


def _parse_flags(argv):
    """absl's parser, but a bad flag or config override is one `error:` line and exit code 2."""
    argv = [a for a in argv if a != "--debug"]
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        if debug_requested():
            raise
        _fail(_unknown_field_message(argv[1:]) or f"bad config override: {e}")
    except flags.Error as e:
        if debug_requested():
            raise
        _fail(f"{e} (see --helpfull)")


def main(argv):
    del argv
    from mambavision_jax.paths import check_url

    try:  # a misspelt URL (gs:/b, gss://b) before anything else: it would be written as a local folder
        check_url(_WORKDIR.value)
    except UserError as e:
        _fail(e)
    if not debug_requested():
        sys.stderr = _WithoutLoopNoise(sys.stderr)
        py_logging.getLogger("asyncio").setLevel(py_logging.CRITICAL)  # "exception was never retrieved"
        # orbax logs a failed background save with its traceback, then raises it in the main thread,
        # which reports it in one line
        py_logging.getLogger("absl").addFilter(lambda r: "/orbax/" not in r.pathname)
    from mambavision_jax import xla_cpu

    xla_cpu.use_eigen_convolutions()  # XLA-CPU's faster convolutions, before JAX starts its backends
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    from mambavision_jax.train.config import validate

    try:
        validate(_CONFIG.value)
    except ValueError as e:
        if debug_requested():
            raise
        _fail(e)
    import jax

    if _COORD.value or _NPROC.value:
        jax.distributed.initialize(_COORD.value, num_processes=_NPROC.value, process_id=_PID.value)
    elif _AUTO.value:
        jax.distributed.initialize()
    # With several processes, each one's CPU backend waits at most 2 minutes for the others'
    # topologies: start it now, while initialize has just lined the processes up, not after
    # imports of uneven length.
    jax.devices()
    from mambavision_jax.data import DatasetNotPreparedError
    from mambavision_jax.train import train_and_evaluate
    from mambavision_jax.train.loop import NonFiniteLossError
    from mambavision_jax.train.preemption import EXIT_PREEMPTED, Preempted
    from mambavision_jax.train.workdir import environment_message

    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Preempted as e:
        print(e, file=sys.stderr, flush=True)
        sys.exit(EXIT_PREEMPTED)
    except NonFiniteLossError as e:
        _fail(e, EXIT_NON_FINITE)
    except DatasetNotPreparedError as e:  # several lines: the commands that prepare it
        if debug_requested():
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as e:
        if debug_requested():
            raise
        world = environment_message(e)
        if world is not None:  # orbax / tensorstore / gcsfs errors carry it in their text
            _fail(f"{world}; fix that and run the same command to resume", EXIT_ENVIRONMENT)
        if isinstance(e, ValueError):  # UserError included
            _fail(e)
        raise


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
