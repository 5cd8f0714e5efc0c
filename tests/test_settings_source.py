"""The option table without the CLI: parsing TOML documents and variables, re-reading a changed
file (what a reload does), and the example file in deploy/ listing every key with its default."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from socksauth.config import ListenAddress, default_workers, verify_threads
from socksauth.errors import ConfigError
from socksauth.settings_source import (
    OPTIONS,
    PROCESS_FIELDS,
    SETTINGS_FIELDS,
    default_value,
    parse_document,
    parse_environment,
    settings_source,
)

EXAMPLE = Path(__file__).parent.parent / "deploy" / "socksauth.toml"
DATABASE = "sqlite+aiosqlite:///unused.sqlite3"


def test_every_option_sets_a_settings_field_or_a_process_one() -> None:
    fields = [option.field for option in OPTIONS]
    assert len(set(fields)) == len(fields)
    assert set(fields) <= SETTINGS_FIELDS | PROCESS_FIELDS


def test_variables_outside_the_table_are_ignored_and_empty_ones_are_unset() -> None:
    given = parse_environment(
        {"SOCKSAUTH_REQUIRE_POSTGRES": "1", "SOCKSAUTH_NODE_NAME": "", "SOCKSAUTH_BIND": "off"}
    )
    assert {field: item.value for field, item in given.items()} == {"bind_enabled": False}


def test_a_listen_variable_holds_several_addresses_separated_by_spaces() -> None:
    given = parse_environment({"SOCKSAUTH_LISTEN": " 0.0.0.0:1080@10.0.0.0/8,10.1.0.0/16  [::]:1 "})
    first, second = given["listen"].value
    assert (first.host, first.port, len(first.clients)) == ("0.0.0.0", 1080, 2)
    assert second == ListenAddress(host="::", port=1)


def test_zero_means_no_limit_in_a_file_too() -> None:
    given = parse_document({"max_connections": 0, "idle_timeout": 0}, "test")
    assert given["max_connections"].value is None
    assert given["idle_timeout_seconds"].value is None


def test_verification_threads_are_one_machine_wide_budget_shared_by_the_workers() -> None:
    cores = default_workers()
    for workers in (1, 2, cores, 2 * cores):
        share = verify_threads(None, workers)
        assert share >= 1
        # No more hashes at once than cores, however many workers (each needs a thread).
        assert share * workers <= max(cores, workers)
    assert verify_threads(None, 1) == cores
    assert verify_threads(3, 2) == 3  # set explicitly: per worker, as given
    given = parse_document({"password_verify_threads": 0}, "t")
    assert given["password_verify_threads"].value is None


def test_a_float_setting_takes_an_integer_but_not_a_boolean() -> None:
    assert parse_document({"shutdown_grace": 3}, "test")["shutdown_grace_seconds"].value == 3.0
    with pytest.raises(ConfigError, match=r"^shutdown_grace: expected a number, got a boolean"):
        parse_document({"shutdown_grace": True}, "test")


def test_loading_again_reads_the_changed_file_and_flags_still_win(tmp_path: Path) -> None:
    config = tmp_path / "socksauth.toml"
    config.write_text("shutdown_grace = 5\nmax_connections = 10\n")
    source = settings_source(str(config), {"max_connections": "99"}, lambda: DATABASE, environ={})
    first = source.load()
    assert (first.shutdown_grace_seconds, first.max_connections) == (5.0, 99)
    config.write_text("shutdown_grace = 8\nmax_connections = 20\n")
    second = source.load()
    assert (second.shutdown_grace_seconds, second.max_connections) == (8.0, 99)
    config.write_text("shutdown_grace = -8\n")
    with pytest.raises(ConfigError, match=r"^shutdown_grace: must be 0 or more"):
        source.load()


def test_the_environment_is_taken_once_when_the_source_is_made(tmp_path: Path) -> None:
    environ = {"SOCKSAUTH_LOG_LEVEL": "debug"}
    source = settings_source(None, {}, lambda: DATABASE, environ=environ)
    environ["SOCKSAUTH_LOG_LEVEL"] = "error"
    assert source.load().log_level == "DEBUG"


def example_assignments() -> dict[str, str]:
    """The first commented-out ``# key = value`` line of each key in the example file."""
    assignments: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"# ([a-z_]+) = (.+)", line)
        if match:
            assignments.setdefault(match.group(1), match.group(2))
    return assignments


def test_the_example_file_lists_every_key_with_its_default() -> None:
    assignments = example_assignments()
    assert set(assignments) == {option.key for option in OPTIONS}
    document = tomllib.loads("\n".join(f"{k} = {v}" for k, v in assignments.items()))
    parse_document(document, str(EXAMPLE))  # every example value is valid
    text = EXAMPLE.read_text()
    for option in OPTIONS:
        # Defaults that depend on the machine (or are off) are said in words, not as values.
        described = re.search(rf"Default: [^\n]*\n# {option.key} = ", text)
        if not described:
            expected = option.kind.to_toml(default_value(option))
            assert document[option.key] == expected, option.key
