"""Semantic segmentation: UperNet on MambaVision, exact to the official mmseg models."""

from mambavision_jax.segmentation.config import (
    SEG_CONFIGS,
    SegmentationConfig,
    list_segmenters,
    segmentation_config,
)
from mambavision_jax.segmentation.model import SegmentationBackbone, SegOutputs, UperNet, create_segmenter

__all__ = [
    "SEG_CONFIGS",
    "SegOutputs",
    "SegmentationBackbone",
    "SegmentationConfig",
    "UperNet",
    "create_segmenter",
    "list_segmenters",
    "segmentation_config",
]
