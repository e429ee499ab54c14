"""Atomic writes and safe paths, shared by every stage that writes files.

A file is written to a temporary name in the same folder, flushed and fsynced, then renamed over
the target with :func:`os.replace` (atomic on POSIX). A process killed mid-write therefore leaves
either the old file or the new one, never half of one. On error (disk full included) the temporary
file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from kitsmsan.errors import DataError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    Args:
        path: the final file.
        mode: ``"wb"`` (default) or ``"w"`` (text, UTF-8).

    Yields:
        The open temporary file. If the ``with`` body raises, ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {"encoding": "utf-8"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def safe_join(root: str | os.PathLike, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result outside ``root``.

    Paths that come from metadata, downloads or the command line go through this, so that a name
    like ``../../etc/passwd`` or an absolute path can never write outside the chosen folder.

    Raises:
        DataError: if the joined path escapes ``root``.
    """
    root_resolved = Path(root).resolve()
    candidate = root_resolved.joinpath(*parts).resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise DataError(f"{'/'.join(parts)!r}: path escapes the output folder {str(root_resolved)!r}")
    return candidate


@contextlib.contextmanager
def new_output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Create the output folder ``path`` (with parents); if the body fails, leave no trace.

    The folders this call created are removed again when the ``with`` body raises — but only while
    they are empty (``rmdir`` refuses the others), so files finished before the failure are kept.

    Yields:
        ``Path(path)``, created.
    """
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()  # only succeeds when empty
            except OSError:
                break
        raise
