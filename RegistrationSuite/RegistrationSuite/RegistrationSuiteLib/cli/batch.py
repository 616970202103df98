"""``registration-suite batch``: register every pair of a cohort CSV, on a Dask cluster or in this process."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..errors import InputError

HELP = "register every pair of a cohort CSV (Dask distributed: local cluster or --scheduler)"
METHODS = ("rigid-search", "partial-prereg", "deformable", "organ-points", "histology")


def add_parser(sub):
    p = sub.add_parser(
        "batch",
        help=HELP,
        description=(
            "Register every pair of COHORT.csv (columns id,fixed,moving plus optional per-row option columns such "
            "as fixed_mask or initial_transform; paths relative to the CSV; a 'method' column, with that row's "
            "options in an 'options' column, runs that row with its own method). Each pair runs the CLI command in a "
            "child process and writes D/<id>/ atomically; a failed pair is recorded in D/<id>/error.json and "
            "never stops the batch. Writes D/summary.csv and D/report.html. Uses Dask distributed when installed "
            "(pip install 'registration-suite[cluster]'): a local cluster by default, or --scheduler ADDRESS for "
            "a cluster started with dask-jobqueue (SLURM/PBS) or dask-kubernetes. Exit code 1 when a pair failed."
        ),
    )
    p.add_argument("--pairs", required=True, help="cohort CSV: id,fixed,moving[,option columns]")
    p.add_argument("--output-dir", required=True, help="output folder D (D/<id>/, D/summary.csv, D/report.html)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--method", choices=METHODS, help="the command run for each pair (default rigid-search)")
    what.add_argument("--steps", help="a chain run by `pipeline` for each pair, e.g. rigid-search,deformable")
    p.add_argument("--options", action="append", default=[], metavar="OPTIONS",
                   help='options for every pair: "--device cpu" for --method; "STEP:OPTIONS" for --steps (repeatable); '
                        'output options take file names, written into each pair\'s folder (--output-qa qa.png)')
    p.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler (tcp://host:8786)")
    p.add_argument("--workers", type=int, help="local workers (default: from cores and memory; 1 without Dask: in-process)")
    p.add_argument("--threads-per-worker", type=int, default=1, help="pairs run at once per worker (default 1)")
    p.add_argument("--memory-per-worker", default="4GB", help="memory limit per worker, e.g. 4GB (default 4GB)")
    p.add_argument("--retries", type=int, default=1, help="retries of a pair whose worker or child was killed (default 1)")
    p.add_argument("--resume", action="store_true", help="skip pairs whose outputs exist and whose inputs+options are unchanged")
    p.add_argument("--no-report", action="store_true", help="do not write D/report.html")
    p.add_argument("--no-previews", action="store_true", help="no review images per pair (faster)")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    p.set_defaults(run=run)
    return p


def pair_command(args, available) -> list:
    """The CLI words every pair runs before its own ``--fixed/--moving/...``."""
    from ..cohort.chain import check_chain, parse_steps

    if args.steps:
        steps = check_chain(parse_steps(args.steps), available=available)
        return ["pipeline", "--steps", ",".join(steps), *[w for o in args.options for w in ("--step-options", o)]]
    method = args.method or "rigid-search"
    if method not in available:
        raise InputError(f"--method: {method} is not available in this version (commands: {', '.join(sorted(available))})")
    return [method, *[w for o in args.options for w in shlex.split(o)]]


def run(args) -> int:
    from ..cohort.batch import BatchOptions, check_output_dir, parse_memory, run_batch, write_summary_csv
    from ..cohort.pairs import read_pairs
    from .main import build_parser
    from .pipeline import available_commands

    available = available_commands(build_parser())
    command = pair_command(args, available)
    for name in ("workers", "threads_per_worker"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected at least 1, got {value}")
    if args.retries < 0:
        raise InputError(f"--retries: expected 0 or more, got {args.retries}")
    pairs = read_pairs(args.pairs)
    from ..cohort.runner import check_pair_outputs

    check_pair_outputs(command, "--options")
    for pair in pairs:
        check_pair_outputs(pair.options + [w for kv in pair.extra.items() for w in kv], f"--pairs: pair {pair.id}")
        if pair.method is not None and (pair.method not in METHODS or pair.method not in available):
            raise InputError(f"--pairs: pair {pair.id}: method {pair.method!r} is not one of "
                             f"{', '.join(m for m in METHODS if m in available)}")
    out = Path(args.output_dir)
    if not out.resolve().parent.is_dir():
        raise InputError(f"--output-dir: parent folder does not exist: {out.resolve().parent}")
    check_output_dir(pairs, out, inputs=[args.pairs])
    options = BatchOptions(command=command, workers=args.workers, threads_per_worker=args.threads_per_worker,
                           memory_per_worker=parse_memory(args.memory_per_worker), scheduler=args.scheduler,
                           retries=args.retries, resume=args.resume, previews=not args.no_previews,
                           progress=not args.quiet)
    outcome = run_batch(pairs, options, out)
    summary = write_summary_csv(pairs, out, set(outcome["reused"]))
    report = None
    if not args.no_report:
        from ..cohort.report import write_report

        report = write_report(out)
    failed = [r["id"] for r in outcome["records"] if r.get("status") != "done"]
    result = {"pairs": len(pairs), "ran": len(outcome["records"]), "reused": len(outcome["reused"]),
              "failed": failed, "mode": outcome["mode"], "workers": outcome["workers"],
              "wall_s": round(outcome["wall_s"], 3), "summary_csv": str(summary), "report": str(report) if report else None}
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    else:
        print(f"{len(pairs) - len(failed)}/{len(pairs)} pairs done ({len(outcome['reused'])} reused), "
              f"{len(failed)} failed; {outcome['wall_s']:.1f} s ({outcome['mode']}, {outcome['workers']} worker(s))")
        print(f"summary: {summary}" + (f"\nreport: {report}" if report else ""))
    if failed:
        print(f"{len(failed)} of {len(pairs)} pairs failed ({', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''}); "
              f"see {summary}", file=sys.stderr)
        return 1
    return 0
