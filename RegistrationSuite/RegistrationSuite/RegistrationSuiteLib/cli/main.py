"""Entry point of the ``registration-suite`` command-line tool."""

from __future__ import annotations

import argparse
import sys
import traceback

from .. import __version__
from ..errors import InputError, RegistrationCancelled, RegistrationFailed
from ..io.outputs import OutputWriteError
from .progress_lines import add_progress_argument

# Exit codes: 0 success, 1 registration failed, 2 bad input/usage, 3 cancelled (Ctrl-C), 4 unexpected error.
EXIT_FAILED, EXIT_INPUT, EXIT_CANCELLED, EXIT_BUG = 1, 2, 3, 4


def _commands():
    # Imported here so `--help` stays fast and a broken optional command cannot break the others.
    from . import demo, rigid_search

    commands = [rigid_search, demo]
    for optional in (
        "organ_points", "partial_prereg", "train_partial_prereg",
        "deformable", "train_deformable",
        "histology", "train_histology",
        "pipeline", "batch", "report", "models", "cache",
    ):
        try:
            commands.append(__import__(f"{__package__}.{optional}", fromlist=["add_parser"]))
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{optional}":
                raise
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registration-suite",
        description="Medical image registration methods from published papers (RegistrationSuite).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _commands():
        p = command.add_parser(sub)
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
        p.add_argument("--quiet", action="store_true", help="no progress on stderr")
        add_progress_argument(p)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "progress_json", False):
        args.json = True  # the last stdout line of a --progress-json run is the --json summary
    try:
        _seed(args)
        return int(args.run(args) or 0)
    except (InputError, FileNotFoundError) as exc:
        return _fail(args, f"error: {_one_line(exc)}", EXIT_INPUT)
    except RegistrationFailed as exc:
        return _fail(args, f"registration failed: {_one_line(exc)}", EXIT_FAILED)
    except (RegistrationCancelled, KeyboardInterrupt):
        return _fail(args, "cancelled: no output written", EXIT_CANCELLED)
    except OutputWriteError as exc:
        return _fail(args, f"error: {_one_line(exc)} (rerun with --debug for the traceback)", EXIT_BUG)
    except Exception as exc:  # noqa: BLE001 - last line of defence of a CLI: one line, not a traceback
        return _fail(args, f"unexpected error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the "
                           "traceback)", EXIT_BUG)


def _one_line(exc: BaseException) -> str:
    """The whole message of ``exc`` on one line (ITK's messages span several lines; none is cut off)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def _seed(args) -> None:
    """Every command with ``--seed`` starts from :func:`~RegistrationSuiteLib.seeding.seed_everything` (global
    generators seeded, torch's deterministic algorithms selected); the methods also take the seed explicitly."""
    seed = getattr(args, "seed", None)
    if seed is not None:
        from ..seeding import seed_everything

        seed_everything(seed)


def _fail(args, message: str, code: int) -> int:
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(" ".join(message.split("\n")).strip() or "error", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
