"""deploy/: each file is valid for its tool, and the files agree with each other and with the
settings socksauth accepts (ports, names, grace periods, the user id)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from socksauth.config import Settings
from socksauth.settings_source import settings_source
from socksauth.store import migrate
from socksauth.store.database import create_engine

REPOSITORY = Path(__file__).resolve().parent.parent
DEPLOY = REPOSITORY / "deploy"
K8S = DEPLOY / "k8s"
# The image's user (Dockerfile), which Kubernetes must run as.
IMAGE_UID = 10001


def _settings(config: Path | None, environ: Mapping[str, str] = {}) -> tuple[Settings, int]:
    """What `socksauth serve` would run with: this file and these variables, no flags."""
    source = settings_source(
        None if config is None else str(config),
        {},
        default_database_url=lambda: "sqlite+aiosqlite:////var/lib/socksauth/x.sqlite3",
        environ=environ,
    )
    return source.load(), source.workers()


# Seconds the audit may take to be written (or spilled) at the end of a shutdown.
AUDIT_FLUSH_SECONDS = 10.0


def longest_shutdown(settings: Settings) -> float:
    """SIGTERM to exit at the latest (README, "Lifecycle and signals"): handshakes may
    finish, then tunnels get the grace period, then the audit is flushed."""
    return (
        settings.handshake_timeout_seconds
        + settings.connect_timeout_seconds
        + settings.shutdown_grace_seconds
        + AUDIT_FLUSH_SECONDS
    )


def _seconds(text: str) -> float:
    """A duration as compose and systemd write it: 45s, 1m, 45."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|min)?", text.strip())
    assert match is not None, text
    return float(match.group(1)) * (60 if match.group(2) in ("m", "min") else 1)


def _tool(name: str, *, ci_installs: bool) -> str:
    """The tool's path; skipped where it is missing, but a failure in CI if CI installs it."""
    path = os.pathsep.join((os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin"))
    found = shutil.which(name, path=path)
    if found is None:
        if ci_installs and os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed; .ci/run installs it")
        pytest.skip(f"{name} is not installed")
    return found


# --- the container image ----------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def test_the_image_defaults_are_valid_settings_and_match_what_the_dockerfile_exposes() -> None:
    settings, workers = _settings(DEPLOY / "container.toml")
    assert [(a.host, a.port) for a in settings.listen] == [("0.0.0.0", 1080)]
    assert settings.admin_listen is not None
    assert (settings.admin_listen.host, settings.admin_listen.port) == ("0.0.0.0", 9180)
    assert workers == 1
    assert settings.log_format == "json"

    instructions = _dockerfile()
    (exposed,) = [args for word, args in instructions if word == "EXPOSE"]
    assert exposed.split() == ["1080", "9180"]
    (user,) = [args for word, args in instructions if word == "USER"]
    assert user == f"{IMAGE_UID}:{IMAGE_UID}"
    (healthcheck,) = [args for word, args in instructions if word == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "':9180'" in healthcheck


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_image_healthcheck_passes_while_serve_runs_and_fails_once_it_stopped(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'socksauth.sqlite3'}"
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await engine.dispose()
    # As in the image: its config file, the variables a deployment sets; loopback here.
    admin_port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("SOCKSAUTH_")}
    env |= {
        "SOCKSAUTH_DATABASE_URL": url,
        "SOCKSAUTH_LISTEN": "127.0.0.1:0",
        "SOCKSAUTH_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
    }
    (healthcheck,) = [args for word, args in _dockerfile() if word == "HEALTHCHECK"]
    command = json.loads(healthcheck.partition(" CMD ")[2])
    assert command[0] == "python"
    command[0] = sys.executable

    async def check() -> int:
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stderr=asyncio.subprocess.DEVNULL
        )
        async with asyncio.timeout(10):
            return await process.wait()

    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        serve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "socksauth", "serve", "--config", str(DEPLOY / "container.toml"),
            env=env, stdin=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while "admin listener" not in log.read_text():
                assert serve.returncode is None, log.read_text()
                await asyncio.sleep(0.05)
        assert await check() == 0
    finally:
        serve.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await serve.wait() == 0, log.read_text()
    assert await check() != 0


def test_the_dockerfile_copies_only_what_the_wheel_and_the_image_need() -> None:
    # No .dockerignore may exist at the top level: every COPY from the context is named.
    copied = [
        args.split()[:-1]
        for word, args in _dockerfile()
        if word == "COPY" and not args.startswith("--from")
    ]
    sources = sorted(source.rstrip("/") for sources in copied for source in sources)
    assert sources == [
        "README.md", "deploy/container.toml", "migrations", "pyproject.toml", "socksauth",
    ]  # fmt: skip
    for source in sources:
        assert (REPOSITORY / source).exists(), source


# --- docker compose -------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return document


def _interpolated(value: str) -> str:
    """Compose's ${NAME:?message} with a value, as when POSTGRES_PASSWORD is set."""
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "secret", value)


def test_compose_nodes_run_valid_settings_with_their_own_names_trusting_the_backend() -> None:
    compose = _compose()
    services = compose["services"]
    (subnet,) = [pool["subnet"] for pool in compose["networks"]["backend"]["ipam"]["config"]]
    names = set()
    for service in ("node-a", "node-b"):
        node = services[service]
        environ = {key: _interpolated(str(value)) for key, value in node["environment"].items()}
        settings, _ = _settings(DEPLOY / "container.toml", environ)
        names.add(settings.node_name)
        assert settings.database_url.startswith("postgresql+asyncpg://socksauth:secret@postgres")
        assert [str(network) for network in settings.proxy_protocol_networks] == [subnet]
        assert node["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
        assert _seconds(node["stop_grace_period"]) > longest_shutdown(settings)
        # Behind a TCP load balancer: UDP and BIND replies would name unreachable addresses.
        assert not settings.udp_enabled and not settings.bind_enabled
        assert node["read_only"] is True
        assert node["networks"] == ["backend"]
    assert names == {"node-a", "node-b"}

    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "healthcheck" in services["postgres"]
    haproxy = services["haproxy"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    assert "1080:1080" in haproxy["ports"]
    assert all(condition == {"condition": "service_healthy"}
               for condition in haproxy["depends_on"].values())  # fmt: skip


# --- HAProxy --------------------------------------------------------------------------------


def test_haproxy_cfg_is_valid_and_sends_proxy_v2_to_each_compose_node_checking_readyz() -> None:
    result = subprocess.run(
        [_tool("haproxy", ci_installs=True), "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALERT" not in result.stderr

    text = (DEPLOY / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+)", text, re.MULTILINE)
    assert servers == [("node-a", "node-a", "1080"), ("node-b", "node-b", "1080")]
    assert set(_compose()["services"]) >= {name for name, _, _ in servers}
    default_server = re.search(r"^\s*default-server (.*)$", text, re.MULTILINE)
    assert default_server is not None
    options = default_server.group(1).split()
    assert "send-proxy-v2" in options
    assert options[options.index("port") + 1] == "9180"
    assert re.search(r"http-check send meth GET uri /readyz\b", text)
    assert re.search(r"^\s*balance leastconn$", text, re.MULTILINE)
    # Its tunnels outlive socksauth's own idle timeout, which therefore decides.
    for side in ("client", "server"):
        match = re.search(rf"^\s*timeout {side} (\d+)h$", text, re.MULTILINE)
        assert match is not None and int(match.group(1)) * 3600 > 900


# --- systemd --------------------------------------------------------------------------------


def _unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "socksauth.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_the_systemd_unit_verifies_and_outlasts_the_longest_shutdown(tmp_path: Path) -> None:
    unit = _unit()
    # It reads deploy/socksauth.toml, which keeps every default.
    defaults = Settings(database_url="sqlite+aiosqlite:///x")
    assert _seconds(unit["TimeoutStopSec"][0]) > longest_shutdown(defaults)
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["KillMode"] == ["mixed"]
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[hardening] == ["yes"], hardening

    # verify checks that ExecStart exists: run this interpreter's socksauth instead.
    (executable,) = unit["ExecStart"]
    copy = tmp_path / "socksauth.service"
    copy.write_text(
        (DEPLOY / "socksauth.service")
        .read_text()
        .replace(executable.split()[0], f"{sys.executable} -m socksauth")
    )
    result = subprocess.run(
        # Part of systemd, which CI does not install: checked where it is present.
        [_tool("systemd-analyze", ci_installs=False), "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify reports a bad setting on stderr but exits 0 all the same.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


# --- Kubernetes -----------------------------------------------------------------------------


def _manifests() -> dict[str, dict[str, Any]]:
    """Every manifest by kind."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in found, f"two {document['kind']}s"
            assert "namespace" not in document["metadata"], path  # kubectl -n decides
            found[document["kind"]] = document
    return found


def test_kubernetes_manifests_parse_and_agree_with_each_other(tmp_path: Path) -> None:
    manifests = _manifests()
    assert set(manifests) == {
        "Secret", "ConfigMap", "Job", "Deployment", "Service", "PodDisruptionBudget",
    }  # fmt: skip
    config = tmp_path / "socksauth.toml"
    config.write_text(manifests["ConfigMap"]["data"]["socksauth.toml"])
    tomllib.loads(config.read_text())
    settings, workers = _settings(config)
    assert settings.admin_listen is not None
    assert not settings.udp_enabled and not settings.bind_enabled

    deployment = manifests["Deployment"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert manifests["Service"]["spec"]["selector"].items() <= pod["metadata"]["labels"].items()

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"socks": settings.listen[0].port, "admin": settings.admin_listen.port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert manifests["Service"]["spec"]["ports"][0]["targetPort"] == "socks"

    # The kubelet kills the pod this long after it starts terminating: the preStop pause,
    # then SIGTERM and the longest shutdown must fit.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + longest_shutdown(settings)
    assert int(container["resources"]["limits"]["cpu"]) == workers

    environment = {item["name"]: item["valueFrom"] for item in container["env"]}
    assert environment["SOCKSAUTH_NODE_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    secret = manifests["Secret"]
    for spec in (container, manifests["Job"]["spec"]["template"]["spec"]["containers"][0]):
        (database,) = [item for item in spec["env"] if item["name"] == "SOCKSAUTH_DATABASE_URL"]
        reference = database["valueFrom"]["secretKeyRef"]
        assert reference["name"] == secret["metadata"]["name"]
        assert reference["key"] in secret["stringData"]
    assert manifests["Job"]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "db", "upgrade",
    ]  # fmt: skip
    assert (
        container["image"] == manifests["Job"]["spec"]["template"]["spec"]["containers"][0]["image"]
    )

    for spec in (pod["spec"], manifests["Job"]["spec"]["template"]["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == IMAGE_UID
        for each in spec["containers"]:
            context = each["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts == {"/etc/socksauth", "/var/lib/socksauth"}  # the config; the spill file
