"""The official PyTorch MambaVision (pip `mambavision==1.2.0`) on the CPU, as the parity reference.

`mamba_ssm` is CUDA-only, so a pure-PyTorch `selective_scan_fn` with the same contract as
`mamba_ssm.ops.selective_scan_interface.selective_scan_fn` is registered before the official module
is imported. The PyPI torchvision is a CUDA build whose fake-op registrations fail beside the CPU
torch; an empty `torchvision._meta_registrations` module sidesteps them.
"""

from __future__ import annotations

import sys
import types

import numpy as np


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """mamba_ssm's `selective_scan_ref`, float32, (b, d, l) layout, real A, B/C shared by channels."""
    import torch
    import torch.nn.functional as F

    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    B, C = B.float(), C.float()
    x = A.new_zeros((batch, dim, dstate))
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


def _install_shims():
    if "mamba_ssm" not in sys.modules:
        names = ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface"]
        mods = {n: types.ModuleType(n) for n in names}
        mods["mamba_ssm.ops.selective_scan_interface"].selective_scan_fn = selective_scan_ref
        mods["mamba_ssm.ops.selective_scan_interface"].selective_scan_ref = selective_scan_ref
        mods["mamba_ssm"].ops = mods["mamba_ssm.ops"]
        mods["mamba_ssm.ops"].selective_scan_interface = mods["mamba_ssm.ops.selective_scan_interface"]
        sys.modules.update(mods)
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )


def official_module():
    """The official `mambavision.models.mamba_vision` module."""
    _install_shims()
    from mambavision.models import mamba_vision

    return mamba_vision


def build_official(name: str, seed: int = 0, randomize: bool = True, **kwargs):
    """An official model in eval mode; with `randomize`, every parameter and BatchNorm statistic is
    drawn at random (layer scales and A_log too), so a parity test exercises every weight."""
    import torch

    mv = official_module()
    torch.manual_seed(seed)
    model = getattr(mv, name)(pretrained=False, **kwargs)
    if randomize:
        randomize_(model, seed)
    return model.eval()


def randomize_(model, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            if key.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif key.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif key.endswith(("gamma", "gamma_1", "gamma_2")):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
            elif key.endswith("A_log"):
                t.copy_(torch.log(torch.rand(t.shape, generator=g) * 8 + 0.5))
            elif key.endswith(".D"):
                t.copy_(torch.randn(t.shape, generator=g))
            elif t.ndim == 1 and ("norm" in key or "conv_down.1" in key or "conv_down.4" in key):
                # norm scale/bias: around 1 and 0
                t.copy_((1.0 if key.endswith("weight") else 0.0) + 0.2 * torch.randn(t.shape, generator=g))
            else:
                fan_in = max(1, int(np.prod(t.shape[1:]))) if t.ndim > 1 else 16
                t.copy_(torch.randn(t.shape, generator=g) / np.sqrt(fan_in))
    return model


def state_dict_numpy(model) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
