"""Multi-magnification patch networks (Wodzinski-style patch registration with a wider field of view; the
multi-magnification paper, ``papers/histology_multimagnification_WBIR2022.txt``, §2).

Direction: every field here is a displacement ``v`` in pixels of the network grid (the fixed slide resampled to
the model's grid size) such that ``moving_on_fixed(x + v(x)) ≈ fixed(x)``: fixed → moving, like the rest of
the package (:mod:`.register` composes it with the initial affine alignment).

Patch sets (paper §2.1): a *base* patch of ``patch / rate`` pixels is cut around each centre; the
*target-magnification* patch is its centre crop at cropping rate ``rate`` (``patch`` pixels, full resolution) and
the *context* patch is the whole base patch downsampled by ``1 / rate`` to ``patch`` pixels (lower magnification,
four times the area for ``rate = 0.5``). Both networks predict the deformation of the target patch only.

Networks (paper §2.2, Fig. 2, reduced in width for CPUs): a U-Net on the target patches and an encoder on the
context patches whose feature maps are centre-cropped at the same rate and upsampled by a transposed convolution
to join the U-Net's maps at every scale. Adaptation: each branch encodes fixed and moving with shared weights
and adds a local cost volume at its coarsest scale (see :class:`MultiMagNet`). The *affine* network ends in a
pooled linear head with 6 parameters per patch (a 2 × 2 matrix and a translation about the patch centre); the
*non-rigid* network ends in a 2-channel displacement. ``context=False`` gives the single-magnification
variants of the paper's ablation (the target branch alone). Heads start at zero (identity).

Loss (unsupervised, paper Eq. 2): ``1 − NCC(fixed, warped moving)`` per patch, plus ``λ`` times the curvature
energy (squared Laplacian of the displacement, Fischer & Modersitzki) for the non-rigid network.

Whole-slide fields (paper §2.1 and DeepHistReg's patch scheme): patches tile the grid with stride ``patch / 2``;
each patch's displacement is weighted by a squared-sine window (the windows of a half-overlapping tiling sum to
one) and the weighted sum is divided by the summed weights, so neighbouring patches blend smoothly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import InputError

MODEL_KIND = "histology_multimag"
NETWORK_NAME = "multimag_affine_nonrigid"
CORRELATION_RADIUS = 3  # cost-volume search radius at the coarsest (1/4) scale


@dataclass
class NetworkConfig:
    """Architecture and geometry of a histology model (stored in the model file).

    Attributes:
        patch: side of the target and context patches (pixels of the network grid).
        rate: cropping rate of the target patch in the base patch (0.5: context covers twice the side).
        width: channels of the first convolution block (doubled once deeper).
        context: multi-magnification (True) or single-magnification (False, the ablation) networks.
        grid_size: longest side (pixels) of the fixed slide on the network grid.
        channels: input channels per image (1: the optical-density gradient magnitude).
    """

    patch: int = 64
    rate: float = 0.5
    width: int = 12
    context: bool = True
    grid_size: int = 512
    channels: int = 1

    def validate(self) -> None:
        if not isinstance(self.patch, int) or self.patch < 16 or self.patch % 8:
            raise InputError(f"patch: expected a multiple of 8 >= 16, got {self.patch!r}")
        if self.rate not in (0.5, 0.25):
            raise InputError(f"rate: expected 0.5 or 0.25, got {self.rate!r}")
        if not isinstance(self.width, int) or self.width < 4 or self.width % 4:
            raise InputError(f"width: expected a multiple of 4 >= 4, got {self.width!r}")
        if not isinstance(self.grid_size, int) or self.grid_size < 2 * self.patch:
            raise InputError(f"grid_size: expected an integer >= 2 × patch ({2 * self.patch}), got {self.grid_size!r}")
        if self.channels != 1:
            raise InputError(f"channels: expected 1, got {self.channels!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"network config: unknown keys {unknown}")
        cfg = cls(**data)
        cfg.validate()
        return cfg


# ------------------------------------------------------------------------------------------ patch sets
def patch_sets(image: torch.Tensor, centres: torch.Tensor, patch: int, rate: float) -> tuple:
    """Target and context patches of ``image`` ``(1, C, H, W)`` around ``centres`` ``(N, 2)`` (pixel x, y).

    Returns:
        ``(target, context)``, each ``(N, C, patch, patch)``: ``target[k, :, j, i]`` = image at
        ``centre + (i, j) − (patch − 1) / 2``; ``context`` = the ``patch / rate`` base patch averaged over
        ``1 / rate`` blocks (pixel ``(i, j)`` = mean of the block centred at ``centre + ((i, j) − (patch − 1) / 2) / rate``).
        Outside the image: 0.
    """
    factor = int(round(1.0 / rate))
    offsets = torch.arange(patch, dtype=torch.float32, device=image.device) - (patch - 1) / 2.0
    target = _sample_square(image, centres, offsets)
    pooled = F.avg_pool2d(F.pad(image, (0, (-image.shape[-1]) % factor, 0, (-image.shape[-2]) % factor)), factor)
    # pooled pixel q covers image pixels factor q .. factor q + factor − 1: centre factor q + (factor − 1) / 2
    shift = (factor - 1) / 2.0
    context = _sample_square(pooled, (centres - shift) / factor, offsets)
    return target, context


def _sample_square(image: torch.Tensor, centres: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    n, p = centres.shape[0], offsets.numel()
    h, w = image.shape[-2:]
    gy, gx = torch.meshgrid(offsets, offsets, indexing="ij")
    xs = centres[:, 0, None, None] + gx
    ys = centres[:, 1, None, None] + gy
    grid = torch.stack([2.0 * xs / max(w - 1, 1) - 1.0, 2.0 * ys / max(h - 1, 1) - 1.0], -1)
    return F.grid_sample(image.expand(n, -1, -1, -1), grid.to(image.dtype), mode="bilinear",
                         padding_mode="zeros", align_corners=True)


def warp_patches(moving: torch.Tensor, v: torch.Tensor) -> tuple:
    """Moving patches ``(N, C, P, P)`` sampled at ``x + v(x)`` (``v`` ``(N, 2, P, P)`` pixels, channel 0 = x);
    returns ``(warped, inside)`` with ``inside`` 1 where the sample fell in the patch."""
    n, _, p, _ = moving.shape
    base = torch.arange(p, dtype=v.dtype, device=v.device)
    gy, gx = torch.meshgrid(base, base, indexing="ij")
    xs, ys = gx + v[:, 0], gy + v[:, 1]
    grid = torch.stack([2.0 * xs / (p - 1) - 1.0, 2.0 * ys / (p - 1) - 1.0], -1)
    ones = torch.ones_like(moving[:, :1])
    out = F.grid_sample(torch.cat([moving, ones], 1), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out[:, :-1], (out[:, -1:] > 0.999).to(moving.dtype)


def affine_displacement(params: torch.Tensor, patch: int) -> torch.Tensor:
    """``(N, 6)`` affine parameters → ``(N, 2, P, P)`` displacement (pixels): ``v(x) = D (x − c) + t`` with
    ``D = params[:, :4] / 10`` (row-major 2 × 2) and ``t = params[:, 4:] · P / 4`` (``c`` = patch centre)."""
    n = params.shape[0]
    d = params[:, :4].reshape(n, 2, 2) / 10.0
    t = params[:, 4:] * (patch / 4.0)
    r = torch.arange(patch, dtype=params.dtype, device=params.device) - (patch - 1) / 2.0
    gy, gx = torch.meshgrid(r, r, indexing="ij")
    pts = torch.stack([gx, gy], 0).reshape(2, -1)
    return (torch.einsum("nij,jk->nik", d, pts) + t[:, :, None]).reshape(n, 2, patch, patch)


# ------------------------------------------------------------------------------------------- networks
class ConvBlock(nn.Sequential):
    """Two (3 × 3 convolution, group normalisation, PReLU) sets (paper Fig. 2)."""

    def __init__(self, cin: int, cout: int):
        groups = 4 if cout % 4 == 0 else 1
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.PReLU(cout),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.PReLU(cout))


class Encoder(nn.Module):
    """Three scales (1, 1/2, 1/4) of convolution blocks joined by max pooling."""

    def __init__(self, cin: int, widths: tuple):
        super().__init__()
        self.blocks = nn.ModuleList()
        for k, w in enumerate(widths):
            self.blocks.append(ConvBlock(cin if k == 0 else widths[k - 1], w))

    def forward(self, x):
        out = []
        for k, block in enumerate(self.blocks):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            out.append(x)
        return out


def correlation(f: torch.Tensor, m: torch.Tensor, radius: int) -> torch.Tensor:
    """Local cost volume ``(N, (2r+1)², H, W)``: channel ``(dy + r)(2r+1) + (dx + r)`` is the mean over feature
    channels of ``f(x) · m(x + (dx, dy))`` (zero outside)."""
    h, w = f.shape[-2:]
    padded = F.pad(m, (radius, radius, radius, radius))
    out = []
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out.append((f * padded[..., dy:dy + h, dx:dx + w]).mean(1, keepdim=True))
    return torch.cat(out, 1)


class MultiMagNet(nn.Module):
    """Target-magnification U-Net plus (``context=True``) a lower-magnification context branch.

    Each branch encodes the fixed and the moving patch with shared weights (Siamese) and compares them in a
    local cost volume (:func:`correlation`, radius :data:`CORRELATION_RADIUS` at the coarsest scale, i.e. ±12
    target pixels and ±24 for the context): an adaptation of the paper's early fusion (concatenated patches)
    for CPU training budgets, where early fusion did not learn in a few hundred steps (see the model card).
    The context branch's maps (features of both images and its cost volume) are centre-cropped at the
    cropping rate and upsampled by a transposed convolution to join the U-Net at every scale (paper Fig. 2).

    Args:
        head: ``"affine"`` (6 parameters per patch) or ``"nonrigid"`` (2-channel displacement).
        cfg: :class:`NetworkConfig`.

    ``forward(target, context)`` takes ``(N, 2C, P, P)`` patch pairs (fixed channels first) and returns the
    displacement ``(N, 2, P, P)`` in pixels (and, for the affine head, the parameters via :attr:`last_params`).
    """

    def __init__(self, head: str, cfg: NetworkConfig):
        super().__init__()
        if head not in ("affine", "nonrigid"):
            raise InputError(f"head: expected 'affine' or 'nonrigid', got {head!r}")
        self.head_kind, self.cfg = head, cfg
        w = cfg.width
        widths = (w, 2 * w, 2 * w)
        ncorr = (2 * CORRELATION_RADIUS + 1) ** 2
        own = (2 * widths[0], 2 * widths[1], widths[2] + ncorr)  # per scale: fixed + moving (+ cost volume)
        self.target = Encoder(cfg.channels, widths)
        self.use_context = bool(cfg.context)
        if self.use_context:
            self.context = Encoder(cfg.channels, widths)
            factor = int(round(1.0 / cfg.rate))
            self.context_up = nn.ModuleList(nn.ConvTranspose2d(c, c, factor, stride=factor) for c in own)
        extra = own if self.use_context else (0, 0, 0)
        self.up2 = nn.ConvTranspose2d(own[2] + extra[2], widths[1], 2, stride=2)
        self.dec1 = ConvBlock(widths[1] + own[1] + extra[1], widths[1])
        self.up1 = nn.ConvTranspose2d(widths[1], widths[0], 2, stride=2)
        self.dec0 = ConvBlock(widths[0] + own[0] + extra[0], widths[0])
        if head == "affine":
            self.out = nn.Linear(widths[0] + own[2] + extra[2], 6)
        else:
            self.out = nn.Conv2d(widths[0], 2, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.last_params: Optional[torch.Tensor] = None

    def _branch(self, encoder: Encoder, pair: torch.Tensor) -> list:
        c = self.cfg.channels
        n = pair.shape[0]
        feats = encoder(torch.cat([pair[:, :c], pair[:, c:]], 0))  # shared weights: fixed and moving in one batch
        f0, f1, f2 = (x[:n] for x in feats)
        m0, m1, m2 = (x[n:] for x in feats)
        return [torch.cat([f0, m0], 1), torch.cat([f1, m1], 1), torch.cat([f2, correlation(f2, m2, CORRELATION_RADIUS)], 1)]

    def _context_maps(self, context: torch.Tensor) -> list:
        maps = []
        for feat, up in zip(self._branch(self.context, context), self.context_up):
            s = feat.shape[-1]
            keep = int(round(s * self.cfg.rate))
            lo = (s - keep) // 2
            maps.append(up(feat[..., lo:lo + keep, lo:lo + keep]))
        return maps

    def forward(self, target: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        t0, t1, t2 = self._branch(self.target, target)
        if self.use_context:
            if context is None:
                raise InputError("multi-magnification network: context patches are required")
            c0, c1, c2 = self._context_maps(context)
            t0, t1, t2 = torch.cat([t0, c0], 1), torch.cat([t1, c1], 1), torch.cat([t2, c2], 1)
        x = self.dec1(torch.cat([self.up2(t2), t1], 1))
        x = self.dec0(torch.cat([self.up1(x), t0], 1))
        if self.head_kind == "affine":
            pooled = torch.cat([x.mean(dim=(2, 3)), t2.mean(dim=(2, 3))], 1)
            self.last_params = self.out(pooled)
            return affine_displacement(self.last_params, target.shape[-1])
        return self.out(x)


# ------------------------------------------------------------------------------------------------ loss
def patch_ncc(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted NCC per patch ``(N,)`` of ``(N, C, P, P)`` tensors."""
    w = weight / weight.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    mf = (fixed * w).sum(dim=(1, 2, 3), keepdim=True)
    mw = (warped * w).sum(dim=(1, 2, 3), keepdim=True)
    a, b = fixed - mf, warped - mw
    cov = (w * a * b).sum(dim=(1, 2, 3))
    var = (w * a * a).sum(dim=(1, 2, 3)) * (w * b * b).sum(dim=(1, 2, 3))
    return cov / torch.sqrt(var + 1e-8)


def curvature_energy(v: torch.Tensor) -> torch.Tensor:
    """Mean squared Laplacian of a displacement ``(N, 2, H, W)`` (interior pixels): the curvature regulariser."""
    lap = (v[:, :, 1:-1, 2:] + v[:, :, 1:-1, :-2] + v[:, :, 2:, 1:-1] + v[:, :, :-2, 1:-1] - 4 * v[:, :, 1:-1, 1:-1])
    return lap.pow(2).sum(1).mean()


def registration_loss(net: MultiMagNet, fixed_t, moving_t, fixed_c, moving_c, moving_base, weight, lam: float,
                      sigma: float = 0.0):
    """Unsupervised loss of one batch: ``mean(1 − NCC) + λ · curvature`` (λ used for the non-rigid head only).

    ``sigma`` > 0 blurs the fixed target and the moving base (Gaussian, pixels) for the similarity only (the
    networks still see the sharp patches): the NCC of sharp edge maps is flat beyond a pixel or two of
    misalignment, the blurred one still has a slope there.

    Args:
        fixed_t, moving_t: target patches ``(N, C, P, P)``; fixed_c, moving_c: context patches.
        moving_base: moving at full resolution around the target, ``(N, C, 2P, 2P)`` (the target is its
            centre), so displacements up to ``P / 2`` still sample real moving content.
        weight: ``(N, 1, P, P)`` where the similarity counts (tissue or structure present).

    Returns:
        ``(loss, v)``.
    """
    v = net(torch.cat([fixed_t, moving_t], 1), torch.cat([fixed_c, moving_c], 1) if net.use_context else None)
    p = fixed_t.shape[-1]
    shift = (moving_base.shape[-1] - p) / 2.0
    if sigma > 0:
        fixed_t, moving_base = _blur_batch(fixed_t, sigma), _blur_batch(moving_base, sigma)
    warped, inside = warp_patches_base(moving_base, v, shift)
    loss = (1.0 - patch_ncc(fixed_t, warped, weight * inside)).mean()
    if net.head_kind == "nonrigid" and lam > 0:
        loss = loss + lam * curvature_energy(v)
    return loss, v


def _blur_batch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from .preprocess import gaussian_blur

    n, c, h, w = x.shape
    return gaussian_blur(x.reshape(n * c, h, w), sigma).reshape(n, c, h, w)


def warp_patches_base(base: torch.Tensor, v: torch.Tensor, shift: float) -> tuple:
    """Like :func:`warp_patches` for a target patch lying at offset ``shift`` inside a larger ``base`` patch."""
    n, _, b, _ = base.shape
    p = v.shape[-1]
    r = torch.arange(p, dtype=v.dtype, device=v.device) + shift
    gy, gx = torch.meshgrid(r, r, indexing="ij")
    grid = torch.stack([2.0 * (gx + v[:, 0]) / (b - 1) - 1.0, 2.0 * (gy + v[:, 1]) / (b - 1) - 1.0], -1)
    ones = torch.ones_like(base[:, :1])
    out = F.grid_sample(torch.cat([base, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, :-1], (out[:, -1:] > 0.999).to(base.dtype)


# ------------------------------------------------------------------------------------ whole-slide fields
def window(patch: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(P, P)`` squared-sine blending window; half-overlapping tilings of it sum to 1."""
    s = torch.sin(math.pi * (torch.arange(patch, dtype=dtype, device=device) + 0.5) / patch) ** 2
    return s[:, None] * s[None, :]


def tile_centres(shape_hw, patch: int) -> torch.Tensor:
    """Patch centres ``(N, 2)`` (pixel x, y) of a half-overlapping tiling covering ``shape_hw`` (with margins of
    half a patch beyond every edge, so every pixel has full window weight)."""
    h, w = shape_hw
    stride = patch // 2
    first = (patch - 1) / 2.0 - stride  # the first window's zero edge lies outside the image

    def axis(n):
        count = int(math.ceil((n + stride) / stride))
        return torch.arange(count, dtype=torch.float32) * stride + first

    ys, xs = axis(h), axis(w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)


def aggregate(displacements: torch.Tensor, centres: torch.Tensor, shape_hw) -> tuple:
    """Blend patch displacements ``(N, 2, P, P)`` at ``centres`` (integer-plus-half tiling of
    :func:`tile_centres`) into one field ``(2, H, W)``; returns ``(field, weight)`` with ``weight`` the summed
    window ``(H, W)`` (1 where the tiling is complete, less where patches were skipped)."""
    h, w = shape_hw
    p = displacements.shape[-1]
    win = window(p, displacements.dtype, displacements.device)
    pad = p
    acc = displacements.new_zeros(2, h + 2 * pad, w + 2 * pad)
    wsum = displacements.new_zeros(h + 2 * pad, w + 2 * pad)
    for k in range(centres.shape[0]):
        x0 = int(round(float(centres[k, 0]) - (p - 1) / 2.0)) + pad
        y0 = int(round(float(centres[k, 1]) - (p - 1) / 2.0)) + pad
        if x0 < 0 or y0 < 0 or x0 + p > acc.shape[-1] or y0 + p > acc.shape[-2]:
            continue
        acc[:, y0:y0 + p, x0:x0 + p] += displacements[k] * win
        wsum[y0:y0 + p, x0:x0 + p] += win
    acc, wsum = acc[:, pad:pad + h, pad:pad + w], wsum[pad:pad + h, pad:pad + w]
    return acc / wsum.clamp(min=1e-3), wsum


def compose(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v(x) + u(x + v(x))`` for fields ``(2, H, W)`` in pixels: first ``v``, then ``u`` (border replicated)."""
    h, w = u.shape[-2:]
    gy, gx = torch.meshgrid(torch.arange(h, dtype=u.dtype), torch.arange(w, dtype=u.dtype), indexing="ij")
    xs, ys = gx + v[0], gy + v[1]
    grid = torch.stack([2.0 * xs / max(w - 1, 1) - 1.0, 2.0 * ys / max(h - 1, 1) - 1.0], -1)[None]
    u_at = F.grid_sample(u[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    return v + u_at


def predict_field(net: MultiMagNet, fixed: torch.Tensor, moving: torch.Tensor, *, batch: int = 32,
                  min_structure: float = 0.02) -> torch.Tensor:
    """Whole-slide displacement ``(2, H, W)`` (pixels) from the network applied on a half-overlapping tiling.

    Args:
        fixed, moving: ``(1, C, H, W)`` on the same grid (moving already warped by the current estimate).
        min_structure: patches whose fixed and moving targets both have a mean below this are skipped
            (glass); their area keeps a displacement tapered towards 0 by the missing window weight.
    """
    p, rate = net.cfg.patch, net.cfg.rate
    shape = fixed.shape[-2:]
    centres = tile_centres(shape, p)
    out, kept = [], []
    for start in range(0, centres.shape[0], batch):
        c = centres[start:start + batch]
        ft, fc = patch_sets(fixed, c, p, rate)
        mt, mc = patch_sets(moving, c, p, rate)
        busy = (ft.mean(dim=(1, 2, 3)) > min_structure) & (mt.mean(dim=(1, 2, 3)) > min_structure)
        if not bool(busy.any()):
            continue
        v = net(torch.cat([ft[busy], mt[busy]], 1), torch.cat([fc[busy], mc[busy]], 1) if net.use_context else None)
        out.append(v)
        kept.append(c[busy])
    if not out:
        return fixed.new_zeros(2, *shape)
    field, wsum = aggregate(torch.cat(out), torch.cat(kept), shape)
    return field * wsum.clamp(max=1.0)  # taper where the tiling was incomplete (skipped glass patches)


def build_networks(cfg: NetworkConfig) -> tuple:
    """``(affine, nonrigid)`` networks for ``cfg``."""
    cfg.validate()
    return MultiMagNet("affine", cfg), MultiMagNet("nonrigid", cfg)


def load_histology_model(name_or_path) -> tuple:
    """Read a model file (name or path) → ``(affine, nonrigid, NetworkConfig, ModelFile)`` in eval mode.

    Raises:
        InputError: missing file, another kind of model, unknown architecture keys, or weights whose names
            or shapes do not match the architecture (e.g. a model of another dimension or width).
    """
    from ...models.model_file import load_model, load_state_strict
    from ...models.registry import resolve_model

    path = resolve_model(name_or_path)
    model = load_model(path, kind=MODEL_KIND)
    if model.network_name != NETWORK_NAME:
        raise InputError(f"{path}: network {model.network_name!r} is not {NETWORK_NAME!r}")
    cfg = NetworkConfig.from_dict(dict(model.network_config))
    affine, nonrigid = build_networks(cfg)
    for prefix, net in (("affine.", affine), ("nonrigid.", nonrigid)):
        state = {k[len(prefix):]: v for k, v in model.state_dict.items() if k.startswith(prefix)}
        load_state_strict(net, state, path)
        net.eval()
    return affine, nonrigid, cfg, model
