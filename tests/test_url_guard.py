"""The SSRF guard for an app's replyUrl: which URLs and addresses may be requested, checked as text,
through the resolver, and through a real aiohttp session against a loopback canary."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from daemon.url_guard import ALL_NETWORKS, GuardedResolver, UrlGuard, UrlRefused, url_problem

GUARD = UrlGuard()

REFUSED_ADDRESSES = [
    ("http://10.0.0.1/hook", "private"),
    ("http://10.255.255.254/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.254/", "private"),
    ("http://192.168.1.10:8080/hook", "private"),
    ("http://127.0.0.1/", "loopback"),
    ("http://127.255.0.9:9000/", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::1]/", "loopback"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456:789a::1]/", "private"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[::ffff:127.0.0.1]/", "loopback address (inside an IPv6 address)"),
    ("http://[::ffff:10.1.2.3]/", "private address (inside an IPv6 address)"),
    ("http://[::ffff:169.254.169.254]/", "link-local address (inside an IPv6 address)"),
    ("http://[2002:7f00:1::]/", "loopback address (inside an IPv6 address)"),  # 6to4 wrapping 127.0.0.1
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[ff0e::1]/", "multicast"),
    ("http://100.64.0.1/", "not a globally routable"),  # CGNAT
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://[fec0::1]/", "site-local"),
    ("https://198.18.0.1/", "private"),  # benchmarking range
]


@pytest.mark.parametrize(("url", "reason"), REFUSED_ADDRESSES)
def test_non_public_ip_hosts_are_refused_with_the_reason(url: str, reason: str) -> None:
    """Every private, loopback, link-local, multicast, unspecified and reserved literal is refused."""
    with pytest.raises(UrlRefused) as refused:
        GUARD.check_url(url)
    assert reason in refused.value.reason


@pytest.mark.parametrize(
    "url",
    ["http://2130706433/", "http://0x7f.1/", "http://0x7f000001/", "http://017700000001/", "http://127.1/"],
)
def test_legacy_numeric_ipv4_forms_are_refused(url: str) -> None:
    """The C library reads these as 127.0.0.1; they are refused as text, before any resolution."""
    with pytest.raises(UrlRefused, match="legacy numeric form"):
        GUARD.check_url(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only http:// and https://"),
        ("ftp://example.com/x", "only http:// and https://"),
        ("gopher://example.com:70/", "only http:// and https://"),
        ("javascript:alert(1)", "only http:// and https://"),
        ("http://user:secret@example.com/hook", "credentials"),
        ("https://token@example.com/hook", "credentials"),
        ("http:///no-host", "no host"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_schemes_credentials_and_malformed_urls_are_refused(url: str, reason: str) -> None:
    """What the URL text says is enough to refuse these; the same check serves request validation."""
    assert reason in (url_problem(url) or "")
    with pytest.raises(UrlRefused, match=reason):
        GUARD.check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://8.8.8.8/hook",
        "http://1.1.1.1:8080/hook?token=abc",
        "https://[2606:4700:4700::1111]/hook",
        "https://93.184.215.14/",
        "https://app.example.com/hooks/genrelay?token=abc",  # a name: checked when resolved
        "HTTPS://App.Example.COM/hook",
    ],
)
def test_public_addresses_and_names_pass_the_text_check(url: str) -> None:
    """Public literals pass; a host name passes the text check and is judged by the resolver."""
    assert url_problem(url) is None
    assert GUARD.check_url(url).host


def test_allowed_networks_open_only_themselves() -> None:
    """GENRELAY_DELIVERY_ALLOW_PRIVATE as a list opens exactly those networks (IPv4-mapped included)."""
    guard = UrlGuard((ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.8.0.0/16")))
    for url in ("http://127.0.0.1:8080/", "http://10.8.3.4/", "http://[::ffff:10.8.0.1]/"):
        guard.check_url(url)
    for url in ("http://127.0.0.2/", "http://10.9.0.1/", "http://169.254.169.254/", "http://[::1]/"):
        with pytest.raises(UrlRefused):
            guard.check_url(url)
    UrlGuard(ALL_NETWORKS).check_url("http://[fe80::1]/")
    with pytest.raises(UrlRefused, match="only http"):
        UrlGuard(ALL_NETWORKS).check_url("file:///etc/passwd")


PRIVATE_V4 = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
]


@given(st.sampled_from(PRIVATE_V4), st.integers(min_value=0, max_value=2**32 - 1), st.integers(0, 3))
def test_every_non_public_ipv4_is_refused_in_every_spelling(
    network: ipaddress.IPv4Network, offset: int, spelling: int
) -> None:
    """Dotted, IPv4-mapped IPv6, integer and hex spellings of any address in a non-public range."""
    address = network.network_address + offset % network.num_addresses
    host = [
        str(address),
        f"[::ffff:{address}]",
        str(int(address)),
        hex(int(address)),
    ][spelling]
    with pytest.raises(UrlRefused):
        GUARD.check_url(f"http://{host}/hook")


class StubResolver(AbstractResolver):
    """A DNS answer chosen by the test (the guard's checks do not depend on where it came from)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_a_name_resolving_to_any_internal_address_is_refused() -> None:
    """One internal address among public ones is enough to refuse the name (rebinding by mixing)."""
    refused = GuardedResolver(GUARD, StubResolver("93.184.215.14", "10.1.2.3"))
    with pytest.raises(UrlRefused, match=r"app\.example resolves to 10\.1\.2\.3, a private address"):
        await refused.resolve("app.example", 443)
    public = GuardedResolver(GUARD, StubResolver("93.184.215.14", "2606:4700:4700::1111"))
    assert [r["host"] for r in await public.resolve("app.example", 443)] == [
        "93.184.215.14",
        "2606:4700:4700::1111",
    ]


async def test_the_system_resolver_answers_are_checked() -> None:
    """Through the loop's getaddrinfo: localhost and a hex spelling of 127.0.0.1 resolve to loopback."""
    resolver = GuardedResolver(GUARD)
    for name in ("localhost", "0x7f.1"):
        with pytest.raises(UrlRefused, match="loopback"):
            await resolver.resolve(name, 80, socket.AF_UNSPEC)
    opened = GuardedResolver(UrlGuard(ALL_NETWORKS))
    assert await opened.resolve("localhost", 80, socket.AF_INET)


@pytest.fixture
async def canary() -> AsyncIterator[tuple[TestServer, list[str]]]:
    """A loopback server that must never be reached; it records every request that does reach it."""
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="reached")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, hits
    finally:
        await server.close()


async def test_a_guarded_session_never_connects_to_a_refused_name(
    canary: tuple[TestServer, list[str]],
) -> None:
    """The guard is the session's resolver: ``localhost`` is refused before any connection is made,
    while the same server is reachable once its network is allowed."""
    server, hits = canary
    guard = UrlGuard()
    async with aiohttp.ClientSession(connector=guard.connector()) as session:
        with pytest.raises(UrlRefused, match="loopback"):
            async with session.post(f"http://localhost:{server.port}/steal", data=b"{}"):
                pass
    assert hits == []
    allowed = UrlGuard((ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")))
    async with aiohttp.ClientSession(connector=allowed.connector()) as session:
        async with session.post(f"http://localhost:{server.port}/ok", data=b"{}") as resp:
            assert resp.status == 200
    assert hits == ["/ok"]
