"""colab/segment.ipynb runs headless in its SMALL mode (see tests/test_notebooks.py)."""

import nbformat
import pytest
from test_notebooks import COLAB, _run, _stdout


def test_segment_notebook_is_clean():
    nb = nbformat.read(COLAB / "segment.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert 'SMALL = os.environ.get("MV_NOTEBOOK_SMALL", "0") == "1"' in code[0].source


@pytest.mark.slow  # ~100 s under load; the fast segmentation budget is spent on parity
def test_segment_notebook(tmp_path, monkeypatch, compile_cache_env):
    nb = _run("segment.ipynb", tmp_path, monkeypatch, compile_cache_env)
    assert "scene.png: 160x120 segmented: " in _stdout(nb)
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the overlay is shown
