"""The book's notebooks, executed with papermill on tiny parameters.

A session fixture writes six 32 x 32 x 8 phantoms, prepares their cache and trains the five
variants for a few iterations (the run folders the evaluation, ablation and viewer notebooks read).
Each test runs one notebook with papermill into a temporary folder and checks what it was meant to
produce: the ``injected-parameters`` cell, the figures, and the files it writes. The notebooks'
default parameters are the book's own (the smoke preset), exercised by ``make book`` and by
``pytest --nbval-lax notebooks/``.

Also checked: every MyST source ``notebooks/NN_name.md`` and its paired ``.ipynb`` hold the same cells,
the ``.ipynb`` carries no outputs and starts with the install cell (``scripts/check_notebooks.py``),
and ``scripts/notebook_params.json`` passes only parameters the notebooks declare, with the notebook's
own values except where the book keeps its runs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from kitsmsan import reference, uncertainty
from kitsmsan.notebook import reference_comparisons, reference_table1
from kitsmsan.reproduce import DATA_ANATOMY, MODEL_NAMES

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


def _check_notebooks():
    spec = importlib.util.spec_from_file_location("check_notebooks", ROOT / "scripts" / "check_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_paired_in_sync_clean_and_install_themselves():
    """scripts/check_notebooks.py (what `make check-notebooks` runs) passes on the committed notebooks."""
    pytest.importorskip("jupytext")
    cn = _check_notebooks()
    assert cn.check() == []
    assert [md.stem for md, _ in cn.pairs()] == sorted(p.stem for p in NOTEBOOKS.glob("0*.md"))
    for path in sorted(NOTEBOOKS.glob("0*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            assert "nn.Module" not in cell.source, f"{path.name}: a notebook defines no model code"


def test_check_notebooks_finds_each_problem(tmp_path):
    """Each check fails on a copy with that one fault (out of sync, outputs, install cell URL, missing pair)."""
    pytest.importorskip("jupytext")
    cn = _check_notebooks()
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://example.org/fork/kitsmsan/\n  branch: v1\n")
    assert cn.install_url(config) == "git+https://example.org/fork/kitsmsan@v1"
    assert 'os.environ.get("KITSMSAN_INSTALL_URL", "git+https://example.org/fork/kitsmsan@v1")' in (
        cn.install_cell(config)
    )
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkey_root = cn.ROOT
    cn.ROOT = tmp_path
    try:
        for name in ("01_data_exploration", "02_model_tour"):
            for ext in (".md", ".ipynb"):
                (folder / f"{name}{ext}").write_bytes((NOTEBOOKS / f"{name}{ext}").read_bytes())
        # the committed cells name _config.yml's URL, not the fork's
        assert {p.split(":")[0] for p in cn.check(folder, config)} == {
            "notebooks/01_data_exploration.md",
            "notebooks/02_model_tour.md",
        }
        assert cn.check(folder) == []
        md = folder / "01_data_exploration.md"
        md.write_text(md.read_text().replace("seed = 0", "seed = 1", 1))
        nb = nbformat.read(folder / "02_model_tour.ipynb", as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code")
        cell.outputs = [nbformat.v4.new_output("stream", text="hi")]
        cell.execution_count = 3
        nbformat.write(nb, folder / "02_model_tour.ipynb")
        (folder / "03_extra.md").write_text((NOTEBOOKS / "03_training.md").read_text())
        problems = cn.check(folder)
        assert any(p.startswith("01_data_exploration: .md and .ipynb differ (re-sync") for p in problems)
        assert any(
            p.startswith("notebooks/02_model_tour.ipynb: cell 1 is committed with outputs") for p in problems
        )
        assert any(p.startswith("notebooks/03_extra.ipynb: missing") for p in problems)
        # --fix: the .md (newer) wins, the fork's install cell is written, outputs are cleared by the sync
        cn.fix(folder, config)
        assert cn.check(folder, config) == []
        assert "seed = 1" in nbformat.read(folder / "01_data_exploration.ipynb", as_version=4).cells[2].source
    finally:
        cn.ROOT = monkey_root


def test_parameters_cells_hold_primitives_only():
    for path in sorted(NOTEBOOKS.glob("0*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        for node in ast.parse(cell.source).body:
            assert isinstance(node, ast.Assign), f"{path.name}: only assignments in the parameters cell"
            value = ast.literal_eval(node.value)
            assert isinstance(value, (bool, int, float, str)), (
                f"{path.name}: {ast.unparse(node)} is not a primitive"
            )


def test_papermill_reads_every_parameter():
    """papermill parses each line of the parameters cell (quotes in comments break its parser)."""
    pm = pytest.importorskip("papermill")
    for path in sorted(NOTEBOOKS.glob("0*.ipynb")):
        assert set(pm.inspect_notebook(str(path))) == _parameter_names(path), path.name


def _defaults(path: Path) -> dict:
    """The values of the notebook's ``parameters`` cell."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body}


#: the only parameters the book may set to other values than the notebook's own: where the book keeps
#: its runs, and that its results pages never train
BOOK_ONLY = {"runs_dir", "train_missing"}


def test_notebook_params_json_passes_declared_parameters():
    entries = json.loads(PARAMS_JSON.read_text())
    names = [e["notebook"] for e in entries]
    assert sorted(names) == sorted(f"notebooks/{p.name}" for p in NOTEBOOKS.glob("0*.ipynb"))
    assert len(names) == len(set(names)), "one page per notebook: each launch button opens its own notebook"
    for e in entries:
        declared = _defaults(ROOT / e["notebook"])
        unknown = set(e["parameters"]) - set(declared)
        assert not unknown, (
            f"{e['output']}: parameters {sorted(unknown)} are not in the notebook's parameters cell"
        )
        assert e["output"].startswith("book/generated/") and e["output"].endswith(".ipynb")
        assert Path(e["output"]).stem == Path(e["notebook"]).stem, "the page is named after its notebook"
        # the launch button opens this notebook: run as it is, it must do what the page shows
        differ = {k for k, v in e["parameters"].items() if declared[k] != v} - BOOK_ONLY
        assert not differ, (
            f"{e['output']}: the book runs {sorted(differ)} differently from the notebook's defaults"
        )
    # the training notebooks run before the notebooks that read their runs
    order = [Path(e["output"]).stem for e in entries]
    last_training = max(order.index("03_training"), order.index("03_training_compared"))
    for reader in ("02_model_tour", "04_evaluation", "05_ablations", "06_slice_viewer"):
        assert order.index(reader) > last_training
    compared = next(e for e in entries if "03_training_compared" in e["output"])
    assert compared["parameters"]["train_missing"] is True  # it trains the four other networks
    assert _defaults(ROOT / compared["notebook"])["variants"].split(",") == list(VARIANTS)


def test_paper_settings_are_one_documented_edit():
    """smoke = False (with data_root) selects the paper preset; the parameter cells say so."""
    for name in ("03_training", "03_training_compared"):
        source = (NOTEBOOKS / f"{name}.md").read_text()
        assert "set `smoke = False` and `data_root`" in source, name
        defaults = _defaults(NOTEBOOKS / f"{name}.ipynb")
        assert defaults["smoke"] is True and defaults["num_iters"] == 0 and defaults["device"] == ""
        assert "eval_every=eval_every if smoke else 0" in source, name


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
        train(
            TrainConfig.from_preset(
                "smoke",
                variant=variant,
                data_root=str(data),
                cache_dir=str(cache),
                run_dir=str(runs / variant),
                train_cases="0-3",
                test_cases="4-5",
                num_iters=3,
                log_every=1,
                eval_cases=1,
                progress=False,
            )
        )
    common = {
        "smoke": True,
        "work_dir": str(root / "work"),
        "data_root": str(data),
        "cache_dir": str(cache),
        "train_cases": "0-3",
        "test_cases": "4-5",
        "seed": 0,
    }
    return {"root": root, "data": data, "cache": cache, "runs": runs, "common": common}


def _execute(tiny_book, name: str, output: str, **parameters):
    """Run ``notebooks/<name>`` with papermill (cwd = the fixture's folder); return the executed notebook."""
    import papermill as pm

    out = tiny_book["root"] / output
    params = {**tiny_book["common"], **parameters}
    pm.execute_notebook(
        str(NOTEBOOKS / name),
        str(out),
        parameters=params,
        kernel_name="python3",
        cwd=str(tiny_book["root"]),
        progress_bar=False,
        execution_timeout=120,
    )
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1, f"{name}: papermill did not inject the parameters"
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(injected[0].source).body}
    assert values == params
    return nb


def _outputs(nb, mime: str) -> list:
    return [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("output_type") in ("display_data", "execute_result") and mime in o.get("data", {})
    ]


def _glued(nb, name: str) -> str:
    """The Markdown a page glues under ``name`` (myst-nb ``glue(..., display=False)``)."""
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.get("metadata", {}).get("scrapbook", {}).get("name") == name:
                return next(v for k, v in o["data"].items() if k.endswith("text/markdown"))
    raise AssertionError(f"nothing glued under {name!r}")


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
    nb = _execute(
        tiny_book, "01_data_exploration.ipynb", "01.ipynb", case_index=1, label_stats_csv="absent.csv"
    )
    assert len(_outputs(nb, "image/png")) >= 6  # planes, slices, HU, normalise, window, comparison
    text = _text(nb)
    assert "same as kits_affine(spacing): True" in text
    assert "case_00001" in text  # case_index=1 of the training split
    assert "absent.csv` is not there yet" in text  # says how to get the real statistics


@pytest.mark.slow
def test_02_model_tour(tiny_book):
    nb = _execute(
        tiny_book,
        "02_model_tour.ipynb",
        "02.ipynb",
        runs_dir=str(tiny_book["runs"]),
        paper_depth=4,
        paper_size=64,
        demo_channels=4,
    )
    text = _text(nb)
    import torch

    from kitsmsan.models import build_model

    with torch.no_grad():  # the heads the page traces are the ones the network returns
        outs = build_model("msan_v2_ds", base_channels=4).train()(torch.zeros(1, 1, 4, 64, 64))
    assert f"training-mode outputs: {[tuple(o.shape) for o in outs]}" in text
    assert "trained MSAN-V1" in text  # the fixture's run was found
    assert "equal to x * weights: True" in text
    for group, extent in ((1, 1), (2, 3), (3, 5), (4, 7)):  # Res2Net receptive fields, measured
        assert f"y{group}: {extent} x {extent} x {extent} voxels" in text
    assert len(_outputs(nb, "image/png")) >= 4
    assert len(_outputs(nb, "text/markdown")) >= 4  # package sources shown, not copied


@pytest.mark.slow
def test_03_training_trains_then_resumes(tiny_book):
    runs = tiny_book["root"] / "runs03"
    nb = _execute(
        tiny_book,
        "03_training.ipynb",
        "03a.ipynb",
        variant="msan_v1_ds",
        runs_dir=str(runs),
        num_iters=2,
        bench_glob="none/*.json",
    )
    run = runs / "msan_v1_ds"
    assert {"config.json", "env.json", "metrics.jsonl", "summary.json"} <= {p.name for p in run.iterdir()}
    assert (run / "checkpoints" / "last.pt").is_file()
    assert "pending" in _text(nb)  # no benchmark JSON: says so
    # validation on the last training cases (smoke: eval_cases 2 of 0-3), never on the test cases 4-5
    assert (
        "Validation cases of this run:** case_00002, case_00003 — the last 2 of its 4 training cases"
        in _text(nb)
    )
    assert len(_outputs(nb, "image/png")) >= 2  # curves and the test case
    # re-running with more iterations continues the same run; with the same, it does nothing
    _execute(
        tiny_book, "03_training.ipynb", "03b.ipynb", variant="msan_v1_ds", runs_dir=str(runs), num_iters=4
    )
    assert json.loads((run / "summary.json").read_text())["iterations"] == 4
    nb = _execute(
        tiny_book, "03_training.ipynb", "03c.ipynb", variant="msan_v1_ds", runs_dir=str(runs), num_iters=4
    )
    assert "already trained for 4 iterations; nothing to do" in _text(nb)


@pytest.mark.slow
def test_03_training_compared_reads_the_runs_and_trains_only_a_missing_one(tiny_book):
    nb = _execute(
        tiny_book,
        "03_training_compared.ipynb",
        "03d.ipynb",
        runs_dir=str(tiny_book["runs"]),
        train_missing=False,
    )
    text = _text(nb)
    assert "training it now" not in text  # every run was there: nothing trained
    for v in VARIANTS:
        assert v in text
    assert "the highest final validation composite Dice" in text
    assert "msan_v2_ds: case_00003 (test cases: case_00004, case_00005)" in text  # fixture: eval_cases=1
    assert len(_outputs(nb, "image/png")) >= 2  # curves overlaid, final Dice bars
    runs = tiny_book["root"] / "runs03d"
    nb = _execute(
        tiny_book,
        "03_training_compared.ipynb",
        "03e.ipynb",
        runs_dir=str(runs),
        variants="msan_v2",
        num_iters=2,
        eval_every=1,
    )
    assert "runs03d/msan_v2: no finished run; training it now (2 iterations" in _text(nb)
    assert json.loads((runs / "msan_v2" / "summary.json").read_text())["iterations"] == 2
    rows = [json.loads(line) for line in (runs / "msan_v2" / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_kidney" in r for r in rows) >= 2  # validated during training (eval_every)


def _reference_lines(record) -> tuple[reference.Reference, list[str]]:
    """The record and the lines a page prints about it: its provenance and the regenerating command."""
    ref = reference.load_reference(record)
    return ref, [f"reference run: {ref.describe()}", f"regenerate with: {reference.COMMAND}"]


@pytest.mark.slow
def test_04_evaluation_writes_table1(tiny_book, fake_reference):
    results = tiny_book["root"] / "eval"
    nb = _execute(
        tiny_book,
        "04_evaluation.ipynb",
        "04.ipynb",
        runs_dir=str(tiny_book["runs"]),
        train_missing=False,
        results_dir=str(results),
        num_worst=1,
        reference_dir=str(fake_reference),
    )
    for name in ("per_case.csv", "summary.csv", "summary.json", "summary.md", "table1.md"):
        assert (results / name).is_file(), name
    table = (results / "table1.md").read_text()
    assert "94.38" in table and "Ensembled Model" in table  # the paper's column beside ours
    assert "user data" in table or "phantoms" in table  # which data the numbers are from
    provenance = json.loads((results / "summary.json").read_text())["provenance"]
    assert provenance["training iterations"].startswith("unet3d 3")
    per_case = pd.read_csv(results / "per_case.csv")
    assert set(per_case["model"]) == {*VARIANTS, "ensemble"} and set(per_case["postprocess"]) == {0, 1, 2}
    assert len(per_case) == 6 * 2 * 3  # models x cases x post-processing
    assert len(_outputs(nb, "image/png")) >= 2  # per-case Dice, worst case
    assert (
        "nested-region majority vote" in provenance["ensemble"] and "rule='nested'" in provenance["ensemble"]
    )
    text = _text(nb)
    # every comparison has its interval and a computed sentence; 2 test cases are too few for a verdict
    assert "95 % bootstrap intervals" in text and "Kidney (95 % CI)" in text
    for v in VARIANTS[1:]:
        assert f"No verdict on kidney Dice for {MODEL_NAMES[v]} vs 3D U-Net" in text, v
    assert "No verdict on tumour Dice for The ensemble with k = 2 vs with k = 1" in text
    assert "paper, KiTS19 (points)" in text and "+2.77" in text  # MSAN-V1 − U-Net kidney in Table 1
    # every row of the claims table is one of the paper's steps, the same pair on both sides:
    # ensemble − MSAN-V2 with DS is +1.37 kidney, +3.48 tumour in Table 1, whatever our best member is
    claims = next(
        o["data"]["text/html"] for o in _outputs(nb, "text/html") if "paper, KiTS19" in o["data"]["text/html"]
    )
    assert (
        "Ensembled Model − MSAN-V2 with Deep Supervision" in claims
        and "+1.37" in claims
        and "+3.48" in claims
    )
    assert "MSAN-V2 − MSAN-V1" in claims and "(vs " not in claims
    assert "ours: reference, " in claims and "your run, " in claims and "seeds with its sign" in claims
    # the reference run is the main comparison: its provenance, command, Table 1 and comparisons
    ref, lines = _reference_lines(fake_reference)
    for line in lines:
        assert line in text, line
    assert reference_table1(ref) in text
    pairs = [(v, "unet3d") for v in VARIANTS[1:]]
    pairs.append(("ensemble", "msan_v2_ds"))  # the fixture's best single network
    ref_comparisons = reference_comparisons(ref, pairs, names=MODEL_NAMES)
    for sentence in ref_comparisons["sentence"]:
        assert sentence in text, sentence
    opening = _glued(nb, "evaluation_opening")
    assert opening.startswith(
        f"Our numbers come from the reference run on {DATA_ANATOMY}: 12 test cases, 123 training "
        "iterations per network, 3 training seeds"
    )
    assert uncertainty.summarize_verdicts(ref_comparisons) in opening  # computed, not written by hand
    agree = int((ref_comparisons["seeds_agree"] == 3).sum())
    assert f"In {agree} of those 10 comparisons all 3 seeds" in opening
    # your run, beside it, with its own label
    assert (
        f"What your run gives ({provenance['data']}, 2 test cases, 3 training iterations per network, "
        "1 training seed)" in opening
    )
    assert f"**Your run:** {provenance['data']}; 2 test cases; 3 iterations per network; seed 0;" in text


@pytest.mark.slow
def test_04_evaluation_refuses_missing_runs(tiny_book):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match="no finished run for"):
        _execute(
            tiny_book,
            "04_evaluation.ipynb",
            "04x.ipynb",
            runs_dir=str(tiny_book["root"] / "empty"),
            train_missing=False,
        )


@pytest.mark.slow
def test_05_ablations(tiny_book, fake_reference):
    runs = tiny_book["root"] / "runs05"
    import shutil

    shutil.copytree(tiny_book["runs"], runs)  # the ablation runs go under runs05/ablations
    nb = _execute(
        tiny_book,
        "05_ablations.ipynb",
        "05.ipynb",
        runs_dir=str(runs),
        train_missing=False,
        ablation_iters=2,
        depths="1,4",
        reference_dir=str(fake_reference),
    )
    results = json.loads((runs / "ablations" / "results.json").read_text())
    assert set(results["results"]) == {
        "postprocess",
        "ensemble",
        "deep_supervision",
        "attention",
        "hu_window",
        "depth",
    }
    assert set(results["results"]["depth"]) == {"1 slice", "4 slices"}
    assert results["results"]["postprocess"]["none"]["ceiling, kidney"] == 1.0  # GT scored against itself
    window = results["results"]["hu_window"]["[-200, 500]"]
    assert 0.0 <= window["kidney kept"] <= 1.0
    for name in ("msan_v1", "msan_v1_ds", "msan_v1_ds_alt", "msan_v1_depth1"):
        assert (runs / "ablations" / name / "summary.json").is_file(), name
    assert len(_outputs(nb, "image/png")) >= 7  # one figure per ablation (window: two)
    assert {"nested vote, k=2", "plurality vote, k=2", "average, k=2"} <= set(results["results"]["ensemble"])
    text = _text(nb)
    # each ablation's comparison is a paired interval with a computed sentence (2 cases: no verdict)
    for a, b in (
        ("ensemble, k=2", "ensemble, k=1"),
        ("ensemble, k=2", "ensemble, none"),
        ("nested vote", "plurality vote"),
        ("nested vote", "average"),
        ("1 slice", "4 slices"),
    ):
        assert f"No verdict on kidney Dice for {a} vs {b}: " in text, (a, b)
    assert "vs msan_v1, 2 it: " in text  # deep supervision against the run without it
    # the summary lists every comparison, deep supervision and depth included
    assert "Your run, deep supervision (2 iterations): No verdict on kidney Dice for msan_v1_ds" in text
    assert "Your run, input depth (2 iterations): No verdict on kidney Dice for 1 slice vs 4 slices" in text
    assert "Reference run (3 seeds), Res2Net: MSAN-V2 " in text
    assert "points [95 % CI]" in text and "in Table 1: kidney" in text  # the paper's claims beside ours
    # the questions the reference run answers come from it: k, vote rule, deep supervision,
    # attention, Res2Net — each a paired interval with the seeds' signs
    ref, lines = _reference_lines(fake_reference)
    for line in lines:
        assert line in text, line
    names = {"ensemble": "nested vote", "ensemble_plurality": "plurality vote", "ensemble_average": "average"}
    ref_all = pd.concat(
        [
            reference_comparisons(
                ref,
                [(2, 1), (2, 0)],
                by="postprocess",
                model="ensemble",
                names={2: "The ensemble with k = 2", 1: "with k = 1", 0: "with no post-processing"},
            ),
            reference_comparisons(
                ref, [("ensemble", "ensemble_plurality"), ("ensemble", "ensemble_average")], names=names
            ),
            reference_comparisons(
                ref,
                [
                    ("msan_v1_ds", "msan_v1"),
                    ("msan_v2_ds", "msan_v2"),
                    ("msan_v1", "unet3d"),
                    ("msan_v2", "msan_v1"),
                ],
                names=MODEL_NAMES,
            ),
        ],
        ignore_index=True,
    )
    for sentence in ref_all["sentence"]:
        assert sentence in text, sentence
    opening = _glued(nb, "ablations_opening")
    assert opening.startswith(
        "The post-processing, vote, deep-supervision, attention and Res2Net comparisons come from the "
        f"reference run on {DATA_ANATOMY}: 12 test cases, 123 iterations per network, 3 training seeds."
    )
    assert "Over its 8 comparisons the paired 95 % intervals over the seed-averaged cases give — " in opening
    assert uncertainty.summarize_verdicts(ref_all) in opening
    assert f"What your run gives: {results['data']}, 2 test cases, one training seed, 2 iterations" in opening
    assert "Over its 8 comparisons the paired 95 % intervals give — " in opening
    assert "no verdict in 8 of 8" in opening  # your run's 2 cases


@pytest.mark.slow
def test_06_slice_viewer(tiny_book):
    nb = _execute(
        tiny_book,
        "06_slice_viewer.ipynb",
        "06.ipynb",
        runs_dir=str(tiny_book["runs"]),
        train_missing=False,
        num_cases_shown=1,
        max_slices=4,
    )
    views = _outputs(nb, "application/vnd.jupyter.widget-view+json")
    assert views, "the viewer widget was not displayed"
    state = (
        nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    )
    models = [m["model_name"] for m in state.values()]
    assert "StackModel" in models and "LinkModel" in models  # the static page keeps slider and links
    assert any(
        "data:image/png;base64" in o["data"]["text/html"] for o in _outputs(nb, "text/html")
    )  # animation
    assert len(_outputs(nb, "image/png")) >= 1
    tags = {t for c in nb.cells for t in c.metadata.get("tags", [])}
    assert "nbval-ignore-output" in tags


@pytest.mark.slow
def test_07_how_sure(tiny_book, fake_reference):
    nb = _execute(
        tiny_book, "07_how_sure.ipynb", "07.ipynb", runs_dir="absent", reference_dir=str(fake_reference)
    )
    text = _text(nb)
    assert "absent/evaluation/per_case.csv: not there" in text  # says where the measured spread comes from
    assert "MSAN-V1 over 3D U-Net" in text and "on 10 cases" in text  # the paper's claim beside ten cases
    assert len(_outputs(nb, "image/png")) >= 1  # the resolvable-difference plot
    assert "our reference run 12 real-anatomy phantoms" in text
    # the spreads the simulation uses are the reference run's: per seed, the five networks at k = 2
    ref, lines = _reference_lines(fake_reference)
    assert lines[0] in text and "Measured on the reference run" in text
    measured = (
        pd.concat(
            [
                uncertainty.measured_spread(rows[rows["model"].isin(VARIANTS)])
                for s in ref.seeds
                for rows in [ref.cases(2, seed=s)]
            ]
        )
        .groupby(level="region")[["sd", "rho"]]
        .mean()
    )
    assert (
        f"(SD kidney {measured.loc['kidney', 'sd']:.3f}, tumour {measured.loc['tumor', 'sd']:.3f}; "
        f"ρ kidney {measured.loc['kidney', 'rho']:.2f}, tumour {measured.loc['tumor', 'rho']:.2f}; "
        f"measured: reference run ({DATA_ANATOMY}))" in text
    )
    # a parameter set to a value replaces the measured one
    nb = _execute(
        tiny_book,
        "07_how_sure.ipynb",
        "07b.ipynb",
        runs_dir="absent",
        reference_dir=str(fake_reference),
        tumor_sd=0.3,
    )
    assert f"(SD kidney {measured.loc['kidney', 'sd']:.3f}, tumour 0.300; ρ kidney " in _text(nb)
