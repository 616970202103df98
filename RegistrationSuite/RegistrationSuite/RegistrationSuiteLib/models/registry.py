"""Where models live: shipped with the package, or in the user's models folder.

- Shipped models: ``RegistrationSuiteLib/data/models/<name>.pt`` (read-only, with ``<name>.md`` model cards).
- User models: the folder given as an argument, else ``$REGISTRATION_SUITE_MODELS``, else
  ``~/.registration-suite/models``. A user model with the same name as a shipped one takes precedence.

A model is named by its file stem; :func:`resolve_model` also accepts a path to a ``.pt`` file.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..errors import InputError

ENV_VAR = "REGISTRATION_SUITE_MODELS"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "models"
MODEL_SUFFIX = ".pt"


@dataclass
class ModelInfo:
    """One entry of :func:`list_models`.

    Attributes:
        name: file stem (what ``--model NAME`` takes).
        path: the ``.pt`` file.
        source: ``"shipped"`` or ``"user"``.
        kind: model kind from the file (``None`` if the file could not be read).
        size_bytes: file size.
        summary: the model card's one-line summary, or the read error.
    """

    name: str
    path: Path
    source: str
    kind: Optional[str]
    size_bytes: int
    summary: str

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "source": self.source, "kind": self.kind,
                "size_bytes": self.size_bytes, "summary": self.summary}


def user_models_dir(path=None) -> Path:
    """The user models folder: ``path``, else ``$REGISTRATION_SUITE_MODELS``, else ``~/.registration-suite/models``
    (not created here)."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".registration-suite" / "models"


def shipped_models_dir() -> Path:
    return SHIPPED_DIR


def _describe(path: Path, source: str) -> ModelInfo:
    from .model_file import load_model

    try:
        model = load_model(path)
        kind, summary = model.kind, str(model.card.get("summary", ""))
    except InputError as exc:
        kind, summary = None, f"unreadable: {exc}"
    return ModelInfo(path.stem, path, source, kind, path.stat().st_size, summary)


def list_models(kind: Optional[str] = None, *, user_dir=None) -> List[ModelInfo]:
    """Shipped and user models (user ones first), optionally only those of ``kind``."""
    out = []
    for source, folder in (("user", user_models_dir(user_dir)), ("shipped", shipped_models_dir())):
        if folder.is_dir():
            out += [_describe(p, source) for p in sorted(folder.glob(f"*{MODEL_SUFFIX}"))]
    return [m for m in out if kind is None or m.kind == kind]


def resolve_model(name_or_path, *, user_dir=None) -> Path:
    """Path of a model given by name (user folder first, then shipped) or by path.

    Raises:
        InputError: no such file or name (the message lists the available names).
    """
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.suffix == MODEL_SUFFIX or os.sep in text or "/" in text:
        if candidate.is_file():
            return candidate
        raise InputError(f"model: file not found: {candidate}")
    for folder in (user_models_dir(user_dir), shipped_models_dir()):
        path = folder / f"{text}{MODEL_SUFFIX}"
        if path.is_file():
            return path
    names = sorted({m.name for m in list_models(user_dir=user_dir)})
    raise InputError(f"model: no model named '{text}'; available: {', '.join(names) or 'none'}")


def install_model(path, *, user_dir=None, name: Optional[str] = None, overwrite: bool = False) -> Path:
    """Validate a model file and copy it (and its ``.md`` card if present) into the user models folder."""
    from .model_file import load_model

    src = Path(path)
    load_model(src)
    folder = user_models_dir(user_dir)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{name or src.stem}{MODEL_SUFFIX}"
    if dest.exists() and not overwrite:
        raise InputError(f"model: {dest} already exists (pass overwrite=True to replace it)")
    shutil.copyfile(src, dest)
    card = src.with_suffix(".md")
    if card.is_file():
        shutil.copyfile(card, dest.with_suffix(".md"))
    return dest


def remove_model(name: str, *, user_dir=None) -> List[Path]:
    """Delete one user model (and its card); shipped models cannot be removed."""
    folder = user_models_dir(user_dir)
    path = folder / f"{name}{MODEL_SUFFIX}"
    if not path.is_file():
        raise InputError(f"model: no user model named '{name}' in {folder}")
    removed = [path] + [p for p in (path.with_suffix(".md"),) if p.is_file()]
    for p in removed:
        p.unlink()
    return removed


def clear_user_models(*, user_dir=None) -> List[Path]:
    """Delete every model file (``*.pt``) and model card (``*.md``) in the user models folder; other files
    and the shipped models are left alone. Returns the deleted paths."""
    folder = user_models_dir(user_dir)
    if not folder.is_dir():
        return []
    removed = sorted(folder.glob(f"*{MODEL_SUFFIX}")) + sorted(folder.glob("*.md"))
    for p in removed:
        p.unlink()
    return removed
