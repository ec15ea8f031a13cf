"""The config schema (every key, its default and what it may hold) and its validation.

Owns: `base_config()` (experiments start from it), `validate_config()` (one-line errors naming the
key and what is allowed, raised before anything compiles) and `load_experiment()`.
Must not import models, data or training code.
"""
from research.config.base import base_config
from research.config.validate import ConfigError, validate_config

__all__ = ["base_config", "ConfigError", "validate_config"]
