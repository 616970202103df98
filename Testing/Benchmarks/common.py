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
