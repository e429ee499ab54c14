"""``kitsmsan train``: train one network of the paper (MSAN paper, §3.1); resumable; DDP-ready.

Examples::

    kitsmsan train --preset smoke --variant msan_v1 --data phantoms/ --cache cache/ --out runs/
    kitsmsan train --preset paper --variant msan_v2_ds --data kits19/data --cache cache/ --out runs/ \\
        --set workers=8 --set compile=true
    kitsmsan train --resume runs/msan_v2_ds            # continue exactly where it stopped
    torchrun --nproc_per_node 4 -m kitsmsan train --preset paper --variant msan_v1 ...
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` parser."""
    p = subparsers.add_parser(
        "train",
        help="train one of the five networks (paper recipe or CPU smoke preset); --resume continues",
        description="Train one network. The run folder OUT/VARIANT gets config.json, env.json, "
        "metrics.jsonl, checkpoints/{last,best}.pt and summary.json. The cache is prepared (or "
        "brought up to date) from --data first. Under torchrun, ranks share the work (DDP).",
    )
    p.add_argument(
        "--preset",
        default="smoke",
        choices=("smoke", "paper", "colab", "cpu-reference"),
        help="settings preset (default: smoke; colab: the paper's schedule shortened to one "
        "Colab session per network; cpu-reference: the book's CPU reference recipe, see 'kitsmsan reference')",
    )
    p.add_argument(
        "--variant",
        default="msan_v1",
        help="unet3d, msan_v1, msan_v1_ds, msan_v2 or msan_v2_ds (default: msan_v1)",
    )
    p.add_argument("--data", metavar="ROOT", help="KiTS19-layout data folder (case_XXXXX/...)")
    p.add_argument("--cache", metavar="DIR", help="training cache folder (default: OUT/cache)")
    p.add_argument(
        "--out",
        metavar="RUNS",
        default="runs",
        help="parent folder of the run folder OUT/VARIANT (default: runs)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set num_iters=1000 --set model.base_channels=8 "
        "--set amp=on (amp: auto, on, off, bf16 or fp16, as for predict --amp; repeatable; "
        "see kitsmsan.train.TrainConfig)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint and its own config",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a run folder that is not a kitsmsan run (its files are kept, never deleted)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``train``; returns 0. Errors raise :class:`kitsmsan.errors.KitsmsanError` subclasses."""
    from pathlib import Path

    from kitsmsan.errors import ConfigError
    from kitsmsan.train import TrainConfig
    from kitsmsan.train.config import parse_overrides
    from kitsmsan.train.loop import resume, run_state, train
    from kitsmsan.train.runlock import check_bounds, check_resume_overrides, is_run_folder
    from kitsmsan.utils.io import claim_output_dir

    overrides = parse_overrides(args.overrides)
    for key, flag in (
        ("run_dir", "--out"),
        ("cache_dir", "--cache"),
        ("data_root", "--data"),
        ("variant", "--variant"),
    ):
        if key in overrides and not args.resume:
            raise ConfigError(f"--set {key}=...: give {flag} instead")
    if args.no_progress:
        overrides["progress"] = False
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").is_file():
            raise ConfigError(f"--resume {run_dir}: no config.json there (not a kitsmsan run folder)")
        check_resume_overrides(overrides)  # a setting that would change the run: refused by name
        if run_state(run_dir) == "done" and "num_iters" not in overrides:
            print(f"{run_dir}: already finished (summary.json); nothing to do")
            return 0
        out = resume(run_dir, **overrides)
        _report(out)
        return 0
    if not args.data and not args.cache:
        raise ConfigError("train: give --data ROOT (and optionally --cache DIR), or --resume RUN_DIR")
    run_dir = Path(args.out) / args.variant
    cache = Path(args.cache) if args.cache else Path(args.out) / "cache"
    config = TrainConfig.from_preset(
        args.preset,
        variant=args.variant,
        data_root=str(args.data) if args.data else None,
        cache_dir=str(cache),
        run_dir=str(run_dir),
        **overrides,
    )
    config.check_model()  # a misspelt model.<key> fails here, before the cache is written
    check_bounds(config)
    claim_output_dir(
        run_dir, "run", command="train", overwrite=args.overwrite, recognize=is_run_folder, create=False
    )  # refused before the cache is written
    if args.data:
        prepare_for(config, overwrite=args.overwrite)
    if args.overwrite:
        claim_output_dir(run_dir, "run", command="train", overwrite=True, recognize=is_run_folder)
    out = train(config)
    _report(out)
    return 0


def _report(run_dir) -> None:
    """Print the run folder (once, on rank 0 under torchrun)."""
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {run_dir}")


def prepare_for(config, overwrite: bool = False) -> None:
    """Bring the cache up to date for the config's train and test cases present under data_root."""
    import os

    from kitsmsan.data.dataset import split_cases
    from kitsmsan.data.kits19 import list_cases
    from kitsmsan.data.preprocess import prepare_cache

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 prepares (others wait in init)
        return
    split = split_cases(list_cases(config.data_root), train=config.train_cases, test=config.test_cases)
    prepare_cache(
        config.data_root,
        config.cache_dir,
        case_ids=split["train"] + split["test"],
        progress=config.progress,
        overwrite=overwrite,
    )
