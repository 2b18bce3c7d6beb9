"""Semantic segmentation: UperNet on MambaVision, exact to the official mmseg models.

Public API (names kept stable):

- `create_segmenter(name_or_config="tiny", *, rngs=None, runtime=None, **overrides) -> UperNet`:
  an official model by name (`list_segmenters()`: mamba_vision_160k_ade20k-512x512_{tiny,small,
  base}, mamba_vision_160k_ade20k-640x640_l3_21k; short names tiny / small / base / l3) or any
  `SegmentationConfig`, randomly initialised, in eval mode. `overrides`: SegmentationConfig fields
  (num_classes, channels, ...), backbone MambaVisionConfig fields (window_size, ...), RuntimeConfig
  fields (dtype, attn_impl, remat, bn_groups, ...).
- `UperNet`: `model(x)` normalised NHWC images (0-255 RGB, `config.mean` / `config.std`) ->
  float32 logits (B, H, W, classes) at the input size (mmseg's encode_decode);
  `model.forward_heads(x, aux=True) -> SegOutputs(features, decode, aux)` with both heads' logits
  at 1/4 scale (what the training loss takes; mmseg resizes them to the labels); `model.config`;
  `model.train()` / `model.eval()`. Module tree = mmseg's: backbone (with outnorm{i}),
  decode_head (psp_modules, bottleneck, lateral_convs, fpn_convs, fpn_bottleneck, conv_seg),
  auxiliary_head (convs, conv_seg).
- `SegmentationConfig` (frozen; to_dict / from_dict / replace), `SEG_CONFIGS`,
  `segmentation_config(name)`.
- `checkpoint`: `load_checkpoint(path_or_hub_id, checkpoint="best")` (mmseg .pth, orbax folder,
  segmentation training run, hub id or short name; through `weights.resolve`, the package's one
  way in for weights), `save_mmseg_checkpoint(model, path)`, `to_mmseg_state_dict(model)`,
  `save_checkpoint(model, dir)` (orbax), `is_mmseg_checkpoint(obj)`, `is_mmseg_file(path)`,
  `variant_of(state_dict)`, `is_segmentation_folder(path)`, `resolve_hub_id(spec)` /
  `fetch_hub(spec)` (the readers and writers live in `checkpoint_io`).
- `inference`: `segment_image(model, rgb_uint8, mode="whole"|"slide")` -> logits at the image's
  size, `segment_labels(...)`, `slide_logits(model, x)`, `rescale_size`, `ade20k_metainfo()`.
- `SegmentationBackbone`: `MM_mamba_vision` (the four outnorm'd stage maps).
"""

from mambavision_jax.segmentation import checkpoint, inference
from mambavision_jax.segmentation.config import (
    SEG_CONFIGS,
    SegmentationConfig,
    list_segmenters,
    segmentation_config,
)
from mambavision_jax.segmentation.model import SegmentationBackbone, SegOutputs, UperNet, create_segmenter

__all__ = [
    "checkpoint",
    "inference",
    "SEG_CONFIGS",
    "SegOutputs",
    "SegmentationBackbone",
    "SegmentationConfig",
    "UperNet",
    "create_segmenter",
    "list_segmenters",
    "segmentation_config",
]
