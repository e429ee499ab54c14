"""The ``kitsmsan`` command line: one subcommand per pipeline stage (nnU-Net style).

Each subcommand lives in ``kitsmsan/commands/<name>.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a handler ``run(args) -> int``; every module named in
:data:`COMMANDS` must exist (a missing one is an import error, not a silently absent subcommand).
Command modules import only :mod:`argparse` at top level (heavy imports go inside ``run``), so
``kitsmsan --help`` is fast.
Errors derived from :class:`kitsmsan.errors.KitsmsanError` are printed as one line, exit code 2, and
so are the expected failures of the machine: ``OSError`` (disk full, permissions; named file),
``MemoryError`` and a device's ``OutOfMemoryError``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kitsmsan import __version__
from kitsmsan.errors import KitsmsanError

#: subcommands in pipeline order
COMMANDS = (
    "download",
    "phantoms",
    "prepare",
    "stats",
    "models",
    "train",
    "predict",
    "ensemble",
    "evaluate",
    "reproduce",
    "reference",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kitsmsan",
        description="MSAN for KiTS19: data, phantoms, training, inference, ensemble, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"kitsmsan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"kitsmsan.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KitsmsanError as exc:
        print(f"kitsmsan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # safety net: disk full, permission denied... one line, no traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"kitsmsan {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError:  # a safety net: inputs are bounded before they are read, so this is the machine
        print(
            f"kitsmsan {args.command}: error: out of memory (the input is larger than this machine can "
            "hold; try a smaller --cases selection or batch size)",
            file=sys.stderr,
        )
        return 2
    except RuntimeError as exc:  # the accelerator running out of memory: one line too
        if type(exc).__name__ != "OutOfMemoryError":
            raise
        print(
            f"kitsmsan {args.command}: error: the device ran out of memory ({str(exc).splitlines()[0][:160]}); "
            "lower batch_size / crop_size or use --set amp=on",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"kitsmsan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
