"""Synthetic slides with a known fixed → moving mapping (multi-stain: H&E-like fixed, DAB-like moving)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

# Optical density per unit of dye, RGB (Ruifrok & Johnston's haematoxylin+eosin mix and DAB, rounded).
HE_OD = np.array([0.55, 0.85, 0.45])
DAB_OD = np.array([0.27, 0.57, 0.78])


def tissue_density(size: int = 256, seed: int = 0) -> np.ndarray:
    """``(size, size)`` dye density in [0, 1]: an asymmetric section (ellipse + lobe) with smooth texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((xx - 0.45) / 0.27) ** 2 + ((yy - 0.52) / 0.2) ** 2 < 1
    lobe = ((xx - 0.68) / 0.1) ** 2 + ((yy - 0.3) / 0.09) ** 2 < 1
    texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 40)
    texture = (texture - texture.min()) / np.ptp(texture)
    density = (body | lobe) * (0.25 + 0.75 * texture)
    return ndimage.gaussian_filter(density, 0.7)


def stain(density: np.ndarray, od: np.ndarray, strength: float = 1.5) -> np.ndarray:
    """RGB uint8 slide from a density map (Beer–Lambert, white glass)."""
    rgb = 0.96 * np.exp(-strength * density[..., None] * od[None, None, :])
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)


def moving_density(density: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Density of the moving slide when fixed pixel ``x`` (x, y) maps to moving pixel ``matrix @ x + offset``:
    moving(y) = fixed(matrix⁻¹ (y − offset))."""
    inv = np.linalg.inv(matrix)
    # ndimage works in (row, col) = (y, x): swap axes of the (x, y) mapping.
    swap = np.array([[0, 1], [1, 0]])
    m_rc = swap @ inv @ swap
    o_rc = swap @ (-inv @ offset)
    return ndimage.affine_transform(density, m_rc, o_rc, order=1, cval=0.0)


def rotation(deg: float, mirrored: bool = False) -> np.ndarray:
    a = np.radians(deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return r @ np.diag([-1.0, 1.0]) if mirrored else r


def about_centre(matrix: np.ndarray, centre, shift) -> np.ndarray:
    """Offset of ``x → matrix (x − centre) + centre + shift``."""
    centre = np.asarray(centre, float)
    return centre + np.asarray(shift, float) - matrix @ centre


@pytest.fixture
def slide_pair():
    """``(fixed_rgb, moving_rgb, matrix, offset)`` in pixels: 70° rotation, a 4 % scale change and a shift,
    H&E-like fixed and DAB-like moving stains."""
    size = 256
    d = tissue_density(size)
    matrix = 1.04 * rotation(70.0)
    offset = about_centre(matrix, (size / 2, size / 2), (9.0, -6.0))
    return stain(d, HE_OD), stain(moving_density(d, matrix, offset), DAB_OD, 1.2), matrix, offset


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """An untrained (identity-initialised) histology model file: patch 16, grid 64, width 4."""
    from RegistrationSuiteLib.methods.histology.networks import (MODEL_KIND, NETWORK_NAME, NetworkConfig,
                                                                 build_networks)
    from RegistrationSuiteLib.models.model_file import ModelFile, save_model

    cfg = NetworkConfig(patch=16, width=4, grid_size=64)
    affine, nonrigid = build_networks(cfg)
    state = {f"affine.{k}": v for k, v in affine.state_dict().items()}
    state.update({f"nonrigid.{k}": v for k, v in nonrigid.state_dict().items()})
    card = {k: None for k in ("name", "summary", "training_data", "data_licence", "command", "seed", "metrics")}
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(ModelFile(kind=MODEL_KIND, network_name=NETWORK_NAME, network_config=cfg.to_dict(),
                         state_dict=state, card=dict(card, name="tiny")), path)
    return path
