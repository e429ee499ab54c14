"""Tests of kitsmsan.data.download against a local HTTP server on 127.0.0.1 (issues #7, #8).

The server serves small phantom-like cases written by :func:`kitsmsan.data.kits19.save_case` in the
official URL layout (``/images/case_XXXXX.nii.gz``, ``/data/case_XXXXX/segmentation.nii.gz``,
``/data/kits.json``) and can misbehave on purpose: drop the connection half-way through a body,
answer 500 before succeeding, ignore ``Range``, serve garbage, or trickle bytes slowly (for the
kill -9 test). Nothing leaves the loopback interface; every server is shut down by its fixture.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kitsmsan.data import download as dl
from kitsmsan.data import kits19
from kitsmsan.errors import DataError, DownloadError
from kitsmsan.utils.io import MARKER_FILE

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 48, 48)  # (Z, Y, X): ~70 kB float32, noise keeps the gzip near that size
CASES = (0, 1, 2, 210)  # 210 = a test case: imaging only
FAST = dict(backoff_factor=0, retries=3, timeout=(2.0, 5.0), progress=False, workers=2)


# --------------------------------------------------------------------------------------------
# phantom-like source files
# --------------------------------------------------------------------------------------------


def _phantom(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy body with a kidney (label 1) and a tumour (label 2), shape ``SHAPE``."""
    rng = np.random.default_rng(n)
    z, y, x = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    body = ((y - 24) / 20.0) ** 2 + ((x - 24) / 22.0) ** 2 <= 1
    kidney = ((z - 4) / 3.0) ** 2 + ((y - 24) / 6.0) ** 2 + ((x - 14 - n) / 5.0) ** 2 <= 1
    tumor = kidney & (x > 14 + n)
    label = np.where(tumor, 2, np.where(kidney, 1, 0)).astype(np.uint8)
    image = np.where(body, 40.0, -1000.0) + 110.0 * kidney + rng.normal(0, 20, SHAPE)
    return image.astype(np.float32), label


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict[str, bytes]:
    """URL path -> bytes, in the official layout."""
    src = tmp_path_factory.mktemp("kits19-source")
    files = {}
    for n in CASES:
        image, label = _phantom(n)
        cid = kits19.case_id(n)
        folder = kits19.save_case(src, cid, image, label if n < 210 else None, (3.0, 0.8, 0.8))
        files[f"/images/{cid}.nii.gz"] = (folder / "imaging.nii.gz").read_bytes()
        if n < 210:
            files[f"/data/{cid}/segmentation.nii.gz"] = (folder / "segmentation.nii.gz").read_bytes()
    meta = [{"case_id": kits19.case_id(n), "captured_pixel_width": 0.8} for n in CASES]
    files["/data/kits.json"] = json.dumps(meta).encode()
    return files


def _nifti_gz(array: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes())


# --------------------------------------------------------------------------------------------
# the misbehaving server
# --------------------------------------------------------------------------------------------


class FakeKits:
    """A loopback HTTP server with switchable faults; ``log`` records every GET."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.log: list[dict] = []
        self.drop_first: dict[str, int] = {}  # path -> number of bodies cut in half
        self.fail_first: dict[str, int] = {}  # path -> number of 500 answers
        self.ignore_range = False
        self.slow = 0.0  # seconds between 2 kB pieces
        # path -> (bytes, Event): send that many bytes, then hold the connection open until the
        # test sets the event (so an interruption lands mid-transfer whatever the machine's load)
        self.hold: dict[str, tuple[int, threading.Event]] = {}
        self.extra_length: dict[str, int] = {}  # path -> bytes announced beyond the body
        self.trickle: dict[str, float] = {}  # path -> seconds between single bytes
        self.endless: set[str] = set()  # paths served as a chunked body that never ends
        self.closing = threading.Event()  # set by stop(): every held or endless body ends
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                entry = {"path": path, "range": rng, "status": None, "sent": 0}
                with fake.lock:
                    fake.log.append(entry)
                    fail = fake.fail_first.get(path, 0)
                    if fail:
                        fake.fail_first[path] = fail - 1
                    drop = fake.drop_first.get(path, 0)
                    if drop:
                        fake.drop_first[path] = drop - 1
                if path not in fake.files:
                    entry["status"] = 404
                    self.send_error(404)
                    return
                if fail:
                    entry["status"] = 500
                    self.send_error(500, "try again")
                    return
                body, start = fake.files[path], 0
                if path in fake.endless:  # chunked, no length, never ends (until the client leaves)
                    entry["status"] = 200
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    piece = b"\0" * 4096
                    try:
                        while not fake.closing.is_set():
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                            entry["sent"] += len(piece)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if rng and not fake.ignore_range and path in fake.extra_length:
                    entry["status"] = 416  # a broken server: the range it announced does not exist
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if rng and not fake.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        entry["status"] = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                entry["status"] = 206 if start or (rng and not fake.ignore_range) else 200
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload) + fake.extra_length.get(path, 0)))
                self.send_header("Content-Type", "application/octet-stream")
                # a hostile name: the downloader must never use it
                self.send_header("Content-Disposition", 'attachment; filename="../../evil.nii.gz"')
                self.end_headers()
                if drop:
                    payload = payload[: len(payload) // 2]
                if path in fake.trickle:
                    try:
                        for i in range(len(payload)):
                            self.wfile.write(payload[i : i + 1])
                            self.wfile.flush()
                            entry["sent"] += 1
                            if fake.closing.wait(fake.trickle[path]):
                                break
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return
                if path in fake.hold:
                    n, gate = fake.hold[path]
                    try:
                        self.wfile.write(payload[:n])
                        self.wfile.flush()
                        entry["sent"] += n
                        while not (gate.wait(0.05) or fake.closing.is_set()):
                            pass
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    payload = payload[n:]
                try:
                    for i in range(0, len(payload), 2048):
                        self.wfile.write(payload[i : i + 2048])
                        entry["sent"] += len(payload[i : i + 2048])
                        if fake.slow:
                            self.wfile.flush()
                            time.sleep(fake.slow)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def urls(self) -> dict[str, str]:
        base = f"http://127.0.0.1:{self.port}"
        return {"imaging_base_url": f"{base}/images", "labels_base_url": f"{base}/data"}

    def requests_for(self, path: str) -> list[dict]:
        return [e for e in self.log if e["path"] == path]

    def stop(self) -> None:
        self.closing.set()
        for _, gate in self.hold.values():
            gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(source):
    fake = FakeKits(source)
    try:
        yield fake
    finally:
        fake.stop()


def _get(root, server, cases=(0, 1), **kw):
    opts = {**FAST, **server.urls, **kw}
    return dl.download_kits19(root, list(cases), **opts)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root except the downloader's own state file and output marker."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (dl.STATE_FILE, MARKER_FILE)
    }


def _expected(source, cases, imaging=True, labels=True) -> dict[str, bytes]:
    out = {}
    for n in cases:
        cid = kits19.case_id(n)
        if imaging:
            out[f"{cid}/imaging.nii.gz"] = source[f"/images/{cid}.nii.gz"]
        if labels and n < 210:
            out[f"{cid}/segmentation.nii.gz"] = source[f"/data/{cid}/segmentation.nii.gz"]
    if labels:
        out["kits.json"] = source["/data/kits.json"]
    return out


# --------------------------------------------------------------------------------------------
# URL scheme and planning
# --------------------------------------------------------------------------------------------


def test_official_url_scheme():
    assert dl.imaging_url("case_00042") == (
        "https://huggingface.co/datasets/neheller/KiTS-Challenge-Imaging/resolve/main/images/case_00042.nii.gz"
    )
    assert dl.imaging_url("case_00042", dl.LEGACY_IMAGING_URL) == (
        "https://kits19.sfo2.digitaloceanspaces.com/master_00042.nii.gz"
    )
    assert dl.segmentation_url("case_00007") == (
        "https://raw.githubusercontent.com/neheller/kits19/master/data/case_00007/segmentation.nii.gz"
    )
    assert dl.kits_json_url("http://h/x/") == "http://h/x/kits.json"


def test_base_urls_from_environment(monkeypatch):
    monkeypatch.setenv(dl.ENV_IMAGING_URL, "http://127.0.0.1:1/img")
    monkeypatch.delenv(dl.ENV_LABELS_URL, raising=False)
    assert dl.resolve_base_urls() == ("http://127.0.0.1:1/img", dl.OFFICIAL_LABELS_URL)
    assert dl.resolve_base_urls("http://a/b", "http://c/d") == ("http://a/b", "http://c/d")
    with pytest.raises(Exception, match="file:///etc"):
        dl.resolve_base_urls("file:///etc")


@pytest.mark.parametrize(
    "cases, bad",
    [
        ([300], "300"),
        ([-1, 5, 999], "-1, 999"),
        (["../x"], "'../x'"),
        (["case_0001"], "case_0001"),
        (["/etc/passwd"], "/etc/passwd"),
        ([True], "True"),
    ],
)
def test_bad_case_ids_refused_before_anything(tmp_path, server, cases, bad):
    root = tmp_path / "data"
    with pytest.raises(DataError, match="unknown KiTS19 case") as exc:
        _get(root, server, cases)
    assert bad in str(exc.value)
    assert not root.exists() and server.log == []


def test_test_cases_get_no_labels(tmp_path):
    groups, notes = dl.plan_downloads(tmp_path, [5, 210, 299], imaging=False, labels=True)
    rels = [i.rel for g in groups for i in g]
    assert rels == ["case_00005/segmentation.nii.gz", "kits.json"]
    assert "2 test case(s) (case_00210..case_00299)" in notes[0]


# --------------------------------------------------------------------------------------------
# happy path, resume, retries
# --------------------------------------------------------------------------------------------


def test_full_download_loads(tmp_path, server, source):
    root = tmp_path / "data"
    report = _get(root, server, (0, 1, 210))
    assert _tree(root) == _expected(source, (0, 1, 210))
    assert len(report.downloaded) == 6 and report.skipped == [] and report.failed == {}
    assert report.bytes_downloaded == sum(len(b) for b in _expected(source, (0, 1, 210)).values())
    case = kits19.load_case(root / "case_00001")
    image, label = _phantom(1)
    np.testing.assert_array_equal(case.image, image)
    np.testing.assert_array_equal(case.label, label)
    assert kits19.load_case(root / "case_00210").label is None
    assert not (tmp_path / "evil.nii.gz").exists() and not list(tmp_path.rglob("evil*"))
    state = json.loads((root / dl.STATE_FILE).read_text())["files"]
    assert state["kits.json"]["sha256"] == hashlib.sha256(source["/data/kits.json"]).hexdigest()


def test_resume_after_dropped_connection(tmp_path, server, source):
    path = "/images/case_00000.nii.gz"
    server.drop_first[path] = 1
    root = tmp_path / "data"
    _get(root, server, (0,), labels=False)
    reqs = server.requests_for(path)
    assert len(reqs) == 2
    half = len(source[path]) // 2
    assert reqs[0]["range"] is None and reqs[0]["sent"] == half
    assert reqs[1]["range"] == f"bytes={half}-" and reqs[1]["status"] == 206
    assert reqs[1]["sent"] == len(source[path]) - half  # only the rest travelled again
    assert (root / "case_00000/imaging.nii.gz").read_bytes() == source[path]


def test_server_ignoring_range_restarts_cleanly(tmp_path, server, source):
    path = "/data/case_00001/segmentation.nii.gz"
    server.ignore_range = True
    server.drop_first[path] = 2
    root = tmp_path / "data"
    _get(root, server, (1,), imaging=False)
    reqs = server.requests_for(path)
    assert [r["status"] for r in reqs] == [200, 200, 200]
    assert reqs[1]["range"] is not None  # we asked to resume, the server sent everything
    assert (root / "case_00001/segmentation.nii.gz").read_bytes() == source[path]


def test_500_then_ok_is_retried_by_urllib3(tmp_path, server, source):
    path = "/data/kits.json"
    server.fail_first[path] = 2
    root = tmp_path / "data"
    _get(root, server, (0,), imaging=False)
    assert [r["status"] for r in server.requests_for(path)] == [500, 500, 200]
    assert (root / "kits.json").read_bytes() == source[path]


def test_persistent_500_fails_naming_url_and_file(tmp_path, server):
    path = "/images/case_00000.nii.gz"
    server.fail_first[path] = 100
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as exc:
        _get(root, server, (0,), retries=2)
    msg = str(exc.value)
    assert path in msg and "case_00000/imaging.nii.gz" in msg and "HTTP 500" in msg
    assert len(server.requests_for(path)) == 3  # 1 + 2 retries
    assert not (root / "case_00000/imaging.nii.gz").exists()
    # the other file of the case and kits.json were still fetched
    assert (root / "case_00000/segmentation.nii.gz").is_file() and (root / "kits.json").is_file()
    assert exc.value.report.failed.keys() == {"case_00000/imaging.nii.gz"}


def test_missing_file_404(tmp_path, server):
    del server.files["/data/case_00001/segmentation.nii.gz"]
    with pytest.raises(DownloadError, match=r"case_00001/segmentation.nii.gz: HTTP 404"):
        _get(tmp_path, server, (1,), imaging=False)
    assert len(server.requests_for("/data/case_00001/segmentation.nii.gz")) == 1  # 404: no retry


def test_connection_refused(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(DownloadError, match="request failed after 1 retries"):
        dl.download_kits19(
            tmp_path,
            [0],
            labels=False,
            imaging_base_url=f"http://127.0.0.1:{port}/i",
            **{**FAST, "retries": 1},
        )
    assert not (tmp_path / "case_00000/imaging.nii.gz").exists()


def test_endless_drops_give_up_and_keep_the_partial(tmp_path, server, source):
    path = "/images/case_00002.nii.gz"
    server.drop_first[path] = 100
    server.ignore_range = True  # every pass restarts and is cut again: no progress
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="gave up after 3 failed passes .*retry budget 2"):
        _get(root, server, (2,), labels=False, retries=2)
    part = root / "case_00002/imaging.nii.gz.part"
    assert part.is_file() and not (root / "case_00002/imaging.nii.gz").exists()
    assert len(server.requests_for(path)) == 4  # 1 pass with progress + 3 without (retries=2)
    half = len(source[path]) // 2
    assert part.stat().st_size == half
    server.drop_first[path] = 0
    server.ignore_range = False
    _get(root, server, (2,), labels=False)  # a later run resumes from it
    assert server.log[-1]["range"] == f"bytes={half}-" and server.log[-1]["status"] == 206
    assert (root / "case_00002/imaging.nii.gz").read_bytes() == source[path] and not part.exists()


# --------------------------------------------------------------------------------------------
# garbage and verification: nothing is placed, the .part is removed
# --------------------------------------------------------------------------------------------


def _garbage(kind: str, good: bytes) -> bytes:
    if kind == "html":
        return b"<html><body>Service moved</body></html>" * 50
    if kind == "gzip_not_nifti":
        return gzip.compress(b"hello " * 2000)
    if kind == "truncated_gzip":
        return good[: len(good) * 2 // 3]  # served with a matching Content-Length
    if kind == "lfs_pointer":
        return b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"
    if kind == "four_d":
        return _nifti_gz(np.zeros((2, 8, 48, 48), np.float32))
    if kind == "nan_voxels":
        return _nifti_gz(np.full(SHAPE, np.nan, np.float32))
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, expect",
    [
        ("html", "not a gzip file"),
        ("gzip_not_nifti", "not a NIfTI file"),
        ("truncated_gzip", "truncated or corrupt gzip"),
        ("lfs_pointer", "Git LFS pointer"),
        ("four_d", "expected a 3-D"),
        ("nan_voxels", "non-finite"),
    ],
)
def test_garbage_imaging_is_refused(tmp_path, server, kind, expect):
    path = "/images/case_00000.nii.gz"
    server.files[path] = _garbage(kind, server.files[path])
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=expect) as exc:
        _get(root, server, (0,), labels=False)
    assert server.urls["imaging_base_url"] + "/case_00000.nii.gz" in str(exc.value)
    assert str(root.resolve() / "case_00000/imaging.nii.gz") in str(exc.value)
    assert not list(root.rglob("*.nii.gz*"))  # neither the file nor its .part


@pytest.mark.parametrize(
    "label, expect",
    [
        (np.full(SHAPE, 3, np.uint8), r"outside \{0, 1, 2\}"),
        (np.zeros((8, 48, 40), np.uint8), r"shape \(8, 48, 40\) differs"),
    ],
)
def test_bad_segmentation_is_refused(tmp_path, server, label, expect):
    path = "/data/case_00001/segmentation.nii.gz"
    server.files[path] = _nifti_gz(label)
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=expect):
        _get(root, server, (1,))
    assert (root / "case_00001/imaging.nii.gz").is_file()
    assert not list((root / "case_00001").glob("segmentation*"))


def test_kits_json_with_hostile_case_id_is_refused(tmp_path, server):
    server.files["/data/kits.json"] = json.dumps([{"case_id": "../../evil"}]).encode()
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"invalid case_id '../../evil'"):
        _get(root, server, (0,), imaging=False)
    assert not list(root.glob("kits.json*")) and not (tmp_path / "evil").exists()


def test_manifest_hash_checked(tmp_path, server, source):
    rel, path = "case_00000/segmentation.nii.gz", "/data/case_00000/segmentation.nii.gz"
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="SHA-256 .* differs from the manifest"):
        _get(root, server, (0,), imaging=False, manifest={rel: {"sha256": "0" * 64}})
    assert not (root / rel).exists() and not (root / (rel + ".part")).exists()
    with pytest.raises(DownloadError, match="size .* manifest says 5"):
        _get(root, server, (0,), imaging=False, manifest={rel: {"size": 5}})
    good = {"files": {rel: {"sha256": hashlib.sha256(source[path]).hexdigest(), "size": len(source[path])}}}
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_text(json.dumps(good))
    _get(root, server, (0,), imaging=False, manifest=manifest_file)
    assert (root / rel).read_bytes() == source[path]


def test_disk_full_fails_cleanly_and_resumes(tmp_path, server, source, monkeypatch):
    """ENOSPC after 20 kB: DownloadError naming the file, nothing in place, the good prefix kept."""
    import builtins
    import errno

    class FullDisk:
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            if self.written + len(data) > 20_000:  # fill the disk, then fail like ENOSPC does
                self.fh.write(data[: 20_000 - self.written])
                self.written = 20_000
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def full_open(file, mode="r", *args, **kw):
        fh = builtins.open(file, mode, *args, **kw)
        return FullDisk(fh) if str(file).endswith(".part") else fh

    monkeypatch.setattr(dl, "open", full_open, raising=False)
    path = "/images/case_00001.nii.gz"
    with pytest.raises(DownloadError, match="imaging.nii.gz: cannot write .No space left on device"):
        _get(tmp_path, server, (1,), labels=False)
    part = tmp_path / "case_00001/imaging.nii.gz.part"
    assert not (tmp_path / "case_00001/imaging.nii.gz").exists()
    kept = part.stat().st_size
    assert kept == 20_000 and source[path].startswith(part.read_bytes())
    monkeypatch.undo()  # space freed: the next run resumes and completes
    _get(tmp_path, server, (1,), labels=False)
    assert server.log[-1]["range"] == f"bytes={kept}-"
    assert (tmp_path / "case_00001/imaging.nii.gz").read_bytes() == source[path]


# --------------------------------------------------------------------------------------------
# idempotence, partial files, labels-only
# --------------------------------------------------------------------------------------------


def test_second_run_makes_no_requests(tmp_path, server, source):
    root = tmp_path / "data"
    _get(root, server, (0, 1))
    n = len(server.log)
    report = _get(root, server, (0, 1))
    assert len(server.log) == n  # not one request
    assert report.downloaded == [] and len(report.skipped) == 5
    # without the state file every file is verified in full, still without a request
    (root / dl.STATE_FILE).unlink()
    report = _get(root, server, (0, 1), verify_existing=True)
    assert len(server.log) == n and len(report.skipped) == 5
    assert _tree(root) == _expected(source, (0, 1))


def test_corrupt_file_in_place_is_replaced_only_with_the_flag(tmp_path, server, source):
    """A local file that fails verification is never replaced silently: without ``replace_bad`` the
    download of that file fails naming it (file untouched); with it the file is downloaded again
    and the old one is kept beside it."""
    root = tmp_path / "data"
    _get(root, server, (0,), imaging=False)
    seg = root / "case_00000/segmentation.nii.gz"
    damaged = seg.read_bytes()[:100]
    seg.write_bytes(damaged)  # truncated by hand: size/mtime no longer match
    with pytest.raises(
        DownloadError, match="segmentation.nii.gz: present but fails verification.*--replace-bad"
    ):
        _get(root, server, (0,), imaging=False)
    assert seg.read_bytes() == damaged
    report = _get(root, server, (0,), imaging=False, replace_bad=True)
    assert seg.read_bytes() == source["/data/case_00000/segmentation.nii.gz"]
    assert (root / "case_00000/segmentation.nii.gz.kitsmsan-old").read_bytes() == damaged
    assert report.downloaded == [seg.resolve()]
    assert "failed verification" in report.notes[-1]


def test_cli_download_refuses_a_bad_local_file_without_the_flag(tmp_path, server, source, capsys):
    from kitsmsan.cli import main

    root = tmp_path / "data"
    _get(root, server, (0,), imaging=False)
    seg = root / "case_00000/segmentation.nii.gz"
    seg.write_bytes(b"not a nifti")
    argv = [
        "download",
        "--root",
        str(root),
        "--cases",
        "0",
        "--labels-only",
        "--no-progress",
        "--retries",
        "0",
        "--imaging-url",
        server.urls["imaging_base_url"],
        "--labels-url",
        server.urls["labels_base_url"],
    ]
    assert main(argv) == 2
    assert "--replace-bad" in capsys.readouterr().err and seg.read_bytes() == b"not a nifti"
    assert main(argv + ["--replace-bad"]) == 0
    assert seg.read_bytes() == source["/data/case_00000/segmentation.nii.gz"]
    assert (root / "case_00000/segmentation.nii.gz.kitsmsan-old").read_bytes() == b"not a nifti"


# --------------------------------------------------------------------------------------------
# nothing hangs: stall timeout, total-bytes bound, retry budget (each against a broken server)
# --------------------------------------------------------------------------------------------


def _bounded(fn, limit_s: float = 60.0):
    """Run ``fn`` in a thread; fail the test (instead of hanging it) if it has not ended in ``limit_s``."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), f"still running after {limit_s} s: a hang"
    return box


def test_content_length_larger_than_the_body_spends_the_retry_budget(tmp_path, server, source):
    """Content-Length 100 bytes too large, and a 416 to the resume: each restart from zero spends
    the budget, so the file fails after ``retries + 1`` failed passes (it used to loop forever)."""
    path = "/images/case_00002.nii.gz"
    server.extra_length[path] = 100
    box = _bounded(lambda: _get(tmp_path / "data", server, (2,), labels=False, retries=2))
    assert isinstance(box.get("error"), DownloadError), box
    assert "gave up after 3 failed passes" in str(box["error"])
    assert len(server.requests_for(path)) <= 2 * (2 + 1) + 1  # bounded by the budget, not by time
    assert not (tmp_path / "data/case_00002/imaging.nii.gz").exists()


def test_a_trickling_server_is_a_stall(tmp_path, server):
    """One byte every 0.2 s is under the stall threshold (1 kB per stall timeout of 0.5 s): every
    pass is a stall and spends the budget, whatever the bytes that did arrive."""
    path = "/images/case_00002.nii.gz"
    server.trickle[path] = 0.2
    box = _bounded(lambda: _get(tmp_path / "data", server, (2,), labels=False, retries=1, timeout=(2.0, 0.5)))
    assert isinstance(box.get("error"), DownloadError), box
    assert "stalled" in str(box["error"]) and "gave up after 2 failed passes" in str(box["error"])
    assert len(server.requests_for(path)) == 2


def test_a_silent_server_is_a_stall(tmp_path, server, source):
    """Headers, 8 kB, then silence: the stall timeout (the socket's read timeout) ends each pass."""
    path = "/images/case_00002.nii.gz"
    server.hold[path] = (8192, threading.Event())  # never set: silent until the test ends
    box = _bounded(lambda: _get(tmp_path / "data", server, (2,), labels=False, retries=1, timeout=(2.0, 0.5)))
    assert isinstance(box.get("error"), DownloadError), box
    assert "stalled (no byte for 0.5 s)" in str(box["error"])


def test_an_endless_body_is_cut_at_the_ceiling(tmp_path, server):
    """A chunked body without end and without a known size stops at the ceiling, the .part removed."""
    path = "/images/case_00002.nii.gz"
    server.endless.add(path)
    box = _bounded(lambda: _get(tmp_path / "data", server, (2,), labels=False, max_bytes=256 << 10))
    assert isinstance(box.get("error"), DownloadError), box
    assert "exceeds the size ceiling of 262144 bytes" in str(box["error"])
    assert not list((tmp_path / "data").rglob("*.part"))
    assert server.requests_for(path)[0]["sent"] < 64 << 20  # stopped near the ceiling, not at the disk


def test_a_body_longer_than_the_manifest_size_is_cut_there(tmp_path, server, source):
    """With a known size (manifest) the bound is that size, even when the server announces none."""
    path = "/images/case_00002.nii.gz"
    server.endless.add(path)
    rel = "case_00002/imaging.nii.gz"
    box = _bounded(
        lambda: _get(tmp_path / "data", server, (2,), labels=False, manifest={rel: {"size": 10_000}})
    )
    assert "exceeds the announced/expected size of 10000 bytes" in str(box.get("error")), box


def test_default_bounds_are_stated():
    assert dl.STALL_TIMEOUT_S == 60.0 and dl.STALL_BYTES == 1024
    assert dl.MAX_BYTES == {"imaging": 4 << 30, "segmentation": 256 << 20, "metadata": 64 << 20}


def test_complete_part_from_a_killed_run_is_placed(tmp_path, server, source):
    path = "/images/case_00001.nii.gz"
    part = tmp_path / "case_00001/imaging.nii.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(source[path])  # killed after the last byte, before the rename
    _get(tmp_path, server, (1,), labels=False)
    req = server.requests_for(path)
    assert [(r["range"], r["status"], r["sent"]) for r in req] == [(f"bytes={len(source[path])}-", 416, 0)]
    assert (tmp_path / "case_00001/imaging.nii.gz").read_bytes() == source[path]


def test_stale_part_is_discarded_and_refetched(tmp_path, server, source):
    path = "/images/case_00001.nii.gz"
    part = tmp_path / "case_00001/imaging.nii.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(os.urandom(1000))  # left by some other file / version
    _get(tmp_path, server, (1,), labels=False)
    req = server.requests_for(path)
    assert [r["range"] for r in req] == ["bytes=1000-", None]
    assert (tmp_path / "case_00001/imaging.nii.gz").read_bytes() == source[path]


def test_labels_only(tmp_path, server, source):
    report = _get(tmp_path, server, (0, 2, 210), imaging=False)
    assert _tree(tmp_path) == _expected(source, (0, 2), imaging=False)
    assert not any(e["path"].startswith("/images/") for e in server.log)
    assert not (tmp_path / "case_00210").exists()
    assert any("no public segmentation" in n for n in report.notes)
    case = kits19.load_case(tmp_path / "case_00002", load_image=False)
    np.testing.assert_array_equal(case.label, _phantom(2)[1])


# --------------------------------------------------------------------------------------------
# paths from metadata / CLI never leave the root
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["/etc/passwd", "../outside.nii.gz", "case_00000/../../x"])
def test_manifest_path_traversal_refused(tmp_path, server, entry):
    root = tmp_path / "data"
    with pytest.raises(DataError, match="manifest: entry"):
        _get(root, server, (0,), manifest={entry: {"size": 1}})
    assert not root.exists() and server.log == []


def test_case_folder_symlinked_outside_refused(tmp_path, server):
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "case_00000").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match="escapes the output folder"):
        _get(root, server, (0,))
    assert list(outside.iterdir()) == [] and server.log == []


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_labels_only(tmp_path, server, source, capsys):
    from kitsmsan.cli import main

    rc = main(
        [
            "download",
            "--root",
            str(tmp_path),
            "--cases",
            "0-1",
            "--labels-only",
            "--no-progress",
            "--labels-url",
            server.urls["labels_base_url"],
            "--retries",
            "2",
        ]
    )
    assert rc == 0
    assert _tree(tmp_path) == _expected(source, (0, 1), imaging=False)
    assert "3 downloaded" in capsys.readouterr().out
    rc = main(["download", "--root", str(tmp_path), "--cases", "0-1,300", "--no-progress"])
    assert rc == 2 and "300" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# kill -9 during a download, then re-run: the result equals a clean run
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_during_download_then_rerun_equals_clean(tmp_path, server, source):
    root, clean = tmp_path / "killed", tmp_path / "clean"
    cases = [0, 1, 2]
    server.slow = 0.02  # 2 kB every 20 ms: each file takes ~0.7 s
    script = (
        "import sys; from kitsmsan.data.download import download_kits19; "
        "download_kits19(sys.argv[1], [0, 1, 2], imaging_base_url=sys.argv[2], "
        "labels_base_url=sys.argv[3], workers=2, backoff_factor=0, progress=False)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(root), *server.urls.values()],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        parts: dict[Path, int] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            sizes = {p: p.stat().st_size for p in root.rglob("*.part")} if root.exists() else {}
            if any(s > 4096 for s in sizes.values()):
                break
            time.sleep(0.01)
        server.slow = 0.3  # see test_ctrl_c_stops_cleanly_and_keeps_partials
        assert proc.poll() is None, "the download ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    parts = {p: p.stat().st_size for p in root.rglob("*.part")}
    assert any(parts.values()), "the kill should have left a non-empty partial file"
    server.slow = 0.0
    n_before = len(server.log)
    _get(root, server, cases)
    for part, size in parts.items():  # each partial was resumed where it stopped
        url_path = (
            "/images/" + part.parent.name + ".nii.gz"
            if part.name.startswith("imaging")
            else ("/data/" + part.parent.name + "/segmentation.nii.gz")
        )
        resumed = [e for e in server.log[n_before:] if e["path"] == url_path]
        assert resumed[0]["range"] == (f"bytes={size}-" if size else None)
    _get(clean, server, cases)
    assert _tree(root) == _tree(clean) == _expected(source, cases)
    assert not list(root.rglob("*.part"))


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_keeps_partials(tmp_path, server, source):
    """SIGINT to ``kitsmsan download``: exit code 130, nothing half-written in place, resumable.

    Deterministic under any load: the server sends 48 kB of case 2's imaging (66 kB) and then holds
    the connection open, so the download cannot finish before the signal. The test waits until
    32 kB are on disk (the writer's buffer holds at most 8 kB back), signals, and releases the rest
    only after the process said it is stopping, so the worker sees the stop at its next chunk.
    """
    root = tmp_path / "data"
    path = "/images/case_00002.nii.gz"
    gate = threading.Event()
    server.hold[path] = (48 << 10, gate)
    server.slow = 0.01
    cmd = [
        sys.executable,
        "-m",
        "kitsmsan",
        "download",
        "--root",
        str(root),
        "--cases",
        "0-2",
        "--no-progress",
        "--imaging-url",
        server.urls["imaging_base_url"],
        "--labels-url",
        server.urls["labels_base_url"],
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Ctrl-C as a terminal delivers it: a runner started in the background of a shell without job
        # control (`nohup make test &`) passes SIGINT on as ignored, and Python then keeps ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    part = root / "case_00002" / "imaging.nii.gz.part"
    try:
        deadline = time.monotonic() + 60  # a hang guard only: the server holds until told
        while not (part.exists() and part.stat().st_size >= 32 << 10):
            assert proc.poll() is None and time.monotonic() < deadline, "the held transfer never began"
            time.sleep(0.01)
        assert proc.poll() is None  # guaranteed: the rest of case 2 has not been sent
        proc.send_signal(signal.SIGINT)
        lines = [proc.stderr.readline()]  # blocks until the process handled the signal
        while lines[-1] and b"stopping" not in lines[-1]:  # (skip any earlier log line)
            lines.append(proc.stderr.readline())
        if b"stopping" not in lines[-1]:  # say how the process ended, for the record
            gate.set()
            code = proc.wait(timeout=60)
            raise AssertionError(
                f"no stopping line: stderr {lines}, exit code {code}, stdout {proc.stdout.read()!r}"
            )
        gate.set()  # now the held body goes on; the worker stops at its next chunk
        _, err = proc.communicate(timeout=60)
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and b"interrupted" in err
    assert part.is_file() and 32 << 10 <= part.stat().st_size < len(source[path])  # the partial is kept
    for f in root.rglob("*.nii.gz"):  # whatever is in place is complete
        assert f.read_bytes() in source.values()
    server.hold.clear()
    server.slow = 0.0
    _get(root, server, (0, 1, 2))
    assert _tree(root) == _expected(source, (0, 1, 2))


@pytest.mark.kits_labels
def test_real_kits19_labels_pass_verification(tmp_path, kits_labels_dir):
    """The awkward real files (uint16 qform-only case_00015, 512 x 796 in-plane case_00160) and the real
    kits.json go through the downloader unchanged and load."""
    real = {"/data/kits.json": (kits_labels_dir / "kits.json").read_bytes()}
    for n in (0, 15, 160):
        cid = kits19.case_id(n)
        seg = kits_labels_dir / cid / "segmentation.nii.gz"
        real[f"/data/{cid}/segmentation.nii.gz"] = seg.read_bytes()
    fake = FakeKits(real)
    try:
        fake.drop_first["/data/case_00160/segmentation.nii.gz"] = 1  # and resume a real one
        _get(tmp_path, fake, (0, 15, 160), imaging=False)
    finally:
        fake.stop()
    for n in (0, 15, 160):
        cid = kits19.case_id(n)
        got = tmp_path / cid / "segmentation.nii.gz"
        assert got.read_bytes() == real[f"/data/{cid}/segmentation.nii.gz"]
        label, spacing, _ = kits19.load_label(got)
        assert label.dtype == np.uint8 and label.max() <= 2
    assert kits19.load_label(tmp_path / "case_00160/segmentation.nii.gz")[0].shape == (252, 512, 796)
    assert (tmp_path / "kits.json").read_bytes() == real["/data/kits.json"]
