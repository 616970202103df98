"""Machine-readable progress for ``--progress-json`` (the Slicer modules' child processes read it).

Stream: **stdout**, one JSON object per line, flushed at once. Progress lines are::

    {"event": "progress", "fraction": 0.42, "stage": "level 2/3", "message": "level 2/3: 400 rotations"}

``fraction`` is in [0, 1]; ``stage`` is the message's part before its first ``:`` (the whole message when it
has none), a coarse label that changes less often than the message. The **last line** of a successful run is
the ``--json`` summary (``RegistrationResult.summary()``: it has no ``"event"`` key); ``--progress-json``
implies ``--json``. Errors stay one human line on stderr with the CLI's exit codes (2 bad input,
1 registration failed, 3 cancelled, 4 unexpected). Progress lines are written at most every
``min_interval`` seconds, except the first, those that change the stage, and the final one (fraction 1).
"""

from __future__ import annotations

import json
import sys
import time

PROGRESS_EVENT = "progress"


def stage_of(message: str) -> str:
    """The coarse stage label of a progress message: its part before the first ``:``."""
    text = str(message or "").strip()
    return text.split(":", 1)[0].strip() if ":" in text else text


class JsonLinesProgress:
    """``progress(fraction, message)`` callback writing :data:`PROGRESS_EVENT` JSON lines to a stream."""

    def __init__(self, stream=None, min_interval: float = 0.1):
        self.stream = stream if stream is not None else sys.stdout
        self.min_interval = min_interval
        self._last_time = None
        self._last_stage = None

    def __call__(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        stage = stage_of(message)
        now = time.monotonic()
        due = self._last_time is None or now - self._last_time >= self.min_interval
        if not (due or stage != self._last_stage or fraction >= 1.0):
            return
        self._last_time, self._last_stage = now, stage
        line = {"event": PROGRESS_EVENT, "fraction": round(fraction, 6), "stage": stage, "message": str(message)}
        self.stream.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.stream.flush()


def add_progress_argument(parser) -> None:
    """``--progress-json`` on a command's parser (called for every command by ``cli.main``)."""
    parser.add_argument(
        "--progress-json", action="store_true",
        help="machine-readable progress: one JSON object per line on stdout, the last line the --json summary",
    )


def progress_for(args):
    """The progress callback a command passes to its method: JSON lines with ``--progress-json``, else the
    human progress line on stderr (none with ``--quiet``)."""
    if getattr(args, "progress_json", False):
        return JsonLinesProgress()
    from .common import StderrProgress

    return StderrProgress(not getattr(args, "quiet", False))


def parse_progress_line(line: str):
    """``("progress", dict)`` for a progress line, ``("summary", dict)`` for a JSON summary, ``(None, line)``
    for anything else (a library printing to stdout must not break the reader)."""
    text = line.strip()
    if not text.startswith("{"):
        return None, line
    try:
        record = json.loads(text)
    except ValueError:
        return None, line
    if not isinstance(record, dict):
        return None, line
    if record.get("event") == PROGRESS_EVENT:
        try:
            fraction = min(max(float(record.get("fraction", 0.0)), 0.0), 1.0)
        except (TypeError, ValueError):
            return None, line
        return "progress", {"fraction": fraction, "stage": str(record.get("stage", "")),
                            "message": str(record.get("message", ""))}
    return "summary", record
