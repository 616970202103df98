"""``registration-suite train-partial-prereg``: train a TSPM patch position model."""

from __future__ import annotations

import shlex
import sys

HELP = "train a TSPM patch position model from images aligned with a template"


def add_parser(sub):
    p = sub.add_parser(
        "train-partial-prereg",
        help=HELP,
        description=(
            "Train the TSPM patch position network (16³ patch → template position, L1 loss, Adam) with random "
            "partial crops, rotations (±15° per axis) and intensity jitter. PAIRS.csv lists the training "
            "images: column 'image' and optionally 'template_to_image' (ITK transform file, template points → "
            "image points; empty = already aligned), 'split' (train/val), 'licence', 'name'. Resumes from "
            "its checkpoint (OUTPUT.ckpt) when interrupted. Writes a model file (.pt) and its model card (.md)."
        ),
    )
    p.add_argument("--pairs", required=True, help="PAIRS.csv (paths relative to the CSV)")
    p.add_argument("--template", help="template canvas (NIfTI written by build_template); default: shipped ICBM 2009a")
    p.add_argument("--output", required=True, help="model file to write (.pt)")
    p.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--steps-per-epoch", type=int, default=100, help="optimiser steps per epoch (default 100)")
    p.add_argument("--batch-size", type=int, default=64, help="patches per step (default 64, as in the paper)")
    p.add_argument("--patches-per-crop", type=int, default=16, help="patches per simulated partial crop (default 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="constant learning rate (default) or a cosine decay over all steps to --final-lr-fraction")
    p.add_argument("--final-lr-fraction", type=float, default=0.02,
                   help="last learning rate of the cosine schedule as a fraction of --lr (default 0.02)")
    p.add_argument("--rotation", type=float, default=15.0, help="max rotation per axis in degrees (default 15)")
    p.add_argument("--modality", default="mr", choices=["mr", "ct"],
                   help="intensity normalisation: mr = robust percentiles, ct = window [-500, 3000] HU")
    p.add_argument("--tissue", help="TISSUE.csv of tissue probability maps (columns class, image, optionally "
                   "template_to_image, licence, anatomy) for synthetic contrasts")
    p.add_argument("--labels", help="LABELS.csv of a label atlas (columns image, optionally template_to_image, "
                   "licence, anatomy) for synthetic contrasts with a random intensity per label (SynthSeg-style: "
                   "each atlas region split into CSF/grey/white matter by the anatomy's scan; random, T1-, T2-, "
                   "FLAIR- or PD-like contrast families); with --tissue too, each contrast comes from one of both")
    p.add_argument("--synthetic-fraction", type=float, default=0.0,
                   help="fraction of the simulated crops drawn from synthetic contrasts of the tissue maps and/or "
                        "label atlas (random intensity per tissue or label, bias field, blur, thick slices, "
                        "noise; default 0)")
    p.add_argument("--mirror-symmetric", action="store_true",
                   help="left-right symmetric template (the shipped one is): mirror half of the training crops "
                        "(patch flipped along x, target x mirrored) and let the model average each patch's "
                        "prediction with that of its mirror image (removes a left-right drift of the L1 loss)")
    p.add_argument("--channels", type=int, nargs=5, metavar="C",
                   help="output channels of the five convolutions (default 64 128 128 256 256, the paper's)")
    p.add_argument("--hidden", type=int, help="width of the first fully connected layer (default 256, the paper's)")
    p.add_argument("--dropout", type=float, help="dropout before the last layer (default 0.5, the paper's)")
    p.add_argument("--init-weights", help="start from this TSPM model file (e.g. a second stage with a lower --lr)")
    p.add_argument("--checkpoint", help="checkpoint file (default OUTPUT.ckpt)")
    p.add_argument("--name", help="model name in the card (default: output file stem)")
    p.add_argument("--notes", help="free text for the model card (how the data was prepared, hardware, caveats)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    from .common import add_device_argument

    add_device_argument(p)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..methods.partial_prereg.patches import IntensityConfig
    from ..methods.partial_prereg.template import load_template
    from ..methods.partial_prereg.train import TSPMTrainConfig, train_partial_prereg_model
    from ..models.training import TrainingConfig
    from .progress_lines import progress_for

    from ..io.outputs import OutputSet

    inputs = {f"--{a.replace('_', '-')}": getattr(args, a) for a in ("pairs", "template", "init_weights", "checkpoint",
                                                                     "tissue", "labels")
              if getattr(args, a, None)}
    checks = OutputSet(inputs)  # checked up front; the trainer writes the model and its card atomically
    out = checks.add("--output", args.output, (".pt",))
    checks.add("--output (model card)", out.with_suffix(".md"), (".md",))
    optim = TrainingConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                           learning_rate=args.lr, seed=args.seed, device=args.device,
                           lr_schedule=args.lr_schedule, final_lr_fraction=args.final_lr_fraction)
    config = TSPMTrainConfig(optim=optim, patches_per_crop=args.patches_per_crop, rotation_deg=args.rotation,
                             synthetic_fraction=args.synthetic_fraction,
                             mirror_prob=0.5 if args.mirror_symmetric else 0.0)
    intensity = IntensityConfig(mode="window" if args.modality == "ct" else "percentile")
    template = load_template(args.template) if args.template else load_template()
    network = _network_config(args)
    command = _command_line(args)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    model = train_partial_prereg_model(
        args.pairs, out, template=template, config=config, intensity=intensity, checkpoint=args.checkpoint,
        name=args.name, command=command, notes=args.notes, init_weights=args.init_weights, tissue_csv=args.tissue,
        labels_csv=args.labels,
        network=network, progress=progress_for(args), log=log,
    )
    metrics = model.card["metrics"]
    print(f"model written to {out} (final train L1 {metrics['final_train_l1']:.4f})")
    for name, val in metrics["validation"].items():
        print(f"validation {name}: median patch error {val['median_mm']:.1f} mm, "
              f"{val['within_15mm']:.0%} within 15 mm")
    return 0


_OPTIONS = ("pairs", "template", "output", "epochs", "steps_per_epoch", "batch_size", "patches_per_crop", "lr",
            "lr_schedule", "final_lr_fraction", "rotation", "modality", "tissue", "labels", "synthetic_fraction", "mirror_symmetric", "channels", "hidden", "dropout", "init_weights", "checkpoint", "name", "seed",
            "device", "notes")


def _command_line(args) -> str:
    """The equivalent full command line (every option explicit), recorded in the model card."""
    parts = ["registration-suite", "train-partial-prereg"]
    for key in _OPTIONS:
        value = getattr(args, key, None)
        if isinstance(value, bool):  # a flag
            parts += [f"--{key.replace('_', '-')}"] if value else []
        elif isinstance(value, (list, tuple)):
            parts += [f"--{key.replace('_', '-')}"] + [shlex.quote(str(v)) for v in value]
        elif value is not None:
            parts += [f"--{key.replace('_', '-')}", shlex.quote(str(value))]
    return " ".join(parts)


def _network_config(args):
    """The network to train: the paper's, with any of --channels, --hidden, --dropout changed."""
    from ..errors import InputError
    from ..methods.partial_prereg.network import PatchNetConfig

    changes = {}
    if getattr(args, "mirror_symmetric", False):
        changes["mirror_average"] = True
    if args.channels is not None:
        if any(c < 1 for c in args.channels):
            raise InputError(f"--channels: expected five positive integers, got {args.channels}")
        changes["channels"] = tuple(args.channels)
    if args.hidden is not None:
        if args.hidden < 1:
            raise InputError(f"--hidden: expected a positive integer, got {args.hidden}")
        changes["hidden"] = args.hidden
    if args.dropout is not None:
        if not 0.0 <= args.dropout < 1.0:
            raise InputError(f"--dropout: expected a probability in [0, 1), got {args.dropout}")
        changes["dropout"] = args.dropout
    return PatchNetConfig(**changes)
