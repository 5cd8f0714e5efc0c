"""Where settings come from: one table of options, read from a TOML file, ``SOCKSAUTH_*``
variables and flags; later sources win. Parsing takes values, never opens a file."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from socksauth.config import (
    IPNetwork,
    ListenAddress,
    Settings,
    default_workers,
    parse_egress_pool,
    parse_listen,
)
from socksauth.errors import ConfigError

ENV_PREFIX = "SOCKSAUTH_"
# Names the config file; when unset, DEFAULT_CONFIG_PATH is read if it exists.
CONFIG_PATH_VARIABLE = "SOCKSAUTH_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/socksauth/socksauth.toml")

TomlValue = str | int | float | bool | list[str]


class Kind(Protocol):
    """How one option's values are parsed from TOML and from text, and written back."""

    def from_toml(self, value: object) -> Any: ...

    def from_text(self, text: str) -> Any: ...

    def to_toml(self, value: Any) -> TomlValue | None: ...


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Number:
    """A float such as seconds; with ``zero_means_none``, 0 stands for "never"/"no limit"."""

    positive: bool = False
    zero_means_none: bool = False

    def from_toml(self, value: object) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"expected a number, got {_toml_type(value)}")
        return self._checked(float(value))

    def from_text(self, text: str) -> float | None:
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"{text!r} is not a number") from None
        return self._checked(number)

    def _checked(self, number: float) -> float | None:
        if not math.isfinite(number):
            raise ConfigError(f"{number} is not a finite number")
        if self.positive and not number > 0:
            raise ConfigError(f"must be more than 0, got {number:g}")
        if number < 0:
            raise ConfigError(f"must be 0 or more, got {number:g}")
        return None if self.zero_means_none and number == 0 else number

    def to_toml(self, value: float | None) -> float:
        return 0.0 if value is None else float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Integer:
    """A whole number in ``minimum..maximum``; with ``zero_means_none``, 0 is "no limit"."""

    minimum: int = 0
    maximum: int | None = None
    zero_means_none: bool = False

    def from_toml(self, value: object) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {_toml_type(value)}")
        return self._checked(value)

    def from_text(self, text: str) -> int | None:
        try:
            number = int(text)
        except ValueError:
            raise ConfigError(f"{text!r} is not a whole number") from None
        return self._checked(number)

    def _checked(self, number: int) -> int | None:
        if self.zero_means_none and number == 0:
            return None
        if number < self.minimum or (self.maximum is not None and number > self.maximum):
            upper = "" if self.maximum is None else f" and at most {self.maximum}"
            raise ConfigError(f"must be at least {self.minimum}{upper}, got {number}")
        return number

    def to_toml(self, value: int | None) -> int:
        return 0 if value is None else value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True, kw_only=True)
class Switch:
    """On or off; as text 1/0, true/false, yes/no, on/off."""

    def from_toml(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected a boolean (true or false), got {_toml_type(value)}")
        return value

    def from_text(self, text: str) -> bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{text!r} is not a boolean; use true or false")

    def to_toml(self, value: bool) -> bool:
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class OnOff:
    """On or off given as a value (``--login-throttle off``), not as a --no- flag; in TOML
    a boolean or "on"/"off"."""

    def from_toml(self, value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return self.from_text(value)
        raise ConfigError(f'expected a boolean or "on"/"off", got {_toml_type(value)}')

    def from_text(self, text: str) -> bool:
        return Switch().from_text(text)

    def to_toml(self, value: bool) -> bool:
        return value


def _identity(text: str) -> Any:
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class Text:
    """A string, optionally one of ``choices`` (compared without case) or converted."""

    choices: tuple[str, ...] = ()
    convert: Callable[[str], Any] = _identity
    write: Callable[[Any], str] = str

    def from_toml(self, value: object) -> Any:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {_toml_type(value)}")
        return self.from_text(value)

    def from_text(self, text: str) -> Any:
        if self.choices:
            chosen = [choice for choice in self.choices if choice.lower() == text.lower()]
            if not chosen:
                raise ConfigError(f"{text!r} is not one of {', '.join(self.choices)}")
            text = chosen[0]
        return self.convert(text)

    def to_toml(self, value: Any) -> str | None:
        return None if value is None else self.write(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Many:
    """A list of strings, each converted; repeat the flag, or separate by spaces in a variable
    (not commas: a listen address uses them for its client networks)."""

    convert: Callable[[str], Any]
    write: Callable[[Any], str] = str

    def from_toml(self, value: object) -> tuple[Any, ...]:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"expected an array of strings, got {_toml_type(value)}")
        return self.from_texts(value)

    def from_text(self, text: str) -> tuple[Any, ...]:
        return self.from_texts(text.split())

    def from_texts(self, texts: Iterable[str]) -> tuple[Any, ...]:
        return tuple(self.convert(text) for text in texts)

    def to_toml(self, value: tuple[Any, ...]) -> list[str]:
        return [self.write(item) for item in value]


def parse_network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"{text!r} is not an IP network (CIDR)") from None


def write_listen(address: ListenAddress) -> str:
    """``address`` as parse_listen() reads it, with its client networks."""
    clients = ",".join(str(network) for network in address.clients)
    return f"{address}@{clients}" if clients else str(address)


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """One setting: ``--NAME`` flag, ``NAME`` (``-`` as ``_``) in the file,
    ``SOCKSAUTH_NAME`` in the environment; ``field`` is the Settings field it sets."""

    name: str
    field: str
    kind: Kind
    help: str
    metavar: str = ""

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def flag(self) -> str:
        return f"--{self.name}"


SECONDS = Number(positive=True)
SECONDS_OR_NEVER = Number(zero_means_none=True)
LIMIT = Integer(zero_means_none=True)

# Every setting of `serve`, once. The order is the order of --help and of `config check`.
OPTIONS: tuple[Option, ...] = (
    Option(name="listen", field="listen", kind=Many(convert=parse_listen, write=write_listen),
           metavar="HOST:PORT[@CIDR,...]",
           help="Address to listen on, repeatable; [::1]:1080 for IPv6. After @, the only "
           "client networks this listener admits."),
    Option(name="database-url", field="database_url", kind=Text(), metavar="URL",
           help="sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB "
           "[default: $XDG_DATA_HOME/socksauth/socksauth.sqlite3]"),
    Option(name="workers", field="workers", kind=Integer(minimum=1, maximum=256), metavar="N",
           help="Worker processes sharing the listening ports (SO_REUSEPORT), each with its "
           "own loop. [default: number of CPU cores]"),
    Option(name="trusted-network", field="trusted_networks", kind=Many(convert=parse_network),
           metavar="CIDR",
           help="Clients from this network may connect without a password (method 0x00). "
           "Repeatable."),
    Option(name="handshake-timeout", field="handshake_timeout_seconds", kind=SECONDS,
           metavar="SECONDS", help="Seconds a client has to finish the SOCKS handshake."),
    Option(name="connect-timeout", field="connect_timeout_seconds", kind=SECONDS,
           metavar="SECONDS", help="Seconds to connect to a target."),
    Option(name="idle-timeout", field="idle_timeout_seconds", kind=SECONDS_OR_NEVER,
           metavar="SECONDS",
           help="Close a tunnel after this many seconds without a byte either way. 0: never."),
    Option(name="udp", field="udp_enabled", kind=Switch(),
           help="Serve UDP ASSOCIATE (RFC 1928 §7); when off it gets reply 0x07."),
    Option(name="udp-idle-timeout", field="udp_idle_timeout_seconds", kind=SECONDS,
           metavar="SECONDS", help="End a UDP association after this long without a datagram."),
    Option(name="bind", field="bind_enabled", kind=Switch(),
           help="Serve BIND (RFC 1928 §6); when off it gets reply 0x07."),
    Option(name="bind-timeout", field="bind_timeout_seconds", kind=SECONDS, metavar="SECONDS",
           help="How long a BIND waits for its inbound connection (then reply 0x06)."),
    Option(name="http", field="http_enabled", kind=Switch(),
           help="Serve HTTP proxy clients (CONNECT, and http:// URLs) on the SOCKS port, "
           "told apart by the first byte, with the same users, rules and audit."),
    Option(name="deny-private-networks", field="deny_private_networks", kind=Switch(),
           help="Also deny targets in RFC 1918, CGNAT and IPv6 ULA ranges unless a rule "
           "inside them allows (loopback, link-local and metadata are always denied)."),
    Option(name="max-connections", field="max_connections", kind=LIMIT, metavar="N",
           help="Client connections at once; more are closed at accept. 0: no cap."),
    Option(name="max-unauthenticated", field="max_unauthenticated", kind=LIMIT, metavar="N",
           help="Clients still in the handshake at once. 0: no cap."),
    Option(name="max-unauthenticated-per-address", field="max_unauthenticated_per_address",
           kind=LIMIT, metavar="N",
           help="Clients in the handshake from one address (IPv6: one /64). 0: no cap."),
    Option(name="account-check-interval", field="account_check_seconds", kind=SECONDS_OR_NEVER,
           metavar="SECONDS",
           help="Seconds between re-reads of rules and connected users' accounts; a "
           "disabled, deleted, expired or re-passworded user's tunnels end then. 0: never."),
    Option(name="change-poll-interval", field="change_poll_seconds", kind=SECONDS,
           metavar="SECONDS",
           help="Seconds between reads of the store's change counter (the fallback when "
           "PostgreSQL notifications do not arrive)."),
    Option(name="audit-interim-interval", field="audit_interim_seconds",
           kind=SECONDS_OR_NEVER, metavar="SECONDS",
           help="Seconds between writes of open tunnels' byte counts and rates to the audit "
           "(what `socksauth sessions`, `top` and the dashboard show). 0: only at the end."),
    Option(name="password-verify-threads", field="password_verify_threads",
           kind=Integer(minimum=1, zero_means_none=True), metavar="N",
           help="Threads verifying passwords at once in each worker (Argon2: one core each). "
           "0: the machine's cores shared among the workers, so that a storm of cold logins "
           "leaves the event loops their CPU. [default: 0]"),
    Option(name="relay-buffer-bytes", field="relay_buffer_bytes", kind=Integer(minimum=4096),
           metavar="BYTES", help="Read buffer per direction of a tunnel."),
    Option(name="relay-memory-budget-bytes", field="relay_memory_budget_bytes",
           kind=Integer(minimum=0, zero_means_none=True), metavar="BYTES",
           help="Relay memory of all tunnels together; beyond it, tunnels whose clients or "
           "targets read slowly stop reading until those catch up. 0: no cap. [default: a "
           "quarter of physical memory]"),
    Option(name="shutdown-grace", field="shutdown_grace_seconds", kind=Number(),
           metavar="SECONDS",
           help="At shutdown, how long tunnels get to end on their own before they are closed."),
    Option(name="login-throttle", field="login_throttle", kind=OnOff(), metavar="on|off",
           help="Delay, then lock out, repeated failed logins per (username, client address) "
           "pair (README: login throttling). off: for networks that throttle elsewhere."),
    Option(name="login-free-failures", field="login_free_failures", kind=Integer(minimum=1),
           metavar="N", help="Failures of a (username, address) pair before its logins are "
           "delayed: room for typos."),
    Option(name="login-delay", field="login_delay_seconds", kind=Number(), metavar="SECONDS",
           help="The first delay, doubled per further failure up to --login-max-delay."),
    Option(name="login-max-delay", field="login_max_delay_seconds", kind=SECONDS,
           metavar="SECONDS", help="Longest delay: seconds, since SOCKS logs in per connection."),
    Option(name="login-lockout-failures", field="login_lockout_failures",
           kind=Integer(minimum=1), metavar="N",
           help="Failures that lock a pair out (not at a familiar address, nor an exempt one)."),
    Option(name="login-lockout", field="login_lockout_seconds", kind=SECONDS, metavar="SECONDS",
           help="First lockout; doubled per repeated lockout of the pair, up to "
           "--login-max-lockout."),
    Option(name="login-max-lockout", field="login_max_lockout_seconds", kind=SECONDS,
           metavar="SECONDS", help="Longest lockout."),
    Option(name="login-window", field="login_window_seconds", kind=SECONDS, metavar="SECONDS",
           help="A pair's or an address's failures are forgotten after this long without one."),
    Option(name="login-remembered-passwords", field="login_remembered_passwords",
           kind=Integer(minimum=1), metavar="N",
           help="A repeat of one of a pair's last N wrong passwords (kept as keyed HMACs) does "
           "not count again: a stale password is delayed, not locked."),
    Option(name="login-familiar-days", field="login_familiar_days", kind=SECONDS,
           metavar="DAYS", help="A successful login makes its address familiar for the user "
           "this long: delayed there, not locked."),
    Option(name="login-familiar-max-failures", field="login_familiar_max_failures",
           kind=Integer(minimum=1), metavar="N",
           help="Failures in a day after which a familiar pair loses its standing (warned)."),
    Option(name="login-spray-usernames", field="login_spray_usernames",
           kind=Integer(minimum=1), metavar="N",
           help="Distinct usernames failing from one address within the window that make the "
           "whole address delayed (spraying)."),
    Option(name="login-max-delayed-per-address", field="login_max_delayed_per_address",
           kind=Integer(minimum=1), metavar="N",
           help="Delayed logins one address may have waiting at once; more fail at once."),
    Option(name="login-exempt-network", field="login_exempt_networks",
           kind=Many(convert=parse_network), metavar="CIDR",
           help="Clients from this network are delayed at most, never locked out. Repeatable."),
    Option(name="proxy-protocol-from", field="proxy_protocol_networks",
           kind=Many(convert=parse_network), metavar="CIDR",
           help="Clients from this network (the load balancers) must send a PROXY protocol "
           "v1/v2 header. Repeatable."),
    Option(name="admin-listen", field="admin_listen",
           kind=Text(convert=parse_listen, write=write_listen),
           metavar="HOST:PORT", help="Serve /metrics, /healthz and /readyz here. [default: off]"),
    Option(name="metrics-per-user", field="metrics_per_user", kind=Switch(),
           help="Label metrics per user (one series per user)."),
    Option(name="node-name", field="node_name", kind=Text(), metavar="NAME",
           help="This node's name in the audit; unique per process sharing a database. "
           "[default: the host name]"),
    Option(name="audit-spill-file", field="audit_spill_path", kind=Text(convert=Path),
           metavar="PATH",
           help="Where audit entries wait while the database is unreachable. [default: next "
           "to the SQLite file, else $XDG_STATE_HOME/socksauth/audit-spill-NODE.jsonl]"),
    Option(name="quota-flush-interval", field="quota_flush_seconds", kind=SECONDS,
           metavar="SECONDS",
           help="Seconds between writes of users' traffic and reads of every node's totals for "
           "quotas; a used-up quota ends tunnels within about twice this."),
    Option(name="quota-time-zone", field="quota_time_zone", kind=Text(), metavar="ZONE",
           help="Time zone (IANA name) in which quota days, weeks and months begin. "
           "[default: UTC]"),
    Option(name="egress-pool", field="egress_pools", kind=Many(convert=parse_egress_pool),
           metavar="NAME=ADDR,...",
           help="A named pool of local addresses for outbound traffic (user set --egress "
           "pool:NAME); repeatable."),
    Option(name="egress-session-ttl", field="egress_session_ttl_seconds", kind=SECONDS,
           metavar="SECONDS",
           help="A session key in a username (alice-session-abc123) keeps its egress address "
           "this long after its last use."),
    Option(name="session-separator", field="session_separator", kind=Text(), metavar="TEXT",
           help="Separates the account from a session key in a username (alice-session-KEY "
           "logs in as alice). Empty: no session keys."),
    Option(name="log-level", field="log_level",
           kind=Text(choices=("DEBUG", "INFO", "WARNING", "ERROR")), metavar="LEVEL",
           help="DEBUG, INFO, WARNING or ERROR."),
    Option(name="log-format", field="log_format", kind=Text(choices=("text", "json")),
           metavar="text|json", help="text: human-readable lines; json: one object per line."),
)  # fmt: skip

BY_KEY: dict[str, Option] = {option.key: option for option in OPTIONS}
SETTINGS_FIELDS = frozenset(field.name for field in dataclasses.fields(Settings))
# Options that shape the process rather than the server; not in Settings.
PROCESS_FIELDS = frozenset({"workers"})


def default_value(option: Option) -> Any:
    """The value an option has when no source sets it (Settings' own default)."""
    if option.field == "workers":
        return default_workers()
    for field in dataclasses.fields(Settings):
        if field.name == option.field:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
    return None


@dataclass(frozen=True, slots=True)
class Given:
    """A parsed value and the name it was given under (for error messages)."""

    value: Any
    label: str


def _parsed(label: str, parse: Callable[[Any], Any], raw: Any) -> Given:
    try:
        return Given(parse(raw), label)
    except ConfigError as error:
        raise ConfigError(f"{label}: {error}") from None


def parse_document(document: Mapping[str, Any], origin: str) -> dict[str, Given]:
    """The settings of a parsed TOML document, by field; an unknown key is an error."""
    given = {}
    for key, value in document.items():
        option = BY_KEY.get(key)
        if option is None:
            close = difflib.get_close_matches(key, BY_KEY, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: unknown setting in {origin}{hint}")
        given[option.field] = _parsed(key, option.kind.from_toml, value)
    return given


def parse_environment(environ: Mapping[str, str]) -> dict[str, Given]:
    """The settings given as ``SOCKSAUTH_*`` variables; empty ones count as unset."""
    given = {}
    for option in OPTIONS:
        text = environ.get(option.variable)
        if text:
            given[option.field] = _parsed(option.variable, option.kind.from_text, text)
    return given


def parse_flags(flags: Mapping[str, Any]) -> dict[str, Given]:
    """The settings given as flags, by option key: a string, a bool (switches) or a tuple of
    strings (repeatable options)."""
    given = {}
    for key, raw in flags.items():
        option = BY_KEY[key]
        kind = option.kind
        if isinstance(kind, Switch):
            given[option.field] = Given(bool(raw), option.flag)
        elif isinstance(kind, Many):
            given[option.field] = _parsed(option.flag, kind.from_texts, raw)
        else:
            given[option.field] = _parsed(option.flag, kind.from_text, raw)
    return given


def read_document(path: Path) -> dict[str, Any]:
    """The parsed TOML file; ConfigError naming the file when it cannot be read or parsed."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def find_config_file(given: str | None, environ: Mapping[str, str]) -> Path | None:
    """``--config``, else ``$SOCKSAUTH_CONFIG``, else DEFAULT_CONFIG_PATH if it exists, else
    no file. A file that was named but does not exist is an error."""
    named = (("--config", given), (CONFIG_PATH_VARIABLE, environ.get(CONFIG_PATH_VARIABLE)))
    for label, name in named:
        if name:
            path = Path(name)
            if not path.is_file():
                raise ConfigError(f"{label}: {name}: no such file")
            return path
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsSource:
    """Where this process's settings come from, kept so that they can be read again (the
    file may have changed; the environment and flags of a process do not)."""

    config_path: Path | None
    environ: Mapping[str, str]
    flags: Mapping[str, Any]
    default_database_url: Callable[[], str]

    def values(self) -> dict[str, Given]:
        """Every option's value by field: defaults < file < environment < flags."""
        given = {option.field: Given(default_value(option), option.key) for option in OPTIONS}
        if self.config_path is not None:
            document = read_document(self.config_path)
            given |= parse_document(document, str(self.config_path))
        given |= parse_environment(self.environ)
        given |= parse_flags(self.flags)
        return given

    def load(self) -> Settings:
        """Read the sources again and build validated Settings; ConfigError names the key."""
        return self._settings(self.values())

    def workers(self) -> int:
        workers: int = self.values()["workers"].value
        return workers

    def _settings(self, given: Mapping[str, Given]) -> Settings:
        fields = {name: item.value for name, item in given.items() if name in SETTINGS_FIELDS}
        if fields.get("database_url") is None:
            fields["database_url"] = self.default_database_url()
        try:
            return Settings(**fields)
        except ConfigError as error:
            # Settings names its field; the user wrote a key, a variable or a flag.
            field, colon, problem = str(error).partition(":")
            if colon and field in given:
                raise ConfigError(f"{given[field].label}:{problem}") from None
            raise


def settings_source(
    config: str | None,
    flags: Mapping[str, Any],
    default_database_url: Callable[[], str],
    environ: Mapping[str, str] | None = None,
) -> SettingsSource:
    """The sources of this process: ``--config`` (or its defaults), the ``SOCKSAUTH_*``
    variables of ``environ`` (this process's by default) and the flags given."""
    environ = os.environ if environ is None else environ
    snapshot = {name: value for name, value in environ.items() if name.startswith(ENV_PREFIX)}
    return SettingsSource(
        config_path=find_config_file(config, snapshot),
        environ=snapshot,
        flags=dict(flags),
        default_database_url=default_database_url,
    )


def render(settings: Settings, workers: int, redact: Callable[[str], str]) -> str:
    """The settings as a TOML document a config file may contain (``redact`` hides the
    database password); settings that are off are comments."""
    lines = []
    for option in OPTIONS:
        if option.field == "workers":
            value: Any = workers
        elif option.field == "database_url":
            value = redact(settings.database_url)
        else:
            value = getattr(settings, option.field)
        rendered = option.kind.to_toml(value)
        if rendered is None:
            lines.append(f"# {option.key}: not set")
        else:
            lines.append(f"{option.key} = {toml_value(rendered)}")
    return "\n".join(lines) + "\n"


def toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    return "[" + ", ".join(_toml_string(item) for item in value) + "]"


def _toml_string(text: str) -> str:
    # TOML basic strings may not hold a quote, a backslash or a control character as such.
    escaped = []
    for character in text:
        if character in '"\\':
            escaped.append("\\" + character)
        elif ord(character) < 0x20 or ord(character) == 0x7F:
            escaped.append(f"\\u{ord(character):04x}")
        else:
            escaped.append(character)
    return '"' + "".join(escaped) + '"'
