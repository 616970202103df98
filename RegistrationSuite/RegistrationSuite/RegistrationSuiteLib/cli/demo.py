"""``registration-suite demo``: a global rigid search on the shipped sample brain (T1 vs T2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .common import resample_moving
from .progress_lines import progress_for

HELP = "run the global rigid search on shipped sample data and write all outputs"


def add_parser(sub):
    p = sub.add_parser(
        "demo",
        help=HELP,
        description=(
            "Rotates and shifts the shipped T1 sample by a known rigid transform, registers the T2 sample to "
            "it with the global rigid search, and writes the transform, the resampled T2, a checkerboard/"
            "overlay PNG and a Slicer scene bundle. Prints the error against the known answer."
        ),
    )
    p.add_argument("--output-dir", default="registration-suite-demo", help="folder for the outputs (created)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="compute device")
    p.add_argument("--no-scene", action="store_true", help="skip the .mrb scene (needs slicer-core)")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..geometry import Grid, apply_affine
    from ..io import write_image, write_transform
    from ..io.atomic import atomic_output
    from ..methods.global_rigid import GlobalRigidConfig, register_global_rigid
    from ..sample_data import checkerboard_png_array, known_rigid_case, load_sample

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fixed, true_fixed_to_moving = known_rigid_case(load_sample("T1"))
    moving = load_sample("T2")
    config = GlobalRigidConfig(seed=args.seed, device=args.device)
    result = register_global_rigid(fixed, moving, config, progress=progress_for(args))

    corners = Grid.from_image(fixed).corners()
    err = np.linalg.norm(apply_affine(result.fixed_to_moving_matrix, corners) - apply_affine(true_fixed_to_moving, corners), axis=1)
    resampled = resample_moving(fixed, moving, result)
    write_image(fixed, out / "fixed_T1_misaligned.nii.gz")
    write_image(moving, out / "moving_T2.nii.gz")
    write_image(resampled, out / "moving_T2_resampled.nii.gz")
    picture = sitk.GetImageFromArray(checkerboard_png_array(fixed, resampled), isVector=True)
    write_image(picture, out / "checkerboard_overlay.png")
    if not args.no_scene:
        from ..mrml.mrb import write_scene_bundle

        write_scene_bundle(out / "scene.mrb", fixed, moving, result)
    write_transform(result.transform, out / "transform_fixed_to_moving.h5")
    summary = {
        "mean_corner_error_mm": float(err.mean()),
        "score": result.score,
        "confidence": result.confidence,
        "seconds": result.timings.get("total"),
        "outputs": sorted(p.name for p in out.iterdir()),
    }
    with atomic_output(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2))
    print(f"demo: mean corner error {err.mean():.2f} mm (success < 5 mm), score {result.score:.4f}, "
          f"confidence {result.confidence:.3f}, {result.timings.get('total', float('nan')):.1f} s")
    print(f"outputs in {out.resolve()}: {', '.join(summary['outputs'])}")
    if err.mean() >= 5.0:
        print("demo: the registration missed the known answer", file=sys.stderr)
        return 1
    return 0
