"""Download KiTS19 (imaging, segmentations, ``kits.json``) into the KiTS19 layout, safely.

The MSAN paper trains and tests on the 210 labelled KiTS19 cases (MSAN paper, §2.1). This module
fetches them from the official sources into ``root/case_XXXXX/{imaging,segmentation}.nii.gz`` and
``root/kits.json`` (the layout :mod:`kitsmsan.data.kits19` reads).

Where the files come from (looked up in the official repository ``neheller/kits19``):

* **Imaging** — ``starter_code/get_imaging_v2.py`` (latest version) downloads
  ``{HF_DATASET_BASE_URL}/images/case_{:05d}.nii.gz`` with
  ``HF_DATASET_BASE_URL = https://huggingface.co/datasets/neheller/KiTS-Challenge-Imaging/resolve/main``;
  that is :data:`OFFICIAL_IMAGING_URL`. Earlier versions of ``get_imaging.py`` used
  ``imaging_url = "https://kits19.sfo2.digitaloceanspaces.com/"`` with
  ``imaging_name_tmplt = "master_{:05d}.nii.gz"``; that host is kept as :data:`LEGACY_IMAGING_URL`,
  a template (see :func:`imaging_url`).
* **Segmentations and metadata** — the repository itself holds
  ``data/case_XXXXX/segmentation.nii.gz`` and ``data/kits.json`` (its ``.gitattributes`` now turns
  Git LFS off for all files, so the raw-file host serves the real bytes):
  :data:`OFFICIAL_LABELS_URL` ``= https://raw.githubusercontent.com/neheller/kits19/master/data``.

Both base URLs are configurable (arguments, CLI flags ``--imaging-url`` / ``--labels-url``, or the
environment variables :data:`ENV_IMAGING_URL` / :data:`ENV_LABELS_URL`).

What is guaranteed (see the book's Reliability section):

* **Nothing half-written in place.** Bytes go to ``<file>.part``; the final name appears only by
  :func:`os.replace` after the file verified: size (``Content-Length`` / ``Content-Range`` total and
  the manifest's ``size``), SHA-256 (when a manifest gives one), and the content itself — a
  ``.nii.gz`` must be a complete gzip stream holding a NIfTI image with a 3-D shape, its voxels
  pass the same checks as :mod:`kitsmsan.data.kits19`'s loader (finite CT, labels in {0, 1, 2}),
  and a segmentation's shape must equal its imaging's shape when both are there. A file that fails
  raises :class:`~kitsmsan.errors.DownloadError` naming the URL and the file, and its ``.part`` is
  removed.
* **Retries and resume.** HTTP is :mod:`requests` with a :class:`urllib3.util.Retry` adapter
  (exponential backoff on connection errors, 429 and 5xx); no hand-written status retry. A
  connection that drops in the middle of a body is resumed from the ``.part`` with an HTTP
  ``Range`` request; if the server ignores ``Range`` (answers 200) the file restarts cleanly.
  The same holds across runs: a killed download resumes from its ``.part`` on the next run.
* **Idempotent.** A file that is in place and verified is skipped without any request. Files this
  module placed are recorded (size, mtime, SHA-256) in ``root/.kitsmsan-download.json``, so a
  re-run does not decompress hundreds of GB again; files without a record (or all files, with
  ``verify_existing=True``) are fully verified.
* **No writes outside ``root``.** Every destination goes through
  :func:`kitsmsan.utils.io.safe_join`; case ids must be ``case_XXXXX`` (0..299); manifest entries
  must be relative paths under ``root``; names sent by a server are never used.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import nibabel as nib
import numpy as np
import requests
import urllib3
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.util.retry import Retry

from kitsmsan.data import kits19
from kitsmsan.errors import ConfigError, DataError, DownloadError
from kitsmsan.utils.io import atomic_write_json, claim_output_dir, keep_aside, only_files, safe_join

log = logging.getLogger(__name__)

#: official imaging host (``neheller/kits19``, ``starter_code/get_imaging_v2.py``)
OFFICIAL_IMAGING_URL = (
    "https://huggingface.co/datasets/neheller/KiTS-Challenge-Imaging/resolve/main/images"
)
#: the original imaging host of ``starter_code/get_imaging.py`` (a template, see :func:`imaging_url`)
LEGACY_IMAGING_URL = "https://kits19.sfo2.digitaloceanspaces.com/master_{number:05d}.nii.gz"
#: raw files of the official repository's ``data/`` folder (segmentations and ``kits.json``)
OFFICIAL_LABELS_URL = "https://raw.githubusercontent.com/neheller/kits19/master/data"
ENV_IMAGING_URL = "KITSMSAN_IMAGING_URL"
ENV_LABELS_URL = "KITSMSAN_LABELS_URL"

NUM_TRAIN_CASES = 210  #: case_00000..case_00209 have segmentations
NUM_CASES = 300  #: case_00210..case_00299 are the unlabelled test cases
KITS_JSON = "kits.json"
STATE_FILE = ".kitsmsan-download.json"
PART_SUFFIX = ".part"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_RETRY_STATUS = (429, 500, 502, 503, 504)


# --------------------------------------------------------------------------------------------
# what to download
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadItem:
    """One file to fetch.

    Attributes:
        kind: ``"imaging"``, ``"segmentation"`` or ``"metadata"`` (``kits.json``).
        rel: path relative to the root, e.g. ``"case_00042/imaging.nii.gz"``.
        url: where it comes from.
        dest: final path (already checked by :func:`safe_join`).
        part: the ``<dest>.part`` file that collects the bytes (also checked).
        case_id: ``"case_00042"``, or None for ``kits.json``.
        sha256: expected SHA-256 (hex) from the manifest, or None.
        size: expected size in bytes from the manifest, or None.
    """

    kind: str
    rel: str
    url: str
    dest: Path
    part: Path
    case_id: str | None = None
    sha256: str | None = None
    size: int | None = None


@dataclass
class DownloadReport:
    """What :func:`download_kits19` did.

    Attributes:
        root: the data folder.
        downloaded: files fetched and placed in this run.
        skipped: files already in place and verified (no request made).
        failed: ``{relative path: error message}``; empty on success.
        notes: human-readable remarks (e.g. test cases without segmentation).
        bytes_downloaded: bytes received in this run.
    """

    root: Path
    downloaded: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0


def resolve_base_urls(
    imaging_base_url: str | None = None, labels_base_url: str | None = None
) -> tuple[str, str]:
    """The base URLs to use: the argument, else the environment variable, else the official one.

    Args:
        imaging_base_url: base URL (or template) of the imaging; None (default) reads
            ``$KITSMSAN_IMAGING_URL`` and falls back to :data:`OFFICIAL_IMAGING_URL`.
        labels_base_url: base URL of ``case_XXXXX/segmentation.nii.gz`` and ``kits.json``; None
            (default) reads ``$KITSMSAN_LABELS_URL`` and falls back to :data:`OFFICIAL_LABELS_URL`.

    Returns:
        ``(imaging_base_url, labels_base_url)``.

    Raises:
        ConfigError: if a URL is not ``http://`` or ``https://``.
    """
    img = imaging_base_url or os.environ.get(ENV_IMAGING_URL) or OFFICIAL_IMAGING_URL
    lab = labels_base_url or os.environ.get(ENV_LABELS_URL) or OFFICIAL_LABELS_URL
    for name, url in (("imaging base URL", img), ("labels base URL", lab)):
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"{name} {url!r}: expected an http:// or https:// URL")
    return img, lab


def imaging_url(case_id: str, base_url: str = OFFICIAL_IMAGING_URL) -> str:
    """URL of a case's imaging.

    Args:
        case_id: ``"case_00042"``.
        base_url: a folder URL (``<base>/case_00042.nii.gz``, the official layout) or a template
            with ``{case_id}`` and/or ``{number}`` fields, e.g. :data:`LEGACY_IMAGING_URL`.
            Default: :data:`OFFICIAL_IMAGING_URL`.

    Raises:
        DataError: on a malformed case id.
        ConfigError: on a bad template.
    """
    number = kits19.case_number(case_id)
    if "{" in base_url:
        try:
            return base_url.format(case_id=case_id, number=number)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"imaging URL template {base_url!r}: only {{case_id}} and {{number}} are known ({exc})"
            ) from None
    return f"{base_url.rstrip('/')}/{case_id}.nii.gz"


def segmentation_url(case_id: str, base_url: str = OFFICIAL_LABELS_URL) -> str:
    """URL of a case's segmentation: ``<base>/case_00042/segmentation.nii.gz`` (repository layout)."""
    kits19.case_number(case_id)
    return f"{base_url.rstrip('/')}/{case_id}/{kits19.SEGMENTATION_FILE}"


def kits_json_url(base_url: str = OFFICIAL_LABELS_URL) -> str:
    """URL of the official ``kits.json`` (clinical data and voxel spacing): ``<base>/kits.json``."""
    return f"{base_url.rstrip('/')}/{KITS_JSON}"


def validate_cases(cases: Iterable[int | str]) -> list[str]:
    """Turn case numbers / ids into validated KiTS19 case ids.

    Args:
        cases: ints in 0..299 or ids ``"case_XXXXX"`` (e.g. ``range(210)``).

    Returns:
        Case ids in the given order, duplicates dropped.

    Raises:
        DataError: naming every malformed id (``"../x"``) or unknown case number (< 0 or > 299).
    """
    if isinstance(cases, (str, bytes)):
        raise DataError(f"cases {cases!r}: expected a list of case numbers or ids, not a string")
    bad, ids = [], []
    for c in cases:
        try:
            cid = kits19.normalize_case_id(c)
        except DataError:
            bad.append(repr(c))
            continue
        if kits19.case_number(cid) >= NUM_CASES:
            bad.append(repr(c))
            continue
        ids.append(cid)
    if bad:
        raise DataError(
            f"unknown KiTS19 case(s) {', '.join(bad)}: expected case numbers 0..{NUM_CASES - 1} "
            "or ids case_00000..case_00299"
        )
    if not ids:
        raise DataError("cases: no case selected")
    return list(dict.fromkeys(ids))


def load_manifest(manifest: str | os.PathLike | Mapping[str, Any] | None, root) -> dict[str, dict]:
    """Read and validate an optional manifest of expected sizes and hashes.

    The format is the one of ``root/.kitsmsan-download.json`` (so a finished download's state file
    can serve as the manifest of the next one)::

        {"case_00000/imaging.nii.gz": {"sha256": "<64 hex>", "size": 12345}, ...}

    or the same mapping under a top-level ``"files"`` key. Both fields are optional.

    Args:
        manifest: a JSON file, a mapping, or None (default: no manifest).
        root: the data folder; every entry must name a file inside it.

    Returns:
        ``{relative path: {"sha256": str | None, "size": int | None}}`` with normalised keys.

    Raises:
        DataError: naming the manifest and the entry, for an unreadable file, an absolute path or
            one escaping ``root``, or a malformed hash / size.
    """
    if manifest is None:
        return {}
    source = "manifest"
    if not isinstance(manifest, Mapping):
        source = str(manifest)
        try:
            manifest = json.loads(Path(manifest).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{source}: cannot read the manifest ({exc})") from None
    if isinstance(manifest, Mapping) and isinstance(manifest.get("files"), Mapping):
        manifest = manifest["files"]
    if not isinstance(manifest, Mapping):
        raise DataError(f"{source}: expected a JSON object of {{path: {{sha256, size}}}}")
    root_resolved = Path(root).resolve()
    out: dict[str, dict] = {}
    for key, entry in manifest.items():
        where = f"{source}: entry {key!r}"
        if not isinstance(key, str) or not key or os.path.isabs(key) or key.startswith(("/", "\\")):
            raise DataError(f"{where}: must be a relative path inside the data folder")
        try:
            rel = safe_join(root_resolved, key).relative_to(root_resolved).as_posix()
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if not isinstance(entry, Mapping):
            raise DataError(f"{where}: expected an object with 'sha256' and/or 'size'")
        sha, size = entry.get("sha256"), entry.get("size")
        if sha is not None and (not isinstance(sha, str) or not _SHA256_RE.match(sha.lower())):
            raise DataError(f"{where}: sha256 {sha!r} is not 64 hex digits")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise DataError(f"{where}: size {size!r} is not a non-negative integer")
        out[rel] = {"sha256": sha.lower() if sha else None, "size": size}
    return out


def plan_downloads(
    root: str | os.PathLike,
    cases: Iterable[int | str] = range(NUM_TRAIN_CASES),
    *,
    imaging: bool = True,
    labels: bool = True,
    imaging_base_url: str = OFFICIAL_IMAGING_URL,
    labels_base_url: str = OFFICIAL_LABELS_URL,
    manifest: Mapping[str, dict] | None = None,
) -> tuple[list[list[DownloadItem]], list[str]]:
    """List the files to fetch, grouped by case; validates everything before anything is written.

    Args:
        root: the data folder.
        cases: case numbers / ids (default ``range(210)``, the labelled cases).
        imaging: include ``imaging.nii.gz`` (default True).
        labels: include ``segmentation.nii.gz`` for cases 0..209 and ``kits.json`` (default True).
        imaging_base_url: see :func:`imaging_url`.
        labels_base_url: see :func:`segmentation_url`.
        manifest: validated manifest from :func:`load_manifest` (default none).

    Returns:
        ``(groups, notes)``: one list of items per case (imaging first), ``kits.json`` as its own
        group at the end; notes such as test cases skipped for labels.

    Raises:
        DataError: bad case ids / numbers, or a destination that escapes ``root`` (for instance a
            case folder that is a symlink to elsewhere). ConfigError: nothing selected.
    """
    if not (imaging or labels):
        raise ConfigError("download: neither imaging nor labels selected")
    manifest = manifest or {}
    ids = validate_cases(cases)

    def item(kind: str, rel: str, url: str, cid: str | None) -> DownloadItem:
        dest = safe_join(root, *rel.split("/"))
        part = safe_join(root, *(rel + PART_SUFFIX).split("/"))
        entry = manifest.get(rel, {})
        return DownloadItem(kind, rel, url, dest, part, cid, entry.get("sha256"), entry.get("size"))

    groups, notes, unlabelled = [], [], []
    for cid in ids:
        group = []
        if imaging:
            rel = f"{cid}/{kits19.IMAGING_FILE}"
            group.append(item("imaging", rel, imaging_url(cid, imaging_base_url), cid))
        if labels:
            if kits19.case_number(cid) < NUM_TRAIN_CASES:
                rel = f"{cid}/{kits19.SEGMENTATION_FILE}"
                group.append(item("segmentation", rel, segmentation_url(cid, labels_base_url), cid))
            else:
                unlabelled.append(cid)
        if group:
            groups.append(group)
    if unlabelled:
        notes.append(
            f"{len(unlabelled)} test case(s) ({unlabelled[0]}..{unlabelled[-1]}) have no public "
            "segmentation; labels skipped for them"
        )
    if labels:
        groups.append([item("metadata", KITS_JSON, kits_json_url(labels_base_url), None)])
    return groups, notes


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------


class _HashingReader:
    """A read-only file wrapper that feeds every byte read into a SHA-256."""

    def __init__(self, fh):
        self.fh, self.sha = fh, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
        return data

    def drain(self) -> str:
        """Hash whatever was not read yet and return the hex digest of the whole file."""
        while self.read(1 << 20):
            pass
        return self.sha.hexdigest()


def _read_exact(fh, n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise DataError(f"{what}: file ends early ({len(data)} of {n} bytes)")
    return data


def read_nifti_header(fh, source: str | os.PathLike):
    """Parse the NIfTI-1/2 header at the start of an (already decompressed) stream.

    Returns:
        ``(header, vox_offset, bytes consumed)``.

    Raises:
        DataError: naming ``source``, if the bytes are not a single-file NIfTI header.
    """
    first = _read_exact(fh, 4, f"{source}: NIfTI header")
    sizes = {int.from_bytes(first, "little"), int.from_bytes(first, "big")}
    klass = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header if 348 in sizes else None
    if klass is None:
        raise DataError(f"{source}: not a NIfTI file (header size field {first!r})")
    raw = first + _read_exact(fh, klass.template_dtype.itemsize - 4, f"{source}: NIfTI header")
    try:
        header = klass.from_fileobj(io.BytesIO(raw), check=True)
    except Exception as exc:  # nibabel raises HeaderDataError / ValueError on bad fields
        raise DataError(f"{source}: invalid NIfTI header ({type(exc).__name__}: {exc})") from None
    if bytes(header["magic"]).rstrip(b"\0") not in (b"n+1", b"n+2"):
        raise DataError(f"{source}: not a single-file NIfTI (.nii) image")
    return header, int(header["vox_offset"]), len(raw)


def verify_nifti(
    path: str | os.PathLike,
    *,
    kind: str,
    source: str | None = None,
    expect_shape: tuple[int, ...] | None = None,
    chunk_bytes: int = 8 << 20,
) -> tuple[tuple[int, int, int], str]:
    """Check a ``.nii.gz`` completely, streaming (bounded memory even for 1 GB volumes).

    Checks, in order: a gzip stream (a Git LFS pointer gets its own message); a NIfTI-1/2 header;
    a 3-D shape (``(Z, Y, X)``) equal to ``expect_shape`` when given; the voxel data complete and
    passing :func:`kitsmsan.data.kits19.check_image_values` (imaging: finite) or
    :func:`~kitsmsan.data.kits19.check_label_values` (segmentation: integers in {0, 1, 2}) chunk
    by chunk; and the gzip CRC / length trailer (read to the end of the stream).

    Args:
        path: the file (its name does not matter, so a ``.part`` can be checked before renaming).
        kind: ``"imaging"`` or ``"segmentation"``.
        source: name used in messages (default ``path``).
        expect_shape: required shape, e.g. the imaging's when checking its segmentation.
        chunk_bytes: decompressed bytes per value check (default 8 MiB).

    Returns:
        ``(shape, sha256 of the file bytes)``.

    Raises:
        DataError: naming ``source`` and the problem.
    """
    source = str(source or path)
    with open(path, "rb") as raw_fh:
        head = raw_fh.read(64)
        raw_fh.seek(0)
        if head.startswith(b"version https://git-lfs"):
            raise DataError(
                f"{source}: got a Git LFS pointer, not the file (use a URL that serves LFS content)"
            )
        if not head.startswith(b"\x1f\x8b"):
            raise DataError(f"{source}: not a gzip file (starts with {head[:16]!r})")
        reader = _HashingReader(raw_fh)
        try:
            with gzip.GzipFile(fileobj=reader, mode="rb") as fh:
                header, vox_offset, used = read_nifti_header(fh, source)
                shape = tuple(int(s) for s in header.get_data_shape())
                if len(shape) != 3 or min(shape) < 1:
                    raise DataError(f"{source}: expected a 3-D (Z, Y, X) image, got shape {shape}")
                if expect_shape is not None and shape != tuple(expect_shape):
                    raise DataError(
                        f"{source}: shape {shape} differs from the case's other file {tuple(expect_shape)}"
                    )
                if vox_offset < used:
                    raise DataError(f"{source}: vox_offset {vox_offset} lies inside the header")
                _read_exact(fh, vox_offset - used, f"{source}: NIfTI extensions")
                _check_voxels(fh, header, shape, kind, source, chunk_bytes)
                while fh.read(1 << 20):  # trailing bytes, then the gzip CRC/size check at EOF
                    pass
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            problem = f"truncated or corrupt gzip data ({type(exc).__name__}: {exc})"
            raise DataError(f"{source}: {problem}") from None
        return shape, reader.drain()


def _check_voxels(fh, header, shape, kind: str, source: str, chunk_bytes: int) -> None:
    """Stream the voxel block and run the loader's value checks on each chunk."""
    dtype = header.get_data_dtype()
    slope, inter = header.get_slope_inter()
    scaled = slope is not None and (slope != 1 or (inter or 0) != 0)
    per_chunk = max(1, chunk_bytes // dtype.itemsize) * dtype.itemsize
    remaining = int(np.prod(shape)) * dtype.itemsize
    while remaining:
        n = min(per_chunk, remaining)
        values = np.frombuffer(_read_exact(fh, n, f"{source}: voxel data"), dtype=dtype)
        remaining -= n
        if scaled:
            values = values * slope + (inter or 0)
        if kind == "segmentation":
            kits19.check_label_values(values, source)
        elif values.dtype.kind in "fc":
            kits19.check_image_values(values, source)


def verify_kits_json(path: str | os.PathLike, source: str | None = None) -> str:
    """Check a downloaded ``kits.json``: a JSON list of objects with a valid ``case_id``.

    The ids are validated even though no path is ever built from them, so that a tampered
    metadata file is refused rather than passed on.

    Returns:
        The SHA-256 of the file.

    Raises:
        DataError: naming ``source`` and the problem.
    """
    source = str(source or path)
    data = Path(path).read_bytes()
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(meta, list) or not meta:
        raise DataError(f"{source}: expected a non-empty JSON list of cases")
    for i, entry in enumerate(meta):
        cid = entry.get("case_id") if isinstance(entry, dict) else None
        try:
            kits19.case_number(cid)
        except DataError:
            raise DataError(f"{source}: entry {i} has an invalid case_id {cid!r}") from None
    return hashlib.sha256(data).hexdigest()


def _partner(item: DownloadItem) -> Path | None:
    """The case's other NIfTI file (imaging <-> segmentation), whose shape must match."""
    if item.kind == "imaging":
        return item.dest.with_name(kits19.SEGMENTATION_FILE)
    if item.kind == "segmentation":
        return item.dest.with_name(kits19.IMAGING_FILE)
    return None


def _partner_shape(item: DownloadItem) -> tuple[int, ...] | None:
    other = _partner(item)
    if other is None or not other.is_file():
        return None
    try:
        with gzip.open(other, "rb") as fh:
            header, _, _ = read_nifti_header(fh, other)
        return tuple(int(s) for s in header.get_data_shape())
    except (DataError, OSError, EOFError, zlib.error):
        return None  # the partner is checked on its own; do not blame this file for it


def verify_file(path: Path, item: DownloadItem) -> str:
    """Run every check that applies to ``item`` on ``path``; return the file's SHA-256.

    Raises:
        DataError: size or hash differs from the manifest, or the content check fails.
    """
    source = f"{item.url} -> {item.dest}"
    size = path.stat().st_size
    if item.size is not None and size != item.size:
        raise DataError(f"{source}: size {size} bytes, manifest says {item.size}")
    if item.kind == "metadata":
        sha = verify_kits_json(path, source)
    else:
        _, sha = verify_nifti(path, kind=item.kind, source=source, expect_shape=_partner_shape(item))
    if item.sha256 is not None and sha != item.sha256:
        raise DataError(f"{source}: SHA-256 {sha} differs from the manifest's {item.sha256}")
    return sha


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def make_session(retries: int = 5, backoff_factor: float = 1.0) -> requests.Session:
    """A :class:`requests.Session` whose adapter retries with exponential backoff.

    urllib3's :class:`~urllib3.util.Retry` retries connection errors, read errors before the
    headers and the statuses 429/500/502/503/504, waiting ``backoff_factor * 2**(n-1)`` seconds
    (honouring ``Retry-After``). After the last retry the error response is returned, and the
    caller turns it into a :class:`DownloadError`.

    Args:
        retries: retries per request (default 5).
        backoff_factor: base of the exponential backoff in seconds (default 1.0).
    """
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff_factor,
        status_forcelist=_RETRY_STATUS,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "kitsmsan-downloader"
    return session


class _Stopped(Exception):
    """Raised inside a worker when the user interrupted the download."""


_BODY_ERRORS = (urllib3.exceptions.HTTPError, requests.RequestException)


def _content_range(resp: requests.Response) -> tuple[int | None, int | None]:
    """``(start, total)`` from ``Content-Range: bytes a-b/N`` or ``bytes */N`` (None if unknown)."""
    m = re.match(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", resp.headers.get("Content-Range", ""))
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _body_chunks(resp: requests.Response, chunk_size: int):
    """Yield the raw (not content-decoded) body as it arrives, at most ``chunk_size`` at a time.

    ``read1`` (urllib3 >= 2.3) returns what one socket read delivered, so a drop or a kill loses
    at most one chunk in flight; older urllib3 falls back to ``stream`` (fills whole chunks).
    Both raise on a body shorter than its ``Content-Length``.
    """
    raw = resp.raw
    if hasattr(raw, "read1"):
        while True:
            chunk = raw.read1(chunk_size, decode_content=False)
            if not chunk:
                return
            yield chunk
    else:  # pragma: no cover - urllib3 < 2.3
        yield from raw.stream(chunk_size, decode_content=False)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


#: the size ceiling of a file whose size is not known (no manifest entry, no Content-Length): the
#: largest KiTS19 imaging file is about 0.9 GB; one segmentation file at most 1.4 MB (cases 0-189)
MAX_BYTES = {"imaging": 4 << 30, "segmentation": 256 << 20, "metadata": 64 << 20}
#: a transfer is stalled when fewer than ``STALL_BYTES`` bytes arrived in ``stall_timeout`` seconds
STALL_BYTES = 1024
STALL_TIMEOUT_S = 60.0


class _Stalled(Exception):
    """Fewer than the stall threshold of bytes arrived within the stall timeout."""


def fetch_to_part(
    session: requests.Session,
    item: DownloadItem,
    *,
    retries: int = 5,
    backoff_factor: float = 1.0,
    timeout: tuple[float, float] = (10.0, STALL_TIMEOUT_S),
    chunk_size: int = 1 << 20,
    on_bytes=None,
    stop: threading.Event | None = None,
    max_bytes: int | None = None,
    stall_bytes: int = STALL_BYTES,
) -> int:
    """Fetch ``item.url`` into ``item.part``, resuming what is already there; return bytes received.

    Three bounds make every download end (the rule: nothing hangs):

    * **Stall timeout** ``timeout[1]`` (default :data:`STALL_TIMEOUT_S`): no byte for that long
      (the socket's read timeout), or fewer than ``stall_bytes`` (default :data:`STALL_BYTES`) in
      any window of that length (a server trickling one byte at a time), ends the pass.
    * **Total bytes**: the expected size (manifest ``size``, else the ``Content-Length`` /
      ``Content-Range`` total) or, when neither is known, ``max_bytes`` (default
      :data:`MAX_BYTES` for the item's kind). A body that grows past it is discarded at once.
    * **Retry budget** ``retries``: each pass that ends without the file spends one, unless it
      pushed the ``.part`` past the largest size it ever had (a resumed drop that made progress).
      A stall, and a restart from zero (``200`` to a range request, ``416``, a range that was not
      asked for), always spend one — so a server whose ``Content-Length`` is larger than its body
      cannot make the loop download the same bytes forever.

    Each pass asks for ``Range: bytes=<size of .part>-`` and appends on ``206``, restarts the file
    on ``200``, and treats ``416`` with a total equal to the ``.part`` size as complete. When the
    budget is spent the ``.part`` is kept for a later run.

    Args:
        session: from :func:`make_session` (retries up to the response headers).
        item: the file.
        retries: the retry budget (default 5).
        backoff_factor: sleep ``backoff_factor * 2**(n-1)`` s before the n-th resume (default 1.0).
        timeout: ``(connect, stall)`` seconds (default ``(10, 60)``).
        chunk_size: bytes per read (default 1 MiB).
        on_bytes: optional callback ``f(n)`` per chunk, or ``f(-n)`` when ``n`` bytes are discarded;
            also called as ``on_bytes(0, total=...)`` when a total size becomes known.
        stop: an event that aborts the transfer between chunks (the ``.part`` is kept).
        max_bytes: the ceiling when the size is unknown (default None: :data:`MAX_BYTES` of the kind).
        stall_bytes: bytes that must arrive per stall window (default :data:`STALL_BYTES`).

    Raises:
        DownloadError: HTTP error after retries (4xx, persistent 5xx), a connection that could not
            be established, a body larger than its bound, or a spent retry budget; the message
            names the URL, the file and the reason.
    """
    where = f"{item.url} -> {item.dest}"
    item.part.parent.mkdir(parents=True, exist_ok=True)
    ceiling = max_bytes if max_bytes is not None else MAX_BYTES.get(item.kind, MAX_BYTES["imaging"])
    stall_s = float(timeout[1])
    received, spent, announced = 0, 0, False
    high_water = item.part.stat().st_size if item.part.exists() else 0
    reasons: list[str] = []

    def spend(reason: str) -> None:
        nonlocal spent
        spent += 1
        reasons.append(reason)
        if spent > retries:
            raise DownloadError(
                f"{where}: gave up after {spent} failed passes (retry budget {retries}; last: {reason}); "
                f"partial file kept at {item.part} (re-run to resume)" if item.part.exists() else
                f"{where}: gave up after {spent} failed passes (retry budget {retries}; last: {reason})")
        if backoff_factor:
            time.sleep(min(backoff_factor * 2 ** max(spent - 1, 0), 60.0))

    while True:
        if stop is not None and stop.is_set():
            raise _Stopped
        offset = item.part.stat().st_size if item.part.exists() else 0
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = session.get(item.url, headers=headers, stream=True, timeout=timeout)
        except requests.RequestException as exc:
            raise DownloadError(f"{where}: request failed after {retries} retries ({exc})") from None
        got = 0
        outcome = None  # None: the pass ended without the file
        with resp:
            start, total = _content_range(resp)
            if resp.status_code == 416 and offset and total == offset:
                return received  # the .part already holds the whole file (killed before rename)
            if resp.status_code == 206 and start == offset:
                mode = "ab"
            elif resp.status_code == 200:
                mode = "wb"  # no Range asked, or the server ignored it: start over
                if offset and on_bytes and announced:
                    on_bytes(-offset)  # these bytes will be received again
                cl = resp.headers.get("Content-Length")
                total = int(cl) if cl and cl.isdigit() else None
            elif resp.status_code in (206, 416):  # a range we did not ask for / stale .part
                log.info("%s: unexpected %s for offset %d; restarting", where, resp.status_code, offset)
                _remove(item.part)
                spend(f"HTTP {resp.status_code} to a range request, restarted from zero")
                continue
            else:
                raise DownloadError(f"{where}: HTTP {resp.status_code} {resp.reason}")
            if item.size is not None and total is not None and total != item.size:
                raise DownloadError(f"{where}: the server announces size {total}, the manifest says {item.size}")
            bound = item.size if item.size is not None else (total if total is not None else ceiling)
            if on_bytes and total is not None and not announced:
                on_bytes(0, total=total - (offset if mode == "ab" else 0))
                announced = True
            try:
                with open(item.part, mode) as fh:
                    size = offset if mode == "ab" else 0
                    window_t, window_n = time.monotonic(), 0
                    for chunk in _body_chunks(resp, chunk_size):
                        if stop is not None and stop.is_set():
                            raise _Stopped
                        size += len(chunk)
                        if size > bound:
                            fh.close()
                            _remove(item.part)
                            what = "the announced/expected size" if bound != ceiling else "the size ceiling"
                            raise DownloadError(f"{where}: the body exceeds {what} of {bound} bytes; "
                                                "download discarded")
                        fh.write(chunk)
                        got += len(chunk)
                        window_n += len(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
                        now = time.monotonic()
                        if now - window_t >= stall_s:
                            if window_n < stall_bytes:
                                raise _Stalled(f"{window_n} bytes in {now - window_t:.1f} s")
                            window_t, window_n = now, 0
                    fh.flush()
                    os.fsync(fh.fileno())
                size = item.part.stat().st_size
                if total is None or size == total:
                    return received + got
                log.info("%s: body ended at %d of %d bytes; resuming", where, size, total)
                outcome = f"body ended at {size} of {total} bytes"
            except _Stalled as exc:
                outcome = f"stalled ({exc}; stall timeout {stall_s:g} s)"
            except _BODY_ERRORS as exc:
                timed_out = "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower()
                log.info("%s: connection dropped after %d new bytes (%s); resuming", where, got, exc)
                outcome = (f"stalled (no byte for {stall_s:g} s)" if timed_out
                           else f"connection dropped ({type(exc).__name__})")
        received += got
        size = item.part.stat().st_size if item.part.exists() else 0
        if size > high_water and not outcome.startswith("stalled"):
            high_water = size  # a resumed drop that made progress: free
            continue
        high_water = max(high_water, size)
        spend(outcome)


# --------------------------------------------------------------------------------------------
# state (what this module placed and verified)
# --------------------------------------------------------------------------------------------


class _State:
    """``root/.kitsmsan-download.json``: ``{rel: {"size", "mtime_ns", "sha256"}}``, thread-safe."""

    def __init__(self, root: Path):
        self.path = safe_join(root, STATE_FILE)
        self.lock = threading.Lock()
        for tmp in Path(root).glob(f".{STATE_FILE}.*.tmp"):  # left by a run killed mid-write
            _remove(tmp)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.files = data["files"] if isinstance(data.get("files"), dict) else {}
        except (OSError, ValueError, AttributeError):
            self.files = {}  # no or unreadable state: every present file is verified in full

    def is_current(self, item: DownloadItem) -> bool:
        rec = self.files.get(item.rel)
        if not isinstance(rec, dict):
            return False
        st = item.dest.stat()
        return (
            rec.get("size") == st.st_size
            and rec.get("mtime_ns") == st.st_mtime_ns
            and (item.sha256 is None or rec.get("sha256") == item.sha256)
        )

    def owns(self, item: DownloadItem) -> bool:
        """True if this module placed ``item.dest`` (a record with its size and mtime)."""
        rec = self.files.get(item.rel)
        if not isinstance(rec, dict) or not item.dest.exists():
            return False
        st = item.dest.stat()
        return rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns

    def record(self, item: DownloadItem, sha256: str) -> None:
        st = item.dest.stat()
        with self.lock:
            self.files[item.rel] = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            atomic_write_json(self.path, {"files": dict(sorted(self.files.items()))})


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# the downloader
# --------------------------------------------------------------------------------------------


class _Progress:
    """One thread-safe tqdm byte counter for all workers (its total grows as sizes become known)."""

    def __init__(self, enabled: bool):
        self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="KiTS19",
                        disable=not enabled, dynamic_ncols=True)
        self.lock = threading.Lock()
        self.received = 0

    def __call__(self, n: int, total: int | None = None) -> None:
        with self.lock:
            if total is not None:
                self.bar.total = (self.bar.total or 0) + total
                self.bar.refresh()
            if n > 0:
                self.received += n
                self.bar.update(n)
            elif n < 0:  # bytes thrown away on a restart
                self.bar.total = (self.bar.total or 0) + (-n)
                self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _process_item(item, session, state, report, lock, *, verify_existing, fetch_kw,
                  replace_bad: bool = False) -> None:
    """Skip, or fetch + verify + place one file. Raises DownloadError on failure."""
    if item.dest.is_file():
        if not verify_existing and state.is_current(item):
            with lock:
                report.skipped.append(item.dest)
            return
        try:
            sha = verify_file(item.dest, item)
        except DataError as exc:
            if not replace_bad:  # a local data file is never replaced without the flag
                raise DownloadError(
                    f"{item.dest}: present but fails verification ({exc}); not replaced. Pass "
                    "--replace-bad (replace_bad=True) to download it again; the old file is then kept "
                    f"beside it as {item.dest.name}.kitsmsan-old") from None
            with lock:
                report.notes.append(
                    f"{item.rel}: present but failed verification ({exc}); downloading again, the old "
                    "file is kept beside it (.kitsmsan-old)"
                )
        else:
            state.record(item, sha)
            with lock:
                report.skipped.append(item.dest)
            return
    resumed = item.part.exists() and item.part.stat().st_size > 0
    for fresh_try in (False, True):
        fetch_to_part(session, item, **fetch_kw)
        try:
            sha = verify_file(item.part, item)
        except DataError as exc:
            _remove(item.part)
            if resumed and not fresh_try:
                # the .part came from an earlier run and may belong to another file version:
                # one clean download before blaming the server
                log.info("%s: resumed file failed verification (%s); downloading from scratch",
                         item.rel, exc)
                continue
            raise DownloadError(f"{exc} (download discarded)") from None
        break
    if item.dest.exists() and not state.owns(item):  # a file this module did not place: kept
        keep_aside(item.dest)
    os.replace(item.part, item.dest)
    _fsync_dir(item.dest.parent)
    state.record(item, sha)
    with lock:
        report.downloaded.append(item.dest)


def is_data_folder(path: Path) -> bool:
    """True for a KiTS19-layout folder: only ``case_XXXXX`` folders, ``kits.json``, this module's
    state file and ``.part`` leftovers (the ``recognize`` of the output-folder rule)."""
    return only_files("case_*", KITS_JSON, STATE_FILE, f"*{PART_SUFFIX}", f".{STATE_FILE}.*")(path)


def download_kits19(
    root: str | os.PathLike,
    cases: Iterable[int | str] = range(NUM_TRAIN_CASES),
    *,
    imaging: bool = True,
    labels: bool = True,
    imaging_base_url: str | None = None,
    labels_base_url: str | None = None,
    manifest: str | os.PathLike | Mapping[str, Any] | None = None,
    workers: int = 4,
    retries: int = 5,
    backoff_factor: float = 1.0,
    timeout: tuple[float, float] = (10.0, STALL_TIMEOUT_S),
    verify_existing: bool = False,
    progress: bool = True,
    replace_bad: bool = False,
    overwrite: bool = False,
    max_bytes: int | None = None,
    stall_bytes: int = STALL_BYTES,
) -> DownloadReport:
    """Download KiTS19 into ``root`` in the official layout (MSAN paper, §2.1 data).

    ``root/case_XXXXX/imaging.nii.gz``, ``root/case_XXXXX/segmentation.nii.gz`` (cases 0..209
    only: the 90 test cases have none) and ``root/kits.json``. Cases are processed by a pool of
    ``workers`` threads, each case's files in turn (imaging first, so the segmentation's shape is
    checked against it). A failing case does not stop the others; the error is raised at the end.

    Args:
        root: the data folder (created if missing).
        cases: case numbers 0..299 or ids ``case_XXXXX`` (default ``range(210)``: the labelled
            training cases the paper uses).
        imaging: fetch ``imaging.nii.gz`` (default True; ~27 GB for 210 cases).
        labels: fetch ``segmentation.nii.gz`` and ``kits.json`` (default True; about 67 MB).
        imaging_base_url: default None: ``$KITSMSAN_IMAGING_URL`` or :data:`OFFICIAL_IMAGING_URL`.
        labels_base_url: default None: ``$KITSMSAN_LABELS_URL`` or :data:`OFFICIAL_LABELS_URL`.
        manifest: optional expected sizes / SHA-256 (see :func:`load_manifest`); default None.
        workers: cases fetched in parallel (default 4).
        retries: HTTP retries per request, and mid-body drops without progress per file
            (default 5).
        backoff_factor: exponential backoff base in seconds (default 1.0).
        timeout: ``(connect, stall)`` timeouts in seconds (default ``(10, 60)``; see
            :func:`fetch_to_part` for the stall rule).
        verify_existing: fully re-verify files already in place even if the state file vouches for
            them (default False).
        progress: show a tqdm byte progress bar (default True).
        replace_bad: download again a file in place that fails verification, keeping the old one
            beside it as ``NAME.kitsmsan-old`` (default False: that file fails, untouched).
        overwrite: use a ``root`` that is not a KiTS19 data folder (default False: refused, see
            :func:`kitsmsan.utils.io.claim_output_dir`); its files are kept.
        max_bytes: size ceiling of a file whose size is unknown (default None: :data:`MAX_BYTES`).
        stall_bytes: bytes per stall window (default :data:`STALL_BYTES`).

    Returns:
        A :class:`DownloadReport`.

    Raises:
        DataError: bad case ids/numbers or manifest entries, or a destination outside ``root``
            (raised before anything is written or requested).
        ConfigError: bad URLs, ``workers``/``retries`` out of range, nothing selected.
        DownloadError: if any file failed (after all other cases finished), including local
            write errors such as a full disk; the message names the URL and the file, ``.report`` holds the :class:`DownloadReport`. Partial
            ``.part`` files of dropped connections are kept, so a re-run resumes them.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers {workers!r}: expected an integer >= 1")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries {retries!r}: expected an integer >= 0")
    img_url, lab_url = resolve_base_urls(imaging_base_url, labels_base_url)
    root = Path(root)
    man = load_manifest(manifest, root)
    groups, notes = plan_downloads(
        root, cases, imaging=imaging, labels=labels,
        imaging_base_url=img_url, labels_base_url=lab_url, manifest=man,
    )
    claim_output_dir(root, "kits19-data", command="download", overwrite=overwrite, recognize=is_data_folder)
    report = DownloadReport(root=root.resolve(), notes=list(notes))
    for note in notes:
        log.info(note)
    state = _State(root)
    lock, stop = threading.Lock(), threading.Event()
    bar = _Progress(progress)
    fetch_kw = dict(retries=retries, backoff_factor=backoff_factor, timeout=timeout,
                    on_bytes=bar, stop=stop, max_bytes=max_bytes, stall_bytes=stall_bytes)

    def run_group(group: list[DownloadItem]) -> None:
        session = make_session(retries, backoff_factor)
        try:
            for item in group:
                if stop.is_set():
                    return
                try:
                    _process_item(item, session, state, report, lock, verify_existing=verify_existing,
                                  fetch_kw=fetch_kw, replace_bad=replace_bad)
                except DownloadError as exc:
                    with lock:
                        report.failed[item.rel] = str(exc)
                    log.warning("%s", exc)  # go on: the case's other file may still be fine
                except OSError as exc:  # local: disk full, permissions (the .part is kept)
                    msg = f"{item.url} -> {item.dest}: cannot write ({exc.strerror or exc})"
                    with lock:
                        report.failed[item.rel] = msg
                    log.warning("%s", msg)
        finally:
            session.close()

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kits19-download")
    try:
        futures = [pool.submit(run_group, g) for g in groups]
        for fut in as_completed(futures):
            fut.result()
    except BaseException:  # Ctrl-C: stop the workers between chunks, keep the .part files
        stop.set()
        print("kitsmsan download: stopping after the chunks in flight (partial files are kept)",
              file=sys.stderr, flush=True)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    report.bytes_downloaded = bar.received
    if report.failed:
        first = next(iter(report.failed.values()))
        err = DownloadError(
            f"{len(report.failed)} file(s) failed (first: {first}); re-run to retry, "
            "completed files are kept and partial ones resume"
        )
        err.report = report
        raise err
    return report
