"""The outputs of one run, checked before the work and written as a set.

A command declares every output (:meth:`OutputSet.add`) before it computes anything: each path is made
absolute, its folder must exist and be writable, its extension must be one the writer supports, and it must
not resolve to an input (symlinks included) or to another output. Each output is then written under a
temporary name (:meth:`OutputSet.stage`); only when all of them succeeded does :meth:`OutputSet.commit`
rename them into place. If anything fails, every output already placed is taken back (a file it replaced is
restored), so a run leaves either all of its outputs or none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from ..errors import InputError
from .atomic import absolute_path, staging_folder

#: Image files SimpleITK writes (3D and 2D); ``.png``/``.jpg``/``.bmp`` hold 2D images only.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
IMAGE_SUFFIXES_2D_ONLY = (".png", ".jpg", ".jpeg", ".bmp")


class OutputWriteError(RuntimeError):
    """Writing one of the outputs failed; no output of the run was kept. The message names the option."""


def matching_suffix(path, suffixes: Sequence[str]) -> Optional[str]:
    """The longest of ``suffixes`` that ``path``'s name ends with (case-insensitive), or ``None``."""
    name = Path(path).name.lower()
    hits = [s for s in suffixes if name.endswith(s.lower())]
    return max(hits, key=len) if hits else None


def check_image_suffix(option: str, path, dimension: int) -> None:
    """Raise :class:`InputError` when ``path`` cannot hold a ``dimension``-D image."""
    suffix = matching_suffix(path, IMAGE_SUFFIXES)
    if suffix is None:
        raise InputError(f"{option}: image file must end with one of {', '.join(IMAGE_SUFFIXES)}, got {Path(path).name}")
    if dimension == 3 and suffix in IMAGE_SUFFIXES_2D_ONLY:
        raise InputError(f"{option}: {suffix} holds 2D images only; use .nii.gz, .nrrd or .mha for a 3D image")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class OutputSet:
    """Outputs of one run (see the module docstring).

    Args:
        inputs: ``{option: path}`` of the run's input files (``None`` and in-memory values are skipped); an
            output resolving to one of them is refused.
    """

    def __init__(self, inputs: Mapping[str, object] = ()):
        self._inputs = {opt: absolute_path(p) for opt, p in dict(inputs).items() if isinstance(p, (str, os.PathLike))}
        self._paths: Dict[str, Path] = {}
        self._checked_only: Dict[str, Path] = {}
        self._staged: Dict[str, Path] = {}
        self._work: list = []

    def add(self, option: str, path, suffixes: Optional[Sequence[str]] = None, *, in_set: bool = True) -> Path:
        """Declare output ``option`` (e.g. ``"--output-resampled"``) at ``path``; returns the absolute path.
        ``in_set=False``: checked the same way, but written by the caller outside the set (e.g. a report written
        after the set is committed).

        Raises:
            InputError: unsupported extension, missing or read-only folder, a folder at ``path``, or a path
                that resolves to an input or to another output.
        """
        target = absolute_path(path)
        if suffixes is not None and matching_suffix(target, suffixes) is None:
            raise InputError(f"{option}: file must end with one of {', '.join(suffixes)}, got {target.name}")
        if not target.parent.is_dir():
            raise InputError(f"{option}: folder does not exist: {target.parent}")
        if not os.access(target.parent, os.W_OK | os.X_OK):
            raise InputError(f"{option}: folder is not writable: {target.parent}")
        if target.is_dir():
            raise InputError(f"{option}: {target} is a folder; give a file name")
        for other, source in self._inputs.items():
            if _same_file(target, source):
                raise InputError(f"{option}: {target} is the input {other}; refusing to overwrite an input")
        for other, placed in {**self._paths, **self._checked_only}.items():
            if _same_file(target, placed):
                raise InputError(f"{option}: {target} is also {other}; give each output its own file")
        (self._paths if in_set else self._checked_only)[option] = target
        return target

    def path(self, option: str) -> Path:
        return self._paths[option]

    def __contains__(self, option: str) -> bool:
        return option in self._paths

    @property
    def paths(self) -> Dict[str, Path]:
        """``{option: absolute path}`` in declaration order."""
        return dict(self._paths)

    @contextlib.contextmanager
    def stage(self, option: str):
        """Yield the temporary path (a string, same file name) to write ``option`` to. A writer error is
        re-raised naming the option; nothing is kept."""
        target = self._paths[option]
        work = staging_folder(target)
        self._work.append(work)
        tmp = work / target.name
        try:
            yield str(tmp)
        except InputError as exc:
            raise InputError(f"{option}: could not write {target} ({exc})") from exc
        except (OSError, RuntimeError) as exc:
            reason = " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip()) or type(exc).__name__
            raise OutputWriteError(f"{option}: could not write {target} ({reason}); no output was kept") from exc
        if not tmp.exists():
            raise OutputWriteError(f"{option}: the writer produced no file for {target}; no output was kept")
        self._staged[option] = tmp

    def commit(self) -> list:
        """Move every staged output into place; on failure restore what was there and re-raise.

        Returns:
            The absolute paths written, in declaration order.
        """
        missing = [opt for opt in self._paths if opt not in self._staged]
        if missing:
            self.discard()
            raise OutputWriteError(f"{missing[0]}: was never written; no output was kept")
        placed = []  # (target, backup or None)
        try:
            for option, target in self._paths.items():
                staged = self._staged[option]
                backup = None
                if target.exists() or target.is_symlink():
                    backup = staged.parent / f".previous.{target.name}"
                    os.replace(target, backup)
                placed.append((target, backup))
                os.replace(staged, target)
        except OSError as exc:
            for target, backup in reversed(placed):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, target)
                    elif target.exists():
                        target.unlink()
            self.discard()
            raise OutputWriteError(f"{option}: could not move {target} into place ({exc}); no output was kept") from exc
        self.discard()
        return list(self._paths.values())

    def discard(self) -> None:
        """Remove every temporary file; outputs already committed stay."""
        for work in self._work:
            shutil.rmtree(work, ignore_errors=True)
        self._work.clear()
        self._staged.clear()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()
