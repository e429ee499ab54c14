"""``kitsmsan phantoms``: write synthetic KiTS-like cases or label-conditioned ones.

Examples::

    kitsmsan phantoms --out data-phantoms --cases 10 --size 128 --seed 0 --slices 64
    kitsmsan phantoms --out data-real-anatomy --from-labels ../shared/kits19-labels \\
        --cases-range 0-189 --size 128

Pure phantoms: :func:`kitsmsan.data.phantom.write_phantom_dataset`. With ``--from-labels``:
:func:`kitsmsan.data.phantom.write_label_conditioned_dataset` (the real segmentations are kept, CT
intensities are synthesised around them; attribute KiTS19, CC BY-NC-SA 4.0).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``phantoms`` parser."""
    p = subparsers.add_parser(
        "phantoms",
        help="write synthetic KiTS-like CT cases (pure or around real labels)",
        description="Write synthetic abdominal CT cases in the KiTS19 layout, plus phantoms.json.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output data folder")
    p.add_argument(
        "--cases",
        type=int,
        default=None,
        metavar="N",
        help="number of cases (pure: default 10; with --from-labels: the first N)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="S",
        help="in-plane size (pure: default 512; with --from-labels: default keep the "
        "real grid, else the longer side is resampled to S)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="K", help="dataset seed (default 0)")
    p.add_argument(
        "--slices",
        type=int,
        default=None,
        metavar="Z",
        help="slice count of every pure phantom (default: per case, like KiTS19)",
    )
    p.add_argument(
        "--from-labels",
        default=None,
        metavar="DIR",
        help="KiTS19 folder of segmentations: synthesise CT around these real labels",
    )
    p.add_argument(
        "--cases-range",
        default=None,
        metavar="RANGE",
        help="with --from-labels: which cases, e.g. 0-179,185 (default all)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not a phantom folder (its files are kept; case folders "
        "not written by this command are still refused)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the cases; print a one-line summary. Returns 0.

    A failed write (disk full, no permission) raises :class:`kitsmsan.errors.DataError` naming the
    output folder; every file is written atomically, so the cases already written are complete and
    a re-run rewrites the rest.
    """
    import contextlib
    import os
    from pathlib import Path

    from kitsmsan.errors import DataError
    from kitsmsan.utils.io import MARKER_FILE, claim_output_dir, only_files

    out = Path(args.out)
    new_folder = not out.exists()

    def ours(folder: Path) -> bool:  # written before output markers existed: phantoms.json + cases
        return (folder / "phantoms.json").is_file() and only_files("case_*", "phantoms.json")(folder)

    claim_output_dir(
        out, "phantoms", command="phantoms", overwrite=args.overwrite, recognize=ours, create=False
    )
    try:
        claim_output_dir(out, "phantoms", command="phantoms", overwrite=args.overwrite, recognize=ours)
        return _run(args)
    except BaseException as exc:
        if new_folder and out.is_dir():  # drop the marker and the empty folders of a new output folder
            with contextlib.suppress(OSError):
                (out / MARKER_FILE).unlink()
            for folder, _, _ in sorted(os.walk(out), key=lambda t: -len(t[0])):
                try:
                    os.rmdir(folder)  # only succeeds when empty
                except OSError:
                    pass
            if out.is_dir():  # cases were finished: the folder stays this command's
                with contextlib.suppress(OSError, DataError):
                    claim_output_dir(out, "phantoms", command="phantoms", recognize=ours)
        if not isinstance(exc, OSError):
            raise
        where = exc.filename or args.out
        raise DataError(
            f"{where}: cannot write the phantoms ({exc.strerror or exc}); cases "
            "written before it are complete, run the command again when fixed"
        ) from exc


def _run(args: argparse.Namespace) -> int:
    from kitsmsan.errors import ConfigError

    progress = not args.no_progress
    if args.from_labels is None:
        from kitsmsan.data.phantom import write_phantom_dataset

        if args.cases_range is not None:
            raise ConfigError("--cases-range: only with --from-labels (pure phantoms use --cases)")
        size = 512 if args.size is None else args.size
        num_cases = 10 if args.cases is None else args.cases
        ids = write_phantom_dataset(
            args.out, num_cases, args.seed, size=size, num_slices=args.slices, progress=progress
        )
        print(f"wrote {len(ids)} pure phantoms ({size} x {size}) to {args.out}")
        return 0

    from kitsmsan.data.kits19 import case_id, list_cases, parse_case_range
    from kitsmsan.data.phantom import write_label_conditioned_dataset

    if args.slices is not None:
        raise ConfigError("--slices: not with --from-labels (the real slices are kept)")
    ids = None
    if args.cases_range is not None:
        ids = [case_id(n) for n in parse_case_range(args.cases_range)]
    if args.cases is not None:
        if args.cases < 1:
            raise ConfigError(f"--cases={args.cases}: expected >= 1")
        ids = ids if ids is not None else list_cases(args.from_labels, require_imaging=False)
        ids = ids[: args.cases]
    written = write_label_conditioned_dataset(
        args.from_labels, args.out, case_ids=ids, size=args.size, seed=args.seed, progress=progress
    )
    print(
        f"wrote {len(written)} label-conditioned phantoms to {args.out} "
        "(segmentations: KiTS19, CC BY-NC-SA 4.0)"
    )
    return 0
