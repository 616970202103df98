"""Reading and writing images, transforms and point sets; every writer is atomic."""

from .atomic import atomic_output
from .images import ImageInput, read_image, read_mask, write_image
from .points import LabeledPoints, read_points, write_points
from .transforms import read_transform, write_transform

__all__ = [
    "ImageInput",
    "LabeledPoints",
    "atomic_output",
    "read_image",
    "read_mask",
    "read_points",
    "read_transform",
    "write_image",
    "write_points",
    "write_transform",
]
