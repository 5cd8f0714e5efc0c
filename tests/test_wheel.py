"""The built wheel, installed in a fresh venv, carries its migrations (`db upgrade` works)
and the dashboard's static files."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from socksauth.store import migrate

REPOSITORY = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _run(*command: str | Path, cwd: Path, env: dict[str, str]) -> str:
    completed = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert completed.returncode == 0, (
        f"{command} exited {completed.returncode}\n"
        f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    )
    return completed.stdout


def test_installed_wheel_upgrades_a_database_with_its_packaged_migrations(
    tmp_path: Path,
) -> None:
    # Nothing from the checkout or the developer's setup may leak into the installed copy.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SOCKSAUTH_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["HOME"] = str(tmp_path / "home")
    env["XDG_DATA_HOME"] = str(tmp_path / "data")

    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, REPOSITORY,
         cwd=tmp_path, env=env)  # fmt: skip
    (wheel,) = dist.glob("socksauth-*.whl")
    # The dashboard's chart library travels in the package: the page needs no CDN.
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for static in ("chart.umd.min.js", "chart.js-LICENSE.md", "dashboard.js"):
        assert f"socksauth/server/static/{static}" in names, static

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path, env=env)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path, env=env)

    location = _run(
        venv / "bin" / "python",
        "-c",
        "from socksauth.store import migrate; print(migrate.script_location())",
        cwd=tmp_path,
        env=env,
    ).strip()
    assert location.endswith("socksauth/_migrations")
    assert "site-packages" in location

    url = f"sqlite+aiosqlite:///{tmp_path / 'w.sqlite3'}"
    socksauth = venv / "bin" / "socksauth"
    _run(socksauth, "db", "upgrade", "--database-url", url, cwd=tmp_path, env=env)
    current = _run(socksauth, "db", "current", "--database-url", url, cwd=tmp_path, env=env)
    assert migrate.head() in current
    assert "(head)" in current
