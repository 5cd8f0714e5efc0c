"""Everyday HTTP-proxy clients against the proxy's HTTP side, on SQLite and PostgreSQL:
requests, `pip download` from a package index over TLS, and `git clone` over HTTPS, each told
about the proxy the way users do it (proxies=, HTTPS_PROXY, https_proxy). All on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import os
import shutil
import ssl
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from e2e import (
    ALICE,
    HTTP_BODY,
    WAIT_SECONDS,
    HttpServer,
    ProxyFactory,
    RunningProxy,
    TlsFiles,
    make_loopback_certificate,
)

from socksauth.store.audit import SqlAuditStore
from socksauth.store.interfaces import AuditQuery

GIT = shutil.which("git")
PACKAGE, VERSION = "socksauth-probe", "1.0"
WHEEL = "socksauth_probe-1.0-py3-none-any.whl"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_loopback_certificate(str(tmp_path_factory.mktemp("tls")))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def static_https_server(root: Path, tls: TlsFiles) -> Iterator[int]:
    """Files under ``root`` over HTTPS on 127.0.0.1 (a thread); yields the port."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT_SECONDS)


# The machine's settings that would decide for the clients instead of the test: proxies, CA
# bundles (requests prefers REQUESTS_CA_BUNDLE to pip's --cert), pip's own configuration.
_MACHINE_SETTINGS = ("PROXY", "CA_BUNDLE", "SSL_CERT", "PIP_")


def clean_environment() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not any(part in name.upper() for part in _MACHINE_SETTINGS)
    }


def proxy_environment(proxy: RunningProxy, **extra: str) -> dict[str, str]:
    """The environment without the machine's proxy, CA and pip settings, plus HTTP(S)_PROXY."""
    env = clean_environment()
    url = proxy.url("http")
    env.update(HTTPS_PROXY=url, https_proxy=url, HTTP_PROXY=url, http_proxy=url, **extra)
    return env


async def run(*command: str, env: dict[str, str], cwd: Path | None = None) -> str:
    """Run ``command`` off the loop; its output, or a failure with it."""

    def call() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env=env, cwd=cwd, capture_output=True, text=True, timeout=WAIT_SECONDS * 3
        )

    result = await asyncio.to_thread(call)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


async def http_rows(proxy: RunningProxy) -> list[tuple[str | None, int | None, str | None]]:
    entries = await SqlAuditStore(proxy.store._engine).find_entries(
        AuditQuery(protocol="http", limit=None)
    )
    return [(entry.username, entry.target_port, entry.outcome) for entry in entries]


# --- requests ------------------------------------------------------------------------------------


async def test_requests_with_an_http_proxy_url_fetches_http_and_https(
    proxy: RunningProxy, http_server: HttpServer, tls_files: TlsFiles, tmp_path: Path
) -> None:
    (tmp_path / "page.txt").write_bytes(HTTP_BODY)
    url = proxy.url("http")
    with static_https_server(tmp_path, tls_files) as https_port:

        def fetch(target: str) -> requests.Response:
            with requests.Session() as session:
                session.trust_env = False  # only the proxies given here
                return session.get(
                    target, proxies={"http": url, "https": url}, verify=tls_files.cert, timeout=10
                )

        plain = await asyncio.to_thread(fetch, f"http://127.0.0.1:{http_server.port}/r")
        secure = await asyncio.to_thread(fetch, f"https://127.0.0.1:{https_port}/page.txt")
    assert (plain.status_code, plain.content) == (200, HTTP_BODY)
    assert (secure.status_code, secure.content) == (200, HTTP_BODY)
    assert b"proxy-authorization" not in http_server.requests[0].lower()


async def test_requests_with_a_wrong_password_gets_407(
    proxy: RunningProxy, http_server: HttpServer
) -> None:
    url = proxy.url("http", password="not-alices")

    def fetch() -> requests.Response:
        with requests.Session() as session:
            session.trust_env = False
            return session.get(
                f"http://127.0.0.1:{http_server.port}/", proxies={"http": url}, timeout=10
            )

    response = await asyncio.to_thread(fetch)
    assert response.status_code == 407
    assert response.headers["Proxy-Authenticate"] == 'Basic realm="socksauth"'
    assert http_server.requests == []


# --- pip download through HTTPS_PROXY ----------------------------------------------------------


def build_index(root: Path) -> None:
    """A PEP 503 simple index with one tiny pure-Python wheel."""
    files = root / "files"
    files.mkdir(parents=True)
    dist_info = f"socksauth_probe-{VERSION}.dist-info"
    with zipfile.ZipFile(files / WHEEL, "w") as wheel:
        wheel.writestr("socksauth_probe/__init__.py", "")
        wheel.writestr(
            f"{dist_info}/METADATA",
            f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n",
        )
        wheel.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{dist_info}/RECORD", "")
    project = root / "simple" / PACKAGE
    project.mkdir(parents=True)
    (project / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="../../files/{WHEEL}">{WHEEL}</a></body></html>'
    )


async def test_pip_download_through_https_proxy_from_a_local_index_over_tls(
    start_proxy: ProxyFactory, tls_files: TlsFiles, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    build_index(index)
    dest = tmp_path / "downloads"
    async with start_proxy() as proxy:
        with static_https_server(index, tls_files) as port:
            await run(
                sys.executable, "-m", "pip", "download", "--isolated", "--no-deps",
                "--disable-pip-version-check", "--no-cache-dir", "--retries", "0",
                "--timeout", "10", "--index-url", f"https://127.0.0.1:{port}/simple/",
                "--cert", tls_files.cert, "--dest", str(dest), PACKAGE,
                env=proxy_environment(proxy),
            )  # fmt: skip
    assert (dest / WHEEL).read_bytes() == (index / "files" / WHEEL).read_bytes()
    rows = await http_rows(proxy)
    assert rows and all(row == (ALICE, port, "closed") for row in rows), rows


# --- git clone over HTTPS through https_proxy ---------------------------------------------------


@pytest.mark.skipif(GIT is None, reason="git is not installed")
async def test_git_clone_over_https_through_https_proxy(
    start_proxy: ProxyFactory, tls_files: TlsFiles, tmp_path: Path
) -> None:
    assert GIT is not None
    home = tmp_path / "home"
    home.mkdir()
    git_env = clean_environment() | {
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
    }
    source, served = tmp_path / "source", tmp_path / "served"
    await run(GIT, "init", "-q", str(source), env=git_env)
    (source / "README").write_text("cloned through the proxy\n")
    await run(GIT, "add", "README", env=git_env, cwd=source)
    await run(GIT, "commit", "-q", "-m", "first", env=git_env, cwd=source)
    served.mkdir()
    await run(GIT, "clone", "-q", "--bare", str(source), str(served / "repo.git"), env=git_env)
    # The "dumb" HTTP protocol: static files, which any web server can serve.
    await run(GIT, "update-server-info", env=git_env, cwd=served / "repo.git")
    async with start_proxy() as proxy:
        with static_https_server(served, tls_files) as port:
            await run(
                GIT, "clone", "-q", f"https://127.0.0.1:{port}/repo.git", str(tmp_path / "clone"),
                env=proxy_environment(proxy, **(git_env | {"GIT_SSL_CAINFO": tls_files.cert})),
            )  # fmt: skip
    assert (tmp_path / "clone" / "README").read_text() == "cloned through the proxy\n"
    rows = await http_rows(proxy)
    assert rows and all(row[:2] == (ALICE, port) for row in rows), rows
