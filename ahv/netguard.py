"""SSRF guard for every URL ahv fetches on a client's behalf (inputs, webhooks).

Two layers, because neither is enough alone (research C26):
- `check_url` runs before the first request and before every redirect hop. aiohttp never
  calls a resolver for IP-literal hosts, so literals can only be stopped here.
- `GuardedResolver` filters what the connector actually connects to, so a name that resolved
  to a public address during the check cannot be re-pointed at an internal one before the
  connection is made (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from ahv.errors import AhvError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Spelled out instead of relying on `is_private`/`is_global` alone: their lists changed between
# Python patch releases, and the guard must not loosen with an interpreter upgrade.
_BLOCKED: tuple[tuple[str, tuple[_V4 | _V6, ...]], ...] = (
    ("unspecified", (_V4("0.0.0.0/8"), _V6("::/128"))),
    ("loopback", (_V4("127.0.0.0/8"), _V6("::1/128"))),
    (
        "private",
        (
            _V4("10.0.0.0/8"),
            _V4("172.16.0.0/12"),
            _V4("192.168.0.0/16"),
            _V6("fc00::/7"),
            _V6("fec0::/10"),
        ),
    ),
    ("link-local", (_V4("169.254.0.0/16"), _V6("fe80::/10"))),
    ("carrier-grade NAT", (_V4("100.64.0.0/10"),)),
    ("multicast", (_V4("224.0.0.0/4"), _V6("ff00::/8"))),
    (
        "reserved",
        (
            _V4("192.0.0.0/24"),
            _V4("192.0.2.0/24"),
            _V4("192.88.99.0/24"),
            _V4("198.18.0.0/15"),
            _V4("198.51.100.0/24"),
            _V4("203.0.113.0/24"),
            _V4("240.0.0.0/4"),
            _V6("::/96"),
            _V6("64:ff9b:1::/48"),
            _V6("100::/64"),
            _V6("2001:db8::/32"),
        ),
    ),
)

_NAT64 = _V6("64:ff9b::/96")


class BlockedAddressError(OSError):
    """Every address a host resolved to is refused by the AddressPolicy."""

    def __init__(self, host: str, addresses: Sequence[str]) -> None:
        listed = ", ".join(addresses) or "none"
        super().__init__(f"host {host!r} resolves only to addresses that are not allowed: {listed}")
        self.host = host
        self.addresses = tuple(addresses)


class AddressPolicy:
    """Refuses non-public addresses; `allowed_networks` are explicit exceptions (fixtures)."""

    def __init__(self, allowed_networks: Sequence[str] = ()) -> None:
        self._allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)
        self._literal_verdicts: dict[str, tuple[bool, str | None]] = {}

    def literal_verdict(self, host: str) -> tuple[bool, str | None]:
        """(whether `host` is an IP literal, why it is refused or None). Memoised: parsing
        addresses is slow next to the rest of a job submission."""
        verdict = self._literal_verdicts.get(host)
        if verdict is None:
            literal = _literal_ip(host)
            verdict = (False, None) if literal is None else (True, self.blocked_reason(literal))
            if len(self._literal_verdicts) >= 4096:
                self._literal_verdicts.clear()
            self._literal_verdicts[host] = verdict
        return verdict

    def blocked_reason(self, ip: str | IPAddress) -> str | None:
        """None when `ip` may be contacted, else a short reason such as "loopback"."""
        try:
            addr = _parse(ip)
        except ValueError:
            return "not an IP address"
        # ::ffff:a.b.c.d reaches a.b.c.d, so it is judged (and allow-listed) as that address.
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr.version == net.version and addr in net for net in self._allowed):
            return None
        return _reason(addr)

    def is_allowed(self, ip: str | IPAddress) -> bool:
        return self.blocked_reason(ip) is None


def _parse(ip: str | IPAddress) -> IPAddress:
    if isinstance(ip, str):
        # getaddrinfo reports link-local IPv6 with a zone ("fe80::1%eth0").
        return ipaddress.ip_address(ip.split("%", 1)[0])
    return ip


def _reason(addr: IPAddress) -> str | None:
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            inner = _reason(embedded)
            if inner is not None:
                return f"{inner}, via embedded IPv4 {embedded}"
    for name, networks in _BLOCKED:
        if any(addr.version == net.version and addr in net for net in networks):
            return name
    # Backstop for ranges not listed above (e.g. IPv6 blocks that are reserved as a whole).
    if addr.is_multicast:
        return "multicast"
    if addr.is_loopback or addr.is_link_local or addr.is_unspecified:
        return "local"
    if addr.is_reserved:
        return "reserved"
    if addr.is_private:
        return "private"
    return None


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _not_allowed(field: str, detail: str) -> AhvError:
    return AhvError("url_not_allowed", f"{field}: {detail}", status=422)


async def check_url(url: str, policy: AddressPolicy, *, field: str) -> yarl.URL:
    """Parse `url` and require http(s) and that every address its host resolves to is allowed."""
    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError):
        raise _not_allowed(field, f"{url!r} is not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        shown = parsed.scheme or "(none)"
        raise _not_allowed(field, f"scheme {shown!r} is not allowed, only http and https")
    host = parsed.raw_host
    if not host:
        raise _not_allowed(field, f"{url!r} has no host")
    is_literal, reason = policy.literal_verdict(host)
    if is_literal:  # no DNS needed (forms like 2130706433 still go to getaddrinfo)
        if reason is not None:
            raise _not_allowed(field, f"host {host!r} is not a public address ({reason})")
        return parsed
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, parsed.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise _not_allowed(field, f"host {host!r} does not resolve") from None
    if not infos:
        raise _not_allowed(field, f"host {host!r} does not resolve")
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        reason = policy.blocked_reason(address)
        if reason is not None:
            shown = f"host {host!r}" if address == host else f"host {host!r} ({address})"
            raise _not_allowed(field, f"{shown} is not a public address ({reason})")
    return parsed


class GuardedResolver(AbstractResolver):
    """Resolves through `resolver` (default ThreadedResolver) and drops refused addresses."""

    def __init__(self, policy: AddressPolicy, resolver: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._resolver is None:
            # Created lazily: ThreadedResolver binds to the running loop at construction.
            self._resolver = aiohttp.ThreadedResolver()
        results = await self._resolver.resolve(host, port, family)
        kept = [r for r in results if self._policy.is_allowed(r["host"])]
        if not kept:
            raise BlockedAddressError(host, [r["host"] for r in results])
        return kept

    async def close(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()


def make_client_session(policy: AddressPolicy, *, limit: int = 100) -> aiohttp.ClientSession:
    """A session whose connections only reach addresses `policy` allows.

    Callers pass a per-request `aiohttp.ClientTimeout`. Cookies are not kept, so one
    client's URL cannot plant cookies that are sent along with another client's fetch.
    """
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy), limit=limit)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
