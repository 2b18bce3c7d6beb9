"""The mesa distillation loss against the official one (`kdloss` in the official train.py)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from mambavision_jax.train.steps import mesa_kd


def official_kdloss():
    """`kdloss` exactly as written in the installed official `mambavision/train.py` (the script
    itself imports CUDA-only code, so its function and loss object are compiled alone, on the CPU)."""
    path = Path(list(importlib.util.find_spec("mambavision").submodule_search_locations)[0]) / "train.py"
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "kdloss")
    loss = next(n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "kl_loss")
    assert ast.unparse(loss.value) == "torch.nn.KLDivLoss(reduction='batchmean').cuda()"
    namespace = {"torch": torch, "kl_loss": torch.nn.KLDivLoss(reduction="batchmean")}
    exec(compile(ast.Module([fn], []), str(path), "exec"), namespace)
    return namespace["kdloss"]


@pytest.mark.parametrize("batch,classes,scale", [(1, 10, 1.0), (8, 1000, 4.0), (5, 37, 20.0)])
def test_mesa_kd_matches_official(batch, classes, scale):
    kdloss = official_kdloss()
    rng = np.random.default_rng(batch)
    logits = (scale * rng.standard_normal((batch, classes))).astype(np.float32)
    teacher = (scale * rng.standard_normal((batch, classes))).astype(np.float32)
    ref = float(kdloss(torch.from_numpy(logits), torch.from_numpy(teacher)))
    ours = float(mesa_kd(jax.numpy.asarray(logits), jax.numpy.asarray(teacher)))
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-6)
    # Not symmetric: swapping student and teacher gives another number (the direction matters).
    swapped = float(kdloss(torch.from_numpy(teacher), torch.from_numpy(logits)))
    assert abs(swapped - ref) > 1e-3 * abs(ref)
    # Zero when the student equals the teacher.
    assert float(mesa_kd(jax.numpy.asarray(teacher), jax.numpy.asarray(teacher))) == pytest.approx(
        0, abs=1e-5
    )


def test_mesa_kd_gradient_matches_official():
    """The gradient that reaches the student's logits (the teacher is a constant in both)."""
    kdloss = official_kdloss()
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((6, 50))).astype(np.float32)
    teacher = (3 * rng.standard_normal((6, 50))).astype(np.float32)
    t = torch.from_numpy(logits).requires_grad_(True)
    kdloss(t, torch.from_numpy(teacher)).backward()
    g = jax.grad(mesa_kd)(jax.numpy.asarray(logits), jax.numpy.asarray(teacher))
    np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=1e-4, atol=1e-6)
