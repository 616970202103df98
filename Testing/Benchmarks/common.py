"""Shared helpers for the benchmark scripts: data location, timing, peak memory, Markdown tables."""

from __future__ import annotations

import os
import re
import resource
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("REGISTRATION_SUITE_SHARED_DATA", REPO.parent / "shared" / "data"))
BENCHMARKS_MD = REPO / "BENCHMARKS.md"


def require_shared_data(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        sys.exit(f"benchmark needs {path} (../shared/data beside the repository)")
    return path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def update_benchmarks_md(section: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- BEGIN section -->`` and ``<!-- END section -->``."""
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)


def busy_cpu_seconds() -> float:
    """CPU seconds all cores of this machine have spent busy since boot (Linux ``/proc/stat``; NaN elsewhere).
    The difference across a run, minus the run's own CPU time, is what the rest of the machine used meanwhile."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0.0  # already counted in user and nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")
