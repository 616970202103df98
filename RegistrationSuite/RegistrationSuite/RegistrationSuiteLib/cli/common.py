"""Helpers shared by the CLI commands: progress on stderr, options with one meaning everywhere, output
checks before the work, outputs written as a set, the short ``--json`` summary."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io import write_image, write_transform
from ..io.outputs import IMAGE_SUFFIXES, OutputSet, check_image_suffix
from ..io.points import POINT_SUFFIXES
from ..io.transforms import TRANSFORM_SUFFIXES
from ..result import RegistrationResult

#: Output options every command may have: ``attribute: (option, accepted suffixes)``.
OUTPUT_OPTIONS = {
    "output": ("--output", TRANSFORM_SUFFIXES),
    "output_resampled": ("--output-resampled", IMAGE_SUFFIXES),
    "output_resampled_labels": ("--output-resampled-labels", IMAGE_SUFFIXES),
    "output_points": ("--output-points", POINT_SUFFIXES),
    "output_scene": ("--output-scene", (".mrb",)),
    "output_qa": ("--output-qa", (".png",)),
    "output_diagnostics": ("--output-diagnostics", (".json",)),
}
#: Input options an output must never overwrite.
INPUT_OPTIONS = ("fixed", "moving", "fixed_mask", "moving_mask", "initial_transform", "model", "coherence",
                 "label_transition", "pairs", "template", "init_weights")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class StderrProgress:
    """``progress(fraction, message)`` callback drawing one updating line on stderr."""

    def __init__(self, enabled: bool = True, min_interval: float = 0.2):
        self.enabled = enabled and sys.stderr is not None
        self.min_interval = min_interval
        self._last = 0.0
        self._tty = bool(self.enabled and sys.stderr.isatty())

    def __call__(self, fraction: float, message: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < self.min_interval:
            return
        self._last = now
        line = f"[{fraction * 100:5.1f}%] {message}"
        if self._tty:
            sys.stderr.write("\r" + line[:100].ljust(100) + ("\n" if fraction >= 1.0 else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def device_option(value: str) -> str:
    """``--device`` parser shared by every command: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not _DEVICE.match(str(value).lower()):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return str(value).lower()


def add_device_argument(p) -> None:
    """``--device``, with the same meaning in every command."""
    p.add_argument("--device", default="auto", type=device_option,
                   help="compute device: auto (CUDA when available), cpu, cuda or cuda:N (default auto)")


def add_image_output_arguments(p) -> None:
    """The outputs of commands that register two images: what :func:`write_outputs` and
    :func:`print_result` honour."""
    p.add_argument("--output-resampled", help="write moving resampled onto the fixed grid (keeps the moving "
                   "image's pixel type; integers are rounded and clamped)")
    p.add_argument("--resampled-float", action="store_true",
                   help="write --output-resampled as float32 instead of the moving image's pixel type")
    p.add_argument("--output-scene", help="write a Slicer scene bundle (.mrb)")
    p.add_argument("--output-qa", help="write a before/after checkerboard picture (.png) of the middle slice")
    add_summary_arguments(p)


def add_summary_arguments(p) -> None:
    """``--json`` (short summary on stdout) and ``--output-diagnostics`` (everything, in a file)."""
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout (matrix, score, "
                   "confidence, doubtful reasons, timings, outputs)")
    p.add_argument("--output-diagnostics", help="write the full result with every diagnostic to a .json file")


def _input_paths(args) -> dict:
    inputs = {f"--{a.replace('_', '-')}": getattr(args, a) for a in INPUT_OPTIONS
              if isinstance(getattr(args, a, None), str)}
    # inputs named otherwise by some commands (landmark files, ...): every option holding an existing file
    for attr, value in vars(args).items():
        if (isinstance(value, str) and not attr.startswith("output") and attr not in INPUT_OPTIONS
                and attr not in ("command",) and os.path.isfile(value)):
            inputs[f"--{attr.replace('_', '-')}"] = value
    return inputs


def check_no_input_overwrite(args) -> None:
    """Refuse, with one line, any output option (``--output*``, folders excepted) whose path resolves to an
    input file (symlinks included) or to another output — for commands that write their outputs themselves."""
    checks = OutputSet(_input_paths(args))
    for attr, value in vars(args).items():
        if (attr == "output" or attr.startswith("output_")) and not attr.endswith("_dir") and isinstance(value, str):
            checks.add(f"--{attr.replace('_', '-')}", value, None, in_set=False)


def check_output_paths(args, transform_attr: str = "output") -> OutputSet:
    """Check every output *before* the (long) registration so a typo does not waste the run: extension,
    folder, not an input (symlinks included), not twice the same file. Returns the run's :class:`OutputSet`."""
    outputs = OutputSet(_input_paths(args))
    for attr, (option, suffixes) in OUTPUT_OPTIONS.items():
        value = getattr(args, transform_attr if attr == "output" else attr, None)
        if value:
            outputs.add(option, value, suffixes)
    if getattr(args, "output_report", None):  # written after the set by cli.report (a failure there is a note)
        outputs.add("--output-report", args.output_report, (".html", ".htm"), in_set=False)
    if "--output-scene" in outputs:
        from ..mrml import slicer_available

        if not slicer_available():
            raise InputError("--output-scene needs the MRML library: pip install 'registration-suite[scene]'")
    return outputs


def check_image_outputs(outputs: OutputSet, dimension: int) -> None:
    """Once the inputs are read: image outputs must hold a ``dimension``-D image (no 3D ``.png``)."""
    for option in ("--output-resampled", "--output-resampled-labels"):
        if option in outputs:
            check_image_suffix(option, outputs.path(option), dimension)


def resample_moving(fixed: sitk.Image, moving: sitk.Image, result: RegistrationResult, *, labels: bool = False,
                    pixel_id=None) -> sitk.Image:
    """Moving resampled onto the fixed grid with the result's fixed→moving transform.

    Args:
        pixel_id: pixel type of the output (e.g. the moving file's); integer types are rounded and clamped
            to their range. ``None`` keeps ``moving``'s type.
    """
    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    work_type = moving.GetPixelID() if labels else sitk.sitkFloat64
    out = sitk.Resample(moving, fixed, result.transform, interp, 0.0, work_type)
    return cast_like(out, moving.GetPixelID() if pixel_id is None else pixel_id)


def cast_like(image: sitk.Image, pixel_id: int) -> sitk.Image:
    """``image`` cast to ``pixel_id``; for integer types the values are rounded and clamped to the type's range
    first (a plain cast would truncate and wrap around)."""
    if image.GetPixelID() == pixel_id:
        return image
    probe = sitk.Image([1] * image.GetDimension(), pixel_id)
    dtype = sitk.GetArrayViewFromImage(probe).dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(sitk.GetArrayFromImage(image)), info.min, info.max).astype(dtype)
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(image)
        return out
    return sitk.Cast(image, pixel_id)


def qa_picture(fixed: sitk.Image, resampled: sitk.Image, moving: sitk.Image, *, labels: bool = False) -> sitk.Image:
    """Before (moving on the fixed grid, identity) above after (resampled), each a checkerboard and a colour
    overlay of the middle slice, RGB. ``labels``: label volumes (the "before" is resampled nearest-neighbour)."""
    from ..sample_data import checkerboard_png_array

    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    before = sitk.Resample(moving, fixed, sitk.Transform(), interp, 0.0, sitk.sitkFloat32)
    top = checkerboard_png_array(fixed, before)
    bottom = checkerboard_png_array(fixed, sitk.Cast(resampled, sitk.sitkFloat32))
    return sitk.GetImageFromArray(np.concatenate([top, bottom], axis=0), isVector=True)


def write_outputs(args, fixed: sitk.Image, moving: sitk.Image, result: RegistrationResult, *,
                  outputs: OutputSet = None, moving_pixel_id=None) -> list:
    """Write the transform and every optional output named in ``args`` as one set: all are written under
    temporary names and renamed together at the end; if one fails none is kept (the error names it)."""
    outputs = check_output_paths(args) if outputs is None else outputs
    with outputs:
        resampled = None
        if "--output-resampled" in outputs or "--output-qa" in outputs:
            keep = None if getattr(args, "resampled_float", False) else moving_pixel_id
            resampled = resample_moving(fixed, moving, result, pixel_id=keep if keep is not None else sitk.sitkFloat32)
        if "--output-resampled" in outputs:
            with outputs.stage("--output-resampled") as tmp:
                write_image(resampled, tmp)
        if "--output-qa" in outputs:
            with outputs.stage("--output-qa") as tmp:
                write_image(qa_picture(fixed, resampled, moving), tmp)
        if "--output-scene" in outputs:
            from ..mrml.mrb import write_scene_bundle

            with outputs.stage("--output-scene") as tmp:
                write_scene_bundle(tmp, fixed, moving, result)
        with outputs.stage("--output") as tmp:
            write_transform(result.transform, tmp)
        written = write_diagnostics_and_commit(outputs, result)
    return written


def write_diagnostics_and_commit(outputs: OutputSet, result: RegistrationResult) -> list:
    """Stage ``--output-diagnostics`` (the full result as JSON, outputs listed) and commit the set."""
    result.diagnostics["outputs"] = [str(p) for p in outputs.paths.values()]
    if "--output-diagnostics" in outputs:
        with outputs.stage("--output-diagnostics") as tmp:
            with open(tmp, "w") as fh:
                fh.write(json.dumps(result.summary(), indent=1))
    return outputs.commit()


def doubtful_reasons(result: RegistrationResult) -> list:
    """The method's reasons to check the result (``diagnostics["doubtful"]``), as strings."""
    reasons = result.diagnostics.get("doubtful") or []
    return [str(r) for r in reasons]


def short_summary(result: RegistrationResult) -> dict:
    """What ``--json`` prints: matrix, score, confidence, ``doubtful`` (the list of reasons to check the
    result; empty when there is none), timings, warnings, outputs. The full diagnostics go to
    ``--output-diagnostics``."""
    full = result.summary()
    out = {k: full[k] for k in ("method", "transform_type") if k in full}
    if "fixed_to_moving_lps" in full:
        out["fixed_to_moving_lps"] = full["fixed_to_moving_lps"]
    reasons = doubtful_reasons(result)
    out.update(score=full["score"], confidence=full["confidence"], doubtful=reasons,
               timings=full["timings"], warnings=full["warnings"],
               outputs=list(result.diagnostics.get("outputs", [])))
    return out


def print_result(args, result: RegistrationResult, human_lines) -> None:
    """``--json``: one short machine-readable line on stdout; otherwise a human summary. With
    ``--progress-json`` (the Slicer modules' child processes) the line also carries the full diagnostics, which
    the modules' panels show. Warnings (doubtful results included) always go to stderr."""
    if getattr(args, "progress_json", False):
        print(json.dumps(dict(result.summary(), **short_summary(result)), separators=(",", ":")), flush=True)
    elif getattr(args, "json", False):
        print(json.dumps(short_summary(result), separators=(",", ":")))
    else:
        for line in human_lines:
            print(line)
    for w in result.warnings:
        print(f"note: {w}", file=sys.stderr)
