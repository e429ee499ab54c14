"""The book and the package docs speak of the project, never of its development process.

Scanned: the book's Markdown pages and fragments, the notebooks (MyST and ``.ipynb``), and every
docstring and comment of the ``kitsmsan`` package. Words such as "issue #6", "as the issue asks", "the
issue's … return", "ticket" or a bare "#12" reference belong to the tracker, not to a reader.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: what counts as development-process talk (case-insensitive)
PROCESS_WORDS = re.compile(
    r"\bissues?\s*#?\s*\d+"  # "issue #6", "issue 7", "issues #2 and #8"
    r"|\b(?:as|what|which) the issue\b"  # "as the issue asks"
    r"|\b(?:the|this|that) issue'?s\b"  # "the contract"
    r"|\bper the issue\b|\bthe issue (?:asks|says|wants|requires)\b"
    r"|\btickets?\b"
    r"|\bpull request\b"
    r"|(?<![\w&#/=\-])#\d{1,3}\b(?![\w-])",  # "#12" (not "#333333", "#fig-1", "&#8212;")
    re.IGNORECASE,
)


def prose_files() -> list[Path]:
    """Book pages, fragments and notebooks (whatever exists of them)."""
    files = sorted((REPO / "book").glob("*.md")) + sorted((REPO / "book" / "fragments").glob("*.md"))
    files += sorted((REPO / "notebooks").glob("*.md")) + sorted((REPO / "notebooks").glob("*.ipynb"))
    return files


def prose_text(path: Path) -> str:
    """The text a reader sees: a notebook's cell sources (not its outputs), a page as it is."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join(
            "".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells
        )
    return path.read_text(encoding="utf-8")


def package_doc_text(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every docstring and comment of a Python file."""
    source = path.read_text(encoding="utf-8")
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((node.body[0].lineno, doc))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    return out


def find_process_words(text: str) -> list[str]:
    return [m.group(0) for m in PROCESS_WORDS.finditer(text)]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("the targets of issue #6 are reported", True),
        ("keeps the issue's (image, label) return", True),
        ("a missing file is an error, as the issue asks", True),
        ("what issues 2 and 8 asked for", True),
        ("see #12", True),
        ("a ticket", True),
        ("colour #333333 and #1e8449, anchor (#fig-1), &#8212;", False),
        ("## Results\n# a heading", False),
        ("To tackle this problem the paper adds a Res2Net block", False),
        ("reliability: every known issue has a test", False),
    ],
)
def test_the_pattern_finds_process_words_and_nothing_else(text, found):
    assert bool(find_process_words(text)) is found, text


def test_book_pages_fragments_and_notebooks_have_no_process_words():
    files = prose_files()
    assert any(f.parent.name == "fragments" for f in files) and any(
        f.parent.name == "notebooks" for f in files
    )
    hits = []
    for path in files:
        for number, line in enumerate(prose_text(path).splitlines(), 1):
            hits += [
                f"{path.relative_to(REPO)}:{number}: {w!r} in {line.strip()[:100]!r}"
                for w in find_process_words(line)
            ]
    assert not hits, "development-process words in the book:\n" + "\n".join(hits)


def test_package_docstrings_and_comments_have_no_process_words():
    files = sorted((REPO / "kitsmsan").rglob("*.py"))
    assert len(files) > 10
    hits = []
    for path in files:
        for line, text in package_doc_text(path):
            hits += [f"{path.relative_to(REPO)}:{line}: {w!r}" for w in find_process_words(text)]
    assert not hits, "development-process words in the package docs:\n" + "\n".join(hits)


#: the labels-only download (segmentations of the 210 labelled cases + kits.json), in MB (10**6 bytes):
#: measured with `du -b` on the segmentations of cases 0-189 (60,040,589 bytes), scaled by 210/190
#: (66.4 MB), plus kits.json (412,410 bytes); stated on the real-anatomy page with the measurement
LABELS_DOWNLOAD_MB = 67

#: a sentence that gives the size of the labels download
_SIZE = re.compile(
    r"(?:segmentations|labels-only|labels only).{0,80}?(?:≈|~|about |a few )\s*(\d+)?\s*MB", re.IGNORECASE
)


def test_labels_download_size_is_one_measured_number_everywhere():
    files = prose_files() + [REPO / "README.md"] + sorted((REPO / "kitsmsan").rglob("*.py"))
    sizes = {}
    for path in files:
        text = prose_text(path) if path.suffix != ".py" else path.read_text(encoding="utf-8")
        for m in _SIZE.finditer(text.replace("\n", " ")):
            sizes.setdefault(m.group(1) or "a few", []).append(str(path.relative_to(REPO)))
    assert str(LABELS_DOWNLOAD_MB) in sizes, "the labels download size is stated nowhere"
    assert set(sizes) == {str(LABELS_DOWNLOAD_MB)}, f"other sizes for the labels download: {sizes}"
    assert "60.0 MB" in (REPO / "book" / "real_anatomy.md").read_text(encoding="utf-8")  # how it was measured


def test_cli_help_shown_in_the_book_has_no_process_words():
    from kitsmsan.cli import build_parser

    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        texts += [sub.format_help() for sub in action.choices.values()]
    hits = [w for text in texts for w in find_process_words(text)]
    assert len(texts) > 5 and not hits, f"process words in the CLI help (the API page shows it): {hits}"


def test_generated_page_text_speaks_of_the_project_only():
    """The page text that ``scripts/book_tools.py render`` writes (every string literal of the script)."""
    source = (REPO / "scripts" / "book_tools.py").read_text(encoding="utf-8")
    hits = [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and PROCESS_WORDS.search(node.value)
    ]
    assert not hits, f"scripts/book_tools.py: development-process words in page text: {hits}"
