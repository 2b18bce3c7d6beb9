"""The Colab notebooks (colab/*.ipynb) run headless, end to end, in their SMALL mode.

Each notebook reads MV_NOTEBOOK_SMALL=1 and then needs no network and no accelerator: random
weights saved and converted locally instead of the Hugging Face download, tiny models, a few steps.
The kernel runs in a fresh temporary folder (its working directory), so nothing is written into
the repository.
"""

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
CELL_TIMEOUT_S = 600


def _run(name: str, cwd: Path, monkeypatch, compile_cache_env) -> nbformat.NotebookNode:
    monkeypatch.setenv("MV_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # One CPU device unless the notebook asks for more (tpu_training sets 8 itself).
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    monkeypatch.setenv("XLA_FLAGS", flags.strip())
    for k, v in compile_cache_env.items():  # XLA compilations shared with the other subprocess tests
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    nb = nbformat.read(COLAB / name, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    return nb


def _stdout(nb) -> str:
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )


@pytest.mark.parametrize("name", ["inference.ipynb", "finetune.ipynb", "tpu_training.ipynb"])
def test_notebook_is_clean(name):
    """Stored without outputs (they are run in Colab, not read from the file), valid nbformat v4."""
    nb = nbformat.read(COLAB / name, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has stored outputs"
    assert 'SMALL = os.environ.get("MV_NOTEBOOK_SMALL", "0") == "1"' in code[0].source


def test_inference_notebook(tmp_path, monkeypatch, compile_cache_env):
    from mambavision_jax.predict import imagenet_class_names

    nb = _run("inference.ipynb", tmp_path, monkeypatch, compile_cache_env)
    out = _stdout(nb)
    assert "round trip exact" in out
    names = set(imagenet_class_names())
    for image in ("disk.jpg", "stripes.png"):
        block = out.split(f"\n{image}\n", 1)[1].splitlines()[:5]
        ranks = [re.match(r"^  ([1-5])\.\s+(\d+\.\d\d)%\s+(\d+)  (.+)$", line) for line in block]
        assert all(ranks), block
        assert [int(m.group(1)) for m in ranks] == [1, 2, 3, 4, 5]
        assert all(m.group(4) in names for m in ranks), block
        probs = [float(m.group(2)) for m in ranks]
        assert probs == sorted(probs, reverse=True)


def test_finetune_notebook(tmp_path, monkeypatch, compile_cache_env):
    nb = _run("finetune.ipynb", tmp_path, monkeypatch, compile_cache_env)
    out = _stdout(nb)
    workdir = tmp_path / "mv_finetune" / "runs" / "finetune"
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert len(evals) == 1 and evals[0]["step"] == 6
    assert {"top1", "top5", "ema_top1", "ema_top5"} <= set(evals[0])
    assert "initialised from" in out  # init_from: the checkpoint saved in the notebook
    assert (workdir / "best" / "6").is_dir()
    # The fine-tuned weights, exported in the Hugging Face layout with the class names.
    export = tmp_path / "mv_finetune" / "finetuned"
    config = json.loads((export / "config.json").read_text())
    assert config["num_classes"] == 10 and config["id2label"]["3"] == "3"
    assert "evaluate() top-1" in out and "predicted" in out


def test_tpu_training_notebook(tmp_path, monkeypatch, compile_cache_env):
    nb = _run("tpu_training.ipynb", tmp_path, monkeypatch, compile_cache_env)
    out = _stdout(nb)
    assert "8 devices" in out and "mesh {'data': 4, 'fsdp': 2}" in out
    # The sharding table of MambaVision-T: the large matrices split over fsdp.
    assert re.search(r"levels\.2\.blocks\.\d+\.mlp\.fc1\.weight .*P\(.*'fsdp'.*\)", out), out[-4000:]
    steps = re.findall(r"^step (\d): loss (\S+)", out, re.M)
    assert [s for s, _ in steps] == ["1", "2", "3"]
    assert all(float(loss) == float(loss) and float(loss) > 0 for _, loss in steps)  # finite
