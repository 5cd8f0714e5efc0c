"""Settings from a TOML file, SOCKSAUTH_* variables and flags: precedence, one-line errors
that name the key (exit 2), `socksauth config check` (redacted, a valid file itself), and
`serve --config` really serving where the file says."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cli_runner import SOCKSAUTH, SUBPROCESS_SECONDS, one_error_line, subprocess_environment
from click.testing import CliRunner, Result
from e2e import ALICE, EchoServer, allow_loopback_targets, assert_serves_a_good_client

from socksauth.cli import main
from socksauth.settings_source import CONFIG_PATH_VARIABLE, OPTIONS
from socksauth.store.users import SqlUserStore

SECRET = "SuperSecret123"
DATABASE = "sqlite+aiosqlite:///unused.sqlite3"


def check(*args: str, env: dict[str, str] | None = None) -> Result:
    """`socksauth config check ARGS` in-process, with no SOCKSAUTH_* variable but ``env``."""
    clean: dict[str, str | None] = {option.variable: None for option in OPTIONS}
    clean[CONFIG_PATH_VARIABLE] = None
    return CliRunner(env=clean | dict(env or {})).invoke(main, ["config", "check", *args])


def effective(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return tomllib.loads(result.stdout)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# Each source sets the same four settings (a number, a list, a switch, a choice) to its own
# values; the most specific source that sets them wins: flags > environment > file > default.
SOURCES = {
    "default": {"shutdown_grace": 30.0, "listen": ["127.0.0.1:1080"], "udp": True,
                "log_format": "text"},
    "file": {"shutdown_grace": 5.0, "listen": ["127.0.0.1:1081"], "udp": False,
             "log_format": "json"},
    "env": {"shutdown_grace": 6.0, "listen": ["127.0.0.1:1082", "[::1]:1082"], "udp": True,
            "log_format": "text"},
    "flags": {"shutdown_grace": 7.0, "listen": ["127.0.0.1:1083"], "udp": False,
              "log_format": "json"},
}  # fmt: skip
FILE = 'shutdown_grace = 5\nlisten = ["127.0.0.1:1081"]\nudp = false\nlog_format = "json"\n'
ENV = {
    "SOCKSAUTH_SHUTDOWN_GRACE": "6",
    "SOCKSAUTH_LISTEN": "127.0.0.1:1082 [::1]:1082",
    "SOCKSAUTH_UDP": "yes",
    "SOCKSAUTH_LOG_FORMAT": "TEXT",
}
FLAGS = ["--shutdown-grace", "7", "--listen", "127.0.0.1:1083", "--no-udp", "--log-format", "json"]


@pytest.mark.parametrize(
    ("in_file", "in_env", "in_flags"), list(itertools.product((False, True), repeat=3))
)
def test_flags_beat_the_environment_which_beats_the_file_which_beats_defaults(
    tmp_path: Path, in_file: bool, in_env: bool, in_flags: bool
) -> None:
    config = write(tmp_path / "socksauth.toml", FILE if in_file else "")
    result = check(
        "--config", config, "--database-url", DATABASE, *(FLAGS if in_flags else []),
        env=ENV if in_env else None,
    )  # fmt: skip
    winner = "flags" if in_flags else "env" if in_env else "file" if in_file else "default"
    settings = effective(result)
    assert {key: settings[key] for key in SOURCES[winner]} == SOURCES[winner]


def test_the_config_file_can_be_named_by_the_environment(tmp_path: Path) -> None:
    config = write(tmp_path / "named.toml", "max_connections = 7\n")
    settings = effective(check("--database-url", DATABASE, env={CONFIG_PATH_VARIABLE: config}))
    assert settings["max_connections"] == 7


def test_the_database_url_variable_still_works_and_yields_to_the_flag(tmp_path: Path) -> None:
    config = write(tmp_path / "socksauth.toml", 'database_url = "sqlite+aiosqlite:///file.db"\n')
    env = {"SOCKSAUTH_DATABASE_URL": "sqlite+aiosqlite:///env.db"}
    assert effective(check("--config", config, env=env))["database_url"].endswith("/env.db")
    flag = ["--database-url", "sqlite+aiosqlite:///flag.db"]
    assert effective(check("--config", config, *flag, env=env))["database_url"].endswith("flag.db")


@pytest.mark.parametrize(
    ("file", "args", "env", "message"),
    [
        pytest.param("handshak_timeout = 3\n", [], {},
                     "handshak_timeout: unknown setting in", id="unknown-key"),
        pytest.param("[serve]\nlisten = []\n", [], {}, "serve: unknown setting in",
                     id="unknown-table"),
        pytest.param('handshake_timeout = "3"\n', [], {},
                     "handshake_timeout: expected a number, got a string", id="file-type"),
        pytest.param('listen = "127.0.0.1:1080"\n', [], {},
                     "listen: expected an array of strings, got a string", id="file-array"),
        pytest.param("udp = 1\n", [], {},
                     "udp: expected a boolean (true or false), got an integer", id="file-bool"),
        pytest.param("shutdown_grace = -1\n", [], {}, "shutdown_grace: must be 0 or more",
                     id="file-range"),
        pytest.param("listen = []\n", [], {}, "listen: at least one address is needed",
                     id="file-empty-listen"),
        pytest.param('trusted_network = ["10.0.0.0/33"]\n', [], {},
                     "trusted_network: '10.0.0.0/33' is not an IP network (CIDR)",
                     id="file-cidr"),
        pytest.param('admin_listen = "localhost:http"\n', [], {},
                     "admin_listen: listen address 'localhost:http': port 'http' is not a number",
                     id="file-admin-listen"),
        pytest.param("listen = [\n", [], {}, "{path}: not valid TOML", id="file-syntax"),
        pytest.param("", ["--config", "/nonexistent/socksauth.toml"], {},
                     "--config: /nonexistent/socksauth.toml: no such file", id="missing-file"),
        pytest.param("", [], {CONFIG_PATH_VARIABLE: "/nonexistent/socksauth.toml"},
                     "SOCKSAUTH_CONFIG: /nonexistent/socksauth.toml: no such file",
                     id="missing-file-from-env"),
        pytest.param("", [], {"SOCKSAUTH_MAX_CONNECTIONS": "lots"},
                     "SOCKSAUTH_MAX_CONNECTIONS: 'lots' is not a whole number", id="env"),
        pytest.param("", [], {"SOCKSAUTH_METRICS_PER_USER": "maybe"},
                     "SOCKSAUTH_METRICS_PER_USER: 'maybe' is not a boolean", id="env-bool"),
        pytest.param("", ["--log-format", "xml"], {},
                     "--log-format: 'xml' is not one of text, json", id="flag-choice"),
        pytest.param("", ["--workers", "0"], {}, "--workers: must be at least 1 and at most 256",
                     id="flag-range"),
        pytest.param("", ["--idle-timeout", "nan"], {}, "--idle-timeout: nan is not a finite",
                     id="flag-nan"),
        # Settings validates this one itself; the message still names the flag.
        pytest.param("", ["--node-name", "n" * 256], {},
                     "--node-name: must be 1 to 255 characters", id="flag-settings-check"),
        pytest.param(f'database_url = "mysql://u:{SECRET}@127.0.0.1/x"\n', [], {},
                     "database_url: database URL scheme 'mysql' is not supported",
                     id="database-scheme"),
    ],
)  # fmt: skip
def test_an_invalid_setting_is_one_line_naming_it_and_exit_code_2(
    tmp_path: Path, file: str, args: list[str], env: dict[str, str], message: str
) -> None:
    path = write(tmp_path / "socksauth.toml", file)
    config = [] if "--config" in args or CONFIG_PATH_VARIABLE in env else ["--config", path]
    result = check(*config, *args, env=env)
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"Error: {message.replace('{path}', path)}"), line
    assert SECRET not in result.output
    assert result.stdout == ""


def test_unknown_keys_get_a_suggestion(tmp_path: Path) -> None:
    config = write(tmp_path / "socksauth.toml", "shutdown_grace_seconds = 3\n")
    line = one_error_line(check("--config", config).stderr)
    assert line.endswith("did you mean 'shutdown_grace'?"), line


def test_config_check_hides_the_database_password(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://socksauth:{SECRET}@127.0.0.1:5432/socksauth"
    config = write(tmp_path / "socksauth.toml", f'database_url = "{url}"\n')
    result = check("--config", config)
    assert SECRET not in result.output
    assert effective(result)["database_url"] == (
        "postgresql+asyncpg://socksauth:***@127.0.0.1:5432/socksauth"
    )


def test_config_check_output_is_a_config_file_with_the_same_settings(tmp_path: Path) -> None:
    config = write(
        tmp_path / "socksauth.toml",
        'listen = ["0.0.0.0:1080@10.0.0.0/8,192.168.0.0/16", "[::]:1080"]\n'
        'admin_listen = "127.0.0.1:9100"\n'
        'audit_spill_file = "/var/lib/socksauth/spill \\"quoted\\".jsonl"\n'
        'node_name = "edge-1"\n'
        "max_connections = 0\n"
        "idle_timeout = 0\n"
        'proxy_protocol_from = ["10.1.2.0/24"]\n'
        'log_level = "debug"\n',
    )
    first = check("--config", config, "--database-url", DATABASE)
    settings = effective(first)
    assert settings["listen"] == ["0.0.0.0:1080@10.0.0.0/8,192.168.0.0/16", "[::]:1080"]
    assert settings["admin_listen"] == "127.0.0.1:9100"
    assert settings["audit_spill_file"] == '/var/lib/socksauth/spill "quoted".jsonl'
    assert settings["max_connections"] == 0
    assert settings["log_level"] == "DEBUG"
    assert len(settings) == len(OPTIONS)  # every option is printed, also when off
    again = check("--config", write(tmp_path / "again.toml", first.stdout))
    assert again.stdout.splitlines()[1:] == first.stdout.splitlines()[1:]


def test_every_option_has_a_flag_a_key_and_a_variable_of_one_name() -> None:
    serve = main.commands["serve"]
    flags = {flag for param in serve.params for flag in (*param.opts, *param.secondary_opts)}
    for option in OPTIONS:
        assert option.flag in flags
        assert option.variable == "SOCKSAUTH_" + option.flag[2:].replace("-", "_").upper()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_serve_with_a_config_file_listens_where_it_says_and_logs_json(
    tmp_path: Path, database_url: str, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    await allow_loopback_targets(database_url)
    port = free_port()
    config = write(
        tmp_path / "socksauth.toml",
        f'listen = ["127.0.0.1:{port}"]\ndatabase_url = "{database_url}"\nlog_format = "json"\n',
    )
    process = await asyncio.create_subprocess_exec(
        SOCKSAUTH, "serve", "--config", config,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_environment({"SOCKSAUTH_WORKERS": "1"}),
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(SUBPROCESS_SECONDS):
            while not any(line["message"].startswith("listening on") for line in lines):
                text = await process.stderr.readline()
                assert text, "serve exited:\n" + "\n".join(map(str, lines))
                lines.append(json.loads(text))
            await assert_serves_a_good_client(port, echo_server)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(SUBPROCESS_SECONDS):
            rest, _ = await asyncio.gather(process.stderr.read(), process.wait())
    assert process.returncode == 0
    lines += [json.loads(text) for text in rest.decode().splitlines()]
    assert f"listening on 127.0.0.1:{port}" in [line["message"] for line in lines]
    assert {"ts", "level", "logger", "message"} <= set(lines[0])
    assert all(line["ts"].endswith("+00:00") for line in lines)
    assert any("user=" in line["message"] for line in lines)  # the tunnel's audit line


def test_account_commands_use_the_config_files_database(
    tmp_path: Path, database_url: str, user_store: SqlUserStore
) -> None:
    config = write(tmp_path / "socksauth.toml", f'database_url = "{database_url}"\n')
    clean: dict[str, str | None] = {option.variable: None for option in OPTIONS}
    runner = CliRunner(env=clean | {CONFIG_PATH_VARIABLE: config})
    result = runner.invoke(main, ["user", "list"])
    assert result.exit_code == 0, result.output
    assert ALICE in result.stdout
