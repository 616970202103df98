"""Schedule the pairs of a cohort: Dask distributed (a local cluster or a scheduler address), or one after
another in this process when Dask is absent and one worker is asked for.

Dask does the distribution, the retries of pairs whose worker was lost and the dashboard; this module
plans the jobs (``--resume``), draws the progress bar and writes ``summary.csv``. A pair's own failure is a
result (``status=failed``), never an exception that stops the batch.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .pairs import pair_hash
from .runner import RECORD, TRANSFORM, run_pair

INSTALL_HINT = "pip install 'registration-suite[cluster]' (or: pip install \"dask[distributed]\")"
SUMMARY_COLUMNS = ("id", "status", "score", "confidence", "doubtful", "doubtful_reasons", "folding_percent",
                   "time_s", "cpu_s", "peak_memory_mb", "worker_peak_memory_mb", "exit_code", "reused", "message")


@dataclass
class BatchOptions:
    """What every pair runs and where. ``command``: the CLI words before the pair's inputs (e.g.
    ``["rigid-search", "--device", "cpu"]`` or ``["pipeline", "--steps", "rigid-search,deformable"]``)."""

    command: list
    workers: Optional[int] = None  # None: chosen from cores and memory
    threads_per_worker: int = 1
    memory_per_worker: int = 4 * 2**30
    scheduler: Optional[str] = None
    retries: int = 1
    resume: bool = False
    previews: bool = True
    progress: bool = True
    use_dask: Optional[bool] = None  # None: Dask unless one worker without a scheduler (then in-process)


def parse_memory(text) -> int:
    """``"4GB"``, ``"512MiB"``, ``"2e9"`` → bytes."""
    s = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "B": 1}
    for unit, factor in units.items():
        if s.endswith(unit):
            s, mult = s[: -len(unit)], factor
            break
    else:
        mult = 1
    try:
        value = float(s) * mult
    except ValueError:
        raise InputError(f"--memory-per-worker: expected a size such as 4GB or 512MiB, got {text!r}") from None
    if value <= 0:
        raise InputError(f"--memory-per-worker: must be positive, got {text!r}")
    return int(value)


def auto_workers(n_jobs: int, memory_per_worker: int, threads_per_worker: int = 1) -> int:
    """Workers that fit: at most one per ``threads_per_worker`` cores, at most as many as 90 % of the available
    memory holds at ``memory_per_worker`` each, never more than there are pairs; at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    by_memory = int(0.9 * available // max(1, memory_per_worker))
    return max(1, min(cores // max(1, threads_per_worker), by_memory, n_jobs))


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def check_output_dir(pairs: list, out_dir, inputs=()) -> None:
    """Refuse, before anything runs, an output folder whose writing would destroy inputs or unrelated files:
    ``D`` must be a folder (or not exist yet); a pair's folder ``D/<id>/`` is replaced by the pair's results,
    so it must not exist unless it is a batch result (``pair.json``) and must hold no input of any pair;
    ``D/summary.csv`` and ``D/report.html`` must not be inputs (``inputs``: further input files, e.g. the CSV).

    Raises:
        InputError: one line naming the pair, the file and the option to change.
    """
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"--output-dir: {out} is a file, not a folder")
    written = {out / "summary.csv": "summary.csv", out / "report.html": "report.html"}
    files = [(p.id, f) for p in pairs for f in [p.fixed, p.moving, *p.extra.values(), *p.options] if Path(f).exists()]
    files += [("--pairs", f) for f in inputs]
    folders = {(out / p.id): p.id for p in pairs}
    for owner, f in files:
        path = Path(f).resolve()
        if path in written:
            raise InputError(f"--output-dir: {owner}'s input {f} is the batch's output {written[path]}; choose another --output-dir")
        for folder, pid in folders.items():
            if folder == path or folder in path.parents:
                raise InputError(f"--output-dir: {owner}'s input {f} lies in {folder}, which the batch replaces with "
                                 f"pair {pid}'s results; choose another --output-dir")
    for folder, pid in folders.items():
        if folder.exists() and not (folder / RECORD).is_file():
            raise InputError(f"--output-dir: {folder} exists and is not a batch result (no {RECORD}); the batch would "
                             f"replace it with pair {pid}'s results: move it or choose another --output-dir")


def plan(pairs: list, options: BatchOptions, out_dir: Path) -> tuple:
    """``(jobs to run, ids reused)``: with ``resume``, a pair whose ``pair.json`` says done, whose transform
    exists and whose input+options hash is unchanged is reused."""
    jobs, reused = [], []
    threads = max(1, options.threads_per_worker)
    token = uuid.uuid4().hex  # this batch run: a task recomputed by Dask after a worker loss sees it is done
    for pair in pairs:
        argv = [*pair.command(options.command), "--fixed", pair.fixed, "--moving", pair.moving,
                *[w for k, v in pair.extra.items() for w in (k, v)]]
        h = pair_hash(pair, options.command)
        if options.resume and _finished(out_dir / pair.id, h):
            reused.append(pair.id)
            continue
        jobs.append({"id": pair.id, "argv": argv, "out_root": str(out_dir), "hash": h, "fixed": pair.fixed,
                     "moving": pair.moving, "threads": threads, "memory_limit": options.memory_per_worker,
                     "signal_retries": options.retries, "previews": options.previews, "run_token": token})
    return jobs, reused


def _finished(folder: Path, h: str) -> bool:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return False
    return record.get("status") == "done" and record.get("hash") == h and (folder / TRANSFORM).is_file()


class BatchProgress:
    """One line on stderr: ``pairs done/failed/running of N, ETA``; redrawn in place on a terminal, printed
    only when a count changes otherwise (logs stay short)."""

    def __init__(self, total: int, reused: int = 0, enabled: bool = True, stream=None):
        self.total, self.reused = total, reused
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.stream is not None
        self.tty = bool(self.enabled and getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self._last = None

    def update(self, done: int, failed: int, running: int, final: bool = False) -> None:
        if not self.enabled:
            return
        finished = done + failed - self.reused
        todo = self.total - done - failed
        elapsed = time.monotonic() - self.t0
        eta = "--:--" if finished <= 0 else _hms(elapsed / finished * todo)
        line = f"[batch] {done}/{self.total} done, {failed} failed, {running} running, ETA {eta}"
        if self.reused:
            line += f" ({self.reused} reused)"
        key = (done, failed, running)
        if self.tty:
            self.stream.write("\r" + line.ljust(90) + ("\n" if final else ""))
        elif key != self._last:
            self.stream.write(line + "\n")
        self._last = key
        self.stream.flush()


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_batch(pairs: list, options: BatchOptions, out_dir, *, log=print) -> dict:
    """Run every pair; returns ``{"records": [...], "reused": [...], "workers": n, "mode": ..., "wall_s": ...}``.

    Raises:
        InputError: Dask needed (several workers or a scheduler) but not installed; an output folder that
            would destroy inputs or unrelated files (:func:`check_output_dir`).
    """
    out_dir = Path(out_dir)
    check_output_dir(pairs, out_dir)
    out_dir.mkdir(exist_ok=True)
    shutil.rmtree(out_dir / ".tmp", ignore_errors=True)  # leftovers of a batch that was killed
    t0 = time.perf_counter()
    jobs, reused = plan(pairs, options, out_dir)
    use_dask = options.use_dask if options.use_dask is not None else (options.scheduler is not None or options.workers != 1)
    if use_dask and not dask_available():
        if options.scheduler or (options.workers or 0) > 1:
            raise InputError(f"--workers/--scheduler need Dask: {INSTALL_HINT}; or run with --workers 1")
        use_dask = False  # automatic choice without Dask: one worker, in this process
    progress = BatchProgress(len(pairs), len(reused), options.progress)
    if not jobs:
        records, mode, workers = [], "none", 0
    elif use_dask:
        records, workers = _run_dask(jobs, options, progress, log)
        mode = "dask-scheduler" if options.scheduler else "dask-local"
    else:
        records, mode, workers = _run_here(jobs, progress), "in-process", 1
    progress.update(sum(r["status"] == "done" for r in records) + len(reused),
                    sum(r["status"] != "done" for r in records), 0, final=True)
    return {"records": records, "reused": reused, "mode": mode, "workers": workers,
            "wall_s": time.perf_counter() - t0}


def _run_here(jobs: list, progress: BatchProgress) -> list:
    records = []
    for job in jobs:
        progress.update(_count(records, "done") + progress.reused, len(records) - _count(records, "done"), 1)
        records.append(run_pair(job))
    return records


def _count(records, status) -> int:
    return sum(r.get("status") == status for r in records)


def _run_dask(jobs: list, options: BatchOptions, progress: BatchProgress, log) -> tuple:
    import dask
    from distributed import Client, LocalCluster

    # A task whose worker died is rescheduled until it has been on `allowed-failures + 1` dead workers
    # (for a remote scheduler this is the scheduler's own setting).
    with dask.config.set({"distributed.scheduler.allowed-failures": max(0, options.retries)}):
        if options.scheduler:
            cluster, client = None, Client(options.scheduler)
            workers = len(client.scheduler_info().get("workers", {}))
        else:
            workers = options.workers or auto_workers(len(jobs), options.memory_per_worker, options.threads_per_worker)
            cluster = LocalCluster(n_workers=workers, threads_per_worker=max(1, options.threads_per_worker),
                                   processes=True, memory_limit=options.memory_per_worker,
                                   dashboard_address=":0", silence_logs=40)
            client = Client(cluster)
            log(f"Dask local cluster: {workers} worker(s) × {options.threads_per_worker} thread(s), "
                f"{options.memory_per_worker / 2**30:.1f} GiB each; dashboard: {client.dashboard_link}", file=sys.stderr)
        try:
            return _gather(client, jobs, progress), workers
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def _gather(client, jobs: list, progress: BatchProgress) -> list:
    from distributed import wait

    # keys unique per batch run: two batches on one scheduler never share a task
    futures = {client.submit(run_pair, job, key=f"pair-{job['id']}-{job['run_token'][:8]}", pure=False): job for job in jobs}
    pending, records = set(futures), []
    while pending:
        try:
            finished, pending = wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
        except TimeoutError:  # nothing finished in this interval: redraw the bar and wait again
            finished = set()
        for fut in finished:
            records.append(_outcome(fut, futures.pop(fut)))
            fut.release()  # a collected result need not be kept (nor recomputed if its worker dies later)
        try:  # tasks assigned to workers include queued ones: at most one per worker thread is running
            running = min(sum(len(v) for v in client.processing().values()), sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001 - the count is cosmetic; a scheduler hiccup must not stop the batch
            running = min(len(pending), 1)
        progress.update(_count(records, "done") + progress.reused, len(records) - _count(records, "done"),
                        min(running, len(pending)))
    return records


def _outcome(fut, job: dict) -> dict:
    """The record of a finished future; a task that could not finish (its workers kept dying) is recorded
    here as failed, with ``error.json``, since it could not write its own."""
    try:
        return fut.result()
    except Exception as exc:  # noqa: BLE001 - KilledWorker and the like: the pair failed, the batch goes on
        from .runner import ERROR, log_attempt, write_json

        message = f"worker lost while running this pair ({type(exc).__name__}); retries exhausted"
        folder = Path(job["out_root"]) / job["id"]
        tmp = Path(job["out_root"]) / ".tmp" / f"{job['id']}-lost"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        record = {"id": job["id"], "hash": job["hash"], "fixed": job["fixed"], "moving": job["moving"],
                  "command": job["argv"], "status": "failed", "exit_code": None, "message": message,
                  "run_token": job.get("run_token")}
        write_json(tmp / ERROR, {"message": message, "exit_code": None})
        write_json(tmp / RECORD, record)
        from .runner import publish

        publish(tmp, folder)
        log_attempt(job["out_root"], id=job["id"], event="lost")
        return record


def write_summary_csv(pairs: list, out_dir, reused_ids=()) -> Path:
    """``D/summary.csv``: one row per pair of the cohort, from each ``D/<id>/pair.json``."""
    out_dir = Path(out_dir)
    rows = []
    for pair in pairs:
        try:
            rec = json.loads((out_dir / pair.id / RECORD).read_text())
        except (OSError, ValueError):
            rec = {"status": "missing", "message": "no result (batch interrupted?)"}
        reasons = rec.get("doubtful") or []
        rows.append({"id": pair.id, "status": rec.get("status", "missing"), "score": _fmt(rec.get("score")),
                     "confidence": _fmt(rec.get("confidence")), "doubtful": "yes" if reasons else "no",
                     "doubtful_reasons": " | ".join(reasons), "folding_percent": _fmt(rec.get("folding_percent")),
                     "time_s": _fmt(rec.get("time_s")), "cpu_s": _fmt(rec.get("cpu_s")),
                     "peak_memory_mb": _fmt(rec.get("peak_memory_mb")),
                     "worker_peak_memory_mb": _fmt(rec.get("worker_peak_memory_mb")),
                     "exit_code": "" if rec.get("exit_code") is None else rec.get("exit_code"),
                     "reused": "yes" if pair.id in reused_ids else "no", "message": rec.get("message", "")})
    path = out_dir / "summary.csv"
    tmp = out_dir / ".summary.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path


def _fmt(x) -> str:
    if x is None or x == "":
        return ""
    try:
        return f"{float(x):.6g}"
    except (TypeError, ValueError):
        return str(x)
