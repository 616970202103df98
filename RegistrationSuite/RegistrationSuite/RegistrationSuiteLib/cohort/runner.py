"""One pair of a batch: the CLI command in a child process, outputs published atomically in ``D/<id>/``.

Why a child process per pair: a crash, a hang or an out-of-memory kill of one registration then ends that
child only, never the Dask worker (whose other pairs, and whose connection to the scheduler, survive), and
each pair runs exactly the command a user would run by hand. The cost is one interpreter start per pair
(measured in BENCHMARKS.md against calling the CLI directly).

Folder of a pair (all written in ``D/.tmp/<id>-<random>/`` and renamed to ``D/<id>/`` when complete):
``transform.h5`` and ``summary.json`` (success), the outputs the command's options ask for (``--output-qa
qa.png``: ``D/<id>/qa.png``), ``error.json`` (failure: one-line message, exit code),
``pair.json`` (status, input hash, command, time, peak memory, attempts), ``stderr.log``, ``previews/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

TRANSFORM = "transform.h5"
SUMMARY = "summary.json"
ERROR = "error.json"
RECORD = "pair.json"
ATTEMPTS = ".batch/attempts.jsonl"
#: Names the batch writes in a pair's folder (an output option may not take them).
RESERVED = (TRANSFORM, SUMMARY, ERROR, RECORD, "stdout.log", "stderr.log", "previews", "steps")


def output_options(argv: list) -> list:
    """``[(index of the value, option, value)]`` for every ``--output-*`` option in a command (``--opt value``
    and ``--opt=value``; ``--output-dir`` excepted: the pipeline's, set by the batch)."""
    found = []
    for i, word in enumerate(argv):
        if not word.startswith("--output-") or word.startswith("--output-dir"):
            continue
        if "=" in word:
            option, value = word.split("=", 1)
            found.append((i, option, value))
        elif i + 1 < len(argv):
            found.append((i + 1, word, argv[i + 1]))
    return found


def check_pair_outputs(argv: list, where: str) -> None:
    """The optional outputs a batch's command asks for (``--output-resampled r.nii.gz``) are written into each
    pair's folder, so they must be plain relative names.

    Raises:
        InputError: an absolute path or one leaving the pair's folder (every pair would overwrite it).
    """
    from ..errors import InputError

    for _, option, value in output_options(argv):
        p = Path(value)
        if p.is_absolute() or ".." in p.parts or not value:
            raise InputError(f"{where}: {option} {value}: give a file name; each pair writes it into its own folder "
                             "D/<id>/ (an absolute path would be overwritten by every pair)")
        if p.parts[0] in RESERVED:
            raise InputError(f"{where}: {option} {value}: that name is the batch's own file in D/<id>/; choose another")


def localize_outputs(argv: list, folder: Path) -> list:
    """``argv`` with every ``--output-*`` value made a path inside ``folder`` (the pair's staging folder)."""
    out = list(argv)
    for i, option, value in output_options(argv):
        out[i] = f"{option}={folder / value}" if out[i].startswith(option + "=") else str(folder / value)
    return out


def log_attempt(out_root, **event) -> None:
    """Append one JSON line to ``D/.batch/attempts.jsonl`` (one ``write`` with O_APPEND: lines never mix)."""
    path = Path(out_root) / ATTEMPTS
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps({"time": round(time.time(), 3), "pid": os.getpid(), "host": socket.gethostname(), **event}) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the complete folder ``tmp`` (a previous result is moved aside, then removed)."""
    trash = None
    if final.exists():
        trash = final.parent / ".tmp" / f"old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)
    os.rename(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _status_text(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"killed by signal {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"exit code {code}"


def resident_memory(pid: int):
    """Resident memory (bytes) of process ``pid``: ``/proc/<pid>/statm`` on Linux, psutil elsewhere (when
    installed); ``None`` when it cannot be read (process gone, or no way to measure here)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:  # noqa: BLE001 - no psutil, or the process already ended
        return None


def _watch_memory(proc: subprocess.Popen, state: dict, memory_limit: int, poll: float) -> None:
    """Poll the child's resident memory until ``state["done"]`` is set; kill the child when it and this process
    (the worker running it) together hold more than ``memory_limit`` bytes: the limit is the worker's, and a
    pair's memory lives in its child. Runs beside the blocking wait, so the pair's end is seen at once."""
    me = os.getpid()
    while not state["done"].wait(poll):
        rss = resident_memory(proc.pid)
        if rss is None:  # the child ended between two polls (or memory cannot be read: rusage gives the peak)
            return
        together = rss + (resident_memory(me) or 0)
        state["peak"] = max(state["peak"], rss)
        state["peak_worker"] = max(state["peak_worker"], together)
        if memory_limit and together > memory_limit:
            with state["lock"]:
                if not state["done"].is_set():
                    state["killed"] = True
                    proc.kill()
            return


def run_child(argv: list, folder: Path, *, threads: int, memory_limit: int = 0, poll: float = 0.25) -> dict:
    """Run ``python -m RegistrationSuiteLib.cohort.child <this pid> -- argv`` with stdout/stderr in ``folder``.

    Returns ``{"code", "seconds", "cpu_seconds", "peak_rss_mb", "worker_peak_mb", "memory_killed"}``:
    ``peak_rss_mb`` is the child's peak resident memory, ``worker_peak_mb`` the largest sum of the child's and
    this process's resident memory seen while polling (what the worker's limit applies to; for a child that ended
    before the first poll, its peak plus this process's memory at the end), ``cpu_seconds`` the
    child's user + system CPU time. A child is killed (``memory_killed`` True) when that sum exceeds
    ``memory_limit`` bytes.
    """
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(max(1, threads))
    cmd = [sys.executable, "-m", "RegistrationSuiteLib.cohort.child", str(os.getpid()), "--", *argv]
    t0 = time.perf_counter()
    state = {"done": threading.Event(), "lock": threading.Lock(), "peak": 0, "peak_worker": 0, "killed": False}
    with open(folder / "stdout.log", "wb") as out, open(folder / "stderr.log", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        watcher = threading.Thread(target=_watch_memory, args=(proc, state, memory_limit, poll), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)  # blocking: rusage of this child (its peak memory, CPU time)
        with state["lock"]:
            state["done"].set()
        watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak = max(state["peak"], usage.ru_maxrss * 1024)  # ru_maxrss is in KiB on Linux
    if not state["peak_worker"]:  # a child that ended before the first poll: its peak plus this process's memory
        state["peak_worker"] = peak + (resident_memory(os.getpid()) or 0)
    return {"code": proc.returncode, "seconds": time.perf_counter() - t0,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": round(peak / 2**20, 1),
            "worker_peak_mb": round(state["peak_worker"] / 2**20, 1), "memory_killed": state["killed"]}


def run_pair(job: dict) -> dict:
    """Run one pair (the Dask task, or called directly without Dask); never raises for a failed pair.

    ``job``: ``id``, ``argv`` (the CLI command without ``--output``/``--json``), ``out_root``, ``hash``,
    ``fixed``, ``moving``, ``threads``, ``memory_limit`` (bytes, 0 = none), ``signal_retries``, ``previews``.
    Returns the pair's record (also written to ``D/<id>/pair.json``).
    """
    root = Path(job["out_root"])
    previous = _read_record(root / job["id"])
    if job.get("run_token") and previous.get("run_token") == job["run_token"] and previous.get("status") == "done":
        # Dask recomputes a finished task whose result lived on a worker that died; the pair is already
        # published by this batch run, so the task is idempotent: it returns the record, nothing runs twice.
        log_attempt(root, id=job["id"], event="already-done")
        return previous
    tmp = root / ".tmp" / f"{job['id']}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    log_attempt(root, id=job["id"], event="start")
    argv = [*localize_outputs(job["argv"], tmp), "--output", str(tmp / TRANSFORM), "--json"]
    if job["argv"][0] == "pipeline":  # keep each step's transforms and summary beside the composed one
        argv += ["--output-dir", str(tmp / "steps")]
    attempts, run = 0, {}
    while True:  # a child killed by a signal (e.g. the OOM killer) is retried; ordinary failures are not
        attempts += 1
        run = run_child(argv, tmp, threads=job.get("threads", 1), memory_limit=job.get("memory_limit", 0))
        if run["code"] >= 0 or run["memory_killed"] or attempts > job.get("signal_retries", 0):
            break
    record = {"id": job["id"], "hash": job["hash"], "fixed": job["fixed"], "moving": job["moving"],
              "command": job["argv"], "exit_code": run["code"], "time_s": round(run["seconds"], 3),
              "peak_memory_mb": run["peak_rss_mb"], "cpu_s": round(run["cpu_seconds"], 3),
              "worker_peak_memory_mb": run["worker_peak_mb"], "memory_limit_mb": round(job.get("memory_limit", 0) / 2**20, 1),
              "child_attempts": attempts, "worker": socket.gethostname(),
              "run_token": job.get("run_token")}
    if run["code"] == 0 and (tmp / TRANSFORM).exists():
        record.update(_success(tmp, job))
    else:
        message = _last_error_line(tmp / "stderr.log") or _status_text(run["code"])
        if run["memory_killed"]:
            message = (f"the pair's process and its worker exceeded the memory limit of {job['memory_limit'] / 2**30:.1f} GiB "
                       "per worker (the pair's process was killed)")
        record.update(status="failed", message=message)
        write_json(tmp / ERROR, {"message": message, "exit_code": run["code"], "status": _status_text(run["code"])})
    write_json(tmp / RECORD, record)
    publish(tmp, root / job["id"])
    log_attempt(root, id=job["id"], event=record["status"])
    return record


def _success(folder: Path, job: dict) -> dict:
    lines = (folder / "stdout.log").read_text(errors="replace").strip().splitlines()
    summary = {}
    for line in reversed(lines):
        try:
            summary = json.loads(line)
            break
        except ValueError:
            continue
    write_json(folder / SUMMARY, summary)
    out = {"status": "done", "message": ""}
    from .quality import doubtful_reasons, folding_percent

    out["doubtful"] = doubtful_reasons(summary)
    out["score"], out["confidence"] = summary.get("score"), summary.get("confidence")
    try:
        import SimpleITK as sitk

        out["folding_percent"] = folding_percent(sitk.ReadTransform(str(folder / TRANSFORM)))
        if job.get("previews", True):
            from .previews import render_pair_previews

            render_pair_previews(job["fixed"], job["moving"], folder / TRANSFORM, folder / "previews")
    except Exception as exc:  # noqa: BLE001 - a preview must never turn a finished registration into a failure
        out["preview_error"] = f"{type(exc).__name__}: {exc}"
    return out


def _read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _last_error_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.exists() else []
    msgs = [ln for ln in lines if not ln.startswith("[") and "WARNING" not in ln]
    return (msgs or lines or [""])[-1][:500]


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str))
