"""``registration-suite histology``: register two histology slides (multi-stain, landmarks transfer)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..seeding import SEED_PROMISE
from .common import add_device_argument, add_summary_arguments, print_result
from .initial_transform import add_initial_transform_argument
from .progress_lines import progress_for
from .report import add_output_report_argument, write_output_report

HELP = "register two histology slides (H&E / IHC, rotation + mirror search, affine, non-rigid)"
FIELD_IMAGE_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".nii", ".nii.gz")
PNG_LIKE = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def add_parser(sub):
    p = sub.add_parser(
        "histology",
        help=HELP,
        description=(
            "Registers two slides of consecutive or re-stained sections: tissue mask and optical-density "
            "features, a full rotation search (0-359 degrees, optional mirror), affine refinement and an optional "
            "non-rigid instance optimisation (--io-steps). Writes a 2D displacement-field transform (ITK) mapping "
            "fixed points to moving points in physical units (µm when a TIFF carries a pixel size, LPS mm for "
            "images with a geometry header such as NRRD, else 1 unit = 1 level-0 pixel), or the field image "
            "itself when --output ends in an image extension."
        ),
    )
    p.add_argument("--fixed", required=True, help="fixed slide (PNG/JPG/TIFF, pyramidal TIFF/OME-TIFF/SVS)")
    p.add_argument("--moving", required=True, help="moving slide")
    p.add_argument("--output", required=True,
                   help="transform (.h5, .tfm, .txt) or the 2-component field image (.mha, .nrrd, .nii.gz)")
    p.add_argument("--fixed-landmarks", help="fixed landmarks, ANHIR CSV (X,Y in level-0 pixels)")
    p.add_argument("--output-landmarks", help="write the fixed landmarks' positions in the moving slide (CSV)")
    p.add_argument("--moving-landmarks", help="moving landmarks, ANHIR CSV, to map into the fixed slide")
    p.add_argument("--output-fixed-landmarks",
                   help="write the moving landmarks' positions in the fixed slide (inverse mapping, CSV)")
    p.add_argument("--fixed-points", help="fixed points in physical units (CSV x,y,z,label, LPS; z is kept), e.g. "
                   "markups exported by the Slicer module")
    p.add_argument("--output-points", help="write the fixed points' positions in the moving slide (CSV x,y,z,label)")
    level = p.add_mutually_exclusive_group()
    level.add_argument("--level", type=int, help="pyramid level to read (0 = full resolution)")
    level.add_argument("--resolution-um", type=float, help="working pixel size in µm (picks the pyramid level)")
    p.add_argument("--working-size", type=int, default=256,
                   help="longest side in pixels of the finest working level (default 256)")
    p.add_argument("--model", default="none",
                   help="multi-magnification networks after the initial alignment: a model name (see "
                        "'registration-suite models'), a .pt path, or none (classical stages only; the default)")
    p.add_argument("--network-stages", default="affine+nonrigid", choices=["affine+nonrigid", "affine"],
                   help="with --model: both networks (default) or the local affine network only")
    p.add_argument("--mirror", default="auto", choices=["auto", "no", "yes"],
                   help="also search mirrored sections (default auto)")
    p.add_argument("--iterations", type=int, default=3, help="network passes (only with --model; default 3)")
    p.add_argument("--io-steps", type=int, default=None,
                   help="non-rigid instance optimisation steps per level (0 = affine only, the default)")
    p.add_argument("--io-similarity", choices=["mind", "ngf", "lncc", "ncc"], default=None,
                   help="similarity of the instance optimisation (default mind: MIND-SSC on the optical density)")
    p.add_argument("--io-smoothness", type=float, default=None,
                   help="bending-energy weight of the instance optimisation (default 2)")
    p.add_argument("--io-size", type=int, default=None,
                   help="longest side in pixels of the instance optimisation's grid (default 512)")
    p.add_argument("--output-resampled", help="write the moving slide warped onto the fixed one (colours kept)")
    add_output_report_argument(p)
    p.add_argument("--output-checkerboard", "--output-qa", dest="output_checkerboard",
                   help="write a fixed / warped-moving checkerboard (PNG); --output-qa is the same option")
    add_initial_transform_argument(p)
    p.add_argument("--seed", type=int, default=0, help=f"random seed (default 0); {SEED_PROMISE}")
    add_device_argument(p)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on busy machines)")
    add_summary_arguments(p)
    p.set_defaults(run=run)
    return p


def _suffix(path: str) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def check_arguments(args):
    """Every check that needs no registration, before anything runs; returns the run's :class:`OutputSet`
    (paths checked: folder, extension, not an input, not twice the same file)."""
    from ..io.outputs import IMAGE_SUFFIXES, OutputSet
    from ..io.transforms import TRANSFORM_SUFFIXES
    from .common import check_no_input_overwrite

    check_no_input_overwrite(args)

    if _suffix(args.output) not in TRANSFORM_SUFFIXES + FIELD_IMAGE_SUFFIXES:
        raise InputError(f"--output: expected a transform ({', '.join(TRANSFORM_SUFFIXES)}) or a field image "
                         f"({', '.join(FIELD_IMAGE_SUFFIXES)}), got {args.output}")
    for given, wanted in (("fixed_landmarks", "output_landmarks"), ("moving_landmarks", "output_fixed_landmarks"),
                          ("fixed_points", "output_points")):
        if bool(getattr(args, given)) != bool(getattr(args, wanted)):
            raise InputError(f"--{given.replace('_', '-')} and --{wanted.replace('_', '-')} go together; got only one")
    args.net_grid_size = None
    if args.model not in (None, "none", "None"):
        from ..methods.histology.networks import load_histology_model

        try:
            args.net_grid_size = load_histology_model(args.model)[2].grid_size
        except InputError as exc:
            raise InputError(f"--model: {exc}") from None
        if args.io_steps:
            raise InputError("--io-steps: the instance optimisation runs without --model only; give one of them")
    if args.iterations < 1:
        raise InputError(f"--iterations: expected an integer >= 1, got {args.iterations}")
    if args.io_steps is not None and args.io_steps < 0:
        raise InputError(f"--io-steps: expected an integer >= 0, got {args.io_steps}")
    inputs = {f"--{a.replace('_', '-')}": getattr(args, a) for a in ("fixed", "moving", "fixed_landmarks",
                                                                       "moving_landmarks", "fixed_points",
                                                                       "initial_transform")
              if getattr(args, a)}
    outputs = OutputSet(inputs)
    outputs.add("--output", args.output, TRANSFORM_SUFFIXES + FIELD_IMAGE_SUFFIXES)
    for option, suffixes in (("--output-landmarks", (".csv",)), ("--output-fixed-landmarks", (".csv",)),
                             ("--output-points", (".csv",)),
                             ("--output-resampled", IMAGE_SUFFIXES), ("--output-checkerboard", PNG_LIKE),
                             ("--output-diagnostics", (".json",))):
        value = getattr(args, option[2:].replace("-", "_"))
        if value:
            outputs.add(option, value, suffixes)
    return outputs


def build_config(args):
    from ..methods.histology import HistologyConfig

    kw = {"search_size": min(HistologyConfig.search_size, args.working_size)}
    for name in ("io_steps", "io_similarity", "io_smoothness", "io_size"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    if getattr(args, "net_grid_size", None):
        kw["model"] = args.model
        kw["network_stages"] = args.network_stages
    return HistologyConfig(level=args.level, resolution_um=args.resolution_um, working_size=args.working_size,
                           mirror=args.mirror, iterations=args.iterations, seed=args.seed,
                           device=args.device, num_threads=args.threads, **kw)


def run(args) -> int:
    from ..io.points import read_points
    from ..methods.histology import read_landmarks, read_slide, register_histology
    from .initial_transform import compose_histology_result, prewarp_slide, read_initial_transform

    outputs = check_arguments(args)
    config = build_config(args)
    target = max(config.read_size, getattr(args, "net_grid_size", None) or 0)
    fixed = read_slide(args.fixed, "fixed", level=config.level, resolution_um=config.resolution_um,
                       target_size=target)
    moving = read_slide(args.moving, "moving", level=config.level, resolution_um=config.resolution_um,
                        target_size=target)
    fixed_lm = (read_landmarks(args.fixed_landmarks, "--fixed-landmarks", size=fixed.level0_size)
                if args.fixed_landmarks else None)
    moving_lm = (read_landmarks(args.moving_landmarks, "--moving-landmarks", size=moving.level0_size)
                 if args.moving_landmarks else None)
    fixed_points = read_points(args.fixed_points, "--fixed-points") if args.fixed_points else None
    initial = read_initial_transform(args)
    seen = prewarp_slide(moving, fixed, initial) if initial is not None else moving
    result = register_histology(fixed, seen, config, progress=progress_for(args))
    if initial is not None:
        result = compose_histology_result(result, initial, moving, args.initial_transform)
    write_outputs(args, outputs, result, fixed_lm, moving_lm, fixed_points)
    d = result.diagnostics
    print_result(args, result, [
        f"rotation {d['rotation_deg']:.1f}°{' (mirrored)' if d['mirrored'] else ''}  NCC {d['ncc_before']:.3f} → "
        f"{d['ncc_after']:.3f}  time {result.timings['total']:.1f} s",
        f"fixed→moving field ({ {'um': 'µm', 'mm': 'mm, LPS'}.get(result.unit, 'level-0 pixels')}) written to "
        f"{args.output}",
    ])
    write_output_report(args, result)
    return 0


def write_outputs(args, outputs, result, fixed_lm, moving_lm, fixed_points=None) -> list:
    """Write every requested output as one set (staged, then renamed together: all or none)."""
    from ..io import write_image, write_points, write_transform
    from ..methods.histology import (checkerboard, transfer_landmarks, transfer_landmarks_inverse, transfer_points,
                                     warped_moving, write_landmarks)
    from .common import write_diagnostics_and_commit

    with outputs:
        if fixed_lm is not None:
            with outputs.stage("--output-landmarks") as tmp:
                write_landmarks(transfer_landmarks(result, fixed_lm), tmp)
        if moving_lm is not None:
            with outputs.stage("--output-fixed-landmarks") as tmp:
                write_landmarks(transfer_landmarks_inverse(result, moving_lm), tmp)
        if fixed_points is not None:
            with outputs.stage("--output-points") as tmp:
                write_points(transfer_points(result, fixed_points), tmp)
        if "--output-resampled" in outputs or "--output-checkerboard" in outputs:
            warped = warped_moving(result)
            if "--output-resampled" in outputs:
                with outputs.stage("--output-resampled") as tmp:
                    write_image(warped, tmp)
            if "--output-checkerboard" in outputs:
                with outputs.stage("--output-checkerboard") as tmp:
                    write_image(checkerboard(result, warped), tmp)
        with outputs.stage("--output") as tmp:
            if _suffix(args.output) in FIELD_IMAGE_SUFFIXES:
                write_image(result.transform.GetDisplacementField(), tmp)
            else:
                write_transform(result.transform, tmp)
        return write_diagnostics_and_commit(outputs, result)
