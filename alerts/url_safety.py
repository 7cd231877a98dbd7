"""Webhook URLs are tenant input: which ones the service may call, checked before every connection.

A tenant names the URL, the service makes the request: without these checks a
webhook could reach the metadata service, the database or any host of the
private network (server-side request forgery). The contract:

* ``parse_webhook_url`` refuses what is not ``https://host[:port]/path`` (``http``
  only with WEBHOOK_ALLOW_HTTP), credentials in the URL and fragments;
* ``refusal(address)`` names the range an address falls in when it is refused:
  loopback, private, link-local, CGNAT, multicast, unspecified, reserved and
  documentation ranges, with IPv4 addresses carried inside IPv6 ones (mapped,
  6to4, NAT64) checked as IPv4. WEBHOOK_ALLOW_PRIVATE_ADDRESSES lifts this,
  except for the cloud metadata addresses, which no webhook ever needs;
* ``resolve_checked`` resolves the host once and refuses the URL if *any* of its
  addresses is refused; the caller connects to an address it returned, never
  to the name again, so a DNS answer that changes between the check and the
  connection (rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

MAX_URL_LEN = 2048
HTTPS_PORT = 443
HTTP_PORT = 80

# Metadata services of the clouds (AWS, GCP, Azure, Oracle on 169.254.169.254; AWS IPv6; Alibaba):
# refused even when private addresses are allowed.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# (what the range is, its networks); the first match names the refusal.
REFUSED_RANGES: tuple[tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]], ...] = (
    ("unspecified", _nets("0.0.0.0/8", "::/128")),
    ("loopback", _nets("127.0.0.0/8", "::1/128")),
    ("private", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10")),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10")),
    ("CGNAT", _nets("100.64.0.0/10")),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    ("broadcast", _nets("255.255.255.255/32")),
    ("reserved", _nets("240.0.0.0/4", "192.0.0.0/24", "198.18.0.0/15", "100::/64", "2001::/23")),
    ("documentation", _nets("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")),
)
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


class UnsafeUrl(ValueError):
    """The webhook URL may not be called; ``field`` names the input at fault."""

    field = "url"


@dataclass(frozen=True)
class UrlPolicy:
    """What the settings allow beyond public https addresses."""

    allow_http: bool = False
    allow_private: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> UrlPolicy:
        return cls(allow_http=settings.webhook_allow_http, allow_private=settings.webhook_allow_private_addresses)


@dataclass(frozen=True)
class WebhookUrl:
    """A parsed URL: what the connection needs (the host for SNI and the Host header, the port, the target)."""

    url: str
    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent in the request line


def parse_webhook_url(url: str, policy: UrlPolicy) -> WebhookUrl:
    """The URL's parts, or UnsafeUrl naming why it may not be a webhook (no DNS: ``resolve_checked`` does that)."""
    if not isinstance(url, str) or not url:
        raise UnsafeUrl("url is required")
    if len(url) > MAX_URL_LEN:
        raise UnsafeUrl(f"url is longer than {MAX_URL_LEN} characters")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise UnsafeUrl("url contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"url is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UnsafeUrl(f"url scheme must be https, got {scheme or 'none'!r}")
    if scheme == "http" and not policy.allow_http:
        raise UnsafeUrl("url scheme must be https (http is allowed only with WEBHOOK_ALLOW_HTTP)")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("url must not contain credentials (user:password@); the signature authenticates calls")
    if parts.fragment:
        raise UnsafeUrl("url must not contain a fragment (#...)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl("url has no host")
    literal = _literal(host)
    if literal is not None:
        check_address(literal, policy)
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return WebhookUrl(url=url, scheme=scheme, host=host, port=port or (HTTPS_PORT if scheme == "https" else HTTP_PORT),
                      target=target)  # fmt: skip


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped ::ffff:a.b.c.d, 6to4, NAT64 64:ff9b::/96), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress, policy: UrlPolicy) -> str | None:
    """Why ``address`` may not be called under ``policy`` (the range's name), or None if it may."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(address.exploded.split("%")[0])
        inner = _embedded_ipv4(address)
        if inner is not None:
            found = refusal(inner, policy)
            return None if found is None else f"{found} (inside {address})"
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    if policy.allow_private:
        return None
    for name, networks in REFUSED_RANGES:
        if any(address in network for network in networks if network.version == address.version):
            return name
    if not address.is_global:
        return "not globally routable"
    return None


def check_address(address: IPAddress, policy: UrlPolicy) -> None:
    """UnsafeUrl when ``address`` is refused."""
    found = refusal(address, policy)
    if found is not None:
        raise UnsafeUrl(
            f"url points to a {found} address ({address}); webhooks may only call public addresses"
            + ("" if found == "cloud metadata" else " unless WEBHOOK_ALLOW_PRIVATE_ADDRESSES is set")
        )


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), by the system's resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_checked(url: WebhookUrl, policy: UrlPolicy, resolver: Resolver = system_resolver) -> list[IPAddress]:
    """The addresses to connect to, every one of them allowed; UnsafeUrl if the name does not
    resolve or any address is refused (one refused answer refuses the URL: no address is picked around it)."""
    literal = _literal(url.host)
    if literal is not None:
        check_address(literal, policy)
        return [literal]
    try:
        answers = resolver(url.host, url.port)
    except (OSError, UnicodeError) as exc:
        raise UnsafeUrl(f"url host {url.host!r} does not resolve: {exc}") from None
    addresses = [ipaddress.ip_address(answer.split("%")[0]) for answer in answers]
    if not addresses:
        raise UnsafeUrl(f"url host {url.host!r} does not resolve")
    for address in addresses:
        check_address(address, policy)
    return addresses
