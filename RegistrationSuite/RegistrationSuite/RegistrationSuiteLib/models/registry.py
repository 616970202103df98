"""Where models live: shipped with the package, or in the user's models folder.

- Shipped models: ``RegistrationSuiteLib/data/models/<name>.pt`` (read-only, with ``<name>.md`` model cards).
- User models: the folder given as an argument, else ``$REGISTRATION_SUITE_MODELS``, else
  ``~/.registration-suite/models``. A user model with the same name as a shipped one takes precedence.

A model is named by its file stem; :func:`resolve_model` also accepts a path to a ``.pt`` file.

The user folder may be any folder (``$REGISTRATION_SUITE_MODELS``), so nothing is deleted there unless this
registry put it there: :func:`install_model` copies atomically and records each file it wrote, with its size
and SHA-256, in the folder's manifest (``.registration-suite-manifest.json``); :func:`remove_model` and
:func:`clear_user_models` delete only files listed there and still unchanged. Models copied into the folder
by hand are used, listed, and never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..errors import InputError

ENV_VAR = "REGISTRATION_SUITE_MODELS"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "models"
MODEL_SUFFIX = ".pt"
MANIFEST_NAME = ".registration-suite-manifest.json"


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict:
    """``{file name: {"size": bytes, "sha256": hex}}`` of the files this registry installed in ``folder``."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    files = content.get("files", {}) if isinstance(content, dict) else {}
    return {str(k): v for k, v in files.items() if isinstance(v, dict)}


def _write_manifest(folder: Path, files: dict) -> None:
    from ..io.atomic import atomic_output

    with atomic_output(Path(folder) / MANIFEST_NAME) as tmp:
        Path(tmp).write_text(json.dumps({"format": 1, "files": files}, indent=1, sort_keys=True))


def _installed_unchanged(folder: Path, name: str, manifest: dict) -> bool:
    if Path(name).name != name or name in ("", ".", ".."):  # a manifest entry never points outside the folder
        return False
    path = folder / name
    entry = manifest.get(name)
    return (entry is not None and path.is_file() and not path.is_symlink()
            and path.stat().st_size == entry.get("size") and _sha256(path) == entry.get("sha256"))


def install_model(path, *, user_dir=None, name: Optional[str] = None, overwrite: bool = False) -> Path:
    """Validate a model file and copy it (and its ``.md`` card if present) into the user models folder.

    Each file is copied under a temporary name and renamed into place (a failed copy leaves nothing), then
    recorded in the folder's manifest so that :func:`remove_model` / :func:`clear_user_models` may delete it.
    """
    from ..io.atomic import atomic_output
    from .model_file import load_model

    src = Path(path)
    load_model(src)
    folder = user_models_dir(user_dir)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{name or src.stem}{MODEL_SUFFIX}"
    if dest.exists() and not overwrite:
        raise InputError(f"model: {dest} already exists (pass overwrite=True to replace it)")
    if dest.exists() and os.path.samefile(src, dest):
        raise InputError(f"model: {src} is already the installed file {dest}")
    copies = [(src, dest)] + [(src.with_suffix(".md"), dest.with_suffix(".md"))] * src.with_suffix(".md").is_file()
    manifest = read_manifest(folder)
    for source, target in copies:
        with atomic_output(target) as tmp:
            shutil.copyfile(source, tmp)
        manifest[target.name] = {"size": target.stat().st_size, "sha256": _sha256(target)}
    _write_manifest(folder, manifest)
    return dest


def remove_model(name: str, *, user_dir=None) -> List[Path]:
    """Delete one user model (and its card) that :func:`install_model` installed; shipped models and files
    copied in by hand are never deleted."""
    folder = user_models_dir(user_dir)
    path = folder / f"{name}{MODEL_SUFFIX}"
    if not path.is_file():
        raise InputError(f"model: no user model named '{name}' in {folder}")
    manifest = read_manifest(folder)
    if not _installed_unchanged(folder, path.name, manifest):
        raise InputError(f"model: {path} was not installed by RegistrationSuite (or changed since); delete it "
                         "yourself if you mean to")
    removed = [p for p in (path, path.with_suffix(".md")) if _installed_unchanged(folder, p.name, manifest)]
    for p in removed:
        p.unlink()
        manifest.pop(p.name, None)
    _write_manifest(folder, manifest)
    return removed


def clear_user_models(*, user_dir=None) -> List[Path]:
    """Delete the model files and cards that :func:`install_model` put in the user models folder (listed in
    its manifest and unchanged since); everything else in the folder, and the shipped models, are left
    alone. Returns the deleted paths."""
    folder = user_models_dir(user_dir)
    if not folder.is_dir():
        return []
    manifest = read_manifest(folder)
    removed = [folder / n for n in sorted(manifest) if _installed_unchanged(folder, n, manifest)]
    for p in removed:
        p.unlink()
        manifest.pop(p.name, None)
    if manifest or (folder / MANIFEST_NAME).exists():
        _write_manifest(folder, {n: e for n, e in manifest.items() if (folder / n).exists()})
    return removed
