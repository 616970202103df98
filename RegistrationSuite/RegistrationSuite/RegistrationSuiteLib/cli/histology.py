"""``registration-suite histology``: register two histology slides (multi-stain, landmarks transfer)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import StderrProgress, print_result

HELP = "register two histology slides (H&E / IHC, rotation + mirror search, affine, non-rigid)"
FIELD_IMAGE_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".nii", ".nii.gz")
PNG_LIKE = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def add_parser(sub):
    p = sub.add_parser(
        "histology",
        help=HELP,
        description=(
            "Registers two slides of consecutive or re-stained sections: tissue mask and optical-density "
            "features, a full rotation search (0-359 degrees, optional mirror), affine refinement and a non-rigid "
            "instance optimisation. Writes a 2D displacement-field transform (ITK) mapping fixed points to "
            "moving points in physical units (µm when the files carry a pixel size, else 1 unit = 1 level-0 "
            "pixel), or the field image itself when --output ends in an image extension."
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
    level = p.add_mutually_exclusive_group()
    level.add_argument("--level", type=int, help="pyramid level to read (0 = full resolution)")
    level.add_argument("--resolution-um", type=float, help="working pixel size in µm (picks the pyramid level)")
    p.add_argument("--working-size", type=int, default=512,
                   help="longest side in pixels of the finest working level (default 512)")
    p.add_argument("--model", default="none", help="multi-magnification network (none: classical stages only)")
    p.add_argument("--mirror", default="auto", choices=["auto", "no", "yes"],
                   help="also search mirrored sections (default auto)")
    p.add_argument("--iterations", type=int, default=3, help="network passes (only with --model; default 3)")
    p.add_argument("--io-steps", type=int, default=None,
                   help="non-rigid instance optimisation steps per level (0 = affine only)")
    p.add_argument("--output-resampled", help="write the moving slide warped onto the fixed one (colours kept)")
    p.add_argument("--output-checkerboard", help="write a fixed / warped-moving checkerboard (PNG)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    from .common import add_device_argument

    add_device_argument(p)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on busy machines)")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    p.set_defaults(run=run)
    return p


def _suffix(path: str) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def check_arguments(args) -> None:
    """Every check that needs no registration, before anything runs or is written."""
    from ..io.transforms import TRANSFORM_SUFFIXES
    from .common import check_no_input_overwrite

    check_no_input_overwrite(args)

    if _suffix(args.output) not in TRANSFORM_SUFFIXES + FIELD_IMAGE_SUFFIXES:
        raise InputError(f"--output: expected a transform ({', '.join(TRANSFORM_SUFFIXES)}) or a field image "
                         f"({', '.join(FIELD_IMAGE_SUFFIXES)}), got {args.output}")
    for attr in ("output", "output_landmarks", "output_fixed_landmarks", "output_resampled", "output_checkerboard"):
        value = getattr(args, attr)
        if value and not Path(value).resolve().parent.is_dir():
            raise InputError(f"--{attr.replace('_', '-')}: folder does not exist: {Path(value).parent}")
    for attr in ("output_resampled", "output_checkerboard"):
        value = getattr(args, attr)
        if value and _suffix(value) not in PNG_LIKE + FIELD_IMAGE_SUFFIXES:
            raise InputError(f"--{attr.replace('_', '-')}: expected an image file (.png, .tif, .mha, ...), got {value}")
    for given, wanted in (("fixed_landmarks", "output_landmarks"), ("moving_landmarks", "output_fixed_landmarks")):
        if bool(getattr(args, given)) != bool(getattr(args, wanted)):
            raise InputError(f"--{given.replace('_', '-')} and --{wanted.replace('_', '-')} go together; got only one")
    if args.model not in (None, "none", "None"):
        raise InputError(f"--model: no histology network is available in this version (got {args.model!r}); "
                         "use --model none")
    if args.io_steps is not None and args.io_steps < 0:
        raise InputError(f"--io-steps: expected an integer >= 0, got {args.io_steps}")


def build_config(args):
    from ..methods.histology import HistologyConfig

    kw = {"search_size": min(HistologyConfig.search_size, args.working_size)}
    if args.io_steps is not None:
        kw["io_steps"] = args.io_steps
    return HistologyConfig(level=args.level, resolution_um=args.resolution_um, working_size=args.working_size,
                           mirror=args.mirror, iterations=max(1, args.iterations), seed=args.seed,
                           device=args.device, num_threads=args.threads, **kw)


def run(args) -> int:
    from ..methods.histology import read_landmarks, read_slide, register_histology

    check_arguments(args)
    config = build_config(args)
    fixed = read_slide(args.fixed, "fixed", level=config.level, resolution_um=config.resolution_um,
                       target_size=config.working_size)
    moving = read_slide(args.moving, "moving", level=config.level, resolution_um=config.resolution_um,
                        target_size=config.working_size)
    fixed_lm = (read_landmarks(args.fixed_landmarks, "--fixed-landmarks", size=fixed.level0_size)
                if args.fixed_landmarks else None)
    moving_lm = (read_landmarks(args.moving_landmarks, "--moving-landmarks", size=moving.level0_size)
                 if args.moving_landmarks else None)
    result = register_histology(fixed, moving, config, progress=StderrProgress(not args.quiet))
    write_outputs(args, result, fixed_lm, moving_lm)
    d = result.diagnostics
    print_result(args, result, [
        f"rotation {d['rotation_deg']:.1f}°{' (mirrored)' if d['mirrored'] else ''}  NCC {d['ncc_before']:.3f} → "
        f"{d['ncc_after']:.3f}  time {result.timings['total']:.1f} s",
        f"fixed→moving field ({'µm' if result.unit == 'um' else 'level-0 pixels'}) written to {args.output}",
    ])
    return 0


def write_outputs(args, result, fixed_lm, moving_lm) -> None:
    """Write every requested output (each atomically); the transform/field last: its presence means success."""
    import SimpleITK as sitk

    from ..io import write_image, write_transform
    from ..methods.histology import (checkerboard, transfer_landmarks, transfer_landmarks_inverse, warped_moving,
                                     write_landmarks)

    outputs = []
    if fixed_lm is not None:
        write_landmarks(transfer_landmarks(result, fixed_lm), args.output_landmarks)
        outputs.append(args.output_landmarks)
    if moving_lm is not None:
        write_landmarks(transfer_landmarks_inverse(result, moving_lm), args.output_fixed_landmarks)
        outputs.append(args.output_fixed_landmarks)
    if args.output_resampled or args.output_checkerboard:
        warped = warped_moving(result)
        if args.output_resampled:
            write_image(warped, args.output_resampled)
            outputs.append(args.output_resampled)
        if args.output_checkerboard:
            write_image(checkerboard(result, warped), args.output_checkerboard)
            outputs.append(args.output_checkerboard)
    if _suffix(args.output) in FIELD_IMAGE_SUFFIXES:
        field = result.transform.GetDisplacementField()
        write_image(field, args.output)
    else:
        write_transform(result.transform, args.output)
    outputs.append(args.output)
    result.diagnostics["outputs"] = outputs
