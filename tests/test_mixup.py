"""Mixup / CutMix (timm 'batch' mode) and the model EMA (timm ModelEmaV2)."""

from __future__ import annotations

import functools
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mambavision_jax.train import ema, mixup

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

NUM_CLASSES = 10
RECIPE = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1)


B, H, W = 8, 12, 10


@functools.partial(jax.jit, static_argnums=(5,))
def _mix_many(keys, x, y, prob, switch_prob, num_groups):
    return jax.vmap(
        lambda k: mixup.mixup_cutmix(
            k,
            x,
            y,
            NUM_CLASSES,
            mixup_alpha=0.8,
            cutmix_alpha=1.0,
            prob=prob,
            switch_prob=switch_prob,
            label_smoothing=0.1,
            num_groups=num_groups,
        )
    )(keys)


def mix_many(keys, x, y, prob=1.0, switch_prob=0.5, num_groups=1):
    """The recipe's mixup_cutmix for many keys at once: one compile per num_groups (prob and
    switch_prob are traced float32 arrays, passed positionally so the jit cache key never changes)."""
    return _mix_many(keys, x, y, jnp.float32(prob), jnp.float32(switch_prob), num_groups)


N_KEYS = 2048  # every mix_many call uses this many keys: one compile serves all tests


def keys(seed=0):
    return jax.random.split(jax.random.PRNGKey(seed), N_KEYS)


def id_images(b=B, h=H, w=W):
    """Image i is the constant i + 1 (per-image ids), NHWC float32."""
    return jnp.broadcast_to(jnp.arange(1, b + 1, dtype=jnp.float32)[:, None, None, None], (b, h, w, 3))


def distinct_labels(b=B):
    return jnp.arange(b, dtype=jnp.int32) % NUM_CLASSES


def lam_from_targets(targets, labels, smoothing=0.1):
    off = smoothing / NUM_CLASSES
    on = 1.0 - smoothing + off
    t = np.asarray(targets)[np.arange(len(labels)), np.asarray(labels)]
    return (t - off) / (on - off)


def test_smooth_labels_and_targets_sum_to_one():
    y = jnp.array([0, 3, 9, 3])
    s = mixup.smooth_labels(y, NUM_CLASSES, 0.1)
    np.testing.assert_allclose(np.asarray(s).sum(1), 1.0, rtol=1e-6)
    assert float(s[1, 3]) == pytest.approx(0.9 + 0.01) and float(s[1, 0]) == pytest.approx(0.01)
    x = jax.random.normal(jax.random.PRNGKey(0), (B, H, W, 3))
    _, t = mix_many(keys(), x, distinct_labels())
    np.testing.assert_allclose(np.asarray(t).sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(t) >= 0)


def test_targets_match_timm_mixup_target():
    import torch
    from timm.data.mixup import mixup_target

    y = np.array([1, 4, 4, 7, 0, 9])
    for lam in (1.0, 0.73, 0.21):
        ref = mixup_target(torch.tensor(y), NUM_CLASSES, lam, 0.1).numpy()
        ours = np.asarray(mixup.mixup_target(jnp.asarray(y), NUM_CLASSES, lam, 0.1))
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


def test_cutmix_lam_is_pixel_fraction_from_flipped():
    x, y = id_images(), distinct_labels()
    outs, ts = mix_many(keys(seed=1), x, y, switch_prob=1.0)  # always cutmix
    seen = 0
    for out, t in zip(np.asarray(outs[:40]), np.asarray(ts[:40])):
        lam = lam_from_targets(t, y)
        assert np.allclose(lam, lam[0], atol=1e-6)  # one lam per batch
        from_flip = out == np.asarray(x)[::-1]
        from_self = out == np.asarray(x)
        assert np.all(from_flip | from_self)
        frac = from_flip[..., 0].reshape(B, -1).mean(1)
        # every image takes the same box from its partner B-1-i; lam is corrected to the box area
        np.testing.assert_allclose(frac, 1.0 - lam[0], atol=1e-6)
        # the copied pixels form one axis-aligned rectangle
        m = from_flip[0, :, :, 0]
        if m.any():
            rows, cols = np.where(m.any(1))[0], np.where(m.any(0))[0]
            assert m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
            assert m.sum() == len(rows) * len(cols)
            seen += 1
    assert seen > 25


def test_mixup_fixed_lam_formula_and_timm():
    import torch
    from timm.data.mixup import Mixup

    x = jax.random.normal(jax.random.PRNGKey(1), (6, 5, 4, 3))
    y = jnp.array([0, 1, 2, 3, 4, 5])
    lam = 0.37
    p = mixup.MixParams(lam=jnp.float32(lam), use_cutmix=jnp.asarray(False), box=jnp.zeros(4, jnp.int32))
    out, t = jax.jit(mixup.apply_mix, static_argnums=(3, 4))(x, y, p, NUM_CLASSES, 0.1)
    np.testing.assert_allclose(
        np.asarray(out), np.asarray(x) * lam + np.asarray(x)[::-1] * (1 - lam), rtol=1e-6, atol=1e-6
    )
    # timm Mixup (mode='batch') with the same lam: NCHW there, NHWC here
    m = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=NUM_CLASSES)
    m._params_per_batch = lambda: (lam, False)
    tx = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy())
    rx, rt = m(tx, torch.tensor(np.asarray(y)))
    np.testing.assert_allclose(np.asarray(out), rx.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(t), rt.numpy(), rtol=1e-6, atol=1e-7)


def test_cutmix_box_matches_timm(monkeypatch):
    """Same lam and centre -> same box and corrected lam as timm rand_bbox / cutmix_bbox_and_lam,
    and the same mixed batch and targets as timm Mixup."""
    import torch
    from timm.data import mixup as tm

    b, h, w = 4, 9, 7
    x = jax.random.normal(jax.random.PRNGKey(2), (b, h, w, 3))
    y = jnp.array([3, 1, 4, 1])
    bbox = jax.jit(lambda lam, cy, cx: jnp.stack(mixup.cutmix_box(lam, cy, cx, h, w)).astype(jnp.int32))
    apply = jax.jit(lambda x, y, p: mixup.apply_mix(x, y, p, NUM_CLASSES, 0.1))
    for lam in (0.05, 0.3, 0.5, 0.77, 0.99):
        for cy, cx in ((0, 0), (4, 3), (8, 6), (2, 5)):
            centres = iter([cy, cx])
            monkeypatch.setattr(tm.np.random, "randint", lambda lo, hi, size=None: next(centres))  # noqa: B023 - used in this iteration
            (ryl, ryh, rxl, rxh), rlam = tm.cutmix_bbox_and_lam((b, 3, h, w), lam, correct_lam=True)
            box = bbox(jnp.float32(lam), cy, cx)
            assert tuple(int(v) for v in box) == (ryl, ryh, rxl, rxh)
            area = (box[1] - box[0]) * (box[3] - box[2])
            p = mixup.MixParams(lam=1.0 - area / (h * w), use_cutmix=jnp.asarray(True), box=box)
            out, t = apply(x, y, p)

            m = tm.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=NUM_CLASSES)
            m._params_per_batch = lambda: (lam, True)  # noqa: B023 - used in this iteration
            centres = iter([cy, cx])
            rx, rt = m(torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy()), torch.tensor(np.asarray(y)))
            np.testing.assert_array_equal(np.asarray(out), rx.numpy().transpose(0, 2, 3, 1))
            np.testing.assert_allclose(np.asarray(t), rt.numpy(), rtol=1e-6, atol=1e-7)
            assert float(p.lam) == pytest.approx(rlam, abs=1e-6)


def test_uint8_mixup_matches_fast_collate():
    """Integer images: FastCollateMixup's float32 mix + rint (what the official prefetcher path does)."""
    from timm.data.mixup import FastCollateMixup

    rng = np.random.RandomState(0)
    imgs = rng.randint(0, 256, size=(4, 3, 6, 5)).astype(np.uint8)  # CHW per sample, as timm
    labels = np.array([2, 5, 7, 1])
    lam = 0.6180339
    fc = FastCollateMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=NUM_CLASSES)
    fc._params_per_batch = lambda: (lam, False)
    rout, rt = fc([(imgs[i], int(labels[i])) for i in range(4)])
    p = mixup.MixParams(lam=jnp.float32(lam), use_cutmix=jnp.asarray(False), box=jnp.zeros(4, jnp.int32))
    out, t = mixup.apply_mix(
        jnp.asarray(imgs.transpose(0, 2, 3, 1)), jnp.asarray(labels), p, NUM_CLASSES, 0.1
    )
    assert out.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(out), rout.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(t), rt.numpy(), rtol=1e-6, atol=1e-7)


def test_distribution_both_modes_and_prob():
    from timm.data.mixup import cutmix_bbox_and_lam

    x, y = id_images(), distinct_labels()
    outs, ts = mix_many(keys(seed=2), x, y)
    outs, xs = np.asarray(outs), np.asarray(x)
    off, on = 0.1 / NUM_CLASSES, 0.9 + 0.1 / NUM_CLASSES
    lam = (np.asarray(ts)[:, 0, int(y[0])] - off) / (on - off)  # image 0's lam in every batch
    # cutmix batches hold only original / partner values; mixup ones (0 < lam < 1) blend them
    cut = np.all((outs[:, 0] == xs[0]) | (outs[:, 0] == xs[-1]), axis=(1, 2, 3))
    mixed = ~cut
    assert 0.45 < cut.mean() < 0.55
    assert np.all((lam >= -1e-6) & (lam <= 1 + 1e-6))
    # timm's own numpy sampler as the Monte Carlo reference for both modes (same H, W)
    rs = np.random.RandomState(0)
    np.random.seed(0)
    ref_mix = rs.beta(0.8, 0.8, size=4000)
    ref_cut = np.array([cutmix_bbox_and_lam((1, 3, H, W), rs.beta(1.0, 1.0))[1] for _ in range(4000)])
    ends = lambda v: np.mean((v < 0.1) | (v > 0.9))
    for ours, ref in ((lam[mixed], ref_mix), (lam[cut], ref_cut)):
        assert abs(ours.mean() - ref.mean()) < 0.03  # 0.5 mixup; cutmix > 0.5 (box clipped)
        assert abs(ends(ours) - ends(ref)) < 0.04  # Beta(0.8, 0.8) is U-shaped
    # prob=0: never mixed, targets are the smoothed labels (same compiled function, traced prob)
    xr = jax.random.normal(jax.random.PRNGKey(3), (B, H, W, 3))
    out, t = mix_many(keys(), xr, y, prob=0.0)
    np.testing.assert_array_equal(np.asarray(out[:4]), np.broadcast_to(np.asarray(xr), (4, B, H, W, 3)))
    np.testing.assert_allclose(np.asarray(t[0]), np.asarray(mixup.smooth_labels(y, NUM_CLASSES, 0.1)))
    # switch_prob=0: mixup only, equal to the formula with the lam read off the targets
    out, t = mix_many(keys(seed=9), x, y, switch_prob=0.0)
    lam0 = lam_from_targets(t[0], y)[0]
    np.testing.assert_allclose(np.asarray(out[0]), xs * lam0 + xs[::-1] * (1 - lam0), rtol=1e-5)


def test_jit_and_groups():
    x, y = id_images(), distinct_labels()
    out, t = mix_many(keys(), x, y)  # jax.jit over the public function (vmapped)
    assert out.shape == (N_KEYS,) + x.shape and out.dtype == x.dtype and t.shape == (N_KEYS, B, NUM_CLASSES)
    # two groups: each half is mixed only within itself, with its own lam
    outs, ts = mix_many(keys(seed=4), x, y, num_groups=2)
    lams = []
    for o, t in zip(np.asarray(outs[:10]), np.asarray(ts[:10])):
        assert o[:4].min() >= 1 - 1e-5 and o[:4].max() <= 4 + 1e-5
        assert o[4:].min() >= 5 - 1e-5 and o[4:].max() <= 8 + 1e-5
        lam = lam_from_targets(t, y)
        assert np.allclose(lam[:4], lam[0], atol=1e-6) and np.allclose(lam[4:], lam[4], atol=1e-6)
        lams.append((lam[0], lam[4]))
    assert any(abs(a - b) > 1e-3 for a, b in lams)


# ------------------------------------------------------------------------------------------------
# EMA
# ------------------------------------------------------------------------------------------------


def test_ema_matches_timm_model_ema_v2():
    import torch
    from timm.utils import ModelEmaV2

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    mema = ModelEmaV2(net, decay=0.9998)
    sd = lambda m: {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
    e = jax.tree_util.tree_map(jnp.asarray, sd(net))
    upd = jax.jit(ema.ema_update, static_argnums=2)
    for _ in range(5):
        with torch.no_grad():
            for v in net.state_dict().values():
                if v.is_floating_point():
                    v.add_(torch.randn_like(v))
                else:
                    v.add_(1)  # num_batches_tracked
        mema.update(net)
        e = upd(e, jax.tree_util.tree_map(jnp.asarray, sd(net)), 0.9998)
    ref = sd(mema.module)
    for k in ref:
        np.testing.assert_allclose(np.asarray(e[k]), ref[k], rtol=1e-6, atol=1e-7, err_msg=k)
        assert np.asarray(e[k]).dtype.kind == ref[k].dtype.kind  # int64 -> int32 without x64
    # traced decay works as well
    e2 = jax.jit(ema.ema_update)(e, e, jnp.float32(0.5))
    np.testing.assert_allclose(np.asarray(e2["0.weight"]), np.asarray(e["0.weight"]), rtol=1e-6)
