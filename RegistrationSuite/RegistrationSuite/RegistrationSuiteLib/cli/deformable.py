"""``registration-suite deformable``: dense deformable registration (network estimate + instance optimisation)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..methods.deformable.config import REGULARIZER_CHOICES, SIMILARITY_CHOICES, DeformableConfig
from ..seeding import SEED_PROMISE
from .common import add_device_argument, add_summary_arguments, check_output_paths, print_result
from .progress_lines import progress_for
from .report import add_output_report_argument, write_output_report

HELP = "deformable registration (RegNet/Cao-style field network + instance optimisation); writes a displacement field"
FIELD_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def add_parser(sub):
    p = sub.add_parser(
        "deformable", help=HELP,
        description=(
            "Dense deformable registration on a working grid (default: automatic, see --spacing) covering the fixed image: an optional "
            "field network (RegNet / Cao et al.) followed by instance optimisation (Adam, coarse to fine, NCC/LNCC "
            "for one contrast, MIND-SSC or NGF across contrasts, diffusion or bending regularisation). Writes one "
            "ITK displacement-field transform mapping fixed points to moving points (LPS; the initial transform "
            "folded in), or the displacement field image when --output ends in .nii.gz/.nrrd/.mha."),
    )
    p.add_argument("--fixed", required=True, help="fixed image (3D)")
    p.add_argument("--moving", required=True, help="moving image (3D)")
    p.add_argument("--output", required=True, help="output transform (.h5) or displacement field image (.nii.gz, .nrrd, .mha)")
    init = p.add_mutually_exclusive_group()
    init.add_argument("--initial-transform", help="ITK transform file fixed → moving to start from (e.g. rigid-search output)")
    init.add_argument("--init", choices=["none", "rigid-search"], default="none",
                      help="run the global rigid search first (default none: start from the scanner coordinates)")
    defaults = DeformableConfig()  # every default below comes from the configuration (one source)
    p.add_argument("--model", default=defaults.model or "none",
                   help="field network: model name, .pt file or 'none' (optimisation only; default "
                        f"{defaults.model or 'none'})")
    p.add_argument("--network-passes", type=int, default=defaults.network_passes,
                   help="with --model: apply the network this many times, each on the moving image warped so far "
                        f"(a cascade; default {defaults.network_passes})")
    p.add_argument("--network-skip-levels", type=int, default=defaults.network_skip_levels,
                   help="with --model: the optimisation skips this many of its coarsest levels after the network's "
                        f"start (default {defaults.network_skip_levels})")
    p.add_argument("--similarity", default=defaults.similarity, choices=list(SIMILARITY_CHOICES),
                   help=f"default {defaults.similarity}; auto: LNCC when the smoothed images correlate (same "
                        "contrast), else MIND-SSC")
    p.add_argument("--io-steps", type=int, default=defaults.io_steps,
                   help=f"instance-optimisation Adam steps in all (0: network only; default {defaults.io_steps})")
    p.add_argument("--regularization", type=float, default=defaults.regularization,
                   help=f"regulariser weight (default {defaults.regularization:g})")
    p.add_argument("--regularizer", default=defaults.regularizer, choices=list(REGULARIZER_CHOICES),
                   help=f"default {defaults.regularizer}")
    p.add_argument("--diffeomorphic", action="store_true", help="optimise a stationary velocity field (scaling and squaring)")
    p.add_argument("--spacing", type=spacing, default=defaults.spacing_mm,
                   help=f"working-grid spacing in mm, or 'auto' (default): {defaults.auto_spacing_mm:g} mm, coarsened so "
                        f"the grid holds at most {defaults.auto_max_voxels / 1e6:g} million voxels (large images)")
    p.add_argument("--fixed-mask", help="fixed mask (non-zero = use)")
    p.add_argument("--moving-mask", help="moving mask (non-zero = use)")
    p.add_argument("--output-resampled", help="write moving resampled onto the fixed grid")
    p.add_argument("--output-jacobian", help="write the Jacobian determinant of the mapping (working grid)")
    p.add_argument("--output-inverse", help="write the inverse transform (moving → fixed points; .h5)")
    p.add_argument("--output-scene", help="write a Slicer scene bundle (.mrb)")
    p.add_argument("--output-qa", help="write a before/after checkerboard picture (.png) of the middle slice")
    add_output_report_argument(p)
    p.add_argument("--max-memory-gb", type=float, default=defaults.max_memory_gb,
                   help=f"refuse working grids needing more (default {defaults.max_memory_gb:g})")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default 0: torch's choice, all cores; 1 is faster on a busy machine)")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"random seed (default {defaults.seed}); {SEED_PROMISE}")
    add_device_argument(p)
    add_summary_arguments(p)
    p.set_defaults(run=run)
    return p


def spacing(text):
    """``--spacing``: a number of mm, or ``auto`` (``None``); argparse reports anything else in one line."""
    return None if str(text).lower() == "auto" else float(text)


def is_field_image_path(path) -> bool:
    return str(path).lower().endswith(FIELD_IMAGE_SUFFIXES)


def _check_outputs(args):
    """Every output is checked before the run (nothing is written on bad input); returns the OutputSet."""
    from ..io.outputs import IMAGE_SUFFIXES

    field_image = is_field_image_path(args.output)
    if not field_image and Path(args.output).suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"--output: a displacement-field transform is stored as .h5 (or give an image name "
                         f"such as .nii.gz for the field itself), got {args.output}")
    saved, args.output = args.output, None  # the shared checks take the transform suffixes for --output
    try:
        outputs = check_output_paths(args)
    finally:
        args.output = saved
    outputs.add("--output", args.output, FIELD_IMAGE_SUFFIXES if field_image else (".h5", ".hdf5"))
    if args.output_jacobian:
        outputs.add("--output-jacobian", args.output_jacobian, tuple(x for x in IMAGE_SUFFIXES if x in FIELD_IMAGE_SUFFIXES))
    if args.output_inverse:
        outputs.add("--output-inverse", args.output_inverse, (".h5", ".hdf5"))
    return outputs


def _initial_transform(args, fixed, moving, fixed_mask, moving_mask, progress):
    if args.initial_transform:
        from ..io.transforms import read_transform

        return read_transform(args.initial_transform)
    if args.init == "rigid-search":
        from ..methods.global_rigid import GlobalRigidConfig, register_global_rigid

        res = register_global_rigid(fixed, moving, GlobalRigidConfig(seed=args.seed, device=args.device),
                                    fixed_mask=fixed_mask, moving_mask=moving_mask, progress=progress)
        return res.transform
    return None


def run(args) -> int:
    from ..io import read_image, read_mask
    from ..methods.deformable import DeformableConfig, register_deformable
    from ..progress import Progress

    if args.threads < 0:
        raise InputError(f"--threads: expected an integer >= 0 (0: all cores), got {args.threads}")
    outputs = _check_outputs(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = DeformableConfig(spacing_mm=args.spacing, similarity=args.similarity, io_steps=args.io_steps,
                              regularization=args.regularization, regularizer=args.regularizer,
                              diffeomorphic=args.diffeomorphic, model=args.model, seed=args.seed,
                              device=args.device, max_memory_gb=args.max_memory_gb,
                              **{name: value for name, value in (("network_passes", args.network_passes),
                                                                 ("network_skip_levels", args.network_skip_levels))
                                 if value is not None})
    model = None
    if config.model is not None:  # before reading images: a bad model fails fast
        from ..methods.deformable import load_deformable_model

        model = load_deformable_model(config.model)
    fixed = read_image(args.fixed, "fixed")
    moving = read_image(args.moving, "moving")
    fmask = read_mask(args.fixed_mask, fixed.image, "fixed mask") if args.fixed_mask else None
    mmask = read_mask(args.moving_mask, moving.image, "moving mask") if args.moving_mask else None
    prog = Progress(progress_for(args))
    search = args.init == "rigid-search" and not args.initial_transform
    initial = _initial_transform(args, fixed.image, moving.image, fmask, mmask, prog.sub(0.0, 0.3) if search else None)
    result = register_deformable(fixed.image, moving.image, config, initial_transform=initial, model=model,
                                 fixed_mask=fmask, moving_mask=mmask, progress=prog.sub(0.3, 1.0) if search else prog)
    result.warnings[:0] = fixed.warnings + moving.warnings
    written = _write(args, outputs, fixed.image, moving.image, result, moving.pixel_id)
    d = result.diagnostics
    sim = d["similarity"]
    lines = [
        f"similarity {sim['name']}: {sim['before']:.4f} → {sim['after']:.4f}  folding {d['folding_fraction']:.3%}  "
        f"Jacobian [{d['jacobian_min']:.3f}, {d['jacobian_max']:.3f}]  time {result.timings.get('total', float('nan')):.1f} s",
        "written: " + ", ".join(str(p) for p in written),
    ]
    print_result(args, result, lines)
    write_output_report(args, result)
    return 0


def _write(args, outputs, fixed, moving, result, moving_pixel_id=None) -> list:
    """All outputs as one set (written under temporary names, renamed together at the end)."""
    import SimpleITK as sitk

    from ..io import write_image, write_transform
    from .common import stage_image_outputs, write_diagnostics_and_commit

    field = result.transform.GetDisplacementField()
    with outputs:
        if "--output-jacobian" in outputs:
            with outputs.stage("--output-jacobian") as tmp:
                write_image(sitk.DisplacementFieldJacobianDeterminant(field), tmp)
        if "--output-inverse" in outputs:
            inverse = sitk.InvertDisplacementField(field, maximumNumberOfIterations=20, enforceBoundaryCondition=False)
            with outputs.stage("--output-inverse") as tmp:
                write_transform(sitk.DisplacementFieldTransform(inverse), tmp)
        stage_image_outputs(args, outputs, fixed, moving, result, moving_pixel_id)
        with outputs.stage("--output") as tmp:
            if is_field_image_path(args.output):
                write_image(field, tmp)
            else:
                write_transform(result.transform, tmp)
        return write_diagnostics_and_commit(outputs, result)
