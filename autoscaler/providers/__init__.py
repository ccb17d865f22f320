"""Where the autoscaler's machines come from: a provider creates, lists, drains and deletes them."""

from __future__ import annotations

from autoscaler.providers.base import CapacityExceeded, Machine, Provider, ProviderError

__all__ = ["Machine", "Provider", "ProviderError", "CapacityExceeded", "make"]


PROVIDERS = ("local", "docker", "hcloud")


def make(name: str, **options: object) -> Provider:
    """The provider called `name` (the CLI's --provider), built with its options: always `r` (a str
    Redis client), `fleet`, `cap` and `env` (the workers' environment), plus the provider's own settings
    (the CLI's --provider-option KEY=VALUE, as strings). An unknown setting is a ProviderError."""
    # Each provider is imported when asked for: hcloud brings httpx and rq (half a second), docker its image
    # builder, and `--provider local` needs neither.
    if name == "local":
        from autoscaler.providers.local import LocalProvider

        return _build(LocalProvider, options)
    if name == "docker":
        from autoscaler.providers.docker import DockerProvider

        return _build(DockerProvider, options)
    if name == "hcloud":
        from autoscaler.providers.hcloud import TOKEN_ENV, HcloudProvider

        if "token" in options:  # a command-line token would show in `ps` and shell history
            raise ProviderError(f"hcloud provider: pass the API token in {TOKEN_ENV}, not as an option")
        return _build(HcloudProvider, options)
    raise ProviderError(f"unknown provider {name!r}; available: {', '.join(PROVIDERS)}")


def _build(cls: type, options: dict[str, object]) -> Provider:
    try:
        return cls(**options)
    except TypeError as exc:  # an option the provider does not take
        raise ProviderError(f"{cls.name} provider: {exc}") from None
