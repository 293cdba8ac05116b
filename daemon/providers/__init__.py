"""Provider adapters, by the name used in the accounts file."""

from __future__ import annotations

from daemon.providers.base import Provider, WebhookProvider
from daemon.providers.ltx import LtxProvider
from daemon.providers.useapi import SERVICES, make_provider
from daemon.providers.vydra import VydraProvider

# useapi.net services, one adapter each from its table entry: ltxstudio, kling, minimax, pixverse, runwayml.
_USEAPI: dict[str, WebhookProvider] = {name: make_provider(service) for name, service in SERVICES.items()}
_VYDRA = VydraProvider()
_PROVIDERS: dict[str, Provider] = {"ltx": LtxProvider(), **_USEAPI, "vydra": _VYDRA}
_WEBHOOK_PROVIDERS: dict[str, WebhookProvider] = {**_USEAPI, "vydra": _VYDRA}


def get_provider(name: str) -> Provider:
    return _PROVIDERS[name]


def webhook_provider(name: str) -> WebhookProvider | None:
    """The provider if it calls back (useapi services, vydra), else None."""
    return _WEBHOOK_PROVIDERS.get(name)


def provider_names() -> tuple[str, ...]:
    return tuple(sorted(_PROVIDERS))
