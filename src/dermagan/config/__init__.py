"""The project's configuration: params.yaml read once into one typed, validated ``Config``, and the
``Layout`` of every on-disk path and run name."""

from dermagan.config.load import load_config, load_params, read_yaml
from dermagan.config.schema import Config, ConfigError, build_config

__all__ = ["Config", "ConfigError", "build_config", "load_config", "load_params", "read_yaml"]
