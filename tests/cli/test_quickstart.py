"""`socksauth quickstart` (README command 1): fresh embedded store, a user, a working curl line."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

from cli_runner import SOCKSAUTH, SUBPROCESS_SECONDS, cli_process, subprocess_environment
from e2e import HTTP_BODY, HttpServer

CURL_LINE = re.compile(
    r"curl --socks5-hostname (?P<user>[^:\s]+):(?P<password>\S+)@127\.0\.0\.1:(?P<port>\d+) "
)


async def test_quickstart_prints_a_curl_line_that_works_through_the_embedded_store(
    tmp_path: Path, http_server: HttpServer
) -> None:
    # A newcomer's machine: no database URL anywhere, the default location under XDG_DATA_HOME.
    env = subprocess_environment({"XDG_DATA_HOME": str(tmp_path)})
    allowed = await cli_process("rule", "add", "allow", "--cidr", "127.0.0.0/8", env=env)
    # The rule needs the schema: quickstart has not run yet, so this first call fails cleanly.
    assert allowed.returncode == 1 and "socksauth db upgrade" in allowed.stderr

    process = await asyncio.create_subprocess_exec(
        SOCKSAUTH, "quickstart", "--listen", "127.0.0.1:0",
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    assert process.stderr is not None
    output: list[str] = []
    try:
        async with asyncio.timeout(SUBPROCESS_SECONDS):
            while "stop with Ctrl-C" not in "".join(output):
                line = (await process.stderr.readline()).decode()
                assert line, "quickstart exited:\n" + "".join(output)
                output.append(line)
        match = CURL_LINE.search("".join(output))
        assert match is not None, "".join(output)
        assert (tmp_path / "socksauth" / "socksauth.sqlite3").is_file()
        assert "denied by default" in "".join(output)
        allowed = await cli_process("rule", "add", "allow", "--cidr", "127.0.0.0/8", env=env)
        assert allowed.returncode == 0, allowed.stderr

        user, password, port = match["user"], match["password"], match["port"]
        assert user == "alice" and len(password) >= 20
        url = f"http://localhost:{http_server.port}/"
        # The running server picks up the new rule within its check interval (2 s).
        body = b""
        for _ in range(20):
            curl = await asyncio.create_subprocess_exec(
                "curl", "--silent", "--max-time", "5",
                "--socks5-hostname", f"{user}:{password}@127.0.0.1:{port}", url,
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            body, _ = await curl.communicate()
            if curl.returncode == 0:
                break
            await asyncio.sleep(0.25)
        assert body == HTTP_BODY
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(SUBPROCESS_SECONDS):
            rest = await process.stderr.read()
            assert await process.wait() == 0
    # The password is shown once, in the curl line, and never logged.
    assert password not in rest.decode()
