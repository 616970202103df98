"""``registration-suite demo``: a global rigid search on the shipped sample brain (T1 vs T2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..seeding import SEED_PROMISE
from ..errors import InputError
from .common import add_device_argument, resample_moving
from .progress_lines import progress_for

#: What the demo writes into ``--output-dir``: option-like key -> file name.
OUTPUT_FILES = {
    "fixed": "fixed_T1_misaligned.nii.gz",
    "moving": "moving_T2.nii.gz",
    "resampled": "moving_T2_resampled.nii.gz",
    "picture": "checkerboard_overlay.png",
    "scene": "scene.mrb",
    "transform": "transform_fixed_to_moving.h5",
    "summary": "summary.json",
}

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
    p.add_argument("--seed", type=int, default=0, help=f"random seed (default 0); {SEED_PROMISE}")
    add_device_argument(p)
    p.add_argument("--no-scene", action="store_true", help="skip the .mrb scene (needs slicer-core)")
    p.set_defaults(run=run)
    return p


def _plan(args):
    """The demo's outputs, checked before the registration (folder created here)."""
    from ..io.outputs import OutputSet
    from ..sample_data import sample_path

    out = Path(args.output_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"--output-dir: {out} is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--output-dir: cannot create {out} ({exc.strerror})") from None
    if not args.no_scene:
        from ..mrml import slicer_available

        if not slicer_available():
            raise InputError("demo: the scene needs the MRML library: pip install 'registration-suite[scene]' "
                             "(or pass --no-scene)")
    outputs = OutputSet({"sample T1": str(sample_path("T1")), "sample T2": str(sample_path("T2"))})
    for key, name in OUTPUT_FILES.items():
        if not (key == "scene" and args.no_scene):
            outputs.add(key, out / name)
    return out, outputs


def run(args) -> int:
    from ..geometry import Grid, apply_affine
    from ..io import write_image, write_transform
    from ..methods.global_rigid import GlobalRigidConfig, register_global_rigid
    from ..sample_data import checkerboard_png_array, known_rigid_case, load_sample

    out, outputs = _plan(args)
    fixed, true_fixed_to_moving = known_rigid_case(load_sample("T1"))
    moving = load_sample("T2")
    config = GlobalRigidConfig(seed=args.seed, device=args.device)
    result = register_global_rigid(fixed, moving, config, progress=progress_for(args))

    corners = Grid.from_image(fixed).corners()
    err = np.linalg.norm(apply_affine(result.fixed_to_moving_matrix, corners) - apply_affine(true_fixed_to_moving, corners), axis=1)
    resampled = resample_moving(fixed, moving, result)
    picture = sitk.GetImageFromArray(checkerboard_png_array(fixed, resampled), isVector=True)
    with outputs:
        for key, image in (("fixed", fixed), ("moving", moving), ("resampled", resampled), ("picture", picture)):
            with outputs.stage(key) as tmp:
                write_image(image, tmp)
        if "scene" in outputs:
            from ..mrml.mrb import write_scene_bundle

            with outputs.stage("scene") as tmp:
                write_scene_bundle(tmp, fixed, moving, result)
        with outputs.stage("transform") as tmp:
            write_transform(result.transform, tmp)
        summary = {
            "mean_corner_error_mm": float(err.mean()),
            "score": result.score,
            "confidence": result.confidence,
            "doubtful_reasons": list(result.diagnostics.get("doubtful", [])),
            "seconds": result.timings.get("total"),
            "outputs": [p.name for p in outputs.paths.values()],
        }
        with outputs.stage("summary") as tmp:
            Path(tmp).write_text(json.dumps(summary, indent=2))
        written = outputs.commit()
    print(f"demo: mean corner error {err.mean():.2f} mm (success < 5 mm), score {result.score:.4f}, "
          f"confidence {result.confidence:.3f}, {result.timings.get('total', float('nan')):.1f} s")
    for w in result.warnings:
        print(f"note: {w}", file=sys.stderr)
    print(f"wrote {len(written)} files in {out}: {', '.join(p.name for p in written)}")
    if err.mean() >= 5.0:
        print("demo: the registration missed the known answer", file=sys.stderr)
        return 1
    return 0
