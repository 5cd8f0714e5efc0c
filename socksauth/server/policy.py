"""DestinationPolicy: which targets a user may reach, decided by ordered rules (pure, no I/O).

Rules are read in order and the first one that matches decides (as a firewall does). A rule
matches when every criterion it has matches; a missing criterion matches anything:

    user      the authenticated username; no user: the rule is for everyone
    network   a CIDR the target's IP address lies in (IPv4 or IPv6)
    domain    the name the client asked for: ``example.com`` exactly, or ``*.example.com``
              for any name below it (not ``example.com`` itself)
    ports     one port or an inclusive range
    command   connect, bind or udp

When no rule matches, the target is allowed -- unless it is *protected*. Protected addresses
are denied whatever the order of the rules, and only an allow rule whose network lies inside
the protected range (``allow 127.0.0.1/32 port 8080``) unlocks them: a broad rule such as
``allow 0.0.0.0/0`` or ``allow *.example.com`` never does, so a DNS record that points a
harmless-looking name at 127.0.0.1 or 169.254.169.254 cannot open the proxy's own host or the
cloud's metadata service. Protected by default: loopback, link-local (cloud metadata), the
unspecified address and "this network", multicast, reserved IPv4 and limited broadcast, the
cloud metadata addresses outside link-local, and the proxy's own listen addresses. With
``deny_private`` the private ranges (RFC 1918, shared CGNAT space, IPv6 ULA and site-local)
are protected too.

A domain target is decided twice. Before resolving: when the first rule that could match
needs no address (it has no network) the name alone decides, so a denied name is not even
looked up. After resolving: every address is decided with the name still known, and the
dialer connects only to addresses that were allowed. Domain rules never match an IP literal:
a deny list of names is not a wall unless the addresses are denied too (or an allow list of
names ends in a rule that denies everything).

IPv4-mapped (``::ffff:127.0.0.1``), IPv4-compatible (``::127.0.0.1``) and NAT64 well-known
(``64:ff9b::127.0.0.1``) IPv6 addresses are decided as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from socksauth.protocol import Command
from socksauth.protocol.address import ip_literal
from socksauth.rules import Action, IPNetwork, Rule, normalise_domain

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision and the reason the log and the audit give for it."""

    allowed: bool
    reason: str  # "rule 3: deny 10.0.0.0/8", "protected: loopback", "no rule matched"


# Verdicts check_address remembers (tens of bytes each).
_DECIDED_MAX = 4096


@dataclass(frozen=True, slots=True)
class _Range:
    """Protected addresses as an integer interval, so a check is two comparisons."""

    version: int
    first: int
    last: int
    port: int | None  # only this port (the proxy's own listen addresses), else every port
    reason: str


_LOOPBACK = "loopback"
_LINK_LOCAL = "link-local (includes cloud metadata 169.254.169.254)"

# Denied unless an allow rule inside the range unlocks them (module docstring).
SAFE_DEFAULT: tuple[tuple[str, str], ...] = (
    # RFC 1122 §3.2.1.3: 0/8 is "this host on this network"; Linux connects 0.0.0.0 to itself.
    ("0.0.0.0/8", "this network (0.0.0.0 reaches the proxy's own host)"),
    ("127.0.0.0/8", _LOOPBACK),
    ("169.254.0.0/16", _LINK_LOCAL),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, and limited broadcast 255.255.255.255"),
    # Metadata services outside link-local: Alibaba Cloud and Azure's host platform.
    ("100.100.100.200/32", "cloud metadata"),
    ("168.63.129.16/32", "cloud host platform (Azure wireserver)"),
    ("::/128", "unspecified (:: reaches the proxy's own host)"),
    ("::1/128", _LOOPBACK),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
    ("fd00:ec2::254/128", "cloud metadata (AWS IPv6)"),
)

PRIVATE: tuple[tuple[str, str], ...] = (
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (RFC 6598, carrier-grade NAT)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fec0::/10", "site-local (deprecated, still routed by some networks)"),
)

_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")


def effective_address(address: IPAddress) -> IPAddress:
    """The address a connection to ``address`` really reaches, as far as the policy cares:
    IPv6 forms that carry an IPv4 address become that IPv4 address (:: and ::1 stay)."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def parse_address(host: str) -> IPAddress | None:
    """``host`` as an IP address (a zone index ``%eth0`` dropped), or None for a name."""
    return ip_literal(host.partition("%")[0])


def _range(network: IPNetwork, port: int | None, reason: str) -> _Range:
    return _Range(
        network.version, int(network.network_address), int(network.broadcast_address), port, reason
    )


def _inside(network: IPNetwork, protected: _Range) -> bool:
    return (
        network.version == protected.version
        and protected.first <= int(network.network_address)
        and int(network.broadcast_address) <= protected.last
    )


class DestinationPolicy:
    """First-match rules over targets, on top of the protected addresses.

    Args:
        rules: in evaluation order (the store sorts by position).
        deny_private: protect the private ranges too (``PRIVATE``).
        own_endpoints: (IP, port) of each listen address; a wildcard listen address (0.0.0.0
            or ::) is covered by the safe default whatever the port.
    """

    def __init__(
        self,
        rules: Sequence[Rule] = (),
        *,
        deny_private: bool = False,
        own_endpoints: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.rules = tuple(rules)
        self.deny_private = deny_private
        protected = [
            _range(ipaddress.ip_network(cidr), None, reason)
            for cidr, reason in (*SAFE_DEFAULT, *(PRIVATE if deny_private else ()))
        ]
        for host, port in own_endpoints:
            address = parse_address(host)
            if address is None or address.is_unspecified:
                continue
            address = effective_address(address)
            network = ipaddress.ip_network(address)
            protected.append(_range(network, port, "the proxy's own listen address"))
        # The most specific protection first: the proxy's own ports lie inside loopback (or
        # a private range), and a rule broad enough to unlock loopback must not also open
        # them; only a rule inside the endpoint's own address does.
        self._protected = tuple(sorted(protected, key=lambda p: p.port is None))
        # What each rule's verdict says, made once: a verdict is given on every request.
        self._reasons = tuple(f"rule {index}: {rule}" for index, rule in enumerate(self.rules, 1))
        # Verdicts on addresses already judged. A policy never changes (a reload makes a new
        # one), so they stay true; a busy client asks about the same few targets over and
        # over. Bounded: emptied when full.
        self._decided: dict[tuple[object, ...], Verdict] = {}

    def check_request(
        self, username: str | None, command: Command, name: str | None, port: int | None
    ) -> Verdict | None:
        """A verdict if it does not depend on the target's address, else None (then check
        each address with ``check_address``). ``name`` is None for an IP literal or when the
        target is not known yet (UDP ASSOCIATE); ``port`` None when it is not known.

        Only ever denies: an allow that needs no address is still subject to the protected
        addresses, which only the address tells.
        """
        name = None if name is None else normalise_domain(name)
        for index, rule in enumerate(self.rules, start=1):
            matched = rule._matches_except_address(username, command, port)
            if matched is False or not (name is None or rule._matches_name(name)):
                continue
            undecided = (
                matched is None
                or rule.network is not None
                or (rule.domain is not None and name is None)
            )
            if rule.action is Action.ALLOW:
                # Allowed, or maybe allowed: the address decides (protected addresses).
                return None
            if not undecided:
                return Verdict(False, self._reasons[index - 1])
            # A deny that may or may not match: either way no later rule can allow more
            # than it would without it, so keep looking for one that denies everything.
        return None

    def check_address(
        self,
        username: str | None,
        command: Command,
        address: IPAddress,
        port: int,
        name: str | None = None,
    ) -> Verdict:
        """Whether ``username`` may reach ``address``:``port`` with ``command``; ``name`` is
        the domain the client asked for, when it asked for one and this is what it resolved
        to."""
        key = (username, command, address, port, name)
        verdict = self._decided.get(key)
        if verdict is None:
            verdict = self._judge_address(username, command, address, port, name)
            if len(self._decided) >= _DECIDED_MAX:
                self._decided.clear()
            self._decided[key] = verdict
        return verdict

    def _judge_address(
        self,
        username: str | None,
        command: Command,
        address: IPAddress,
        port: int,
        name: str | None,
    ) -> Verdict:
        address = effective_address(address)
        name = None if name is None else normalise_domain(name)
        value = int(address)
        protection = next(
            (
                p
                for p in self._protected
                if p.version == address.version
                and p.first <= value <= p.last
                and (p.port is None or p.port == port)
            ),
            None,
        )
        for index, rule in enumerate(self.rules, start=1):
            if not rule._matches_except_address(username, command, port):
                continue
            if not rule._matches_name(name):
                continue
            if rule.network is not None and address not in rule.network:
                continue
            if (
                rule.action is Action.ALLOW
                and protection is not None
                and (rule.network is None or not _inside(rule.network, protection))
            ):
                continue  # too broad to unlock a protected address
            return Verdict(rule.action is Action.ALLOW, self._reasons[index - 1])
        if protection is not None:
            return Verdict(False, f"protected: {protection.reason}")
        return Verdict(True, "no rule matched")

    def check_host(self, username: str | None, command: Command, host: str, port: int) -> Verdict:
        """One-step check of an IP literal or a name without resolving it (UDP datagrams to
        names before the resolver answers; BIND's expected peer). For a name only what
        ``check_request`` can decide is denied; its addresses need ``check_address``."""
        address = parse_address(host)
        if address is not None:
            return self.check_address(username, command, address, port)
        verdict = self.check_request(username, command, host, port)
        return verdict if verdict is not None else Verdict(True, "decided by address")
