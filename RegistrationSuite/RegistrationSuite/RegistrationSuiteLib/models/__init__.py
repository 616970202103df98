"""Deep-learning model infrastructure shared by the learned methods.

- :mod:`.model_file`: one file per model with weights, network config, template and intensity metadata and a
  model card; strict loading (``torch.load(weights_only=True)``) with clear errors.
- :mod:`.registry`: shipped models (``data/models``) and the user models folder
  (``$REGISTRATION_SUITE_MODELS`` or ``~/.registration-suite/models``): list, resolve, install, clear.
- :mod:`.training`: a seeded, resumable training loop and augmentations.
"""

from .model_file import ModelFile, card_markdown, load_model, load_state_strict, save_model
from .registry import (
    ModelInfo,
    clear_user_models,
    install_model,
    list_models,
    remove_model,
    resolve_model,
    shipped_models_dir,
    user_models_dir,
)

__all__ = [
    "ModelFile",
    "ModelInfo",
    "card_markdown",
    "clear_user_models",
    "install_model",
    "list_models",
    "load_model",
    "load_state_strict",
    "remove_model",
    "resolve_model",
    "save_model",
    "shipped_models_dir",
    "user_models_dir",
]
