"""A small U-Net field estimator (2D or 3D) and its model files.

Input: fixed and moving images on the working grid, normalised to [0, 1], stacked as 2 channels
``(N, 2, *S)``. Output: a displacement ``(N, d, *S)`` in working-grid voxels (ITK channel order, see
:mod:`RegistrationSuiteLib.deform`) that maps fixed to moving points, or with ``diffeomorphic`` a stationary
velocity integrated by scaling and squaring. Any input size: the tensor is padded (replicate) to a multiple
of ``2**levels`` and the output cropped back, so no "divisible by 32" rule reaches the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import InputError
from ...models.model_file import ModelFile, load_model, load_state_strict

MODEL_KIND = "deformable_field"


class _Block(nn.Module):
    def __init__(self, conv, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv = conv(c_in, c_out, 3, stride=stride, padding=1)

    def forward(self, x):
        return F.leaky_relu(self.conv(x), 0.2)


class FieldUNet(nn.Module):
    """U-Net with strided-convolution downsampling and skip connections (VoxelMorph-like, smaller).

    Args:
        dim: 2 or 3.
        encoder: channels per encoder level (each level halves the size).
        decoder: channels per decoder level (as many as ``encoder``).
        diffeomorphic: integrate the output as a stationary velocity (``integration_steps`` squarings).
        output_stride: 1 = the field is predicted at full resolution; 2 = the last decoder level is skipped,
            the field is predicted at half resolution and upsampled linearly (for smooth fields: about a
            quarter of the computation; ``decoder`` then has one entry fewer).
    """

    def __init__(self, dim: int = 3, encoder: Sequence[int] = (8, 16, 16, 32), decoder: Sequence[int] = (32, 16, 16, 8),
                 diffeomorphic: bool = False, integration_steps: int = 7, output_stride: int = 1):
        super().__init__()
        if dim not in (2, 3):
            raise InputError(f"dim: expected 2 or 3, got {dim}")
        if output_stride not in (1, 2):
            raise InputError(f"output_stride: expected 1 or 2, got {output_stride}")
        if output_stride == 2 and len(encoder) < 2:
            raise InputError("output_stride 2 needs at least 2 encoder levels")
        if len(decoder) != len(encoder) - (output_stride - 1):
            raise InputError(f"decoder: expected {len(encoder) - (output_stride - 1)} levels for this encoder and "
                             f"output stride, got {len(decoder)}")
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.dim, self.diffeomorphic, self.integration_steps = dim, bool(diffeomorphic), int(integration_steps)
        self.output_stride = int(output_stride)
        self.config = {"dim": dim, "encoder": list(encoder), "decoder": list(decoder),
                       "diffeomorphic": bool(diffeomorphic), "integration_steps": int(integration_steps)}
        if self.output_stride != 1:  # files of stride-1 networks keep their original config keys
            self.config["output_stride"] = self.output_stride
        self.stem = _Block(conv, 2, encoder[0])
        self.down = nn.ModuleList(_Block(conv, a, b, stride=2) for a, b in zip(encoder[:-1], encoder[1:]))
        self.bottom = _Block(conv, encoder[-1], decoder[0])
        ups, c = [], decoder[0]
        for skip, out in zip(list(reversed(encoder[:-1]))[: len(decoder) - 1], decoder[1:]):
            ups.append(_Block(conv, c + skip, out))
            c = out
        self.up = nn.ModuleList(ups)
        self.head = conv(c, dim, 3, padding=1)
        nn.init.normal_(self.head.weight, std=1e-5)  # start near the identity
        nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        return 2 ** len(self.down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 2, *S)`` → ``(N, d, *S)`` displacement in voxels (any ``S``)."""
        shape = x.shape[2:]
        pad = []
        for n in reversed(shape):
            pad += [0, (-n) % self.multiple]
        x = F.pad(x, pad, mode="replicate") if any(pad) else x
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        y = self.bottom(skips.pop())
        for block in self.up:
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[2:], mode="nearest")
            y = block(torch.cat([y, skip], 1))
        y = self.head(y)
        if self.output_stride != 1:
            from ...deform import resize_field

            y = resize_field(y, x.shape[2:])
        y = y[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)]
        if self.diffeomorphic:
            from ...deform import integrate_velocity

            y = integrate_velocity(y, self.integration_steps)
        return y


@dataclass
class DeformableModel:
    """A loaded field network and what is needed to use it.

    Attributes:
        network: :class:`FieldUNet` in eval mode.
        spacing_mm: working spacing it was trained at (inputs are resampled to it).
        modality: family it was trained on (e.g. ``"mr"``).
        card: the model card.
    """

    network: FieldUNet
    spacing_mm: float
    modality: str = "mr"
    card: dict = field(default_factory=dict)
    name: str = "model"


def model_file_for(network: FieldUNet, *, spacing_mm: float, modality: str, card: dict) -> ModelFile:
    """A :class:`ModelFile` holding ``network`` (to pass to ``save_model``)."""
    return ModelFile(kind=MODEL_KIND, network_name="FieldUNet", network_config=dict(network.config),
                     state_dict=network.state_dict(), template=None,
                     intensity={"normalisation": "robust 0.5-99.5 percentile to [0, 1]"}, card=dict(card),
                     extra={"spacing_mm": float(spacing_mm), "modality": str(modality)})


def load_deformable_model(name_or_path, *, dim: int = 3) -> DeformableModel:
    """Load a shipped/user model by name or a ``.pt`` path (strict: kind, architecture, weights)."""
    from ...models.registry import resolve_model

    path = resolve_model(name_or_path)
    mf = load_model(path, kind=MODEL_KIND)
    cfg = dict(mf.network_config)
    if int(cfg.get("dim", 3)) != dim:
        raise InputError(f"model: {path} is a {cfg.get('dim')}D field network, these images are {dim}D")
    try:
        net = FieldUNet(**cfg)
    except TypeError as exc:
        raise InputError(f"model: {path}: network config does not describe a FieldUNet ({exc})") from None
    load_state_strict(net, mf.state_dict, path)
    net.eval()
    spacing = float(mf.extra.get("spacing_mm", 2.0))
    return DeformableModel(net, spacing, str(mf.extra.get("modality", "mr")), mf.card, mf.name)


def predict_field(model: DeformableModel, fixed: torch.Tensor, moving: torch.Tensor,
                  spacing_mm: Optional[float] = None) -> torch.Tensor:
    """The network's displacement ``(1, d, *S)`` in voxels of the input grid.

    Args:
        fixed, moving: ``(1, 1, *S)`` normalised images on the working grid.
        spacing_mm: the working grid's spacing; when it differs from the model's, the images are resized
            (corner-aligned) to the model's spacing and the field is resized back.
    """
    from ...deform import level_shape, resize_field, resize_image

    shape = tuple(fixed.shape[2:])
    x = torch.cat([fixed, moving], 1)
    factor = 1.0 if spacing_mm is None else model.spacing_mm / float(spacing_mm)
    if abs(factor - 1.0) > 1e-3:
        x = resize_image(x, level_shape(shape, factor))
    net = model.network.to(x.device)
    with torch.no_grad():
        u = net(x)
    return resize_field(u, shape)
