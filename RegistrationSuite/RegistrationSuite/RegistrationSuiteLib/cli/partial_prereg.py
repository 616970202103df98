"""``registration-suite partial-prereg``: rigid registration of a partial volume initialised by TSPM."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..seeding import SEED_PROMISE
from .common import (add_device_argument, add_image_output_arguments, check_image_outputs, check_output_paths,
                     print_result, write_outputs)
from .initial_transform import add_initial_transform_argument, compose_result, prewarp, read_initial_transform
from .progress_lines import progress_for
from .report import add_output_report_argument, write_output_report

HELP = "partial-volume rigid registration initialised by template-space patch mapping (TSPM)"


def add_parser(sub):
    p = sub.add_parser(
        "partial-prereg",
        help=HELP,
        description=(
            "Template-Space Patch Mapping (Xia et al., MICCAI 2022): a network maps 16³ patches of the partial "
            "moving image to template positions, RANSAC fits a rigid transform, the fixed image is aligned to "
            "the template by a CSNGF search from the scanner orientation (the global rigid search when that "
            "matches poorly), a CSNGF search of the neighbourhood of the TSPM estimate "
            "(±40 mm, ±20°) finds the refinement's basin, and a local rigid refinement measured only where the "
            "images overlap finishes. Writes an ITK transform (LPS) mapping fixed points to moving points."
        ),
    )
    p.add_argument("--fixed", required=True, help="fixed image (3D; e.g. the whole-brain T2/FLAIR/CT)")
    p.add_argument("--moving", required=True, help="moving image (3D; may cover only part of the fixed one)")
    p.add_argument("--output", required=True, help="output transform file (.h5, .tfm, .txt)")
    p.add_argument("--model", help="model name (see the models folder) or .pt file; default: shipped T1 MR model")
    p.add_argument("--refine", default="mi", choices=["mse", "nmi", "mi", "none"],
                   help="metric of the final overlap-restricted rigid refinement (default mi)")
    p.add_argument("--patches", type=int, default=100, help="patches drawn from the moving image (default 100)")
    p.add_argument("--no-local-search", action="store_true",
                   help="refine the TSPM estimate directly, without the CSNGF search of its neighbourhood (ablation)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not reuse or store the fixed → template alignment in the on-disk cache "
                        "(see 'registration-suite cache')")
    p.add_argument("--fixed-mask", help="optional fixed mask for the refinement (non-zero = use)")
    p.add_argument("--seed", type=int, default=0, help=f"random seed (default 0); {SEED_PROMISE}")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1; 0: torch's choice, all cores). On a 2-core machine "
                        "shared with other jobs, one thread took less CPU and wall time per case than two, with "
                        "the same result")
    add_device_argument(p)
    add_initial_transform_argument(p)
    add_output_report_argument(p)
    add_image_output_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..io import read_image, read_mask
    from ..methods.partial_prereg import PartialPreregConfig, load_tspm_model, register_partial_prereg

    if args.threads < 0:
        raise InputError(f"--threads: expected an integer >= 0 (0: all cores), got {args.threads}")
    outputs = check_output_paths(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = PartialPreregConfig(num_patches=args.patches, min_patches=min(20, max(6, args.patches)),
                                 refine=args.refine, seed=args.seed, device=args.device,
                                 local_search=not args.no_local_search, cache_fixed_to_template=not args.no_cache)
    model = load_tspm_model(args.model)  # before reading images: a bad model fails fast
    fixed = read_image(args.fixed, "fixed")
    moving = read_image(args.moving, "moving")
    check_image_outputs(outputs, fixed.image.GetDimension())
    initial = read_initial_transform(args)
    step_moving, how = prewarp(initial, moving.image, fixed.image)
    result = register_partial_prereg(
        fixed.image, step_moving, config, model=model,
        fixed_mask=read_mask(args.fixed_mask, fixed.image, "fixed mask") if args.fixed_mask else None,
        progress=progress_for(args),
    )
    result = compose_result(result, initial, moving.image, args.initial_transform, how)
    result.warnings[:0] = fixed.warnings + moving.warnings
    written = write_outputs(args, fixed.image, moving.image, result, outputs=outputs,
                            moving_pixel_id=moving.pixel_id)
    write_output_report(args, result)
    ransac = result.diagnostics.get("ransac")
    ref = result.diagnostics.get("refinement", {})
    m = result.fixed_to_moving_matrix
    seconds = f"time {result.timings.get('total', float('nan')):.1f} s"
    if ransac:
        lines = [f"RANSAC inliers {ransac['num_inliers']}/{ransac['num_points']} ({ransac['inlier_ratio']:.0%})  "
                 f"threshold {ransac['threshold_mm']:.1f} mm  {seconds}"]
    else:  # too small for the network's patches: searched without it
        lines = [f"network skipped ({result.diagnostics['network_skipped']['reason']})  {seconds}"]
    lines.append(f"confidence {result.confidence:.3f}")
    if ref.get("metric", "none") != "none":
        lines.append(f"refinement {ref['metric']}: {ref['before']:.4f} → {ref['after']:.4f}")
    lines += ["fixed→moving (LPS):", *("  " + " ".join(f"{v: .5f}" for v in row) for row in np.asarray(m)),
              "written: " + ", ".join(str(p) for p in written)]
    print_result(args, result, lines)
    return 0
