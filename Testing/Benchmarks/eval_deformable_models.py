"""Held-out evaluation of the deformable field networks: network alone, and as the start of instance
optimisation at a few step budgets, against optimisation alone at the same budgets.

Protocol: the benchmark's (``bench_deformable.py``: RegNet's three synthetic-field classes drawn inside the
brain mask of ``../shared/data/brain/stroke`` at 1.5 mm; fixed = T1 warped by the field + noise, moving =
T1, T2 or FLAIR + noise; error = |T(x) − (x + d(x))| inside the brain mask). The stroke subject is never
used in training. Runs in-process (``register_deformable``), one torch thread; reports mean / 95th
percentile field error (mm), folding fraction, and CPU seconds of the registration.

Writes (with ``--write``): the section ``deformable-models`` of BENCHMARKS.md, a JSON of every case next
to the outputs, and the "Held-out evaluation" section of each evaluated shipped model's card
(``RegistrationSuiteLib/data/models/<name>.md``).

Rows are keyed by each model's identity (its resolved file), not its stored name: two evaluated files with the
same name get the file in their row label (``name [path]``) and are never merged into one row. A file listed
more than once (under ``--models`` and ``--network-only-models``, or by name and by path) is one model and each of
its settings runs once per case (``planned_runs``).

Usage::

    python Testing/Benchmarks/eval_deformable_models.py --models deformable_mr_synthetic \
        [--pairs T1,T2,FLAIR] [--cases 1] [--steps 40,120] [--write]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deformable import SPACING, dense, evaluate, make_case, resample_iso  # noqa: E402
from common import markdown_table, require_shared_data, update_benchmarks_md  # noqa: E402

SECTION = "deformable-models"
CARD_BEGIN, CARD_END = "<!-- BEGIN held-out evaluation -->", "<!-- END held-out evaluation -->"


class Evaluated:
    """One evaluated model: the loaded model, its identity (resolved file; rows are keyed by it) and its row
    label (its name, or ``name [identity]`` when another evaluated file has the same name)."""

    def __init__(self, model, identity: str, label: str = ""):
        self.model, self.identity, self.label = model, identity, label or model.name


def model_identity(name_or_path) -> str:
    """The resolved model file of a name or ``.pt`` path (what tells two models apart)."""
    from RegistrationSuiteLib.models.registry import resolve_model

    return str(Path(resolve_model(name_or_path)).resolve())


def unique_labels(named) -> list:
    """Row labels for ``[(name, identity)]``: the name, or ``name [identity]`` when different identities share
    the name (the same identity listed twice keeps one label: it is the same model)."""
    identities_of = {}
    for name, identity in named:
        identities_of.setdefault(name, set()).add(identity)
    return [name if len(identities_of[name]) == 1 else f"{name} [{identity}]" for name, identity in named]


def load_evaluated(groups, loader=None, identify=model_identity) -> list:
    """``[[Evaluated, ...] per group]`` for comma-separated model lists (``--models``, ``--network-only-models``),
    labelled uniquely across all groups."""
    if loader is None:
        from RegistrationSuiteLib.methods.deformable.network import load_deformable_model as loader
    by_identity = {}  # one loaded model per file, however often and under whichever options it is listed

    def get(arg):
        identity = identify(arg)
        if identity not in by_identity:
            by_identity[identity] = Evaluated(loader(arg), identity)
        return by_identity[identity]

    loaded = [list({id(e): e for e in (get(a) for a in text.split(",") if a)}.values()) for text in groups]
    flat = list({id(e): e for group in loaded for e in group}.values())
    for entry, label in zip(flat, unique_labels([(e.model.name, e.identity) for e in flat])):
        entry.label = label
    return loaded


def planned_runs(models, candidates, baselines, steps, net_steps, variants) -> list:
    """The registrations of one case, each once: ``[(method, io_steps, entry or None, {"passes", "skip"})]``.

    Baselines and ``--network-only-models`` run network only; ``--models`` run with optimisation at the budgets
    in ``net_steps`` (and network only when 0 is one of them) for each ``PASSES:SKIP`` variant; optimisation alone
    runs at every budget > 0. A model listed under both options (or twice) gives the same run twice: it runs
    once, so its rows are never two runs of one setting merged into one."""
    runs, seen = [], set()

    def plan(method, n_steps, entry=None, passes=1, skip=0):
        key = (n_steps, entry.identity if entry is not None else None, passes, skip)
        if key not in seen:
            seen.add(key)
            runs.append((method, n_steps, entry, {"passes": passes, "skip": skip}))

    for entry in [*baselines, *candidates]:
        plan(f"{entry.label} only", 0, entry)
    for n_steps in steps:
        if n_steps > 0:
            plan("optimisation only", n_steps)
        for entry in (models if n_steps in net_steps else []):
            for passes, skip in variants:
                if n_steps == 0:
                    skip = 0
                label = "".join([f", {passes} passes" if passes > 1 else "",
                                 f", skip {skip} coarse level{'s' if skip > 1 else ''}" if skip else ""])
                method = (f"{entry.label} only" if n_steps == 0 else f"{entry.label} + optimisation") + label
                plan(method, n_steps, entry, passes, skip)
    return runs


def only_network(models, candidates) -> list:
    """The ``--network-only-models`` entries that are not also ``--models`` entries (the others to compare with)."""
    full = {e.identity for e in models}
    return [e for e in candidates if e.identity not in full]


def run_one(fixed, moving, truth, mask, *, model, io_steps, passes=1, skip=0):
    from RegistrationSuiteLib.methods.deformable import DeformableConfig, register_deformable

    cfg = DeformableConfig(io_steps=int(io_steps), device="cpu", network_passes=int(passes),
                           network_skip_levels=int(skip))
    t, c = time.perf_counter(), time.process_time()
    res = register_deformable(fixed, moving, cfg, model=model)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    m = evaluate(dense(res.transform, fixed), truth, mask)
    m.update({"seconds": wall, "cpu_seconds": cpu, "similarity": res.diagnostics["similarity"]["name"]})
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="deformable_mr_synthetic", help="comma-separated model names or .pt paths")
    ap.add_argument("--pairs", default="T1,T2,FLAIR")
    ap.add_argument("--cases", type=int, default=1, help="cases per class and pair")
    ap.add_argument("--steps", default="40,120", help="instance-optimisation budgets to compare (0 = none)")
    ap.add_argument("--network-steps", default=None,
                    help="budgets for the network + optimisation rows (default: --steps); optimisation alone runs "
                         "at every budget of both lists")
    ap.add_argument("--classes", default="0,1,2")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "output" / "eval_deformable_models"))
    ap.add_argument("--network-only-models", default="",
                    help="comma-separated models evaluated network only (e.g. candidates that are not shipped)")
    ap.add_argument("--untrained-baseline", action="store_true",
                    help="also run each model's architecture with its initial (untrained) weights, network only: "
                         "what the training adds beyond the fixed correlation layer")
    ap.add_argument("--network-variants", default="1:0",
                    help="how each --models model is used, comma-separated PASSES:SKIP pairs: network passes "
                         "(cascade) and coarsest optimisation levels skipped after the network start "
                         "(DeformableConfig.network_passes / network_skip_levels); 1:0 = the optimiser's own schedule")
    ap.add_argument("--render-only", action="store_true",
                    help="measure nothing: rebuild the tables (and with --write the sections) from OUTPUT_DIR/records.json "
                         "of an earlier run with the same arguments")
    ap.add_argument("--section", default=SECTION,
                    help=f"BENCHMARKS.md section to write (default {SECTION}; another name keeps that one untouched)")
    ap.add_argument("--title", default="", help="a '## ' heading for the section (a new section needs one)")
    ap.add_argument("--write", action="store_true", help="write BENCHMARKS.md and the model cards")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from RegistrationSuiteLib.methods.deformable.network import load_deformable_model
    from RegistrationSuiteLib.methods.deformable.synthetic import REGNET_CLASSES

    models, candidates = load_evaluated([args.models, args.network_only_models], load_deformable_model)
    baselines = []
    if args.untrained_baseline:
        from RegistrationSuiteLib.methods.deformable.network import DeformableModel, FieldUNet

        for entry in models:
            torch.manual_seed(0)
            net = FieldUNet(**entry.model.network.config).eval()
            untrained = DeformableModel(net, entry.model.spacing_mm, entry.model.modality, {},
                                        f"{entry.model.name} untrained")
            baselines.append(Evaluated(untrained, f"{entry.identity} (untrained)", f"{entry.label} untrained"))
    variants = [tuple(int(v) for v in text.split(":")) for text in args.network_variants.split(",") if text]
    pairs = [p for p in args.pairs.split(",") if p]
    net_steps = [int(s) for s in (args.steps if args.network_steps is None else args.network_steps).split(",") if s]
    steps = sorted({int(s) for s in args.steps.split(",") if s} | set(net_steps))
    classes = [int(k) for k in args.classes.split(",") if k]
    root = require_shared_data("brain", "stroke")
    names = sorted({"T1", *pairs})
    images = {n: resample_iso(sitk.ReadImage(str(root / f"{n}.nii.gz"), sitk.sitkFloat32), SPACING) for n in names}
    t1 = sitk.GetArrayFromImage(images["T1"])
    mask = t1 > 0.05 * float(np.percentile(t1, 99.5))
    records = []
    out_dir = Path(args.output_dir)
    if args.render_only:
        records = json.loads((out_dir / "records.json").read_text())
        pairs = []  # nothing to measure
    for pair in pairs:
        for k in classes:
            for case in range(args.cases):
                rng = np.random.default_rng([args.seed, names.index(pair), k, case])
                fixed, moving, truth = make_case(images, mask, REGNET_CLASSES[k], pair, rng)
                base = {"pair": f"T1→{pair}", "class": k, "case": case}
                ident = evaluate(dense(sitk.Transform(3, sitk.sitkIdentity), fixed), truth, mask)
                records.append({**base, "method": "identity", "io_steps": 0, **ident, "seconds": 0.0, "cpu_seconds": 0.0})
                print(f"{base['pair']} class {k} case {case} identity mean {ident['mean']:.2f}", flush=True)

                def add(method, n_steps, entry=None, **kw):
                    r = {**base, "method": method, "io_steps": n_steps,
                         "model": entry.identity if entry is not None else None,
                         **run_one(fixed, moving, truth, mask, io_steps=n_steps,
                                   model=entry.model if entry is not None else None, **kw)}
                    records.append(r)
                    print(f"{r['pair']} class {k} case {case} {method:<52} steps {n_steps:>4} mean {r['mean']:.2f} "
                          f"p95 {r['p95']:.2f} fold {r['folding']:.4%} cpu {r['cpu_seconds']:.1f}s", flush=True)

                for method, n_steps, entry, kw in planned_runs(models, candidates, baselines, steps, net_steps,
                                                                variants):
                    add(method, n_steps, entry, **kw)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        (out_dir / "records.json").write_text(json.dumps(records, indent=1))
    table = summary_table(records)
    savings = savings_table(records)
    verdicts = network_verdicts(records, [e.label for e in models], [e.label for e in only_network(models, candidates)])
    print(table)
    print(savings)
    print(verdicts)
    if args.write:
        body = (describe(args, models, candidates)
                + (" Tables rebuilt from that run's records.json with `--render-only` (nothing re-measured)."
                   if args.render_only else "") + "\n\n" + table
                + ("\n\n" + SAVINGS_INTRO + "\n\n" + savings if "+ optimisation" in savings else "")
                + ("\n\n" + verdicts if verdicts else ""))
        update_benchmarks_md(args.section, (f"## {args.title}\n\n" if args.title else "") + body)
        for entry in models:
            write_card_section(entry.model, body)
    return 0


def row_key(r) -> tuple:
    """What makes one table row: pair, method, budget and the model's identity (records of an older run have
    no ``model``: keyed by the method text alone, as then)."""
    return r["pair"], r["method"], r["io_steps"], r.get("model")


def summary_table(records) -> str:
    groups = {}
    for r in records:
        groups.setdefault(row_key(r), []).append(r)
    rows = []
    for (pair, method, n_steps, _model), rs in groups.items():
        ident = [x for x in records if x["pair"] == pair and x["method"] == "identity"]
        rows.append([pair, method, n_steps, len(rs), f"{np.mean([r['mean'] for r in rs]):.2f}",
                     f"{np.mean([r['mean'] for r in rs]) / np.mean([r['mean'] for r in ident]):.2f}",
                     f"{np.mean([r['p95'] for r in rs]):.2f}", f"{max(r['folding'] for r in rs):.4%}",
                     f"{np.mean([r['cpu_seconds'] for r in rs]):.1f}", f"{np.mean([r['seconds'] for r in rs]):.1f}"])
    return markdown_table(["pair", "method", "IO steps", "cases", "mean error (mm)", "÷ identity",
                           "p95 (mm)", "max folding", "CPU s", "wall s"], rows)


SAVINGS_INTRO = (
    "Does the network save optimisation steps? For each network + optimisation row (mean over the cases of its "
    "pair), the smallest measured budget at which optimisation alone is at least as accurate (mean error), with "
    "that row's CPU time; \"more than N\" = no measured budget of optimisation alone reached it. Steps saved = "
    "that budget − the network row's budget. Only the budgets listed were measured, so optimisation alone may "
    "need fewer steps than the matched budget: steps saved is an upper bound, and differences of 0.01–0.02 mm "
    "are within case-to-case variation. Steps are not CPU time: after a network start with a skipped coarse "
    "level the remaining steps are the costlier finer-level ones, and the network itself costs CPU, so compare "
    "the CPU columns too.")


def savings_table(records) -> str:
    opt = {}
    for r in records:
        if r["method"] == "optimisation only":
            opt.setdefault((r["pair"], r["io_steps"]), []).append(r)
    rows = []
    groups = {}
    for r in records:
        if " + optimisation" in r["method"]:
            groups.setdefault(row_key(r), []).append(r)
    for (pair, method, k, _model), rs in groups.items():
        err, cpu = np.mean([r["mean"] for r in rs]), np.mean([r["cpu_seconds"] for r in rs])
        budgets = sorted(n for (p, n) in opt if p == pair)
        match = next((n for n in budgets if np.mean([r["mean"] for r in opt[(pair, n)]]) <= err + 1e-9), None)
        if match is None:
            rows.append([pair, method, k, f"{err:.2f}", f"{cpu:.1f}", f"more than {max(budgets)}" if budgets else "-",
                         "-", f"> {max(budgets) - k}" if budgets else "-"])
        else:
            o = opt[(pair, match)]
            rows.append([pair, method, k, f"{err:.2f}", f"{cpu:.1f}", match,
                         f"{np.mean([r['mean'] for r in o]):.2f} / {np.mean([r['cpu_seconds'] for r in o]):.1f}",
                         match - k])
    return markdown_table(["pair", "network row", "IO steps", "mean error (mm)", "CPU s",
                           "optimisation alone needs (steps)", "its error (mm) / CPU s", "steps saved"], rows)


def network_verdicts(records, names, others) -> str:
    """Network alone (``<name> only``, 0 steps), per pair: does it halve the identity error (mean over the same
    cases), and is it more accurate than each other network evaluated in the same run?"""
    lines = []
    pairs = list(dict.fromkeys(r["pair"] for r in records))

    def mean_of(pair, method):
        rs = [r["mean"] for r in records if r["pair"] == pair and r["method"] == method and r["io_steps"] == 0]
        return (float(np.mean(rs)), len(rs)) if rs else (None, 0)

    for name in names:
        for pair in pairs:
            err, n = mean_of(pair, f"{name} only")
            ident, _ = mean_of(pair, "identity")
            if err is None or ident is None:
                continue
            text = (f"- {pair}, {name} alone: {err:.2f} mm against identity {ident:.2f} mm ({n} cases): "
                    f"{'halves' if err <= 0.5 * ident else '**does not halve**'} the identity error")
            for other in others:
                o, _ = mean_of(pair, f"{other} only")
                if o is not None:
                    text += (f"; {'more' if err < o else '**less**' if err > o else 'as'} accurate than {other} alone "
                             f"({o:.2f} mm, same cases)")
            lines.append(text)
    return "\n".join(lines)


def describe(args, models, candidates) -> str:
    import platform

    import torch

    command = (f"Testing/Benchmarks/eval_deformable_models.py --models {args.models} --pairs {args.pairs} "
               + (f"--network-only-models {args.network_only_models} " if candidates else "")
               + f"--cases {args.cases} --steps {args.steps} "
               + (f"--network-steps {args.network_steps} " if args.network_steps is not None else "")
               + f"--network-variants {args.network_variants} "
               + f"--classes {args.classes} --seed {args.seed}"
               + (" --untrained-baseline" if args.untrained_baseline else "")
               + (f" --section {args.section}" if args.section != SECTION else "")
               + (f" --title '{args.title}'" if args.title else "") + " --write")
    names = ", ".join(e.label for e in models)
    others = only_network(models, candidates)
    extra = f"; compared network only: {', '.join(e.label for e in others)}" if others else ""
    return (f"Held-out subject `brain/stroke` (never in training), RegNet synthetic-field protocol of "
            f"`bench_deformable.py` at {SPACING} mm, classes {args.classes}, {args.cases} case(s) per class and pair, "
            f"seed {args.seed}. Models: {names}{extra}. In-process `register_deformable` (default settings, "
            f"`io_steps` as listed), 1 torch thread, {platform.processor() or platform.machine()}, torch "
            f"{torch.__version__}; wall times on a shared 2-core machine under load (upper bounds). Written by "
            f"`{command}`."
            + (" \"untrained\" rows: the same architecture with its initial weights (its fixed MIND-SSC "
               "correlation layer and soft-argmin alone), so the difference to the trained rows is what training adds."
               if args.untrained_baseline else ""))


def write_card_section(model, body) -> None:
    from RegistrationSuiteLib.models.registry import shipped_models_dir

    card = shipped_models_dir() / f"{model.name}.md"
    if not card.is_file():
        return
    text = card.read_text()
    block = f"{CARD_BEGIN}\n## Held-out evaluation\n\n{body.strip()}\n{CARD_END}"
    pattern = re.compile(re.escape(CARD_BEGIN) + r".*?" + re.escape(CARD_END), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    card.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
