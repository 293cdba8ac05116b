"""Provider adapters, by the name used in the accounts file."""

from __future__ import annotations

from daemon.providers.base import Provider, WebhookProvider
from daemon.providers.ltx import LtxProvider
from daemon.providers.useapi import LTX_STUDIO_OPERATIONS, UseapiProvider
from daemon.providers.vydra import VydraProvider

_LTX_STUDIO = UseapiProvider("ltxstudio", "ltxstudio", LTX_STUDIO_OPERATIONS)
_VYDRA = VydraProvider()
_PROVIDERS: dict[str, Provider] = {"ltx": LtxProvider(), "ltxstudio": _LTX_STUDIO, "vydra": _VYDRA}
_WEBHOOK_PROVIDERS: dict[str, WebhookProvider] = {"ltxstudio": _LTX_STUDIO, "vydra": _VYDRA}


def get_provider(name: str) -> Provider:
    return _PROVIDERS[name]


def webhook_provider(name: str) -> WebhookProvider | None:
    """The provider if it calls back (useapi services, vydra), else None."""
    return _WEBHOOK_PROVIDERS.get(name)


def provider_names() -> tuple[str, ...]:
    return tuple(sorted(_PROVIDERS))
