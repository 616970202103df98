"""``registration-suite rigid-search``: global rigid multimodal alignment (CSNGF, no initialisation)."""

from __future__ import annotations

import numpy as np

from ..seeding import SEED_PROMISE
from ..errors import InputError
from .common import (add_device_argument, add_image_output_arguments, check_image_outputs, check_output_paths,
                     print_result, write_outputs)
from .initial_transform import add_initial_transform_argument, compose_result, prewarp, read_initial_transform
from .progress_lines import progress_for
from .report import add_output_report_argument, write_output_report

HELP = "global rigid alignment by FFT cross-similarity of squared normalized gradient fields"


def add_parser(sub):
    p = sub.add_parser(
        "rigid-search",
        help=HELP,
        description=(
            "Global rigid multimodal alignment (Öfverstedt et al., WBIR 2022): squared NGF cross-similarity "
            "for all shifts by FFT over a multi-level search of rotations uniform on SO(3). Needs no "
            "initialisation. Writes an ITK transform (LPS) mapping fixed points to moving points. "
            "Confidence in [0, 1] = 1 - s_alt/s_sol at the coarsest level (how much the best pose stands out from "
            "the best one more than 45° away): correct results usually show a few hundredths; below "
            f"{_doubtful_threshold()} the result is flagged doubtful (a note on stderr, 'doubtful' in --json)."
        ),
    )
    p.add_argument("--fixed", required=True, help="fixed image (NIfTI/NRRD/MHA/DICOM folder; PNG/JPG/TIFF in 2D)")
    p.add_argument("--moving", required=True, help="moving image (same dimension as fixed)")
    p.add_argument("--output", required=True, help="output transform file (.h5, .tfm, .txt)")
    p.add_argument("--fixed-mask", help="optional fixed mask (non-zero = use)")
    p.add_argument("--moving-mask", help="optional moving mask (non-zero = use)")
    p.add_argument("--min-overlap", type=float, default=0.5,
                   help="minimum overlap γ: the fraction of the smaller image's (or mask's) volume that must "
                        "overlap for a pose to count (default 0.5; lower it for partial fields of view)")
    p.add_argument("--rotations", help="rotations per pyramid level, coarse to fine, e.g. '1500,240,3' (default: the method's)")
    p.add_argument("--seed", type=int, default=0, help=f"random seed (default 0); {SEED_PROMISE}")
    add_device_argument(p)
    add_initial_transform_argument(p)
    add_output_report_argument(p)
    add_image_output_arguments(p)
    p.set_defaults(run=run)
    return p


def _doubtful_threshold() -> float:
    from ..methods.global_rigid.config import DOUBTFUL_CONFIDENCE

    return DOUBTFUL_CONFIDENCE


def run(args) -> int:
    from ..io import read_image, read_mask
    from ..methods.global_rigid import GlobalRigidConfig, register_global_rigid

    outputs = check_output_paths(args)
    fixed = read_image(args.fixed, "fixed")
    moving = read_image(args.moving, "moving")
    check_image_outputs(outputs, fixed.image.GetDimension())
    initial = read_initial_transform(args)
    moving_mask = read_mask(args.moving_mask, moving.image, "moving mask")
    step_moving, how = prewarp(initial, moving.image, fixed.image)
    step_mask, _ = prewarp(initial, moving_mask, fixed.image, labels=True)
    options = {"min_overlap": args.min_overlap, "seed": args.seed, "device": args.device}
    if args.rotations:
        try:
            options["num_rotations"] = tuple(int(v) for v in args.rotations.split(",") if v.strip())
        except ValueError:
            raise InputError(f"--rotations: expected comma-separated integers such as '1500,240,3', "
                             f"got {args.rotations!r}") from None
    config = GlobalRigidConfig(**options)
    result = register_global_rigid(
        fixed.image,
        step_moving,
        config,
        fixed_mask=read_mask(args.fixed_mask, fixed.image, "fixed mask"),
        moving_mask=step_mask,
        progress=progress_for(args),
    )
    result = compose_result(result, initial, moving.image, args.initial_transform, how)
    result.warnings[:0] = fixed.warnings + moving.warnings
    written = write_outputs(args, fixed.image, moving.image, result, outputs=outputs,
                            moving_pixel_id=moving.pixel_id)
    write_output_report(args, result)
    m = result.fixed_to_moving_matrix
    print_result(
        args,
        result,
        [
            f"score {result.score:.4f}  confidence {result.confidence:.3f}  time {result.timings.get('total', float('nan')):.1f} s",
            "fixed→moving (LPS):",
            *("  " + " ".join(f"{v: .5f}" for v in row) for row in np.asarray(m)),
            "written: " + ", ".join(str(p) for p in written),
        ],
    )
    return 0
