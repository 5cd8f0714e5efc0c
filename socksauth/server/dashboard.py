"""Dashboard: the read-only operator pages of the admin listener, rendered on the server.

``/`` (nodes and their health, per-user traffic over the last hour as a chart, recent failed
logins and likely lockouts), ``/sessions`` (live sessions, filterable by user and node) and
``/rules`` (the destination rules in force), plus ``/static/`` files shipped in the package
(Chart.js, the chart's script): no CDN, the pages work offline. Every page needs an admin
token (``Authorization: Bearer``) or HTTP Basic of an account marked admin; the static files
hold no data and are open. Read-only: a GET changes nothing, so no request forged from
another site can act; kicks stay a CLI verb.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from importlib import resources
from urllib.parse import parse_qs

from socksauth.connection_record import Outcome
from socksauth.errors import DatabaseError
from socksauth.logs import get_logger
from socksauth.store.interfaces import (
    AuditEntry,
    AuditQuery,
    AuditReader,
    RuleRecord,
    RuleSource,
    SessionQuery,
    SessionReader,
)

log = get_logger("admin")

# (the Authorization header or None, the client's address) → may this client see the pages.
Authorize = Callable[[str | None, str], Awaitable[bool]]
# (status, content type, body, headers besides those every response has)
Response = tuple[HTTPStatus, str, bytes, list[tuple[str, str]]]

PAGES = ("/", "/sessions", "/rules")
_STATIC = {
    "/static/chart.umd.min.js": "application/javascript; charset=utf-8",
    "/static/dashboard.js": "application/javascript; charset=utf-8",
}
TRAFFIC_WINDOW = timedelta(hours=1)
TRAFFIC_BUCKET_SECONDS = 60
# Users drawn in the chart: the busiest, so the legend stays readable.
CHART_USERS = 8
FAILED_LOGINS_SHOWN = 20
# Live sessions listed on one page (the oldest first): filter by user or node for the rest.
SESSIONS_SHOWN = 1000
# As server/throttle's lockout: this many failures for one name from one address within
# 15 minutes lock that pair out (shown as "likely locked out").
LOCKOUT_FAILURES = 10
LOCKOUT_WINDOW = timedelta(minutes=15)

_HEADERS = [
    # Scripts and styles from this server only: no inline script can run, whatever a
    # username or target host in the page contains.
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]
_CHALLENGE = [("WWW-Authenticate", 'Basic realm="socksauth admin", charset="UTF-8"')]


def is_dashboard_path(path: str) -> bool:
    return path in PAGES or path in _STATIC or path == "/static/dashboard.css"


class Dashboard:
    """Answers the dashboard's GET requests from the database (every node's view)."""

    def __init__(
        self,
        *,
        sessions: SessionReader,
        rules: RuleSource,
        audit: AuditReader,
        authorize: Authorize,
    ) -> None:
        self._sessions = sessions
        self._rules = rules
        self._audit = audit
        self._authorize = authorize

    async def respond(self, target: str, headers: Mapping[str, str], client_host: str) -> Response:
        path, _, query_text = target.partition("?")
        if path in _STATIC or path == "/static/dashboard.css":
            return _static(path)
        if not await self._authorize(headers.get("authorization"), client_host):
            return (
                HTTPStatus.UNAUTHORIZED,
                "text/plain; charset=utf-8",
                b"admin credentials needed: a token (Authorization: Bearer) or an admin user\n",
                _CHALLENGE,
            )
        query = {name: values[-1] for name, values in parse_qs(query_text).items()}
        try:
            if path == "/sessions":
                user, node = query.get("user") or None, query.get("node") or None
                body = await self._sessions_page(user, node)
            elif path == "/rules":
                body = await self._rules_page()
            else:
                body = await self._overview()
        except DatabaseError as error:
            log.warning("dashboard: %s", error)
            return (
                HTTPStatus.SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                b"the database is unavailable\n",
                [],
            )
        return HTTPStatus.OK, "text/html; charset=utf-8", body.encode(), list(_HEADERS)

    async def _overview(self) -> str:
        now = datetime.now(UTC)
        nodes = await self._sessions.nodes()
        since = now - TRAFFIC_WINDOW
        traffic = await self._sessions.traffic(since, now, TRAFFIC_BUCKET_SECONDS)
        failed = await self._audit.find_entries(
            AuditQuery(outcome=Outcome.AUTH_FAILED.value, since=now - timedelta(days=1), limit=1000)
        )
        node_rows = "".join(
            _row(
                node.name,
                _badge("live" if node.alive else "not responding", node.alive),
                f"{(now - node.heartbeat_at).total_seconds():.0f} s ago",
                _when(node.started_at),
                str(node.connections),
                node.version or "-",
            )
            for node in nodes
        )
        chart = _chart_data(traffic, since)
        lockouts = _likely_lockouts(failed, now)
        failed_rows = "".join(
            _row(_when(e.started_at), e.username or "-", _client(e), e.node)
            for e in failed[:FAILED_LOGINS_SHOWN]
        )
        lockout_rows = "".join(
            _row(name, host, str(count)) for (name, host), count in sorted(lockouts.items())
        )
        return _page(
            "Overview",
            f"""
<section><h2>Nodes</h2>
{
                _table(
                    ("node", "health", "heartbeat", "started", "clients", "version"),
                    node_rows,
                    "no node has reported yet",
                )
            }
</section>
<section><h2>Traffic per user, last hour</h2>
<canvas id="traffic" width="1100" height="300" role="img"
 aria-label="bytes per second per user, each minute of the last hour"></canvas>
<script type="application/json" id="traffic-data">{_json_in_html(chart)}</script>
</section>
<section><h2>Likely locked out (≥ {LOCKOUT_FAILURES} failures in 15 min)</h2>
{_table(("user", "client", "failures"), lockout_rows, "none")}
</section>
<section><h2>Recent failed logins</h2>
{_table(("when", "user", "client", "node"), failed_rows, "none in the last 24 hours")}
</section>""",
        )

    async def _sessions_page(self, user: str | None, node: str | None) -> str:
        now = datetime.now(UTC)
        live = await self._sessions.live_sessions(
            SessionQuery(username=user, node=node, limit=SESSIONS_SHOWN + 1)
        )
        more = len(live) > SESSIONS_SHOWN
        live = live[:SESSIONS_SHOWN]
        nodes = sorted(n.name for n in await self._sessions.nodes())
        rows = "".join(
            _row(
                e.username or "-",
                e.command or "-",
                _client(e),
                _target(e),
                e.node,
                _age(now - e.started_at),
                _bytes(e.bytes_from_client),
                _bytes(e.bytes_to_client),
                _bytes(e.rate_from_client or 0) + "/s",
                _bytes(e.rate_to_client or 0) + "/s",
                str(e.id),
            )
            for e in live
        )
        options = "".join(
            f'<option value="{_h(name)}"{" selected" if name == node else ""}>{_h(name)}</option>'
            for name in nodes
        )
        form = f"""
<form method="get" action="/sessions" class="filter">
<label>user <input name="user" value="{_h(user or "")}"></label>
<label>node <select name="node"><option value="">any</option>{options}</select></label>
<button type="submit">filter</button> <a href="/sessions">clear</a>
</form>"""
        shown = "" if user is None and node is None else " (filtered)"
        if more:
            shown += f", the oldest {SESSIONS_SHOWN} shown: filter for the others"
        return _page(
            "Live sessions",
            f"""{form}
<section><h2>{len(live)}{"+" if more else ""} live session(s){_h(shown)}</h2>
{
                _table(
                    (
                        "user",
                        "command",
                        "client",
                        "target",
                        "node",
                        "open for",
                        "up",
                        "down",
                        "up/s",
                        "down/s",
                        "id",
                    ),
                    rows,
                    "no live session",
                )
            }
<p class="hint">Kick with <code>socksauth sessions kill ID</code>.</p>
</section>""",
        )

    async def _rules_page(self) -> str:
        rules = await self._rules.list_rules()
        rows = "".join(_rule_row(rule) for rule in rules)
        return _page(
            "Rules in force",
            f"""
<section><h2>Destination rules, first match decides</h2>
{
                _table(
                    ("position", "action", "user", "network", "domain", "ports", "command"),
                    rows,
                    "no rule: every target is allowed unless protected",
                )
            }
<p class="hint">Loopback, link-local, metadata addresses and the proxy itself are protected
unless a rule inside them allows.</p>
</section>""",
        )


def _rule_row(rule: RuleRecord) -> str:
    if rule.port_min is None:
        ports = "any"
    elif rule.port_min == rule.port_max:
        ports = str(rule.port_min)
    else:
        ports = f"{rule.port_min}-{rule.port_max}"
    return _row(
        str(rule.position),
        _badge(rule.action, rule.action == "allow"),
        rule.username or "any",
        rule.cidr or "any",
        rule.domain or "any",
        ports,
        rule.command or "any",
    )


def _chart_data(
    traffic: Mapping[str, Sequence[tuple[int, int]]], since: datetime
) -> dict[str, object]:
    busiest = sorted(traffic.items(), key=lambda item: -sum(a + b for a, b in item[1]))
    labels = [
        (since + timedelta(seconds=TRAFFIC_BUCKET_SECONDS * (i + 1))).strftime("%H:%M")
        for i in range(len(busiest[0][1]) if busiest else 60)
    ]
    series = [
        {"user": name, "values": [round((a + b) / TRAFFIC_BUCKET_SECONDS, 1) for a, b in values]}
        for name, values in busiest[:CHART_USERS]
    ]
    return {"labels": labels, "series": series}


def _likely_lockouts(failed: Sequence[AuditEntry], now: datetime) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for entry in failed:
        if entry.started_at >= now - LOCKOUT_WINDOW:
            key = (entry.username or "-", entry.client_host)
            counts[key] = counts.get(key, 0) + 1
    return {key: count for key, count in counts.items() if count >= LOCKOUT_FAILURES}


def _static(path: str) -> Response:
    if path == "/static/dashboard.css":
        return HTTPStatus.OK, "text/css; charset=utf-8", _CSS.encode(), list(_HEADERS[1:])
    name = path.removeprefix("/static/")
    body = resources.files("socksauth.server").joinpath("static", name).read_bytes()
    # The files change only with the package: browsers may keep them for a day.
    return HTTPStatus.OK, _STATIC[path], body, [("Cache-Control", "max-age=86400")]


def _h(text: str) -> str:
    """Escaped once, here: usernames, hosts and targets come from clients."""
    return html.escape(text, quote=True)


def _json_in_html(value: object) -> str:
    # Inside <script type="application/json">: no "</script>" or "<!--" can end it early.
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _row(*cells: str) -> str:
    # Cells are text, except badges (already escaped markup, marked by a leading NUL).
    rendered = (c[1:] if c.startswith("\x00") else _h(c) for c in cells)
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in rendered) + "</tr>\n"


def _badge(text: str, good: bool) -> str:
    return f'\x00<span class="badge {"good" if good else "bad"}">{_h(text)}</span>'


def _table(columns: Sequence[str], rows: str, empty: str) -> str:
    if not rows:
        return f'<p class="empty">{_h(empty)}</p>'
    head = "".join(f"<th>{_h(column)}</th>" for column in columns)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{rows}</tbody></table>"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _address(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client(entry: AuditEntry) -> str:
    return _address(entry.client_host, entry.client_port)


def _target(entry: AuditEntry) -> str:
    return "-" if entry.target_host is None else _address(entry.target_host, entry.target_port)


def _page(title: str, content: str) -> str:
    nav = "".join(
        f'<a href="{path}">{_h(name)}</a>'
        for path, name in (("/", "Overview"), ("/sessions", "Live sessions"), ("/rules", "Rules"))
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>socksauth — {_h(title)}</title>
<link rel="stylesheet" href="/static/dashboard.css">
</head><body>
<header><strong>socksauth</strong> <nav>{nav}</nav>
<span class="at">{_h(_when(datetime.now(UTC)))}</span></header>
<main><h1>{_h(title)}</h1>
{content}
</main>
<script src="/static/chart.umd.min.js"></script>
<script src="/static/dashboard.js"></script>
</body></html>
"""


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #263238; color: #fff; padding: 8px 16px; display: flex; gap: 24px; }
header a { color: #cfd8dc; margin-right: 16px; text-decoration: none; }
header .at { margin-left: auto; color: #90a4ae; }
main { padding: 8px 16px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 24px; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #eceff1; }
.badge { padding: 1px 6px; border-radius: 3px; color: #fff; }
.badge.good { background: #2e7d32; } .badge.bad { background: #c62828; }
.empty, .hint { color: #666; } canvas { background: #fff; border: 1px solid #ddd; }
form.filter { margin: 8px 0; } form.filter label { margin-right: 12px; }
"""
