"""Webhook URL safety: schemes, every refused address range (IPv4, IPv6, IPv4 inside IPv6), the settings
that lift them, and names resolving to refused addresses (checked on every resolution, all answers)."""

from __future__ import annotations

import ipaddress

import pytest

from alerts.url_safety import UnsafeUrl, UrlPolicy, parse_webhook_url, refusal, resolve_checked

STRICT = UrlPolicy()
PRIVATE_OK = UrlPolicy(allow_http=True, allow_private=True)

REFUSED = {
    "0.0.0.0": "unspecified",
    "0.1.2.3": "unspecified",
    "::": "unspecified",
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "172.31.255.254": "private",
    "192.168.1.1": "private",
    "fd12:3456::1": "private",
    "fc00::1": "private",
    "169.254.1.1": "link-local",
    "fe80::1": "link-local",
    "100.64.0.1": "CGNAT",
    "100.127.255.254": "CGNAT",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "ff02::1": "multicast",
    "255.255.255.255": "broadcast",
    "240.0.0.1": "reserved",
    "198.18.0.1": "reserved",
    "192.0.2.10": "documentation",
    "2001:db8::1": "documentation",
    "169.254.169.254": "cloud metadata",
    "fd00:ec2::254": "cloud metadata",
    "100.100.100.200": "cloud metadata",
    # IPv4 carried inside IPv6 is judged as IPv4
    "::ffff:127.0.0.1": "loopback (inside ::ffff:7f00:1)",
    "::ffff:169.254.169.254": "cloud metadata (inside ::ffff:a9fe:a9fe)",
    "2002:a00:1::1": "private (inside 2002:a00:1::1)",  # 6to4 of 10.0.0.1
    "64:ff9b::7f00:1": "loopback (inside 64:ff9b::7f00:1)",  # NAT64 of 127.0.0.1
}
PUBLIC = ("93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e")


@pytest.mark.parametrize(("address", "reason"), sorted(REFUSED.items()))
def test_every_non_public_range_is_refused_by_name(address: str, reason: str) -> None:
    assert refusal(ipaddress.ip_address(address), STRICT) == reason
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(UnsafeUrl, match="address"):
        parse_webhook_url(f"https://{host}/hook", STRICT)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), STRICT) is None


def test_the_private_setting_lifts_every_range_but_metadata() -> None:
    for address, reason in REFUSED.items():
        expected = reason if reason.startswith("cloud metadata") else None
        assert refusal(ipaddress.ip_address(address), PRIVATE_OK) == expected, address


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/h", "https"),
        ("ftp://example.com/h", "https"),
        ("file:///etc/passwd", "https"),
        ("gopher://example.com", "https"),
        ("https://user:pw@example.com/h", "credentials"),
        ("https:///h", "no host"),
        ("https://example.com/h#frag", "fragment"),
        ("https://exa mple.com/h", "whitespace"),
        ("https://example.com:99999/h", "valid URL"),
        ("", "required"),
        ("https://example.com/" + "a" * 3000, "longer"),
    ],
)
def test_malformed_or_non_https_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(UnsafeUrl, match=message) as refused:
        parse_webhook_url(url, STRICT)
    assert refused.value.field == "url"


def test_http_only_with_its_setting() -> None:
    parsed = parse_webhook_url("http://example.com:8080/a/b?x=1", UrlPolicy(allow_http=True))
    assert (parsed.scheme, parsed.host, parsed.port, parsed.target) == ("http", "example.com", 8080, "/a/b?x=1")
    assert parse_webhook_url("https://EXAMPLE.com", STRICT).port == 443


def fixed(*answers: str) -> object:
    def resolver(host: str, port: int) -> list[str]:
        return list(answers)

    return resolver


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    url = parse_webhook_url("https://hooks.example.com/x", STRICT)  # no DNS at parse time
    with pytest.raises(UnsafeUrl, match="private address"):
        resolve_checked(url, STRICT, fixed("10.0.0.5"))  # type: ignore[arg-type]
    with pytest.raises(UnsafeUrl, match="cloud metadata"):
        resolve_checked(url, PRIVATE_OK, fixed("169.254.169.254"))  # type: ignore[arg-type]


def test_one_refused_answer_among_public_ones_refuses_the_name() -> None:
    url = parse_webhook_url("https://hooks.example.com/x", STRICT)
    with pytest.raises(UnsafeUrl, match="loopback"):
        resolve_checked(url, STRICT, fixed("93.184.216.34", "127.0.0.1"))  # type: ignore[arg-type]
    assert resolve_checked(url, STRICT, fixed("93.184.216.34", "2606:4700::1")) == [  # type: ignore[arg-type]
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:4700::1"),
    ]


def test_localhost_is_refused_through_the_real_resolver() -> None:
    url = parse_webhook_url("https://localhost/x", STRICT)
    with pytest.raises(UnsafeUrl, match="loopback"):
        resolve_checked(url, STRICT)


def test_unresolvable_names_are_refused() -> None:
    url = parse_webhook_url("https://no-such-host.invalid/x", STRICT)
    with pytest.raises(UnsafeUrl, match="does not resolve"):
        resolve_checked(url, STRICT)


def test_the_url_limit_is_the_columns() -> None:
    from alerts.url_safety import MAX_URL_LEN
    from models.webhook import MAX_URL_LEN as COLUMN_LEN

    assert MAX_URL_LEN == COLUMN_LEN
