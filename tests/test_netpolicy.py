"""relay/http/netpolicy.py on its own: which resolved addresses a webhook may reach."""

import pytest

from relay.http.netpolicy import NetworkPolicy, RefusedAddress

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::127.0.0.1",  # IPv4-compatible
    "64:ff9b::7f00:1",  # NAT64
    "2002:7f00:1::",  # 6to4
]
NON_GLOBAL = [
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # CGNAT
    "fc00::1",
    "fd12:3456::1",  # unique-local
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "240.0.0.1",
    "::ffff:10.1.2.3",
    "64:ff9b::a00:1",
]
ALWAYS_REFUSED = [
    "169.254.169.254",
    "169.254.1.1",
    "fe80::1",
    "fd00:ec2::254",
    "::ffff:169.254.169.254",
]


@pytest.mark.parametrize("address", LOOPBACK_SPELLINGS + NON_GLOBAL + ALWAYS_REFUSED)
def test_non_global_addresses_are_refused_by_default(address):
    with pytest.raises(RefusedAddress, match="not allowed|never allowed"):
        NetworkPolicy().check(address)


@pytest.mark.parametrize("address", LOOPBACK_SPELLINGS)
def test_allowing_loopback_allows_each_of_its_spellings(address):
    NetworkPolicy(["127.0.0.0/8", "::1/128"]).check(address)


@pytest.mark.parametrize("address", ALWAYS_REFUSED)
def test_link_local_and_metadata_stay_refused_whatever_is_allowed(address):
    with pytest.raises(RefusedAddress, match="never allowed"):
        NetworkPolicy(["0.0.0.0/0", "::/0"]).check(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"])
def test_global_addresses_pass(address):
    NetworkPolicy().check(address)


def test_an_allowed_private_network_allows_only_itself():
    policy = NetworkPolicy(["10.1.0.0/16"])
    policy.check("10.1.2.3")
    with pytest.raises(RefusedAddress, match="10.2.0.1 is a private address"):
        policy.check("10.2.0.1")


def test_the_reason_names_the_address_and_its_kind():
    reason = r"::ffff:7f00:1 \(127\.0\.0\.1\) is a loopback address"
    with pytest.raises(RefusedAddress, match=reason):
        NetworkPolicy().check("::ffff:127.0.0.1")
