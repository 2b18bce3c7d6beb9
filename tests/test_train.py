"""Training: sharding equivalence, multi-process, kill/resume, configs and bad input."""

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_run import command_stderr
from train_runs import run_losses, run_processes, train_cmd, train_env

from mambavision_jax.train import sharding as shd
from mambavision_jax.train.loop import NonFiniteLossError, check_finite, report_train_metrics
from mambavision_jax.train.metrics import Throughput
from mambavision_jax.train.optim import make_optimizer
from mambavision_jax.train.schedule import make_schedule
from mambavision_jax.train.state import create_train_state, graphdefs
from mambavision_jax.train.steps import make_train_step

from small_train_config import get_config as small_config
from small_train_config import load_repo_config as _load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_files_are_valid(name):
    from mambavision_jax.train.config import validate

    c = _load_config(name)
    validate(c)
    with pytest.raises(AttributeError):
        c.not_a_field  # noqa: B018


def test_official_recipe_values():
    t, b, l = _load_config("tiny"), _load_config("base"), _load_config("large")
    assert (t.batch_size, t.optimizer.name, t.optimizer.lr, t.optimizer.weight_decay) == (
        4096,
        "lamb",
        5e-3,
        0.05,
    )
    assert (t.schedule.warmup_epochs, t.schedule.min_lr, t.schedule.cooldown_epochs, t.ema.decay) == (
        20,
        5e-6,
        10,
        0.9998,
    )
    assert (t.mesa.weight, b.mesa.weight, b.mesa.start_ratio, l.mesa.weight) == (0.5, 1.0, 0.3, 6.0)
    assert (b.schedule.warmup_epochs, b.optimizer.weight_decay, l.optimizer.weight_decay) == (35, 0.075, 0.12)
    assert t.data.auto_augment == "rand-m9-mstd0.5-inc1" and t.data.re_prob == 0.25


def _run_steps(config, mesh, batches, n_classes=10):
    steps_per_epoch = 4
    schedule = make_schedule(config, steps_per_epoch)
    tx = make_optimizer(config, steps_per_epoch, schedule=schedule)
    train_gd, eval_gd = graphdefs(config, n_classes, 1)
    state, shardings = create_train_state(config, n_classes, 1, tx, mesh)
    step = jax.jit(
        make_train_step(config, train_gd, eval_gd, tx, schedule, n_classes, steps_per_epoch, 1),
        in_shardings=(shardings, shd.batch_sharding(mesh)),
        out_shardings=(shardings, shd.replicated(mesh)),
    )
    losses = []
    for b in batches:
        state, m = step(state, shd.global_batch(b, mesh))
        losses.append(float(m["loss"]))
    return state, losses, shardings


# LAMB (the recipe's) by default: it adds to AdamW the trust-ratio norms reduced over sharded params.
@pytest.mark.parametrize("optimizer", [pytest.param("adamw", marks=pytest.mark.slow), "lamb"])
def test_eight_devices_data_fsdp_equal_one_device(tmp_path, optimizer):
    """Data + FSDP sharding changes no number; for LAMB this also covers the per-parameter trust
    ratio, whose norms are reduced over FSDP-sharded parameters."""
    assert jax.device_count() >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    c = small_config()
    c.mesh.min_size_to_shard_mb = 0.0  # shard every parameter that divides, to test FSDP for real
    # The conv biases in front of BatchNorm have analytically zero gradients, so an Adam-type
    # update (m / (sqrt(v) + eps)) turns their float32 roundoff into lr-sized noise that differs
    # between device layouts. A large eps damps that noise and leaves the real updates intact.
    c.optimizer.name, c.optimizer.eps = optimizer, 1e-3
    rs = np.random.RandomState(0)
    batches = [
        {"image": rs.randn(16, 32, 32, 3).astype(np.float32), "label": rs.randint(0, 10, 16).astype(np.int32)}
        for _ in range(3)
    ]
    one, l1, _ = _run_steps(c, shd.make_mesh(1, 1, jax.devices()[:1]), batches)
    eight, l8, shardings = _run_steps(c, shd.make_mesh(4, 2), batches)
    specs = [s.spec for s in jax.tree.leaves(shardings.params)]
    assert any("fsdp" in str(s) for s in specs), "no parameter was FSDP-sharded"
    np.testing.assert_allclose(l8, l1, rtol=2e-5)
    for a, b in zip(jax.tree.leaves(eight.params), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(eight.ema_batch_stats), jax.tree.leaves(one.ema_batch_stats)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)

    # A checkpoint written from the 8-device FSDP layout restores onto 1 device.
    from mambavision_jax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path)
    ckpt.save(3, eight)
    ckpt.wait()
    one_sharding = jax.tree.map(lambda _: shd.replicated(shd.make_mesh(1, 1, jax.devices()[:1])), one)
    restored, data_state = ckpt.restore(3, one, one_sharding)
    ckpt.close()
    assert data_state is None and int(restored.step) == 3
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(eight)):
        assert a.sharding.num_devices == 1
        np.testing.assert_array_equal(
            np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a),
            np.asarray(jax.random.key_data(b) if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key) else b),
        )


def test_nan_loss_stops_and_names_the_step(tmp_path):
    class FakeCkpt:
        def latest_step(self):
            return 40

    rows = [
        {"loss": jnp.float32(1.0), "lr": jnp.float32(1e-3), "grad_norm": jnp.float32(1.0)},
        {"loss": jnp.float32(np.nan), "lr": jnp.float32(1e-3), "grad_norm": jnp.float32(1.0)},
    ]
    with pytest.raises(NonFiniteLossError, match=r"nan at step 50.*checkpoint \(step 40\) is kept"):
        report_train_metrics(rows, 50, 10, Throughput(0, 100, 8), _NullWriter(), FakeCkpt())


def test_non_finite_weights_stop_before_a_save_and_say_there_is_no_checkpoint():
    class NoCkpt:
        def latest_step(self):
            return None

    rows = [
        {"loss": jnp.float32(1.0), "finite": jnp.bool_(True)},
        {"loss": jnp.float32(1.5), "finite": jnp.bool_(False)},
    ]
    with pytest.raises(
        NonFiniteLossError,
        match=r"weights stopped being finite \(loss 1.5\) at step 12; "
        r"stopping. No checkpoint had been written yet",
    ):
        check_finite(rows, 12, NoCkpt())


def _all_finite_checkpoints(directory):
    """Every orbax step folder under `directory`, restored: (step, all parameters finite)."""
    import orbax.checkpoint as ocp

    out = []
    for d in sorted(Path(directory).glob("[0-9]*")):
        tree = ocp.StandardCheckpointer().restore(d / "default")
        out.append(
            (
                int(d.name),
                all(
                    bool(np.all(np.isfinite(np.asarray(x))))
                    for x in jax.tree.leaves((tree["params"], tree["ema_params"]))
                ),
            )
        )
    return out


@pytest.mark.parametrize("case", ["checkpoint_every_step", "eval_without_log"])
def test_exploding_run_never_saves_a_non_finite_state(tmp_path, digits_dir, case):
    """lr=1e10 blows the weights up within a few steps: the run stops naming a real step (or
    saying there is no checkpoint), and checkpoints/ and best/ hold only finite weights."""
    from mambavision_jax.train import train_and_evaluate

    c = small_config()
    c.data.dir, c.total_steps, c.optimizer.lr = digits_dir, 6, 1e10
    if case == "checkpoint_every_step":
        c.checkpoint_every_steps, c.log_every_steps, c.eval_every_steps = 1, 1, 100
    else:
        c.checkpoint_every_steps, c.log_every_steps, c.eval_every_steps = 100, 100, 2
    with pytest.raises(NonFiniteLossError) as err:
        train_and_evaluate(c, str(tmp_path))
    msg = str(err.value)
    kept = re.search(r"The last good checkpoint \(step (\d+)\) is kept", msg)
    saved = _all_finite_checkpoints(tmp_path / "checkpoints")
    assert all(ok for _, ok in saved), saved
    assert all(ok for _, ok in _all_finite_checkpoints(tmp_path / "best"))
    if kept:
        assert int(kept.group(1)) == max(s for s, _ in saved)
    else:
        assert "No checkpoint had been written yet" in msg and not saved, msg
    if case == "checkpoint_every_step":
        assert kept, msg  # step 1 is finite at lr 1e10 (warmup) and is kept


class _NullWriter:
    total_steps = 100

    def write(self, *a):
        pass

    def log(self, *a):
        pass


# ------------------------------------------------------------------ end-to-end runs (subprocesses)
def test_kill_and_resume_gives_the_same_losses(tmp_path, digits_dir):
    common = [
        f"--config.data.dir={digits_dir}",
        "--config.total_steps=10",
        "--config.checkpoint_every_steps=3",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=100",
    ]
    ref = tmp_path / "ref"
    subprocess.run(train_cmd(ref, *common), check=True, env=train_env(2), capture_output=True, timeout=600)

    # SIGKILL as soon as the run reports step 7 (checkpoint 6 was requested; three steps remain), read
    # from its own stdout: no polling interval for the run to outpace.
    run = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(run, *common),
        env={**train_env(2), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step 7/10 "):
                os.kill(proc.pid, signal.SIGKILL)
                break
        else:
            pytest.fail("the run ended without reporting step 7:\n" + "".join(lines[-30:]))
    finally:
        proc.kill()
        proc.wait()
    assert max(run_losses(run)) < 10, "the run finished before it was killed"

    out = subprocess.run(
        train_cmd(run, *common), check=True, env=train_env(2), capture_output=True, text=True, timeout=600
    )
    # The resumed run starts from the newest checkpoint that was complete at the kill: 6, or 3 when
    # the kill interrupted the asynchronous write of 6.
    resumed_from = int(re.search(r"resumed from \S+ at step (\d+)", out.stdout).group(1))
    assert resumed_from in (3, 6), out.stdout
    ref_losses, losses = run_losses(ref), run_losses(run)
    resumed = [s for s in losses if s > resumed_from]
    assert resumed == list(range(resumed_from + 1, 11))
    for s in resumed:
        assert losses[s] == pytest.approx(ref_losses[s], rel=1e-6), s


def test_two_processes_train_evaluate_and_checkpoint(tmp_path, digits_dir):
    workdir = tmp_path / "mp"
    outs = run_processes(
        lambda flags: train_cmd(
            workdir,
            f"--config.data.dir={digits_dir}",
            "--config.total_steps=4",
            "--config.checkpoint_every_steps=2",
            "--config.eval_every_steps=4",
            "--config.log_every_steps=2",
            *flags,
        )
    )
    shards = [
        json.loads(next(l for l in o.splitlines() if l.startswith("data shard "))[len("data shard ") :])
        for o in outs
    ]
    assert shards[0]["process"] == 0 and shards[1]["process"] == 1
    assert shards[0]["end"] <= shards[1]["start"]  # disjoint example ranges
    assert "4 devices" in outs[0]
    rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    assert {r["kind"] for r in rows} == {"train", "eval"}  # process 0 alone writes
    assert len([r for r in rows if r["kind"] == "eval"]) == 1
    assert (workdir / "checkpoints" / "4").is_dir() and (workdir / "best" / "4").is_dir()
    assert (workdir / "checkpoints" / "data_state" / "4.1.json").is_file()
    # the whole architecture, for readers of the run (the digits have 10 classes)
    arch = json.loads((workdir / "model_config.json").read_text())
    assert arch == dict(
        dim=16,
        in_dim=8,
        depths=[1, 1, 2, 2],
        num_heads=[1, 2, 2, 4],
        window_size=[4, 4, 2, 1],
        mlp_ratio=4.0,
        drop_path_rate=0.1,
        layer_scale=None,
        layer_scale_conv=None,
        in_chans=3,
        num_classes=10,
        name="mamba_vision_T",
    )


def test_unknown_config_field_is_an_error(tmp_path):
    out = subprocess.run(
        train_cmd(tmp_path, "--config.no_such_field=1"),
        env=train_env(1),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "no_such_field" in out.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "--config.optimizer.lrr=1",
            "error: unknown config field config.optimizer.lrr; did you mean config.optimizer.lr?",
        ),
        ("--config.foo=1", "error: unknown config field config.foo; the fields of config are batch_size, "),
        ("--config.batch_size=abc", "error: flag --config.batch_size=abc: invalid literal for int()"),
        ("--config.keep_checkpoints=0", "error: config.keep_checkpoints: must be >= 1, got 0"),
    ],
)
def test_bad_config_override_is_one_line_and_exit_code_2(tmp_path, override, message):
    out = subprocess.run(
        train_cmd(tmp_path / "w", override), env=train_env(1), capture_output=True, text=True, timeout=300
    )
    err = command_stderr(out)
    assert out.returncode == 2 and err.startswith(message), out.stderr
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "w").exists()


def test_batch_not_divisible_by_devices(tmp_path, digits_dir):
    from mambavision_jax.train import train_and_evaluate

    c = small_config()
    c.data.dir = digits_dir
    c.batch_size = 12
    with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the 8 devices"):
        train_and_evaluate(c, str(tmp_path))


def test_init_from_checkpoint_with_a_new_head(tmp_path):
    import mambavision_jax as mvj
    from mambavision_jax.convert import save_checkpoint
    from mambavision_jax.train.loop import init_from_checkpoint

    c = small_config()
    from flax import nnx

    from mambavision_jax.train.state import model_configs

    arch, runtime = model_configs(c, 1000, 1)
    src = mvj.create_model(arch, runtime=runtime, rngs=nnx.Rngs(7))
    save_checkpoint(src, tmp_path / "src")
    c.init_from = str(tmp_path / "src")
    mesh = shd.make_mesh(1, 1, jax.devices()[:1])
    tx = make_optimizer(c, 4)
    state, shardings = create_train_state(c, 10, 1, tx, mesh)
    new = init_from_checkpoint(c, state, shardings, 10, 1, _NullWriter())
    assert new.params["head"]["kernel"].shape == (128, 10)
    np.testing.assert_array_equal(
        np.asarray(new.params["levels"][2]["blocks"][0]["mixer"]["A_log"][...]),
        np.asarray(src.levels[2].blocks[0].mixer.A_log[...]),
    )
    np.testing.assert_array_equal(
        np.asarray(new.ema_params["patch_embed"]["conv_down"][0]["kernel"][...]),
        np.asarray(src.patch_embed.conv_down[0].kernel[...]),
    )
