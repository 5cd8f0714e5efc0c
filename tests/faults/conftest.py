"""Fault fixtures: a throwaway PostgreSQL cluster of our own that tests may stop and start
(never the shared server), and the log lines an outage costs."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTGRES_BINARIES = Path("/usr/lib/postgresql")


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    versions = sorted(POSTGRES_BINARIES.glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Cluster:
    """A PostgreSQL server of this test session on 127.0.0.1:``port``, trust auth for
    ``postgres``. ``stop()`` is a fast shutdown (as ``pg_ctlcluster … stop -m fast``)."""

    data: Path
    port: int
    pg_ctl: str
    run_as: list[str]

    @property
    def admin_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, self.pg_ctl, "-D", str(self.data), "-w", *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        self._ctl(
            "-l", str(self.data.parent / "log"), "-o",
            f"-p {self.port} -h 127.0.0.1 -k {self.data.parent} -F", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Our own PostgreSQL (initdb in a temporary directory, a free port); skipped (or failed
    under SOCKSAUTH_REQUIRE_POSTGRES=1) when initdb/pg_ctl are missing."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        if os.environ.get("SOCKSAUTH_REQUIRE_POSTGRES") == "1":
            pytest.fail("the fault tests need initdb and pg_ctl")
        pytest.skip("no initdb/pg_ctl: cannot start a PostgreSQL of our own")
    run_as: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="socksauth-fault-pg-"))
    if os.geteuid() == 0:
        # initdb refuses root: run the cluster as the postgres account.
        owner = pwd.getpwnam("postgres")
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = directory / "data"
    try:
        subprocess.run(
            [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        running = Cluster(data, _free_port(), pg_ctl, run_as)
        running.start()
        try:
            yield running
        finally:
            subprocess.run(
                [*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                check=False,
                capture_output=True,
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Lines(logging.Handler):
    """Every record socksauth logs while installed: what an outage costs in log lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.INFO) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    def tracebacks(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.exc_info]


@pytest.fixture
def lines() -> Iterator[Lines]:
    """The records of the ``socksauth`` loggers at INFO and above, as a server logs them."""
    handler = Lines()
    logger = logging.getLogger("socksauth")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
