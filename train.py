"""Train MambaVision: `python train.py --config configs/tiny.py --workdir runs/tiny`.

Any config field can be overridden: `--config.batch_size=256 --config.data.dir=/data/tfds`.
Several processes (TPU pods, SLURM, or `--coordinator/--num_processes/--process_id`) run the
same command; each reads its own shard of the data.
"""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard logs go "
                               "here; an existing workdir is resumed from its latest checkpoint.")
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0 for a multi-process run.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_AUTO = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with the "
                          "cluster auto-detected (TPU pods, SLURM).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from mambavision_jax import xla_cpu
    xla_cpu.use_eigen_convolutions()  # XLA-CPU's faster convolutions, before JAX starts its backends
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    import jax
    if _COORD.value or _NPROC.value:
        jax.distributed.initialize(_COORD.value, num_processes=_NPROC.value, process_id=_PID.value)
    elif _AUTO.value:
        jax.distributed.initialize()
    from mambavision_jax.train import train_and_evaluate
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
