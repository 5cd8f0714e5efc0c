"""`socksauth top`: a live terminal view of every user's tunnels and traffic, from the database.

It reads the database only (the interim counts and heartbeats the nodes write), so it works
from any host that has the URL, over SSH, in 80x24. Keys: t u d b f n sort by tunnels, up,
down, bytes today, failed logins, name; r reverses; q (or Ctrl-C) quits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from socksauth import app
from socksauth.cli.options import database_url_option, resolve_database_url, run_command
from socksauth.cli.sessions import human_bytes
from socksauth.errors import DatabaseError
from socksauth.store.interfaces import NodeRecord, SessionReader, UserActivity

# Key → (column title, sort key, largest first).
SORTS = {
    "t": "tunnels",
    "u": "up",
    "d": "down",
    "b": "today",
    "f": "failed",
    "n": "user",
}
_SORT_KEYS = {
    "tunnels": lambda a: (a.open_connections, a.rate_from_client + a.rate_to_client),
    "up": lambda a: a.rate_from_client,
    "down": lambda a: a.rate_to_client,
    "today": lambda a: a.bytes_from_client + a.bytes_to_client,
    "failed": lambda a: a.failed_logins,
    "user": lambda a: a.username,
}


@dataclass(slots=True)
class View:
    """What the screen shows, and how it is sorted."""

    sort: str = "tunnels"
    reverse: bool = False
    activity: Sequence[UserActivity] = ()
    nodes: Sequence[NodeRecord] = ()
    error: str | None = None
    at: datetime | None = None

    def press(self, key: str) -> bool:
        """Apply a key; False when it means quit."""
        if key in ("q", "Q", "\x03", "\x04"):
            return False
        if key in SORTS:
            self.sort = SORTS[key]
            self.reverse = False
        elif key == "r":
            self.reverse = not self.reverse
        return True

    def sorted_activity(self) -> list[UserActivity]:
        # Names read A→Z, numbers largest first; r turns either around.
        descending = self.sort != "user"
        return sorted(self.activity, key=_SORT_KEYS[self.sort], reverse=descending != self.reverse)

    def render(self, height: int) -> Group:
        live_nodes = sum(1 for node in self.nodes if node.alive)
        tunnels = sum(a.open_connections for a in self.activity)
        up = sum(a.rate_from_client for a in self.activity)
        down = sum(a.rate_to_client for a in self.activity)
        at = "" if self.at is None else self.at.strftime("%H:%M:%SZ")
        # One line each, cut rather than wrapped: the table's place must not move in 80x24.
        head = Text.assemble(
            ("socksauth top", "bold"),
            f" {at} nodes {live_nodes}/{len(self.nodes)} tunnels {tunnels} ",
            f"up {human_bytes(up)}/s down {human_bytes(down)}/s",
            no_wrap=True,
            overflow="ellipsis",
        )
        keys = Text(
            f"sort: {self.sort}{' (reversed)' if self.reverse else ''}  "
            "keys: t u d b f n sort, r reverse, q quit",
            style="dim",
            no_wrap=True,
            overflow="ellipsis",
        )
        table = Table(expand=True, box=None, pad_edge=False, header_style="bold reverse")
        for title, justify in (
            ("USER", "left"),
            ("TUNNELS", "right"),
            ("UP/s", "right"),
            ("DOWN/s", "right"),
            ("TODAY UP", "right"),
            ("TODAY DOWN", "right"),
            ("FAILED", "right"),
        ):
            table.add_column(title, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        rows = self.sorted_activity()
        room = max(1, height - 4)
        for item in rows[:room]:
            table.add_row(
                item.username,
                str(item.open_connections),
                human_bytes(item.rate_from_client),
                human_bytes(item.rate_to_client),
                human_bytes(item.bytes_from_client),
                human_bytes(item.bytes_to_client),
                str(item.failed_logins),
            )
        parts: list[Text | Table] = [head, keys, table]
        if len(rows) > room:
            parts.append(Text(f"… {len(rows) - room} more", style="dim"))
        if self.error is not None:
            parts.append(Text(f"database: {self.error}", style="bold red"))
        return Group(*parts)


@contextlib.contextmanager
def _keys_unbuffered() -> Iterator[None]:
    """Single key presses, not lines, from a terminal (restored on the way out)."""
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _refresh(reader: SessionReader, view: View) -> None:
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        view.activity = await reader.user_activity(midnight)
        view.nodes = await reader.nodes()
        view.error = None
    except DatabaseError as error:  # the database went away: say so, keep the last numbers
        view.error = str(error).splitlines()[0] if str(error) else type(error).__name__
    view.at = now


async def _run(url: str, interval: float, view: View) -> None:
    console = Console()
    keys: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    def readable() -> None:
        data = os.read(fd, 32).decode(errors="replace")
        for key in data or "q":  # end of input quits too
            keys.put_nowait(key)

    async with app.open_session_reader(url) as reader:
        with _keys_unbuffered(), Live(console=console, screen=True, auto_refresh=False) as live:
            loop.add_reader(fd, readable)
            try:
                while True:
                    await _refresh(reader, view)
                    live.update(view.render(console.size.height), refresh=True)
                    deadline = loop.time() + interval
                    while (remaining := deadline - loop.time()) > 0:
                        try:
                            async with asyncio.timeout(remaining):
                                key = await keys.get()
                        except TimeoutError:
                            break
                        if not view.press(key):
                            return
                        live.update(view.render(console.size.height), refresh=True)
            finally:
                loop.remove_reader(fd)


@click.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option(
    "--sort",
    type=click.Choice(sorted(set(SORTS.values()))),
    default="tunnels",
    show_default=True,
    help="Initial order (keys t u d b f n change it).",
)
@database_url_option
def top(interval: float, sort: str, database_url: str | None) -> None:
    """Live view per user: open tunnels, bytes/s up and down, bytes today, failed logins.

    Reads the database only: run it from any host with the database URL. Rates are the
    nodes' interim counts (every audit_interim_interval seconds); "today" is since 00:00
    UTC, for connections that started today. Keys: t u d b f n sort, r reverses, q quits.
    """
    url = resolve_database_url(database_url)
    with contextlib.suppress(KeyboardInterrupt):
        run_command(_run(url, interval, View(sort=sort)))
