"""Where the autoscaler's machines come from: a provider creates, lists, drains and deletes them."""

from __future__ import annotations

from autoscaler.providers.base import Machine, Provider, ProviderError, QuotaExceeded

__all__ = ["Machine", "Provider", "ProviderError", "QuotaExceeded", "make"]


def make(name: str, **options: object) -> Provider:
    """The provider called `name` (the CLI's --provider), built with its options."""
    if name == "local":
        from autoscaler.providers.local import LocalProvider

        return LocalProvider(**options)  # type: ignore[arg-type]
    raise ProviderError(f"unknown provider {name!r}; available: local")
