"""``registration-suite pipeline``: registration steps run in order, each from the previous result.

Each step is the CLI command of that name, run in this process with ``--initial-transform`` set to the
previous step's composed result, so a step in a chain does exactly what it does alone. The valid chains
are listed in one place, :data:`RegistrationSuiteLib.cohort.chain.VALID_CHAINS`.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..cohort.chain import check_chain, parse_steps, step_of_composed, valid_chains_text
from ..errors import InputError, RegistrationFailed
from .common import check_output_paths
from .initial_transform import add_initial_transform_argument
from .progress_lines import progress_for
from .report import add_output_report_argument

HELP = "run registration steps in order (e.g. rigid-search,deformable), each from the previous result"
# Options the pipeline sets itself for every step.
_RESERVED = ("--fixed", "--moving", "--output", "--initial-transform", "--json", "--output-scene", "--output-resampled",
             "--output-report", "--output-qa")


def add_parser(sub):
    p = sub.add_parser(
        "pipeline",
        help=HELP,
        description=(
            "Run registration steps in order; each step starts from the previous step's result (passed as its "
            "--initial-transform) and the composed transform is written, fixed→moving (ITK, LPS). "
            f"Valid chains: {valid_chains_text()}."
        ),
    )
    p.add_argument("--fixed", required=True, help="fixed image")
    p.add_argument("--moving", required=True, help="moving image")
    p.add_argument("--steps", required=True, help="comma-separated steps, e.g. rigid-search,deformable")
    p.add_argument("--output", required=True, help="composed output transform (.h5 recommended: holds fields too)")
    p.add_argument("--step-options", action="append", default=[], metavar="STEP:OPTIONS",
                   help='options for one step, e.g. "deformable:--io-steps 200" (repeatable)')
    p.add_argument("--output-dir", help="write each step's composed transform, own transform and JSON summary here")
    p.add_argument("--output-resampled", help="write moving resampled onto the fixed grid with the composed transform")
    p.add_argument("--output-qa", help="write a before/after checkerboard picture (.png) of the middle slice, after = "
                   "the composed transform")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    add_initial_transform_argument(p)
    add_output_report_argument(p)
    p.set_defaults(run=run)
    return p


def available_commands(parser) -> tuple:
    """Names of the commands installed in this version (the sub-commands of ``parser``)."""
    import argparse

    for action in parser._actions:  # noqa: SLF001 - argparse exposes sub-commands only through its actions
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return tuple(action.choices)
    return ()


def parse_step_options(values, steps) -> dict:
    """``["deformable:--io-steps 200"]`` → ``{"deformable": ["--io-steps", "200"]}``."""
    out = {s: [] for s in steps}
    for value in values:
        step, sep, opts = str(value).partition(":")
        step = step.strip()
        if not sep or step not in out:
            raise InputError(f"--step-options: expected STEP:OPTIONS with STEP one of {','.join(steps)}, got {value!r}")
        words = shlex.split(opts)
        reserved = [w for w in words if w.split("=")[0] in _RESERVED]
        if reserved:
            raise InputError(f"--step-options: {reserved[0]} is set by the pipeline itself, not per step")
        out[step] += words
    return out


def _parse_step(parser, argv, step):
    """The step's argparse namespace; a bad option becomes one :class:`InputError` line."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(argv)
    except SystemExit:
        last = (stderr.getvalue().strip().splitlines() or ["invalid options"])[-1]
        raise InputError(f"--step-options for {step}: {last.split('error: ')[-1]}") from None


def _run_step(parser, argv, k, n, step) -> dict:
    """Run one step in this process; its ``--json`` line is captured and returned."""
    args = _parse_step(parser, argv, step)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = int(args.run(args) or 0)
    except InputError as exc:
        raise InputError(f"step {k}/{n} ({step}): {exc}") from None
    except RegistrationFailed as exc:
        raise RegistrationFailed(f"step {k}/{n} ({step}): {exc}") from None
    if code != 0:
        raise RegistrationFailed(f"step {k}/{n} ({step}) ended with exit code {code}")
    lines = out.getvalue().strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def run(args) -> int:
    from ..io import read_image, read_transform, write_image, write_transform
    from .main import build_parser

    parser = build_parser()
    available = available_commands(parser)
    steps = check_chain(parse_steps(args.steps), available=available)
    options = parse_step_options(args.step_options, steps)
    outputs = check_output_paths(args)
    for p in (args.fixed, args.moving):
        if not Path(p).exists():
            raise InputError(f"input not found: {p}")
    if args.output_dir:
        Path(args.output_dir).mkdir(exist_ok=True)
    work = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="rs-pipeline-"))
    t0 = time.perf_counter()
    try:
        # With --progress-json the pipeline reports one line per step itself (the steps' stdout is captured).
        quiet = args.quiet or getattr(args, "progress_json", False)
        argvs = [[step, "--fixed", args.fixed, "--moving", args.moving, "--json", *(["--quiet"] if quiet else []),
                  *options[step]] for step in steps]
        for argv, step in zip(argvs, steps):  # every step's options checked before the first (long) step runs
            _parse_step(parser, argv + ["--output", str(work / "check.h5")], step)
        previous = args.initial_transform
        summaries = []
        progress = progress_for(args) if getattr(args, "progress_json", False) else None
        for k, (argv, step) in enumerate(zip(argvs, steps), start=1):
            if progress:
                progress((k - 1) / len(steps), f"step {k}/{len(steps)}: {step}")
            composed = work / f"{k:02d}_{step}.composed.h5"
            full = argv + ["--output", str(composed)] + (["--initial-transform", str(previous)] if previous else [])
            summary = _run_step(parser, full, k, len(steps), step)
            own = read_transform(composed) if previous is None else step_of_composed(read_transform(composed), read_transform(previous))
            write_transform(own, work / f"{k:02d}_{step}.step.h5")
            (work / f"{k:02d}_{step}.json").write_text(json.dumps(summary, indent=1))
            summaries.append(summary)
            previous = composed
        final = read_transform(previous)
        if progress:
            progress(1.0, "done")
        with outputs:  # written as a set: all or none
            if "--output-resampled" in outputs or "--output-qa" in outputs:
                from ..result import RegistrationResult
                from .common import qa_picture, resample_moving

                fixed, moving = read_image(args.fixed, "fixed"), read_image(args.moving, "moving")
                resampled = resample_moving(fixed.image, moving.image, RegistrationResult("pipeline", final),
                                            pixel_id=moving.pixel_id)
            if "--output-resampled" in outputs:
                with outputs.stage("--output-resampled") as tmp:
                    write_image(resampled, tmp)
            if "--output-qa" in outputs:
                with outputs.stage("--output-qa") as tmp:
                    write_image(qa_picture(fixed.image, resampled, moving.image), tmp)
            with outputs.stage("--output") as tmp:
                write_transform(final, tmp)
            outputs.commit()
    finally:
        if not args.output_dir:
            shutil.rmtree(work, ignore_errors=True)
    summary = _print_summary(args, steps, summaries, final, time.perf_counter() - t0)
    if args.output_report:
        from ..cohort.report import write_pair_report

        try:
            write_pair_report(args.output_report, Path(args.moving).name.split(".")[0], args.fixed, args.moving, final, summary)
        except Exception as exc:  # noqa: BLE001 - the registration succeeded; say why the page is missing
            print(f"note: review page not written ({type(exc).__name__}: {exc})", file=sys.stderr)
    return 0


def _doubtful(summary: dict) -> list:
    reasons = summary.get("doubtful") or summary.get("diagnostics", {}).get("doubtful") or []
    return list(reasons) if isinstance(reasons, (list, tuple)) else [str(reasons)]


def _print_summary(args, steps, summaries, final, seconds) -> dict:
    from ..geometry import affine_matrix_from_sitk

    last = summaries[-1] if summaries else {}
    out = {
        "method": "pipeline",
        "steps": list(steps),
        "transform_type": final.GetName(),
        "score": last.get("score"),
        "confidence": last.get("confidence"),
        "doubtful": [f"{s}: {r}" for s, summ in zip(steps, summaries) for r in _doubtful(summ)],
        "timings": {**{s: (summ.get("timings") or {}).get("total") for s, summ in zip(steps, summaries)},
                    "total": round(seconds, 4)},
        "warnings": [w for summ in summaries for w in summ.get("warnings", [])],
        "step_methods": [summ.get("method") for summ in summaries],
    }
    if final.IsLinear():
        out["fixed_to_moving_lps"] = affine_matrix_from_sitk(final, final.GetDimension()).round(8).tolist()
    if args.json:
        print(json.dumps(out, separators=(",", ":")))
        return out
    for s, summ in zip(steps, summaries):
        print(f"{s}: score {summ.get('score')}  confidence {summ.get('confidence')}")
    print(f"composed transform ({final.GetName()}) written to {args.output}  time {seconds:.1f} s")
    for w in out["warnings"]:
        print(f"note: {w}", file=sys.stderr)
    return out
