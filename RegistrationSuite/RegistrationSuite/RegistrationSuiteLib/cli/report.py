"""``registration-suite report D``: (re)write D/report.html, the self-contained review page of a batch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError

HELP = "write D/report.html: a self-contained review page of a batch output folder"


def add_parser(sub):
    p = sub.add_parser("report", help=HELP, description=(
        "Write D/report.html from a batch output folder: a sortable table (failed and doubtful pairs first) and per "
        "pair a checkerboard and an edge overlay (three planes; 2D: the slide), the Jacobian map of deformable "
        "results and the diagnostics; images embedded, nothing fetched from a network."))
    p.add_argument("output_dir", metavar="D", help="the --output-dir of a batch")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..cohort.report import write_report

    d = Path(args.output_dir)
    if not d.is_dir() or not (any(d.glob("*/pair.json")) or (d / "summary.csv").is_file()):
        raise InputError(f"report: {d} is not a batch output folder (no summary.csv or */pair.json)")
    path = write_report(d)
    print(f"report written to {path}")
    return 0


def _report_path(value: str) -> str:
    p = Path(value)
    if p.suffix.lower() not in (".html", ".htm"):
        raise argparse.ArgumentTypeError(f"expected an .html file, got {value}")
    if not p.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder does not exist: {p.parent}")
    return value


def add_output_report_argument(p) -> None:
    """``--output-report R.html`` for a single-pair command (checked when the options are parsed)."""
    p.add_argument("--output-report", type=_report_path, metavar="R.html",
                   help="write a self-contained review page (checkerboard, edge overlay, diagnostics)")


def write_output_report(args, result) -> None:
    """Write ``--output-report`` after the command's outputs; a failure here is a one-line note, never a lost
    registration (the transform is already written)."""
    if not getattr(args, "output_report", None):
        return
    from ..cohort.report import write_pair_report

    try:
        write_pair_report(args.output_report, Path(args.moving).name.split(".")[0], args.fixed, args.moving,
                          result.transform, result.summary())
    except Exception as exc:  # noqa: BLE001 - the registration succeeded; say why the page is missing
        print(f"note: review page not written ({type(exc).__name__}: {exc})", file=sys.stderr)
