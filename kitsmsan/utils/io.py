"""Atomic writes, safe paths and output folders, shared by every stage that writes files.

A file is written to a temporary name in the same folder, flushed and fsynced, then renamed over
the target with :func:`os.replace` (atomic on POSIX). A process killed mid-write therefore leaves
either the old file or the new one, never half of one. On error (disk full included) the temporary
file is removed and the target is untouched. The file gets the mode a plain ``open`` would give
(``0666`` minus the umask), not the ``0600`` of :func:`tempfile.mkstemp`.

The output-folder rule (:func:`claim_output_dir`): a command writes only into a folder that is new,
empty, or already marked (``.kitsmsan-output.json``) as the output of the same command and kind.
Anything else is refused with one line naming the folder and what was found, unless the caller
passes ``overwrite=True`` (the CLI's ``--overwrite``); even then the files found there are listed
in the marker as ``foreign`` and :func:`atomic_write` never replaces one of them: it keeps the old
file beside the new one (``NAME.kitsmsan-old``, numbered if taken).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from kitsmsan.errors import DataError, OutputFolderError

#: the marker a command writes into its output folder: ``{"command", "kind", "version", "foreign"}``
MARKER_FILE = ".kitsmsan-output.json"
MARKER_VERSION = 1


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def keep_aside(path: Path) -> Path:
    """Rename ``path`` to a free ``NAME.kitsmsan-old`` (``.kitsmsan-old-2`` ...) beside it; returns it."""
    path = Path(path)
    n = 1
    while True:
        kept = path.with_name(f"{path.name}.kitsmsan-old" + ("" if n == 1 else f"-{n}"))
        if not kept.exists() and not kept.is_symlink():
            os.replace(path, kept)
            return kept
        n += 1


def _protect_foreign(path: Path) -> None:
    """If ``path`` is a file the output folder's marker lists as not ours, move it aside first."""
    if not (path.exists() or path.is_symlink()):
        return
    for root in (path.parent, path.parent.parent):
        marker = read_marker(root)
        if marker is None:
            continue
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else None
        foreign = marker.get("foreign") or []
        if rel is not None and any(rel == f or rel.startswith(f.rstrip("/") + "/") for f in foreign):
            keep_aside(path)
            if rel in foreign:  # from now on the file at this name is ours
                marker["foreign"] = [f for f in foreign if f != rel]
                _write_marker(root, marker)
        return


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
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would give, not mkstemp's 0600
        kwargs = {"encoding": "utf-8"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _protect_foreign(path)
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


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The output marker of ``folder`` (a dict with ``command`` and ``kind``), or None if absent/unreadable."""
    try:
        data = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        return None
    return data


def _describe(entries: list[Path], limit: int = 3) -> str:
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in entries)
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'} not written by kitsmsan ({shown})"


def claim_output_dir(
    path: str | os.PathLike,
    kind: str,
    *,
    command: str,
    overwrite: bool = False,
    recognize: Callable[[Path], bool] | None = None,
    create: bool = True,
) -> Path:
    """Make ``path`` the output folder of ``command`` (of ``kind``), or refuse it (the output-folder rule).

    Accepted without a flag: a folder that does not exist (created, with parents), an empty one,
    one whose marker names the same ``command`` and ``kind``, or one that ``recognize`` identifies
    as this command's output from before markers existed. Anything else (a folder of another
    command, a data folder, a folder of unrelated files, a file) is refused. With ``overwrite``
    the folder is taken over, but its files are recorded as ``foreign`` in the marker and
    :func:`atomic_write` keeps each one beside its replacement instead of deleting it.

    Args:
        path: the output folder.
        kind: what the folder holds (``"cache"``, ``"run"``, ``"predictions"``, ``"evaluation"`` ...).
        command: the CLI command that writes it (``"prepare"``, ``"train"`` ...).
        overwrite: take over a folder that is not this command's (default False).
        recognize: optional ``f(folder) -> bool`` for folders written before markers existed.
        create: default True; False only checks the rule (nothing is created or written), so a
            command can refuse before it computes and claim when it writes.

    Returns:
        ``Path(path)``; its marker ``.kitsmsan-output.json`` is written.

    Raises:
        OutputFolderError: one line naming the folder and what is in it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(
            f"{path}: exists and is not a folder (an output folder of 'kitsmsan {command}' was expected)"
        )
    marker = read_marker(path) if path.is_dir() else None
    foreign: list[str] = []
    if marker is not None:
        foreign = list(marker.get("foreign") or [])
        if (marker.get("command"), marker.get("kind")) == (command, kind):
            return path
        if not overwrite:
            raise OutputFolderError(
                f"{path}: holds the output of 'kitsmsan {marker.get('command')}' ({marker.get('kind')}), "
                f"not of 'kitsmsan {command}' ({kind}); choose a new folder, or pass --overwrite "
                "(files found there are kept)"
            )
        foreign += [e.name for e in path.iterdir() if e.name != MARKER_FILE and e.name not in foreign]
    elif path.is_dir():
        entries = [e for e in path.iterdir() if e.name != MARKER_FILE]
        if entries and not (recognize is not None and recognize(path)):
            if not overwrite:
                raise OutputFolderError(
                    f"{path}: not empty and not an output folder of 'kitsmsan {command}': "
                    f"{_describe(entries)}; choose a new or empty folder, or pass --overwrite "
                    "(files found there are kept)"
                )
            foreign = sorted(e.name for e in entries)
    if not create:
        return path
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    path.mkdir(parents=True, exist_ok=True)
    _write_marker(
        path,
        {"command": command, "kind": kind, "version": MARKER_VERSION, "foreign": sorted(set(foreign))},
        created,
    )
    return path


def _write_marker(folder: Path, marker: dict, created: list[Path] = ()) -> None:
    """Write the marker (temporary file + rename; not fsynced: a lost marker only makes the folder
    fall back to ``recognize``). A failure removes the folders just created and names the file."""
    target = folder / MARKER_FILE
    tmp = folder / f".{MARKER_FILE}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(marker, indent=2) + "\n")
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        for p in created:
            try:
                p.rmdir()
            except OSError:
                break
        raise OutputFolderError(f"{target}: cannot write the output marker ({exc.strerror or exc})") from exc


def only_files(*patterns: str) -> Callable[[Path], bool]:
    """A ``recognize`` for :func:`claim_output_dir`: every entry of the folder matches one of the
    :mod:`fnmatch` ``patterns`` (hidden ``.NAME.tmp`` leftovers of :func:`atomic_write` included)."""

    def recognize(folder: Path) -> bool:
        names = [e.name for e in folder.iterdir() if e.name != MARKER_FILE]
        return all(any(fnmatch.fnmatchcase(n, p) for p in (*patterns, ".*.tmp")) for n in names)

    return recognize


def claim_output_file(
    path: str | os.PathLike,
    *,
    command: str,
    overwrite: bool = False,
    recognize: Callable[[Path], bool] | None = None,
    create: bool = True,
) -> Path:
    """The output-folder rule for a single output file (``stats --csv``, ``bench --json``).

    A file that does not exist yet, or that ``recognize`` identifies as written by ``command``, is
    accepted. Another existing file is refused unless ``overwrite``; then it is kept beside as
    ``NAME.kitsmsan-old`` (never deleted).

    Raises:
        OutputFolderError: the path is a folder, or an existing file not written by ``command``.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputFolderError(f"{path}: is a folder; 'kitsmsan {command}' writes a file here")
    if path.exists() and not (recognize is not None and recognize(path)):
        if not overwrite:
            raise OutputFolderError(
                f"{path}: exists and was not written by 'kitsmsan {command}'; choose a new name, or "
                "pass --overwrite (the old file is kept beside it)"
            )
        if create:
            keep_aside(path)
    return path


def distinct_dirs(paths: list[str | os.PathLike], what: str = "--pred") -> list[Path]:
    """``paths`` as folders, refusing one given twice under different spellings (``pA ./pA/ ../x/pA``).

    Raises:
        OutputFolderError: a folder listed twice (after resolving ``.``, ``..`` and symlinks).
    """
    seen: dict[Path, str] = {}
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            raise OutputFolderError(
                f"{what} {p}: the same folder as {seen[key]} (given twice); each model's folder counts once"
            )
        seen[key] = str(p)
    return [Path(p) for p in paths]


@contextlib.contextmanager
def new_output_dir(
    path: str | os.PathLike,
    kind: str | None = None,
    *,
    command: str | None = None,
    overwrite: bool = False,
    recognize: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """Create the output folder ``path`` (with parents); if the body fails, leave no trace.

    With ``kind`` and ``command`` the folder is first claimed by :func:`claim_output_dir` (the
    output-folder rule; default None skips it). The folders this call created are removed again
    when the ``with`` body raises — but only while they are empty apart from the marker (``rmdir``
    refuses the others), so files finished before the failure are kept.

    Yields:
        ``Path(path)``, created.
    """
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    if kind is not None:
        claim_output_dir(path, kind, command=command or kind, overwrite=overwrite, recognize=recognize)
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if created and [e.name for e in path.iterdir()] == [MARKER_FILE]:
            with contextlib.suppress(OSError):
                (path / MARKER_FILE).unlink()
        for folder in created:
            try:
                folder.rmdir()  # only succeeds when empty
            except OSError:
                break
        raise
