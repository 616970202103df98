"""Command-line tool ``registration-suite`` (also ``python -m RegistrationSuiteLib``).

Each command lives in its own module exposing ``add_parser(subparsers)`` and ``run(args) -> int``; errors
are one line on stderr with a non-zero exit (tracebacks only with ``--debug``).
"""
