"""One sub-package per registration method, each with a config dataclass and ``register_<method>()``."""
