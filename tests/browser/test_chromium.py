"""A real headless Chromium (Debian's package) through the proxy's HTTP side: it answers the
407 with the user's credentials over the DevTools protocol and loads an HTTP page (forwarded)
and an HTTPS page (a CONNECT tunnel) from local servers; screenshots checked.

The browser runs in a network namespace where only loopback exists (../shared/tools/
loopback-only), with the proxy and the pages in the same namespace (chromium_session.py), so
it cannot reach anything else whatever it tries. Skipped where there is no Chromium or no way
to make that namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from socksauth.store.interfaces import HTTP

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPO = Path(__file__).resolve().parents[2]
LOOPBACK_ONLY = next(
    (
        path
        for path in (
            REPO.parent / "shared/tools/loopback-only",
            Path("/work/shared/tools/loopback-only"),
        )
        if path.exists()
    ),
    None,
)
SESSION = Path(__file__).with_name("chromium_session.py")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
    pytest.mark.skipif(LOOPBACK_ONLY is None, reason="no loopback-only tool"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root"),
    pytest.mark.slow,
    pytest.mark.timeout(150),
]


def test_chromium_logs_in_on_407_and_loads_http_and_https_pages_through_the_proxy(
    tmp_path: Path,
) -> None:
    assert LOOPBACK_ONLY is not None
    result = subprocess.run(
        ["sh", str(LOOPBACK_ONLY), sys.executable, str(SESSION), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {
        "http": ("plain http through socksauth", (0, 200, 0)),
        "https": ("https through a CONNECT tunnel", (0, 0, 200)),
    }
    for name, (text, colour) in expected.items():
        loaded = report[name]
        assert loaded["text"] == text
        assert loaded["width"] == 800 and loaded["height"] > 300
        assert all(abs(a - b) <= 8 for a, b in zip(loaded["centre"], colour, strict=True))
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    # The proxy's first 407 was answered with alice's credentials; Chromium then sends them
    # ahead on its later connections to the proxy (the HTTPS page's CONNECT).
    assert report["http"]["challenges"] >= 1
    rows = report["audit"]
    served = [row for row in rows if row["outcome"] != "auth_failed"]
    assert served and all(row["protocol"] == HTTP for row in served)
    by_port = {row["target_port"]: row for row in served if row["username"] == "alice"}
    # The HTTPS page came through a CONNECT tunnel (no forwarded requests), the HTTP page as
    # forwarded requests.
    assert by_port[report["ports"]["https"]]["requests"] == 0
    assert by_port[report["ports"]["http"]]["requests"] >= 1
