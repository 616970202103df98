"""Slicer scene bundles (``.mrb``) holding a registration: fixed, moving (under the transform), transform.

Opening the bundle in Slicer shows the moving volume aligned on the fixed one; the transform node carries
the fixed/moving registration references and the result's summary (attribute ``RegistrationSuite.Result``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping, Optional

import SimpleITK as sitk

from ..errors import InputError
from .scene import create_headless_application, create_headless_scene, require_slicer
from .transforms import DEFAULT_TRANSFORM_NAME, set_registration_references, transform_node_from_result
from .volumes import volume_node_from_image

DEFAULT_NAMES = {"fixed": "Fixed", "moving": "Moving", "transform": DEFAULT_TRANSFORM_NAME}


def _names(names: Optional[Mapping[str, str]]) -> dict:
    out = dict(DEFAULT_NAMES)
    if names:
        unknown = set(names) - set(DEFAULT_NAMES)
        if unknown:
            raise InputError(f"names: expected keys among {sorted(DEFAULT_NAMES)}, got {sorted(unknown)}")
        out.update(names)
    return out


def build_registration_scene(scene, fixed_image: sitk.Image, moving_image: sitk.Image, result, names=None) -> dict:
    """Add fixed, moving and transform nodes to ``scene``; the moving volume is placed under the transform.

    Returns:
        ``{"fixed": node, "moving": node, "transform": node}``.
    """
    names = _names(names)
    fixed = volume_node_from_image(fixed_image, scene, names["fixed"])
    moving = volume_node_from_image(moving_image, scene, names["moving"])
    transform = transform_node_from_result(result, scene, name=names["transform"])
    set_registration_references(transform, fixed, moving)
    moving.SetAndObserveTransformNodeID(transform.GetID())
    return {"fixed": fixed, "moving": moving, "transform": transform}


@contextlib.contextmanager
def captured_vtk_messages():
    """Collect VTK's error and warning messages instead of letting them reach the terminal.

    Yields a callable returning the captured text; the previous output window and log verbosity come back
    afterwards. MRML's writers report problems only through VTK's output window (coloured log lines on
    stderr), which a command-line user should never see raw.
    """
    import vtk

    previous = vtk.vtkOutputWindow.GetInstance()
    window = vtk.vtkStringOutputWindow()
    vtk.vtkOutputWindow.SetInstance(window)
    verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    try:
        yield window.GetOutput
    finally:
        vtk.vtkLogger.SetStderrVerbosity(verbosity)
        vtk.vtkOutputWindow.SetInstance(previous)


def _last_vtk_error(text: str) -> str:
    """The last message line of captured VTK output (without the file/line preamble), or ``""``."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip() and not ln.startswith(("ERROR: In", "Warning: In"))]
    return lines[-1].split("): ", 1)[-1][:200] if lines else ""


def write_scene_bundle(path, fixed_image: sitk.Image, moving_image: sitk.Image, result, names=None) -> Path:
    """Write a ``.mrb`` with the fixed and moving images and the registration transform, atomically.

    Args:
        path: output file ending in ``.mrb``; replaced only once the bundle is complete.
        fixed_image, moving_image: the registered images (2D images become single-slice volumes).
        result: the :class:`~RegistrationSuiteLib.result.RegistrationResult`.
        names: optional node names, keys ``"fixed"``, ``"moving"``, ``"transform"``.

    Returns:
        ``path`` as a ``Path``.
    """
    require_slicer("writing a Slicer scene (.mrb)")
    path = Path(os.path.abspath(os.path.expanduser(str(path))))  # MRML's bundle writer needs a full path
    if path.suffix.lower() != ".mrb":
        raise InputError(f"path: expected a .mrb file, got {path}")
    for label, image in (("fixed_image", fixed_image), ("moving_image", moving_image)):
        if not isinstance(image, sitk.Image):
            raise InputError(f"{label}: expected a SimpleITK image, got {type(image).__name__}")
    if not path.parent.is_dir():
        raise InputError(f"path: folder does not exist: {path.parent}")
    app = create_headless_application(set_global=False)
    # Written beside the target under its final name (the bundle's inner folder is named after the file),
    # then renamed: a failed run leaves no partial .mrb.
    work = tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent)
    try:
        build_registration_scene(app.scene, fixed_image, moving_image, result, names)
        staged = os.path.join(work, path.name)
        app.scene.SetRootDirectory(work)  # WriteToMRB aborts the process without URL and root directory
        app.scene.SetURL(os.path.join(work, f"{path.stem}.mrml"))
        with captured_vtk_messages() as messages:
            ok = app.scene.WriteToMRB(staged) and os.path.isfile(staged)
        if not ok:
            reason = _last_vtk_error(messages())
            raise RuntimeError(f"could not write the scene bundle {path}" + (f": {reason}" if reason else ""))
        os.replace(staged, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        app.close()
    return path


def read_scene_bundle(path, scene=None):
    """Load a ``.mrb`` into ``scene`` (a new headless scene when ``None``) by unzipping it and importing
    its ``.mrml``; the data are read into memory, so the extracted files are removed afterwards.

    Returns:
        The scene.
    """
    require_slicer("reading a Slicer scene (.mrb)")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"path: file not found: {path}")
    if scene is None:
        scene = create_headless_scene(set_global=False)
    work = tempfile.mkdtemp(prefix=".mrb-read.")
    try:
        with zipfile.ZipFile(path) as bundle:
            bundle.extractall(work)
        mrml = sorted(Path(work).rglob("*.mrml"))
        if not mrml:
            raise InputError(f"path: {path} holds no .mrml scene file")
        scene.SetRootDirectory(str(mrml[0].parent))
        scene.SetURL(str(mrml[0]))
        if not scene.Import():
            raise InputError(f"path: could not import the scene in {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return scene
