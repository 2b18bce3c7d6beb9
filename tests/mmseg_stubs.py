"""Importing mmsegmentation 1.2.2 on a CPU machine with mmcv-lite (the reference for the
segmentation tests).

mmcv-lite has no compiled `mmcv._ext`, which `mmcv.ops` loads at import; mmseg imports
`mmcv.ops` through its models and datasets even where nothing compiled is used (the transforms,
IoUMetric, UPerHead and FCNHead run in pure PyTorch / numpy). A stub module that answers any
attribute stands in for it. It is a real module with a `__spec__`, so `importlib.util.find_spec`
and pkgutil scans accept it.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types


class _AnyAttribute(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def compiled_op(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name}: compiled mmcv ops are not available (mmcv-lite)")

        return compiled_op


def install_mmcv_ext_stub() -> None:
    """Register the stub `mmcv._ext` (once) before mmseg is imported."""
    # The PyPI torchvision (imported by mmseg) is a CUDA build: see tests/official.py.
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    if "mmcv._ext" in sys.modules:
        return
    stub = _AnyAttribute("mmcv._ext")
    stub.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=None)
    sys.modules["mmcv._ext"] = stub
    import mmcv

    mmcv._ext = stub


def mmseg_module(name: str):
    """`importlib.import_module(name)` for an mmseg module, with the stub installed first."""
    import importlib

    install_mmcv_ext_stub()
    return importlib.import_module(name)
