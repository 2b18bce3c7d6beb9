"""The official MambaVision UperNet (mmseg 1.2.2 `EncoderDecoder` + the official
`MM_mamba_vision` backbone) on the CPU, built from the official config files, as the
segmentation parity reference.

tests/official_seg_files/ holds the official files verbatim (NVlabs/MambaVision at 7860a50:
semantic_segmentation/tools/mamba_vision.py and the configs the ADE20K models use, under the NVIDIA
Source Code License-NC in that folder's LICENSE), so the tests need no network. Stubs: the
project's pure-PyTorch selective scan in place of mamba_ssm (tests/official.py), and an empty
`mmcv._ext` (mmcv-lite has no compiled ops; UPerHead and FCNHead use none). SyncBN becomes
BatchNorm (mmengine's revert_sync_batchnorm). A missing reference package is an ImportError: the
test module fails to import, it is never skipped.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

from official import _install_shims, randomize_

FILES = Path(__file__).parent / "official_seg_files"
CONFIGS = {
    "tiny": "mamba_vision_160k_ade20k-512x512_tiny.py",
    "small": "mamba_vision_160k_ade20k-512x512_small.py",
    "base": "mamba_vision_160k_ade20k-512x512_base.py",
    "l3": "mamba_vision_160k_ade20k-640x640_l3_21k.py",
}


class _NoCompiledOps(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name}: no compiled mmcv ops in the reference")

        return missing


def _install_seg_shims() -> None:
    _install_shims()
    if "mmcv._ext" not in sys.modules:
        ext = _NoCompiledOps("mmcv._ext")
        ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
        sys.modules["mmcv._ext"] = ext
    name = "official_mmseg_mamba_vision"
    if name not in sys.modules:  # registers MM_mamba_vision with mmseg's MODELS
        spec = importlib.util.spec_from_file_location(name, FILES / "tools" / "mamba_vision.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def config_path(variant: str) -> Path:
    return FILES / "configs" / "mamba_vision" / CONFIGS[variant]


def official_config(variant: str):
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_path(variant)))
    cfg.model.backbone.pretrained = None  # the config points at /ckpts/...: random weights here
    return cfg


def build_official_segmentor(variant: str, seed: int = 0, randomize: bool = True, test_cfg=None):
    """The official segmentor in eval mode; with `randomize`, every parameter and BatchNorm /
    LayerNorm statistic drawn at random (as tests/official.py does for the classifier)."""
    import torch

    _install_seg_shims()
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    cfg = official_config(variant)
    if test_cfg is not None:
        cfg.model.test_cfg = test_cfg
    torch.manual_seed(seed)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if randomize:
        randomize_(model, seed)
        _randomize_head_norms(model, seed)
    return model.eval()


def _randomize_head_norms(model, seed: int) -> None:
    """The heads' ConvModule BatchNorms (`.bn.`) and outnorms: statistics and affine away from
    the identity, so a swapped scale / bias or mean / var shows."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if ".bn." in key or "outnorm" in key:
                if key.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
                elif key.endswith("running_mean"):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.2)
                elif key.endswith("weight"):
                    t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=g))
                elif key.endswith("bias"):
                    t.copy_(0.2 * torch.randn(t.shape, generator=g))


def official_outputs(model, x_nhwc: np.ndarray, *, double: bool = True) -> dict[str, np.ndarray]:
    """{"features": [NHWC maps], "decode", "aux", "logits"} of the official model, NHWC numpy."""
    import torch

    m = model.double() if double else model.float()
    dtype = torch.float64 if double else torch.float32
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).to(dtype)
    with torch.no_grad():
        # encode_decode's two steps, with the backbone run once for all four outputs
        feats = m.extract_feat(x)
        decode = m.decode_head(feats)
        aux = m.auxiliary_head(feats)
        metas = [dict(img_shape=tuple(x.shape[2:]), ori_shape=tuple(x.shape[2:]))] * x.shape[0]
        logits = m.decode_head.predict(feats, metas, m.test_cfg)

    def nhwc(t):
        return t.permute(0, 2, 3, 1).numpy()

    return {
        "features": [nhwc(f) for f in feats],
        "decode": nhwc(decode),
        "aux": nhwc(aux),
        "logits": nhwc(logits),
    }


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
