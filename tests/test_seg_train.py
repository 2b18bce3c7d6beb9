"""Segmentation training against the official recipe's own code: the lr schedule against mmengine's
LinearLR + PolyLR, the loss against mmseg's CrossEntropyLoss, the weight-decay groups against
mmengine's paramwise custom_keys on the official segmentor; then a few steps of
`train.py --config configs/seg_demo.py` and `evaluate_seg` on its checkpoint."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from cli_run import command_stderr, run_cli
from official_seg import _install_seg_shims, build_official_segmentor
from train_runs import ROOT, run_processes, train_env

from mambavision_jax.segmentation import train_task


def _mmengine_lrs(base, warm, total, start_factor, power, eta_min, steps):
    """The lr each of `steps` iterations uses under mmengine's LinearLR + PolyLR (stepped after
    each iteration, as mmengine's ParamSchedulerHook)."""
    import torch
    from mmengine.optim.scheduler import LinearLR, PolyLR

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheds = [
        LinearLR(opt, start_factor=start_factor, by_epoch=False, begin=0, end=warm),
        PolyLR(opt, eta_min=eta_min, power=power, begin=warm, end=total, by_epoch=False),
    ]
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        for s in scheds:
            s.step()
    return lrs


@pytest.mark.parametrize(
    "start_factor, power, eta_min",
    [(1e-6, 1.0, 0.0), (0.1, 0.9, 1e-6)],  # the MambaVision configs; mmseg's default poly
)
def test_schedule_matches_mmengine_linear_then_poly(start_factor, power, eta_min):
    base, warm, total = 6e-5, 15, 160
    want = _mmengine_lrs(base, warm, total, start_factor, power, eta_min, total + 5)
    fn = train_task.seg_schedule(base, total, warm, start_factor, power, eta_min)
    got = np.asarray(jax.jit(jax.vmap(fn))(np.arange(total + 5)))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-13)


def test_loss_matches_mmseg_cross_entropy():
    import torch

    _install_seg_shims()
    from mmseg.models.losses import CrossEntropyLoss

    rs = np.random.RandomState(0)
    logits = rs.randn(2, 9, 11, 5).astype(np.float32) * 3
    labels = rs.randint(0, 5, (2, 9, 11))
    labels[rs.rand(2, 9, 11) < 0.3] = 255
    want = CrossEntropyLoss(loss_weight=1.0)(
        torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels), ignore_index=255
    )
    got = train_task.seg_cross_entropy(logits, labels)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def test_weight_decay_groups_match_mmengine_paramwise_custom_keys():
    """mmengine's DefaultOptimWrapperConstructor with the configs' custom_keys {'norm': decay_mult
    0} on the official tiny segmentor, against our mask on our model, parameter by parameter."""
    from flax import nnx
    from mmengine.optim import DefaultOptimWrapperConstructor

    from mambavision_jax.segmentation import create_segmenter
    from mambavision_jax.train.optim import param_name

    official = build_official_segmentor("tiny", randomize=False)
    cfg = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=5e-5, weight_decay=0.01))
    wrapper = DefaultOptimWrapperConstructor(cfg, dict(custom_keys={"norm": dict(decay_mult=0.0)}))(official)
    by_id = {id(p): g["weight_decay"] > 0 for g in wrapper.optimizer.param_groups for p in g["params"]}
    official_decay = {}
    for name, p in official.named_parameters():
        official_decay.setdefault(name.rsplit(".", 1)[0], set()).add(by_id[id(p)])
    model = nnx.eval_shape(lambda: create_segmenter("tiny"))
    params = nnx.state(model, nnx.Param)
    mask = train_task.no_decay_mask(params)
    ours = {}
    for path, decay in jax.tree_util.tree_flatten_with_path(mask)[0]:
        ours.setdefault(param_name(path).rsplit(".", 1)[0], set()).add(bool(decay))
    assert ours == official_decay
    assert {False} in ours.values() and {True} in ours.values()


def _seg_demo_cmd(workdir, data_dir, *extra) -> list[str]:
    """A few steps of the segmentation demo through train.py (a smaller model)."""
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "configs" / "seg_demo.py"),
        "--workdir",
        str(workdir),
        f"--config.data.dir={data_dir}",
        "--config.init_from=",  # from scratch: no classification run to start from here
        "--config.total_steps=4",
        "--config.batch_size=4",
        "--config.seg.warmup_steps=2",
        "--config.eval_every_steps=4",
        "--config.checkpoint_every_steps=4",
        "--config.log_every_steps=2",
        "--config.seg.eval_max_images=6",
        "--config.model.overrides.dim=16",
        "--config.model.overrides.in_dim=8",
        "--config.model.overrides.channels=16",
        "--config.model.overrides.aux_channels=8",
        *extra,
    ]


def _evaluate_seg(workdir, data_dir, out):
    """evaluate_seg (one process, one device) on the run's best checkpoint, first 6 test images."""
    cmd = [sys.executable, "-m", "mambavision_jax.evaluate_seg", "--weights", str(workdir)]
    cmd += ["--tfds", "mv_seg_digits", "--data_dir", str(data_dir), "--max_images", "6"]
    cmd += ["--json", str(out), "--no_progress"]
    proc = subprocess.run(cmd, env=train_env(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _run_rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """The demo's few steps on 2 devices."""
    root = tmp_path_factory.mktemp("seg")
    workdir, data_dir = root / "run", root / "tfds"
    proc = subprocess.run(
        _seg_demo_cmd(workdir, data_dir), env=train_env(2), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, data_dir, proc.stdout


def test_seg_demo_trains_and_evaluate_seg_agrees(seg_run, tmp_path):
    workdir, data_dir, stdout = seg_run
    rows = _run_rows(workdir)
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [2, 4] and all(np.isfinite(r["loss"]) for r in train)
    assert evals and {"mIoU", "mAcc", "aAcc"} <= set(evals[-1])
    assert (workdir / "best").is_dir()
    assert json.loads((workdir / "model_config.json").read_text())["num_classes"] == 11
    result, out = _evaluate_seg(workdir, data_dir, tmp_path / "eval.json")
    # the same weights, images and metric code as the run's own evaluation
    for key in ("mIoU", "mAcc", "aAcc"):
        assert result[key] == pytest.approx(evals[-1][key], abs=1e-9), key
    assert result["n"] == 6 and len(result["per_class"]) == 11
    assert "mIoU" in out and "background" in out


def test_two_processes_train_and_evaluate_the_seg_demo(seg_run, tmp_path):
    """Two processes of 2 devices each (jax.distributed on this host): the evaluation during
    training runs on the 4-device mesh (each image replicated, compiled then aligned across
    processes), process 0 alone writes, and evaluate_seg on one device agrees with it."""
    workdir, data_dir = tmp_path / "mp", seg_run[1]
    outs = run_processes(lambda flags: _seg_demo_cmd(workdir, data_dir, *flags), timeout=900)
    assert "4 devices" in outs[0]
    evals = [r for r in _run_rows(workdir) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4]  # process 0 alone writes
    result, _ = _evaluate_seg(workdir, data_dir, tmp_path / "eval.json")
    for key in ("mIoU", "mAcc", "aAcc"):
        assert result[key] == pytest.approx(evals[0][key], abs=1e-9), key


# configs/seg_demo.py as README runs it (one device, 1,200 steps): the all-background answer scores
# mIoU 6.95 on this test split; the run learns where the digits are, then which digit they are.
DEMO_MIN_MIOU = 40.0


@pytest.mark.slow
def test_seg_demo_learns_the_digits(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "seg_demo.py")]
    cmd += ["--workdir", str(workdir), f"--config.data.dir={tmp_path / 'tfds'}"]
    proc = subprocess.run(cmd, env=train_env(1), capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    miou = [r["mIoU"] for r in rows if r["kind"] == "eval"]
    assert miou[-1] >= DEMO_MIN_MIOU, miou
    assert max(miou[:2]) < 10.0, miou  # the first evaluations are (close to) all background


def test_evaluate_seg_refuses_bad_input_in_one_line(tmp_path):
    """Refused before any weights are read (--weights only has to exist)."""
    from mambavision_jax.data.seg_demo import build_seg_digits

    data_dir = tmp_path / "tfds"
    build_seg_digits(str(data_dir))
    cases = [
        (["--tfds", "scene_parse150"], "instance"),  # TFDS's ADE20K holds instance maps
        (["--tfds", "mv_seg_digits", "--data_dir", str(data_dir), "--split", "nope"], "--split nope"),
        (["--tfds", "mv_seg_digits", "--checkpoint", "newest"], "--checkpoint"),
        (["--folder", tmp_path / "no_images", tmp_path], "does not exist"),
    ]
    for args, message in cases:
        proc = run_cli("mambavision_jax.evaluate_seg", "--weights", tmp_path, *args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]  # after the backends' start-up notices
        assert last.startswith("error: ") and message in last, last


def test_bad_seg_test_mode_is_refused_before_the_workdir(tmp_path):
    out = subprocess.run(
        _seg_demo_cmd(tmp_path / "w", tmp_path / "tfds", "--config.seg.test_mode=slid"),
        env=train_env(1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = command_stderr(out).strip()
    assert out.returncode == 2 and err == "error: config.seg.test_mode: one of whole, slide, got 'slid'", (
        out.stderr
    )
    assert not (tmp_path / "w").exists()


def test_segment_names_the_classes_of_a_runs_data_set(seg_run, tmp_path):
    """`segment --weights RUN` of a run on mv_seg_digits labels its legend with that data set's class
    names (background, 0 ... 9), not with indices."""
    from PIL import Image

    workdir, data_dir, _ = seg_run
    img = tmp_path / "digits.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 96, 3), np.uint8)).save(img)
    proc = run_cli("mambavision_jax.segment", img, "--weights", workdir, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mambavision_jax.data.seg_demo import SEG_DIGITS_CLASSES

    labels = np.asarray(Image.open(tmp_path / "out" / "digits.png"))  # palette PNG: class indices
    counts = np.bincount(labels.ravel(), minlength=len(SEG_DIGITS_CLASSES))
    line = proc.stdout.strip().splitlines()[-1]
    names = [part.rsplit(" ", 1)[0] for part in line.split("(", 1)[1].rstrip(")").split(", ")]
    assert names == [SEG_DIGITS_CLASSES[i] for i in np.argsort(-counts)[:3]], line
