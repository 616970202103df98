"""Regenerate the extension's and modules' icons and the sample-data thumbnails (numpy + Pillow + SimpleITK).

Run from anywhere: ``python .ci/make_icons.py``. The pictures are deterministic, so re-running it only changes
the files when this script or the sample volumes change.

- ``Resources/Icons/RegistrationSuite.png`` (extension) and the hub module's icon: a fixed (blue) and a moving
  (orange) square, the moving one rotated, overlapping.
- ``GlobalRigidSearch.png``: the same pair with a circular arrow (a search over rotations).
- ``DeformableRegistration.png``: a regular grid bent by a smooth displacement inside a fixed square.
- ``PartialVolumePreregistration.png``: a full (blue) square and a thin, rotated partial slab (orange) inside it,
  with the small patches whose template positions the network predicts.
- ``GlobalRigidSearchSampleT1.png`` / ``...T2.png``: middle axial slice of each shipped sample volume, used as
  thumbnails in the Sample Data module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
HUB = ROOT / "RegistrationSuite" / "RegistrationSuite"
GLOBAL_RIGID = ROOT / "RegistrationSuite" / "GlobalRigidSearch"
PARTIAL_PREREG = ROOT / "RegistrationSuite" / "PartialVolumePreregistration"
DEFORMABLE = ROOT / "RegistrationSuite" / "DeformableRegistration"
DATA = HUB / "RegistrationSuiteLib" / "data"

SIZE = 128
SUPERSAMPLE = 4  # draw at 4x and downsample: cheap anti-aliasing
FIXED_RGBA = (52, 120, 200, 210)
MOVING_RGBA = (240, 140, 40, 190)
ARROW_RGBA = (40, 40, 40, 255)


def _square(center, half, angle_deg):
    """Corners of a square of half-width ``half`` centred at ``center``, rotated by ``angle_deg``."""
    a = np.radians(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * half
    return [tuple(p) for p in corners @ rot.T + np.asarray(center, dtype=float)]


def _two_squares(scale: int) -> Image.Image:
    s = SIZE * scale
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    for poly, rgba in (
        (_square((0.40 * s, 0.42 * s), 0.27 * s, 0.0), FIXED_RGBA),
        (_square((0.60 * s, 0.58 * s), 0.27 * s, 28.0), MOVING_RGBA),
    ):
        layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
        ImageDraw.Draw(layer).polygon(poly, fill=rgba, outline=(30, 30, 30, 255), width=2 * scale)
        img = Image.alpha_composite(img, layer)
    return img


def _rotation_arrow(img: Image.Image, scale: int) -> Image.Image:
    s = SIZE * scale
    draw = ImageDraw.Draw(img)
    box = (0.08 * s, 0.08 * s, 0.92 * s, 0.92 * s)
    draw.arc(box, start=200, end=500, fill=ARROW_RGBA, width=5 * scale)
    # Arrow head at the arc's end (angle 500° = 140°, measured clockwise from +x in image coordinates).
    end = np.radians(140.0)
    c, r = 0.5 * s, 0.42 * s
    tip = np.array([c + r * np.cos(end), c + r * np.sin(end)])
    tangent = np.array([-np.sin(end), np.cos(end)])  # direction of travel (clockwise)
    normal = np.array([np.cos(end), np.sin(end)])
    head = 0.09 * s
    points = [tip + tangent * head, tip + normal * head * 0.7, tip - normal * head * 0.7]
    draw.polygon([tuple(p) for p in points], fill=ARROW_RGBA)
    return img


def _partial_slab(scale: int) -> Image.Image:
    """A full volume (blue square), a partial slab (thin orange rectangle, rotated) and its patches."""
    s = SIZE * scale
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    outline = (30, 30, 30, 255)
    a = np.radians(-22.0)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    center = np.array([0.52 * s, 0.50 * s])
    slab = np.array([[-0.40, -0.11], [0.40, -0.11], [0.40, 0.11], [-0.40, 0.11]]) * s
    for poly, rgba in (
        (_square((0.5 * s, 0.5 * s), 0.40 * s, 0.0), FIXED_RGBA),
        ([tuple(p) for p in slab @ rot.T + center], MOVING_RGBA),
    ):
        layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
        ImageDraw.Draw(layer).polygon(poly, fill=rgba, outline=outline, width=2 * scale)
        img = Image.alpha_composite(img, layer)
    draw = ImageDraw.Draw(img)
    for x in (-0.27, -0.09, 0.09, 0.27):  # patches along the slab
        draw.polygon(_square(tuple(np.array([x * s, 0.0]) @ rot.T + center), 0.045 * s, -22.0), fill=ARROW_RGBA)
    return img


def _warped_grid(scale: int) -> Image.Image:
    """A fixed square (blue) carrying a regular grid bent by a smooth displacement (moving colour): a
    deformation field."""
    s = SIZE * scale
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    ImageDraw.Draw(img).polygon(_square((0.5 * s, 0.5 * s), 0.44 * s, 0.0), fill=FIXED_RGBA,
                                outline=(30, 30, 30, 255), width=2 * scale)
    draw = ImageDraw.Draw(img)
    t = np.linspace(0.10, 0.90, 200)

    def warp(x, y):  # displacement of a sine field, fraction of the icon
        return x + 0.05 * np.sin(2 * np.pi * y), y + 0.05 * np.sin(2 * np.pi * x)

    for c in np.linspace(0.18, 0.82, 5):
        for xs, ys in (warp(np.full_like(t, c), t), warp(t, np.full_like(t, c))):
            draw.line([(x * s, y * s) for x, y in zip(xs, ys)], fill=MOVING_RGBA[:3] + (255,), width=4 * scale)
    return img


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.resize((SIZE, SIZE), Image.LANCZOS).save(path, optimize=True)
    print(f"wrote {path.relative_to(ROOT)}")


def _thumbnail(volume: Path, path: Path) -> None:
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(volume), sitk.sitkFloat32))
    sl = arr[arr.shape[0] // 2][::-1]  # LPS rows run posterior; flip so anterior is up
    lo, hi = np.percentile(sl, [1, 99.5])
    grey = (np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    rows, cols = np.nonzero(grey > 10)  # crop to the head, with a small margin
    m = 4
    grey = grey[max(rows.min() - m, 0) : rows.max() + m + 1, max(cols.min() - m, 0) : cols.max() + m + 1]
    img = Image.fromarray(grey).convert("RGB")
    scale = min(260 / img.width, 280 / img.height)
    img = img.resize((int(img.width * scale), int(img.height * scale)), Image.BICUBIC)
    canvas = Image.new("RGB", (260, 280), (0, 0, 0))
    canvas.paste(img, ((260 - img.width) // 2, (280 - img.height) // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    pair = _two_squares(SUPERSAMPLE)
    _save(pair, ROOT / "Resources" / "Icons" / "RegistrationSuite.png")
    _save(pair, HUB / "Resources" / "Icons" / "RegistrationSuite.png")
    _save(_rotation_arrow(_two_squares(SUPERSAMPLE), SUPERSAMPLE), GLOBAL_RIGID / "Resources" / "Icons" / "GlobalRigidSearch.png")
    _save(_partial_slab(SUPERSAMPLE), PARTIAL_PREREG / "Resources" / "Icons" / "PartialVolumePreregistration.png")
    _save(_warped_grid(SUPERSAMPLE), DEFORMABLE / "Resources" / "Icons" / "DeformableRegistration.png")
    for key in ("T1", "T2"):
        _thumbnail(DATA / f"sample_{key}_2mm.nii.gz", GLOBAL_RIGID / "Resources" / "Icons" / f"GlobalRigidSearchSample{key}.png")


if __name__ == "__main__":
    main()
