"""``kitsmsan models``: parameters, forward FLOPs/MACs and output shapes of the five networks.

Example::

    kitsmsan models                       # the paper's widths, one (1, 1, 4, 512, 512) window
    kitsmsan models --base-channels 16 --json models.json

Counting runs on PyTorch's ``meta`` device: nothing is computed, it takes about a second.
"""

from __future__ import annotations

import argparse


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected five integers like 1,1,4,512,512") from None
    if len(shape) != 5 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected five positive integers B,C,D,H,W")
    return shape


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` parser."""
    p = subparsers.add_parser(
        "models",
        help="parameters, FLOPs and output shapes of the five networks",
        description="For each registered network (3D U-Net, MSAN-V1, MSAN-V1+DS, MSAN-V2, MSAN-V2+DS): "
        "trainable parameters, forward FLOPs and MACs of one eval-mode forward, and output shapes "
        "(eval mode, and training mode with the deep-supervision outputs).",
    )
    p.add_argument("--json", metavar="OUT", default=None, help="also write the rows as JSON to OUT")
    p.add_argument(
        "--base-channels",
        type=int,
        default=None,
        metavar="N",
        help="width of the first level (default: the config default, 32)",
    )
    p.add_argument(
        "--input-shape",
        type=_shape,
        default=None,
        metavar="B,C,D,H,W",
        help="input shape to count for (default: 1,1,4,512,512, the paper's window)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these registered names (default: all five)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output file this command did not write (the old one is kept beside it)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the table (and write ``--json``); returns 0. Bad names/values raise ``ConfigError``."""
    import json

    from kitsmsan.models.report import PAPER_INPUT, format_report, model_report
    from kitsmsan.utils.io import atomic_write_json, claim_output_file

    def ours(path) -> bool:  # the rows this command writes: a list of objects with "name", "parameters"
        try:
            rows = json.loads(open(path, encoding="utf-8").read())
        except (OSError, ValueError):
            return False
        return isinstance(rows, list) and all(
            isinstance(r, dict) and {"name", "parameters"} <= set(r) for r in rows
        )

    if args.json:
        claim_output_file(args.json, command="models", overwrite=args.overwrite, recognize=ours, create=False)
    overrides = {} if args.base_channels is None else {"base_channels": args.base_channels}
    rows = model_report(args.variants, args.input_shape or PAPER_INPUT, **overrides)
    print(format_report(rows))
    if args.json:
        claim_output_file(args.json, command="models", overwrite=args.overwrite, recognize=ours)
        try:
            atomic_write_json(args.json, rows)
        except OSError as exc:  # disk full, no permission: name the file, no traceback
            from kitsmsan.errors import DataError

            raise DataError(
                f"{args.json}: cannot write ({exc.strerror or exc}); the file was not written"
            ) from exc
        print(f"wrote {args.json}")
    return 0
