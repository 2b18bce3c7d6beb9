"""The MambaVision backbone and classifier (NVlabs/MambaVision, CVPR 2025), NHWC."""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mambavision_jax.models.blocks import MambaVisionLayer, PatchEmbed
from mambavision_jax.models.layers import BatchNorm, Linear

# Two stride-2 convs in the stem and three downsamples: the coarsest map is 1/32 of the input.
TOTAL_STRIDE = 32


class MambaVision(nnx.Module):
    """Module tree and parameter names mirror the official `MambaVision` so the converter is a table.

    Call with float images (B, H, W, C), normalised with the variant's mean/std, any H and W
    >= 32. `model.train()` / `model.eval()` switch BatchNorm statistics and DropPath.
    """

    def __init__(self, *, dim: int, in_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                 window_size: Sequence[int], mlp_ratio: float = 4.0, drop_path_rate: float = 0.2,
                 in_chans: int = 3, num_classes: int = 1000, layer_scale: float | None = None,
                 layer_scale_conv: float | None = None, scan_impl: str = "auto",
                 attn_impl: str = "auto", bn_groups: int = 1, remat: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
        self.num_classes, self.in_chans, self.dtype = num_classes, in_chans, dtype
        self.num_features = int(dim * 2 ** (len(depths) - 1))
        self.stage_dims = tuple(int(dim * 2 ** i) for i in range(len(depths)))
        self.patch_embed = PatchEmbed(in_chans, in_dim, dim, bn_groups=bn_groups, dtype=dtype, rngs=rngs)
        dpr = [float(r) for r in np.linspace(0, drop_path_rate, sum(depths))]
        # One RNG stream shared by every DropPath: the whole model carries a single counter.
        rng_stream = rngs["dropout"].fork() if drop_path_rate > 0 else None
        self.levels = nnx.List([
            MambaVisionLayer(
                self.stage_dims[i], depths[i], num_heads[i], window_size[i], conv=i < 2,
                downsample=i < 3, mlp_ratio=mlp_ratio,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], layer_scale=layer_scale,
                layer_scale_conv=layer_scale_conv, scan_impl=scan_impl, attn_impl=attn_impl,
                bn_groups=bn_groups,
                remat=remat, rng_stream=rng_stream, dtype=dtype, rngs=rngs)
            for i in range(len(depths))])
        self.norm = BatchNorm(self.num_features, eps=1e-5, num_groups=bn_groups, dtype=dtype)
        self.head = Linear(self.num_features, num_classes, dtype=dtype, rngs=rngs) if num_classes > 0 else None

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (batch, height, width, {self.in_chans}) "
                             f"(NHWC), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} channels in the last axis (NHWC), got shape "
                             f"{tuple(x.shape)}; convert NCHW input with x.transpose(0, 2, 3, 1)")
        if min(x.shape[1:3]) < TOTAL_STRIDE:
            raise ValueError(f"image size {x.shape[1]}x{x.shape[2]} is too small: MambaVision "
                             f"downsamples by {TOTAL_STRIDE}, so height and width must be >= {TOTAL_STRIDE}")

    def forward_intermediates(self, x: jax.Array, indices: Sequence[int] = (0, 1, 2, 3)) -> list[jax.Array]:
        """The stage outputs before each downsample (NHWC), as detection/segmentation heads take them."""
        self._check_input(x)
        x = self.patch_embed(x.astype(self.dtype))
        feats = []
        for i, level in enumerate(self.levels):
            if i > max(indices):
                break
            y = level.forward_stage(x)
            if i in indices:
                feats.append(y)
            x = y if level.downsample is None else level.downsample(y)
        return feats

    def forward_features(self, x: jax.Array) -> jax.Array:
        """Pooled features (B, num_features): BatchNorm -> global average pool, in float32."""
        self._check_input(x)
        x = self.patch_embed(x.astype(self.dtype))
        for level in self.levels:
            x = level(x)
        return jnp.mean(self.norm(x).astype(jnp.float32), axis=(1, 2))

    def forward_head(self, features: jax.Array) -> jax.Array:
        if self.head is None:
            return features
        return self.head(features.astype(self.dtype)).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, num_classes) in float32 (the pooled features when num_classes == 0)."""
        return self.forward_head(self.forward_features(x))
