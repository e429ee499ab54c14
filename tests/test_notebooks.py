"""The six book notebooks, executed with papermill on tiny parameters (issue #5).

A session fixture writes six 32 x 32 x 8 phantoms, prepares their cache and trains the five
variants for a few iterations (the run folders the evaluation, ablation and viewer notebooks read).
Each test runs one notebook with papermill into a temporary folder and checks what it was meant to
produce: the ``injected-parameters`` cell, the figures, and the files it writes. The notebooks'
default parameters (a quick look on the book's phantoms) are exercised separately by
``pytest --nbval-lax notebooks/``.

Also checked: every MyST source ``notebooks/NN_name.md`` and its paired ``.ipynb`` hold the same cells,
the ``.ipynb`` carries no outputs, and ``scripts/notebook_params.json`` only passes parameters the
notebooks declare.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PARAMS_JSON = ROOT / "scripts" / "notebook_params.json"
VARIANTS = ("unet3d", "msan_v1", "msan_v1_ds", "msan_v2", "msan_v2_ds")

nbformat = pytest.importorskip("nbformat")


def _parameter_names(path: Path) -> set[str]:
    """Names assigned in the notebook's ``parameters`` cell."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected exactly one cell tagged 'parameters'"
    tree = ast.parse(cells[0].source)
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}


# ------------------------------------------------------------------------------------------------
# static checks (fast)
# ------------------------------------------------------------------------------------------------


def test_notebooks_are_paired_in_sync_and_have_no_outputs():
    jupytext = pytest.importorskip("jupytext")
    sources = sorted(NOTEBOOKS.glob("0*.md"))
    assert [p.stem for p in sources] == [p.stem for p in sorted(NOTEBOOKS.glob("0*.ipynb"))]
    for source in sources:
        text = jupytext.read(source)
        nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
        assert text.metadata["jupytext"]["formats"] == "ipynb,md:myst", f"{source.name}: not paired"
        assert [(c.cell_type, c.source) for c in text.cells] == [(c.cell_type, c.source) for c in nb.cells], (
            f"{source.name}: out of sync with its .ipynb (jupytext --sync {source.relative_to(ROOT)})")
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{source.name}: committed with outputs"
                assert "nn.Module" not in cell.source, f"{source.name}: a notebook defines no model code"


def test_parameters_cells_hold_primitives_only():
    for path in sorted(NOTEBOOKS.glob("0*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        for node in ast.parse(cell.source).body:
            assert isinstance(node, ast.Assign), f"{path.name}: only assignments in the parameters cell"
            value = ast.literal_eval(node.value)
            assert isinstance(value, (bool, int, float, str)), f"{path.name}: {ast.unparse(node)} is not a primitive"


def test_papermill_reads_every_parameter():
    """papermill parses each line of the parameters cell (quotes in comments break its parser)."""
    pm = pytest.importorskip("papermill")
    for path in sorted(NOTEBOOKS.glob("0*.ipynb")):
        assert set(pm.inspect_notebook(str(path))) == _parameter_names(path), path.name


def test_notebook_params_json_passes_declared_parameters():
    entries = json.loads(PARAMS_JSON.read_text())
    assert [e["output"] for e in entries if "03_training" in e["notebook"]] == [
        f"book/generated/03_training_{v}.ipynb" for v in VARIANTS]
    names = {e["notebook"] for e in entries}
    assert names == {f"notebooks/{p.name}" for p in NOTEBOOKS.glob("0*.ipynb")}
    for e in entries:
        declared = _parameter_names(ROOT / e["notebook"])
        unknown = set(e["parameters"]) - declared
        assert not unknown, f"{e['output']}: parameters {sorted(unknown)} are not in the notebook's parameters cell"
        assert e["output"].startswith("book/generated/") and e["output"].endswith(".ipynb")
    # the training runs come before the notebooks that read them
    order = [e["output"] for e in entries]
    last_training = max(i for i, o in enumerate(order) if "03_training" in o)
    for reader in ("02_model_tour", "04_evaluation", "05_ablations", "06_slice_viewer"):
        assert next(i for i, o in enumerate(order) if reader in o) > last_training


# ------------------------------------------------------------------------------------------------
# executed notebooks (tiny data)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_book(tmp_path_factory):
    """Tiny phantoms (6 cases, 32 x 32 x 8), their cache, and the five variants trained 3 iterations."""
    pytest.importorskip("papermill")
    from kitsmsan.data.phantom import write_phantom_dataset
    from kitsmsan.data.preprocess import prepare_cache
    from kitsmsan.train import TrainConfig, train

    root = tmp_path_factory.mktemp("book")
    data, cache, runs = root / "data", root / "cache", root / "runs"
    write_phantom_dataset(data, 6, 0, size=32, num_slices=8, progress=False)
    prepare_cache(data, cache, progress=False)
    for variant in VARIANTS:
        train(TrainConfig.from_preset("smoke", variant=variant, data_root=str(data), cache_dir=str(cache),
                                      run_dir=str(runs / variant), train_cases="0-3", test_cases="4-5",
                                      num_iters=3, log_every=1, eval_cases=1, progress=False))
    common = {"smoke": True, "work_dir": str(root / "work"), "data_root": str(data), "cache_dir": str(cache),
              "train_cases": "0-3", "test_cases": "4-5", "seed": 0}
    return {"root": root, "data": data, "cache": cache, "runs": runs, "common": common}


def _execute(tiny_book, name: str, output: str, **parameters):
    """Run ``notebooks/<name>`` with papermill (cwd = the fixture's folder); return the executed notebook."""
    import papermill as pm

    out = tiny_book["root"] / output
    params = {**tiny_book["common"], **parameters}
    pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=params, kernel_name="python3",
                        cwd=str(tiny_book["root"]), progress_bar=False, execution_timeout=120)
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1, f"{name}: papermill did not inject the parameters"
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(injected[0].source).body}
    assert values == params
    return nb


def _outputs(nb, mime: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.get("output_type") in ("display_data", "execute_result") and mime in o.get("data", {})]


def _text(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                parts.append(o["text"])
            for mime in ("text/plain", "text/markdown", "text/html"):
                if mime in o.get("data", {}):
                    parts.append(o["data"][mime])
    return "\n".join(parts)


@pytest.mark.slow
def test_01_data_exploration(tiny_book):
    nb = _execute(tiny_book, "01_data_exploration.ipynb", "01.ipynb", case_index=1,
                  label_stats_csv="absent.csv")
    assert len(_outputs(nb, "image/png")) >= 6          # planes, slices, HU, normalise, window, comparison
    text = _text(nb)
    assert "same as kits_affine(spacing): True" in text
    assert "case_00001" in text                          # case_index=1 of the training split
    assert "absent.csv` is not there yet" in text        # says how to get the real statistics


@pytest.mark.slow
def test_02_model_tour(tiny_book):
    nb = _execute(tiny_book, "02_model_tour.ipynb", "02.ipynb", runs_dir=str(tiny_book["runs"]),
                  paper_depth=4, paper_size=64, demo_channels=4)
    text = _text(nb)
    assert "training-mode outputs: [(1, 3, 4, 64, 64), (1, 3, 4, 16, 16), (1, 3, 4, 8, 8)]" in text
    assert "trained MSAN-V1" in text                    # the fixture's run was found
    assert "equal to x * weights: True" in text
    for group, extent in ((1, 1), (2, 3), (3, 5), (4, 7)):     # Res2Net receptive fields, measured
        assert f"y{group}: {extent} x {extent} x {extent} voxels" in text
    assert len(_outputs(nb, "image/png")) >= 4
    assert len(_outputs(nb, "text/markdown")) >= 4      # package sources shown, not copied


@pytest.mark.slow
def test_03_training_trains_then_resumes(tiny_book):
    runs = tiny_book["root"] / "runs03"
    nb = _execute(tiny_book, "03_training.ipynb", "03a.ipynb", variant="msan_v1_ds", runs_dir=str(runs),
                  num_iters=2, bench_glob="none/*.json")
    run = runs / "msan_v1_ds"
    assert {"config.json", "env.json", "metrics.jsonl", "summary.json"} <= {p.name for p in run.iterdir()}
    assert (run / "checkpoints" / "last.pt").is_file()
    assert "pending" in _text(nb)                       # no benchmark JSON: says so
    assert len(_outputs(nb, "image/png")) >= 2          # curves and the test case
    # re-running with more iterations continues the same run; with the same, it does nothing
    _execute(tiny_book, "03_training.ipynb", "03b.ipynb", variant="msan_v1_ds", runs_dir=str(runs), num_iters=4)
    assert json.loads((run / "summary.json").read_text())["iterations"] == 4
    nb = _execute(tiny_book, "03_training.ipynb", "03c.ipynb", variant="msan_v1_ds", runs_dir=str(runs), num_iters=4)
    assert "already trained for 4 iterations; nothing to do" in _text(nb)


@pytest.mark.slow
def test_04_evaluation_writes_table1(tiny_book):
    results = tiny_book["root"] / "eval"
    nb = _execute(tiny_book, "04_evaluation.ipynb", "04.ipynb", runs_dir=str(tiny_book["runs"]),
                  train_missing=False, results_dir=str(results), num_worst=1)
    for name in ("per_case.csv", "summary.csv", "summary.json", "summary.md", "table1.md"):
        assert (results / name).is_file(), name
    table = (results / "table1.md").read_text()
    assert "94.38" in table and "Ensembled Model" in table          # the paper's column beside ours
    assert "user data" in table or "phantoms" in table              # which data the numbers are from
    provenance = json.loads((results / "summary.json").read_text())["provenance"]
    assert provenance["training iterations"].startswith("unet3d 3")
    import pandas as pd

    per_case = pd.read_csv(results / "per_case.csv")
    assert set(per_case["model"]) == {*VARIANTS, "ensemble"} and set(per_case["postprocess"]) == {0, 1, 2}
    assert len(per_case) == 6 * 2 * 3                                # models x cases x post-processing
    assert len(_outputs(nb, "image/png")) >= 2                       # per-case Dice, worst case


@pytest.mark.slow
def test_04_evaluation_refuses_missing_runs(tiny_book):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match="no finished run for"):
        _execute(tiny_book, "04_evaluation.ipynb", "04x.ipynb", runs_dir=str(tiny_book["root"] / "empty"),
                 train_missing=False)


@pytest.mark.slow
def test_05_ablations(tiny_book):
    runs = tiny_book["root"] / "runs05"
    import shutil

    shutil.copytree(tiny_book["runs"], runs)            # the ablation runs go under runs05/ablations
    nb = _execute(tiny_book, "05_ablations.ipynb", "05.ipynb", runs_dir=str(runs), train_missing=False,
                  ablation_iters=2, depths="1,4")
    results = json.loads((runs / "ablations" / "results.json").read_text())
    assert set(results["results"]) == {"postprocess", "ensemble", "deep_supervision", "attention",
                                       "hu_window", "depth"}
    assert set(results["results"]["depth"]) == {"1 slice", "4 slices"}
    assert results["results"]["postprocess"]["none"]["ceiling, kidney"] == 1.0   # GT scored against itself
    window = results["results"]["hu_window"]["[-200, 500]"]
    assert 0.0 <= window["kidney kept"] <= 1.0
    for name in ("msan_v1", "msan_v1_ds", "msan_v1_ds_alt", "msan_v1_depth1"):
        assert (runs / "ablations" / name / "summary.json").is_file(), name
    assert len(_outputs(nb, "image/png")) >= 7          # one figure per ablation (window: two)


@pytest.mark.slow
def test_06_slice_viewer(tiny_book):
    nb = _execute(tiny_book, "06_slice_viewer.ipynb", "06.ipynb", runs_dir=str(tiny_book["runs"]),
                  train_missing=False, num_cases_shown=1, max_slices=4)
    views = _outputs(nb, "application/vnd.jupyter.widget-view+json")
    assert views, "the viewer widget was not displayed"
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    models = [m["model_name"] for m in state.values()]
    assert "StackModel" in models and "LinkModel" in models        # the static page keeps slider and links
    assert any("data:image/png;base64" in o["data"]["text/html"] for o in _outputs(nb, "text/html"))  # animation
    assert len(_outputs(nb, "image/png")) >= 1
    tags = {t for c in nb.cells for t in c.metadata.get("tags", [])}
    assert "nbval-ignore-output" in tags
