"""Provider adapters, by the name used in the accounts file."""

from __future__ import annotations

from daemon.providers.base import Provider
from daemon.providers.ltx import LtxProvider

_PROVIDERS: dict[str, Provider] = {"ltx": LtxProvider()}


def get_provider(name: str) -> Provider:
    return _PROVIDERS[name]


def provider_names() -> tuple[str, ...]:
    return tuple(sorted(_PROVIDERS))
