"""The MambaVision backbone and classifier (NVlabs/MambaVision, CVPR 2025), NHWC."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mambavision_jax.models.blocks import MambaVisionLayer, PatchEmbed
from mambavision_jax.models.catalog import pretrained_cfg_for
from mambavision_jax.models.config import MambaVisionConfig, RuntimeConfig
from mambavision_jax.models.layers import BatchNorm, Linear
from mambavision_jax.models.mixer import MambaVisionMixer
from mambavision_jax.ops import ScanSharding

DEFAULT_RUNTIME = RuntimeConfig()  # float32, every kernel "auto"
# Two stride-2 convs in the stem and three downsamples: the coarsest map is 1/32 of the input.
TOTAL_STRIDE = 32


class MambaVision(nnx.Module):
    """Module tree and parameter names mirror the official `MambaVision` so the converter is a table.

    Call with float images (B, H, W, C), normalised with the variant's mean/std, any H and W
    >= 32. `model.train()` / `model.eval()` switch BatchNorm statistics and DropPath.
    """

    def __init__(
        self, config: MambaVisionConfig, runtime: RuntimeConfig = DEFAULT_RUNTIME, *, rngs: nnx.Rngs
    ):
        if not isinstance(config, MambaVisionConfig):
            raise TypeError(
                f"MambaVision(config, ...): config must be a MambaVisionConfig, got "
                f"{type(config).__name__} (build one with create_model or model_config)"
            )
        if not isinstance(runtime, RuntimeConfig):
            raise TypeError(f"MambaVision: runtime must be a RuntimeConfig, got {type(runtime).__name__}")
        self.config, self.runtime = config, runtime
        self.dtype = runtime.compute_dtype
        self.num_features = config.num_features
        self.stage_dims = config.stage_dims
        self.patch_embed = PatchEmbed(config, runtime, rngs=rngs)
        depths = config.depths
        dpr = [float(r) for r in np.linspace(0, config.drop_path_rate, sum(depths))]
        # One RNG stream shared by every DropPath: the whole model carries a single counter.
        rng_stream = rngs["dropout"].fork() if config.drop_path_rate > 0 else None
        self.levels = nnx.List(
            [
                MambaVisionLayer(
                    i,
                    config,
                    runtime,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    rng_stream=rng_stream,
                    rngs=rngs,
                )
                for i in range(len(depths))
            ]
        )
        self.norm = BatchNorm(self.num_features, eps=1e-5, num_groups=runtime.bn_groups, dtype=self.dtype)
        self.head = (
            Linear(self.num_features, config.num_classes, dtype=self.dtype, rngs=rngs)
            if config.num_classes > 0
            else None
        )

    @property
    def name(self) -> str | None:
        """The official variant the config derives from (None for a custom architecture)."""
        return self.config.name

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def in_chans(self) -> int:
        return self.config.in_chans

    @property
    def pretrained_cfg(self):
        """The official preprocessing of `config.name` (timm's pretrained_cfg), with this model's
        classes and channels; a default one (224 px, ImageNet mean / std) for a custom model."""
        return pretrained_cfg_for(self.config)

    def set_scan_sharding(self, sharding: ScanSharding | None) -> None:
        """Run the Pallas selective scans per device under a jit sharded as `sharding` (an
        `ops.ScanSharding`: the mesh and the axes that split the batch), or None for the plain
        call; `runtime.scan_sharding` follows. For a model built before its mesh was known, e.g.
        an evaluator's copy; set it before the model is traced (it is part of the graphdef)."""
        if sharding is not None and not isinstance(sharding, ScanSharding):
            raise TypeError(
                f"set_scan_sharding: expected a mambavision_jax.ops.ScanSharding or None, got "
                f"{type(sharding).__name__}"
            )
        for _, module in nnx.iter_modules(self):
            if isinstance(module, MambaVisionMixer):
                module.scan_sharding = sharding
        self.runtime = self.runtime.replace(scan_sharding=sharding)

    def set_runtime(self, *, scan_impl: str | None = None) -> None:
        """Change the runtime options that need no new modules (the selective scan's
        implementation, e.g. 'sequential' for an ONNX export) in every mixer; `runtime` follows,
        so it keeps describing the model. Set it before the model is traced."""
        if scan_impl is None:
            return
        self.runtime = self.runtime.replace(scan_impl=scan_impl)  # validates the name
        for _, module in nnx.iter_modules(self):
            if isinstance(module, MambaVisionMixer):
                module.scan_impl = scan_impl

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(
                f"expected images of shape (batch, height, width, {self.in_chans}) "
                f"(NHWC), got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} channels in the last axis (NHWC), got shape "
                f"{tuple(x.shape)}; convert NCHW input with x.transpose(0, 2, 3, 1)"
            )
        if min(x.shape[1:3]) < TOTAL_STRIDE:
            raise ValueError(
                f"image size {x.shape[1]}x{x.shape[2]} is too small: MambaVision "
                f"downsamples by {TOTAL_STRIDE}, so height and width must be >= {TOTAL_STRIDE}"
            )

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
