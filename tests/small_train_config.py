"""A seconds-per-step training config for the tests (digits, tiny model, 32 px), built on demo.py."""

import importlib.util
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_repo_config(name: str):
    """`configs/<name>.py`'s get_config() (this file is itself loaded by path by train.py, so it
    cannot rely on the tests' sys.path)."""
    spec = importlib.util.spec_from_file_location(f"{name}_config", CONFIGS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def get_config(arg=None):
    c = load_repo_config("demo")
    c.model.overrides = dict(
        dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), window_size=(4, 4, 2, 1)
    )
    c.model.drop_path_rate = 0.1
    c.data.image_size = 32
    c.mixup.prob = 1.0  # exercise mixup/cutmix and the mesa teacher too
    c.mesa.weight = 0.5
    c.mesa.start_ratio = 0.0
    c.optimizer.name = "lamb"
    c.batch_size = 16
    c.eval_batch_size = 64
    return c
