"""The output-folder rule, per command (table-driven).

A command writes only into a folder that is new, empty, or marked (``.kitsmsan-output.json``) as
the output of the same command and kind. For every command that writes, three hostile outputs
are tried: a folder of unrelated files (``notes.txt`` beside an uncompressed ``case_00000/
imaging.nii`` — what a user's data folder looks like), another command's output folder, and, for
commands with a single output file, an existing file it did not write. Each is refused with one
line naming the folder (or file), and the tree is unchanged. With ``--overwrite`` the command runs
and every file it found is still there, byte for byte (a replaced one is kept beside it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kitsmsan.errors import OutputFolderError
from kitsmsan.utils.io import MARKER_FILE, claim_output_dir, claim_output_file, distinct_dirs, read_marker
from test_cli_errors import tree
from test_reliability import assert_one_line_error, make_predictions, run_cli
from test_reliability import world as world  # noqa: PLC0414 - the fixture, by its name

NO_SERVER = "http://127.0.0.1:9/x"  # refused before any request: nothing listens there

#: command -> (argv(world, out), what the argument names: "dir" or "file")
COMMANDS = {
    "phantoms": (
        lambda w, o: [
            "phantoms",
            "--out",
            o,
            "--cases",
            "1",
            "--size",
            "32",
            "--slices",
            "6",
            "--no-progress",
        ],
        "dir",
    ),
    "prepare": (lambda w, o: ["prepare", "--data", w / "data", "--cache", o, "--no-progress"], "dir"),
    "train": (
        lambda w, o: [
            "train",
            "--data",
            w / "data",
            "--cache",
            w / "cache",
            "--out",
            o.parent,
            "--variant",
            "msan_v1",
            "--no-progress",
        ],
        "dir",
    ),
    "predict": (
        lambda w, o: ["predict", "--run", w / "run", "--data", w / "data", "--out", o, "--device", "cpu"],
        "dir",
    ),
    "ensemble": (lambda w, o: ["ensemble", "--pred", w / "p1", w / "p2", "--out", o], "dir"),
    "evaluate": (lambda w, o: ["evaluate", "--pred", w / "p1", "--data", w / "data", "--out", o], "dir"),
    "download": (
        lambda w, o: [
            "download",
            "--root",
            o,
            "--cases",
            "0",
            "--no-progress",
            "--retries",
            "0",
            "--imaging-url",
            NO_SERVER,
            "--labels-url",
            NO_SERVER,
        ],
        "dir",
    ),
    "reproduce": (lambda w, o: ["reproduce", "--out", o, "--no-progress"], "dir"),
    "stats": (lambda w, o: ["stats", "--data", w / "data", "--csv", o, "--no-progress"], "file"),
    "models": (
        lambda w, o: [
            "models",
            "--variants",
            "unet3d",
            "--base-channels",
            "4",
            "--input-shape",
            "1,1,4,32,32",
            "--json",
            o,
        ],
        "file",
    ),
    "bench": (lambda w, o: ["bench", "merge", "--inputs", w / "nothing.json", "--json", o], "file"),
}
#: commands whose --overwrite run is cheap enough here (the others are refused before any work,
#: so their refusal is what this file checks; their writers are the same claim_output_dir)
RUNS_HERE = ("phantoms", "prepare", "ensemble", "evaluate", "stats", "models")
#: where the output lands, under the test's folder (train writes OUT/VARIANT)
OUT = {"train": "target/msan_v1"}
#: commands that replace case folders as a whole: a case folder holding files they did not write
#: is refused even with --overwrite (it would be deleted)
CASE_WRITERS = {"prepare": "case_00000/ holds 'imaging.nii'", "phantoms": "case folders not written by"}


def _foreign_folder(path: Path) -> None:
    (path / "case_00000").mkdir(parents=True)
    (path / "case_00000" / "imaging.nii").write_bytes(b"uncompressed CT the user cares about")
    (path / "notes.txt").write_text("my notes\n")


def _other_command_folder(path: Path, command: str) -> None:
    other = "evaluate" if command != "evaluate" else "predict"
    claim_output_dir(path, "something", command=other)
    (path / "summary.json").write_text('{"someone": "else"}\n')


def _digests(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _prepare_inputs(world: Path, command: str) -> None:
    if command in ("ensemble", "evaluate"):
        make_predictions(world, "p1", "p2")


#: folder commands meet unrelated files and another command's output; file commands an existing file
FOREIGN = [
    (c, f)
    for c, (_, what) in COMMANDS.items()
    for f in (("unrelated files", "another command's output") if what == "dir" else ("unrelated files",))
]


@pytest.mark.parametrize("command, found", FOREIGN)
def test_a_foreign_output_folder_is_refused(world, capsys, command, found):
    argv, what = COMMANDS[command]
    _prepare_inputs(world, command)
    out = world / OUT.get(command, "target")
    if what == "file":
        out.write_text("a file the user wrote\n")
    elif found == "unrelated files":
        _foreign_folder(out)
    else:
        _other_command_folder(out, command)
    before, contents = tree(world), _digests(world)
    rc, err = run_cli(capsys, argv(world, out))
    assert rc == 2, err
    line = assert_one_line_error(err, command, str(out))
    if command == "prepare" and found == "unrelated files":
        assert CASE_WRITERS[command] in line  # refused whatever the flags
    else:
        assert "--overwrite" in line
    if what == "dir" and found == "unrelated files" and command != "prepare":
        assert "case_00000/" in line and "notes.txt" in line  # says what it found
    assert tree(world) == before and _digests(world) == contents  # nothing written, nothing lost


@pytest.mark.parametrize("command", RUNS_HERE)
def test_overwrite_runs_and_keeps_every_file_it_found(world, capsys, command):
    argv, what = COMMANDS[command]
    _prepare_inputs(world, command)
    out = world / "target"
    if what == "file":
        out.write_text("a file the user wrote\n")
    else:
        _foreign_folder(out)
        (out / "summary.json").write_text('{"mine": 1}\n')  # a name evaluate writes
        (out / "index.json").write_text('{"mine": 2}\n')  # a name prepare writes
    found = _digests(world / "target") if what == "dir" else {"": out.read_bytes()}
    if command in CASE_WRITERS:  # a case folder with foreign files is never replaced, even so
        rc, err = run_cli(capsys, [*argv(world, out), "--overwrite"])
        assert rc == 2 and CASE_WRITERS[command] in err
        (out / "case_00000" / "imaging.nii").rename(out / "imaging.nii")
        (out / "case_00000").rmdir()
        found = _digests(out)
    rc, err = run_cli(capsys, [*argv(world, out), "--overwrite"])
    assert rc == 0, err
    if what == "file":
        assert (world / "target.kitsmsan-old").read_bytes() == found[""]
        return
    after = _digests(out)
    for name, data in found.items():  # each one is still there, or kept beside its replacement
        assert after.get(name) == data or after.get(f"{name}.kitsmsan-old") == data, name
    assert read_marker(out)["command"] == command


@pytest.mark.parametrize("command", RUNS_HERE)
def test_a_rerun_into_its_own_folder_is_accepted(world, capsys, command):
    argv, _ = COMMANDS[command]
    _prepare_inputs(world, command)
    out = world / "target"
    assert run_cli(capsys, argv(world, out))[0] == 0
    rc, err = run_cli(capsys, argv(world, out))
    assert rc == 0, err
    assert not list(world.rglob("*.kitsmsan-old"))  # its own files are simply rewritten


def test_legacy_folders_without_a_marker_are_recognised(world, capsys):
    """A cache written before markers existed is still the cache (recognised by its content)."""
    assert run_cli(capsys, COMMANDS["prepare"][0](world, world / "cache"))[0] == 0
    (world / "cache" / MARKER_FILE).unlink()
    assert run_cli(capsys, COMMANDS["prepare"][0](world, world / "cache"))[0] == 0
    assert read_marker(world / "cache")["kind"] == "cache"


def test_an_unrelated_index_json_in_a_cache_folder_is_not_overwritten(world, capsys):
    (world / "cache").mkdir()
    (world / "cache" / "index.json").write_text('{"my": "index"}\n')
    rc, err = run_cli(capsys, COMMANDS["prepare"][0](world, world / "cache"))
    assert rc == 2 and "index.json" in err
    assert (world / "cache" / "index.json").read_text() == '{"my": "index"}\n'


def test_a_training_run_folder_is_not_an_evaluation_folder(world, capsys):
    run = world / "runs" / "msan_v1"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}\n")
    (run / "summary.json").write_text('{"iterations": 5}\n')
    make_predictions(world, "p1")
    rc, err = run_cli(capsys, COMMANDS["evaluate"][0](world, run))
    assert rc == 2 and str(run) in err
    assert (run / "summary.json").read_text() == '{"iterations": 5}\n'


def test_ensemble_refuses_a_folder_given_twice(world, capsys):
    make_predictions(world, "pA")
    (world / "x").mkdir()
    spellings = [world / "pA", f"{world / 'pA'}/", world / "x" / ".." / "pA"]
    rc, err = run_cli(capsys, ["ensemble", "--pred", *spellings, "--out", world / "ens"])
    assert rc == 2 and "given twice" in err and not (world / "ens").exists()
    with pytest.raises(OutputFolderError, match="given twice"):
        distinct_dirs(["a", "./a/"])
    assert distinct_dirs(["a", "b"]) == [Path("a"), Path("b")]


def test_claim_rules_directly(tmp_path):
    assert claim_output_dir(tmp_path / "new" / "deep", "k", command="c") == tmp_path / "new" / "deep"
    assert read_marker(tmp_path / "new" / "deep") == {
        "command": "c",
        "kind": "k",
        "version": 1,
        "foreign": [],
    }
    (tmp_path / "empty").mkdir()
    claim_output_dir(tmp_path / "empty", "k", command="c")  # empty: accepted
    with pytest.raises(OutputFolderError, match="holds the output of 'kitsmsan c' \\(k\\)"):
        claim_output_dir(tmp_path / "empty", "k2", command="c")  # same command, other kind
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputFolderError, match="is not a folder"):
        claim_output_dir(tmp_path / "f", "k", command="c")
    with pytest.raises(OutputFolderError, match="not written by 'kitsmsan c'"):
        claim_output_file(tmp_path / "f", command="c")
    (tmp_path / "check").mkdir()
    (tmp_path / "check" / "a.txt").write_text("x")
    claim_output_dir(tmp_path / "check", "k", command="c", overwrite=True, create=False)
    assert read_marker(tmp_path / "check") is None  # create=False writes nothing
    claim_output_dir(tmp_path / "check", "k", command="c", overwrite=True)
    assert read_marker(tmp_path / "check")["foreign"] == ["a.txt"]


def test_atomic_write_keeps_a_foreign_file_beside_its_replacement(tmp_path):
    from kitsmsan.utils.io import atomic_write_text

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "summary.json").write_text("theirs")
    claim_output_dir(tmp_path / "o", "k", command="c", overwrite=True)
    atomic_write_text(tmp_path / "o" / "summary.json", "ours 1")
    atomic_write_text(tmp_path / "o" / "summary.json", "ours 2")  # now ours: replaced, not kept
    assert (tmp_path / "o" / "summary.json").read_text() == "ours 2"
    assert (tmp_path / "o" / "summary.json.kitsmsan-old").read_text() == "theirs"
    assert not (tmp_path / "o" / "summary.json.kitsmsan-old-2").exists()
    assert json.loads((tmp_path / "o" / MARKER_FILE).read_text())["foreign"] == []
