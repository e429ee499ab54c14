"""Check the notebooks of ``notebooks/``: each MyST source and its paired ``.ipynb`` agree, and are clean.

    python scripts/check_notebooks.py           # exit 1, one line per problem, when a check fails
    python scripts/check_notebooks.py --fix     # rewrite the install cells from _config.yml, then sync

Every notebook is a pair (jupytext, ``formats: ipynb,md:myst``): ``notebooks/NN_name.md`` is the source
a person edits and reviews, ``notebooks/NN_name.ipynb`` the copy Colab, Binder and papermill open.
For every pair this checks that

* both files exist and carry the pairing metadata;
* the ``.ipynb`` holds exactly the cells of the ``.md`` (type, source, metadata) — re-sync with
  ``jupytext --sync notebooks/NN_name.md``;
* the ``.ipynb`` has no outputs and no execution counts;
* the first code cell is the install cell, :func:`install_cell`, whose URL and branch come from
  ``repository.url`` / ``repository.branch`` of ``_config.yml`` (the one place they are written);
* there is exactly one cell tagged ``parameters``, after the install cell.

``--fix`` writes the install cell into every ``.md`` (inserting it after the title cell when it is
missing) and re-syncs each pair with ``jupytext --sync`` (the newer file of a pair is the source, so an edit
saved from JupyterLab into the ``.ipynb`` flows back into the ``.md``), then clears any outputs of the
``.ipynb``. It never rewrites a ``.md`` whose install cell is already right.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml
from jupytext.cli import jupytext as jupytext_cli

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CONFIG = ROOT / "_config.yml"
FORMATS = "ipynb,md:myst"
#: the environment variable that replaces the install cell's pip URL (tests point it at a local clone)
INSTALL_URL_ENV = "KITSMSAN_INSTALL_URL"

#: the install cell, as ``ruff format`` leaves it (so formatting the notebooks keeps it valid)
INSTALL_TEMPLATE = """\
# Installs kitsmsan where it does not import yet (e.g. on Colab), keeping the runtime's own torch.
import importlib
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("kitsmsan") is None:
    from importlib.metadata import version

    url = os.environ.get("{env}", "{url}")
    keep = [f"torch=={{version('torch')}}"] if importlib.util.find_spec("torch") else []
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", f"kitsmsan[widgets] @ {{url}}", *keep], check=True
    )
    importlib.invalidate_caches()"""


def install_url(config: Path = CONFIG) -> str:
    """The pip URL of the package, ``git+<repository.url>@<repository.branch>`` of ``_config.yml``."""
    try:
        repo = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("repository") or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"{config}: cannot read the repository settings ({exc})") from None
    url, branch = str(repo.get("url", "")).rstrip("/"), str(repo.get("branch", "") or "main")
    if not url:
        raise SystemExit(f"{config}: repository.url is not set (the install cell installs from it)")
    return f"git+{url}@{branch}"


def install_cell(config: Path = CONFIG) -> str:
    """The source of the install cell every notebook starts with (after its title)."""
    return INSTALL_TEMPLATE.format(env=INSTALL_URL_ENV, url=install_url(config))


def pairs(folder: Path = NOTEBOOKS) -> list[tuple[Path, Path]]:
    """``(md, ipynb)`` for every notebook of ``folder`` (``NN_name.*``), sorted by name."""
    stems = {p.stem for pattern in ("[0-9][0-9]_*.md", "[0-9][0-9]_*.ipynb") for p in folder.glob(pattern)}
    return [(folder / f"{s}.md", folder / f"{s}.ipynb") for s in sorted(stems)]


def _cells(nb) -> list[tuple[str, str, dict]]:
    return [(c.cell_type, c.source, dict(c.get("metadata", {}))) for c in nb.cells]


def check_pair(md: Path, ipynb: Path, expected_install: str) -> list[str]:
    """The problems of one pair, one line each (empty when it is fine)."""
    name = md.stem
    for path in (md, ipynb):
        if not path.is_file():
            other = ipynb if path == md else md
            return [
                f"{path.relative_to(ROOT)}: missing (make it with jupytext --sync {other.relative_to(ROOT)})"
            ]
    problems = []
    source = jupytext.read(md)
    try:
        paired = nbformat.read(ipynb, as_version=4)
    except Exception as exc:  # nbformat raises several types for a broken file
        return [f"{ipynb.relative_to(ROOT)}: not a readable notebook ({exc})"]
    for path, nb in ((md, source), (ipynb, paired)):
        if nb.metadata.get("jupytext", {}).get("formats") != FORMATS:
            problems.append(
                f"{path.relative_to(ROOT)}: not paired (metadata jupytext.formats must be {FORMATS})"
            )
    if _cells(source) != _cells(paired):
        problems.append(f"{name}: .md and .ipynb differ (re-sync: jupytext --sync {md.relative_to(ROOT)})")
    for i, cell in enumerate(paired.cells):
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            problems.append(
                f"{ipynb.relative_to(ROOT)}: cell {i} is committed with outputs or an execution "
                "count (clear them, then jupytext --sync)"
            )
    code = [c for c in source.cells if c.cell_type == "code"]
    if not code or code[0].source != expected_install:
        problems.append(
            f"{md.relative_to(ROOT)}: the first code cell is not the install cell of _config.yml "
            "(python scripts/check_notebooks.py --fix writes it)"
        )
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1 or tagged[0] == 0:
        problems.append(
            f"{md.relative_to(ROOT)}: needs exactly one cell tagged 'parameters', after the install cell"
        )
    return problems


def check(folder: Path = NOTEBOOKS, config: Path = CONFIG) -> list[str]:
    """The problems of every notebook of ``folder`` (empty when all is well)."""
    found = pairs(folder)
    if not found:
        return [f"{folder}: no notebook found"]
    expected = install_cell(config)
    return [line for md, ipynb in found for line in check_pair(md, ipynb, expected)]


def fix(folder: Path = NOTEBOOKS, config: Path = CONFIG) -> list[Path]:
    """Write the install cell into every ``.md`` and re-sync every pair from its ``.md``.

    Returns:
        The ``.md`` files whose install cell was written or replaced.
    """
    expected = install_cell(config)
    changed = []
    for md, ipynb in pairs(folder):
        if not md.is_file():
            continue
        nb = jupytext.read(md)
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        first = nb.cells[code[0]] if code else None
        if first is not None and "import importlib" in first.source and "kitsmsan[widgets]" in first.source:
            if first.source != expected:
                first.source = expected
                changed.append(md)
        else:
            at = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
            nb.cells.insert(at, nbformat.v4.new_code_cell(expected))
            changed.append(md)
        if md in changed:
            jupytext.write(nb, md, fmt="md:myst")
        # jupytext's own sync: the newer file of the pair wins, cell ids of the .ipynb are kept
        if jupytext_cli(["--sync", "--quiet", str(md)]) != 0:
            raise SystemExit(f"{md}: jupytext --sync failed")
        paired = nbformat.read(ipynb, as_version=4)  # the sync keeps outputs; the committed copy has none
        dirty = [
            c for c in paired.cells if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
        ]
        for cell in dirty:
            cell.outputs, cell.execution_count = [], None
        if dirty:
            nbformat.write(paired, ipynb)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fix", action="store_true", help="write the install cells and re-sync every pair")
    args = parser.parse_args(argv)
    if args.fix:
        for md in fix():
            print(f"install cell written: {md.relative_to(ROOT)}")
    problems = check()
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} notebook problem(s); see CONTRIBUTING.md, section Notebooks", file=sys.stderr)
        return 1
    print(f"{len(pairs())} notebook pairs in sync, clean, with the install cell of _config.yml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
