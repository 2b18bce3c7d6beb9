"""Model-level behaviour: parameter counts, dtypes, train mode, features, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import mambavision_jax as mvj

from helpers import images
from official import build_official, official_module

# The official code (counted again from the official modules below).
PUBLISHED = {"mamba_vision_T": 31_794_248}


def _n_params(model):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", mvj.list_models())
def test_parameter_count_equals_official(name, monkeypatch):
    # Build on the meta device (shapes only: no memory even for L3's 740M); the drop-path
    # schedule calls .item(), so it alone is computed on the CPU.
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    with torch.device("meta"):
        ref = getattr(official_module(), name)(pretrained=False)
    expected = sum(p.numel() for p in ref.parameters())
    ours = _n_params(nnx.eval_shape(lambda: mvj.create_model(name)))
    assert ours == expected == PUBLISHED.get(name, expected)


def test_list_models():
    assert len(mvj.list_models()) == 11
    assert mvj.list_models("*_21k") == [
        "mamba_vision_B_21k",
        "mamba_vision_L_21k",
        "mamba_vision_L2_512_21k",
        "mamba_vision_L3_256_21k",
        "mamba_vision_L3_512_21k",
    ]
    cfg = mvj.pretrained_cfg("mamba_vision_L2_512_21k")
    assert (cfg.input_size, cfg.crop_pct, cfg.crop_mode) == ((3, 512, 512), 0.93, "squash")


@pytest.fixture(scope="module")
def t_pair():
    ref = build_official("mamba_vision_T", seed=5)
    model = mvj.load_torch_checkpoint(_save(ref), "mamba_vision_T")
    return ref, model


def _save(ref):
    import tempfile

    path = tempfile.mkdtemp() + "/t.pth.tar"
    torch.save({"state_dict": ref.state_dict()}, path)
    return path


def test_bfloat16_gives_the_same_top1(t_pair):
    ref, model = t_pair
    x = images(4, 97, 130, seed=2)
    f32 = np.asarray(model(jnp.asarray(x)))
    bf16 = mvj.create_model("mamba_vision_T", dtype=jnp.bfloat16)
    nnx.update(bf16, nnx.state(model, (nnx.Param, nnx.BatchStat)))
    bf16.eval()
    out = bf16(jnp.asarray(x))
    assert out.dtype == jnp.float32  # logits come back in float32
    params = jax.tree.leaves(nnx.state(bf16, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)  # parameters stay float32
    np.testing.assert_array_equal(np.argmax(np.asarray(out), -1), np.argmax(f32, -1))
    assert np.abs(np.asarray(out) - f32).max() / np.abs(f32).max() < 0.05


def test_features_equal_official_stage_outputs(t_pair):
    ref, model = t_pair
    x = images(2, 224, 224, seed=1)
    feats = mvj.models.FeatureExtractor(model)(jnp.asarray(x))
    assert [f.shape for f in feats] == [(2, 56, 56, 80), (2, 28, 28, 160), (2, 14, 14, 320), (2, 7, 7, 640)]
    with torch.no_grad():
        t = ref.patch_embed(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        for level, f in zip(ref.levels, feats):
            # The official level applies its downsample; take the map before it.
            down, level.downsample = level.downsample, None
            t_stage = level(t)
            level.downsample = down
            np.testing.assert_allclose(
                np.asarray(f),
                t_stage.numpy().transpose(0, 2, 3, 1),
                rtol=1e-4,
                atol=1e-4 * float(t_stage.abs().max()),
            )
            t = t_stage if down is None else down(t_stage)


def test_create_model_features_only():
    m = mvj.create_model("mamba_vision_T", features_only=True, out_indices=(1, 3), depths=(1, 1, 2, 1))
    m.eval()
    feats = m(jnp.zeros((1, 96, 64, 3)))
    assert [f.shape for f in feats] == [(1, 12, 8, 160), (1, 3, 2, 640)]
    assert m.channels == (160, 640) and m.reductions == (8, 32)


def test_train_mode_has_finite_gradients_for_every_parameter():
    model = mvj.create_model(
        "mamba_vision_T", depths=(1, 1, 2, 2), num_classes=10, drop_path_rate=0.5, rngs=nnx.Rngs(0)
    )
    model.train()
    x = jnp.asarray(images(4, 64, 48))
    y = jnp.arange(4) % 10

    def loss_fn(m):
        logits = m(x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    assert np.isfinite(float(loss))
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # every parameter receives gradient signal (drop path may zero a few branches in one step,
    # but the A_log / D of the scan and the head must be live)
    assert float(jnp.abs(model.levels[2].blocks[0].mixer.A_log[...]).sum()) > 0
    nonzero = sum(bool(jnp.any(g != 0)) for g in leaves)
    assert nonzero >= 0.9 * len(leaves)


def test_batchnorm_train_mode_matches_torch():
    from mambavision_jax.models.layers import BatchNorm

    x = np.random.RandomState(0).randn(6, 5, 7, 4).astype(np.float32) * 3 + 1
    bn = BatchNorm(4, eps=1e-5, momentum=0.1)
    y = np.asarray(bn(jnp.asarray(x)))
    tbn = torch.nn.BatchNorm2d(4, eps=1e-5, momentum=0.1).train()
    ty = tbn(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, ty, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), tbn.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]), tbn.running_var.numpy(), rtol=1e-5)  # unbiased


def test_batchnorm_groups_use_per_group_statistics():
    from mambavision_jax.models.layers import BatchNorm

    x = np.random.RandomState(1).randn(8, 3, 3, 2).astype(np.float32)
    x[4:] += 10.0
    grouped = np.asarray(BatchNorm(2, num_groups=2)(jnp.asarray(x)))
    halves = [np.asarray(BatchNorm(2)(jnp.asarray(x[i : i + 4]))) for i in (0, 4)]
    np.testing.assert_allclose(grouped, np.concatenate(halves), atol=1e-5)


def test_drop_path_is_random_in_train_and_off_in_eval():
    model = mvj.create_model("mamba_vision_T", depths=(1, 1, 2, 1), drop_path_rate=0.9, rngs=nnx.Rngs(1))
    x = jnp.asarray(images(2, 64, 64))
    model.train()
    a, b = model(x), model(x)
    assert not np.allclose(np.asarray(a), np.asarray(b))
    model.eval()
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model(x)))


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 31, 64, 3), "too small"),
        ((1, 64, 64, 4), "channels"),
        ((1, 3, 64, 64), "channels"),
        ((64, 64, 3), "NHWC"),
    ],
)
def test_bad_input_shapes(shape, match):
    model = mvj.create_model("mamba_vision_T", depths=(1, 1, 2, 1))
    with pytest.raises(ValueError, match=match):
        model(jnp.zeros(shape))


def test_official_init_statistics():
    model = mvj.create_model("mamba_vision_T", rngs=nnx.Rngs(0))
    mixer = model.levels[2].blocks[0].mixer
    np.testing.assert_allclose(np.exp(np.asarray(mixer.A_log[...]))[0], np.arange(1, 9))
    assert float(jnp.abs(mixer.dt_proj.bias[...]).max()) == 0.0  # overwritten by _init_weights
    assert abs(float(jnp.std(model.levels[2].blocks[0].mlp.fc1.kernel[...])) - 0.02) < 1e-3
    conv = model.levels[0].blocks[0].conv1.kernel[...]  # kaiming-uniform bound 1/sqrt(9 * 80)
    assert float(jnp.abs(conv).max()) <= 1 / np.sqrt(9 * 80) + 1e-7
    assert float(jnp.abs(conv).max()) > 0.9 / np.sqrt(9 * 80)


def test_remat_gives_the_same_gradients():
    x = jnp.asarray(images(2, 64, 64))

    def grads(remat):
        model = mvj.create_model(
            "mamba_vision_T",
            depths=(1, 1, 2, 1),
            num_classes=5,
            remat=remat,
            drop_path_rate=0.0,
            rngs=nnx.Rngs(0),
        )
        model.train()
        return nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)

    with_remat, without = jax.tree.leaves(grads(True)), jax.tree.leaves(grads(False))
    # Recomputation reorders float32 sums: equal up to roundoff relative to the largest gradient.
    scale = max(float(np.abs(np.asarray(g)).max()) for g in without)
    for a, b in zip(with_remat, without):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)


def test_attention_implementations_agree():
    from mambavision_jax import ops
    from mambavision_jax.models import mixer

    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 29, 64)), jnp.float32)
    outs = {}
    for impl in ("xla", "bhnd", "auto"):
        attn = mixer.Attention(64, 2, attn_impl=impl, rngs=nnx.Rngs(0))
        outs[impl] = np.asarray(attn(x))
    np.testing.assert_allclose(outs["xla"], outs["bhnd"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outs["auto"], outs["bhnd"])  # auto on a CPU
    with pytest.raises(ValueError, match="unknown attn_impl 'flash'"):
        mixer.Attention(64, 2, attn_impl="flash", rngs=nnx.Rngs(0))
    # What auto picks on a GPU: cuDNN for half-precision heads it supports, XLA otherwise.
    assert ops.resolve_attn_impl("auto", jnp.bfloat16, 32, platform_name="gpu") == "cudnn"
    assert ops.resolve_attn_impl("auto", jnp.bfloat16, 49, platform_name="gpu") == "xla"  # L's heads
    assert ops.resolve_attn_impl("auto", jnp.float32, 32, platform_name="gpu") == "xla"
    assert ops.resolve_attn_impl("auto", jnp.bfloat16, 32, platform_name="tpu") == "xla"
    assert ops.resolve_attn_impl("auto", jnp.bfloat16, 32, platform_name="cpu") == "bhnd"


@pytest.mark.parametrize("conv_impl", ["xla", "matmul_grad"])
def test_train_mode_gradients_equal_official(conv_impl):
    """Backward parity: every parameter's gradient in train mode (BatchNorm batch statistics) against
    torch.autograd through the official model; random weights, reduced depths, an odd input size.
    conv_impl: XLA's own convolution gradients, or the per-tap matmul kernel gradient that the CPU
    uses when YNNPACK computes the convolutions (mambavision_jax/ops/conv.py)."""
    from mambavision_jax.convert import load_state_dict

    arch = dict(depths=[1, 1, 2, 2], drop_path_rate=0.0)
    ref = build_official("mamba_vision_T", seed=3, **arch).train()
    x = images(2, 70, 97, seed=4)
    w = np.random.RandomState(1).randn(2, 1000).astype(np.float32)
    (ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())) * torch.from_numpy(w)).sum().backward()
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}

    model = mvj.create_model("mamba_vision_T", rngs=nnx.Rngs(0), conv_impl=conv_impl, **arch)
    load_state_dict(
        model,
        {k: v.detach().numpy() for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")},
    )
    model.train()
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(x)) * w))(model)
    holder = mvj.create_model("mamba_vision_T", rngs=nnx.Rngs(1), **arch)
    nnx.update(holder, grads)
    ours = mvj.to_torch_state_dict(holder)
    assert set(ref_grads) <= set(ours)
    assert len(ref_grads) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    # Biases right before a train-mode BatchNorm (ConvBlock convs, the last block's fc2) have a
    # zero gradient: the batch mean removes them. Both sides must give rounding noise there.
    scale = float(np.median([np.abs(g).max() for g in ref_grads.values()]))
    zero = {k for k, g in ref_grads.items() if np.abs(g).max() < 1e-5 * scale}
    assert "levels.0.blocks.0.conv1.bias" in zero and len(zero) <= 6, sorted(zero)
    for k in zero:
        assert np.abs(ours[k]).max() < 1e-5 * scale, k
    errs = {
        k: float(np.abs(ours[k] - g).max() / np.abs(g).max()) for k, g in ref_grads.items() if k not in zero
    }
    worst = max(errs, key=errs.get)
    assert errs[worst] < 1e-4, (worst, errs[worst])
