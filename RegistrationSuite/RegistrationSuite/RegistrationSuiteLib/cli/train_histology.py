"""``registration-suite train-histology``: train the multi-magnification histology networks."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

HELP = "train the multi-magnification histology networks (unsupervised, self-supervised pairs from single slides)"


def add_parser(sub):
    p = sub.add_parser(
        "train-histology", help=HELP,
        description=(
            "Trains the local affine network, then the non-rigid network (multi-magnification patch sets, NCC + "
            "λ·curvature, unsupervised) on pairs made from single slides by a random affine + smooth elastic warp "
            "and stain/colour augmentation. LIST.csv has a column 'image' (paths relative to the CSV) and "
            "optionally 'licence'. Resumes from its checkpoint (OUTPUT.ckpt). Writes MODEL.pt and its card "
            "MODEL.md. Runs with the torch thread count of --threads (default 1)."),
    )
    p.add_argument("--images", required=True, help="LIST.csv of training slides")
    p.add_argument("--output", required=True, help="model file to write (.pt)")
    p.add_argument("--steps-affine", type=int, default=600, help="optimiser steps of the affine network")
    p.add_argument("--steps-nonrigid", type=int, default=400, help="optimiser steps of the non-rigid network")
    p.add_argument("--batch-size", type=int, default=8, help="patches per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--loss-sigma", type=float, default=2.0, help="blur (pixels) of the patches compared by the loss")
    p.add_argument("--smoothness", type=float, default=5.0, help="λ of the curvature term (non-rigid)")
    p.add_argument("--patch", type=int, default=64, help="patch side in pixels (multiple of 8)")
    p.add_argument("--grid-size", type=int, default=512, help="longest side of the network grid (pixels)")
    p.add_argument("--width", type=int, default=12, help="channels of the first convolution block")
    p.add_argument("--single-magnification", action="store_true",
                   help="train the single-magnification variants (the paper's ablation)")
    p.add_argument("--max-cpu-minutes", type=float, default=15.0,
                   help="stop and write the model after this much CPU time (resumed runs included)")
    p.add_argument("--checkpoint", help="checkpoint file (default OUTPUT.ckpt)")
    p.add_argument("--name", help="model name in the card (default: output file stem)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..errors import InputError

    out = Path(args.output)
    if out.suffix != ".pt":
        raise InputError(f"--output: model file must end with .pt, got {out}")
    if not out.resolve().parent.is_dir():
        raise InputError(f"--output: folder does not exist: {out.parent}")
    if args.threads < 1:
        raise InputError(f"--threads: expected an integer >= 1, got {args.threads}")
    from ..methods.histology.networks import NetworkConfig
    from ..methods.histology.train import HistologyTrainConfig, read_image_list, train_histology_model

    images = Path(args.images)
    if images.resolve() == out.resolve():
        raise InputError("--output: refuses to overwrite the --images list")
    read_image_list(images)  # fail fast on a bad list
    net = NetworkConfig(patch=args.patch, width=args.width, context=not args.single_magnification,
                        grid_size=args.grid_size)
    cfg = HistologyTrainConfig(steps_affine=args.steps_affine, steps_nonrigid=args.steps_nonrigid,
                               batch=args.batch_size, learning_rate=args.lr, smoothness=args.smoothness, loss_sigma=args.loss_sigma,
                               max_cpu_minutes=args.max_cpu_minutes, seed=args.seed, net=net)
    cfg.validate()
    import torch

    torch.set_num_threads(args.threads)
    command = "registration-suite " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    card = train_histology_model(images, out, cfg, checkpoint=args.checkpoint, name=args.name, command=command,
                                 log=lambda line: print(line, flush=True))
    print(f"model written to {out}; synthetic end-point error (px): {card['metrics']}")
    return 0
