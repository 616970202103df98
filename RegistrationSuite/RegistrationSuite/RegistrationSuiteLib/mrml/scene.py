"""A headless "application" around a MRML scene, for tests and the CLI's ``--output-scene``.

Inside Slicer the application creates the scene, the application logic and every module logic. Outside it
(the ``slicer-core`` wheel) nothing does, yet some features need module logics attached to the scene
(segmentation import/export, ``.mrk.json`` markups). :func:`create_headless_scene` builds that minimum.

What is attached (all Qt-free classes shipped with ``slicer-core``):

- ``vtkSlicerApplicationLogic`` (creates the selection/interaction singleton nodes);
- Colors: ``vtkMRMLColorLogic``, which adds the built-in colour tables (Grey, Labels, ...) without needing
  the colour files of an installed Slicer (``vtkSlicerColorLogic`` logs errors without a home directory);
- SubjectHierarchy, Volumes, Transforms, Markups and Segmentations module logics;
- the segmentation conversion rules (binary labelmap ↔ closed surface), which Slicer's Segmentations
  *module* (not its logic) registers at start-up.

Not attached: Terminologies (needs the terminology files of an installed Slicer; segmentation import works
without it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Module logics attached by :func:`create_headless_scene`, in attachment order (subject hierarchy first, as
#: the others use it).
HEADLESS_MODULE_LOGICS = ("SubjectHierarchy", "Volumes", "Transforms", "Markups", "Segmentations")

_LOGIC_CLASSES = {
    "Colors": "vtkMRMLColorLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
    "Volumes": "vtkSlicerVolumesLogic",
    "Transforms": "vtkSlicerTransformLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
}

# Scene address -> HeadlessApplication: VTK does not keep the application logic alive through the scene,
# so the Python side must hold it as long as the scene is used.
_APPLICATIONS: dict = {}


@dataclass
class HeadlessApplication:
    """The objects that stand in for Slicer's application around one scene."""

    scene: object
    application_logic: object
    logics: dict = field(default_factory=dict)

    def close(self) -> None:
        """Detach the logics, clear the scene and forget it (``slicer.mrmlScene`` is unset if it was this)."""
        import slicer

        self.scene.Clear(1)
        for name, logic in reversed(list(self.logics.items())):
            # The Segmentations logic logs a subject-hierarchy warning when detached; it is released with
            # the application logic instead.
            if name != "Segmentations":
                logic.SetMRMLScene(None)
        self.application_logic.SetMRMLScene(None)
        self.logics.clear()
        _APPLICATIONS.pop(_key(self.scene), None)
        if getattr(slicer, "mrmlScene", None) is self.scene:
            slicer.mrmlScene = None


def _key(scene) -> str:
    return scene.GetAddressAsString("vtkMRMLScene")


def slicer_available() -> bool:
    """Whether the MRML libraries (Slicer itself or the ``slicer-core`` wheel) can be imported."""
    import importlib.util

    try:
        return importlib.util.find_spec("slicer") is not None
    except (ImportError, ValueError):
        return False


def require_slicer(purpose: str) -> None:
    """Raise :class:`~RegistrationSuiteLib.errors.InputError` naming ``purpose`` when MRML is missing."""
    if not slicer_available():
        from ..errors import InputError

        raise InputError(f"{purpose} needs the MRML libraries: run inside 3D Slicer or `pip install slicer-core`")


def create_headless_application(*, set_global: bool = True) -> HeadlessApplication:
    """Create a scene with an application logic and the module logics of :data:`HEADLESS_MODULE_LOGICS`.

    Args:
        set_global: also set ``slicer.mrmlScene`` (what ``slicer.util`` helpers use).
    """
    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app = HeadlessApplication(scene, app_logic)
    for name in ("Colors",) + HEADLESS_MODULE_LOGICS:
        logic = getattr(slicer, _LOGIC_CLASSES[name])()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        app.logics[name] = logic
    if hasattr(app.logics["Volumes"], "SetColorLogic"):
        app.logics["Volumes"].SetColorLogic(app.logics["Colors"])
    _register_segmentation_converter_rules()
    _APPLICATIONS[_key(scene)] = app
    if set_global:
        slicer.mrmlScene = scene
    return app


def create_headless_scene(*, set_global: bool = True):
    """A ``vtkMRMLScene`` with the application and module logics attached (see the module docstring).

    The logics stay alive until :func:`close_headless_scene`; find them with :func:`module_logic`.

    Args:
        set_global: also set ``slicer.mrmlScene`` (what ``slicer.util`` helpers use).

    Returns:
        The new ``slicer.vtkMRMLScene``.
    """
    return create_headless_application(set_global=set_global).scene


def close_headless_scene(scene) -> None:
    """Release a scene made by :func:`create_headless_scene` (no-op for other scenes)."""
    app = _APPLICATIONS.get(_key(scene))
    if app is not None:
        app.close()


def module_logic(name: str, scene=None):
    """The module logic ``name`` ("Segmentations", "Volumes", ...) serving ``scene``, or ``None``.

    Looks first in the headless applications made here, then in the running Slicer application.
    """
    import slicer

    if scene is None:
        scene = getattr(slicer, "mrmlScene", None)
    if scene is not None:
        app = _APPLICATIONS.get(_key(scene))
        if app is not None:
            return app.logics.get(name)
    application = getattr(slicer, "app", None)
    if application is not None and hasattr(application, "applicationLogic"):
        return application.applicationLogic().GetModuleLogic(name)
    return None


def _register_segmentation_converter_rules() -> None:
    """Register the conversion rules once per process (the factory is a process-wide singleton)."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for class_name in (
        "vtkBinaryLabelmapToClosedSurfaceConversionRule",
        "vtkClosedSurfaceToBinaryLabelmapConversionRule",
        "vtkClosedSurfaceToFractionalLabelmapConversionRule",
        "vtkFractionalLabelmapToClosedSurfaceConversionRule",
    ):
        if class_name not in registered and hasattr(slicer, class_name):
            factory.RegisterConverterRule(getattr(slicer, class_name)())
