"""One headless Chromium session through the proxy's HTTP side, for tests/browser.

    loopback-only python tests/browser/chromium_session.py WORKDIR

Runs inside a network namespace where only loopback exists (../shared/tools/loopback-only),
so the browser can reach nothing else: it starts the proxy (SQLite in WORKDIR, the user alice,
loopback targets allowed), a plain HTTP and an HTTPS origin, and Chromium with
``--proxy-server`` pointing at the proxy. Over the DevTools protocol it answers the proxy's
407 with alice's credentials (Fetch.authRequired), loads each page, reads its text and takes a
screenshot. Prints one JSON object: per page the text, the screenshot's size and the colour
of its centre pixel, and the proxy's audit rows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import ssl
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for e2e

from e2e import ALICE, ALICE_PASSWORD, TlsFiles, make_loopback_certificate

from socksauth import app
from socksauth.auth import accounts
from socksauth.config import ListenAddress, Settings
from socksauth.store.audit import SqlAuditStore
from socksauth.store.database import create_engine
from socksauth.store.interfaces import AuditQuery, NewRule
from socksauth.store.rules import SqlRuleStore

PAGES = {
    "http": ("plain http through socksauth", (0, 200, 0)),
    "https": ("https through a CONNECT tunnel", (0, 0, 200)),
}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"


def page(text: str, colour: tuple[int, int, int]) -> bytes:
    r, g, b = colour
    return (
        f'<!DOCTYPE html><html><body style="margin:0;height:100vh;background:rgb({r},{g},{b})">'
        f"<p>{text}</p></body></html>"
    ).encode()


async def serve_page(body: bytes, tls: ssl.SSLContext | None) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCache-Control: no-store\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)


class DevTools:
    """The DevTools protocol over one WebSocket, sessions flattened."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            if "id" in message:
                future = self._pending.pop(message["id"])
                if "error" in message:
                    future.set_exception(RuntimeError(str(message["error"])))
                else:
                    future.set_result(message.get("result", {}))
            else:
                await self.events.put(message)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        await self._ws.send(json.dumps(message))
        return await future

    def close(self) -> None:
        self._reader.cancel()


async def load(devtools: DevTools, url: str) -> dict[str, Any]:
    """Open ``url`` in a new tab, answering proxy challenges; its text and a screenshot."""
    target = await devtools.call("Target.createTarget", {"url": "about:blank"})
    attached = await devtools.call(
        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
    )
    session = attached["sessionId"]
    await devtools.call("Fetch.enable", {"handleAuthRequests": True}, session)
    await devtools.call("Page.enable", {}, session)
    # Not awaited yet: Page.navigate answers once the navigation commits, which needs the
    # paused requests continued (below).
    navigation = asyncio.ensure_future(devtools.call("Page.navigate", {"url": url}, session))
    challenges = 0
    while True:
        event = await devtools.events.get()
        if event.get("sessionId") != session:
            continue
        params = event.get("params", {})
        if event["method"] == "Fetch.requestPaused":
            await devtools.call(
                "Fetch.continueRequest", {"requestId": params["requestId"]}, session
            )
        elif event["method"] == "Fetch.authRequired":
            challenges += 1
            source = params["authChallenge"]["source"]
            response = (
                {"response": "ProvideCredentials", "username": ALICE, "password": ALICE_PASSWORD}
                if source == "Proxy"
                else {"response": "CancelAuth"}
            )
            await devtools.call(
                "Fetch.continueWithAuth",
                {"requestId": params["requestId"], "authChallengeResponse": response},
                session,
            )
        elif event["method"] == "Page.loadEventFired":
            break
    navigated = await navigation
    assert "errorText" not in navigated, navigated
    text = await devtools.call(
        "Runtime.evaluate",
        {"expression": "document.body.innerText", "returnByValue": True},
        session,
    )
    shot = await devtools.call("Page.captureScreenshot", {"format": "png"}, session)
    png = base64.b64decode(shot["data"])
    await devtools.call("Target.closeTarget", {"targetId": target["targetId"]})
    width, height, centre = centre_pixel(png)
    return {
        "text": text["result"].get("value"),
        "challenges": challenges,
        "png_bytes": len(png),
        "width": width,
        "height": height,
        "centre": centre,
        "png": png,
    }


def centre_pixel(png: bytes) -> tuple[int, int, tuple[int, ...]]:
    """(width, height, RGB of the centre pixel) of an 8-bit RGB or RGBA PNG."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
    position, idat = 8, b""
    width = height = channels = 0
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        data = png[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour_type = struct.unpack(">IIBB", data[:10])
            assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
            channels = 3 if colour_type == 2 else 4
        elif kind == b"IDAT":
            idat += data
        position += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    row = bytearray(stride)
    for y in range(height // 2 + 1):
        start = y * (stride + 1)
        kind_of_filter = raw[start]
        line = raw[start + 1 : start + 1 + stride]
        for x in range(stride):
            left = row[x - channels] if x >= channels else 0
            up = previous[x]
            up_left = previous[x - channels] if x >= channels else 0
            if kind_of_filter == 0:
                value = line[x]
            elif kind_of_filter == 1:
                value = line[x] + left
            elif kind_of_filter == 2:
                value = line[x] + up
            elif kind_of_filter == 3:
                value = line[x] + (left + up) // 2
            else:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                value = line[x] + predictor
            row[x] = value & 0xFF
        previous, row = row, previous
    middle = (width // 2) * channels
    return width, height, tuple(previous[middle : middle + 3])


async def main(workdir: Path) -> dict[str, Any]:
    url = f"sqlite+aiosqlite:///{workdir / 'proxy.sqlite3'}"
    await app.upgrade_database(url)
    async with app.open_user_store(url) as store:
        await accounts.add_user(store, ALICE, ALICE_PASSWORD)
    engine = create_engine(url)
    try:
        await SqlRuleStore(engine).add_rule(NewRule(action="allow", cidr="127.0.0.0/8"))
        tls_files: TlsFiles = make_loopback_certificate(str(workdir))
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(tls_files.cert, tls_files.key)
        plain = await serve_page(page(*PAGES["http"]), None)
        secure = await serve_page(page(*PAGES["https"]), tls)
        urls = {
            "http": f"http://127.0.0.1:{plain.sockets[0].getsockname()[1]}/",
            "https": f"https://127.0.0.1:{secure.sockets[0].getsockname()[1]}/",
        }
        settings = Settings(database_url=url, listen=(ListenAddress(host="127.0.0.1", port=0),))
        results: dict[str, Any] = {}
        async with app.running_server(settings) as server:
            port = server.bound[0].port
            profile = Path(tempfile.mkdtemp(dir=workdir, prefix="chromium-"))
            browser = subprocess.Popen(
                [
                    CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--window-size=800,600",
                    f"--user-data-dir={profile}", "--remote-debugging-port=0",
                    f"--proxy-server=http://127.0.0.1:{port}",
                    # Chromium sends loopback straight out unless told otherwise.
                    "--proxy-bypass-list=<-loopback>",
                    # The HTTPS origin's certificate is self-signed for this test.
                    "--ignore-certificate-errors",
                    "about:blank",
                ],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
            )  # fmt: skip
            try:
                active = profile / "DevToolsActivePort"
                async with asyncio.timeout(30):
                    while not active.exists() or len(active.read_text().split()) < 2:
                        await asyncio.sleep(0.1)
                devtools_port, path = active.read_text().split()[:2]
                async with (
                    asyncio.timeout(60),
                    websockets.connect(
                        f"ws://127.0.0.1:{devtools_port}{path}", max_size=64 * 1024 * 1024
                    ) as ws,
                ):
                    devtools = DevTools(ws)
                    try:
                        for name, target in urls.items():
                            loaded = await load(devtools, target)
                            png = loaded.pop("png")
                            (workdir / f"{name}.png").write_bytes(png)
                            results[name] = loaded
                    finally:
                        devtools.close()
            finally:
                browser.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    browser.wait(10)
                if browser.poll() is None:
                    browser.kill()
                    browser.wait()
        plain.close()
        secure.close()
        entries = await SqlAuditStore(engine).find_entries(AuditQuery(limit=None))
        results["audit"] = [
            {
                "protocol": entry.protocol,
                "username": entry.username,
                "command": entry.command,
                "target_port": entry.target_port,
                "outcome": entry.outcome,
                "requests": entry.requests,
            }
            for entry in entries
        ]
        results["ports"] = {name: int(u.rsplit(":", 1)[1].strip("/")) for name, u in urls.items()}
        return results
    finally:
        await engine.dispose()


if __name__ == "__main__":
    output = asyncio.run(main(Path(sys.argv[1])))
    print(json.dumps(output))
