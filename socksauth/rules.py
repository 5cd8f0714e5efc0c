"""The destination rules' language: ``Rule`` (what one rule matches, and how it reads), its
``Action``, the command words, and parsing the words an administrator writes. What a list of
rules decides, protected addresses included, is server/policy.py's ``DestinationPolicy``."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from socksauth.protocol import Command

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
