"""The patch position network of TSPM (paper §2.1, Fig. 3): 5 convolutions + 2 fully connected layers.

Input one ``(1, P, P, P)`` patch (P = 16); output the patch centre's canvas voxel index divided by
``canvas_size − 1`` (ITK order x, y, z; the paper's "[0, 1] represents [0, 128]").

Layout (3³ convolutions, stride 1, padding 1; downsampling by max-pooling only):
``1→64 (BN) → pool → 64→128 → 128→128 (BN) → pool → 128→256 → 256→256 (BN) → pool →
FC 2048→256 → Dropout(0.5) → FC 256→3``, LeakyReLU after every layer but the last: 3,846,531 parameters (paper Table 2).
These are :class:`PatchNetConfig`'s defaults; the widths and the dropout are settings, and the shipped model uses a
narrower network (channels 16-32-32-64-64, 128 hidden units, dropout 0.1: about 0.27 M parameters), which a CPU
trains for many more steps in the same time (its model card says why and how), with ``mirror_average`` on: the
prediction of a patch is averaged with the mirrored prediction of its left-right mirror image (the shipped
template is symmetric), which removes a left-right drift the L1 loss leaves in near-symmetric anatomy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn as nn

from ...errors import InputError

NETWORK_NAME = "tspm_patch_position_net"


@dataclass(frozen=True)
class PatchNetConfig:
    """Architecture of :class:`PatchPositionNet` (defaults = the paper's network).

    Attributes:
        patch_size: input edge in voxels (divisible by 8: three 2× poolings).
        channels: output channels of the five convolutions.
        batch_norm: which of the five convolutions are followed by batch normalisation.
        hidden: width of the first fully connected layer.
        dropout: dropout probability before the last layer.
        negative_slope: LeakyReLU slope.
        mirror_average: in eval mode, average the prediction of each patch with the mirrored prediction of its
            left-right mirror image (patch flipped along x, predicted x → 1 − x). Valid only for a template
            that is left-right symmetric about the canvas mid-plane (:func:`.template.is_mirror_symmetric`).
            Why: in near-symmetric anatomy many patches are left-right ambiguous; the L1 loss is flat
            between the two mirror positions, and a network trained with it was found to drift there by
            about −6 mm in x on every volume, training volumes included. The average is exactly mirror
            equivariant, which cancels that drift (see ``diagnose_tspm_model.py``).
    """

    patch_size: int = 16
    channels: Tuple[int, ...] = (64, 128, 128, 256, 256)
    batch_norm: Tuple[bool, ...] = (True, False, True, False, True)
    hidden: int = 256
    dropout: float = 0.5
    negative_slope: float = 0.01
    mirror_average: bool = False

    def __post_init__(self):
        if self.patch_size % 8 or self.patch_size < 8:
            raise InputError(f"patch_size: expected a multiple of 8, got {self.patch_size}")
        if len(self.channels) != 5 or len(self.batch_norm) != 5:
            raise InputError(f"channels/batch_norm: expected 5 entries each, got {self.channels}, {self.batch_norm}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.mirror_average:  # files and checkpoints written before the setting read back unchanged
            d.pop("mirror_average")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def architecture(self) -> "PatchNetConfig":
        """The same layers without inference-only settings (what weights must match)."""
        from dataclasses import replace

        return replace(self, mirror_average=False)

    @classmethod
    def from_dict(cls, d: dict) -> "PatchNetConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"network config: unknown keys {sorted(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


class PatchPositionNet(nn.Module):
    """Maps patches ``(N, 1, P, P, P)`` to normalised template positions ``(N, 3)``."""

    def __init__(self, config: PatchNetConfig = PatchNetConfig()):
        super().__init__()
        self.config = config
        c, bn, slope = config.channels, config.batch_norm, config.negative_slope
        ins = (1,) + tuple(c[:-1])
        layers = []
        for i, (cin, cout) in enumerate(zip(ins, c)):
            layers.append(nn.Conv3d(cin, cout, 3, stride=1, padding=1))
            if bn[i]:
                layers.append(nn.BatchNorm3d(cout))
            layers.append(nn.LeakyReLU(slope))
            if i in (0, 2, 4):  # pool after conv 1, 3 and 5
                layers.append(nn.MaxPool3d(2))
        self.features = nn.Sequential(*layers)
        flat = c[-1] * (config.patch_size // 8) ** 3
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, config.hidden), nn.LeakyReLU(slope),
            nn.Dropout(config.dropout), nn.Linear(config.hidden, 3),
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        if patches.dim() != 5 or tuple(patches.shape[1:]) != (1, p, p, p):
            raise InputError(f"patches: expected shape (N, 1, {p}, {p}, {p}), got {tuple(patches.shape)}")
        out = self.head(self.features(patches))
        if self.config.mirror_average and not self.training:
            mirrored = self.head(self.features(torch.flip(patches, dims=(4,))))  # array axis 4 = canvas x
            out = 0.5 * (out + torch.cat([1.0 - mirrored[:, :1], mirrored[:, 1:]], dim=1))
        return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def l1_position_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 loss of the paper: absolute error summed over x, y, z, averaged over the batch."""
    return (prediction - target).abs().sum(dim=1).mean()


@torch.no_grad()
def predict_positions(net: PatchPositionNet, patches: np.ndarray, *, device, batch_size: int = 128) -> np.ndarray:
    """Normalised positions ``(n, 3)`` for patches ``(n, P, P, P)`` (eval mode: no dropout, BN running stats)."""
    net.eval()
    out = []
    for start in range(0, len(patches), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(patches[start:start + batch_size]))[:, None].to(device)
        out.append(net(x.float()).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3))


DEFAULT_MODEL = "tspm_t1_mr_icbm152"
MODEL_KIND = "tspm_patch_position"


@dataclass
class TSPMModel:
    """A ready-to-use TSPM model: the network (eval mode), its template and intensity settings."""

    net: PatchPositionNet
    template: "object"  # Template
    intensity: "object"  # IntensityConfig
    name: str
    card: dict


def load_tspm_model(model=None, *, template_path=None, user_dir=None) -> TSPMModel:
    """Build the network of a TSPM model file (strict) with its embedded template.

    Args:
        model: ``None`` (the shipped default), a model name or ``.pt`` path (see
            :func:`RegistrationSuiteLib.models.registry.resolve_model`), a loaded ``ModelFile`` or a
            :class:`TSPMModel` (returned as is).
        template_path: optional template canvas the caller expects; it must be the model's template.

    Raises:
        InputError: unknown/corrupt/foreign model file, weights not matching the network, or a template that
            is not the one the model was trained with.
    """
    from ...models.model_file import ModelFile, load_model, load_state_strict
    from ...models.registry import resolve_model
    from .patches import IntensityConfig
    from .template import nifti_bytes_to_image, template_from_image

    if isinstance(model, TSPMModel):
        _check_template(model.template, template_path)
        return model
    if not isinstance(model, ModelFile):
        model = load_model(resolve_model(model or DEFAULT_MODEL, user_dir=user_dir), kind=MODEL_KIND)
    elif model.kind != MODEL_KIND:
        raise InputError(f"model: expected a '{MODEL_KIND}' model, got '{model.kind}'")
    if model.template is None:
        raise InputError(f"model: {model.path or model.name} carries no template; TSPM models must embed theirs")
    image = nifti_bytes_to_image(model.template["nifti_gz"], "model template")
    template = template_from_image(image, model.template["name"])
    if template.sha256 != model.template["sha256"]:
        raise InputError(f"model: {model.path or model.name}: embedded template does not match its fingerprint "
                         "(corrupt model file)")
    _check_template(template, template_path)
    net = PatchPositionNet(PatchNetConfig.from_dict(model.network_config))
    load_state_strict(net, model.state_dict, model.path)
    net.eval()
    return TSPMModel(net, template, IntensityConfig.from_dict(model.intensity), model.name, model.card)


def _check_template(template, template_path) -> None:
    from .template import load_template

    if template_path is None:
        return
    wanted = load_template(template_path)
    if wanted.sha256 != template.sha256:
        raise InputError(
            f"template: model/template mismatch: the model was trained in template '{template.name}' "
            f"(sha256 {template.sha256[:12]}…), got {template_path} (sha256 {wanted.sha256[:12]}…)"
        )
