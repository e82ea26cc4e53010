"""notebooks/world2vlm_small.ipynb: a valid, cleared nbformat-4 notebook whose code compiles
(fast), and that runs top to bottom against a tiny release (slow, no Jupyter: each code cell is
exec'd in one namespace with its IPython ``!`` / ``%`` lines replaced by ``pass``)."""

import json
import os
import re
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "world2vlm_small.ipynb")
RELEASED = ("world_model_small", "vlm_base_small", "world2vlm_small")
_IPYTHON_LINE = re.compile(r"^(\s*)[!%].*$", re.M)


def load_notebook() -> dict:
    with open(NOTEBOOK) as f:
        return json.load(f)


def code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def as_python(source: str) -> str:
    """A code cell as plain Python: each IPython shell / magic line becomes ``pass`` (same
    indentation, so a guarded ``!pip`` keeps its ``if`` block valid)."""
    return _IPYTHON_LINE.sub(lambda m: m.group(1) + "pass", source)


def test_notebook_is_cleared_nbformat4():
    nb = load_notebook()
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids)
    kinds = [c["cell_type"] for c in nb["cells"]]
    assert set(kinds) == {"markdown", "code"} and kinds[0] == "markdown"
    for c in nb["cells"]:
        assert isinstance(c["source"], list) and all(isinstance(s, str) for s in c["source"])
        assert isinstance(c["metadata"], dict)
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None, c["id"]


def test_notebook_code_compiles_and_uses_the_release():
    cells = code_cells(load_notebook())
    for k, source in enumerate(cells):
        compile(as_python(source), f"code cell {k}", "exec")
    install = cells[0]
    assert "google.colab" in install and re.search(r"^\s+!pip install .*\[plot\]", install, re.M)
    text = "\n".join(cells)
    for name in RELEASED:
        assert f'"{name}"' in text, name
    for env in ("W2V_MODELS", "W2V_NOTEBOOK_CONFIG"):
        assert env in text


def test_as_python_replaces_only_ipython_lines():
    src = 'import sys\nif x:\n    !pip install -q -e ".[plot]"\n%matplotlib inline\ny = "!a"\n'
    assert as_python(src) == 'import sys\nif x:\n    pass\npass\ny = "!a"\n'


@pytest.mark.slow
def test_notebook_runs_against_a_tiny_release(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from experiments.configs.reproduce import get_config
    from w2v_jax.reproduce import pipeline

    release_run = tmp_path / "release_run"
    pipeline.run(get_config("tiny"), str(release_run))
    models = release_run / "release"
    assert sorted(os.listdir(models)) == sorted(RELEASED + ("DONE.json",))

    monkeypatch.setenv("W2V_MODELS", str(models))
    monkeypatch.setenv("W2V_NOTEBOOK_CONFIG", "tiny")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": "__main__"}
    for k, source in enumerate(code_cells(load_notebook())):
        exec(compile(as_python(source), f"code cell {k}", "exec"), namespace)

    workdir = namespace["WORKDIR"]
    assert os.path.dirname(workdir) == str(tmp_path)
    assert namespace["frames"].shape == (3, 16, 16, 3)  # the tiny teacher's image size
    assert namespace["imagined"].shape == (2, 16, 16, 3)
    questions = namespace["questions"]
    assert questions["inverse"]["answer"] == namespace["TRAJECTORY"]
    assert questions["forward"]["task_type"] in ("A4", "D1", "D2", "D4")
    paths = namespace["paths"]
    assert os.path.dirname(paths["md"]) == os.path.join(workdir, "report")
    with open(paths["json"]) as f:
        rows = json.load(f)["rows"]
    assert {"base", "world2vlm_sft", "world2vlm"} <= set(rows)
    assert os.path.isfile(paths["bars"]) and os.path.isfile(paths["sheet"])
    # the pipeline started from the release: no teacher or base was trained in the notebook
    done = json.load(open(os.path.join(workdir, "teacher", "DONE.json")))["summary"]
    assert done["trained"] is False and done["world_model"] == str(models / "world_model_small")
