"""Helpers shared by the CLI commands: progress on stderr, output checks, writing outputs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError
from ..io import write_image, write_transform
from ..io.transforms import TRANSFORM_SUFFIXES
from ..result import RegistrationResult


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


def add_image_output_arguments(p) -> None:
    """``--output-resampled``, ``--output-scene`` and ``--json``: what :func:`write_outputs` and
    :func:`print_result` honour for commands that register two images."""
    p.add_argument("--output-resampled", help="write moving resampled onto the fixed grid")
    p.add_argument("--output-scene", help="write a Slicer scene bundle (.mrb)")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")


def check_output_paths(args, transform_attr: str = "output") -> None:
    """Validate output paths *before* the (long) registration so a typo does not waste the run."""
    out = Path(getattr(args, transform_attr))
    if out.suffix.lower() not in TRANSFORM_SUFFIXES:
        raise InputError(f"--output: transform file must end with one of {', '.join(TRANSFORM_SUFFIXES)}, got {out}")
    for attr in (transform_attr, "output_resampled", "output_scene", "output_points", "output_resampled_labels"):
        value = getattr(args, attr, None)
        if value and not Path(value).resolve().parent.is_dir():
            raise InputError(f"--{attr.replace('_', '-')}: folder does not exist: {Path(value).parent}")
    scene = getattr(args, "output_scene", None)
    if scene and not str(scene).lower().endswith(".mrb"):
        raise InputError(f"--output-scene: expected a .mrb file, got {scene}")
    if scene:
        from ..mrml import slicer_available

        if not slicer_available():
            raise InputError("--output-scene needs the MRML library: pip install 'registration-suite[scene]'")


def resample_moving(fixed: sitk.Image, moving: sitk.Image, result: RegistrationResult, *, labels: bool = False) -> sitk.Image:
    """Moving resampled onto the fixed grid with the result's fixed→moving transform."""
    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    return sitk.Resample(moving, fixed, result.transform, interp, 0.0, moving.GetPixelID())


def write_outputs(args, fixed: sitk.Image, moving: sitk.Image, result: RegistrationResult) -> None:
    """Write the transform and the optional outputs named in ``args``; each file is written atomically."""
    outputs = []
    if getattr(args, "output_resampled", None):
        write_image(resample_moving(fixed, moving, result), args.output_resampled)
        outputs.append(args.output_resampled)
    if getattr(args, "output_scene", None):
        from ..mrml.mrb import write_scene_bundle

        write_scene_bundle(args.output_scene, fixed, moving, result)
        outputs.append(args.output_scene)
    # The transform last: its presence means the run completed.
    write_transform(result.transform, args.output)
    outputs.append(args.output)
    result.diagnostics.setdefault("outputs", outputs)


def print_result(args, result: RegistrationResult, human_lines) -> None:
    """``--json``: one machine-readable line on stdout; otherwise a short human summary."""
    if getattr(args, "json", False):
        print(result.to_json())
        return
    for line in human_lines:
        print(line)
    for w in result.warnings:
        print(f"note: {w}", file=sys.stderr)
