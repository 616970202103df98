"""``registration-suite cache``: show or clear the on-disk result cache (:mod:`RegistrationSuiteLib.cache`)."""

from __future__ import annotations

import json

HELP = "show or clear the on-disk result cache (e.g. TSPM's fixed → template alignments)"


def add_parser(sub):
    p = sub.add_parser(
        "cache",
        help=HELP,
        description=(
            "Results that depend only on their inputs are kept on disk so a later run (a new process) reuses "
            "them: TSPM's fixed → template alignment, keyed by the fixed image's content and every setting it "
            "depends on. Folder: $REGISTRATION_SUITE_CACHE, else $XDG_CACHE_HOME/registration-suite "
            "(~/.cache/registration-suite). Without options, shows the folder, entry count and size."
        ),
    )
    p.add_argument("--clear", action="store_true", help="delete every cache entry (only files the cache wrote)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..cache import cache_usage, clear_cache

    removed = clear_cache() if args.clear else None
    usage = cache_usage()
    if args.json:
        print(json.dumps(dict(usage, removed=removed), separators=(",", ":")))
        return 0
    if removed is not None:
        print(f"removed {removed} cache entries")
    print(f"cache folder: {usage['folder']}  entries: {usage['entries']}  size: {usage['bytes'] / 1e3:.1f} kB")
    return 0
