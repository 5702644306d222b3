"""Policies from configuration (stub: being written)."""

from __future__ import annotations

__all__ = ["control_token", "generation"]


def generation() -> int:
    """How many configurations have taken effect (0: none yet)."""
    return 0


def control_token() -> str | None:
    """The control endpoint's token from the configuration, or None (endpoint disabled)."""
    return None
