"""A Colab runtime, simulated: a notebook's install cell installs kitsmsan, then the notebook runs.

A fresh virtualenv holds only what Colab has and kitsmsan needs from it — a current pip, torch (the
pinned wheel of requirements.txt) and ipykernel — and is registered as a Jupyter kernel. papermill runs the first
notebook on that kernel from an empty folder, with ``KITSMSAN_INSTALL_URL`` pointing the install cell
at ``git+file://`` a clone of this repository at HEAD. The cell must install the package (with its
widget extra) without touching torch, and the notebook must then run to the end.

Slow (a virtualenv and a pip install: a few minutes); needs git, skipped with that reason without it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "01_data_exploration.ipynb"
KERNEL = "colab-sim"

pytestmark = pytest.mark.slow


def _pin(name: str) -> str:
    """``name==version`` as pinned in requirements.txt."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if re.match(rf"{re.escape(name)}==", line.strip(), re.I):
            return line.split("#")[0].strip()
    raise AssertionError(f"requirements.txt pins no {name}")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.mark.skipif(
    shutil.which("git") is None, reason="git is not installed: the install cell installs from a git URL"
)
@pytest.mark.timeout(900)
def test_install_cell_on_a_bare_runtime_then_the_notebook_runs(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    nbformat = pytest.importorskip("nbformat")
    clone = tmp_path / "clone"
    _run(["git", "clone", "--quiet", str(ROOT), str(clone)])
    head = _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).stdout.strip()
    assert _run(["git", "-C", str(clone), "rev-parse", "HEAD"]).stdout.strip() == head

    # the runtime: torch and ipykernel only, as a Jupyter kernel of its own
    venv = tmp_path / "colab"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    torch_pin, kernel_pin = _pin("torch"), _pin("ipykernel")
    # a current pip, as Colab has (the pip that venv bundles with Python 3.11 cannot parse "name @ git+file://")
    pip_pin = f"pip=={importlib.metadata.version('pip')}"
    _run([str(python), "-m", "pip", "install", "--quiet", pip_pin])
    _run([str(python), "-m", "pip", "install", "--quiet", torch_pin, kernel_pin])
    probe = "import importlib.util as u, importlib.metadata as m; print(u.find_spec('kitsmsan') is None, m.version('torch'))"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    before = _run([str(python), "-c", probe], env=env, cwd=tmp_path).stdout.split()
    assert before[0] == "True", "the simulated runtime must not see kitsmsan before the install cell"
    _run([str(python), "-m", "ipykernel", "install", "--prefix", str(venv), "--name", KERNEL])

    work = tmp_path / "content"  # Colab's working folder: no repository checkout in it
    work.mkdir()
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(venv / "share" / "jupyter"))
    monkeypatch.setenv("KITSMSAN_INSTALL_URL", f"git+file://{clone}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        parameters={"seed": 0},
        kernel_name=KERNEL,
        cwd=str(work),
        progress_bar=False,
        execution_timeout=300,
    )

    nb = nbformat.read(out, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    text = "\n".join(
        o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        for o in c.get("outputs", [])
    )
    assert "same as kits_affine(spacing): True" in text  # the notebook ran past its set-up
    after = _run([str(python), "-c", probe], env=env, cwd=tmp_path).stdout.split()
    assert after == ["False", before[1]], "kitsmsan installed and torch left as the runtime had it"
    site = _run(
        [str(python), "-c", "import kitsmsan, ipywidgets; print(kitsmsan.__file__)"], env=env, cwd=tmp_path
    ).stdout.strip()
    assert site.startswith(str(venv)), f"kitsmsan imported from {site}, not from the runtime's install"
    direct = json.loads(
        next((venv / "lib").glob("python*/site-packages/kitsmsan-*.dist-info/direct_url.json")).read_text()
    )
    assert direct["url"] == f"file://{clone}" and direct["vcs_info"]["commit_id"] == head
