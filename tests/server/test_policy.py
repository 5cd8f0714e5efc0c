"""DestinationPolicy without I/O: first-match rules, protected addresses, the name check."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socksauth.protocol import Command
from socksauth.rules import Action, Rule
from socksauth.server.policy import DestinationPolicy, effective_address

CONNECT, BIND, UDP = Command.CONNECT, Command.BIND, Command.UDP_ASSOCIATE
ALLOW, DENY = Action.ALLOW, Action.DENY


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def allowed(
    policy: DestinationPolicy,
    host: str,
    port: int = 443,
    *,
    user: str | None = "alice",
    command: Command = CONNECT,
    name: str | None = None,
) -> bool:
    return policy.check_address(user, command, ip(host), port, name).allowed


# --- the safe default ----------------------------------------------------------------------------

PROTECTED = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "169.254.169.254",
    "169.254.0.1",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "100.100.100.200",
    "::1",
    "::",
    "fe80::1",
    "ff02::1",
    "fd00:ec2::254",
    # IPv6 spellings of protected IPv4 addresses
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "::ffff:0.0.0.0",
]

REACHABLE = ["93.184.216.34", "10.1.2.3", "172.16.0.1", "192.168.1.1", "2001:db8::1", "fd12::1"]


@pytest.mark.parametrize("host", PROTECTED)
def test_protected_addresses_are_denied_by_default(host: str) -> None:
    verdict = DestinationPolicy().check_address("alice", CONNECT, ip(host), 80)
    assert not verdict.allowed
    assert verdict.reason.startswith("protected: ")


@pytest.mark.parametrize("host", REACHABLE)
def test_public_and_private_addresses_are_allowed_by_default(host: str) -> None:
    assert allowed(DestinationPolicy(), host)


@pytest.mark.parametrize("host", ["10.1.2.3", "172.31.255.255", "192.168.1.1", "100.64.0.1",
                                  "fd12::1", "::ffff:10.0.0.1"])  # fmt: skip
def test_deny_private_protects_the_private_ranges(host: str) -> None:
    assert not allowed(DestinationPolicy(deny_private=True), host)
    assert allowed(DestinationPolicy(deny_private=True), "93.184.216.34")


def test_the_proxys_own_listen_address_is_protected_on_its_port_only() -> None:
    policy = DestinationPolicy(own_endpoints=[("10.0.0.5", 1080), ("0.0.0.0", 1081)])
    assert not allowed(policy, "10.0.0.5", 1080)
    assert not allowed(policy, "::ffff:10.0.0.5", 1080)
    assert allowed(policy, "10.0.0.5", 1081)
    # A wildcard listener needs nothing extra: 0.0.0.0 and loopback are protected anyway.
    assert not allowed(policy, "0.0.0.0", 1081)


def test_a_rule_unlocking_loopback_does_not_open_the_proxys_own_ports_on_it() -> None:
    own = [("127.0.0.1", 1080), ("127.0.0.1", 9180)]
    broad = DestinationPolicy([Rule(action=ALLOW, network=net("127.0.0.0/8"))], own_endpoints=own)
    assert allowed(broad, "127.0.0.1", 8080)
    assert not allowed(broad, "127.0.0.1", 1080)
    assert not allowed(broad, "127.0.0.1", 9180)
    exact = DestinationPolicy([Rule(action=ALLOW, network=net("127.0.0.1/32"))], own_endpoints=own)
    assert allowed(exact, "127.0.0.1", 1080)


def test_ipv6_forms_carrying_ipv4_are_decided_as_ipv4() -> None:
    assert effective_address(ip("::ffff:1.2.3.4")) == ip("1.2.3.4")
    assert effective_address(ip("::1.2.3.4")) == ip("1.2.3.4")
    assert effective_address(ip("64:ff9b::1.2.3.4")) == ip("1.2.3.4")
    assert effective_address(ip("::1")) == ip("::1")
    assert effective_address(ip("::")) == ip("::")
    policy = DestinationPolicy([Rule(action=DENY, network=net("1.2.3.0/24"))])
    assert not allowed(policy, "::ffff:1.2.3.4")


# --- unlocking protected addresses ---------------------------------------------------------------


def test_an_allow_rule_inside_a_protected_range_unlocks_it() -> None:
    policy = DestinationPolicy(
        [Rule(action=ALLOW, network=net("127.0.0.1/32"), port_min=8080, port_max=8080)]
    )
    assert allowed(policy, "127.0.0.1", 8080)
    assert allowed(policy, "::ffff:127.0.0.1", 8080)
    assert not allowed(policy, "127.0.0.1", 8081)
    assert not allowed(policy, "127.0.0.2", 8080)


@pytest.mark.parametrize(
    "rule",
    [
        Rule(action=ALLOW),
        Rule(action=ALLOW, network=net("0.0.0.0/0")),
        Rule(action=ALLOW, network=net("::/0")),
        Rule(action=ALLOW, domain="*.example.com"),
        Rule(action=ALLOW, domain="localhost"),
        Rule(action=ALLOW, username="alice", port_min=0, port_max=65535),
        Rule(action=ALLOW, network=net("100.64.0.0/10")),  # contains 100.100.100.200
    ],
    ids=str,
)
def test_broad_allow_rules_do_not_unlock_protected_addresses(rule: Rule) -> None:
    policy = DestinationPolicy([rule], deny_private=True)
    for host in PROTECTED:
        for name in (None, "evil.example.com", "localhost"):
            assert not allowed(policy, host, 80, name=name), (rule, host, name)


def test_a_broad_allow_before_a_narrow_one_does_not_hide_it() -> None:
    policy = DestinationPolicy(
        [
            Rule(action=ALLOW, network=net("0.0.0.0/0")),
            Rule(action=ALLOW, network=net("127.0.0.0/8")),
        ]
    )
    assert allowed(policy, "127.0.0.1")
    assert allowed(policy, "8.8.8.8")


def test_a_deny_rule_applies_to_protected_addresses_before_an_unlocking_allow() -> None:
    policy = DestinationPolicy(
        [
            Rule(action=DENY, username="mallory"),
            Rule(action=ALLOW, network=net("127.0.0.0/8")),
        ]
    )
    assert allowed(policy, "127.0.0.1", user="alice")
    assert not allowed(policy, "127.0.0.1", user="mallory")


def test_deny_private_is_unlocked_by_a_rule_inside_the_private_range() -> None:
    policy = DestinationPolicy([Rule(action=ALLOW, network=net("10.1.0.0/16"))], deny_private=True)
    assert allowed(policy, "10.1.2.3")
    assert not allowed(policy, "10.2.0.1")


# --- the rule matrix: first match wins -----------------------------------------------------------

CORPORATE = DestinationPolicy(
    [
        Rule(action=ALLOW, username="ops", network=net("10.0.0.0/8"), port_min=22, port_max=22),
        Rule(action=DENY, network=net("10.0.0.0/8")),
        Rule(action=ALLOW, domain="*.corp.example", port_min=443, port_max=443),
        Rule(action=ALLOW, domain="corp.example", port_min=443, port_max=443),
        Rule(action=DENY, command=UDP),
        Rule(action=ALLOW, port_min=80, port_max=80),
        Rule(action=ALLOW, port_min=443, port_max=443),
        Rule(action=DENY),
    ]
)


@pytest.mark.parametrize(
    ("user", "command", "host", "port", "name", "expected"),
    [
        ("ops", CONNECT, "10.1.1.1", 22, None, True),
        ("alice", CONNECT, "10.1.1.1", 22, None, False),
        ("ops", CONNECT, "10.1.1.1", 23, None, False),
        ("alice", CONNECT, "10.1.1.1", 443, "intranet.corp.example", False),  # rule 2 first
        ("alice", CONNECT, "192.0.2.10", 443, "intranet.corp.example", True),
        ("alice", CONNECT, "192.0.2.10", 443, "a.b.corp.example", True),
        ("alice", CONNECT, "192.0.2.10", 443, "corp.example", True),
        ("alice", CONNECT, "192.0.2.10", 443, "CORP.EXAMPLE.", True),
        ("alice", CONNECT, "192.0.2.10", 8443, "intranet.corp.example", False),
        ("alice", CONNECT, "192.0.2.10", 443, "notcorp.example", True),  # rule 7, any name
        ("alice", CONNECT, "192.0.2.10", 25, "notcorp.example", False),
        ("alice", CONNECT, "192.0.2.10", 80, None, True),
        ("alice", UDP, "192.0.2.10", 443, None, False),
        ("alice", BIND, "192.0.2.10", 443, None, True),
        (None, CONNECT, "192.0.2.10", 80, None, True),
        (None, CONNECT, "10.0.0.1", 22, None, False),
    ],
)
def test_rule_matrix(
    user: str | None, command: Command, host: str, port: int, name: str | None, expected: bool
) -> None:
    verdict = CORPORATE.check_address(user, command, ip(host), port, name)
    assert verdict.allowed is expected, verdict


def test_the_verdict_names_the_rule_that_decided() -> None:
    verdict = CORPORATE.check_address("alice", CONNECT, ip("10.9.9.9"), 80)
    assert verdict.reason == "rule 2: deny 10.0.0.0/8"
    assert DestinationPolicy().check_address(None, CONNECT, ip("8.8.8.8"), 53).reason == (
        "no rule matched"
    )


def test_a_suffix_pattern_does_not_match_the_bare_domain_or_lookalikes() -> None:
    policy = DestinationPolicy([Rule(action=DENY, domain="*.example.com")])
    assert not allowed(policy, "192.0.2.1", name="www.example.com")
    assert allowed(policy, "192.0.2.1", name="example.com")
    assert allowed(policy, "192.0.2.1", name="badexample.com")
    assert allowed(policy, "192.0.2.1", name="example.com.evil")


def test_domain_rules_do_not_match_ip_literals() -> None:
    policy = DestinationPolicy([Rule(action=ALLOW, domain="example.com"), Rule(action=DENY)])
    assert allowed(policy, "192.0.2.1", name="example.com")
    assert not allowed(policy, "192.0.2.1")


def test_ipv6_networks() -> None:
    policy = DestinationPolicy([Rule(action=DENY, network=net("2001:db8::/32"))])
    assert not allowed(policy, "2001:db8::1")
    assert allowed(policy, "2001:db9::1")
    assert allowed(policy, "192.0.2.1")


# --- deciding before resolving -------------------------------------------------------------------


def test_a_denied_name_is_decided_before_resolving() -> None:
    policy = DestinationPolicy([Rule(action=DENY, domain="*.tracker.example")])
    verdict = policy.check_request("alice", CONNECT, "ads.tracker.example", 443)
    assert verdict is not None and not verdict.allowed
    assert policy.check_request("alice", CONNECT, "example.org", 443) is None


def test_a_rule_that_needs_the_address_defers_the_decision() -> None:
    policy = DestinationPolicy(
        [Rule(action=ALLOW, network=net("192.0.2.0/24")), Rule(action=DENY, domain="x.example")]
    )
    assert policy.check_request("alice", CONNECT, "x.example", 443) is None
    assert allowed(policy, "192.0.2.7", name="x.example")
    assert not allowed(policy, "198.51.100.7", name="x.example")


def test_an_allow_that_needs_no_address_still_leaves_the_addresses_to_check() -> None:
    policy = DestinationPolicy([Rule(action=ALLOW, domain="localhost")])
    assert policy.check_request("alice", CONNECT, "localhost", 80) is None
    assert not allowed(policy, "127.0.0.1", name="localhost")


def test_the_request_check_of_a_udp_association_knows_no_target() -> None:
    policy = DestinationPolicy(
        [
            Rule(action=DENY, domain="*.example"),
            Rule(action=DENY, port_min=53, port_max=53),
            Rule(action=DENY, username="mallory", command=UDP),
        ]
    )
    assert policy.check_request("alice", UDP, None, None) is None
    verdict = policy.check_request("mallory", UDP, None, None)
    assert verdict is not None and not verdict.allowed
    assert policy.check_host("alice", UDP, "a.example", 53).allowed is False
    assert policy.check_host("alice", UDP, "b.org", 5353).allowed is True
    assert policy.check_host("alice", UDP, "127.0.0.1", 5353).allowed is False


# --- rule validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["", "*", "*.", "a.*.b", "**.b", ".example.com", "a..b"])
def test_malformed_domain_patterns_are_refused(domain: str) -> None:
    with pytest.raises(ValueError, match="domain"):
        Rule(action=DENY, domain=domain)


@pytest.mark.parametrize(("low", "high"), [(10, 9), (-1, 5), (1, 65536), (None, 5), (5, None)])
def test_bad_port_ranges_are_refused(low: int | None, high: int | None) -> None:
    with pytest.raises(ValueError, match="port"):
        Rule(action=DENY, port_min=low, port_max=high)


def test_rules_print_as_the_cli_writes_them() -> None:
    rule = Rule(
        action=DENY,
        username="bob",
        command=CONNECT,
        network=net("10.0.0.0/8"),
        domain="*.Example.COM.",
        port_min=1,
        port_max=1023,
    )
    assert str(rule) == "deny user bob connect 10.0.0.0/8 *.example.com port 1-1023"


# --- properties ----------------------------------------------------------------------------------

addresses = st.one_of(
    st.ip_addresses(v=4), st.ip_addresses(v=6), st.ip_addresses(v=4).map(
        lambda a: ipaddress.IPv6Address("::ffff:" + str(a))
    )
)  # fmt: skip
broad_rules = st.builds(
    Rule,
    action=st.just(ALLOW),
    username=st.none() | st.just("alice"),
    domain=st.none() | st.sampled_from(["localhost", "*.example.com"]),
    command=st.none() | st.sampled_from(list(Command)),
)


@given(address=addresses, rules=st.lists(broad_rules, max_size=4), port=st.integers(0, 65535))
def test_rules_without_a_network_never_reach_a_protected_address(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, rules: list[Rule], port: int
) -> None:
    base = DestinationPolicy()
    policy = DestinationPolicy(rules)
    if not base.check_address("alice", CONNECT, address, port).allowed:
        for name in (None, "localhost", "www.example.com"):
            assert not policy.check_address("alice", CONNECT, address, port, name).allowed


@given(address=addresses, port=st.integers(0, 65535))
def test_mapped_and_plain_ipv4_get_the_same_verdict(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    policy = DestinationPolicy([Rule(action=DENY, network=net("198.51.100.0/24"))])
    plain = effective_address(address)
    assert (
        policy.check_address(None, CONNECT, address, port).allowed
        == policy.check_address(None, CONNECT, plain, port).allowed
    )
