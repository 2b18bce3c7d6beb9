"""LAMB / AdamW / grad clipping / lr schedule against timm and the official MambaVision scheduler.

References are built the way the official `train.py` builds them: `create_optimizer_v2(model,
'lamb', ...)` (two timm param groups), `clip_grad_norm_(..., 5.0)` before `optimizer.step()`, and
the official `scheduler_factory.create_scheduler(args, optimizer)` driven by
`step_update(epoch * n_iter + batch_idx + 1)` before each step.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
import timm.optim as timm_optim  # noqa: E402
import torch  # noqa: E402

from mambavision_jax.train import optim, schedule  # noqa: E402

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

# name -> (jax shape, torch layout). Names as the official model / our NNX paths would give them.
SPECS = {
    "levels.0.blocks.0.conv1.kernel": ((3, 3, 4, 6), "hwio"),  # torch conv1.weight (O,I,H,W)
    "levels.0.blocks.0.norm1.scale": ((6,), "same"),
    "levels.0.blocks.0.norm1.bias": ((6,), "same"),
    "levels.2.blocks.0.mixer.A_log": ((5, 4), "same"),  # 2-D: decayed
    "levels.2.blocks.0.mixer.D": ((5,), "same"),  # 1-D: not decayed
    "levels.2.blocks.0.mlp.fc1.kernel": ((6, 7), "linear"),  # torch fc1.weight (out, in)
    "levels.2.blocks.0.mlp.fc1.bias": ((7,), "same"),
    "levels.2.blocks.0.gamma_1": ((6,), "same"),
    "head.kernel": ((7, 3), "linear"),  # zero-init: ||w|| = 0 at step 1
    "frozen.kernel": ((2, 2), "linear"),  # zero and never a gradient: ||u|| = 0
}


def to_torch_layout(name, x):
    layout = SPECS[name][1]
    x = np.asarray(x)
    if layout == "hwio":
        return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    if layout == "linear":
        return np.ascontiguousarray(x.T)
    return x


def nested(flat):
    """{'a.b.0.c': x} -> {'a': {'b': {'0': {'c': x}}}} (our params are nested pytrees)."""
    out = {}
    for k, v in flat.items():
        d = out
        parts = k.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out


def flat(tree):
    return {optim.param_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


class TorchParams(torch.nn.Module):
    """A module whose named_parameters() are exactly SPECS (dots in names via nested modules)."""

    def __init__(self, init):
        super().__init__()
        self._names = []
        for name, value in init.items():
            mod = self
            parts = name.split(".")
            for p in parts[:-1]:
                if not hasattr(mod, p):
                    mod.add_module(p, torch.nn.Module())
                mod = getattr(mod, p)
            mod.register_parameter(parts[-1], torch.nn.Parameter(torch.tensor(to_torch_layout(name, value))))
            self._names.append(name)

    def by_name(self):
        return dict(self.named_parameters())


def initial_params(seed=0):
    rng = np.random.RandomState(seed)
    init = {}
    for name, (shape, _) in SPECS.items():
        if name in ("head.kernel", "frozen.kernel"):
            init[name] = np.zeros(shape, np.float32)
        else:
            init[name] = (rng.randn(*shape) * 0.5 + 0.1).astype(np.float32)
    return init


def synthetic_grads(step, params_flat):
    """Deterministic gradients of a quadratic plus noise, large on some steps so both clips act."""
    rng = np.random.RandomState(1000 + step)
    scale = 20.0 if step % 4 == 1 else 0.3  # 20: global norm >> 5 (clip) and >> 1 (LAMB clip)
    grads = {}
    for name, (shape, _) in SPECS.items():
        if name == "frozen.kernel":
            grads[name] = np.zeros(shape, np.float32)
            continue
        noise = rng.randn(*shape).astype(np.float32) * scale
        grads[name] = (0.5 * params_flat[name] + noise).astype(np.float32)
    return grads


def official_scheduler_module():
    """Load mambavision/scheduler/ (the official copy of timm's schedulers) without importing the
    `mambavision` package itself (its __init__ imports the CUDA-only model)."""
    spec = importlib.util.find_spec("mambavision")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the official mambavision package is missing: install it with `bash scripts/test.sh`"
        )
    root = pathlib.Path(list(spec.submodule_search_locations)[0]) / "scheduler"
    name = "_official_mambavision_scheduler"
    if name in sys.modules:
        return sys.modules[name]
    s = importlib.util.spec_from_file_location(
        name, root / "__init__.py", submodule_search_locations=[str(root)]
    )
    mod = importlib.util.module_from_spec(s)
    sys.modules[name] = mod
    s.loader.exec_module(mod)
    return mod


def official_args(**kw):
    """The official config's scheduler fields (mambavision_tiny_1k.yaml), overridable."""
    base = dict(
        sched="cosine",
        epochs=310,
        data_len=1281167,
        batch_size=128,
        world_size=32,
        warmup_epochs=20,
        warmup_lr=1e-6,
        min_lr=5e-6,
        cooldown_epochs=10,
        lr_ep=False,
        lr_noise=None,
        lr_noise_pct=0.67,
        lr_noise_std=1.0,
        seed=31,
        lr_cycle_mul=1.0,
        lr_cycle_decay=1.0,
        lr_cycle_limit=1,
        lr_k_decay=1.0,
        decay_rate=0.1,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def make_config(
    name="lamb",
    lr=0.05,
    wd=0.05,
    clip_grad=5.0,
    epochs=4,
    warmup_epochs=2,
    cooldown=1,
    warmup_lr=1e-3,
    min_lr=1e-4,
):
    c = ml_collections.ConfigDict()
    c.total_epochs = epochs
    c.optimizer = ml_collections.ConfigDict(
        dict(name=name, lr=lr, weight_decay=wd, betas=(0.9, 0.999), eps=1e-8, clip_grad=clip_grad)
    )
    c.schedule = ml_collections.ConfigDict(
        dict(warmup_epochs=warmup_epochs, warmup_lr=warmup_lr, min_lr=min_lr, cooldown_epochs=cooldown)
    )
    return c


# ------------------------------------------------------------------------------------------------
# weight-decay mask == timm's param groups
# ------------------------------------------------------------------------------------------------


def test_weight_decay_mask_matches_timm_param_groups():
    init = initial_params()
    model = TorchParams(init)
    opt = timm_optim.create_optimizer_v2(model, "lamb", lr=1e-3, weight_decay=0.05)
    ids = {id(p): n for n, p in model.named_parameters()}
    timm_decay = {ids[id(p)]: g["weight_decay"] != 0 for g in opt.param_groups for p in g["params"]}

    mask = flat(optim.weight_decay_mask(nested({k: jnp.asarray(v) for k, v in init.items()})))
    assert {k: bool(v) for k, v in mask.items()} == timm_decay
    assert mask["levels.2.blocks.0.mixer.A_log"] and not mask["levels.2.blocks.0.mixer.D"]
    # no_weight_decay patterns (timm's model.no_weight_decay()) are honoured too
    mask2 = flat(optim.weight_decay_mask(nested(init), no_weight_decay=("*.A_log",)))
    assert not mask2["levels.2.blocks.0.mixer.A_log"]


def test_weight_decay_mask_on_nnx_state():
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(3, 4, rngs=rngs)
            self.norm1 = nnx.LayerNorm(4, rngs=rngs)
            self.A_log = nnx.Param(jnp.ones((4, 2)))
            self.D = nnx.Param(jnp.ones((4,)))

    model = Tiny(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    names = {
        optim.param_name(p): bool(m)
        for p, m in jax.tree_util.tree_flatten_with_path(optim.weight_decay_mask(state))[0]
    }
    assert names == {
        "A_log": True,
        "D": False,
        "fc1.bias": False,
        "fc1.kernel": True,
        "norm1.bias": False,
        "norm1.scale": False,
    }
    # the full optimizer runs through nnx.Optimizer (mask resolved on Variables)
    opt = nnx.Optimizer(model, optim.make_optimizer(make_config(), steps_per_epoch=3), wrt=nnx.Param)
    grads = jax.tree_util.tree_map(jnp.ones_like, nnx.state(model, nnx.Param))
    opt.update(model, grads)
    assert np.all(np.isfinite(np.asarray(model.fc1.kernel[...])))


# ------------------------------------------------------------------------------------------------
# clip + LAMB + schedule vs torch clip_grad_norm_ + timm Lamb + official scheduler, 20 steps
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
def test_lamb_chain_matches_timm(foreach):
    steps_per_epoch, n_steps = 3, 20
    cfg = make_config()  # 4 cosine epochs (12 updates) + cooldown, warmup 2 epochs, lr 0.05
    init = initial_params()

    # --- torch reference, exactly as the official loop does it
    model = TorchParams(init)
    topt = timm_optim.create_optimizer_v2(
        model, "lamb", lr=cfg.optimizer.lr, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8, foreach=foreach
    )
    assert len(topt.param_groups) == 2
    sched_mod = official_scheduler_module()
    args = official_args(
        epochs=cfg.total_epochs,
        data_len=steps_per_epoch * 8,
        batch_size=8,
        world_size=1,
        warmup_epochs=2,
        warmup_lr=1e-3,
        min_lr=1e-4,
        cooldown_epochs=1,
    )
    tsched, num_epochs = sched_mod.create_scheduler(args, topt)
    assert num_epochs == schedule.num_train_epochs(cfg.total_epochs, 1) == 5

    # --- ours
    tx = optim.make_optimizer(cfg, steps_per_epoch)
    params = nested({k: jnp.asarray(v) for k, v in init.items()})
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    tparams = model.by_name()
    max_diff, max_gnorm = 0.0, 0.0
    for s in range(n_steps):
        epoch, batch_idx = divmod(s, steps_per_epoch)
        ours_flat = flat(params)
        grads = synthetic_grads(s, ours_flat)
        max_gnorm = max(
            max_gnorm, float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values())))
        )
        # torch: grads from torch's own params (same formula) so errors can propagate
        tflat = {n: p.detach().numpy() for n, p in tparams.items()}
        tgrads = synthetic_grads(s, {n: _from_torch_layout(n, v) for n, v in tflat.items()})
        tsched.step_update(num_updates=epoch * steps_per_epoch + batch_idx + 1)
        for n, p in tparams.items():
            p.grad = torch.tensor(to_torch_layout(n, tgrads[n]))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        topt.step()

        params, state = step(params, state, nested({k: jnp.asarray(v) for k, v in grads.items()}))
        ours_flat = flat(params)
        for n, p in tparams.items():
            ref = p.detach().numpy()
            got = to_torch_layout(n, ours_flat[n])
            np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-6, err_msg=f"step {s} {n}")
            max_diff = max(max_diff, float(np.max(np.abs(got - ref))))
    # the untouched, zero, decayed parameter stays exactly zero (trust ratio 1, update 0)
    assert np.all(ours_flat["frozen.kernel"] == 0)
    assert max_gnorm > 5.0  # the 5.0 clip (and Lamb's 1.0 clip) really acted
    print(f"max |ours - timm| over {n_steps} steps (foreach={foreach}): {max_diff:.3g}")


def _from_torch_layout(name, x):
    layout = SPECS[name][1]
    if layout == "hwio":
        return np.ascontiguousarray(x.transpose(2, 3, 1, 0))
    if layout == "linear":
        return np.ascontiguousarray(x.T)
    return x


@pytest.mark.parametrize(
    "kw", [dict(always_adapt=True), dict(trust_clip=True), dict(grad_averaging=False, max_grad_norm=None)]
)
def test_lamb_options_match_timm(kw):
    """timm Lamb options (single group, no schedule) on the same toy problem, 8 steps."""
    init = initial_params(seed=3)
    model = TorchParams(init)
    mask_flat = {n: bool(v) for n, v in flat(optim.weight_decay_mask(nested(init))).items()}
    groups = [
        dict(params=[p for n, p in model.named_parameters() if not mask_flat[n]], weight_decay=0.0),
        dict(params=[p for n, p in model.named_parameters() if mask_flat[n]], weight_decay=0.1),
    ]
    topt = timm_optim.Lamb(groups, lr=0.02, eps=1e-8, foreach=False, **kw)
    tx = optim.lamb(0.02, weight_decay=0.1, mask=optim.weight_decay_mask, **kw)
    params = nested({k: jnp.asarray(v) for k, v in init.items()})
    state = tx.init(params)
    update = jax.jit(tx.update)
    tparams = model.by_name()
    max_diff = 0.0
    for s in range(8):
        grads = synthetic_grads(s, flat(params))
        for n, p in tparams.items():
            p.grad = torch.tensor(to_torch_layout(n, grads[n]))
        topt.step()
        upd, state = update(nested({k: jnp.asarray(v) for k, v in grads.items()}), state, params)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, upd)
        ours = flat(params)
        for n, p in tparams.items():
            np.testing.assert_allclose(
                to_torch_layout(n, ours[n]), p.detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=f"step {s} {n}"
            )
            max_diff = max(max_diff, float(np.abs(to_torch_layout(n, ours[n]) - p.detach().numpy()).max()))
        # keep the torch grads identical to ours (derived from our params) for the next step
        for n, p in tparams.items():
            p.data = torch.tensor(to_torch_layout(n, ours[n]))
    print(f"max |ours - timm Lamb| per step {kw}: {max_diff:.3g}")


def test_adamw_matches_torch():
    steps_per_epoch = 3
    cfg = make_config(name="adamw", lr=0.01, clip_grad=None)
    init = initial_params(seed=5)
    model = TorchParams(init)
    topt = timm_optim.create_optimizer_v2(
        model, "adamw", lr=0.01, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8, foreach=False
    )
    assert isinstance(topt, torch.optim.AdamW) and len(topt.param_groups) == 2
    sched_mod = official_scheduler_module()
    tsched, _ = sched_mod.create_scheduler(
        official_args(
            epochs=cfg.total_epochs,
            data_len=steps_per_epoch * 8,
            batch_size=8,
            world_size=1,
            warmup_epochs=2,
            warmup_lr=1e-3,
            min_lr=1e-4,
            cooldown_epochs=1,
        ),
        topt,
    )
    tx = optim.make_optimizer(cfg, steps_per_epoch)
    params = nested({k: jnp.asarray(v) for k, v in init.items()})
    state = tx.init(params)
    update = jax.jit(tx.update)
    tparams = model.by_name()
    max_diff = 0.0
    for s in range(10):
        grads = synthetic_grads(s, flat(params))
        tsched.step_update(num_updates=s + 1)
        for n, p in tparams.items():
            p.grad = torch.tensor(to_torch_layout(n, grads[n]))
        topt.step()
        upd, state = update(nested({k: jnp.asarray(v) for k, v in grads.items()}), state, params)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, upd)
        ours = flat(params)
        for n, p in tparams.items():
            np.testing.assert_allclose(
                to_torch_layout(n, ours[n]), p.detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=f"step {s} {n}"
            )
            max_diff = max(max_diff, float(np.abs(to_torch_layout(n, ours[n]) - p.detach().numpy()).max()))
            p.data = torch.tensor(to_torch_layout(n, ours[n]))
    print(f"max |ours - torch AdamW| per step: {max_diff:.3g}")


def test_clip_grad_norm_matches_torch():
    rng = np.random.RandomState(0)
    g = {"a": rng.randn(3, 4).astype(np.float32) * 10, "b": rng.randn(5).astype(np.float32)}
    for max_norm in (0.5, 5.0, 1e3):
        ts = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
        ts[0].grad, ts[1].grad = torch.tensor(g["a"]), torch.tensor(g["b"])
        torch.nn.utils.clip_grad_norm_(ts, max_norm)
        out, _ = optim.clip_grad_norm(max_norm).update(jax.tree_util.tree_map(jnp.asarray, g), None)
        np.testing.assert_allclose(np.asarray(out["a"]), ts[0].grad.numpy(), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(out["b"]), ts[1].grad.numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# schedule
# ------------------------------------------------------------------------------------------------


def _drive_official(tsched, topt, n_epochs, n_iter):
    """The official train loop's scheduler calls; returns the lr used by every optimizer step."""
    lrs = []
    for epoch in range(n_epochs):
        for batch_idx in range(n_iter):
            tsched.step_update(num_updates=epoch * n_iter + batch_idx + 1)
            lrs.append([g["lr"] for g in topt.param_groups])
    return np.asarray(lrs)


@pytest.mark.parametrize("which", ["official", "timm"])
def test_schedule_matches_scheduler_every_step(which):
    n_iter, epochs, cooldown, warmup = 3, 10, 2, 3
    lr, warmup_lr, min_lr = 5e-3, 1e-6, 5e-6
    topt = torch.optim.SGD(
        [
            torch.nn.Parameter(torch.zeros(1)),
        ],
        lr=lr,
    )
    if which == "official":
        tsched, n_epochs = official_scheduler_module().create_scheduler(
            official_args(
                epochs=epochs,
                data_len=n_iter * 4,
                batch_size=4,
                world_size=1,
                warmup_epochs=warmup,
                cooldown_epochs=cooldown,
            ),
            topt,
        )
        assert n_epochs == epochs + cooldown
    else:
        from timm.scheduler import CosineLRScheduler

        tsched = CosineLRScheduler(
            topt,
            t_initial=epochs * n_iter,
            lr_min=min_lr,
            warmup_lr_init=warmup_lr,
            warmup_t=warmup * n_iter,
            warmup_prefix=False,
            cycle_limit=1,
            t_in_epochs=False,
        )
        n_epochs = epochs + cooldown
    # before any step_update the group holds warmup_lr (scheduler __init__), never used for a step
    assert topt.param_groups[0]["lr"] == pytest.approx(warmup_lr)
    ref = _drive_official(tsched, topt, n_epochs, n_iter)[:, 0]
    sched = schedule.cosine_schedule(lr, n_iter, epochs, warmup, warmup_lr, min_lr)
    ours = np.asarray(jax.jit(jax.vmap(sched))(jnp.arange(len(ref))))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-12)
    # structure: first update uses _get_lr(1); cooldown (and the last cosine update) at min_lr
    assert ours[0] == pytest.approx(warmup_lr + (lr - warmup_lr) / (warmup * n_iter), rel=1e-6)
    assert np.all(ours[epochs * n_iter - 1 :] == np.float32(min_lr))
    print(
        f"schedule vs {which}: max abs {np.max(np.abs(ours - ref)):.3g}, "
        f"max rel {np.max(np.abs(ours - ref) / ref):.3g}"
    )


def test_schedule_full_official_recipe():
    """The real recipe (312 updates/epoch, 310 + 10 epochs, warmup 20) at 2000 sampled steps."""
    topt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-3)
    args = official_args(lr=5e-3)
    n_iter = args.data_len // (args.batch_size * args.world_size)
    tsched, n_epochs = official_scheduler_module().create_scheduler(args, topt)
    assert (n_iter, n_epochs) == (312, 320)
    cfg = make_config(lr=5e-3, epochs=310, warmup_epochs=20, cooldown=10, warmup_lr=1e-6, min_lr=5e-6)
    sched = schedule.make_schedule(cfg, n_iter)
    steps = np.unique(
        np.concatenate(
            [
                np.linspace(0, n_epochs * n_iter - 1, 1990).astype(int),
                [
                    0,
                    1,
                    20 * n_iter - 2,
                    20 * n_iter - 1,
                    20 * n_iter,
                    310 * n_iter - 2,
                    310 * n_iter - 1,
                    310 * n_iter,
                ],
            ]
        )
    )
    ref = []
    for s in steps:
        tsched.step_update(num_updates=int(s) + 1)
        ref.append(topt.param_groups[0]["lr"])
    ours = np.asarray(jax.jit(jax.vmap(sched))(jnp.asarray(steps)))
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=2e-6, atol=1e-12)
    ref = np.asarray(ref)
    print(
        f"full recipe schedule: max abs {np.max(np.abs(ours - ref)):.3g}, "
        f"max rel {np.max(np.abs(ours - ref) / ref):.3g}"
    )


def test_schedule_cycles_match_official():
    topt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    sched_mod = official_scheduler_module()
    tsched = sched_mod.CosineLRScheduler(
        topt,
        t_initial=7,
        lr_min=1e-4,
        warmup_t=3,
        warmup_lr_init=1e-5,
        cycle_decay=0.5,
        cycle_limit=3,
        t_in_epochs=False,
        k_decay=1.0,
    )
    ref = []
    for s in range(30):
        tsched.step_update(num_updates=s + 1)
        ref.append(topt.param_groups[0]["lr"])
    ours = schedule.cosine_schedule(1e-2, 1, 7, 3, 1e-5, 1e-4, cycle_decay=0.5, cycle_limit=3)
    np.testing.assert_allclose(np.asarray(jax.vmap(ours)(jnp.arange(30))), ref, rtol=1e-6)


@pytest.mark.slow
def test_weight_decay_mask_on_real_model_matches_timm_groups():
    """MambaVision-T: our mask on the NNX params vs timm's groups on the official torch model
    (tensor and element counts per group; 127 / 64,744 no-decay, 92 / 31,729,504 decayed)."""
    from flax import nnx

    import mambavision_jax as mvj

    from official import build_official

    tm = build_official("mamba_vision_T", randomize=False)
    topt = timm_optim.create_optimizer_v2(tm, "lamb", lr=5e-3, weight_decay=0.05)
    ref = {
        g["weight_decay"] != 0: (len(g["params"]), sum(p.numel() for p in g["params"]))
        for g in topt.param_groups
    }
    abstract = nnx.eval_shape(lambda: mvj.create_model("mamba_vision_T", rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    leaves = jax.tree_util.tree_leaves(params)
    mask = jax.tree_util.tree_leaves(optim.weight_decay_mask(params))
    ours = {
        flag: (
            sum(m == flag for m in mask),
            sum(int(np.prod(l.shape)) for l, m in zip(leaves, mask) if m == flag),
        )
        for flag in (False, True)
    }
    assert ours == ref
