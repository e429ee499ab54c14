"""The book's build helpers: scripts/book_tools.py (tables, fragments, run list) and the Sphinx glue
book/_ext/kitsmsan_book.py (checked test links, docstring handling). Fast: no notebook, no Sphinx."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from kitsmsan.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bt = _load("book_tools", REPO / "scripts" / "book_tools.py")
ext = _load("kitsmsan_book", REPO / "book" / "_ext" / "kitsmsan_book.py")


# ---------------------------------------------------------------- tables
@pytest.mark.parametrize(
    "value, text",
    [
        (None, "—"),
        ("", "—"),
        (float("nan"), "—"),
        (True, "yes"),
        (False, "no"),
        (0.123456, "0.1235"),
        (89.7, "89.7"),
        (123456.0, "123,456"),
        (3, "3"),
        ([4, 512, 512], "4 × 512 × 512"),
        ("a|b", "a\\|b"),
        ({"k": 1.5}, "k: 1.5"),
    ],
)
def test_fmt(value, text):
    assert bt._fmt(value) == text


def test_markdown_table_by_hand():
    rows = [{"model": "MSAN-V1", "kidney": 92.47}, {"model": "3D U-Net", "tumor": 46.9}]
    assert bt.markdown_table(rows) == (
        "| model | kidney | tumor |\n|---|---|---|\n| MSAN-V1 | 92.47 | — |\n| 3D U-Net | — | 46.9 |\n"
    )


def test_bench_sections_list_and_dict_forms():
    listed = [
        {"benchmark": "data", "speedup": 120.0},
        {"benchmark": "step", "variant": "unet3d"},
        {"benchmark": "step", "variant": "msan_v1"},
    ]
    meta, sections = bt._bench_sections(listed)
    assert meta == {} and list(sections) == ["data", "step"]
    assert sections["data"] == [{"speedup": 120.0}] and len(sections["step"]) == 2
    meta, sections = bt._bench_sections(
        {"device": "cpu", "commit": "abc", "results": {"smoke": {"seconds": 5}}}
    )
    assert meta == {"device": "cpu", "commit": "abc"} and sections == {"smoke": [{"seconds": 5}]}


def test_performance_page_lists_every_target_pending_until_measured(tmp_path, monkeypatch):
    from kitsmsan.bench import TARGETS, make_report

    cpu = {"device": "CPU x86_64 (2 cores, 2 threads)", "torch": "2.13.0", "commit": "abc1234"}
    rows = [
        {"benchmark": "smoke", "ok": True, "wall_s": 480.0, "torch_threads": 2, **cpu},
        {
            "benchmark": "step",
            "variant": "unet3d",
            "mode": "amp",
            "input": "2x1x4x128x128",
            "it_per_s": 2.0,
            "onednn_isa": "AVX512_CORE_BF16 (default: SIGSEGV)",
            **cpu,
        },
        {
            "benchmark": "step",
            "variant": "msan_v2",
            "mode": "amp",
            "input": "2x1x4x128x128",
            "it_per_s": 1.5,
            "onednn_isa": "AVX512_CORE_BF16 (default: SIGABRT)",
            **cpu,
        },
        {
            "benchmark": "step",
            "variant": "unet3d",
            "mode": "fp32",
            "input": "2x1x4x128x128",
            "it_per_s": 1.0,
            **cpu,
        },
    ]
    (tmp_path / "bench_cpu.json").write_text(json.dumps(make_report(rows, "cpu")))
    monkeypatch.setattr(bt, "DATA", tmp_path)
    page = bt.render_performance()
    table = page.split("### What the 12-hour")[0]
    # one line per target: the smoke one measured (480 s, met), every other one pending
    assert table.count("*pending*") == len(TARGETS) - 1
    assert "| reproduce --preset smoke (s) | ≤ 600 | 480 | yes |" in table
    assert "GPU: pending" in page and "313.8 TFLOP/s" in page  # the counted budget, 13.56 EFLOP / 12 h
    # two different fallbacks, two different marks, each with its own note
    assert (
        "| amp ‡ |" in page
        and "‡ run with `ONEDNN_MAX_CPU_ISA` = AVX512_CORE_BF16 (default: SIGSEGV)" in page
    )
    assert (
        "| amp † |" in page
        and "† run with `ONEDNN_MAX_CPU_ISA` = AVX512_CORE_BF16 (default: SIGABRT)" in page
    )
    # the header's thread count is the benchmarking process's, and says so; the targets are the book's
    assert "- **threads of the benchmarking process (torch's default" in page
    assert "- **threads**:" not in page
    assert "| torch_threads |" not in page and "| threads of the benchmarking process |" in page
    assert "The book's speed targets (the paper states none)" in page
    # a GPU file with the GPU targets met: no more pending GPU rows, no "GPU: pending" box
    h100 = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.13.0", "commit": "abc1234"}
    paper = "2x1x4x512x512"
    gpu = [
        {
            "benchmark": "step",
            "variant": "unet3d",
            "mode": m,
            "input": paper,
            "it_per_s": r,
            "speedup_vs_fp32": r / 4.0,
            "tflop_per_s": r * 6.721,
            **h100,
        }
        for m, r in (("fp32", 4.0), ("amp+cl", 12.0))
    ]
    gpu += [
        {"benchmark": "schedule", "at_paper_size": True, "five_model_hours_best": 11.0, **h100},
        {"benchmark": "data_loader", "batch": paper, "windows_per_s": 240.0, **h100},
    ]
    report = make_report(gpu, "cpu")
    report.update(device=h100["device"], cuda="12.8")
    (tmp_path / "bench_gpu.json").write_text(json.dumps(report))
    page = bt.render_performance()
    assert (
        page.split("### What the 12-hour")[0].count("*pending*") == 3
    )  # the three data targets (no data row)
    assert "GPU: pending" not in page and "80.65 TFLOP/s (unet3d, amp+cl" in page
    assert "| fast path / fp32 eager, slowest-gaining network (x) | ≥ 2.5 | 3 (unet3d) | yes |" in page


def test_split_constant_columns():
    rows = [
        {"variant": "unet3d", "device": "cpu", "it_s": 1.0},
        {"variant": "msan_v1", "device": "cpu", "it_s": 2.0},
    ]
    kept, constant = bt.split_constant_columns(rows)
    assert constant == {"device": "cpu"}
    assert kept == [{"variant": "unet3d", "it_s": 1.0}, {"variant": "msan_v1", "it_s": 2.0}]
    assert bt.split_constant_columns(rows[:1]) == (rows[:1], {})
    same = [{"a": 1}, {"a": 1}]
    assert bt.split_constant_columns(same) == (same, {})


def test_numeric_summary_by_hand():
    rows = [
        {"case_id": "case_00000", "dice": 0.5, "deleted": True},
        {"case_id": "case_00001", "dice": 1.0, "deleted": False},
        {"case_id": "case_00002", "dice": float("nan"), "deleted": True},
    ]
    summary = {r["quantity"]: r for r in bt._numeric_summary(rows)}
    assert set(summary) == {"dice", "deleted"}  # the id column is not numeric
    assert summary["dice"]["cases"] == 2 and summary["dice"]["mean"] == 0.75
    assert (
        summary["dice"]["median"] == 0.75 and summary["dice"]["min"] == 0.5 and summary["dice"]["max"] == 1.0
    )
    assert summary["deleted"]["mean"] == "2 yes"


def test_read_csv_keeps_comments_and_types(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("# made by a test\n# licence line\ncase_id,dice,deleted\ncase_00000,0.25,True\n")
    rows, comments = bt._read_csv(path)
    assert comments == ["made by a test", "licence line"]
    assert rows == [{"case_id": "case_00000", "dice": 0.25, "deleted": True}]


def test_ceiling_finding_states_the_computed_means():
    rows = [
        {"kidney_dice_k1": 0.7, "kidney_dice_k2": 1.0, "kidney_deleted_k1": True},
        {"kidney_dice_k1": 0.8, "kidney_dice_k2": 1.0, "kidney_deleted_k1": False},
    ]
    text = bt._ceiling_finding(rows)
    assert "**75.00**" in text and "deleted in 1 of them" in text and "below the lowest" in text
    assert bt._ceiling_finding([{"other": 1.0}]) == ""


def test_fragments_in_pipeline_order(tmp_path, monkeypatch):
    for area in ("pipeline", "data", "zebra", "models"):
        (tmp_path / f"decisions-{area}.md").write_text(f"## {area}\n")
    (tmp_path / "reliability-data.md").write_text("## not a decision\n")
    monkeypatch.setattr(bt, "FRAGMENTS", tmp_path)
    text = bt.render_fragments("decisions")
    order = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert order == ["data", "models", "pipeline", "zebra"]
    assert "No `book/fragments/none-*.md`" in bt.render_fragments("none")


# ---------------------------------------------------------------- the run list
def _entries(tmp_path, entries):
    path = tmp_path / "params.json"
    path.write_text(json.dumps(entries))
    return path


GOOD = {
    "notebook": "notebooks/03_training.ipynb",
    "output": "book/generated/03_training_x.ipynb",
    "parameters": {"variant": "msan_v1"},
}


@pytest.mark.parametrize(
    "entries, fragment",
    [
        ([], "non-empty JSON list"),
        ([{"notebook": "notebooks/03_training.ipynb"}], "needs 'notebook' and 'output'"),
        ([dict(GOOD, extra=1)], "unknown keys ['extra']"),
        ([dict(GOOD, notebook="notebooks/nope.ipynb")], "notebooks/nope.ipynb does not exist"),
        ([dict(GOOD, output="book/x.ipynb")], "must be book/generated/<name>.ipynb"),
        ([dict(GOOD, output="book/generated/../../x.ipynb")], "must be book/generated/<name>.ipynb"),
        ([GOOD, GOOD], "appears twice"),
        ([dict(GOOD, parameters=[1])], "'parameters' must be an object"),
    ],
)
def test_load_entries_rejects_bad_run_lists(tmp_path, entries, fragment):
    if not (REPO / GOOD["notebook"]).is_file():
        pytest.skip("notebooks/03_training.ipynb not there yet")
    with pytest.raises(ConfigError) as err:
        bt.load_entries(_entries(tmp_path, entries))
    assert fragment in str(err.value) and "params.json" in str(err.value)


def test_load_entries_missing_and_invalid_file(tmp_path):
    with pytest.raises(bt.BookBuildError, match="missing"):
        bt.load_entries(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(bt.BookBuildError, match="not valid JSON"):
        bt.load_entries(tmp_path / "bad.json")


def test_the_committed_run_list_is_valid_and_matches_the_toc():
    import yaml

    entries = bt.load_entries()
    outputs = {str(Path(e["output"]).with_suffix("")) for e in entries}
    toc = (REPO / "_toc.yml").read_text()
    pages = {line.split("file:")[1].strip() for line in toc.splitlines() if "file: book/generated/" in line}
    assert outputs == pages, "scripts/notebook_params.json and _toc.yml name different generated pages"
    assert yaml.safe_load(toc)["root"] == "book/intro"


def test_retitle_replaces_the_first_level_one_heading(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_markdown_cell("intro\n# Training\n\n# Other"),
    ]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    bt.retitle(path, "Training: MSAN-V1")
    cells = nbformat.read(path, as_version=4).cells
    assert cells[1].source == "intro\n# Training: MSAN-V1\n\n# Other"


# ---------------------------------------------------------------- the Sphinx glue
SOURCE = """
def test_alpha():
    pass

class TestGroup:
    def test_beta(self):
        pass

def helper():
    pass
"""


@pytest.mark.parametrize(
    "names, found",
    [
        (["test_alpha"], True),
        (["TestGroup"], True),
        (["TestGroup", "test_beta"], True),
        (["TestGroup", "test_alpha"], False),
        (["test_gamma"], False),
        (["test_alph"], False),
    ],
)
def test_defines_finds_functions_and_methods(names, found):
    assert ext._defines(SOURCE, names) is found


@pytest.mark.parametrize(
    "names, line",
    [
        (["test_alpha"], 2),
        (["TestGroup"], 5),
        (["TestGroup", "test_beta"], 6),
        (["helper"], 9),
        (["TestGroup", "helper"], None),
    ],
)
def test_definition_line_for_the_github_anchor(names, line):
    assert ext._definition_line(SOURCE, names) == line


@pytest.mark.parametrize(
    "first_line, protected",
    [
        ("tuple[int, int]: the window", False),
        ("int | None: the width", False),
        ("str or None: a name", False),
        ("MSAN paper, Table 1: Dice on ten cases", True),
        ("one window of the paper's input: 4 slices", True),
        ("no colon in this line", False),
    ],
)
def test_attribute_prose_is_protected_from_napoleon(first_line, protected):
    lines = [first_line, "more"]
    ext.protect_attribute_prose(None, "data", "X", None, {}, lines)
    assert (lines[:2] == ["..", ""]) is protected
    other = [first_line]
    ext.protect_attribute_prose(None, "function", "f", None, {}, other)
    assert other == [first_line]  # functions are left to napoleon


@pytest.mark.parametrize(
    "dotted, exists",
    [
        ("kitsmsan.errors.ConfigError", True),
        ("kitsmsan.utils.io.safe_join", True),
        ("kitsmsan.errors.NoSuchError", False),
        ("kitsmsan.no_such_module.x", False),
    ],
)
def test_importable(dotted, exists):
    assert ext._importable(dotted) is exists


def test_test_reference_pattern():
    assert ext._TEST_REF.match("tests/test_losses.py::test_dice")
    assert ext._TEST_REF.match("tests/test_x.py::TestA::test_b")
    assert not ext._TEST_REF.match("test_losses.py::test_dice")
    assert not ext._TEST_REF.match("tests/test_losses.py")


def test_cdn_font_awesome_links_are_stripped_and_nothing_else():
    html = (
        '<link rel="stylesheet"\n href="https://maxcdn.bootstrapcdn.com/font-awesome/4.4.0/css/font-awesome.min.css">\n'
        '<link rel="stylesheet" href="../_static/local.css"><i class="fa fa-play"></i>'
    )
    assert (
        ext.strip_cdn_font_awesome(html)
        == '<link rel="stylesheet" href="../_static/local.css"><i class="fa fa-play"></i>'
    )
    assert ext.strip_cdn_font_awesome("<p>no links</p>") == "<p>no links</p>"


def test_every_launch_button_opens_the_committed_notebook_of_its_page():
    """Colab/Binder buttons of each generated page are rewritten to that page's own notebook in notebooks/."""
    from types import SimpleNamespace

    app = SimpleNamespace(srcdir=str(REPO))
    colab = "https://colab.research.google.com/github/kitsmsan/kitsmsan/blob/main/"
    for entry in bt.load_entries():
        page = str(Path(entry["output"]).with_suffix(""))
        context = {
            "header_buttons": [
                {"label": "launch-buttons", "buttons": [{"label": "Colab", "url": f"{colab}{page}.ipynb"}]}
            ]
        }
        ext.rewrite_launch_buttons(app, page, "page.html", context, None)
        url = context["header_buttons"][0]["buttons"][0]["url"]
        assert url == f"{colab}{entry['notebook']}", page
        assert (REPO / entry["notebook"]).is_file() and (REPO / entry["notebook"]).with_suffix(
            ".md"
        ).is_file()


# ---------------------------------------------------------------- reliability tally
def test_the_reliability_tally_counts_the_collected_cases(monkeypatch):
    """The one tally: its totals are the sums of the collected cases of the listed tests."""
    node_ids = [n for _, _, _, tests in bt.RELIABILITY_TALLY for n in tests]
    assert len(node_ids) == len(set(node_ids)), "a test is listed in two rows (counted twice)"
    counts = {n: 1 + i % 3 for i, n in enumerate(node_ids)}
    monkeypatch.setattr(bt, "collect_counts", lambda ids: counts)
    page = bt.render_reliability_tally()
    assert f"**{sum(counts.values())} test cases in {len(node_ids)} tests**" in page
    assert "| Kind | What goes wrong | Handled in | Cases tried | Tests |" in page
    assert page.count("\n| ") == len(bt.RELIABILITY_TALLY) + 1  # the header and one line per row
    monkeypatch.setattr(bt, "collect_counts", lambda ids: None)
    assert "could not be counted" in bt.render_reliability_tally()


#: a count of tests written by hand ("261 test cases", "98 tests", "Cases tried: 12")
STATIC_COUNT = re.compile(r"\b\d[\d,]*\s+(test cases|tests)\b|\b(bad inputs tried|crashes survived)\b", re.I)


def test_no_page_states_a_test_count_by_hand():
    """The reliability tally is generated; a static count in a page or a fragment would drift from it."""
    pages = sorted((REPO / "book").glob("*.md")) + sorted((REPO / "book" / "fragments").glob("*.md"))
    assert pages
    found = [
        f"{p.relative_to(REPO)}: {m.group(0)}" for p in pages for m in STATIC_COUNT.finditer(p.read_text())
    ]
    assert not found, found
    assert not (REPO / "book" / "fragments" / "reliability-tally.md").exists()
    assert STATIC_COUNT.search("**Count**: 261 test cases in 98 tests")  # the pattern itself catches one


def test_the_colab_reproduce_command_sets_exactly_the_colab_preset():
    """Colab's reproduce command turns the paper preset into the colab preset: the --set values are
    exactly the settings in which the two presets differ."""
    from kitsmsan.train.config import PRESETS

    text = (REPO / "book" / "colab.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("!kitsmsan reproduce --preset paper --set"))
    given = dict(kv.split("=", 1) for kv in re.findall(r"--set (\S+)", line))
    paper, colab = PRESETS["paper"], PRESETS["colab"]
    differ = {k: str(v) for k, v in colab.items() if paper.get(k) != v}
    assert given == differ
