"""Running the `socksauth` command in-process (click's CliRunner) or as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner, Result

from socksauth.cli import main

SOCKSAUTH = shutil.which("socksauth", path=str(Path(sys.executable).parent)) or "socksauth"
SUBPROCESS_SECONDS = 30.0


async def cli(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    """``socksauth ARGS`` in-process. In a thread: the command runs an event loop of its own,
    and the test's loop may be serving a proxy meanwhile."""
    runner = CliRunner(env={"SOCKSAUTH_DATABASE_URL": None, **(env or {})})
    return await asyncio.to_thread(runner.invoke, main, list(args), input=input)


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


def subprocess_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without SOCKSAUTH_* settings, plus ``env``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SOCKSAUTH_")}
    environment.update(env or {})
    return environment


async def cli_process(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> Completed:
    """``socksauth ARGS`` as a subprocess of the installed console script."""
    process = await asyncio.create_subprocess_exec(
        SOCKSAUTH,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_environment(env),
    )
    try:
        async with asyncio.timeout(SUBPROCESS_SECONDS):
            stdout, stderr = await process.communicate(input.encode() if input else None)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Completed(process.returncode, stdout.decode(), stderr.decode())


def one_error_line(text: str) -> str:
    """The single line of ``text``, which must be exactly one line starting with 'Error: '."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]
