#!/usr/bin/env python
"""Compare two histology network models (e.g. the shipped one and a retrain) on the same cases.

Decision cases (never the benchmark's evaluation pairs): (1) the training recipe's synthetic validation pairs,
rebuilt with the *current* preprocessing for both models (so a retrain after a preprocessing fix and the old
model are scored on identical pairs), mean end-point error inside the tissue; (2) the non-rigid check cases of
``bench_histology.py --nonrigid-checks`` (two synthetic warps with known correspondences, the BIRL artificial
elastic pair), median landmark error after the initial alignment + the networks (affine network 1 pass; affine +
non-rigid networks 3 passes). A model counts as better when its summed median error over those cases (3-pass
row) and its synthetic affine + non-rigid error are both lower.

Reported, not used for the decision: the ANHIR pairs (median rTRE, same two network rows), in-process.

Usage::

    python Testing/Benchmarks/compare_histology_models.py --models OLD.pt NEW.pt [--labels old new] [--write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, markdown_table, update_benchmarks_md  # noqa: E402
from bench_histology import PAIRS, _diagonal, _paths, _read_lm, nonrigid_cases  # noqa: E402

ROWS = {"affine network (1 pass)": {"network_stages": "affine", "iterations": 1},
        "affine + non-rigid networks (3 passes)": {"iterations": 3}}
OUT = REPO / "Testing" / "Benchmarks" / "output" / "histology_models"


def synthetic_epe(model: str, images_csv: Path) -> dict:
    from RegistrationSuiteLib.methods.histology.networks import load_histology_model
    from RegistrationSuiteLib.methods.histology.train import (HistologyTrainConfig, grid_rgb, read_image_list,
                                                              validation_metrics)

    affine, nonrigid, net_cfg, card_model = load_histology_model(model)
    settings = dict(card_model.card.get("training", {}).get("settings", {}))
    cfg = HistologyTrainConfig(seed=int(settings.get("seed", 0)),
                               validation_pairs=int(settings.get("validation_pairs", 4)))
    cfg.net = net_cfg
    slides = [grid_rgb(r["image"], net_cfg.grid_size) for r in read_image_list(images_csv)]
    return validation_metrics(affine, nonrigid, slides, cfg)


def case_errors(model: str) -> list:
    from RegistrationSuiteLib.methods.histology import HistologyConfig, register_histology, transfer_landmarks

    rows = []
    cases = dict(nonrigid_cases())
    for pair in PAIRS:
        def make(pair=pair):
            f, m, fl, ml = _paths(pair)
            a, b = _read_lm(fl), _read_lm(ml)
            n = min(len(a), len(b))
            return str(f), str(m), a[:n], b[:n], _diagonal(pair)
        cases[f"ANHIR {pair} (evaluation pair: reported, not used to decide)"] = make
    for case, make in cases.items():
        fixed, moving, pts, truth, diag = make()
        for label, kw in ROWS.items():
            t0 = time.process_time()
            res = register_histology(fixed, moving, HistologyConfig(model=model, **kw))
            err = np.linalg.norm(transfer_landmarks(res, pts) - truth, axis=1)
            rows.append({"case": case, "row": label, "median_px": float(np.median(err)),
                         "median_rtre_pct": 100.0 * float(np.median(err)) / diag,
                         "cpu_seconds": time.process_time() - t0})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def describe(model: str) -> dict:
    from RegistrationSuiteLib.models.model_file import load_model
    from RegistrationSuiteLib.models.registry import resolve_model

    path = resolve_model(model)
    card = load_model(path).card
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:12],
            "cpu_minutes": card.get("training", {}).get("cpu_minutes"), "command": card.get("command", "")}


def summarise(results: dict, labels: list, seconds: float, argv: list) -> str:
    header = ["case / row"] + [f"{lab}: median error" for lab in labels]
    table = []
    first = results[labels[0]]
    for key in ("synthetic_epe_px_identity", "synthetic_epe_px_affine", "synthetic_epe_px_affine_nonrigid"):
        table.append([f"synthetic validation pairs, {key.replace('synthetic_epe_px_', '')} (mean EPE, net-grid px)"]
                     + [f"{results[lab]['epe'][key]:.3f}" for lab in labels])
    for r in first["cases"]:
        cells = [f"{r['case']}: {r['row']}"]
        for lab in labels:
            x = next(y for y in results[lab]["cases"] if y["case"] == r["case"] and y["row"] == r["row"])
            cells.append(f"{x['median_px']:.2f} px ({x['median_rtre_pct']:.2f} %) [{x['cpu_seconds']:.0f} s]")
        table.append(cells)

    def decide(lab):
        cases = [y for y in results[lab]["cases"] if not y["case"].startswith("ANHIR")
                 and y["row"].endswith("(3 passes)")]
        return sum(y["median_px"] for y in cases), results[lab]["epe"]["synthetic_epe_px_affine_nonrigid"]

    old, new = decide(labels[0]), decide(labels[1])
    better = new[0] < old[0] and new[1] < old[1]
    lines = ["### Histology network models compared (`compare_histology_models.py`)", "",
             "Same cases for both models, in one process, 1 torch thread, [CPU s of the registration]. Cells: median "
             "landmark error in px (and as % of the case's diagonal). Decision rule (fixed before the run): the "
             "second model counts as better when its summed median error over the three non-evaluation cases "
             "(3-pass row) and its synthetic affine + non-rigid error are both lower. The ANHIR rows are the "
             "benchmark's evaluation pairs: reported, not used to decide. The synthetic validation pairs and the "
             "non-rigid cases use the training images (other random warps), so they are not independent of "
             "training.", ""]
    for lab in labels:
        d = results[lab]["model"]
        lines.append(f"- {lab}: `{Path(d['path']).name}` (sha256 {d['sha256']}…), trained {d['cpu_minutes']} CPU min, "
                     f"`{d['command']}`")
    lines += ["", markdown_table(header, table), "",
              f"Decision: {labels[1]} {'is' if better else 'is not'} better than {labels[0]} (summed median error "
              f"{new[0]:.2f} vs {old[0]:.2f} px, synthetic EPE {new[1]:.3f} vs {old[1]:.3f} px); a shipped model is replaced "
              "only by a better one.", "",
              f"Command: `python Testing/Benchmarks/compare_histology_models.py {shlex.join(argv)}`"
              + (f" ({seconds:.0f} s wall)." if np.isfinite(seconds) else ".")]
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs=2, help="two model names or paths (reference, candidate)")
    ap.add_argument("--labels", nargs=2, default=["reference", "candidate"])
    ap.add_argument("--images", default=str(Path(__file__).resolve().parent / "histology_train_images.csv"))
    ap.add_argument("--write", action="store_true", help="write the histology-models section of BENCHMARKS.md")
    ap.add_argument("--render-only", action="store_true",
                    help="rebuild the section from output/histology_models/comparison.json (nothing re-measured)")
    args = ap.parse_args(argv)
    if args.render_only:
        saved = json.loads((OUT / "comparison.json").read_text())
        results = {k: v for k, v in saved.items() if not k.startswith("_")}
        labels = list(results)
        run_argv = saved.get("_argv") or (
            ["--models"] + [results[lab]["model"]["path"] for lab in labels]
            + ["--labels"] + labels)
        body = summarise(results, labels, saved.get("_seconds", float("nan")), run_argv)
        body += "\n\nRendered from that run's `output/histology_models/comparison.json` with `--render-only`."
        print(body)
        if args.write:
            update_benchmarks_md("histology-models", body)
        return 0
    if not args.models:
        ap.error("--models: two models are needed (or --render-only)")
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {}
    for lab, model in zip(args.labels, args.models):
        results[lab] = {"model": describe(model), "epe": synthetic_epe(model, Path(args.images)),
                        "cases": case_errors(model)}
        print(json.dumps({lab: results[lab]["epe"]}), flush=True)
    seconds = time.perf_counter() - t0
    (OUT / "comparison.json").write_text(json.dumps(dict(results, _argv=argv, _seconds=seconds), indent=1))
    body = summarise(results, args.labels, seconds, argv)
    print(body)
    if args.write:
        update_benchmarks_md("histology-models", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
