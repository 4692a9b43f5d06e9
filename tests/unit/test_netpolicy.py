"""The outgoing-address policy shared by downloads and webhooks (foci.files.netpolicy)."""

from __future__ import annotations

import pytest

from foci.files.netpolicy import AddressPolicy, AddressRefused

FAKE_DNS = {"public.example": ["93.184.216.34"], "rebound.example": ["93.184.216.34", "127.0.0.1"],
            "internal.example": ["10.20.30.40"], "v6.example": ["2606:2800:220:1::1"], "empty.example": []}


def fake_resolver(host: str, port: int) -> list[str]:
    if host in FAKE_DNS:
        return FAKE_DNS[host]
    from foci.files.netpolicy import resolve_host

    return resolve_host(host, port)  # IP literals in all their spellings, resolved the way connections do


def policy(*allow: str) -> AddressPolicy:
    return AddressPolicy(allow=allow, resolver=fake_resolver)


@pytest.mark.parametrize("url", ["http://public.example/x", "https://public.example:8443/x", "http://v6.example/",
                                 "http://93.184.216.34/", "HTTPS://PUBLIC.EXAMPLE/"])
def test_public_targets_pass(url: str) -> None:
    assert policy().check(url) == url


@pytest.mark.parametrize(("url", "kind"), [
    ("http://127.0.0.1/", "loopback"), ("http://localhost:7865/v1/jobs", "loopback"),
    ("http://2130706433/", "loopback"), ("http://0x7f.0.0.1/", "loopback"), ("http://127.1/", "loopback"),
    ("http://[::1]/", "loopback"), ("http://[::ffff:127.0.0.1]/", "loopback"), ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"), ("http://10.0.0.1/", "private"), ("http://192.168.1.1/", "private"),
    ("http://[fd00::1]/", "private"), ("http://169.254.169.254/", "link-local"), ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.251/", "multicast"), ("http://internal.example/", "private"),
    ("http://rebound.example/", "loopback"),
])
def test_non_public_targets_are_refused_after_resolution(url: str, kind: str) -> None:
    with pytest.raises(AddressRefused, match=f"a {kind} address"):
        policy().check(url)


@pytest.mark.parametrize("url", ["ftp://public.example/x", "file:///etc/passwd", "gopher://x/", "http:///nohost",
                                 "http://public.example:port/", "http://empty.example/"])
def test_other_schemes_and_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(AddressRefused):
        policy().check(url)


def test_allow_list_names_hosts_addresses_and_networks() -> None:
    assert policy("localhost").check("http://localhost:1/")
    assert policy("127.0.0.1").check("http://localhost:1/")  # resolves to an allowed address
    assert policy("127.0.0.0/8").check("http://2130706433/")
    assert policy("10.0.0.0/8").check("http://internal.example/")
    assert policy("::1").check("http://[::1]:9/")
    assert policy("[::1]").check("http://[::1]:9/")
    assert policy("127.0.0.1").check("http://[::ffff:127.0.0.1]/")
    with pytest.raises(AddressRefused):
        policy("localhost").check("http://127.0.0.1/")  # a name allows that name, not its addresses
    with pytest.raises(AddressRefused):
        policy("10.0.0.0/8").check("http://rebound.example/")  # every address must pass
    with pytest.raises(ValueError, match="not a valid network"):
        AddressPolicy(allow=("10.0.0.0/33",))
    assert policy().allowing("127.0.0.1").check("http://127.0.0.1/")
