"""The package's layers: each concept is defined once, and the import contracts of CONTRIBUTING.md hold
(``lint-imports``, configured in pyproject.toml). A second copy of a resolver, of the training step or
of the metrics-log reader makes this fail."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kitsmsan.cli as cli

PACKAGE = Path(cli.__file__).resolve().parent
REPO = PACKAGE.parent

#: concept -> the one module that defines it
ONE_DEFINITION = {
    "resolve_device": "utils/device.py",
    "resolve_amp": "utils/amp.py",
    "mixed_precision_dtype": "utils/amp.py",
    "read_metrics": "utils/metrics_log.py",
    "train_step": "train/step.py",
    "build_loss": "train/step.py",
    "torch_settings": "utils/torch_state.py",
    "parse_case_range": "data/kits19.py",
}

#: the only imports inside library functions (the style rule: imports at module top, outside
#: kitsmsan/commands/): (module file, imported module) -> why it is lazy
LAZY_IMPORTS = {
    ("viz.py", "matplotlib.pyplot"): "importing pyplot can select a GUI backend",
    ("viz.py", "IPython.display"): "IPython is there in notebooks only",
    ("widgets.py", "ipywidgets"): "an optional extra",
    (
        "bench/memory.py",
        "torch.distributed._tools.mem_tracker",
    ): "torch.distributed: slow, not in every build",
}
#: modules left out of the check: the command line (its imports are per command, by design)
LAZY_IMPORT_EXEMPT = ("commands/", "notebook.py")


def _definitions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in ONE_DEFINITION:
                found.setdefault(node.name, []).append(path.relative_to(PACKAGE).as_posix())
    return found


def test_each_concept_is_defined_once():
    assert _definitions() == {name: [where] for name, where in ONE_DEFINITION.items()}


def _function_local_imports() -> set[tuple[str, str]]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(LAZY_IMPORT_EXEMPT):
            continue
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        found.update((rel, alias.name) for alias in node.names)
                    elif isinstance(node, ast.ImportFrom):
                        found.add((rel, node.module or ""))
    return found


def test_library_imports_are_at_module_top():
    """A function-local import outside the command line is one of the listed lazy ones (a new one
    usually hides an import cycle, i.e. a layering mistake)."""
    assert _function_local_imports() == set(LAZY_IMPORTS)


def test_the_benchmark_times_the_training_step(monkeypatch):
    """The step and memory benchmarks and the Trainer call the same train_step and build the same loss."""
    import torch

    from kitsmsan.bench import memory as bench_memory
    from kitsmsan.bench import step as bench_step
    from kitsmsan.train import loop, step

    assert bench_step.train_step is loop.train_step is step.train_step is bench_memory.train_step
    assert bench_step.build_loss is loop.build_loss is step.build_loss is bench_memory.build_loss
    seen = []
    monkeypatch.setattr(bench_step, "train_step", lambda *a, **k: seen.append(k) or step.train_step(*a, **k))
    monkeypatch.setattr(
        bench_step,
        "build_loss",
        lambda c, m: seen.append(type(step.build_loss(c, m)).__name__) or step.build_loss(c, m),
    )
    res = bench_step.time_step(
        "msan_v1_ds",
        "fp32",
        torch.device("cpu"),
        batch_size=1,
        num_slices=4,
        size=16,
        overrides={"base_channels": 2},
        iters=2,
        warmup=1,
        seed=0,
    )
    assert seen == ["DeepSupervisionLoss", {"amp_dtype": None}, {"amp_dtype": None}, {"amp_dtype": None}]
    assert res["loss_finite"]


def test_deep_supervision_follows_the_model_config_only():
    from kitsmsan.models import build_model
    from kitsmsan.train import TrainConfig
    from kitsmsan.train.step import build_loss

    config = TrainConfig.from_preset("smoke")
    named_ds_without = build_model("msan_v1_ds", base_channels=2, deep_supervision=False)
    plain_with = build_model("msan_v1", base_channels=2, deep_supervision=True)
    assert type(build_loss(config, named_ds_without)).__name__ == "DiceLoss"
    assert type(build_loss(config, plain_with)).__name__ == "DeepSupervisionLoss"


def test_cli_does_not_hide_a_missing_command(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli.build_parser()


@pytest.mark.skipif(
    shutil.which("lint-imports") is None and not (Path(sys.executable).parent / "lint-imports").exists(),
    reason="import-linter is not installed",
)
def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
