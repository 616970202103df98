"""``registration-suite organ-points``: multi-organ point cloud registration (MO-BCPD)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..seeding import SEED_PROMISE
from .common import (add_device_argument, add_summary_arguments, check_output_paths, print_result, qa_picture,
                     write_diagnostics_and_commit)
from .progress_lines import progress_for
from .report import add_output_report_argument, write_output_report

HELP = "multi-organ point cloud registration (MO-BCPD) of two segmentations or labelled point sets"
_POINT_SUFFIXES = (".csv", ".vtk", ".vtp", ".ply")


def add_parser(sub):
    p = sub.add_parser(
        "organ-points",
        help=HELP,
        description=(
            "Registers organ surface point clouds with per-organ elasticity (Λ, B in mm), inter-organ "
            "coherence S and label transitions U (MO-BCPD, WBIR 2022). Inputs: two label volumes "
            "(NIfTI/NRRD/.seg.nrrd) or two point files (CSV 'x,y,z,label' in LPS mm, or VTK/PLY with a "
            "'label' point array). Writes a displacement-field transform (LPS) mapping fixed points to "
            "moving points on a grid covering the fixed domain."
        ),
    )
    p.add_argument("--fixed", required=True, help="fixed label volume or point file")
    p.add_argument("--moving", required=True, help="moving label volume or point file")
    p.add_argument("--output", required=True, help="output displacement-field transform (.h5 recommended)")
    p.add_argument("--labels", help="comma-separated organ labels to use (default: all labels in both)")
    p.add_argument("--points-per-organ", type=int, default=1500, help="surface points per organ (default 1500)")
    p.add_argument("--coherence", default="independent",
                   help="inter-organ coherence: independent (S=I), global (S=1) or a CSV file with S")
    p.add_argument("--lambda-mm", type=per_label_mm, default=3.0,
                   help="expected deformation magnitude Λ in mm (default 3; the paper's 10 without per-organ "
                        "pre-alignment), or per organ 'LABEL:MM,...'")
    p.add_argument("--beta-mm", type=per_label_mm, default=50.0,
                   help="motion-coherence bandwidth B in mm (default 50; paper 30), or per organ 'LABEL:MM,...'")
    p.add_argument("--omega", type=float, default=0.05,
                   help="outlier weight ω in [0, 1) (default 0.05; the paper's 0 forces every moving point onto an organ)")
    p.add_argument("--label-transition", help="CSV file with the label transition matrix U (rows sum to 1)")
    p.add_argument("--organ-prealign", default="auto", choices=["auto", "similarity", "rigid", "none"],
                   help="per-organ pre-alignment before MO-BCPD (not in the paper; auto = rigid unless "
                        "--coherence global; none = the paper's pipeline)")
    p.add_argument("--common-fov", default="on", choices=["on", "off"],
                   help="label-image inputs: register only the organ parts inside the field of view both scans "
                        "share (default on; not in the paper)")
    p.add_argument("--sampling", default="spread", choices=["spread", "random"],
                   help="how surface points and EM subsets are drawn: spread = farthest-point per organ (default; "
                        "not in the paper), random = uniformly at random")
    p.add_argument("--grid-spacing", type=float, default=3.0, help="spacing of the output field in mm (default 3)")
    p.add_argument("--seed", type=int, default=0,
                   help=f"random seed of the surface sampling and the eigensolver (default 0); {SEED_PROMISE}")
    add_device_argument(p)
    p.add_argument("--output-points", help="write the fixed points mapped into moving space (CSV x,y,z,label)")
    p.add_argument("--output-resampled-labels", help="write the moving labels resampled onto the fixed grid")
    p.add_argument("--output-qa", help="write a before/after checkerboard picture (.png) of the fixed labels and "
                   "the moving labels (middle slice; label volumes only)")
    add_output_report_argument(p)
    add_summary_arguments(p)
    p.set_defaults(run=run)
    return p


def per_label_mm(text: str):
    """``"10"`` → 10.0; ``"1:10,2:5.5"`` → ``{1: 10.0, 2: 5.5}`` (one value per organ label)."""
    if ":" not in text:
        return float(text)
    values = {}
    for item in text.split(","):
        label, _, value = item.partition(":")
        values[int(label)] = float(value)
    return values


def _read_matrix(path, name: str) -> np.ndarray:
    try:
        return np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(f"{name}: cannot read a numeric CSV matrix from {path} ({exc})") from None


def _is_points(path: str) -> bool:
    return Path(path).suffix.lower() in _POINT_SUFFIXES


def build_config(args):
    from ..methods.organ_point_cloud import OrganPointCloudConfig

    labels = None
    if args.labels:
        try:
            labels = [int(v) for v in args.labels.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--labels: expected comma-separated integers, got {args.labels!r}") from None
    coherence = args.coherence
    if coherence not in ("independent", "global"):
        coherence = _read_matrix(coherence, "--coherence")
    transition = _read_matrix(args.label_transition, "--label-transition") if args.label_transition else None
    return OrganPointCloudConfig(
        labels=labels, points_per_organ=args.points_per_organ, lambda_mm=args.lambda_mm, beta_mm=args.beta_mm,
        coherence=coherence, label_transition=transition, omega=args.omega, grid_spacing_mm=args.grid_spacing,
        seed=args.seed, device=args.device, organ_prealign=args.organ_prealign, common_fov=args.common_fov == "on",
        spread_sampling=args.sampling == "spread",
    )


def run(args) -> int:
    import SimpleITK as sitk

    from ..io import write_image, write_transform
    from ..io.points import write_points
    from ..methods.organ_point_cloud import register_organ_point_cloud

    outputs = check_output_paths(args)
    if args.output_report and (_is_points(args.fixed) or _is_points(args.moving)):
        raise InputError("--output-report needs label volumes as --fixed and --moving, not point files")
    for option in ("--output-resampled-labels", "--output-qa"):
        if option in outputs and (_is_points(args.fixed) or _is_points(args.moving)):
            raise InputError(f"{option} needs label volumes as --fixed and --moving, not point files")
    config = build_config(args)
    result = register_organ_point_cloud(args.fixed, args.moving, config, progress=progress_for(args))
    with outputs:
        if args.output_points:
            with outputs.stage("--output-points") as tmp:
                write_points(result.fixed_points_in_moving, tmp)
        if "--output-resampled-labels" in outputs or "--output-qa" in outputs:
            fixed = sitk.ReadImage(args.fixed)
            moving = sitk.ReadImage(args.moving)
            resampled = sitk.Resample(moving, fixed, result.transform, sitk.sitkNearestNeighbor, 0, moving.GetPixelID())
        if "--output-resampled-labels" in outputs:
            with outputs.stage("--output-resampled-labels") as tmp:
                write_image(resampled, tmp)
        if "--output-qa" in outputs:  # labels: "before" is the moving labels on the fixed grid as read
            with outputs.stage("--output-qa") as tmp:
                write_image(qa_picture(fixed, resampled, moving, labels=True), tmp)
        with outputs.stage("--output") as tmp:
            write_transform(result.transform, tmp)
        written = write_diagnostics_and_commit(outputs, result)
    d = result.diagnostics
    organs = summarize_organs(result, points_input=_is_points(args.fixed) or _is_points(args.moving))
    print_result(args, result, [
        f"MO-BCPD: {d.get('iterations', '?')} iterations, σ = {d.get('sigma_mm', float('nan')):.2f} mm, "
        f"{result.timings.get('total', float('nan')):.1f} s",
        organs,
        "written: " + ", ".join(str(p) for p in written),
    ])
    write_output_report(args, result)
    return 0


_SKIPPED_NOTE = re.compile(r"^organ label -?\d+ (is present in|was requested but).*; skipped$")


def summarize_organs(result, *, points_input: bool) -> str:
    """One line naming the organs registered; the method's one-note-per-skipped-label warnings are replaced
    by one note naming them all. Label volumes whose labels all lie in TotalSegmentator's ``total`` range are
    named by that numbering (and say so)."""
    from ..labels import TOTALSEGMENTATOR_TOTAL, describe_labels

    d = result.diagnostics
    used, skipped = list(d.get("labels", [])), list(d.get("skipped_labels", []))
    total = not points_input and all(1 <= int(v) <= max(TOTALSEGMENTATOR_TOTAL) for v in used + skipped)
    names = TOTALSEGMENTATOR_TOTAL if total else {}
    source = " (names from TotalSegmentator's label numbering)" if total else ""
    result.warnings[:] = [w for w in result.warnings if not _SKIPPED_NOTE.match(w)]
    if skipped:
        result.warnings.append(f"{len(skipped)} label(s) not present in both inputs were skipped: "
                               f"{describe_labels(skipped, names)}")
    return f"registered {len(used)} organ(s): {describe_labels(used, names)}{source}"
