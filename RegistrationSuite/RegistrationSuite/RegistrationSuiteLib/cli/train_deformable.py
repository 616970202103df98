"""``registration-suite train-deformable``: train the deformable field network."""

from __future__ import annotations

from pathlib import Path

HELP = "train the deformable field network (scheme A: RegNet synthetic fields; scheme B: Cao et al. paired)"


def add_parser(sub):
    p = sub.add_parser(
        "train-deformable", help=HELP,
        description=(
            "Scheme A (RegNet, Sokooti et al. 2017): synthetic displacement fields (P points, vectors in [-θ, θ], "
            "Gaussian σ; the paper's three classes; deformed-moving variant) applied to single images, noise and "
            "intensity jitter, supervised with the mean absolute field error. LIST.csv has a column 'image' "
            "(paths relative to the CSV) and optionally 'split' (train/val) and 'licence'. Resumes from its "
            "checkpoint (OUTPUT.ckpt). Writes a model file (.pt) and its card (.md). Scheme B (--scheme paired, "
            "Cao et al. 2018; needs --sampling volume): partner contrasts from the list's 'tissue' maps or a random "
            "intensity map of the image, misalignment from RegNet fields, loss ½(1-NCC) per contrast + 0.5 bending "
            "+ 0.01 L2."),
    )
    p.add_argument("--scheme", default="synthetic", choices=["synthetic", "paired"])
    p.add_argument("--images", required=True, help="LIST.csv of training images")
    p.add_argument("--output", required=True, help="model file to write (.pt)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patch", type=int, default=64, help="crop size in voxels (default 64)")
    p.add_argument("--spacing", type=float, default=2.0, help="working spacing in mm (default 2)")
    p.add_argument("--diffeomorphic", action="store_true")
    p.add_argument("--sampling", default="patch", choices=["patch", "volume"],
                   help="patch: crops on the model grid; volume: whole brains warped on the fine grid (shipped models)")
    p.add_argument("--fine-spacing", type=float, default=2.0, help="volume sampling: grid where images are warped (mm)")
    p.add_argument("--box", default="79,95,87", help="volume sampling: fine-grid crop size z,y,x (voxels)")
    p.add_argument("--pool", type=int, default=0, help="volume sampling: samples kept per epoch (0: a new one per draw)")
    p.add_argument("--contrast", type=float, default=0.35, help="volume sampling: probability of a random intensity map")
    p.add_argument("--skull-strip", type=float, default=0.6, help="volume sampling: probability of skull stripping")
    p.add_argument("--encoder", default="8,16,16,32", help="U-Net encoder channels (comma separated)")
    p.add_argument("--decoder", default="32,16,16,8", help="U-Net decoder channels (comma separated)")
    p.add_argument("--output-stride", type=int, default=1, choices=[1, 2],
                   help="2: predict the field at half the model resolution (decoder has one level fewer)")
    p.add_argument("--correlation-radius", type=int, default=0,
                   help="MIND-SSC correlation layer: search radius in (strided) voxels; 0 = none")
    p.add_argument("--correlation-stride", type=int, default=1, choices=[1, 2], help="correlation at full or half resolution")
    p.add_argument("--correlation-sigma", type=float, default=1.5, help="smoothing of the correlation field (model voxels)")
    p.add_argument("--mind-dilation", type=int, default=1, help="MIND-SSC neighbour distance (model voxels)")
    p.add_argument("--ncc-radius", type=int, default=3, help="scheme B: local NCC window radius in model voxels (0: global)")
    p.add_argument("--init-model", help="start from this model's weights (name or .pt; same architecture and spacing)")
    p.add_argument("--checkpoint", help="checkpoint file (default OUTPUT.ckpt)")
    p.add_argument("--name", help="model name in the card (default: output file stem)")
    p.add_argument("--notes", default="", help="free text for the model card")
    p.add_argument("--seed", type=int, default=0)
    from .common import add_device_argument

    add_device_argument(p)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..errors import InputError
    from ..methods.deformable.train import DeformableTrainConfig, read_images_csv, train_deformable_model
    from ..models.training import TrainingConfig
    from .progress_lines import progress_for

    if args.scheme == "paired" and args.sampling != "volume":
        raise InputError("--scheme paired: needs --sampling volume")
    out = Path(args.output)
    if out.suffix != ".pt":
        raise InputError(f"--output: model file must end with .pt, got {out}")
    if not out.resolve().parent.is_dir():
        raise InputError(f"--output: folder does not exist: {out.parent}")
    read_images_csv(args.images)  # fail fast on a bad list
    optim = TrainingConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                           learning_rate=args.lr, seed=args.seed, device=args.device)
    config = DeformableTrainConfig(optim=optim, spacing_mm=args.spacing, patch=args.patch,
                                   diffeomorphic=args.diffeomorphic, sampling=args.sampling,
                                   fine_spacing_mm=args.fine_spacing, box=_ints(args.box, "--box", 3),
                                   pool=args.pool, contrast=args.contrast, skull_strip=args.skull_strip,
                                   encoder=_ints(args.encoder, "--encoder"), decoder=_ints(args.decoder, "--decoder"),
                                   output_stride=args.output_stride, ncc_radius=args.ncc_radius,
                                   correlation_radius=args.correlation_radius,
                                   correlation_stride=args.correlation_stride,
                                   correlation_sigma=args.correlation_sigma, mind_dilation=args.mind_dilation)
    card = train_deformable_model(args.images, out, config, checkpoint=args.checkpoint or str(out) + ".ckpt",
                                  name=args.name, notes=args.notes, progress=progress_for(args),
                                  log=lambda line: print(line, flush=True), scheme=args.scheme,
                                  init_model=args.init_model)
    print(f"model written to {out}; synthetic MAE (mm): {card['metrics']['synthetic_mae_mm']}")
    return 0


def _ints(text, name, count=None):
    from ..errors import InputError

    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise InputError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if (count is not None and len(values) != count) or not values or min(values) < 1:
        raise InputError(f"{name}: expected {count or 'some'} positive integers, got {text!r}")
    return values
