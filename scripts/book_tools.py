"""Build steps of the kitsmsan book that are not Jupyter Book itself (called by scripts/build_book.sh).

Two subcommands, both run from the repository root::

    python scripts/book_tools.py run-notebooks [--only NAME ...] [--reuse]
    python scripts/book_tools.py render

``run-notebooks`` executes every entry of ``scripts/notebook_params.json`` (a JSON list, in run
order, of ``{"notebook": "notebooks/03_training.ipynb", "output":
"book/generated/03_training_unet3d.ipynb", "parameters": {...}, "title": "..."}``; ``title`` is
optional) with papermill: kernel ``python3``, working directory the repository root (so notebooks
use paths relative to it), the parameters injected after the notebook's ``parameters`` cell. The
executed copy is written atomically to ``output`` (under ``book/generated/``); when ``title`` is
given, the first level-1 Markdown heading of the copy is replaced by it (the training notebook runs
once per variant, and each page needs its own title). A notebook that fails leaves the previous
output untouched and its partial copy in ``_build/failed/``; the command then exits with status 1.

``render`` writes the Markdown snippets that the prose pages ``{include}`` into ``book/generated/``:

* ``decisions_fragments.md``, ``reliability_fragments.md``: the fragments
  ``book/fragments/decisions-*.md`` / ``reliability-*.md`` concatenated in name order (MyST's
  include cannot glob; a fragment that lands later is picked up by the next build);
* ``performance_tables.md``: every ``book/data/bench_*.json`` written by ``kitsmsan bench``, as
  tables; a GPU row that has not been measured says so;
* ``real_anatomy_tables.md``: ``book/data/postprocess_ceiling.csv`` and
  ``book/data/kits19_label_stats.csv`` (written by ``kitsmsan stats`` on the real KiTS19
  segmentations), summarised as tables;
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

from kitsmsan.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "scripts" / "notebook_params.json"
GENERATED = ROOT / "book" / "generated"
DATA = ROOT / "book" / "data"
FRAGMENTS = ROOT / "book" / "fragments"
FAILED = ROOT / "_build" / "failed"


class BookBuildError(Exception):
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


def run_notebooks(only: list[str] | None = None, reuse: bool = False) -> int:
    """Execute the entries of ``scripts/notebook_params.json`` with papermill, in order.

    Args:
        only: output names (``03_training_unet3d``) or notebook names (``03_training``) to run;
            default ``None`` runs all.
        reuse: skip entries whose output is newer than the notebook and has the same parameters
            (a quick re-render during writing; default ``False``, everything re-runs).

    Returns:
        0 when every selected notebook ran, 1 when one failed (the rest still run).
    """
    import papermill

    entries = load_entries()
    if only:
        entries = [e for e in entries if Path(e["output"]).stem in only or Path(e["notebook"]).stem in only]
        if not entries:
            raise BookBuildError(f"--only {only}: matches no entry of {PARAMS.name}")
    GENERATED.mkdir(parents=True, exist_ok=True)
    failures = []
    for entry in entries:
        out = ROOT / entry["output"]
        if reuse and _up_to_date(entry):
            print(f"  = {entry['output']} (up to date)", flush=True)
            continue
        tmp = out.with_name(f".{out.name}.running")
        start = time.perf_counter()
        print(f"  > {entry['notebook']} -> {entry['output']} {json.dumps(entry['parameters'])}", flush=True)
        try:
            papermill.execute_notebook(
                str(ROOT / entry["notebook"]), str(tmp), parameters=entry["parameters"],
                kernel_name="python3", cwd=str(ROOT), progress_bar=False, log_output=False,
            )
        except Exception as exc:  # papermill raises PapermillExecutionError and kernel errors
            FAILED.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                os.replace(tmp, FAILED / out.name)
            print(f"  ! {entry['notebook']} FAILED after {time.perf_counter() - start:.0f} s: "
                  f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}\n"
                  f"    executed copy with the error: {FAILED / out.name}", file=sys.stderr, flush=True)
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


def _read_csv(path: Path) -> list[dict]:
    """Read a CSV into dicts, converting numeric-looking cells to float."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for k, v in row.items():
            try:
                row[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows


def render_fragments(kind: str) -> str:
    """Concatenate ``book/fragments/<kind>-*.md`` in name order (a note when there is none)."""
    parts = []
    for path in sorted(FRAGMENTS.glob(f"{kind}-*.md")):
        text = path.read_text(encoding="utf-8").strip()
        if text:
            parts.append(f"<!-- from book/fragments/{path.name} -->\n\n{text}\n")
    if not parts:
        return (f":::{{note}}\nNo `book/fragments/{kind}-*.md` fragment has been written yet.\n:::\n")
    return "\n".join(parts)


#: metadata keys of a benchmark JSON shown above its tables (whichever are present)
BENCH_META = ("device", "torch", "torch_version", "cuda", "commit", "python", "date", "timestamp", "host",
              "threads", "num_threads", "note")


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
                    {k: v for k, v in row.items() if k != "benchmark"})
    return meta, {k: v for k, v in sections.items() if v}


def render_performance() -> str:
    """Render every ``book/data/bench_*.json`` as tables, one per benchmark, with its provenance."""
    files = sorted(DATA.glob("bench_*.json"))
    out = []
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BookBuildError(f"{path}: not valid JSON ({exc})") from None
        meta, sections = _bench_sections(data)
        out.append(f"### `{path.name}`\n")
        if meta:
            out.append("\n".join(f"- **{k}**: {_fmt(v)}" for k, v in meta.items()) + "\n")
        if not sections:
            out.append(f"`{path.name}` holds no results.\n")
        for name, rows in sections.items():
            if len(rows) == 1:  # one result: a two-column key / value table reads better
                table = markdown_table([{"quantity": k, "value": v} for k, v in rows[0].items()])
            else:
                table = markdown_table(rows)
            out.append(f"**{name}**\n\n{table}")
    gpu_measured = any("gpu" in p.name or "cuda" in p.name for p in files)
    if not files:
        out.append(":::{note}\nNo benchmark has been recorded yet. `kitsmsan bench all --json "
                   "book/data/bench_cpu.json` writes the file this page shows.\n:::\n")
    if not gpu_measured:
        out.append(":::{important}\n**GPU: pending.** No GPU measurement has been recorded yet, so this page "
                   "shows none — in particular no projected time for the paper's schedule on a GPU. Running "
                   "`kitsmsan bench all --json book/data/bench_gpu.json` on a GPU fills it in.\n:::\n")
    return "\n".join(out)


def _numeric_summary(rows: list[dict]) -> list[dict]:
    """Per numeric column: count, median, min, max (NaN cells are skipped)."""
    summary = []
    for col in rows[0].keys():
        vals = [r[col] for r in rows if isinstance(r.get(col), float) and not math.isnan(r[col])]
        if not vals or col.lower() in {"case", "case_id", "case_number"}:
            continue
        vals.sort()
        mid = len(vals) // 2
        median = vals[mid] if len(vals) % 2 else 0.5 * (vals[mid - 1] + vals[mid])
        summary.append({"quantity": col, "cases": len(vals), "median": median, "min": vals[0], "max": vals[-1]})
    return summary


def render_real_anatomy() -> str:
    """Render the post-processing ceiling and the KiTS19 label statistics CSVs."""
    out = []
    ceiling = DATA / "postprocess_ceiling.csv"
    stats = DATA / "kits19_label_stats.csv"
    for path, title in ((ceiling, "Post-processing ceiling"), (stats, "Label statistics of the KiTS19 training cases")):
        out.append(f"### {title}\n")
        if not path.is_file():
            out.append(f":::{{note}}\n`book/data/{path.name}` has not been generated yet "
                       f"(`kitsmsan stats` on the KiTS19 segmentations writes it).\n:::\n")
            continue
        rows = _read_csv(path)
        if not rows:
            out.append(f"`book/data/{path.name}` is empty.\n")
            continue
        out.append(f"*Source: `book/data/{path.name}`, {len(rows)} rows.*\n")
        if len(rows) <= 30:
            out.append(markdown_table(rows))
        else:
            out.append("Summary over the cases:\n\n" + markdown_table(_numeric_summary(rows)))
            out.append(f":::{{dropdown}} All {len(rows)} rows\n{markdown_table(rows)}:::\n")
    return "\n".join(out)


#: pipeline order of the API reference; modules not listed here follow in alphabetical order
API_ORDER = (
    "kitsmsan.data.kits19", "kitsmsan.data.phantom", "kitsmsan.data.preprocess", "kitsmsan.data.dataset",
    "kitsmsan.data.stats", "kitsmsan.data.download", "kitsmsan.models.registry", "kitsmsan.models.msan",
    "kitsmsan.models.blocks", "kitsmsan.models.report", "kitsmsan.losses", "kitsmsan.train.config",
    "kitsmsan.train.loop", "kitsmsan.train.checkpoint", "kitsmsan.train.distributed", "kitsmsan.inference",
    "kitsmsan.postprocess", "kitsmsan.ensemble", "kitsmsan.metrics", "kitsmsan.reproduce", "kitsmsan.bench",
    "kitsmsan.viz", "kitsmsan.widgets", "kitsmsan.errors", "kitsmsan.utils.io", "kitsmsan.utils.provenance",
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


def render() -> int:
    """Write the ``{include}`` snippets into ``book/generated/``; returns 0."""
    snippets = {
        "decisions_fragments.md": render_fragments("decisions"),
        "reliability_fragments.md": render_fragments("reliability"),
        "performance_tables.md": render_performance(),
        "real_anatomy_tables.md": render_real_anatomy(),
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
    sub.add_parser("render", help="render fragments, benchmark JSON and statistics CSVs to Markdown")
    args = parser.parse_args(argv)
    try:
        if args.command == "run-notebooks":
            return run_notebooks(args.only, args.reuse)
        return render()
    except BookBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
