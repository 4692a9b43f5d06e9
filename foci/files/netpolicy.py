"""Where Foci may send outgoing HTTP requests: one address policy for model downloads and job webhooks.

A URL passes when its scheme is http or https and every address its host resolves to is a public one; loopback,
private, link-local, multicast, unspecified and reserved addresses (IPv4, IPv6 and IPv4-mapped IPv6) are refused
unless an allow-list names the host, the address or a network holding it. The host is resolved the way the
connection will resolve it (`socket.getaddrinfo`), so decimal (`http://2130706433/`), octal and short forms of
127.0.0.1 are caught too. :func:`open_url` applies the policy to the first URL and again to every redirect, follows
only http(s) redirects, and at most `max_redirects` of them.

Names are resolved once for the check and again by the connection; a host whose DNS answer changes between the
two (DNS rebinding) is not caught here.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_MAX_REDIRECTS = 5
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]


class AddressRefused(ValueError):
    """A URL Foci may not request: not http(s), no host, an unresolvable host or a refused address."""


class UnresolvableHost(AddressRefused):
    """The host name does not resolve (now)."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (what a connection to it would try), as text."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise UnresolvableHost(f"cannot resolve host {host!r}: {error}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: Address) -> bool:
    """False for loopback, private, link-local, multicast, unspecified and reserved addresses."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (address.is_loopback or address.is_private or address.is_link_local or address.is_multicast
                or address.is_unspecified or address.is_reserved)


@dataclass(frozen=True)
class AddressPolicy:
    """Which hosts outgoing requests may reach.

    `allow` names hosts (`localhost`, `hooks.lan`), addresses (`127.0.0.1`, `::1`) or networks (`10.0.0.0/8`)
    that are accepted even though they are not public. `resolver` is injectable for tests.
    """

    allow: tuple[str, ...] = ()
    resolver: Resolver = field(default=resolve_host, compare=False, repr=False)

    def __post_init__(self) -> None:
        for entry in self.allow:
            if not isinstance(entry, str) or not entry.strip():
                raise ValueError(f"allow-list entries must be host names, addresses or networks, got {entry!r}")
            _network(entry)  # a malformed network such as 10.0.0.0/33 fails here, not at the first request

    def allowing(self, *hosts: str) -> AddressPolicy:
        """This policy with `hosts` added to the allow-list."""
        return AddressPolicy(allow=(*self.allow, *(h for h in hosts if h)), resolver=self.resolver)

    def check(self, url: str) -> str:
        """Return `url` if it may be requested; else raise :class:`AddressRefused` saying why."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise AddressRefused(f"{url!r} is not a valid URL: {error}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise AddressRefused(f"only http:// and https:// URLs with a host are allowed, got {url!r}")
        host = parts.hostname.lower().rstrip(".")
        if self._host_allowed(host):
            return url
        addresses = self.resolver(host, port or (443 if scheme == "https" else 80))
        if not addresses:
            raise AddressRefused(f"host {host!r} of {url!r} resolves to no address")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if not is_public(address) and not self._address_allowed(address):
                raise AddressRefused(
                    f"{url!r} points at {address}, a {_kind(address)} address; Foci does not send requests there "
                    "unless the allow-list names it")
        return url

    def _host_allowed(self, host: str) -> bool:
        bare = host.strip("[]")
        for entry in self.allow:
            if entry.strip().strip("[]").lower().rstrip(".") == bare:
                return True
        try:
            return self._address_allowed(ipaddress.ip_address(bare))
        except ValueError:
            return False

    def _address_allowed(self, address: Address) -> bool:
        candidates: list[Address] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        networks = [network for entry in self.allow if (network := _network(entry)) is not None]
        return any(candidate in network for candidate in candidates for network in networks
                   if candidate.version == network.version)


def _network(entry: str) -> Network | None:
    """The network an allow-list entry names, or None for a host name."""
    text = entry.strip().strip("[]")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        if "/" in text:
            raise ValueError(f"allow-list entry {entry!r} is not a valid network") from None
        return None


def _kind(address: Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-public"


class _PolicyRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows a bounded number of redirects, each to an http(s) URL the policy accepts."""

    def __init__(self, policy: AddressPolicy, max_redirects: int) -> None:
        super().__init__()
        self.policy = policy
        self.max_redirections = max_redirects
        self.max_repeats = max_redirects

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        try:
            self.policy.check(newurl)
        except AddressRefused as error:
            raise AddressRefused(f"redirect from {req.full_url} refused: {error}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def build_opener(policy: AddressPolicy, *, max_redirects: int = DEFAULT_MAX_REDIRECTS,
                 handlers: Iterable[urllib.request.BaseHandler] = ()) -> urllib.request.OpenerDirector:
    """A urllib opener whose redirects are checked against `policy` (check the first URL with `policy.check`)."""
    return urllib.request.build_opener(_PolicyRedirectHandler(policy, max_redirects), *handlers)


def open_url(request: urllib.request.Request, policy: AddressPolicy, *, timeout: float,
             max_redirects: int = DEFAULT_MAX_REDIRECTS) -> Any:
    """Open `request` after checking its URL, checking every redirect too; raises :class:`AddressRefused`."""
    policy.check(request.full_url)
    return build_opener(policy, max_redirects=max_redirects).open(request, timeout=timeout)
