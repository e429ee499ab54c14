"""Small rules of the writers and the CLI's top level: file modes, refused settings leave nothing,
expected machine failures are one line."""

from __future__ import annotations

import os
import stat

import pytest

from kitsmsan.utils.io import atomic_write_text
from test_train import data  # noqa: F401  (module-scoped fixture: tiny cases + cache)


def _cli(capsys, *argv) -> tuple[int, str]:
    from kitsmsan.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == mode


@pytest.mark.parametrize(
    "setting, named",
    [
        ("eval_stride=5", "eval_stride=5 is larger than num_slices=4"),
        ("seed=99999999999999999999", "seed=99999999999999999999 is above"),
        ("threads=100000", "threads=100000 is above"),
    ],
)
def test_a_refused_setting_leaves_no_run_folder(data, tmp_path, capsys, setting, named):  # noqa: F811
    rc, err = _cli(
        capsys,
        "train",
        "--data",
        data / "data",
        "--cache",
        data / "cache",
        "--out",
        tmp_path / "runs",
        "--set",
        setting,
        "--no-progress",
    )
    assert rc == 2 and named in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # no config.json, no env.json, no folder


def test_reproduce_with_an_empty_variant_list_is_an_error(tmp_path, capsys):
    rc, err = _cli(capsys, "reproduce", "--out", tmp_path / "r", "--variants", "", "--no-progress")
    assert rc == 2 and "variants: empty selection" in err
    rc, err = _cli(capsys, "reproduce", "--out", tmp_path / "r", "--variants", " , ", "--no-progress")
    assert rc == 2 and "empty selection" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "exc, expected",
    [
        (MemoryError(), "out of memory"),
        (
            type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2 GiB"),
            "the device ran out of memory",
        ),
        (OSError(28, "No space left on device", "/x/y.pt"), "/x/y.pt: No space left on device"),
    ],
)
def test_expected_machine_failures_are_one_line(monkeypatch, capsys, exc, expected):
    from kitsmsan.commands import models

    def boom(args):
        raise exc

    monkeypatch.setattr(models, "run", boom)
    rc, err = _cli(capsys, "models")
    assert rc == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_an_unexpected_error_keeps_its_traceback(monkeypatch, capsys):
    """Only expected failure classes become one line; a bug is not hidden."""
    from kitsmsan.commands import models

    monkeypatch.setattr(models, "run", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _cli(capsys, "models")


@pytest.mark.parametrize("eval_cases, refused", [(3, True), (0, False)])
def test_eval_stride_above_the_window_is_refused_only_when_the_run_validates(eval_cases, refused):
    from kitsmsan.errors import ConfigError
    from kitsmsan.train.config import TrainConfig
    from kitsmsan.train.runlock import check_bounds

    config = TrainConfig.from_preset("smoke", num_slices=1, eval_stride=2, eval_cases=eval_cases)
    if refused:
        with pytest.raises(ConfigError, match="eval_stride=2 is larger than num_slices=1"):
            check_bounds(config)
    else:
        check_bounds(config)  # no validation: the stride is never used
