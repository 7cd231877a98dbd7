"""Configuration: one immutable Settings object built from the environment."""

from config.settings import DEFAULTS, Settings, get_settings

__all__ = ["DEFAULTS", "Settings", "get_settings"]
