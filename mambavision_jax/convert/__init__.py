"""Weight converters between the official PyTorch checkpoints and the NNX models.

CLI: `python -m mambavision_jax.convert --help`. `load_checkpoint` is `weights.load_checkpoint`
(any weights: files, folders, hub ids, training runs).
"""

from mambavision_jax.convert.api import (
    hf_config,
    load_state_dict,
    load_torch_checkpoint,
    save_checkpoint,
    save_torch_checkpoint,
    to_torch_state_dict,
    torch_key_shapes,
)
from mambavision_jax.convert.checkpoint_io import CheckpointError, read_state_dict
from mambavision_jax.convert.variants import infer_variant
from mambavision_jax.weights import load_checkpoint

__all__ = [
    "CheckpointError",
    "hf_config",
    "infer_variant",
    "load_checkpoint",
    "load_state_dict",
    "load_torch_checkpoint",
    "read_state_dict",
    "save_checkpoint",
    "save_torch_checkpoint",
    "to_torch_state_dict",
    "torch_key_shapes",
]
