"""predict and the robust image reader."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

import mambavision_jax as mvj
from mambavision_jax import cli
from mambavision_jax import predict as pr
from mambavision_jax.images import ImageReadError, ImageTooLargeError, load_image
from mambavision_jax.inference import resolve_preprocessing

SIZE = 64


@pytest.fixture(scope="module")
def model():
    m = mvj.create_model("mamba_vision_T", depths=(1, 1, 2, 1))  # 1000 classes: ImageNet names
    m.eval()
    return m


def _photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    return np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- images.py
def test_grayscale_palette_and_rgb(tmp_path):
    arr = _photo(20, 30)
    Image.fromarray(arr[..., 0]).save(tmp_path / "g.png")
    g = np.asarray(load_image(tmp_path / "g.png"))
    assert g.shape == (20, 30, 3) and g.dtype == np.uint8
    np.testing.assert_array_equal(g[..., 0], arr[..., 0])
    np.testing.assert_array_equal(g[..., 0], g[..., 2])
    Image.fromarray(arr).quantize(16).save(tmp_path / "p.png")
    p = load_image(tmp_path / "p.png")
    assert p.mode == "RGB" and p.size == (30, 20)
    Image.fromarray(arr).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "rgb.png")), arr)
    Image.fromarray(arr[..., 0] > 128).save(tmp_path / "bw.png")  # mode "1"
    assert set(np.unique(np.asarray(load_image(tmp_path / "bw.png")))) <= {0, 255}


def test_rgba_composited_on_white_or_alpha_dropped(tmp_path):
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., :3] = (200, 30, 40)
    rgba[:4, :, 3] = 255  # top half opaque, bottom fully transparent
    rgba[4:6, :, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    white = np.asarray(load_image(tmp_path / "a.png"))
    assert tuple(white[0, 0]) == (200, 30, 40) and tuple(white[7, 0]) == (255, 255, 255)
    np.testing.assert_allclose(white[4, 0], [228, 142, 147], atol=1)  # 50% over white
    dropped = np.asarray(load_image(tmp_path / "a.png", alpha="drop"))
    assert tuple(dropped[7, 0]) == (200, 30, 40)
    assert tuple(np.asarray(load_image(tmp_path / "a.png", alpha=(0, 0, 255)))[7, 0]) == (0, 0, 255)
    pal = Image.fromarray(rgba[..., :3]).convert("P")
    pal.info["transparency"] = pal.getpixel((0, 0))
    pal.save(tmp_path / "pt.png", transparency=pal.getpixel((0, 0)))
    assert tuple(np.asarray(load_image(tmp_path / "pt.png"))[0, 0]) == (255, 255, 255)
    la = Image.fromarray(np.stack([np.full((4, 4), 90, np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA")
    la.save(tmp_path / "la.png")
    assert tuple(np.asarray(load_image(tmp_path / "la.png"))[0, 0]) == (255, 255, 255)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    g16 = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    out = np.asarray(load_image(tmp_path / "g16.png"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])


def test_cmyk_jpeg_and_exif_orientation(tmp_path):
    arr = _photo(24, 40)
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    c = np.asarray(load_image(tmp_path / "c.jpg")).astype(int)
    assert c.shape == (24, 40, 3) and np.abs(c - arr).mean() < 12
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert load_image(tmp_path / "r.jpg").size == (24, 40)  # (w, h): turned upright
    assert load_image(tmp_path / "r.jpg", exif_transpose=False).size == (40, 24)


def test_unreadable_files_raise_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="notes.txt.*not an image"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(ImageReadError, match="missing.png.*no such file"):
        load_image(tmp_path / "missing.png")
    buf = io.BytesIO()
    Image.fromarray(_photo(64, 64)).save(buf, format="JPEG", quality=90)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg.*truncated"):
        load_image(tmp_path / "cut.jpg")
    assert load_image(tmp_path / "cut.jpg", allow_truncated=True).size == (64, 64)
    assert issubclass(ImageReadError, OSError)


def test_huge_images_refused_or_drafted(tmp_path):
    arr = _photo(200, 160)
    Image.fromarray(arr).save(tmp_path / "big.png")
    with pytest.raises(ImageTooLargeError, match="big.png.*200 = 32,000 pixels.*--max_pixels"):
        load_image(tmp_path / "big.png", max_pixels=10_000)
    assert load_image(tmp_path / "big.png", max_pixels=None).size == (160, 200)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=90)
    small = load_image(tmp_path / "big.jpg", max_pixels=10_000)  # JPEG: decoded at 1/2 scale
    assert small.size == (80, 100) and small.mode == "RGB"
    assert load_image(tmp_path / "big.jpg", max_pixels=2_000).size == (40, 50)  # 1/4
    with pytest.raises(ImageTooLargeError):
        load_image(tmp_path / "big.jpg", max_pixels=100)  # even 1/8 is too large


# ----------------------------------------------------------------------------- class names
def test_imagenet_class_names():
    names, synsets = pr.imagenet_class_names(), pr.imagenet_synsets()
    assert len(names) == len(synsets) == 1000 and synsets == sorted(set(synsets))
    assert (synsets[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert names[281] == "tabby, tabby cat" and names[388].startswith("giant panda")
    assert names[999] == "toilet tissue, toilet paper, bathroom tissue"
    assert pr.class_names_for(1000) == names
    assert pr.class_names_for(3) is None
    assert pr.class_names_for(2, hf_config={"id2label": {"0": "no", "1": "yes"}}) == ["no", "yes"]


def test_labels_file(tmp_path):
    (tmp_path / "l.txt").write_text("alpha\nbeta\n\ngamma\n")
    assert pr.class_names_for(3, labels=tmp_path / "l.txt") == ["alpha", "beta", "gamma"]
    with pytest.raises(ValueError, match="3 labels"):
        pr.class_names_for(4, labels=tmp_path / "l.txt")


# ----------------------------------------------------------------------------- predict
def test_predict_matches_the_model_on_the_preprocessed_array(model, tmp_path, capsys):
    files = []
    for i, (h, w) in enumerate(((90, 120), (77, 50))):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(_photo(h, w, seed=i)).save(files[-1])
    rgba = np.concatenate([_photo(70, 70, seed=5), np.full((70, 70, 1), 100, np.uint8)], -1)
    files.append(tmp_path / "t.png")
    Image.fromarray(rgba, "RGBA").save(files[-1])

    pre = resolve_preprocessing(model, image_size=SIZE)
    x = np.stack([pre(load_image(f)) for f in files])  # transparent image composited on white
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, x), np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    names = pr.imagenet_class_names()

    weights = tmp_path / "w" / "model.safetensors"
    mvj.save_torch_checkpoint(model, weights)
    assert pr.main([*map(str, files), "--weights", str(weights), "--image_size", str(SIZE), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["image"] for o in out] == [str(f) for f in files]
    for o, p in zip(out, probs):
        want = np.argsort(-p)[:5]
        assert [r["index"] for r in o["predictions"]] == want.tolist()
        assert [r["label"] for r in o["predictions"]] == [names[i] for i in want]
        np.testing.assert_allclose([r["prob"] for r in o["predictions"]], p[want], rtol=1e-4)

    # The Python API on paths, PIL images and arrays: the same classes.
    got = pr.predict(
        model, [files[0], Image.open(files[1]), np.asarray(load_image(files[2]))], preprocessing=pre
    )
    for g, p in zip(got, probs):
        assert [i for i, _, _ in g] == np.argsort(-p)[:5].tolist()
        assert g[0][1] == names[g[0][0]] and g[0][2] == pytest.approx(p.max(), rel=1e-4)

    assert pr.main([str(files[0]), "--weights", str(weights), "--image_size", str(SIZE)]) == 0
    table = capsys.readouterr().out
    assert str(files[0]) in table and names[int(np.argmax(probs[0]))] in table

    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert cli.run(pr.main, [str(tmp_path / "bad.jpg"), "--weights", str(weights)]) == 2
    assert "bad.jpg" in capsys.readouterr().err


def test_non_finite_outputs_are_an_error_not_nan_probabilities(model):
    from mambavision_jax.inference import NonFiniteOutputError

    broken = nnx.clone(model)
    head = broken.head.kernel
    head[...] = head[...].at[0, 0].set(np.nan)
    with pytest.raises(NonFiniteOutputError, match="image 0 are NaN or infinite"):
        pr.predict(broken, [_photo(40, 40)], preprocessing=resolve_preprocessing(broken, image_size=SIZE))
