"""``Testing/Benchmarks/eval_deformable_models.py``: rows of two evaluated models with the same stored name stay
apart (keyed by the model's file, labelled ``name [file]``), and a file listed twice runs once; nothing is measured here."""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "Benchmarks"))
import eval_deformable_models as ev  # noqa: E402


def record(method, mean, model=None, steps=0, pair="T1→T2", case=0):
    return {"pair": pair, "class": 0, "case": case, "method": method, "io_steps": steps, "model": model,
            "mean": mean, "p95": 2 * mean, "folding": 0.0, "seconds": 1.0, "cpu_seconds": 1.0}


def table_rows(markdown):
    return [line for line in markdown.splitlines()[2:] if line.startswith("|")]


def test_same_name_different_files_get_separate_labels_and_rows():
    files = {"a.pt": "/models/a.pt", "b.pt": "/other/b.pt", "c.pt": "/models/c.pt"}
    names = {"a.pt": "deformable_mr_synthetic", "b.pt": "deformable_mr_synthetic", "c.pt": "deformable_mr_multimodal"}
    models, candidates = ev.load_evaluated(["a.pt,c.pt", "b.pt"], loader=lambda arg: SimpleNamespace(name=names[arg]),
                                           identify=files.get)
    assert [e.label for e in models] == ["deformable_mr_synthetic [/models/a.pt]", "deformable_mr_multimodal"]
    assert [e.label for e in candidates] == ["deformable_mr_synthetic [/other/b.pt]"]
    assert ev.unique_labels([("m", "/x"), ("m", "/x")]) == ["m", "m"]  # the same file twice is one model

    records = [record("identity", 4.0), record("identity", 4.0, case=1)]
    for entry, error in ((models[0], 1.0), (candidates[0], 3.0)):
        records += [record(f"{entry.label} only", error, entry.identity, case=c) for c in (0, 1)]
    rows = table_rows(ev.summary_table(records))
    assert len(rows) == 3  # identity + one row per model file
    by_label = {row.split("|")[2].strip(): row.split("|") for row in rows}
    assert by_label[f"{models[0].label} only"][4].strip() == "2"  # cases: both of its own, none of the other's
    assert by_label[f"{models[0].label} only"][5].strip() == "1.00"
    assert by_label[f"{candidates[0].label} only"][5].strip() == "3.00"


def test_rows_are_keyed_by_model_identity_even_with_equal_method_text():
    """Two files whose rows carry the same method text (e.g. records of a run labelled by name only) are still
    two rows: the key includes the model's identity."""
    records = [record("identity", 4.0),
               record("m + optimisation", 1.0, "/x/m.pt", steps=40), record("m + optimisation", 3.0, "/y/m.pt", steps=40),
               record("optimisation only", 2.0, steps=40)]
    rows = table_rows(ev.summary_table(records))
    errors = sorted(row.split("|")[5].strip() for row in rows if "m + optimisation" in row)
    assert errors == ["1.00", "3.00"]  # merged, they would show one row of 2.00
    savings = table_rows(ev.savings_table(records))
    assert len(savings) == 2


def test_records_without_model_field_still_group_by_method():
    """records.json of an earlier run (no ``model``) renders as before (``--render-only``)."""
    old = [dict(record("identity", 4.0)), dict(record("m only", 1.0)), dict(record("m only", 3.0, case=1))]
    for r in old:
        r.pop("model")
    rows = table_rows(ev.summary_table(old))
    assert len(rows) == 2 and rows[1].split("|")[5].strip() == "2.00"


def _load(groups, names, files):
    calls = []

    def loader(arg):
        calls.append(arg)
        return SimpleNamespace(name=names[arg])

    return ev.load_evaluated(groups, loader=loader, identify=files.get), calls


def test_a_model_under_both_options_is_loaded_once_and_its_network_only_run_happens_once():
    """The same file under ``--models`` and ``--network-only-models`` (and once more by another spelling): one
    model, one network-only run per case (before: run twice and merged into one row of two "cases")."""
    files = {"syn": "/models/syn.pt", "/models/syn.pt": "/models/syn.pt", "multi": "/models/multi.pt"}
    names = {"syn": "deformable_mr_synthetic", "/models/syn.pt": "deformable_mr_synthetic",
             "multi": "deformable_mr_multimodal"}
    (models, candidates), calls = _load(["syn,/models/syn.pt", "multi,syn"], names, files)
    assert sorted(calls) == ["multi", "syn"]  # each file loaded once
    assert [e.label for e in models] == ["deformable_mr_synthetic"]
    assert [e.label for e in candidates] == ["deformable_mr_multimodal", "deformable_mr_synthetic"]
    assert candidates[1] is models[0]
    assert [e.label for e in ev.only_network(models, candidates)] == ["deformable_mr_multimodal"]

    runs = ev.planned_runs(models, candidates, [], steps=[0, 40], net_steps=[0, 40], variants=[(1, 0), (2, 1)])
    settings = [(m, n, e.identity if e else None, kw["passes"], kw["skip"]) for m, n, e, kw in runs]
    assert len(settings) == len(set(settings))
    assert [s[:2] for s in settings].count(("deformable_mr_synthetic only", 0)) == 1
    assert sorted(s[:2] for s in settings) == sorted([
        ("deformable_mr_multimodal only", 0), ("deformable_mr_synthetic only", 0),
        ("deformable_mr_synthetic only, 2 passes", 0),  # skip is forced to 0 without optimisation
        ("optimisation only", 40), ("deformable_mr_synthetic + optimisation", 40),
        ("deformable_mr_synthetic + optimisation, 2 passes, skip 1 coarse level", 40)])

    # without a 0 budget the --models entry has no network-only row of its own: the --network-only-models one stays
    runs = ev.planned_runs(models, candidates, [], steps=[40], net_steps=[40], variants=[(1, 0)])
    assert [(m, n) for m, n, _, _ in runs] == [("deformable_mr_multimodal only", 0), ("deformable_mr_synthetic only", 0),
                                               ("optimisation only", 40), ("deformable_mr_synthetic + optimisation", 40)]

