"""The SSRF guard for URLs an app gives us (``replyUrl``): where genrelay may send a request.

An app's URL is user input, and the worker that POSTs to it sits inside the operator's network, next
to Redis, cloud metadata endpoints and admin ports. So a URL is refused when:

* its scheme is not http or https, or it carries credentials (``user:pass@``);
* its host is an IP address, or a name resolving to any address, that is not public unicast:
  private, loopback, link-local, multicast, unspecified, reserved, CGNAT, site-local, and the same
  addresses hidden inside IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``);
* its host is an IPv4 address in a legacy numeric form (``2130706433``, ``0x7f.1``): the C library
  reads those as addresses, so they are how checks that look at the text get bypassed.

Names are resolved with the event loop's ``getaddrinfo`` and **every** address is checked; the
connection then goes to exactly those checked addresses, because the check *is* the resolver of the
HTTP session (:class:`GuardedResolver`). Checking first and letting the connector resolve again would
leave a window for DNS rebinding. Redirects are not followed by the session; the sender checks each
hop itself with :meth:`UrlGuard.check_url`.

``GENRELAY_DELIVERY_ALLOW_PRIVATE`` opens networks the operator trusts (``1``: every address, e.g. for
tests on 127.0.0.1; or a list of networks, e.g. the cluster's ``10.8.0.0/16``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from daemon.errors import DaemonError

__all__ = [
    "ALL_NETWORKS",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "UrlGuard",
    "UrlRefused",
    "address_problem",
    "url_problem",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What GENRELAY_DELIVERY_ALLOW_PRIVATE=1 means: trust every address.
ALL_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("0.0.0.0/0"),
    ipaddress.IPv6Network("::/0"),
)
ALLOWED_SCHEMES = ("http", "https")


class UrlRefused(DaemonError):
    """Raised when a URL points somewhere genrelay must not send a request to; never worth a retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"UrlRefused({self.reason!r})"


def url_problem(url: str | URL) -> str | None:
    """Why ``url`` cannot be a delivery URL, judged from its text alone (no DNS); ``None`` when it can.

    Cheap enough for request validation: scheme, host and credentials only.
    """
    try:
        parsed = url if isinstance(url, URL) else URL(url)
    except (ValueError, TypeError):
        return "not a valid URL"
    if parsed.scheme.lower() not in ALLOWED_SCHEMES:
        return "only http:// and https:// URLs are allowed"
    if parsed.user is not None or parsed.password is not None:
        return "credentials in the URL are not allowed"
    if not parsed.raw_host:
        return "the URL has no host"
    return None


def address_problem(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address, or ``None`` when it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            problem = address_problem(embedded)
            return f"{problem} (inside an IPv6 address)" if problem else None
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        # What is left: shared address space (CGNAT 100.64.0.0/10) and other special-purpose blocks.
        return "not a globally routable address"
    return None


def legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address the C library reads from a host like ``2130706433`` or ``0x7f.1``; ``None`` for a
    canonical dotted quad or a name."""
    if ":" in host or not host.isascii():
        return None
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return None
    address = ipaddress.IPv4Address(packed)
    return None if str(address) == host else address


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is written as one (brackets and zone id allowed)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class UrlGuard:
    """Decides where a request may go.

    Args:
        allowed_networks: Networks trusted although they are not public (``ALL_NETWORKS`` trusts all).
    """

    allowed_networks: tuple[IPNetwork, ...] = ()

    def check_url(self, url: str | URL) -> URL:
        """The parsed URL, when its text is acceptable and a literal IP host is allowed.

        A host name is only checked later, when :class:`GuardedResolver` resolves it for the connection.

        Raises:
            UrlRefused: The URL must not be requested; ``reason`` says why.
        """
        problem = url_problem(url)
        if problem is not None:
            raise UrlRefused(problem)
        parsed = url if isinstance(url, URL) else URL(url)
        # One trailing dot names the same host (an absolute name); the address checks ignore it.
        host = (parsed.host or "").removesuffix(".")
        if legacy_ipv4(host) is not None:
            raise UrlRefused(f"host {host!r} is an IPv4 address in a legacy numeric form")
        address = literal_address(host)
        if address is not None:
            self.check_address(address, host)
        return parsed

    def check_address(self, address: IPAddress, host: str) -> None:
        """Refuse ``address`` (which ``host`` names) unless it is public or in an allowed network.

        Raises:
            UrlRefused: The address is not allowed.
        """
        if self.allows(address):
            return
        problem = address_problem(address)
        if problem is None:
            return
        if host.strip("[]") == str(address):
            raise UrlRefused(f"{address} is {problem}")
        raise UrlRefused(f"{host} resolves to {address}, {problem}")

    def allows(self, address: IPAddress) -> bool:
        """Whether an operator-trusted network holds ``address`` (IPv4-mapped ones count as IPv4)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed_networks)

    def connector(self, *, limit: int = 100, ttl_dns_cache: int = 10) -> aiohttp.TCPConnector:
        """A connector that only connects to addresses this guard checked (see the module docstring).

        The DNS cache holds checked answers only: a refusal raises and is never cached.
        """
        return aiohttp.TCPConnector(resolver=GuardedResolver(self), limit=limit, ttl_dns_cache=ttl_dns_cache)


class GuardedResolver(AbstractResolver):
    """Resolves with the loop's ``getaddrinfo`` and refuses the name when any address is not allowed.

    Refusing on *any* bad address, rather than dropping the bad ones, also stops a name that mixes a
    public record with an internal one from reaching the internal one on a later connection.
    """

    def __init__(self, guard: UrlGuard, resolver: AbstractResolver | None = None) -> None:
        self._guard = guard
        # ThreadedResolver is the loop's getaddrinfo; another resolver can stand in (tests: a stub).
        self._resolver = resolver if resolver is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        self.check_all(host, (result["host"] for result in results))
        return results

    def check_all(self, host: str, addresses: Iterable[str]) -> None:
        for text in addresses:
            address = literal_address(text)
            if address is None:
                raise UrlRefused(f"{host} resolves to {text!r}, which is not an IP address")
            self._guard.check_address(address, host)

    async def close(self) -> None:
        await self._resolver.close()
