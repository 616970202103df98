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
        correlation_radius: 0 = the U-Net sees the two images only. ``R`` > 0 adds a correlation layer
            (PWC-Net / PDD-Net style, with fixed modality-independent features): MIND-SSC descriptors
            (Heinrich et al. 2013; ``mind_dilation``) of both images, their squared distance for every
            integer displacement in ``[−R, R]³`` (box-aggregated), a soft-argmin over the displacements with a
            learned temperature, smoothed by a Gaussian of ``correlation_sigma`` voxels; that field (and its
            confidence) is an extra U-Net input, and the U-Net's output is added to it as a residual. The
            untrained network thus already returns the smoothed soft-argmin; training learns the temperature
            and the correction. ``correlation_stride`` 2: the descriptors are shrunk to half resolution and
            the correlation runs there (displacements in steps of 2 voxels, 8 times fewer voxels), its field
            upsampled linearly.
    """

    def __init__(self, dim: int = 3, encoder: Sequence[int] = (8, 16, 16, 32), decoder: Sequence[int] = (32, 16, 16, 8),
                 diffeomorphic: bool = False, integration_steps: int = 7, output_stride: int = 1,
                 correlation_radius: int = 0, mind_dilation: int = 1, correlation_sigma: float = 1.5,
                 correlation_stride: int = 1):
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
        self.correlation_radius = int(correlation_radius)
        self.mind_dilation, self.correlation_sigma = int(mind_dilation), float(correlation_sigma)
        self.correlation_stride = int(correlation_stride)
        if self.correlation_radius < 0 or self.mind_dilation < 1 or not self.correlation_sigma >= 0 \
                or self.correlation_stride not in (1, 2):
            raise InputError("correlation_radius >= 0, mind_dilation >= 1, correlation_sigma >= 0 and "
                             "correlation_stride 1 or 2 expected")
        if self.correlation_radius:
            self.config.update(correlation_radius=self.correlation_radius, mind_dilation=self.mind_dilation,
                               correlation_sigma=self.correlation_sigma, correlation_stride=self.correlation_stride)
            self.log_beta = nn.Parameter(torch.tensor(2.0))  # soft-argmin temperature (of the normalised cost)
        self.stem = _Block(conv, 2 + (dim + 1 if self.correlation_radius else 0), encoder[0])
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

    def correlation(self, x: torch.Tensor) -> tuple:
        """``(field, confidence)``: the smoothed soft-argmin displacement ``(N, d, *S)`` (voxels, ITK channel
        order) of the MIND-SSC distance over ``[−R, R]^d`` and the largest soft-argmin probability ``(N, 1, *S)``."""
        import itertools

        from ...deform import box_filter, gaussian_smooth, level_shape, mind_ssc, resize_field, resize_image

        r, d = self.correlation_radius, self.dim
        full = tuple(x.shape[2:])
        with torch.no_grad():
            f = mind_ssc(x[:, :1], radius=1, dilation=self.mind_dilation)
            m = mind_ssc(x[:, 1:2], radius=1, dilation=self.mind_dilation)
            shape = full if self.correlation_stride == 1 else level_shape(full, 2)
            f, m = resize_image(f, shape), resize_image(m, shape)
            mp = F.pad(m, [r] * (2 * d), mode="replicate")
            offsets = list(itertools.product(range(-r, r + 1), repeat=d))  # tensor order (z, y, x)
            cost = torch.cat([(f - mp[(slice(None), slice(None)) + tuple(slice(r + o, r + o + n) for o, n in
                                                                          zip(off, shape))]).pow(2).mean(1, keepdim=True)
                              for off in offsets], 1)
            cost = box_filter(cost, 1)
            cost = cost / cost.mean((1,) + tuple(range(2, 2 + d)), keepdim=True).clamp_min(1e-6)
            vectors = torch.tensor([list(reversed(o)) for o in offsets], dtype=x.dtype, device=x.device)  # (K, d) x-first
        prob = torch.softmax(-torch.exp(self.log_beta) * cost, 1)
        field = torch.einsum("nk...,kc->nc...", prob, vectors)
        if self.correlation_sigma > 0:
            field = gaussian_smooth(field, self.correlation_sigma / self.correlation_stride)
        confidence = prob.max(1, keepdim=True)[0]
        if shape != full:
            field, confidence = resize_field(field, full), resize_image(confidence, full, smooth=False)
        return field, confidence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 2, *S)`` → ``(N, d, *S)`` displacement in voxels (any ``S``)."""
        shape = x.shape[2:]
        base = None
        if self.correlation_radius:
            base, confidence = self.correlation(x)
            x = torch.cat([x, base, confidence], 1)
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
        if base is not None:
            y = y + base
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
                  spacing_mm: Optional[float] = None, passes: int = 1) -> torch.Tensor:
    """The network's displacement ``(1, d, *S)`` in voxels of the input grid.

    Args:
        fixed, moving: ``(1, 1, *S)`` normalised images on the working grid.
        spacing_mm: the working grid's spacing; when it differs from the model's, the images are resized
            (corner-aligned) to the model's spacing and the field is resized back.
        passes: cascade depth. Pass ``k > 1`` sees the moving image warped by the field ``u`` so far (on the
            working grid) and estimates the rest ``r``; the two compose as ``u ← r + u∘(x + r)`` (since
            ``moving(x + u(x + r(x)) + r(x)) ≈ fixed(x)``).
    """
    from ...deform import level_shape, resize_field, resize_image, warp_image

    if int(passes) < 1:
        raise InputError(f"passes: expected an integer >= 1, got {passes}")
    shape = tuple(fixed.shape[2:])
    factor = 1.0 if spacing_mm is None else model.spacing_mm / float(spacing_mm)
    net = model.network.to(fixed.device)
    u = None
    with torch.no_grad():
        for _ in range(int(passes)):
            warped = moving if u is None else warp_image(moving, u)
            x = torch.cat([fixed, warped], 1)
            if abs(factor - 1.0) > 1e-3:
                x = resize_image(x, level_shape(shape, factor))
            r = resize_field(net(x), shape)
            u = r if u is None else r + warp_image(u, r)
    return u
