"""``kitsmsan download``: fetch KiTS19 imaging, segmentations and ``kits.json``.

Examples::

    kitsmsan download --root data                      # cases 0-209: imaging + labels (~27 GB)
    kitsmsan download --root data --labels-only        # segmentations 0-209 + kits.json (about 67 MB)
    kitsmsan download --root data --cases 0-179,185 --workers 8

Resumable, verified and idempotent: see :mod:`kitsmsan.data.download`. Base URLs default to the
official hosts; override with ``--imaging-url`` / ``--labels-url`` or the environment variables
``KITSMSAN_IMAGING_URL`` / ``KITSMSAN_LABELS_URL``.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``download`` subcommand to the CLI dispatcher."""
    p = subparsers.add_parser(
        "download",
        help="download KiTS19 (imaging, segmentations, kits.json): resumable and verified",
        description="Fetch KiTS19 imaging, segmentations and kits.json into the KiTS19 layout: "
        "resumable (HTTP Range), retried with backoff, verified before it is moved into place, "
        "idempotent (verified files are skipped).",
    )
    p.add_argument("--root", required=True, help="output data folder (KiTS19 layout)")
    p.add_argument(
        "--cases",
        default="0-209",
        help="case numbers, e.g. '0-179,185' (default 0-209; cases 0-299 exist, 210-299 have no labels)",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--labels-only", action="store_true", help="only segmentation.nii.gz and kits.json (no imaging)"
    )
    what.add_argument("--imaging-only", action="store_true", help="only imaging.nii.gz")
    p.add_argument(
        "--imaging-url",
        default=None,
        help="imaging base URL or template with {case_id}/{number} "
        "(default: $KITSMSAN_IMAGING_URL or the official host)",
    )
    p.add_argument(
        "--labels-url",
        default=None,
        help="base URL of case_XXXXX/segmentation.nii.gz and kits.json "
        "(default: $KITSMSAN_LABELS_URL or the official repository)",
    )
    p.add_argument(
        "--manifest", default=None, help="JSON {path: {sha256, size}} of expected files (optional)"
    )
    p.add_argument("--workers", type=int, default=4, help="cases downloaded in parallel (default 4)")
    p.add_argument(
        "--retries",
        type=int,
        default=5,
        help="HTTP retries per request, and drops without progress per file (default 5)",
    )
    p.add_argument("--verify-existing", action="store_true", help="fully re-verify files already in place")
    p.add_argument(
        "--replace-bad",
        action="store_true",
        help="download again files in place that fail verification (the old file is kept "
        "beside it as NAME.kitsmsan-old); default: such a file is reported, untouched",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="use a --root that is not a KiTS19 data folder (its files are kept, never deleted)",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="give up a transfer pass after S seconds with under 1 KiB received (default 60)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the download; print a one-paragraph summary. Errors propagate as KitsmsanError."""
    from kitsmsan.data.download import download_kits19
    from kitsmsan.data.kits19 import parse_case_range

    report = download_kits19(
        args.root,
        parse_case_range(args.cases),
        imaging=not args.labels_only,
        labels=not args.imaging_only,
        imaging_base_url=args.imaging_url,
        labels_base_url=args.labels_url,
        manifest=args.manifest,
        workers=args.workers,
        retries=args.retries,
        verify_existing=args.verify_existing,
        progress=not args.no_progress,
        replace_bad=args.replace_bad,
        overwrite=args.overwrite,
        timeout=(10.0, args.stall_timeout),
    )
    for note in report.notes:
        print(f"note: {note}")
    print(
        f"{report.root}: {len(report.downloaded)} downloaded "
        f"({report.bytes_downloaded / 2**20:.1f} MiB), {len(report.skipped)} already verified"
    )
    return 0
