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

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from socksauth.protocol import Command
from socksauth.protocol.address import ip_literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Action(enum.Enum):
    """What a matching rule decides."""

    ALLOW = "allow"
    DENY = "deny"


# Rule commands in the words of the CLI and the rules table.
COMMAND_NAMES: dict[str, Command] = {
    "connect": Command.CONNECT,
    "bind": Command.BIND,
    "udp": Command.UDP_ASSOCIATE,
}
_NAME_OF_COMMAND = {command: name for name, command in COMMAND_NAMES.items()}


def command_name(command: Command) -> str:
    """``connect``, ``bind`` or ``udp``: how rules spell a command."""
    return _NAME_OF_COMMAND[command]


def normalise_domain(name: str) -> str:
    """Lower case, without the one trailing dot of a fully qualified name."""
    name = name.lower()
    return name[:-1] if name.endswith(".") and len(name) > 1 else name


def _valid_domain_pattern(pattern: str) -> bool:
    body = pattern[2:] if pattern.startswith("*.") else pattern
    return bool(body) and "*" not in body and not body.startswith(".") and ".." not in body


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One line of the policy; see the module docstring for how it matches.

    Raises:
        ValueError: an empty or malformed domain pattern, a port outside 0-65535 or a
            range whose end comes before its start.
    """

    action: Action
    username: str | None = None
    network: IPNetwork | None = None
    domain: str | None = None
    port_min: int | None = None
    port_max: int | None = None
    command: Command | None = None

    def __post_init__(self) -> None:
        if self.domain is not None:
            domain = normalise_domain(self.domain)
            if not _valid_domain_pattern(domain):
                raise ValueError(f"domain {self.domain!r}: write example.com or *.example.com")
            object.__setattr__(self, "domain", domain)
        if (self.port_min is None) != (self.port_max is None):
            raise ValueError("a port range needs both ends (one port: min = max)")
        if (
            self.port_min is not None
            and self.port_max is not None
            and not 0 <= self.port_min <= self.port_max <= 0xFFFF
        ):
            raise ValueError(
                f"ports {self.port_min}-{self.port_max}: need 0 <= min <= max <= 65535"
            )

    def __str__(self) -> str:
        parts = [self.action.value]
        if self.username is not None:
            parts.append(f"user {self.username}")
        if self.command is not None:
            parts.append(command_name(self.command))
        if self.network is not None:
            parts.append(str(self.network))
        if self.domain is not None:
            parts.append(self.domain)
        if self.port_min is not None:
            ports = (
                str(self.port_min)
                if self.port_min == self.port_max
                else f"{self.port_min}-{self.port_max}"
            )
            parts.append(f"port {ports}")
        return " ".join(parts)

    def _matches_except_address(
        self, username: str | None, command: Command, port: int | None
    ) -> bool | None:
        """Whether user, command and port match; None when the port is not known yet."""
        if self.username is not None and self.username != username:
            return False
        if self.command is not None and self.command is not command:
            return False
        if self.port_min is not None and self.port_max is not None:
            if port is None:
                return None
            return self.port_min <= port <= self.port_max
        return True

    def _matches_name(self, name: str | None) -> bool:
        if self.domain is None:
            return True
        if name is None:
            return False  # an IP literal: domain rules are about names
        if self.domain.startswith("*."):
            return name.endswith(self.domain[1:])
        return name == self.domain


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision and the reason the log and the audit give for it."""

    allowed: bool
    reason: str  # "rule 3: deny 10.0.0.0/8", "protected: loopback", "no rule matched"


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
                return Verdict(False, f"rule {index}: {rule}")
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
            return Verdict(rule.action is Action.ALLOW, f"rule {index}: {rule}")
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


def parse_ports(text: str) -> tuple[int, int]:
    """``443`` or ``8000-8999`` as (min, max); ValueError naming the problem."""
    low, dash, high = text.strip().partition("-")
    try:
        first = int(low)
        last = int(high) if dash else first
    except ValueError:
        raise ValueError(f"ports {text!r}: write 443 or 8000-8999") from None
    if not 0 <= first <= last <= 0xFFFF:
        raise ValueError(f"ports {text!r}: need 0 <= first <= last <= 65535")
    return first, last


def parse_rule(
    action: str,
    *,
    username: str | None = None,
    cidr: str | None = None,
    domain: str | None = None,
    ports: str | None = None,
    command: str | None = None,
) -> Rule:
    """A rule from the words an administrator writes; ValueError naming the bad one."""
    try:
        verdict = Action(action.lower())
    except ValueError:
        raise ValueError(f"action {action!r}: write allow or deny") from None
    network = None
    if cidr is not None:
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP network (CIDR)") from None
    if command is not None and command.lower() not in COMMAND_NAMES:
        raise ValueError(f"command {command!r}: write connect, bind or udp")
    port_min, port_max = parse_ports(ports) if ports is not None else (None, None)
    return Rule(
        action=verdict,
        username=username,
        network=network,
        domain=domain,
        port_min=port_min,
        port_max=port_max,
        command=None if command is None else COMMAND_NAMES[command.lower()],
    )
