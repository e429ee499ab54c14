"""Cross-cutting reliability checks that no module's own tests cover.

Covered elsewhere (not repeated here; see ``RELIABILITY_TALLY`` in ``scripts/book_tools.py``): kill -9 during
``prepare`` (``test_preprocess``), during training and checkpoint writes (``test_train``,
``test_checkpoint``), during ``download`` (``test_download``); disk full in ``prepare_cache``,
``save_checkpoint``, ``save_case`` and the downloader at the API level; the malicious pickle through
``kitsmsan.checkpoint`` and ``train --resume``; ``safe_join`` itself (``test_paths``).

Here:

* **disk full through the CLI** — every command that writes (``prepare``, ``predict``,
  ``evaluate``, ``ensemble``, ``phantoms``, ``models``, ``stats``) answers ``ENOSPC`` with one line
  naming the file and exit code 2, and leaves the tree as it was; a ``predict`` that runs out of
  space half-way keeps the finished predictions, and a re-run completes to a clean run's result;
* **kill -9 during predict** — the re-run completes, every prediction equals a clean run's;
* **a malicious checkpoint** (its pickle would create a file) through ``predict --run`` (run
  folder and file) and through :func:`kitsmsan.inference.load_model`: refused, one clear line, the
  file never created — with a control showing the same file *does* create it under a plain
  unpickle; likewise a malicious ``probs_XXXXX.npy`` fed to ``ensemble --method average``;
* **paths** — an output file that is a symlink pointing outside, hostile folder names in the data
  folder, and ``phantoms --out``: nothing is written outside the chosen output folder;
* **outputs pointed at real data** — ``prepare --cache`` on a data folder and ``phantoms --out`` on
  real cases are refused (both used to replace the source cases).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REPO, make_tiny_case
from test_cli_errors import CASES, tiny_checkpoint, tree

# -- helpers ---------------------------------------------------------------------------------------


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """``kitsmsan.cli.main(argv)`` in-process; returns (exit code, stderr)."""
    from kitsmsan.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_one_line_error(err: str, command: str, *fragments: str) -> str:
    """stderr is one ``kitsmsan <command>: error:`` line without traceback, holding ``fragments``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"not one line: {err!r}"
    assert lines[0].startswith(f"kitsmsan {command}: error: "), lines[0]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def labels_of(folder: Path) -> dict[str, np.ndarray]:
    """The voxels of every ``prediction_XXXXX.nii.gz`` in ``folder``."""
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("prediction_*.nii.gz"))}


class Evil:
    """Unpickling this calls ``open(target, "w")``: it would create a file (harmless, but proof)."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """``tmp_path`` with ``data/`` (2 tiny labelled cases) and ``run/checkpoints/best.pt``."""
    from kitsmsan.data.kits19 import save_case

    for cid in CASES:
        image, label, spacing = make_tiny_case(cid)
        save_case(tmp_path / "data", cid, image, label, spacing)
    tiny_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    return tmp_path


def predict_argv(w: Path, out: str = "out", *extra) -> list:
    return ["predict", "--run", w / "run", "--data", w / "data", "--out", w / out, "--device", "cpu", *extra]


def make_predictions(w: Path, *names: str) -> None:
    """Write, into each folder of ``names``, what ``kitsmsan predict --save-probs`` writes (without
    running a network): ``prediction_XXXXX.nii.gz`` = the ground truth, ``probs_XXXXX.npy`` = its
    one-hot float16 ``(3, Z, Y, X)``."""
    from kitsmsan.data.kits19 import load_case, save_prediction

    for name in names:
        (w / name).mkdir()
        for cid in CASES:
            case = load_case(w / "data" / cid)
            save_prediction(case.label, case, w / name)
            probs = np.eye(3, dtype=np.float16)[case.label].transpose(3, 0, 1, 2)
            np.save(w / name / f"probs_{cid[-5:]}.npy", probs)


# -- disk full through the CLI ----------------------------------------------------------------------


def disk_full(monkeypatch, after: int = 0) -> None:
    """Make ``os.fsync`` fail with ENOSPC after ``after`` successful calls.

    Every kitsmsan writer (``atomic_write*``, the cache's ``_save_npy``) fsyncs each file before
    renaming it into place, so this is where a full disk is noticed.
    """
    real, calls = os.fsync, {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


#: (command, argv(world), the output the message must name); predictions are made first where needed
DISK_FULL = {
    "prepare": (
        lambda w: ["prepare", "--data", w / "data", "--cache", w / "cache", "--no-progress"],
        "cache",
    ),
    "predict": (lambda w: predict_argv(w, "new"), "new/prediction_00000.nii.gz"),
    "evaluate": (
        lambda w: ["evaluate", "--pred", w / "p1", "--data", w / "data", "--out", w / "eval"],
        "eval/per_case.csv",
    ),
    "ensemble": (
        lambda w: ["ensemble", "--pred", w / "p1", w / "p2", "--out", w / "ens"],
        "ens/prediction_00000.nii.gz",
    ),
    "phantoms": (
        lambda w: [
            "phantoms",
            "--out",
            w / "ph",
            "--cases",
            "1",
            "--size",
            "32",
            "--slices",
            "6",
            "--no-progress",
        ],
        "ph",
    ),
    "models": (
        lambda w: [
            "models",
            "--variants",
            "unet3d",
            "--base-channels",
            "4",
            "--input-shape",
            "1,1,4,32,32",
            "--json",
            w / "models.json",
        ],
        "models.json",
    ),
    "stats": (
        lambda w: ["stats", "--data", w / "data", "--csv", w / "stats.csv", "--no-progress"],
        "stats.csv",
    ),
}


@pytest.mark.parametrize("command", list(DISK_FULL))
def test_disk_full_gives_one_line_error_and_changes_nothing(world, capsys, monkeypatch, command):
    argv, named = DISK_FULL[command]
    if command in ("evaluate", "ensemble"):
        make_predictions(world, "p1", "p2")
    before = tree(world)
    disk_full(monkeypatch)
    rc, err = run_cli(capsys, argv(world))
    monkeypatch.undo()
    assert rc == 2, err
    line = assert_one_line_error(err, command, str(world / named))
    assert "no space left on device" in line.lower()
    assert tree(world) == before  # no file, no temporary, no empty folder left behind


@pytest.mark.slow
def test_disk_full_half_way_through_predict_keeps_finished_cases_and_a_rerun_completes(
    world, capsys, monkeypatch
):
    rc, err = run_cli(capsys, predict_argv(world, "clean"))
    assert rc == 0, err
    disk_full(monkeypatch, after=1)  # the first prediction is written, the second is not
    rc, err = run_cli(capsys, predict_argv(world))
    monkeypatch.undo()
    assert rc == 2
    assert_one_line_error(err, "predict", str(world / "out" / "prediction_00001.nii.gz"), "No space left")
    out = world / "out"
    assert sorted(p.name for p in out.iterdir()) == [".kitsmsan-output.json", "prediction_00000.nii.gz"]
    clean = labels_of(world / "clean")
    np.testing.assert_array_equal(labels_of(out)["prediction_00000.nii.gz"], clean["prediction_00000.nii.gz"])
    rc, err = run_cli(capsys, predict_argv(world))  # space is back
    assert rc == 0, err
    got = labels_of(out)
    assert got.keys() == clean.keys()
    for name in clean:
        np.testing.assert_array_equal(got[name], clean[name])


# -- kill -9 during predict -------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_during_predict_then_rerun_equals_a_clean_run(world, capsys):
    """``os._exit`` (as abrupt as SIGKILL: no cleanup, no ``finally``) in the middle of writing the
    second prediction; the re-run completes and every file equals a clean run's."""
    rc, err = run_cli(capsys, predict_argv(world, "clean"))
    assert rc == 0, err
    out = world / "out"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        import kitsmsan.utils.io as kio
        real = os.fsync
        def die(fd):
            if ".prediction_00001.nii.gz" in os.readlink(f"/proc/self/fd/{{fd}}"):
                os._exit(9)   # killed with the file half-written under its temporary name
            real(fd)
        os.fsync = die
        from kitsmsan.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    argv = [str(a) for a in predict_argv(world)]
    proc = subprocess.run([sys.executable, "-c", script, *argv], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    left = sorted(p.name for p in out.iterdir())
    assert "prediction_00000.nii.gz" in left and "prediction_00001.nii.gz" not in left
    assert any(n.startswith(".prediction_00001.nii.gz.") for n in left)  # the killed write's temporary
    rc, err = run_cli(capsys, predict_argv(world))
    assert rc == 0, err
    clean, got = labels_of(world / "clean"), labels_of(out)
    assert got.keys() == clean.keys()
    for name in clean:
        np.testing.assert_array_equal(got[name], clean[name])
    # the stale temporary is harmless: never picked up as a prediction
    from kitsmsan.metrics import list_predictions

    assert list_predictions(out) == list(CASES)


# -- untrusted files --------------------------------------------------------------------------------


def evil_checkpoint(path: Path, target: Path) -> Path:
    """A real kitsmsan checkpoint with one extra entry whose unpickling creates ``target``."""
    from kitsmsan import checkpoint as ckpt
    from kitsmsan.models import build_model

    state = ckpt.make_checkpoint(build_model("msan_v1", base_channels=4), iteration=1)
    state["notes"] = Evil(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_the_malicious_checkpoint_is_live(tmp_path):
    """Control: under a plain (unsafe) load the payload really runs, so the refusals below mean
    something."""
    control = tmp_path / "control.txt"
    path = evil_checkpoint(tmp_path / "evil.pt", control)
    torch.load(path, weights_only=False)
    assert control.exists()


@pytest.mark.parametrize("how", ["run folder", "checkpoint file"])
def test_malicious_checkpoint_through_predict_is_refused_and_runs_nothing(world, capsys, how):
    pwned = world / "pwned.txt"
    evil = evil_checkpoint(world / "run" / "checkpoints" / "best.pt", pwned)
    before = tree(world)
    argv = predict_argv(world)
    if how == "checkpoint file":
        argv[2] = evil
    rc, err = run_cli(capsys, argv)
    assert rc == 2
    assert_one_line_error(err, "predict", str(evil), "refused")
    assert not pwned.exists()
    assert tree(world) == before  # no output folder either


def test_malicious_checkpoint_through_load_model_is_refused(tmp_path):
    from kitsmsan.errors import CheckpointError
    from kitsmsan.inference import load_model

    pwned = tmp_path / "pwned.txt"
    evil = evil_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", pwned)
    for source in (tmp_path / "run", evil):
        with pytest.raises(CheckpointError, match="refused") as exc:
            load_model(source, "cpu")
        assert str(evil) in str(exc.value)
    assert not pwned.exists()


def test_malicious_probability_file_in_ensemble_is_refused(world, capsys):
    make_predictions(world, "p1", "p2")
    pwned, control = world / "pwned.txt", world / "control.txt"
    bad = world / "p2" / "probs_00000.npy"
    np.save(bad, np.array([Evil(pwned)], dtype=object), allow_pickle=True)
    np.save(world / "control.npy", np.array([Evil(control)], dtype=object), allow_pickle=True)
    np.load(world / "control.npy", allow_pickle=True)  # control: an unsafe load runs it
    assert control.exists()
    before = tree(world)
    rc, err = run_cli(
        capsys,
        ["ensemble", "--pred", world / "p1", world / "p2", "--out", world / "ens", "--method", "average"],
    )
    assert rc == 2
    assert_one_line_error(err, "ensemble", str(bad), "pickled objects are refused")
    assert not pwned.exists()
    assert tree(world) == before


def test_probability_file_of_the_wrong_kind_in_ensemble(world, capsys):
    make_predictions(world, "p1", "p2")
    bad = world / "p2" / "probs_00001.npy"
    np.save(bad, np.zeros((3, 16, 20), np.int64))  # 3-D integers, not (3, Z, Y, X) floats
    rc, err = run_cli(
        capsys,
        [
            "ensemble",
            "--pred",
            world / "p1",
            world / "p2",
            "--out",
            world / "ens",
            "--method",
            "average",
            "--cases",
            "1",
        ],
    )
    assert rc == 2
    assert_one_line_error(err, "ensemble", str(bad), "int64")
    assert not (world / "ens").exists()


def test_probability_file_with_nan_is_named_in_ensemble(world, capsys):
    """Errors about probability files name the file, not a position in a list."""
    make_predictions(world, "p1", "p2")
    bad = world / "p2" / "probs_00001.npy"
    probs = np.load(bad)
    probs[0, 0, 0, 0] = np.nan
    np.save(bad, probs)
    rc, err = run_cli(
        capsys,
        [
            "ensemble",
            "--pred",
            world / "p1",
            world / "p2",
            "--out",
            world / "ens",
            "--method",
            "average",
            "--cases",
            "1",
        ],
    )
    assert rc == 2
    line = assert_one_line_error(err, "ensemble", str(bad), "NaN or infinite")
    assert "prob_maps[" not in line
    assert not (world / "ens").exists()


# -- paths never leave the output folder ------------------------------------------------------------


def test_output_file_symlinked_outside_is_refused_by_predict(world, capsys):
    victim = world / "victim.txt"
    victim.write_text("precious")
    out = world / "out"
    out.mkdir()
    (out / "prediction_00000.nii.gz").symlink_to(victim)
    rc, err = run_cli(capsys, predict_argv(world))
    assert rc == 2
    assert_one_line_error(err, "predict", "prediction_00000.nii.gz", "escapes the output folder")
    assert victim.read_text() == "precious"


def test_output_file_symlinked_outside_is_replaced_not_followed_by_evaluate(world, capsys):
    """``evaluate`` writes its tables with ``atomic_write``: the rename replaces the link itself, so
    the file it pointed to is untouched and the result lands inside ``--out``."""
    make_predictions(world, "p1")
    victim = world / "victim.json"
    victim.write_text("precious")
    out = world / "eval"
    out.mkdir()
    (out / "summary.json").symlink_to(victim)
    rc, err = run_cli(capsys, ["evaluate", "--pred", world / "p1", "--data", world / "data", "--out", out])
    assert rc == 0, err
    assert victim.read_text() == "precious"
    assert not (out / "summary.json").is_symlink() and '"summary"' in (out / "summary.json").read_text()


def test_hostile_folder_names_in_the_data_folder_write_nothing_outside(world, capsys):
    """Folders whose names look like cases but are not ``case_XXXXX`` (and one linked from outside)
    are never turned into output paths; every write lands inside ``--out``."""
    data = world / "data"
    src = data / "case_00000" / "imaging.nii.gz"
    for name in ("case_00000 ..", "case_0000", "case_00002.", "..case_00003", "case_00004x"):
        (data / name).mkdir()
        (data / name / "imaging.nii.gz").write_bytes(src.read_bytes())
    elsewhere = world / "elsewhere" / "case_00005"  # a case folder linked in from outside
    elsewhere.mkdir(parents=True)
    (elsewhere / "imaging.nii.gz").write_bytes(src.read_bytes())
    (data / "case_00005").symlink_to(elsewhere, target_is_directory=True)
    before = tree(world)
    rc, err = run_cli(capsys, predict_argv(world))
    assert rc == 0, err
    after = tree(world)
    new = sorted(set(after) - set(before))
    assert all(p == "out" or p.startswith("out/") for p in new), new
    assert {k: v for k, v in after.items() if k in before} == before  # nothing outside changed
    assert sorted(p.name for p in (world / "out").iterdir()) == [
        ".kitsmsan-output.json",
        "predict.json",
        "prediction_00000.nii.gz",
        "prediction_00001.nii.gz",
        "prediction_00005.nii.gz",
    ]


def test_phantoms_out_writes_only_inside_it(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    before = tree(tmp_path)
    rc, err = run_cli(
        capsys,
        [
            "phantoms",
            "--out",
            tmp_path / "sub" / ".." / "ph",
            "--cases",
            "2",
            "--size",
            "32",
            "--slices",
            "6",
            "--no-progress",
        ],
    )
    assert rc == 0, err
    after = tree(tmp_path)
    new = sorted(set(after) - set(before))
    assert new and all(p == "ph" or p.startswith("ph/") for p in new), new
    assert {k: v for k, v in after.items() if k in before} == before
    assert {"case_00000", "case_00001", "phantoms.json"} <= {p.name for p in (tmp_path / "ph").iterdir()}


# -- outputs pointed at real data: refused, nothing replaced ---------------------------------------


def _digests(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("cache", ["data", "other"])
def test_prepare_refuses_a_cache_that_is_a_data_folder(world, capsys, cache):
    """``prepare --cache`` pointed at the data folder (or at another KiTS19 copy) used to replace
    every case folder with its cache entry: the source NIfTI files were deleted."""
    if cache == "other":
        from kitsmsan.data.kits19 import save_case

        image, label, spacing = make_tiny_case("case_00000")
        save_case(world / "other", "case_00000", image, label, spacing)
    before, contents = tree(world), _digests(world)
    rc, err = run_cli(
        capsys, ["prepare", "--data", world / "data", "--cache", world / cache, "--no-progress"]
    )
    assert rc == 2
    assert_one_line_error(
        err,
        "prepare",
        str(world / cache),
        "differ from the data folder" if cache == "data" else "not a file of a kitsmsan cache",
    )
    assert tree(world) == before and _digests(world) == contents


@pytest.mark.parametrize("kind", ["pure", "from labels"])
def test_phantoms_refuse_to_overwrite_real_cases(world, capsys, kind):
    """``phantoms --out`` pointed at a real data folder used to overwrite its cases."""
    from kitsmsan.data.kits19 import save_case

    image, label, spacing = make_tiny_case("case_00000")
    save_case(world / "labels", "case_00000", image, label, spacing)  # a source for --from-labels
    before, contents = tree(world), _digests(world)
    argv = ["phantoms", "--out", world / "data", "--no-progress", "--cases", "1"]
    argv += ["--size", "32", "--slices", "6"] if kind == "pure" else ["--from-labels", world / "labels"]
    rc, err = run_cli(capsys, argv)
    assert rc == 2
    assert_one_line_error(
        err, "phantoms", str(world / "data"), "case_00000", "not an output folder of 'kitsmsan phantoms'"
    )
    assert tree(world) == before and _digests(world) == contents


def test_phantoms_rerun_into_its_own_folder_is_allowed(tmp_path, capsys):
    argv = [
        "phantoms",
        "--out",
        tmp_path / "ph",
        "--cases",
        "1",
        "--size",
        "32",
        "--slices",
        "6",
        "--no-progress",
    ]
    assert run_cli(capsys, argv)[0] == 0
    first = _digests(tmp_path / "ph")
    assert run_cli(capsys, argv)[0] == 0  # listed in phantoms.json: rewritten, same bytes
    second = _digests(tmp_path / "ph")
    assert second.keys() == first.keys()
    assert all(second[k] == first[k] for k in first if k.endswith(".nii.gz"))
