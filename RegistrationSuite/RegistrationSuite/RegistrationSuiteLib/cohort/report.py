"""``D/report.html``: one self-contained review page of a batch (images embedded as base64 PNG, inline CSS
and JavaScript, nothing fetched from a network).

A sortable table of ``D/summary.csv`` (failed, then doubtful pairs first), and per pair the checkerboard
and edge overlay (three planes; 2D: the slide), the Jacobian-determinant map of deformable results and the
method's diagnostics. Pairs without previews (a failed pair, a batch run with previews off) get them
rendered here: the result if there is one, else the inputs before registration.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import time
from pathlib import Path

from .runner import ERROR, RECORD, SUMMARY, TRANSFORM

_IMAGES = (("checkerboard", "checkerboard (fixed / resampled moving)"),
           ("edges", "fixed with the resampled moving image's edges (magenta)"),
           ("jacobian", "Jacobian determinant (blue < 1 < red; black: folding)"),
           ("fixed", "the fixed image alone (the moving image could not be read)"),
           ("moving", "the moving image alone (the fixed image could not be read)"))
_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee;cursor:pointer;user-select:none}
tr.failed td{background:#fde2e2}tr.doubtful td{background:#fff4cc}.pair{border-top:2px solid #999;margin-top:1.5em}
.badge{padding:1px 6px;border-radius:4px;color:#fff;font-size:12px}.done{background:#2a7a2a}.failed{background:#b22}
.doubtful{background:#b80}figure{display:inline-block;margin:4px 12px 4px 0}figcaption{font-size:12px;color:#555}
pre{background:#f6f6f6;max-height:300px;overflow:auto;font-size:11px}"""
_JS = """function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
b=t.tBodies[0],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';const k=r=>{const v=r.children[i].dataset.k
??r.children[i].textContent;const n=parseFloat(v);return isNaN(n)?v:n};[...b.rows].sort((x,y)=>{const a=k(x),c=k(y);
return (a<c?-1:a>c?1:0)*(asc?1:-1)}).forEach(r=>b.appendChild(r))}"""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pair_ids(out_dir: Path) -> list:
    path = out_dir / "summary.csv"
    if path.is_file():
        with open(path, newline="") as f:
            return [row["id"] for row in csv.DictReader(f)]
    return sorted(p.parent.name for p in out_dir.glob(f"*/{RECORD}"))


def _rank(record: dict) -> tuple:
    failed = record.get("status") != "done"
    return (0 if failed else 1 if record.get("doubtful") else 2, record.get("id", ""))


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _ensure_previews(folder: Path, record: dict) -> tuple:
    """``(preview folder or None, note)``: renders missing previews from the pair's files; when one input cannot
    be read, the other one alone (so every pair with a readable input has an image)."""
    from .previews import render_pair_previews, render_single_image

    prev = folder / "previews"
    if (prev / "checkerboard.png").is_file():
        return prev, ""
    done = record.get("status") == "done" and (folder / TRANSFORM).is_file()
    try:
        render_pair_previews(record["fixed"], record["moving"], folder / TRANSFORM if done else None, prev)
    except Exception as exc:  # noqa: BLE001 - an unreadable input is shown as a note, not a broken report
        note = f"no preview of the pair: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        for role in ("fixed", "moving"):
            try:
                render_single_image(record[role], prev / f"{role}.png")
                return prev, note
            except Exception:  # noqa: BLE001 - this input is unreadable too: try the other one
                continue
        return None, note
    return prev, "" if done else "before registration (identity): the pair failed"


def write_report(out_dir, *, title: str = "RegistrationSuite batch review", source: str = None) -> Path:
    """Write ``out_dir/report.html`` from the pairs' folders; returns its path (``source``: the origin named
    on the page, default the folder)."""
    out_dir = Path(out_dir)
    records = []
    for pid in _pair_ids(out_dir):
        rec = _read_json(out_dir / pid / RECORD) or {"id": pid, "status": "missing", "message": "no result"}
        rec.setdefault("id", pid)
        records.append(rec)
    records.sort(key=_rank)
    n_failed = sum(r.get("status") != "done" for r in records)
    n_doubtful = sum(bool(r.get("doubtful")) and r.get("status") == "done" for r in records)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style><script>{_JS}</script></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{len(records)} pair(s): {len(records) - n_failed} done "
             f"({n_doubtful} doubtful), {n_failed} failed. Written {time.strftime('%Y-%m-%d %H:%M:%S')} from "
             f"{html.escape(source or str(out_dir.resolve()))}. Click a column header to sort.</p>", _table(records)]
    for rec in records:
        parts.append(_section(out_dir / rec["id"], rec))
    parts.append("</body></html>")
    path = out_dir / "report.html"
    tmp = out_dir / ".report.html.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _cell(value, key=None) -> str:
    text = "" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
    k = f' data-k="{html.escape(str(key))}"' if key is not None else ""
    return f"<td{k}>{html.escape(text)}</td>"


def _table(records: list) -> str:
    head = ("id", "status", "doubtful", "score", "confidence", "folding %", "time s", "peak MB", "message")
    rows = []
    for i, r in enumerate(records):
        cls = "failed" if r.get("status") != "done" else "doubtful" if r.get("doubtful") else ""
        rows.append(f'<tr class="{cls}"><td><a href="#pair-{html.escape(r["id"])}">{html.escape(r["id"])}</a></td>'
                    + _cell(r.get("status"), f"{i:05d}") + _cell("; ".join(r.get("doubtful") or []) or "no")
                    + "".join(_cell(r.get(k)) for k in ("score", "confidence", "folding_percent", "time_s", "peak_memory_mb"))
                    + _cell(r.get("message", "")) + "</tr>")
    # Sorting by "status" restores the review order (failed, doubtful, then the others).
    ths = "".join(f'<th onclick="sortBy(this)">{h}</th>' for h in head)
    return f'<table id="summary"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _section(folder: Path, rec: dict) -> str:
    status = rec.get("status", "missing")
    badge = "done" if status == "done" else "failed"
    out = [f'<div class="pair" id="pair-{html.escape(rec["id"])}"><h2>{html.escape(rec["id"])} '
           f'<span class="badge {badge}">{html.escape(status)}</span>'
           + (' <span class="badge doubtful">doubtful</span>' if rec.get("doubtful") else "") + "</h2>",
           f"<p>fixed: {html.escape(str(rec.get('fixed', '')))}<br>moving: {html.escape(str(rec.get('moving', '')))}</p>"]
    if status != "done":
        err = _read_json(folder / ERROR)
        out.append(f"<p><b>error</b> (exit {html.escape(str(err.get('exit_code', rec.get('exit_code'))))}): "
                   f"{html.escape(str(err.get('message', rec.get('message', ''))))}</p>")
    if rec.get("doubtful"):
        out.append("<ul>" + "".join(f"<li>{html.escape(str(r))}</li>" for r in rec["doubtful"]) + "</ul>")
    prev, note = (_ensure_previews(folder, rec) if folder.is_dir() and "fixed" in rec else (None, "no preview: no inputs recorded"))
    if note:
        out.append(f"<p><i>{html.escape(note)}</i></p>")
    if prev is not None:
        out += [_img(prev / f"{name}.png", cap) for name, cap in _IMAGES if (prev / f"{name}.png").is_file()]
    summary = _read_json(folder / SUMMARY)
    if summary:
        text = json.dumps(summary, indent=1)
        if len(text) > 20000:
            text = text[:20000] + "\n… (truncated; see summary.json)"
        out.append(f"<details><summary>diagnostics</summary><pre>{html.escape(text)}</pre></details>")
    out.append("</div>")
    return "\n".join(out)


def write_pair_report(path, pair_id: str, fixed, moving, transform, summary: dict) -> Path:
    """A one-pair review page (``--output-report`` of the single-pair commands), same layout as a batch's.

    Args:
        fixed, moving: image paths; transform: ``sitk.Transform`` (fixed→moving); summary: the ``--json`` dict.
    """
    import shutil
    import tempfile

    import SimpleITK as sitk

    from .previews import render_pair_previews
    from .quality import doubtful_reasons, folding_percent

    path = Path(path)
    work = Path(tempfile.mkdtemp(prefix=".report-", dir=path.parent))
    try:
        folder = work / pair_id
        folder.mkdir()
        render_pair_previews(fixed, moving, transform, folder / "previews")
        sitk.WriteTransform(transform, str(folder / TRANSFORM))
        (folder / SUMMARY).write_text(json.dumps(summary, indent=1, default=str))
        record = {"id": pair_id, "status": "done", "fixed": str(fixed), "moving": str(moving),
                  "score": summary.get("score"), "confidence": summary.get("confidence"),
                  "doubtful": doubtful_reasons(summary), "folding_percent": folding_percent(transform),
                  "time_s": (summary.get("timings") or {}).get("total")}
        (folder / RECORD).write_text(json.dumps(record, indent=1, default=str))
        os.replace(write_report(work, title=f"RegistrationSuite review: {pair_id}", source="one registration"), path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path
