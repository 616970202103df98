"""Training the TSPM patch position network (paper §3 "Implementation", with the augmentations it proposes).

Training data: volumes aligned with the template (a PAIRS.csv, see :func:`read_pairs_csv`), resampled onto
the template canvas. Each batch simulates partial acquisitions: ``batch_size / patches_per_crop`` random crops
(largest extent uniform in ``crop_extent_mm``), each with one random rotation (±``rotation_deg`` per axis:
a tilted head), intensity normalisation computed on the crop alone (as at inference) and random gamma /
contrast / noise; optionally the volume is brain-masked with the template's (randomly dilated) foreground
mask, so that skull-stripped and whole-head images are both seen. Patches follow the foreground rule of
:mod:`.patches`. Target = patch centre (canvas index) / (N − 1); L1 loss (sum over x, y, z, batch mean).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from ...models.training import TrainingConfig, intensity_jitter, random_rotations
from .network import MODEL_KIND
from .patches import PATCH_SIZE, IntensityConfig, box_sums, normalize, rotated_patch_grid
from .template import Template, is_mirror_symmetric



@dataclass
class TrainingCase:
    """One row of PAIRS.csv: an image, its template→image transform (``None``: already aligned), and notes."""

    image: Path
    template_to_image: Optional[np.ndarray]
    split: str = "train"
    licence: str = ""
    name: str = ""


@dataclass
class TSPMTrainConfig:
    """Augmentation and sampling settings of TSPM training (optimisation settings in ``optim``).

    ``synthetic_fraction``: fraction of the simulated crops drawn from *synthetic contrasts* (:mod:`.synth`:
    a random intensity per tissue class of tissue probability maps, bias field, blur, thick slices, noise)
    instead of a real training volume; ``synthetic_pool`` synthetic volumes are kept and one of them is
    redrawn every ``synthetic_refresh`` steps. Needs tissue maps (:func:`read_tissue_csv`).

    ``mirror_prob``: fraction of the crops mirrored left-right (patches flipped along canvas x, target
    x → N − 1 − x): mirrored heads at mirrored template positions, valid for a left-right symmetric template
    (:func:`.template.is_mirror_symmetric`), the companion of :attr:`.network.PatchNetConfig.mirror_average`."""

    optim: TrainingConfig = field(default_factory=TrainingConfig)
    patches_per_crop: int = 16
    rotation_deg: float = 15.0
    crop_extent_mm: Tuple[float, float] = (45.0, 200.0)
    skull_strip_prob: float = 0.5
    min_foreground_fraction: float = 0.6
    gamma: Tuple[float, float] = (0.7, 1.4)
    contrast: Tuple[float, float] = (0.85, 1.15)
    noise_std: float = 0.02
    synthetic_fraction: float = 0.0
    synthetic_pool: int = 2
    synthetic_refresh: int = 25
    mirror_prob: float = 0.0

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = TrainingConfig(**self.optim)
        if self.optim.batch_size % self.patches_per_crop:
            raise InputError(f"patches_per_crop: expected a divisor of batch_size ({self.optim.batch_size}), "
                             f"got {self.patches_per_crop}")
        if not 0 <= self.rotation_deg <= 180:
            raise InputError(f"rotation_deg: expected 0..180, got {self.rotation_deg}")
        if not 0 <= self.synthetic_fraction <= 1:
            raise InputError(f"synthetic_fraction: expected a fraction in [0, 1], got {self.synthetic_fraction}")
        if not 0 <= self.mirror_prob <= 1:
            raise InputError(f"mirror_prob: expected a probability in [0, 1], got {self.mirror_prob}")
        if int(self.synthetic_pool) < 1 or int(self.synthetic_refresh) < 1:
            raise InputError(f"synthetic_pool and synthetic_refresh: expected integers >= 1, got "
                             f"{self.synthetic_pool}, {self.synthetic_refresh}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["optim"] = self.optim.to_dict()  # its schedule keys only when not the constant default
        if not self.mirror_prob:  # older checkpoints (no mirror key) stay resumable
            d.pop("mirror_prob")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def read_image_table(path, what: str, required=("image",)):
    """Rows of a training CSV (PAIRS.csv, TISSUE.csv, LABELS.csv): ``[(line, row, image path, template→image
    matrix or None)]``, the image and the optional ``template_to_image`` transform resolved relative to the CSV.
    ``what`` names the table in errors; ``required``: the columns the header must have.

    Raises:
        InputError: missing file, missing columns or no row, an image not found.
    """
    from ...geometry import affine_matrix_from_sitk
    from ...io import read_transform

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: file not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(c not in rows[0] for c in required):
        names = " and ".join(f"'{c}'" for c in required)
        columns = f"{names} columns" if len(required) > 1 else f"an {names} column"
        raise InputError(f"{what}: {path} needs a header with {columns} and at least one row")
    out = []
    for i, row in enumerate(rows, start=2):
        image = (path.parent / row["image"]).resolve()
        if not image.is_file():
            raise InputError(f"{what}: line {i}: image not found: {image}")
        tx = (row.get("template_to_image") or "").strip()
        out.append((i, row, image, affine_matrix_from_sitk(read_transform(path.parent / tx)) if tx else None))
    return out


def read_pairs_csv(path) -> List[TrainingCase]:
    """Read PAIRS.csv: columns ``image`` (required; relative paths are relative to the CSV) and optionally
    ``template_to_image`` (an ITK transform file mapping template points to image points, LPS — what
    ``register_global_rigid(template, image)`` returns; empty: the image is already aligned with the
    template), ``split`` (``train``/``val``), ``licence``, ``name``."""
    cases = []
    for i, row, image, matrix in read_image_table(path, "pairs"):
        split = (row.get("split") or "train").strip() or "train"
        if split not in ("train", "val"):
            raise InputError(f"pairs: line {i}: split must be 'train' or 'val', got {split!r}")
        name = row.get("name") or image.name.split(".")[0]
        cases.append(TrainingCase(image, matrix, split, row.get("licence", ""), name))
    return cases


@dataclass
class TissueMap:
    """One row of TISSUE.csv: a tissue probability map (values scaled to [0, 1] by their maximum when above
    1, e.g. 8-bit maps) and its template→image transform (``None``: aligned with the template)."""

    name: str
    image: Path
    template_to_image: Optional[np.ndarray]
    licence: str = ""


def read_tissue_csv(path) -> List[TissueMap]:
    """Read TISSUE.csv: columns ``class`` and ``image`` (required), ``template_to_image`` and ``licence``
    (optional), as in PAIRS.csv (relative paths are relative to the CSV)."""
    return [TissueMap(row["class"], image, matrix, row.get("licence", ""))
            for _, row, image, matrix in read_image_table(path, "tissue", required=("class", "image"))]


def tissue_on_canvas(maps: List[TissueMap], template: Template, head: np.ndarray,
                     head_intensity: np.ndarray) -> np.ndarray:
    """Class probabilities ``(K, N, N, N)`` on the canvas for :func:`.synth.synthetic_contrast`: background,
    each map, and the rest of the head (``head`` (N, N, N) in [0, 1]: where the anatomy's scan has signal)
    split into a dark and a bright class by ``head_intensity`` (the anatomy's scan normalised to [0, 1]:
    CSF and bone vs. scalp and fat), so synthetic heads have a skull and scalp of their own intensities."""
    from ...geometry import sitk_affine_from_matrix
    from .synth import tissue_stack

    probs = []
    for m in maps:
        image = sitk.Cast(sitk.ReadImage(str(m.image)), sitk.sitkFloat32)
        tx = sitk.Transform() if m.template_to_image is None else sitk_affine_from_matrix(m.template_to_image)
        values = sitk.GetArrayFromImage(sitk.Resample(image, template.image, tx, sitk.sitkLinear, 0.0))
        top = float(values.max())
        probs.append(values / top if top > 1.0 else values)
    brain = np.clip(np.sum(probs, axis=0), 0.0, 1.0)
    rest = np.clip(np.asarray(head, np.float32) - brain, 0.0, 1.0)
    bright = rest * (np.asarray(head_intensity, np.float32) > 0.5)
    return tissue_stack(*probs, rest - bright, bright)


def read_labels_csv(path) -> List[TissueMap]:
    """Read LABELS.csv: label atlases for synthetic contrasts (:func:`.synth.synthetic_from_labels`), columns
    ``image`` (required; integer labels, 0 = outside the atlas), ``template_to_image``, ``licence`` and
    ``anatomy`` (the PAIRS.csv training row whose scan the atlas is drawn on, e.g. ``mni152_1mm`` for the
    MNI152 label atlas on the MNI152 1 mm grid) as in TISSUE.csv."""
    return [TissueMap(image.name.split(".")[0], image, matrix, row.get("licence", ""))
            for _, row, image, matrix in read_image_table(path, "labels")]


@dataclass
class LabelAtlas:
    """A label map on the canvas for :func:`.synth.synthetic_from_labels`: ``labels`` (N, N, N) int32 in
    ``0 .. len(groups) - 1``, ``groups`` the tissue class (:data:`.synth.GROUPS`) of each label, and the
    anatomy volume it is drawn on (its domain and patch candidates are the synthetic volumes')."""

    labels: np.ndarray
    groups: np.ndarray
    anatomy: "CanvasVolume"
    files: list


def labels_on_canvas(atlas: TissueMap, template: Template, scan: np.ndarray, head: np.ndarray,
                     brain: Optional[np.ndarray] = None):
    """``(labels, groups)`` on the canvas from an atlas of brain regions and the anatomy's scan.

    Each atlas region (label > 0, resampled nearest-neighbour) is split into CSF, grey and white matter by a
    three-class k-means of ``scan`` (the anatomy's T1-weighted scan on the canvas, normalised to [0, 1])
    inside the atlas, so that a region's tissues get intensities of their own; outside the atlas the head
    (``head`` > 0.5, where the scan has signal) is split into dark (bone, CSF, air cavities) and bright
    (scalp, fat) voxels at ``scan`` = 0.5, and the rest is background (label 0). ``brain``: an optional brain
    mask (e.g. the template's); its voxels outside the atlas form one more region (an atlas drawn on another
    subject's anatomy need not cover it exactly)."""
    from ...geometry import sitk_affine_from_matrix
    from .synth import BACKGROUND, CSF, GM, HEAD_BRIGHT, HEAD_DARK, WM

    image = sitk.ReadImage(str(atlas.image))
    tx = sitk.Transform() if atlas.template_to_image is None else sitk_affine_from_matrix(atlas.template_to_image)
    regions = np.rint(sitk.GetArrayFromImage(sitk.Resample(image, template.image, tx, sitk.sitkNearestNeighbor,
                                                           0.0))).astype(np.int64)
    scan = np.asarray(scan, np.float32)
    if brain is not None:
        regions = np.where((regions <= 0) & np.asarray(brain, bool), regions.max() + 1, regions)
    inside = regions > 0
    if not inside.any():
        raise InputError(f"labels: {atlas.image.name} has no labelled voxel on the template canvas")
    tissue = _three_means(scan[inside])  # 0 csf, 1 gm, 2 wm per inside voxel
    ids, region_index = np.unique(regions[inside], return_inverse=True)
    labels = np.zeros(scan.shape, np.int32)
    labels[inside] = 1 + 3 * region_index.ravel() + tissue
    n = 1 + 3 * len(ids)
    rest = ~inside & (np.asarray(head) > 0.5)
    labels[rest & (scan <= 0.5)] = n
    labels[rest & (scan > 0.5)] = n + 1
    groups = np.concatenate([[BACKGROUND], np.tile([CSF, GM, WM], len(ids)), [HEAD_DARK, HEAD_BRIGHT]])
    return labels, groups.astype(np.int64)


def _three_means(values: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Class 0/1/2 (dark/middle/bright) of each value by 1D k-means from the 10/50/90 % percentiles."""
    centres = np.percentile(values, [10, 50, 90]).astype(np.float64)
    for _ in range(iterations):
        cls = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        new = np.array([values[cls == k].mean() if np.any(cls == k) else centres[k] for k in range(3)])
        if np.allclose(new, centres):
            break
        centres = new
    order = np.argsort(centres)
    return np.argsort(order)[np.argmin(np.abs(values[:, None] - centres[None]), axis=1)]


@dataclass
class CanvasVolume:
    """A training volume on the template canvas: raw intensities, its domain, and patch candidates."""

    name: str
    values: np.ndarray  # (N, N, N) float32, array order
    valid: np.ndarray  # (N, N, N) bool
    candidates: np.ndarray  # (k, 3) patch corners (z, y, x) passing the foreground rule
    candidates_stripped: np.ndarray  # same, with the template brain mask applied


def volume_on_canvas(case: TrainingCase, template: Template, brain: np.ndarray, min_fg: float,
                     intensity: IntensityConfig) -> CanvasVolume:
    """Resample ``case`` onto the canvas (anti-aliased like inference) and list its patch candidates."""
    from ...geometry import sitk_affine_from_matrix

    image = sitk.Cast(sitk.ReadImage(str(case.image)), sitk.sitkFloat32)
    if image.GetDimension() != 3:
        raise InputError(f"pairs: {case.image}: expected a 3D image, got {image.GetDimension()}D")
    tx = sitk.Transform() if case.template_to_image is None else sitk_affine_from_matrix(case.template_to_image)
    if min(image.GetSpacing()) < template.spacing_mm:
        image = sitk.SmoothingRecursiveGaussian(image, 0.5 * template.spacing_mm)
    values = sitk.GetArrayFromImage(sitk.Resample(image, template.image, tx, sitk.sitkLinear, 0.0))
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    valid = sitk.GetArrayFromImage(sitk.Resample(ones, template.image, tx, sitk.sitkNearestNeighbor, 0)) > 0
    lo, hi = intensity.value_range(values[valid])
    fg = (normalize(values, lo, hi) > -0.5 + intensity.foreground_level) & valid
    return CanvasVolume(case.name, values.astype(np.float32), valid, _candidates(fg, valid, min_fg),
                        _candidates(fg & brain, valid, min_fg))


def _candidates(fg: np.ndarray, valid: np.ndarray, min_fg: float) -> np.ndarray:
    n = PATCH_SIZE**3
    ok = (box_sums(valid, PATCH_SIZE) == n) & (box_sums(fg, PATCH_SIZE) >= min_fg * n)
    return np.argwhere(ok).astype(np.int16)


class PatchSampler:
    """``(rng, step) -> (patches (B, 1, P, P, P), targets (B, 3))`` for :func:`models.training.train`."""

    def __init__(self, volumes: List[CanvasVolume], template: Template, intensity: IntensityConfig,
                 config: TSPMTrainConfig):
        import torch

        from scipy import ndimage

        if not volumes:
            raise InputError("pairs: no training volumes")
        self.volumes, self.template, self.intensity, self.config = volumes, template, intensity, config
        self.tensors = [torch.from_numpy(v.values)[None, None] for v in volumes]
        brain = sitk.GetArrayFromImage(template.foreground_mask()).astype(bool)
        # Masks dilated by 0..3 voxels (0 to ~4.5 mm): skull-stripping tools differ in how much they keep.
        self.masks = [torch.from_numpy(ndimage.binary_dilation(brain, iterations=k) if k else brain)
                      .float()[None, None] for k in range(4)]
        self.n = template.canvas_size
        self.sources, self.synthetic, self.synthetic_tensors = [], [], []

    def add_synthetic(self, tissue: Optional[np.ndarray], anatomy: Optional[CanvasVolume],
                      rng: np.random.Generator, labels: Optional[LabelAtlas] = None) -> None:
        """Draw crops with probability ``synthetic_fraction`` from synthetic contrasts of ``tissue`` (class
        probabilities on the canvas, :func:`tissue_on_canvas`), using the patch candidates and domain of
        ``anatomy`` (the volume the maps belong to), and/or of the label atlas ``labels``
        (:func:`labels_on_canvas`); with both, each new contrast comes from one of the two at random."""
        self.sources = []
        if tissue is not None:
            self.sources.append(("tissue", np.asarray(tissue, np.float32), anatomy))
        if labels is not None:
            self.sources.append(("labels", labels, labels.anatomy))
        if not self.sources:
            raise InputError("synthetic contrasts need tissue maps or a label atlas")
        self.synthetic, self.synthetic_tensors = [], []
        for _ in range(int(self.config.synthetic_pool)):
            self._add_one(rng)

    def _add_one(self, rng: np.random.Generator, slot: Optional[int] = None) -> None:
        import torch

        from .synth import synthetic_contrast, synthetic_from_labels

        # one source: no extra draw (the tissue-only stream of earlier models stays reproducible)
        kind, data, anatomy = self.sources[int(rng.integers(len(self.sources))) if len(self.sources) > 1 else 0]
        if kind == "tissue":
            image, _ = synthetic_contrast(data, rng)
        else:
            image, _ = synthetic_from_labels(data.labels, data.groups, rng)
        image = np.where(anatomy.valid, image, 0.0).astype(np.float32)
        vol = CanvasVolume(f"synthetic_{kind}_{len(self.synthetic)}", image, anatomy.valid, anatomy.candidates,
                           anatomy.candidates_stripped)
        if slot is None:
            self.synthetic.append(vol)
            self.synthetic_tensors.append(torch.from_numpy(image)[None, None])
        else:
            self.synthetic[slot], self.synthetic_tensors[slot] = vol, torch.from_numpy(image)[None, None]

    def __call__(self, rng: np.random.Generator, step: int):
        import torch

        per = self.config.patches_per_crop
        if self.synthetic and step > 0 and step % int(self.config.synthetic_refresh) == 0:
            self._add_one(rng, slot=int(rng.integers(len(self.synthetic))))
        crops = [self._crop(rng) for _ in range(self.config.optim.batch_size // per)]
        x = torch.cat([c[0] for c in crops])
        y = torch.cat([c[1] for c in crops])
        return x, y

    def _crop(self, rng: np.random.Generator):
        import torch
        import torch.nn.functional as F

        cfg, per = self.config, self.config.patches_per_crop
        if rng.random() < cfg.synthetic_fraction and self.synthetic:  # drawn always: same stream either way
            si = int(rng.integers(len(self.synthetic)))
            vol, tensor = self.synthetic[si], self.synthetic_tensors[si]
        else:
            vi = int(rng.integers(len(self.volumes)))
            vol, tensor = self.volumes[vi], self.tensors[vi]
        strip = rng.random() < cfg.skull_strip_prob
        cand = vol.candidates_stripped if strip and len(vol.candidates_stripped) else vol.candidates
        corners = self._crop_candidates(cand, rng)
        pick = corners[rng.choice(len(corners), size=per, replace=len(corners) < per)]
        centers = pick[:, ::-1].astype(np.float64) + (PATCH_SIZE - 1) / 2.0  # ITK order
        rot = random_rotations(1, cfg.rotation_deg, rng).repeat(per, axis=0)
        grid = rotated_patch_grid(torch.from_numpy(centers).float(), torch.from_numpy(rot).float(),
                                  vol.values.shape)
        vals = F.grid_sample(tensor.expand(per, -1, -1, -1, -1), grid, align_corners=True)
        mask = None
        if strip:
            m = self.masks[int(rng.integers(len(self.masks)))]
            mask = F.grid_sample(m.expand(per, -1, -1, -1, -1), grid, align_corners=True)
            vals = vals * mask
        lo, hi = self._crop_range(vol, strip, rng)
        x = normalize(vals.numpy(), lo, hi) + 0.5
        x = intensity_jitter(x, rng, gamma=cfg.gamma, scale=cfg.contrast, noise_std=cfg.noise_std) - 0.5
        y = centers / (self.n - 1)
        if cfg.mirror_prob and rng.random() < cfg.mirror_prob:
            x = np.ascontiguousarray(x[..., ::-1])  # array axis 4 = canvas x
            y = y.copy()
            y[:, 0] = 1.0 - y[:, 0]
        return torch.from_numpy(x), torch.from_numpy(y).float()

    def _crop_candidates(self, cand: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Candidates whose patch lies inside a random crop box around a random candidate."""
        cfg = self.config
        voxel = self.template.spacing_mm
        largest = rng.uniform(*cfg.crop_extent_mm)
        extent = np.maximum(largest * rng.uniform(0.5, 1.0, size=3), PATCH_SIZE * voxel + 2 * voxel)
        extent[int(rng.integers(3))] = largest
        size = np.ceil(extent / voxel).astype(int)
        seed = cand[int(rng.integers(len(cand)))].astype(int) + PATCH_SIZE // 2
        lo = seed - (rng.uniform(0.0, 1.0, size=3) * size).astype(int)
        inside = np.all((cand >= lo) & (cand + PATCH_SIZE <= lo + size), axis=1)
        self._last_box = (lo, lo + size)
        return cand[inside] if inside.any() else cand[[int(rng.integers(len(cand)))]]

    def _crop_range(self, vol: CanvasVolume, strip: bool, rng: np.random.Generator) -> Tuple[float, float]:
        """Normalisation range from the crop's voxels alone (what inference sees of a partial image)."""
        lo, hi = (np.clip(b, 0, self.n) for b in self._last_box)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        values = vol.values[sl]
        if strip:
            values = values * self.masks[0][0, 0].numpy()[sl]
        values = values[vol.valid[sl]]
        if values.size > 20000:
            values = values[rng.integers(0, values.size, 20000)]
        return self.intensity.value_range(values if values.size else np.array([0.0, 1.0]))


def predict_patch_positions(net, volume: CanvasVolume, template: Template, intensity: IntensityConfig, *,
                            num_patches: int = 256, seed: int = 0, device="cpu", flip_x: bool = False):
    """Network and true template positions (canvas x, y, z in mm) of random axis-aligned patches of a canvas
    volume (its own normalisation range); the same ``seed`` picks the same patches. ``flip_x``: the network is
    given each patch mirrored along canvas x instead (the truth stays the unflipped patch's position), to
    measure how far a network is from left-right equivariance."""
    from .network import predict_positions

    rng = np.random.default_rng(seed)
    cand = volume.candidates
    pick = cand[rng.choice(len(cand), size=min(num_patches, len(cand)), replace=False)].astype(int)
    lo, hi = intensity.value_range(volume.values[volume.valid])
    norm = normalize(volume.values, lo, hi)
    p = PATCH_SIZE
    patches = np.stack([norm[z:z + p, y:y + p, x:x + p] for z, y, x in pick])
    if flip_x:
        patches = np.ascontiguousarray(patches[..., ::-1])
    pred = predict_positions(net, patches, device=device) * (template.canvas_size - 1)
    truth = pick[:, ::-1] + (p - 1) / 2.0
    return pred * template.spacing_mm, truth * template.spacing_mm


def evaluate_patch_error(net, volume: CanvasVolume, template: Template, intensity: IntensityConfig, *,
                         num_patches: int = 256, seed: int = 0, device="cpu") -> dict:
    """Position error (mm) of axis-aligned patches of a canvas volume (:func:`predict_patch_positions`)."""
    pred, truth = predict_patch_positions(net, volume, template, intensity, num_patches=num_patches, seed=seed,
                                          device=device)
    err = np.linalg.norm(pred - truth, axis=1)
    return {"median_mm": float(np.median(err)), "mean_mm": float(err.mean()),
            "within_15mm": float(np.mean(err < 15.0)), "patches": int(len(err))}


def train_partial_prereg_model(
    pairs_csv,
    output,
    *,
    template: Optional[Template] = None,
    config: Optional[TSPMTrainConfig] = None,
    intensity: Optional[IntensityConfig] = None,
    checkpoint=None,
    name: Optional[str] = None,
    command: str = "",
    notes: Optional[str] = None,
    init_weights=None,
    tissue_csv=None,
    labels_csv=None,
    network=None,
    progress=None,
    cancel=None,
    log=None,
):
    """Train a TSPM patch position model and write it as a model file (weights + config + template +
    intensity + model card).

    Args:
        pairs_csv: PAIRS.csv (:func:`read_pairs_csv`); rows with ``split = val`` are only evaluated.
        output: the ``.pt`` file to write (a ``.md`` model card is written beside it).
        template: the template space (default: the shipped ICBM 2009a canvas).
        config: :class:`TSPMTrainConfig`; intensity: :class:`IntensityConfig` (default MR percentiles).
        checkpoint: resumable checkpoint path (default ``<output>.ckpt``).
        command: the command line, recorded in the model card.
        notes: free text recorded in the model card (data preparation, hardware, caveats).
        init_weights: optional TSPM model file to start from (a second training stage, e.g. with a lower
            learning rate); it must use the same template. Its card is nested in the new card.
        tissue_csv: TISSUE.csv (:func:`read_tissue_csv`) of tissue probability maps for synthetic contrasts
            (required when ``config.synthetic_fraction > 0``); its optional ``anatomy`` column names the
            PAIRS.csv row the maps belong to (default: the first training row), whose scan gives the head's
            extent and the dark/bright split of non-brain tissue.
        labels_csv: LABELS.csv (:func:`read_labels_csv`) of label atlases for synthetic contrasts
            (:func:`.synth.synthetic_from_labels`, random intensity per label); with ``tissue_csv`` too, each
            synthetic contrast comes from one of the two at random. One atlas per file is used (the first).
        network: :class:`~.network.PatchNetConfig` of the network to train (default: the paper's network,
            3.8 M parameters); a narrower one trains several times faster per step on a CPU.

    Returns:
        The written :class:`~RegistrationSuiteLib.models.model_file.ModelFile`.
    """
    import time

    from ...models.training import train
    from .network import PatchNetConfig, PatchPositionNet, l1_position_loss
    from .template import load_template

    config = config or TSPMTrainConfig()
    intensity = intensity or IntensityConfig()
    template = template or load_template()
    cases = read_pairs_csv(pairs_csv)
    brain = sitk.GetArrayFromImage(template.foreground_mask()).astype(bool)
    vols = [volume_on_canvas(c, template, brain, config.min_foreground_fraction, intensity) for c in cases]
    train_vols = [v for v, c in zip(vols, cases) if c.split == "train"]
    val_vols = [v for v, c in zip(vols, cases) if c.split == "val"]
    sampler = PatchSampler(train_vols, template, intensity, config)
    synthetic, atlas = None, None
    if config.synthetic_fraction > 0:
        if tissue_csv is None and labels_csv is None:
            raise InputError("tissue: synthetic_fraction > 0 needs tissue probability maps (TISSUE.csv) or a "
                             "label atlas (LABELS.csv)")
        if tissue_csv is not None:
            synthetic = _synthetic_setup(tissue_csv, train_vols, template, intensity)
        if labels_csv is not None:
            atlas = _labels_setup(labels_csv, train_vols, template, intensity)
        sampler.add_synthetic(synthetic["tissue"] if synthetic else None,
                              synthetic["anatomy"] if synthetic else None,
                              np.random.default_rng([config.optim.seed, 7919]), labels=atlas)
    network = network or PatchNetConfig()
    if (config.mirror_prob > 0 or network.mirror_average) and not is_mirror_symmetric(template):
        raise InputError(f"template: mirror augmentation/averaging needs a left-right symmetric template; "
                         f"'{template.name}' is not symmetric about its mid-plane")
    net = PatchPositionNet(network)
    init = _initialise(net, init_weights, template)
    run_config = {"tspm": config.to_dict(), "intensity": intensity.to_dict(), "template": template.sha256,
                  "pairs": [str(c.image.name) for c in cases]}
    if network != PatchNetConfig():  # only when not the paper's (older checkpoints stay resumable)
        run_config["network"] = network.to_dict()
    if init:
        run_config["init_weights"] = init["sha256"]
    if synthetic:
        run_config["tissue"] = synthetic["files"]
    if atlas:
        run_config["labels"] = atlas.files

    def validate(model) -> dict:
        out = {}
        for v in val_vols:
            metrics = evaluate_patch_error(model, v, template, intensity, num_patches=128,
                                           device=next(model.parameters()).device)
            out.update({f"val_{v.name}_{k}": val for k, val in metrics.items() if k != "patches"})
        return out

    t0, c0 = time.perf_counter(), time.process_time()
    ckpt = Path(checkpoint) if checkpoint else Path(str(output) + ".ckpt")
    outcome = train(net, sampler, l1_position_loss, config.optim, checkpoint_path=ckpt, run_config=run_config,
                    validate=validate if val_vols else None, progress=progress, cancel=cancel, log=log)
    net.eval()
    final_val = {v.name: evaluate_patch_error(net, v, template, intensity, num_patches=500,
                                              device=next(net.parameters()).device) for v in val_vols}
    card = _model_card(name or Path(output).stem, cases, config, intensity, template, outcome, final_val,
                       command, time.perf_counter() - t0)
    card["this_invocation_cpu_s"] = round(time.process_time() - c0, 1)  # training + final evaluation
    card["network"] = dict(network.to_dict(), parameters=sum(p.numel() for p in net.parameters()),
                           paper_network=network == PatchNetConfig())
    if synthetic or atlas:
        from .synth import FAMILY_NAMES, LabelSynthConfig

        card["synthetic_contrasts"] = {"fraction_of_crops": config.synthetic_fraction}
        if synthetic:
            card["synthetic_contrasts"].update(tissue_maps=synthetic["files"], anatomy=synthetic["anatomy"].name)
        if atlas:
            card["synthetic_contrasts"]["label_atlas"] = {
                "files": atlas.files, "anatomy": atlas.anatomy.name, "labels": int(len(atlas.groups)),
                "family_weights": dict(zip(FAMILY_NAMES, LabelSynthConfig().family_weights)),
                "label_std": LabelSynthConfig().label_std}
            if synthetic:
                card["synthetic_contrasts"]["sources"] = "each new contrast from the tissue maps or the atlas, 50/50"
    if notes:
        card["notes"] = notes
    if init:
        card["initialised_from"] = init
    return _write_model(net, template, intensity, card, output)


def _anatomy_scan(csv_path, what: str, train_vols: List[CanvasVolume], intensity: IntensityConfig,
                  first_row_only: bool = False):
    """The training volume that the maps of a TISSUE.csv / LABELS.csv are drawn on (its ``anatomy`` column: one
    name for all rows, or the first row's with ``first_row_only``; empty: the first training row), as
    ``(volume, scan, head)``: ``scan`` its values normalised with the model's intensity range (+ 0.5, not
    clipped), ``head`` in [0, 1] where the scan has signal (inside the volume's domain)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    wanted = {(row.get("anatomy") or "").strip() for row in (rows[:1] if first_row_only else rows)} - {""}
    if len(wanted) > 1:
        raise InputError(f"{what}: expected one anatomy for all maps, got {sorted(wanted)}")
    by_name = {v.name: v for v in train_vols}
    name = next(iter(wanted)) if wanted else train_vols[0].name
    if name not in by_name:
        raise InputError(f"{what}: anatomy {name!r} is not a training row of PAIRS.csv")
    anatomy = by_name[name]
    lo, hi = intensity.value_range(anatomy.values[anatomy.valid])
    scan = normalize(anatomy.values, lo, hi) + 0.5
    head = np.clip(scan / max(intensity.foreground_level, 1e-3), 0.0, 1.0) * anatomy.valid
    return anatomy, scan, head


def _synthetic_setup(tissue_csv, train_vols: List[CanvasVolume], template: Template,
                     intensity: IntensityConfig) -> dict:
    """Tissue classes on the canvas and the anatomy volume they belong to (see ``tissue_csv``)."""
    maps = read_tissue_csv(tissue_csv)
    anatomy, scan, head = _anatomy_scan(tissue_csv, "tissue", train_vols, intensity)
    tissue = tissue_on_canvas(maps, template, head, scan)
    return {"tissue": tissue, "anatomy": anatomy,
            "files": [{"class": m.name, "file": m.image.name, "licence": m.licence} for m in maps]}


def _labels_setup(labels_csv, train_vols: List[CanvasVolume], template: Template,
                  intensity: IntensityConfig) -> LabelAtlas:
    """The label atlas of ``labels_csv`` on the canvas (:func:`labels_on_canvas`) and its anatomy volume."""
    atlases = read_labels_csv(labels_csv)
    anatomy, scan, head = _anatomy_scan(labels_csv, "labels", train_vols, intensity, first_row_only=True)
    scan = np.clip(scan, 0.0, 1.0)
    brain = sitk.GetArrayFromImage(template.foreground_mask()).astype(bool)
    labels, groups = labels_on_canvas(atlases[0], template, scan, head, brain & anatomy.valid)
    files = [{"file": atlases[0].image.name, "licence": atlases[0].licence}]
    return LabelAtlas(labels, groups, anatomy, files)


def _initialise(net, init_weights, template) -> Optional[dict]:
    """Load the weights of a previous stage (strict) and describe it for the card."""
    import hashlib

    if init_weights is None:
        return None
    from .network import load_tspm_model

    previous = load_tspm_model(str(init_weights))
    if previous.template.sha256 != template.sha256:
        raise InputError(f"init_weights: {init_weights} was trained in template '{previous.template.name}', "
                         f"not in '{template.name}'")
    if previous.net.config.architecture() != net.config.architecture():
        raise InputError(f"init_weights: {init_weights} has another network ({previous.net.config.to_dict()}) than "
                         f"the one to train ({net.config.to_dict()})")
    net.load_state_dict(previous.net.state_dict(), strict=True)
    card = previous.card
    return {"file": Path(init_weights).name, "sha256": hashlib.sha256(Path(init_weights).read_bytes()).hexdigest(),
            "command": card.get("command"), "seed": card.get("seed"), "schedule": card.get("schedule"),
            "training_time_s": card.get("training_time_s"), "metrics": card.get("metrics")}


def _model_card(name, cases, config, intensity, template, outcome, final_val, command, seconds) -> dict:
    import platform

    import torch

    last = outcome.history[-1] if outcome.history else {}
    return {
        "name": name,
        "summary": f"TSPM patch position network (16³ patches → template position), template {template.name}",
        "training_data": [{"name": c.name, "file": c.image.name, "split": c.split, "licence": c.licence}
                          for c in cases],
        "data_licence": "; ".join(sorted({c.licence for c in cases if c.licence})) or "see training_data",
        "command": command,
        "seed": config.optim.seed,
        "metrics": {"final_train_l1": last.get("loss"), "validation": final_val,
                    "history": [{k: v for k, v in h.items()} for h in outcome.history]},
        "schedule": config.to_dict(),
        "intensity": intensity.to_dict(),
        "template": {"name": template.name, "sha256": template.sha256, "spacing_mm": template.spacing_mm},
        "training_time_s": round(sum(h.get("seconds", 0.0) for h in outcome.history), 1),
        # CPU time of the optimisation steps (this process, all its threads; epochs of older runs lack it)
        "training_cpu_s": round(sum(h.get("cpu_seconds", 0.0) for h in outcome.history), 1),
        "this_invocation_s": round(seconds, 1),
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "environment": {"torch": str(torch.__version__), "python": platform.python_version(),
                        "device": config.optim.device, "machine": platform.machine(),
                        "torch_threads": torch.get_num_threads()},
    }


def _write_model(net, template, intensity, card, output):
    from ...models.model_file import ModelFile, card_markdown, save_model
    from ...io import atomic_output
    from .network import NETWORK_NAME

    model = ModelFile(
        kind=MODEL_KIND, network_name=NETWORK_NAME, network_config=net.config.to_dict(),
        state_dict=net.state_dict(), intensity=intensity.to_dict(), card=card,
        template={"name": template.name, "sha256": template.sha256, "geometry": template.geometry(),
                  "nifti_gz": template.to_bytes()},
    )
    save_model(model, output)
    with atomic_output(Path(output).with_suffix(".md")) as tmp:
        Path(tmp).write_text(card_markdown(card))
    return model
