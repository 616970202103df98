"""``registration-suite train-deformable``: train the deformable field network."""

from __future__ import annotations

from pathlib import Path

HELP = "train the deformable field network (scheme A: RegNet synthetic fields on single images)"


def add_parser(sub):
    p = sub.add_parser(
        "train-deformable", help=HELP,
        description=(
            "Scheme A (RegNet, Sokooti et al. 2017): synthetic displacement fields (P points, vectors in [-θ, θ], "
            "Gaussian σ; the paper's three classes; deformed-moving variant) applied to single images, noise and "
            "intensity jitter, supervised with the mean absolute field error. LIST.csv has a column 'image' "
            "(paths relative to the CSV) and optionally 'split' (train/val) and 'licence'. Resumes from its "
            "checkpoint (OUTPUT.ckpt). Writes a model file (.pt) and its card (.md). Scheme B (paired, Cao et al.) "
            "is not implemented yet."),
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

    if args.scheme == "paired":
        raise InputError("--scheme paired: not implemented yet (only 'synthetic', RegNet scheme A)")
    out = Path(args.output)
    if out.suffix != ".pt":
        raise InputError(f"--output: model file must end with .pt, got {out}")
    if not out.resolve().parent.is_dir():
        raise InputError(f"--output: folder does not exist: {out.parent}")
    read_images_csv(args.images)  # fail fast on a bad list
    optim = TrainingConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                           learning_rate=args.lr, seed=args.seed, device=args.device)
    config = DeformableTrainConfig(optim=optim, spacing_mm=args.spacing, patch=args.patch,
                                   diffeomorphic=args.diffeomorphic)
    card = train_deformable_model(args.images, out, config, checkpoint=args.checkpoint or str(out) + ".ckpt",
                                  name=args.name, notes=args.notes, progress=progress_for(args),
                                  log=lambda line: print(line, flush=True))
    print(f"model written to {out}; synthetic MAE (mm): {card['metrics']['synthetic_mae_mm']}")
    return 0
