"""Model files: weights plus everything needed to use them, loaded strictly.

A model file is a ``torch.save``d dictionary whose content ``torch.load(weights_only=True)`` accepts (only
tensors, strings, numbers, lists and dicts)::

    {
      "format": "registration-suite-model", "format_version": 1,
      "kind": "tspm_patch_position",             # which method/network the weights belong to
      "network": {"name": ..., "config": {...}},   # architecture, rebuilt before loading the weights
      "state_dict": {name: tensor, ...},
      "template": {"name", "sha256", "geometry", "nifti_gz": uint8 tensor} or None,
      "intensity": {...},                          # how inputs are normalised
      "card": {...},                               # model card: data, licence, command, seed, metrics
      "extra": {...},
    }

Loading checks every level (readable, format, version, kind, keys, shapes, template checksum) and raises
:class:`~RegistrationSuiteLib.errors.InputError` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import InputError

FORMAT = "registration-suite-model"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "kind", "network", "state_dict", "template", "intensity", "card")
CARD_KEYS = ("name", "summary", "training_data", "data_licence", "command", "seed", "metrics")


@dataclass
class ModelFile:
    """The validated content of a model file.

    Attributes:
        kind: the method the weights belong to (e.g. ``"tspm_patch_position"``).
        network_name, network_config: architecture (a JSON-like dict the method turns into its config).
        state_dict: the weights (CPU tensors).
        template: ``None`` or a dict with ``name``, ``sha256``, ``geometry`` and ``nifti_gz`` (bytes).
        intensity: input normalisation settings.
        card: the model card (see :data:`CARD_KEYS`).
        extra: method-specific metadata.
        path: where it was read from (``None`` if built in memory).
    """

    kind: str
    network_name: str
    network_config: Dict[str, Any]
    state_dict: Dict[str, Any]
    template: Optional[Dict[str, Any]] = None
    intensity: Dict[str, Any] = field(default_factory=dict)
    card: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def name(self) -> str:
        return str(self.card.get("name") or (self.path.stem if self.path else "model"))


def _template_payload(template: Optional[dict]):
    import torch

    if template is None:
        return None
    data = bytes(template["nifti_gz"])
    return {
        "name": str(template["name"]),
        "sha256": str(template["sha256"]),
        "geometry": _plain(dict(template.get("geometry", {})), "template geometry"),
        "nifti_gz": torch.frombuffer(bytearray(data), dtype=torch.uint8).clone(),
        "nifti_gz_sha256": hashlib.sha256(data).hexdigest(),
    }


def save_model(model: ModelFile, path) -> Path:
    """Write ``model`` atomically to ``path`` (``.pt``); the model card must have every key of
    :data:`CARD_KEYS` (values may be ``None``)."""
    import torch

    from ..io import atomic_output

    missing = [k for k in CARD_KEYS if k not in model.card]
    if missing:
        raise InputError(f"model card: missing keys {missing}")
    # Plain JSON types only (a str subclass such as torch.__version__ would break weights_only loading).
    plain = {k: _plain(getattr(model, k), k) for k in ("card", "network_config", "intensity", "extra")}
    content = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "network": {"name": str(model.network_name), "config": plain["network_config"]},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict.items()},
        "template": _template_payload(model.template),
        "intensity": plain["intensity"],
        "card": plain["card"],
        "extra": plain["extra"],
    }
    with atomic_output(path) as tmp:
        torch.save(content, tmp)
    return Path(path)


def _plain(value, name: str):
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise InputError(f"model {name}: expected JSON-serialisable content ({exc})") from None


def load_model(path, *, kind: Optional[str] = None) -> ModelFile:
    """Read and validate a model file (``torch.load(weights_only=True)``: no code is executed).

    Args:
        path: the ``.pt`` file.
        kind: if given, the file must hold a model of this kind.

    Raises:
        InputError: missing, unreadable or corrupt file, wrong format/version/kind, malformed content, or an
            embedded template whose checksum does not match.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"model: file not found: {path}")
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/zip error means the same thing to the user
        raise InputError(
            f"model: cannot read {path}: not a valid RegistrationSuite model file (corrupt or truncated?) "
            f"[{type(exc).__name__}]"
        ) from None
    return _validate(content, path, kind)


def _validate(content, path: Path, kind: Optional[str]) -> ModelFile:
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise InputError(f"model: {path} is not a RegistrationSuite model file (expected format '{FORMAT}')")
    missing = [k for k in REQUIRED_KEYS if k not in content]
    if missing:
        raise InputError(f"model: {path} lacks the keys {missing}; expected {list(REQUIRED_KEYS)}")
    if content["format_version"] != FORMAT_VERSION:
        raise InputError(f"model: {path} has format version {content['format_version']}, "
                         f"this RegistrationSuite reads version {FORMAT_VERSION}")
    if kind is not None and content["kind"] != kind:
        raise InputError(f"model: {path} holds a '{content['kind']}' model, expected a '{kind}' model")
    network = content["network"]
    if not isinstance(network, dict) or not isinstance(network.get("config"), dict) or "name" not in network:
        raise InputError(f"model: {path}: 'network' must be a dict with 'name' and 'config'")
    state = content["state_dict"]
    if not isinstance(state, dict) or not state:
        raise InputError(f"model: {path}: 'state_dict' is empty or not a dict of tensors")
    return ModelFile(
        kind=str(content["kind"]),
        network_name=str(network["name"]),
        network_config=dict(network["config"]),
        state_dict=dict(state),
        template=_load_template_payload(content["template"], path),
        intensity=dict(content["intensity"] or {}),
        card=dict(content["card"] or {}),
        extra=dict(content.get("extra") or {}),
        path=path,
    )


def _load_template_payload(payload, path: Path) -> Optional[dict]:
    if payload is None:
        return None
    keys = ("name", "sha256", "nifti_gz", "nifti_gz_sha256")
    if not isinstance(payload, dict) or any(k not in payload for k in keys):
        raise InputError(f"model: {path}: embedded template must have the keys {list(keys)}")
    data = payload["nifti_gz"].numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != payload["nifti_gz_sha256"]:
        raise InputError(f"model: {path}: embedded template fails its checksum (corrupt model file)")
    return {"name": payload["name"], "sha256": payload["sha256"], "geometry": dict(payload.get("geometry", {})),
            "nifti_gz": data}


def load_state_strict(module, state_dict: dict, path=None) -> None:
    """``module.load_state_dict(strict=True)`` with a one-line :class:`InputError` listing the differences."""
    expected, got = set(module.state_dict()), set(state_dict)
    where = f" {path}" if path else ""
    if expected != got:
        missing, unexpected = sorted(expected - got), sorted(got - expected)
        raise InputError(
            f"model:{where} weights do not match the network: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    for k, v in module.state_dict().items():
        if tuple(v.shape) != tuple(state_dict[k].shape):
            raise InputError(f"model:{where} weight '{k}' has shape {tuple(state_dict[k].shape)}, "
                             f"the network expects {tuple(v.shape)}")
    module.load_state_dict(state_dict, strict=True)


def card_markdown(card: dict) -> str:
    """The model card as Markdown (written beside a shipped model as ``<name>.md``)."""
    lines = [f"# Model card: {card.get('name', 'model')}", "", str(card.get("summary", "")), ""]
    for key, value in card.items():
        if key in ("name", "summary"):
            continue
        title = key.replace("_", " ").capitalize()
        if isinstance(value, (dict, list)):
            lines += [f"## {title}", "", "```json", json.dumps(value, indent=2), "```", ""]
        else:
            lines += [f"## {title}", "", str(value), ""]
    return "\n".join(lines)
