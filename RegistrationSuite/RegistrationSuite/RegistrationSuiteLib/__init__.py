"""RegistrationSuite core library: Qt-free, importable inside 3D Slicer and pip-installable outside.

Layers (imports go one way): core (``geometry``, ``io``, ``methods``) → MRML bridge (``mrml``, imports
``slicer`` lazily) → Slicer modules. Every method lives in ``methods/<name>/`` with a config dataclass and
one ``register_<name>(fixed, moving, config, ...) -> RegistrationResult``.
"""

__version__ = "0.1.0"

from .errors import InputError, RegistrationCancelled, RegistrationFailed
from .result import RegistrationResult

__all__ = ["InputError", "RegistrationCancelled", "RegistrationFailed", "RegistrationResult", "__version__"]
