"""export: ONNX (jax2onnx -> onnxruntime) and jax.export artifacts reproduce the JAX logits."""

from __future__ import annotations

import json

import jax
import numpy as np
import onnxruntime as ort
import pytest
from flax import nnx

import mambavision_jax as mvj
from mambavision_jax import export as ex

SIZE = 64
RTOL = 1e-4  # max |onnx - jax| / max |jax|, float32


@pytest.fixture(scope="module")
def model():
    m = mvj.create_model("mamba_vision_T", depths=(1, 1, 2, 1))
    m.eval()
    return m


@pytest.fixture(scope="module")
def images_and_logits(model):
    x = np.random.default_rng(0).standard_normal((3, SIZE, SIZE, 3), dtype=np.float32)
    with jax.default_matmul_precision("highest"):
        ref = np.asarray(nnx.jit(lambda m, x: m(x))(model, x))
    return x, ref


def _rel(a, ref):
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def _run_onnx(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    return sess, sess.run(None, {"images": x})[0]


def test_onnx_dynamic_batch_nchw_and_external_data(model, images_and_logits, tmp_path, monkeypatch):
    x, ref = images_and_logits
    path = ex.export_onnx(model, tmp_path / "d.onnx", batch_size=None, image_size=SIZE, check=False)
    sess, out = _run_onnx(path, x)
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # symbolic batch
    assert _rel(out, ref) < RTOL
    out1 = sess.run(None, {"images": x[1:2]})[0]
    assert out1.shape == (1, 1000) and _rel(out1, ref[1:2]) < RTOL
    # NCHW input, transposed inside the graph, for runtimes that expect PyTorch's layout; and the
    # weights in an external-data file, as models over 2 GB (L3) are written.
    monkeypatch.setattr(ex, "EXTERNAL_DATA_BYTES", 0)
    path = ex.export_onnx(
        model, tmp_path / "c.onnx", batch_size=None, image_size=SIZE, nchw=True, check=False
    )
    assert (tmp_path / "c.onnx.data").stat().st_size > 4 * 5_000_000 > path.stat().st_size
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"images": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    assert _rel(out, ref) < RTOL


def test_onnx_refuses_scans_it_cannot_convert(model, tmp_path):
    with pytest.raises(ValueError, match="associative"):
        ex.export_onnx(model, tmp_path / "a.onnx", scan_impl="associative")


def test_jax_export_dynamic_batch_roundtrip(model, images_and_logits, tmp_path):
    x, ref = images_and_logits
    path = ex.export_jax(model, tmp_path / "m.jax_export", batch_size=None, image_size=SIZE)
    exp = ex.load_jax_export(path)
    assert exp.platforms == (jax.default_backend(),)
    assert "batch" in str(exp.in_avals[0].shape[0])
    np.testing.assert_allclose(np.asarray(exp.call(x)), ref, rtol=0, atol=RTOL * np.abs(ref).max())
    # Deserialised from bytes alone (no mambavision_jax objects needed).
    again = jax.export.deserialize(bytearray(path.read_bytes()))
    assert again.out_avals[0].shape[1] == 1000


def test_export_cli_fixed_batch_both_formats(model, images_and_logits, tmp_path):
    x, ref = images_and_logits
    weights = tmp_path / "w" / "model.safetensors"
    mvj.save_torch_checkpoint(model, weights)
    out = tmp_path / "out"
    assert (
        ex.main(
            [
                "--weights",
                str(weights),
                "--out",
                str(out),
                "--batch",
                "3",
                "--image_size",
                str(SIZE),
                "--platforms",
                "cpu,cuda,tpu",
            ]
        )
        == 0
    )
    cfg = json.loads((out / ex.CONFIG_FILE).read_text())
    assert cfg["model"] == "mamba_vision_T" and cfg["input"]["shape"] == [3, SIZE, SIZE, 3]
    assert cfg["preprocessing"]["crop_pct"] == 1.0 and cfg["num_classes"] == 1000
    assert mvj.MambaVisionConfig.from_dict(cfg["config"]) == model.config  # the whole architecture
    assert cfg["files"]["onnx"]["onnxruntime_max_rel_err"] < RTOL
    assert cfg["files"]["jax_export"]["platforms"] == ["cpu", "cuda", "tpu"]
    exp = ex.load_jax_export(out / ex.JAX_FILE)
    assert tuple(exp.in_avals[0].shape) == (3, SIZE, SIZE, 3)
    np.testing.assert_allclose(np.asarray(exp.call(x)), ref, rtol=0, atol=RTOL * np.abs(ref).max())
    sess, got = _run_onnx(out / ex.ONNX_FILE, x)
    assert sess.get_inputs()[0].shape == [3, SIZE, SIZE, 3] and got.shape == (3, 1000)
    assert _rel(got, ref) < RTOL
    assert not (out / (ex.ONNX_FILE + ".data")).exists()  # small models: one self-contained file


def test_export_cli_replaces_a_folder_only_with_overwrite(model, tmp_path):
    from mambavision_jax import cli

    weights = tmp_path / "w" / "model.safetensors"
    mvj.save_torch_checkpoint(model, weights)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    args = ["--weights", str(weights), "--out", str(out), "--jax", "--image_size", str(SIZE)]
    assert cli.run(ex.main, args) == 2  # refused: the folder is not empty
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert cli.run(ex.main, [*args, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [ex.CONFIG_FILE, ex.JAX_FILE]
    assert json.loads((out / ex.CONFIG_FILE).read_text())["files"]["jax_export"]["file"] == ex.JAX_FILE
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp folder left


def test_export_help(capsys):
    with pytest.raises(SystemExit) as e:
        ex.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for arg in (
        "--weights",
        "--model",
        "--out",
        "--batch",
        "--dynamic-batch",
        "--image_size",
        "--onnx",
        "--jax",
    ):
        assert arg in text


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, None])
def test_onnx_full_tiny_224(batch, tmp_path):
    """The full MambaVision-T at 224 (random weights): onnxruntime within 1e-4 of JAX."""
    m = mvj.create_model("mamba_vision_T")
    m.eval()
    path = ex.export_onnx(m, tmp_path / "t.onnx", batch_size=batch, image_size=224, check=False)
    err = ex.check_onnx(path, m, batch_size=batch or 2, image_size=224)
    assert err < RTOL


@pytest.mark.slow
@pytest.mark.parametrize("name", mvj.list_models())
def test_onnx_every_variant_at_its_native_resolution(name, tmp_path):
    """Deployment covers the zoo: each variant (random weights) at its native resolution exports to
    ONNX and onnxruntime reproduces the JAX logits within 1e-4 of the largest. L3 at 512 (740M
    parameters) writes its weights to an external .onnx.data file."""
    import time

    m = mvj.create_model(name)
    m.eval()
    size = mvj.pretrained_cfg(name).input_size[-1]
    t = time.perf_counter()
    path = ex.export_onnx(m, tmp_path / f"{name}.onnx", batch_size=1, image_size=size, check=False)
    t_export = time.perf_counter() - t
    t = time.perf_counter()
    err = ex.check_onnx(path, m, batch_size=1, image_size=size)
    print(
        f"\n{name} @ {size}: onnxruntime vs JAX max rel err {err:.2e}; export {t_export:.0f} s, "
        f"check {time.perf_counter() - t:.0f} s"
    )
    assert err <= RTOL
