"""Backbone features for dense tasks: the pre-downsample stage maps, like timm's `features_only`."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from mambavision_jax.models.layers import LayerNorm
from mambavision_jax.models.mamba_vision import MambaVision


class FeatureExtractor(nnx.Module):
    """Returns a list of NHWC maps, one per index in `out_indices` (T at 224: 56x56x80, 28x28x160,
    14x14x320, 7x7x640). With `norm=True` each map gets its own LayerNorm over channels
    (`norm{i}`), as the official detection/segmentation backbones add."""

    def __init__(
        self,
        backbone: MambaVision,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        *,
        norm: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        bad = [i for i in out_indices if not 0 <= i < len(backbone.levels)]
        if bad:
            raise ValueError(f"out_indices {bad} out of range: the model has {len(backbone.levels)} stages")
        self.backbone = backbone
        self.out_indices = tuple(out_indices)
        self.channels = tuple(backbone.stage_dims[i] for i in self.out_indices)
        self.reductions = tuple(4 * 2**i for i in self.out_indices)
        self.norms = (
            nnx.List([LayerNorm(c, rngs=rngs or nnx.Rngs(0)) for c in self.channels]) if norm else None
        )

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        feats = self.backbone.forward_intermediates(x, self.out_indices)
        if self.norms is not None:
            feats = [n(f) for n, f in zip(self.norms, feats)]
        return feats
