"""The run folder's rules: one writer at a time (with stale-lock detection) and what a resume may change."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from kitsmsan.errors import ConfigError
from kitsmsan.train import TrainConfig, train
from kitsmsan.train.runlock import LOCK_FILE, RESUME_RULES, RunLock, check_resume_overrides
from test_train import data, tiny_config  # noqa: F401  (the module-scoped fixture)


def _cli(capsys, *argv) -> tuple[int, str]:
    from kitsmsan.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):  # noqa: F811
    """A finished 5-iteration run (checkpoint at 5), copied fresh for each test that changes it."""
    return train(tiny_config(data, tmp_path_factory.mktemp("runs") / "msan_v1", num_iters=5, ckpt_every=5))


def test_every_setting_has_a_resume_rule():
    """A new TrainConfig field fails here until its resume rule is decided."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields <= set(RESUME_RULES), sorted(fields - set(RESUME_RULES))
    assert set(RESUME_RULES.values()) == {"apply", "grow", "refuse"}


#: (override, expected): "refuse" -> exit 2 naming the key, config.json unchanged; "apply" -> the
#: resumed run records it; "below" -> num_iters under the iteration reached is refused
RESUME_CASES = [
    ("lr=0.5", "refuse"),
    ("batch_size=4", "refuse"),
    ("seed=3", "refuse"),
    ("train_cases=0-1", "refuse"),
    ("run_dir=/elsewhere", "refuse"),
    ("model.base_channels=8", "refuse"),
    ("amp=off", "refuse"),
    ("num_iters=3", "below"),
    ("num_iters=7", "apply"),
    ("log_every=1", "apply"),
]


@pytest.mark.parametrize("override, expected", RESUME_CASES)
def test_resume_rule_per_setting(finished_run, tmp_path, capsys, override, expected):
    import shutil

    run = tmp_path / "msan_v1"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()  # unfinished: the resume really runs
    config_before = (run / "config.json").read_text()
    key, value = override.split("=", 1)
    rc, err = _cli(
        capsys,
        "train",
        "--resume",
        run,
        "--set",
        override,
        "--set",
        "num_iters=7" if key != "num_iters" else "log_every=5",
        "--no-progress",
    )
    if expected == "apply":
        assert rc == 0, err
        recorded = json.loads((run / "config.json").read_text())
        assert str(recorded[key]) == value  # recorded ...
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["iteration"] == 7  # ... and applied
        return
    assert rc == 2
    assert f"--set {key.split('.')[0]}" in err  # names the setting
    assert (
        "below the iteration the run reached (5)" if expected == "below" else "cannot change on --resume"
    ) in err
    assert (run / "config.json").read_text() == config_before


def test_check_resume_overrides_directly():
    check_resume_overrides({"progress": False, "num_iters": 10}, iteration=10)
    with pytest.raises(ConfigError, match="num_iters=9.*below"):
        check_resume_overrides({"num_iters": 9}, iteration=10)
    with pytest.raises(ConfigError, match="--set not_a_field=1"):
        check_resume_overrides({"not_a_field": 1})


def test_set_run_dir_on_a_new_run_is_a_one_line_error(capsys, tmp_path):
    rc, err = _cli(capsys, "train", "--data", tmp_path, "--set", f"run_dir={tmp_path}")
    assert rc == 2 and "give --out instead" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- the lock
def test_a_second_writer_is_refused_with_one_line(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "msan_v1"
    shutil.copytree(finished_run, run)
    with RunLock(run):  # this process "trains" into it
        rc, err = _cli(capsys, "train", "--resume", run, "--set", "num_iters=7", "--no-progress")
        assert rc == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"{run}: run folder is in use by pid {os.getpid()}" in lines[0]
    assert not (run / LOCK_FILE).exists()  # released
    rc, err = _cli(capsys, "train", "--resume", run, "--set", "num_iters=7", "--no-progress")
    assert rc == 0, err and not (run / LOCK_FILE).exists()


HOLDER = textwrap.dedent("""
    import sys, time
    from kitsmsan.train.runlock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def test_the_lock_of_a_killed_process_is_stale(tmp_path):
    """A real process takes the lock and is killed with SIGKILL (no cleanup runs): while it lives the
    lock is refused, once it is dead the lock is detected as stale and taken over."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline().strip() == b"locked"
        with pytest.raises(ConfigError, match=f"in use by pid {proc.pid}"):
            RunLock(tmp_path).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == proc.pid  # left behind
    lock = RunLock(tmp_path)
    lock.acquire()  # stale: taken over
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "hostname": "elsewhere.example"}))
    with pytest.raises(ConfigError, match="in use by pid 1 on elsewhere.example"):
        RunLock(tmp_path).acquire()


def test_the_book_lists_every_resume_rule():
    """The reliability page's list is the table in the code (one place decides, the page follows)."""
    import re

    text = (REPO / "book" / "fragments" / "reliability-rules.md").read_text(encoding="utf-8")
    listed = {}
    for label, rule in (("applied and recorded", "apply"), ("may grow", "grow"), ("refused", "refuse")):
        m = re.search(rf"- {label}[^:]*:(.*?)(?=\n  - |\n- |\n\n)", text, re.DOTALL)
        assert m, label
        for name in re.findall(r"`([a-z_]+)`", m.group(1)):
            listed[name] = rule
    assert listed == RESUME_RULES
