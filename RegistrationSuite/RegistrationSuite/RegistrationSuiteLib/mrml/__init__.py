"""MRML bridge: Slicer nodes ↔ SimpleITK images and transforms, and Qt-free logics.

This layer sits between the core (numpy/SimpleITK/torch, LPS) and the Slicer modules (widgets). It
imports ``slicer`` and ``vtk`` only inside functions, so importing it needs neither; calling it needs Slicer
or the ``slicer-core`` wheel (``pip install slicer-core``).

Frames and directions: MRML is RAS, ITK files and the core are LPS. A registration's ``fixedToMoving`` (LPS)
becomes a transform node whose ToParent is movingToFixed (RAS); displacement fields are stored as
FromParent. Parent transforms of input nodes are ignored (their own coordinates are used).

Modules: :mod:`.scene` (headless scene with module logics), :mod:`.volumes`, :mod:`.transforms`,
:mod:`.masks`, :mod:`.mrb` (scene bundles), :mod:`.logic` (``RegistrationLogicBase``,
``GlobalRigidSearchLogic``, ``resample_volume``).
"""

from .logic import GlobalRigidSearchLogic, RegistrationInputs, RegistrationLogicBase, resample_volume
from .masks import mask_from_node
from .organ_logic import OrganPointCloudLogic
from .partial_prereg_logic import PartialPreregLogic, diagnostics_table
from .mrb import build_registration_scene, read_scene_bundle, write_scene_bundle
from .scene import (
    close_headless_scene,
    create_headless_application,
    create_headless_scene,
    module_logic,
    slicer_available,
)
from .transforms import (
    RESULT_ATTRIBUTE,
    embed_2d_matrix,
    save_transform_node,
    set_grid_transform_from_sitk,
    set_linear_transform,
    set_registration_references,
    sitk_transform_from_node,
    transform_node_from_result,
    world_transform_node,
)
from .volumes import image_from_volume_node, slice_position_lps, volume_node_from_image

__all__ = [
    "OrganPointCloudLogic",
    "PartialPreregLogic",
    "diagnostics_table",
    "GlobalRigidSearchLogic",
    "RESULT_ATTRIBUTE",
    "RegistrationInputs",
    "RegistrationLogicBase",
    "build_registration_scene",
    "close_headless_scene",
    "create_headless_application",
    "create_headless_scene",
    "embed_2d_matrix",
    "image_from_volume_node",
    "mask_from_node",
    "module_logic",
    "read_scene_bundle",
    "resample_volume",
    "save_transform_node",
    "set_grid_transform_from_sitk",
    "set_linear_transform",
    "set_registration_references",
    "sitk_transform_from_node",
    "slice_position_lps",
    "slicer_available",
    "transform_node_from_result",
    "volume_node_from_image",
    "world_transform_node",
    "write_scene_bundle",
]
