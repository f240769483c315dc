"""The configuration's error, apart from the loader, so a caller that only
catches it loads nothing else (the Claude Code hooks)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that must not be used; the message names key and value."""
