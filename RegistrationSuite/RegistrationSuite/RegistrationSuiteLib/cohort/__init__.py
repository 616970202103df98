"""Chains of registrations, cohort batches and the review report.

Light at import (no torch, no Dask): :mod:`.chain` composes transforms and lists the valid chains,
:mod:`.pairs` reads a cohort CSV and hashes inputs, :mod:`.runner` runs one pair in a child process
(:mod:`.child`), :mod:`.batch` schedules the pairs (Dask distributed when installed), :mod:`.quality` reads
doubtful flags and folding, :mod:`.previews` draws the review images (:mod:`.png` encodes them) and
:mod:`.report` writes the self-contained HTML review page.
"""
