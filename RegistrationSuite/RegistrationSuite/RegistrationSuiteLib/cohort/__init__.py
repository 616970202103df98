"""Chains of registrations, cohort batches and the review report.

Light at import (no torch, no Dask): :mod:`.chain` composes transforms and lists the valid chains,
:mod:`.pairs` reads a cohort CSV, :mod:`.runner` runs one pair in a child process, :mod:`.batch` schedules the
pairs (Dask distributed when installed) and :mod:`.report` writes the self-contained HTML review page.
"""
