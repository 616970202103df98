"""``registration-suite report D``: (re)write D/report.html, the self-contained review page of a batch."""

from __future__ import annotations

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
