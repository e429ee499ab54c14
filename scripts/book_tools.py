"""Build steps of the kitsmsan book that are not Jupyter Book itself (called by scripts/build_book.sh).

Two subcommands, both run from the repository root::

    python scripts/book_tools.py run-notebooks [--only NAME ...] [--reuse] [--params FILE]
    python scripts/book_tools.py render

``run-notebooks`` executes every entry of ``scripts/notebook_params.json`` (a JSON list, in run
order, of ``{"notebook": "notebooks/03_training.ipynb", "output":
"book/generated/03_training.ipynb", "parameters": {...}, "title": "..."}``; ``title`` is
optional) with papermill: kernel ``python3``, working directory the repository root (so notebooks
use paths relative to it), the parameters injected after the notebook's ``parameters`` cell. The
``notebook`` is the ``.ipynb`` of a jupytext pair (its MyST ``.md`` is the source; the two are kept
in sync by ``jupytext --sync`` and checked by ``scripts/check_notebooks.py``). The executed copy is
written atomically to ``output`` (under ``book/generated/``); when ``title`` is given, the first
level-1 Markdown heading of the copy is replaced by it (for a notebook run more than once). A notebook that fails leaves the previous
output untouched and its partial copy in ``_build/failed/``; the command then exits with status 1.

``render`` writes the Markdown snippets that the prose pages ``{include}`` into ``book/generated/``:

* ``decisions_fragments.md``, ``reliability_fragments.md``: the fragments
  ``book/fragments/decisions-*.md`` / ``reliability-*.md`` concatenated in name order (MyST's
  include cannot glob; a fragment that lands later is picked up by the next build);
* ``reliability_tally.md``: the tally of :data:`RELIABILITY_TALLY`, with the number of test cases
  pytest collects for each row;
* ``performance_tables.md``: every ``book/data/bench_*.json`` written by ``kitsmsan bench``, as
  tables; a GPU row that has not been measured says so;
* ``real_anatomy_ceiling.md``, ``real_anatomy_stats.md``: ``book/data/postprocess_ceiling.csv`` and
  ``book/data/kits19_label_stats.csv`` (written by ``kitsmsan stats`` on the real KiTS19
  segmentations), summarised as tables;
* ``memory_*.md``, ``colab_sizes.md``: ``book/data/memory.json`` (``kitsmsan bench memory``; the
  time table merged with ``bench_gpu.json``'s measured steps) and ``book/data/colab_sizes.json``
  (``scripts/colab_sizes.py``) as tables;
* ``api_modules.md``: an ``automodule`` section for every module of the package (so a new module
  is documented without editing ``book/api.md``), ``cli_reference.md``: ``kitsmsan <cmd> --help``.

Missing inputs are not errors for ``render``: the snippet then says what is missing and which
command produces it, so the book always builds and never shows an invented number.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from pathlib import Path

from kitsmsan.errors import ConfigError
from kitsmsan.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "scripts" / "notebook_params.json"
GENERATED = ROOT / "book" / "generated"
DATA = ROOT / "book" / "data"
FRAGMENTS = ROOT / "book" / "fragments"
FAILED = ROOT / "_build" / "failed"


class BookBuildError(ConfigError):
    """A problem with the inputs of the book build (message names the file and the problem)."""


# --------------------------------------------------------------------------------------------
# run-notebooks
# --------------------------------------------------------------------------------------------
def load_entries(path: Path = PARAMS) -> list[dict]:
    """Read and check ``scripts/notebook_params.json``.

    Args:
        path: the JSON file (default ``scripts/notebook_params.json``).

    Returns:
        The entries, each with ``notebook`` and ``output`` as repository-relative strings,
        ``parameters`` a dict of primitives and an optional ``title``.

    Raises:
        BookBuildError: the file is missing or malformed, a notebook does not exist, an output is
            not an ``.ipynb`` under ``book/generated/``, or two entries share an output.
    """
    if not path.is_file():
        raise BookBuildError(f"{path}: missing (it lists the notebooks the book runs)")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BookBuildError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise BookBuildError(f"{path}: expected a non-empty JSON list of entries")
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{path.name} entry {i}"
        if not isinstance(entry, dict) or not {"notebook", "output"} <= entry.keys():
            raise BookBuildError(f"{where}: needs 'notebook' and 'output' keys, got {entry!r}")
        unknown = set(entry) - {"notebook", "output", "parameters", "title"}
        if unknown:
            raise BookBuildError(f"{where}: unknown keys {sorted(unknown)}")
        notebook, output = ROOT / entry["notebook"], (ROOT / entry["output"]).resolve()
        if not notebook.is_file():
            raise BookBuildError(f"{where}: notebook {entry['notebook']} does not exist")
        if output.suffix != ".ipynb" or output.parent != GENERATED.resolve():
            raise BookBuildError(f"{where}: output {entry['output']} must be book/generated/<name>.ipynb")
        if entry["output"] in seen:
            raise BookBuildError(f"{where}: output {entry['output']} appears twice")
        seen.add(entry["output"])
        params = entry.setdefault("parameters", {})
        if not isinstance(params, dict):
            raise BookBuildError(f"{where}: 'parameters' must be an object, got {params!r}")
    return entries


def retitle(nb_path: Path, title: str) -> None:
    """Replace the first level-1 heading of the first Markdown cell that has one by ``title``."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        new, n = re.subn(r"^# .*$", f"# {title}", cell.source, count=1, flags=re.M)
        if n:
            cell.source = new
            break
    else:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {title}"))
    nbformat.write(nb, nb_path)


def _up_to_date(entry: dict) -> bool:
    """Whether the output exists, is newer than its notebook and was run with the same parameters."""
    out, src = ROOT / entry["output"], ROOT / entry["notebook"]
    if not out.is_file() or out.stat().st_mtime < src.stat().st_mtime:
        return False
    try:
        meta = json.loads(out.read_text(encoding="utf-8"))["metadata"]["papermill"]["parameters"]
    except (ValueError, KeyError):
        return False
    return meta == entry["parameters"]


def run_notebooks(only: list[str] | None = None, reuse: bool = False, params: Path = PARAMS) -> int:
    """Execute the entries of ``scripts/notebook_params.json`` with papermill, in order.

    Args:
        only: output names (``03_training_compared``) or notebook names (``03_training``) to run;
            default ``None`` runs all.
        reuse: skip entries whose output is newer than the notebook and has the same parameters
            (a quick re-render during writing; default ``False``, everything re-runs).
        params: the list of runs (default ``scripts/notebook_params.json``); another file builds
            the same pages with other parameters (e.g. ``smoke: false`` and KiTS19 on a GPU).

    Returns:
        0 when every selected notebook ran, 1 when one failed (the rest still run).
    """
    import papermill

    entries = load_entries(params)
    for stale in GENERATED.glob(".*.running.ipynb"):  # left by a run that was killed
        stale.unlink()
    if only:
        entries = [e for e in entries if Path(e["output"]).stem in only or Path(e["notebook"]).stem in only]
        if not entries:
            raise BookBuildError(f"--only {only}: matches no entry of {params}")
    GENERATED.mkdir(parents=True, exist_ok=True)
    failures = []
    for entry in entries:
        out = ROOT / entry["output"]
        if reuse and _up_to_date(entry):
            print(f"  = {entry['output']} (up to date)", flush=True)
            continue
        tmp = out.with_name(f".{out.stem}.running.ipynb")
        start = time.perf_counter()
        print(f"  > {entry['notebook']} -> {entry['output']} {json.dumps(entry['parameters'])}", flush=True)
        try:
            papermill.execute_notebook(
                str(ROOT / entry["notebook"]),
                str(tmp),
                parameters=entry["parameters"],
                kernel_name="python3",
                cwd=str(ROOT),
                progress_bar=False,
                log_output=False,
            )
        except Exception as exc:  # papermill raises PapermillExecutionError and kernel errors
            FAILED.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                os.replace(tmp, FAILED / out.name)
            print(
                f"  ! {entry['notebook']} FAILED after {time.perf_counter() - start:.0f} s: "
                f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}\n"
                f"    executed copy with the error: {FAILED / out.name}",
                file=sys.stderr,
                flush=True,
            )
            failures.append(entry["output"])
            continue
        if entry.get("title"):
            retitle(tmp, entry["title"])
        os.replace(tmp, out)
        print(f"    done in {time.perf_counter() - start:.0f} s", flush=True)
    if failures:
        print(f"error: {len(failures)} notebook(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# render
# --------------------------------------------------------------------------------------------
def _fmt(value) -> str:
    """Format one table cell: floats with 4 significant digits, None/NaN as an em dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return " × ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Render ``rows`` (dicts) as a GitHub/MyST pipe table; columns default to first-seen key order."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _read_csv(path: Path) -> tuple[list[dict], list[str]]:
    """Read a CSV into dicts (numbers as float, ``True``/``False`` as bool) and its ``# `` comment lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    comments = [ln[1:].strip() for ln in lines if ln.startswith("#")]
    rows = list(csv.DictReader(ln for ln in lines if ln.strip() and not ln.startswith("#")))
    for row in rows:
        for k, v in row.items():
            if v in ("True", "False"):
                row[k] = v == "True"
                continue
            try:
                row[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows, comments


#: order of the fragments by area (the pipeline's order); areas not listed follow alphabetically
FRAGMENT_ORDER = (
    "data",
    "phantoms",
    "models",
    "training",
    "train",
    "pipeline",
    "reference",
    "download",
    "performance",
    "notebooks",
    "book",
)


def render_fragments(kind: str) -> str:
    """Concatenate ``book/fragments/<kind>-<area>.md`` in :data:`FRAGMENT_ORDER` (a note when there is none)."""
    parts = []
    rank = {area: i for i, area in enumerate(FRAGMENT_ORDER)}
    paths = sorted(
        FRAGMENTS.glob(f"{kind}-*.md"), key=lambda p: (rank.get(p.stem.split("-", 1)[1], len(rank)), p.name)
    )
    for path in paths:
        text = path.read_text(encoding="utf-8").strip()
        if text:
            parts.append(f"<!-- from book/fragments/{path.name} -->\n\n{text}\n")
    if not parts:
        return f":::{{note}}\nNo `book/fragments/{kind}-*.md` fragment has been written yet.\n:::\n"
    return "\n".join(parts)


#: metadata keys of a benchmark JSON shown above its tables (whichever are present)
BENCH_META = (
    "device",
    "torch",
    "torch_version",
    "cuda",
    "commit",
    "python",
    "date",
    "timestamp",
    "host",
    "threads",
    "num_threads",
    "note",
)


#: how a row's column is labelled in the tables, where its bare name would mislead: the smoke row's
#: ``torch_threads`` is the benchmarking process's, not the threads the smoke run trains on (its preset's)
PERF_ROW_LABELS = {"torch_threads": "threads of the benchmarking process"}

#: how a metadata key is labelled above the tables, where its bare name would mislead
BENCH_META_LABELS = {
    "threads": "threads of the benchmarking process (torch's default; each row's own are in its table)",
    "num_threads": "threads of the benchmarking process (torch's default; each row's own are in its table)",
}


def split_constant_columns(rows: list[dict]) -> tuple[list[dict], dict]:
    """Move the columns that have one value in every row out of the table.

    Returns:
        ``(rows without those columns, {column: its value})``; a table of one row is left whole.
    """
    if len(rows) < 2:
        return rows, {}
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    constant = {
        c: rows[0].get(c)
        for c in columns
        if all(c in r for r in rows) and all(_fmt(r[c]) == _fmt(rows[0][c]) for r in rows)
    }
    if len(constant) == len(columns):  # nothing would be left: keep the table as it is
        return rows, {}
    return [{k: v for k, v in r.items() if k not in constant} for r in rows], constant


def _bench_sections(data) -> tuple[dict, dict[str, list[dict]]]:
    """Split a benchmark JSON into (metadata, {benchmark name: rows}).

    Accepted shapes: a list of flat result dicts, each naming its ``benchmark`` (what
    ``kitsmsan bench --json`` writes), or a dict with metadata keys and the results under
    ``results`` (a list like the former, or a dict ``name -> rows``).
    """
    meta: dict = {}
    if isinstance(data, dict):
        meta = {k: data[k] for k in BENCH_META if k in data}
        env = data.get("env") or data.get("environment")
        if isinstance(env, dict):
            meta.update({k: env[k] for k in BENCH_META if k in env and k not in meta})
        data = data.get("results", [])
    sections: dict[str, list[dict]] = {}
    if isinstance(data, dict):
        for name, rows in data.items():
            rows = rows if isinstance(rows, list) else [rows]
            sections[str(name)] = [r for r in rows if isinstance(r, dict)]
    elif isinstance(data, list):
        for row in data:
            if isinstance(row, dict):
                sections.setdefault(str(row.get("benchmark", "results")), []).append(
                    {k: v for k, v in row.items() if k != "benchmark"}
                )
    return meta, {k: v for k, v in sections.items() if v}


#: columns of the benchmark rows that the book's tables leave out (they stay in the JSON files)
PERF_HIDDEN = (
    "params",
    "isolated",
    "s_per_it",
    "run_iters",
    "mem_measure",
    "loss_finite",
    "warmup",
    "iters",
    "precision",
    "channels_last",
    "compile",
    "write_nifti_s",
    "batches",
    "cudnn_benchmark",
    "tf32_conv",
    "tf32_matmul",
    "command",
    "onednn_isa",
    "id",
)
#: a datasheet figure, quoted for scale only (NVIDIA H100 SXM5, dense bf16 tensor-core peak)
H100_BF16_PEAK_TFLOPS = 989.4


def _bench_files() -> list[tuple[Path, dict, dict[str, list[dict]]]]:
    """``(path, metadata, sections)`` of every ``book/data/bench_*.json`` (names the file if unreadable)."""
    out = []
    for path in sorted(DATA.glob("bench_*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BookBuildError(f"{path}: not valid JSON ({exc})") from None
        meta, sections = _bench_sections(data)
        out.append((path, meta, sections))
    return out


def _is_gpu(meta: dict, path: Path) -> bool:
    named_gpu = "gpu" in path.name or "cuda" in path.name
    return named_gpu or (bool(meta.get("cuda")) and not str(meta.get("device", "")).startswith("CPU"))


def _targets_table(files) -> str:
    """Every target of :data:`kitsmsan.bench.TARGETS`: measured where a file has it, else *pending*."""
    from kitsmsan.bench import TARGETS

    rows = []
    for spec in TARGETS:
        found = [
            (path, r)
            for path, _meta, sections in files
            for r in sections.get("targets", [])
            if r.get("id") == spec["id"] or (not r.get("id") and r.get("target") == spec["target"])
        ]
        sign = "≥" if spec["higher"] else "≤"
        base = {"target": spec["target"], "required": f"{sign} {_fmt(spec['required'])}"}
        if not found:
            rows.append(
                {
                    **base,
                    "measured": "*pending*",
                    "met": "—",
                    "measured on": f"not yet: needs {spec['needs']}",
                }
            )
        for path, r in found:
            extra = f" ({r['network']})" if r.get("network") else ""
            rows.append(
                {
                    **base,
                    "measured": f"{_fmt(r.get('measured'))}{extra}",
                    "met": _fmt(r.get("met")),
                    "measured on": f"{_fmt(r.get('device'))}, commit {_fmt(r.get('commit'))} (`{path.name}`)",
                }
            )
    return markdown_table(rows)


def _budget_text(files) -> str:
    """What the 12-hour target asks of a GPU, counted at build time (no measurement involved)."""
    from kitsmsan.bench import SCHEDULE_TARGET_H, schedule_budget

    b = schedule_budget()
    per = [
        {"network": k.removeprefix("tflop_per_iter_"), "TFLOP per iteration": v}
        for k, v in b.items()
        if k.startswith("tflop_per_iter_")
    ]
    need = b["required_tflop_per_s"]
    text = [
        f"One training iteration at the paper's batch ({b['input'].replace('x', ' × ')}) costs, counted "
        "convolution by convolution on PyTorch's `meta` device (forward and backward; "
        "`kitsmsan.bench.schedule_budget`):\n\n",
        markdown_table(per),
        f"\nFive networks × {b['iters_per_network']:,} iterations is **{_fmt(b['schedule_eflop'])} EFLOP**. To fit "
        f"in {SCHEDULE_TARGET_H:g} hours a GPU must therefore *sustain* **{_fmt(need)} TFLOP/s** of convolution "
        "arithmetic for the whole schedule, before any element-wise work (normalisation, activations, the "
        f"optimiser) is counted. For scale only: NVIDIA's datasheet peak for an H100 SXM in dense bf16 is "
        f"{H100_BF16_PEAK_TFLOPS:g} TFLOP/s, so the target asks for {need / H100_BF16_PEAK_TFLOPS:.0%} of peak "
        "throughput, sustained. This is arithmetic, not a measurement; the step rows' `tflop_per_s` column "
        "(the same count times the measured iterations per second) says what a device actually achieves.\n",
    ]
    gpu = [
        r
        for path, meta, sections in files
        if _is_gpu(meta, path)
        for r in sections.get("step", [])
        if r.get("tflop_per_s") and r.get("input") == b["input"]
    ]
    if gpu:
        best = max(gpu, key=lambda r: r["tflop_per_s"])
        text.append(
            f"\nThe best measured GPU step reached {_fmt(best['tflop_per_s'])} TFLOP/s "
            f"({best['variant']}, {best['mode']}, {_fmt(best.get('device'))}).\n"
        )
    return "".join(text)


#: footnote marks, one per distinct oneDNN ISA note of a table, in this order
FOOTNOTE_MARKS = ("†", "‡", "§", "¶")


def _bench_section_md(name: str, rows: list[dict]) -> str:
    """One benchmark's rows as a table; each distinct oneDNN ISA fallback becomes a footnote with its
    own mark (:data:`FOOTNOTE_MARKS`), not a column."""
    isa = sorted({str(r["onednn_isa"]) for r in rows if r.get("onednn_isa")})
    mark = {
        text: FOOTNOTE_MARKS[i % len(FOOTNOTE_MARKS)] * (1 + i // len(FOOTNOTE_MARKS))
        for i, text in enumerate(isa)
    }
    rows = [
        {PERF_ROW_LABELS.get(k, k): v for k, v in r.items() if k not in PERF_HIDDEN}
        | (
            {"mode": f"{r['mode']} {mark[str(r['onednn_isa'])]}"}
            if r.get("onednn_isa") and "mode" in r
            else {}
        )
        for r in rows
    ]
    if len(rows) == 1:  # one result: a two-column key / value table reads better
        return f"**{name}**\n\n" + markdown_table([{"quantity": k, "value": v} for k, v in rows[0].items()])
    rows, constant = split_constant_columns(rows)
    same = (
        "*In every row: " + "; ".join(f"{k} = {_fmt(v)}" for k, v in constant.items()) + ".*\n\n"
        if constant
        else ""
    )
    notes = "".join(f"\n{mark[text]} run with `ONEDNN_MAX_CPU_ISA` = {text}\n" for text in isa)
    return f"**{name}**\n\n{same}{markdown_table(rows)}{notes}"


def render_performance() -> str:
    """The Performance page's generated part: the targets (measured or pending), what the schedule
    target asks of a GPU, then every ``book/data/bench_*.json`` as tables with its provenance."""
    files = _bench_files()
    out = [
        "### Targets\n",
        "The book's speed targets (the paper states none), each with the measurement that speaks to "
        "it. *Pending* means no file below has that measurement yet; nothing is filled in by hand.\n",
        _targets_table(files),
        "### What the 12-hour schedule asks of a GPU\n",
        _budget_text(files),
    ]
    if not any(_is_gpu(meta, path) for path, meta, _ in files):
        out.append(
            ":::{important}\n**GPU: pending.** No GPU measurement has been recorded yet, so this page "
            "shows none — in particular no measured time for the paper's schedule on a GPU. "
            "`scripts/gpu_bench.sh` on a GPU machine writes `book/data/bench_gpu.json`, which fills it in.\n:::\n"
        )
    if not files:
        out.append(
            ":::{note}\nNo benchmark has been recorded yet. `kitsmsan bench all --json "
            "book/data/bench_cpu.json` writes the file this page shows.\n:::\n"
        )
    for path, meta, sections in files:
        out.append(f"### Measurements: `{path.name}`\n")
        if meta:
            out.append(
                "\n".join(f"- **{BENCH_META_LABELS.get(k, k)}**: {_fmt(v)}" for k, v in meta.items()) + "\n"
            )
        if not sections:
            out.append(f"`{path.name}` holds no results.\n")
        for name, rows in sections.items():
            if name in ("targets", "budget"):  # shown above
                continue
            out.append(_bench_section_md(name, rows))
        out.append(
            f"*Columns left out here ({', '.join(c for c in PERF_HIDDEN if c != 'id')}) are in "
            f"`book/data/{path.name}`.*\n"
        )
    return "\n".join(out)


def _numeric_summary(rows: list[dict]) -> list[dict]:
    """Per numeric column: cases, mean, median, min, max (NaN skipped); per yes/no column: how many yes."""
    summary = []
    for col in rows[0].keys():
        flags = [r[col] for r in rows if isinstance(r.get(col), bool)]
        if len(flags) == len(rows):
            summary.append({"quantity": col, "cases": len(flags), "mean": f"{sum(flags)} yes"})
            continue
        vals = [r[col] for r in rows if isinstance(r.get(col), float) and not math.isnan(r[col])]
        if not vals:
            continue
        vals.sort()
        mid = len(vals) // 2
        median = vals[mid] if len(vals) % 2 else 0.5 * (vals[mid - 1] + vals[mid])
        summary.append(
            {
                "quantity": col,
                "cases": len(vals),
                "mean": sum(vals) / len(vals),
                "median": median,
                "min": vals[0],
                "max": vals[-1],
            }
        )
    return summary


#: the lowest kidney Dice of the MSAN paper's Table 1 (3D U-Net), in percent
PAPER_LOWEST_KIDNEY_DICE = 89.70


def _ceiling_finding(rows: list[dict]) -> str:
    """One admonition stating the k = 1 / k = 2 kidney ceilings computed from the rows (if present)."""

    def mean(col):
        vals = [r[col] for r in rows if isinstance(r.get(col), float) and not math.isnan(r[col])]
        return 100 * sum(vals) / len(vals) if vals else None

    k1, k2 = mean("kidney_dice_k1"), mean("kidney_dice_k2")
    if k1 is None or k2 is None:
        return ""
    deleted = sum(1 for r in rows if r.get("kidney_deleted_k1") is True)
    verdict = "below" if k1 < PAPER_LOWEST_KIDNEY_DICE else "not below"
    return (
        f":::{{important}}\nComputed from this file: keeping **one** component leaves even a perfect "
        f"prediction a mean kidney Dice of **{k1:.2f}** over these {len(rows)} cases (a whole kidney is "
        f"deleted in {deleted} of them); keeping **two** leaves {k2:.2f}. The k = 1 ceiling is {verdict} "
        f"the lowest kidney Dice of the paper's Table 1 ({PAPER_LOWEST_KIDNEY_DICE:.2f}, 3D U-Net).\n:::\n"
    )


REAL_ANATOMY_TABLES = {
    "ceiling": ("postprocess_ceiling.csv", "kitsmsan stats --labels-only --ceiling --csv"),
    "stats": ("kits19_label_stats.csv", "kitsmsan stats --labels-only --csv"),
}


def render_real_anatomy(which: str) -> str:
    """Render one CSV of :data:`REAL_ANATOMY_TABLES` (``ceiling`` or ``stats``): provenance, summary, all rows."""
    name, command = REAL_ANATOMY_TABLES[which]
    path = DATA / name
    if not path.is_file():
        return (
            f":::{{note}}\n`book/data/{name}` has not been generated yet (`{command}` on the KiTS19 "
            f"segmentations writes it; see the end of this page).\n:::\n"
        )
    rows, comments = _read_csv(path)
    if not rows:
        return f"`book/data/{name}` is empty.\n"
    source = "; ".join(comments) if comments else "no provenance line in the file"
    out = [f"*Source: `book/data/{name}`, {len(rows)} cases. {_fmt(source)}.*\n"]
    if which == "ceiling":
        out.append(_ceiling_finding(rows))
    out.append("Over all cases:\n\n" + markdown_table(_numeric_summary(rows)))
    out.append(f":::{{dropdown}} All {len(rows)} cases\n{markdown_table(rows)}:::\n")
    return "\n".join(out)


#: The reliability tally, the only one in the book: (kind, what goes wrong, where it is handled, tests
#: that cause it on purpose). Each test is a pytest node id; the book counts its collected cases
#: (parametrisations) at build time and links it with the {test} role, which fails the build when the
#: test does not exist.
RELIABILITY_TALLY: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "Bad input",
        "Damaged case folder: missing imaging, truncated or corrupt gzip, not a NIfTI, 2-D/4-D array, image/label shape mismatch, labels outside {0,1,2} or non-integer, NaN/inf voxels",
        "`kits19.load_case` → `_open_nifti`, `_read_array`, `check_label_values`, `check_image_values`",
        (
            "tests/test_kits19.py::test_bad_case_raises_named_error",
            "tests/test_kits19.py::test_labels_only_folder",
            "tests/test_kits19.py::test_unlabelled_case_has_no_label",
        ),
    ),
    (
        "Bad input",
        "The same damage met by the commands that read cases (`prepare`, `predict`, `stats`): exit 2, one line, nothing written",
        "`prepare_cache`, `commands/predict.run`, `stats.dataset_statistics`; `cli.main` prints the line",
        (
            "tests/test_cli_errors.py::test_bad_input_gives_one_line_error_and_changes_nothing",
            "tests/test_cli_errors.py::test_bad_input_in_a_subprocess",
        ),
    ),
    (
        "Bad input",
        "Empty, missing or wrong data folder; malformed or unknown case id; bad case range",
        "`kits19.list_cases`, `case_number`, `case_id`, `kits19.parse_case_range`, `dataset.split_cases`",
        (
            "tests/test_kits19.py::test_list_cases_empty_and_wrong_folder",
            "tests/test_kits19.py::test_unknown_case_folder",
            "tests/test_kits19.py::test_case_number_malformed",
            "tests/test_kits19.py::test_case_id_bad_number",
            "tests/test_dataset.py::test_parse_case_range_errors",
            "tests/test_dataset.py::test_split_cases_custom_and_missing",
            "tests/test_preprocess.py::test_prepare_bad_inputs_write_nothing",
            "tests/test_inference.py::test_predict_cli_errors",
        ),
    ),
    (
        "Bad input",
        "Bad arguments to the writers and readers (spacing, shapes, cache index, windows)",
        "`kits19.save_case`, `save_prediction`, `kits_affine`, `preprocess.load_cache_index`, `SliceWindowDataset`",
        (
            "tests/test_kits19.py::test_save_case_rejects_bad_input_and_writes_nothing",
            "tests/test_kits19.py::test_kits_affine_bad_spacing",
            "tests/test_kits19.py::test_save_prediction",
            "tests/test_preprocess.py::test_load_cache_index_errors",
            "tests/test_dataset.py::test_bad_arguments",
            "tests/test_dataset.py::test_window_must_fit_the_cache",
        ),
    ),
    (
        "Bad input",
        "Configuration: unknown key, wrong type, negative or zero count, unknown preset, bad JSON, `--set` without `=`",
        "`TrainConfig.__post_init__` / `from_preset` / `replace`, `parse_overrides`",
        (
            "tests/test_train_config.py::test_bad_settings_raise_config_error_naming_key_and_value",
            "tests/test_train_config.py::test_direct_construction_is_validated_too",
            "tests/test_train_config.py::test_unknown_preset_and_bad_json",
            "tests/test_train_config.py::test_replace_validates",
            "tests/test_train_config.py::test_parse_overrides",
            "tests/test_train.py::test_cli_train_and_bad_set",
        ),
    ),
    (
        "Bad input",
        "Unknown model name or override (models, train)",
        "`models.registry.build_model`, `ModelConfig.from_dict`",
        (
            "tests/test_models.py::test_build_model_rejects_bad_names_and_overrides",
            "tests/test_models.py::test_config_from_dict_names_unknown_key",
            "tests/test_models.py::test_msan_requires_a_model_config",
        ),
    ),
    (
        "Bad input",
        "A model input of the wrong shape, dtype or type; a volume that is not 3-D; bad inference arguments",
        "`MSAN.check_input`, `inference.predict_case`",
        (
            "tests/test_models.py::test_rejected_shapes_raise_value_error_naming_the_shape",
            "tests/test_models.py::test_rejects_integer_input_and_non_tensors",
            "tests/test_cli_errors.py::test_model_input_of_the_wrong_shape",
            "tests/test_cli_errors.py::test_predict_case_rejects_a_volume_that_is_not_3d",
            "tests/test_inference.py::test_bad_arguments",
            "tests/test_inference.py::test_bad_model_output_and_models",
        ),
    ),
    (
        "Bad input",
        "A checkpoint of another variant (architecture mismatch)",
        "`checkpoint.load_model_state`",
        (
            "tests/test_checkpoint.py::test_architecture_mismatch_names_both_variants",
            "tests/test_train.py::test_resume_with_a_checkpoint_of_another_variant_is_refused",
        ),
    ),
    (
        "Bad input",
        "A corrupt, truncated, empty or foreign checkpoint; a run folder without checkpoints",
        "`checkpoint.load_checkpoint`, `resolve_checkpoint`",
        (
            "tests/test_checkpoint.py::test_corrupt_checkpoint_raises_checkpoint_error_naming_the_file",
            "tests/test_checkpoint.py::test_not_a_kitsmsan_checkpoint",
        ),
    ),
    (
        "Bad input",
        "A prediction folder missing cases (evaluate, ensemble); bad label maps and probabilities",
        "`metrics.evaluate_folder`, `commands/ensemble.run`, `ensemble.majority_vote`, `average_probabilities`, `metrics.kits_dice`, `postprocess.keep_largest_components`",
        (
            "tests/test_metrics.py::test_evaluate_folder_missing_is_named",
            "tests/test_metrics.py::test_evaluate_cli_missing_case",
            "tests/test_metrics.py::test_kits_dice_bad_input",
            "tests/test_metrics.py::test_dice_table_rejects_incomplete_rows",
            "tests/test_ensemble.py::test_ensemble_cli_missing_inputs",
            "tests/test_ensemble.py::test_vote_validation",
            "tests/test_ensemble.py::test_average_validation",
            "tests/test_postprocess.py::test_bad_k",
            "tests/test_postprocess.py::test_bad_label",
            "tests/test_reliability.py::test_probability_file_of_the_wrong_kind_in_ensemble",
        ),
    ),
    (
        "Bad input",
        "An output folder that is real data: `prepare --cache` = the data folder or another KiTS19 copy, `phantoms --out` = a real data folder: refused, the source cases are kept",
        "`preprocess._refuse_data_folder_as_cache`, `phantom._refuse_foreign_cases`",
        (
            "tests/test_reliability.py::test_prepare_refuses_a_cache_that_is_a_data_folder",
            "tests/test_reliability.py::test_phantoms_refuse_to_overwrite_real_cases",
            "tests/test_reliability.py::test_phantoms_rerun_into_its_own_folder_is_allowed",
        ),
    ),
    (
        "Bad input",
        "A NaN loss during training: stop with a clear message, keep the last good checkpoint",
        "`train.loop.Trainer.fit` (non-finite loss → `TrainingError`)",
        ("tests/test_train.py::test_nan_loss_stops_and_keeps_the_last_good_checkpoint",),
    ),
    (
        "Disk full",
        "ENOSPC while preparing, checkpointing, writing a case, downloading",
        "`prepare_case`, `save_checkpoint`, `utils.io.atomic_write`, `download.fetch_to_part`",
        (
            "tests/test_preprocess.py::test_disk_full_while_preparing",
            "tests/test_checkpoint.py::test_disk_full_while_checkpointing_keeps_the_previous_file",
            "tests/test_kits19.py::test_disk_full_leaves_old_file",
            "tests/test_download.py::test_disk_full_fails_cleanly_and_resumes",
        ),
    ),
    (
        "Disk full",
        "ENOSPC in every command that writes (prepare, predict, evaluate, ensemble, phantoms, models, stats): one line, nothing left; predict half-way keeps finished cases, re-run completes",
        "`metrics.write_results`, `commands/{predict,ensemble,phantoms,models,stats}.run`, `prepare_cache`",
        (
            "tests/test_reliability.py::test_disk_full_gives_one_line_error_and_changes_nothing",
            "tests/test_reliability.py::test_disk_full_half_way_through_predict_keeps_finished_cases_and_a_rerun_completes",
        ),
    ),
    (
        "Crash",
        "kill -9 of training at random points, then resume: final weights equal an uninterrupted run's",
        "`train.loop.resume`, `checkpoint.make_checkpoint` (RNG, optimiser, scheduler state)",
        (
            "tests/test_train.py::test_kill_9_at_random_points_then_resume_gives_identical_weights",
            "tests/test_train.py::test_resume_equals_uninterrupted_run",
        ),
    ),
    (
        "Crash",
        "Killed during a checkpoint write: the last good checkpoint still loads",
        "`save_checkpoint` (atomic), `remove_partial_writes`",
        ("tests/test_checkpoint.py::test_kill_during_checkpoint_write_leaves_the_last_good_one",),
    ),
    (
        "Crash",
        "Killed during prepare; a source case changed since: re-run equals a clean run",
        "`prepare_case` (temp folder + rename), `prepare_cache` (stale temp removal, `_up_to_date`)",
        (
            "tests/test_preprocess.py::test_killed_prepare_resumes_to_a_clean_result",
            "tests/test_preprocess.py::test_interrupted_case_is_not_complete",
            "tests/test_preprocess.py::test_prepare_replaces_a_changed_case",
        ),
    ),
    (
        "Crash",
        "Killed or Ctrl-C during download; killed before the rename; stale or corrupt files: re-run equals a clean run",
        "`download._process_item`, `fetch_to_part` (`.part` files, Range resume, verification before `os.replace`)",
        (
            "tests/test_download.py::test_kill_during_download_then_rerun_equals_clean",
            "tests/test_download.py::test_ctrl_c_stops_cleanly_and_keeps_partials",
            "tests/test_download.py::test_complete_part_from_a_killed_run_is_placed",
            "tests/test_download.py::test_stale_part_is_discarded_and_refetched",
        ),
    ),
    (
        "Crash",
        "kill -9 during predict: re-run completes, predictions equal a clean run's",
        "`save_prediction` (atomic), `metrics.list_predictions`",
        ("tests/test_reliability.py::test_kill_9_during_predict_then_rerun_equals_a_clean_run",),
    ),
    (
        "Network",
        "Dropped connections, server ignoring Range, 5xx then OK, persistent 5xx, 404, refused, endless drops",
        "`download.make_session` (urllib3 `Retry`), `fetch_to_part` (Range resume, bounded passes)",
        (
            "tests/test_download.py::test_resume_after_dropped_connection",
            "tests/test_download.py::test_server_ignoring_range_restarts_cleanly",
            "tests/test_download.py::test_500_then_ok_is_retried_by_urllib3",
            "tests/test_download.py::test_persistent_500_fails_naming_url_and_file",
            "tests/test_download.py::test_missing_file_404",
            "tests/test_download.py::test_connection_refused",
            "tests/test_download.py::test_endless_drops_give_up_and_keep_the_partial",
        ),
    ),
    (
        "Network",
        "Garbage imaging, bad segmentations, wrong hash or size",
        "`download.verify_file`, `verify_nifti`, `load_manifest` (gzip CRC, 3-D NIfTI, label values, sha256)",
        (
            "tests/test_download.py::test_garbage_imaging_is_refused",
            "tests/test_download.py::test_bad_segmentation_is_refused",
            "tests/test_download.py::test_manifest_hash_checked",
        ),
    ),
    (
        "Untrusted file",
        "A checkpoint whose pickle would create a file: refused, runs nothing (load_checkpoint, train --resume, predict --run, inference.load_model); control shows the payload is live",
        "`load_checkpoint` (`torch.load(weights_only=True)`)",
        (
            "tests/test_checkpoint.py::test_malicious_pickle_is_refused_and_runs_nothing",
            "tests/test_train.py::test_resume_refuses_a_malicious_checkpoint_and_runs_nothing",
            "tests/test_reliability.py::test_malicious_checkpoint_through_predict_is_refused_and_runs_nothing",
            "tests/test_reliability.py::test_malicious_checkpoint_through_load_model_is_refused",
            "tests/test_reliability.py::test_the_malicious_checkpoint_is_live",
        ),
    ),
    (
        "Untrusted file",
        "A probability file (.npy) carrying a pickle, fed to `ensemble --method average`",
        "`commands/ensemble._load_probs` (`allow_pickle=False`)",
        ("tests/test_reliability.py::test_malicious_probability_file_in_ensemble_is_refused",),
    ),
    (
        "Untrusted file",
        "Paths from metadata or the command line that would write outside the output folder (`..`, absolute, symlinks, hostile case ids, manifests, kits.json, Content-Disposition, hostile folder names)",
        "`utils.io.safe_join`, `atomic_write` (replaces a link, never follows it), `kits19._CASE_RE`, `download.validate_cases`",
        (
            "tests/test_paths.py::test_escapes_are_refused",
            "tests/test_paths.py::test_prefix_sibling_is_not_inside",
            "tests/test_paths.py::test_symlink_pointing_out_is_refused",
            "tests/test_kits19.py::test_save_case_refuses_path_escape",
            "tests/test_download.py::test_bad_case_ids_refused_before_anything",
            "tests/test_download.py::test_kits_json_with_hostile_case_id_is_refused",
            "tests/test_download.py::test_manifest_path_traversal_refused",
            "tests/test_download.py::test_case_folder_symlinked_outside_refused",
            "tests/test_reliability.py::test_output_file_symlinked_outside_is_refused_by_predict",
            "tests/test_reliability.py::test_output_file_symlinked_outside_is_replaced_not_followed_by_evaluate",
            "tests/test_reliability.py::test_hostile_folder_names_in_the_data_folder_write_nothing_outside",
            "tests/test_reliability.py::test_phantoms_out_writes_only_inside_it",
        ),
    ),
    (
        "Data loss",
        "An output folder that is not the command's own (unrelated files, a data folder, another "
        "command's output, an unrelated index.json or summary.json), for every command that writes: refused; "
        "with --overwrite every file found is kept; a bad local data file is replaced only with --replace-bad "
        "and kept beside it",
        "`utils.io.claim_output_dir`, `atomic_write`, `download` (`--replace-bad`)",
        (
            "tests/test_output_rule.py::test_a_foreign_output_folder_is_refused",
            "tests/test_output_rule.py::test_overwrite_runs_and_keeps_every_file_it_found",
            "tests/test_output_rule.py::test_a_rerun_into_its_own_folder_is_accepted",
            "tests/test_output_rule.py::test_an_unrelated_index_json_in_a_cache_folder_is_not_overwritten",
            "tests/test_output_rule.py::test_a_training_run_folder_is_not_an_evaluation_folder",
            "tests/test_output_rule.py::test_atomic_write_keeps_a_foreign_file_beside_its_replacement",
            "tests/test_download.py::test_corrupt_file_in_place_is_replaced_only_with_the_flag",
            "tests/test_download.py::test_cli_download_refuses_a_bad_local_file_without_the_flag",
        ),
    ),
    (
        "Hang",
        "A download server whose Content-Length is too large, one that trickles bytes, one that goes "
        "silent, an endless chunked body: each ends within its retry budget, stall timeout or size bound",
        "`download.fetch_to_part` (stall timeout, size bound, retry budget)",
        (
            "tests/test_download.py::test_content_length_larger_than_the_body_spends_the_retry_budget",
            "tests/test_download.py::test_a_trickling_server_is_a_stall",
            "tests/test_download.py::test_a_silent_server_is_a_stall",
            "tests/test_download.py::test_an_endless_body_is_cut_at_the_ceiling",
            "tests/test_download.py::test_a_body_longer_than_the_manifest_size_is_cut_there",
        ),
    ),
    (
        "Silently wrong",
        "A resume that changes a setting, two writers in one run folder, a stale lock, a "
        "flipped bit or NaN in a checkpoint, a segmentation or prediction on another grid, a folder given "
        "twice to ensemble, an empty variant selection: refused, named",
        "`train.loop` (resume rules, run lock), `checkpoint.load_checkpoint` (SHA-256, finite weights), `kits19`, `metrics`, `ensemble`",
        (
            "tests/test_runlock.py::test_resume_rule_per_setting",
            "tests/test_runlock.py::test_every_setting_has_a_resume_rule",
            "tests/test_runlock.py::test_a_second_writer_is_refused_with_one_line",
            "tests/test_runlock.py::test_the_lock_of_a_killed_process_is_stale",
            "tests/test_checkpoint.py::test_a_flipped_bit_in_a_weight_is_refused",
            "tests/test_checkpoint.py::test_non_finite_weights_are_refused",
            "tests/test_kits19.py::test_segmentation_affine_must_match_the_imaging",
            "tests/test_kits19.py::test_evaluate_refuses_a_prediction_on_another_grid",
            "tests/test_output_rule.py::test_ensemble_refuses_a_folder_given_twice",
            "tests/test_reliability.py::test_probability_file_with_nan_is_named_in_ensemble",
            "tests/test_io.py::test_reproduce_with_an_empty_variant_list_is_an_error",
        ),
    ),
    (
        "Traceback",
        "Hostile NIfTI headers (huge, zero-length, complex, RGB, pixdim 0), malformed checkpoint "
        "values, settings past their bounds, huge case ranges, a torch error on a full disk, out of memory: one "
        "line; fuzzed headers, settings and ranges (hypothesis) give no traceback and change nothing",
        "`kits19._open_nifti`, `checkpoint.load_checkpoint`, `TrainConfig`, `cli.main`",
        (
            "tests/test_kits19.py::test_hostile_headers_are_refused_before_reading",
            "tests/test_kits19.py::test_rgb_imaging_is_refused_naming_the_file",
            "tests/test_checkpoint.py::test_malformed_values_are_refused_naming_the_file",
            "tests/test_checkpoint.py::test_torch_runtime_error_while_writing_is_a_training_error",
            "tests/test_io.py::test_a_refused_setting_leaves_no_run_folder",
            "tests/test_io.py::test_expected_machine_failures_are_one_line",
            "tests/test_fuzz.py::test_hostile_headers_give_one_line_and_change_nothing",
            "tests/test_fuzz.py::test_hostile_settings_are_refused_or_usable",
            "tests/test_fuzz.py::test_hostile_case_ranges",
        ),
    ),
)


def collect_counts(node_ids: list[str]) -> dict[str, int] | None:
    """Number of test cases pytest collects for each node id (``None`` when collection fails)."""
    import subprocess

    files = sorted({n.split("::")[0] for n in node_ids if (ROOT / n.split("::")[0]).is_file()})
    if not files:
        return None
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    items = [ln.strip() for ln in proc.stdout.splitlines() if "::" in ln]
    if not items:
        print(
            f"  warning: pytest --collect-only found no tests ({proc.stderr.strip()[-300:]})", file=sys.stderr
        )
        return None
    return {n: sum(1 for it in items if it == n or it.startswith(n + "[")) for n in node_ids}


def render_reliability_tally() -> str:
    """The one tally of the Reliability page: what goes wrong, where it is handled, how many cases the
    tests try (collected by ``pytest --collect-only`` at every build) and which tests (checked links).
    No count on the page is written by hand."""
    node_ids = [n for _, _, _, tests in RELIABILITY_TALLY for n in tests]
    counts = collect_counts(node_ids)
    rows, total = [], 0
    for group, what, handled, tests in RELIABILITY_TALLY:
        if counts is None:
            cases = "?"
        else:
            n = sum(counts[t] for t in tests)
            total += n
            cases = str(n) if all(counts[t] for t in tests) else f"{n} (a listed test was not collected)"
        links = ", ".join(f"{{test}}`{t}`" for t in tests)
        rows.append(f"| {group} | {what} | {handled} | {cases} | {links} |")
    head = ["| Kind | What goes wrong | Handled in | Cases tried | Tests |", "|---|---|---|---:|---|"]
    if counts is not None:  # cases per kind; every listed test passes in CI, so none lost or hung
        kinds: dict[str, int] = {}
        for group, _, _, tests in RELIABILITY_TALLY:
            kinds[group] = kinds.get(group, 0) + sum(counts[t] for t in tests)
        head = [
            f"**{total} test cases in {len(node_ids)} tests**, counted by `pytest --collect-only` when the "
            "book was built. Cases per kind: "
            + ", ".join(f"{k} {n}" for k, n in kinds.items())
            + ". Every one passes in CI: **0 losses, 0 hangs**.",
            "",
            *head,
        ]
    foot = (
        "\n*Each bad-input test asserts the error type and that its message names the file or value; the "
        "crash, disk-full and writer tests also check that nothing was lost or left half-written: a snapshot "
        "of the folder tree (files, sizes, mtimes, empty folders) is the same before and after, or the "
        "re-run result equals a clean run's.*\n"
        if counts
        else "\n*(test cases could not be counted: pytest collection failed when the book was built)*\n"
    )
    return "\n".join(head + rows) + "\n" + foot


#: pipeline order of the API reference; modules not listed here follow in alphabetical order
API_ORDER = (
    "kitsmsan.data.kits19",
    "kitsmsan.data.phantom.anatomy",
    "kitsmsan.data.phantom.render",
    "kitsmsan.data.phantom.writer",
    "kitsmsan.data.phantom.label_conditioned",
    "kitsmsan.data.preprocess",
    "kitsmsan.data.dataset",
    "kitsmsan.data.stats",
    "kitsmsan.data.download",
    "kitsmsan.models.registry",
    "kitsmsan.models.msan",
    "kitsmsan.models.blocks",
    "kitsmsan.models.report",
    "kitsmsan.losses",
    "kitsmsan.train.config",
    "kitsmsan.train.step",
    "kitsmsan.train.loop",
    "kitsmsan.checkpoint",
    "kitsmsan.train.distributed",
    "kitsmsan.inference",
    "kitsmsan.postprocess",
    "kitsmsan.ensemble",
    "kitsmsan.metrics",
    "kitsmsan.reproduce",
    "kitsmsan.reference",
    "kitsmsan.bench.common",
    "kitsmsan.bench.data",
    "kitsmsan.bench.step",
    "kitsmsan.bench.budget",
    "kitsmsan.bench.inference",
    "kitsmsan.bench.smoke",
    "kitsmsan.bench.report",
    "kitsmsan.bench.memory",
    "kitsmsan.viz",
    "kitsmsan.widgets",
    "kitsmsan.errors",
    "kitsmsan.utils.io",
    "kitsmsan.utils.provenance",
    "kitsmsan.utils.amp",
    "kitsmsan.utils.device",
    "kitsmsan.utils.torch_state",
    "kitsmsan.utils.metrics_log",
    "kitsmsan.cli",
)
#: not in the API reference: per-command argument parsing (shown as the CLI reference instead)
API_SKIP = ("kitsmsan.commands", "kitsmsan.__main__")


def api_modules() -> list[str]:
    """Every module of the installed ``kitsmsan`` package, in :data:`API_ORDER`, packages left out."""
    import pkgutil

    import kitsmsan

    found = [m.name for m in pkgutil.walk_packages(kitsmsan.__path__, "kitsmsan.") if not m.ispkg]
    found = [m for m in found if not m.startswith(API_SKIP)]
    rank = {name: i for i, name in enumerate(API_ORDER)}
    return sorted(found, key=lambda m: (rank.get(m, len(rank)), m))


def render_api() -> str:
    """One section with an ``automodule`` directive per module of the package."""
    out = []
    for module in api_modules():
        # eval-rst: autodoc emits reStructuredText (docstrings use :class:`...` roles), which a
        # MyST directive would parse as Markdown
        out.append(f"## `{module}`\n\n```{{eval-rst}}\n.. automodule:: {module}\n   :members:\n```\n")
    return "\n".join(out)


def render_cli() -> str:
    """The ``--help`` text of ``kitsmsan`` and of each of its subcommands."""
    from kitsmsan.cli import build_parser

    parser = build_parser()
    out = ["```text", parser.format_help().rstrip(), "```\n"]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, subparser in sub.choices.items():
        out += [f"### `kitsmsan {name}`\n", "```text", subparser.format_help().rstrip(), "```\n"]
    return "\n".join(out)


def render_memory() -> dict[str, str]:
    """``memory_{memory,fit,time,inference}.md`` from ``book/data/memory.json`` (``kitsmsan bench memory``)
    with the GPU rows of ``book/data/bench_gpu.json`` where it exists, and ``colab_sizes.md`` from
    ``book/data/colab_sizes.json`` (``scripts/colab_sizes.py``)."""
    from kitsmsan.bench.memory import memory_markdown
    from kitsmsan.train.config import PRESETS

    path, gpu = DATA / "memory.json", DATA / "bench_gpu.json"
    missing = ":::{{note}}\n`{0}` is missing: `{1}` writes it.\n:::\n"
    if path.is_file():
        report = json.loads(path.read_text(encoding="utf-8"))
        measured = json.loads(gpu.read_text(encoding="utf-8")).get("results", []) if gpu.is_file() else []
        parts = memory_markdown(report, measured, colab_iters=PRESETS["colab"]["num_iters"])
    else:
        text = missing.format("book/data/memory.json", "kitsmsan bench memory --json book/data/memory.json")
        parts = dict.fromkeys(("memory", "fit", "time", "inference"), text)
    out = {f"memory_{k}.md": v for k, v in parts.items()}
    sizes = DATA / "colab_sizes.json"
    if not sizes.is_file():
        out["colab_sizes.md"] = missing.format(
            "book/data/colab_sizes.json", "python scripts/colab_sizes.py --labels LABELS_DIR"
        )
        return out
    z = json.loads(sizes.read_text(encoding="utf-8"))

    def gb(b: float) -> str:
        return f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.0f} MB"

    lab, cache, runs = z["labels"], z["cache_0_189"], z["run_folders"]
    crop = cache["kidney_z_range_plus_margin"]
    ck = z["checkpoints"]
    rows = [
        {
            "what": "`download --labels-only`, cases 0–209",
            "size": gb(lab["scaled_210_bytes"]),
            "how": f"measured: {gb(lab['bytes'])} for the {lab['cases']} segmentations kept here (cases 0–{lab['cases'] - 1}); {lab['how']}",
        },
        {
            "what": "KiTS19 imaging (`imaging.nii.gz`), cases 0–209",
            "size": gb(z["imaging"]["bytes_210"]),
            "how": z["imaging"]["source"],
        },
        {
            "what": "training cache (`kitsmsan prepare`), cases 0–189",
            "size": gb(cache["bytes"]),
            "how": f"computed from the {cache['cases']} cases' real shapes ({cache['slices']:,} slices): "
            + cache["format"],
        },
        *(
            {
                "what": f"… only the kidney z-range + {k.replace('mm', ' mm')}",
                "size": gb(v["bytes"]),
                "how": f"{v['slices']:,} slices, {v['fraction_of_full']:.0%} of the full cache (evaluated, not "
                "implemented)",
            }
            for k, v in crop.items()
        ),
        {
            "what": "one checkpoint (`last.pt` or `best.pt`)",
            "size": " – ".join(
                gb(ck[n]["bytes"])
                for n in (min(ck, key=lambda n: ck[n]["bytes"]), max(ck, key=lambda n: ck[n]["bytes"]))
            ),
            "how": "measured: a real checkpoint of each network after one Adam step (weights + Adam's two "
            "moments + schedule, scaler, RNG states, config)",
        },
        {
            "what": "five run folders (`last.pt` + `best.pt` each)",
            "size": gb(runs["bytes_five_runs"]),
            "how": "sum of the measured checkpoints x 2; metrics.jsonl and configs add kilobytes",
        },
    ]
    out["colab_sizes.md"] = (
        markdown_table(rows, ["what", "size", "how"])
        + f"\nMeasured at commit `{z['commit']}` by `scripts/colab_sizes.py` "
        "(`book/data/colab_sizes.json`). GB = 10⁹ bytes, MB = 10⁶.\n"
    )
    return out


def render() -> int:
    """Write the ``{include}`` snippets into ``book/generated/``; returns 0."""
    snippets = {
        **render_memory(),
        "decisions_fragments.md": render_fragments("decisions"),
        "reliability_fragments.md": render_fragments("reliability"),
        "reliability_tally.md": render_reliability_tally(),
        "performance_tables.md": render_performance(),
        "real_anatomy_ceiling.md": render_real_anatomy("ceiling"),
        "real_anatomy_stats.md": render_real_anatomy("stats"),
        "api_modules.md": render_api(),
        "cli_reference.md": render_cli(),
    }
    for name, text in snippets.items():
        GENERATED.mkdir(parents=True, exist_ok=True)
        atomic_write_text(GENERATED / name, text)
        print(f"  rendered book/generated/{name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run-notebooks", help="execute scripts/notebook_params.json with papermill")
    run.add_argument("--only", nargs="+", help="output or notebook names to run (default: all)")
    run.add_argument("--reuse", action="store_true", help="skip outputs that are up to date")
    run.add_argument(
        "--params",
        type=Path,
        default=Path(os.environ.get("KITSMSAN_BOOK_PARAMS", PARAMS)),
        help="the JSON list of runs (default: $KITSMSAN_BOOK_PARAMS or scripts/notebook_params.json)",
    )
    sub.add_parser("render", help="render fragments, benchmark JSON and statistics CSVs to Markdown")
    args = parser.parse_args(argv)
    try:
        if args.command == "run-notebooks":
            return run_notebooks(args.only, args.reuse, args.params)
        return render()
    except BookBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
