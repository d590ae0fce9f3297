"""The admin listener: /metrics, /stats (JSON and HTML), /healthz and /readyz.

It listens on its own address (`admin_listen`), so probes and metrics are never exposed on the
client port.
"""

import asyncio
import collections
import html
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aggregator.metrics import Metrics

# One ready-backlog sample every 10 s for an hour: the chart on /stats.
HISTORY_PERIOD_S = 10.0
HISTORY_SAMPLES = 360
# /healthz fails when the event loop woke up this late for its heartbeat (a stalled loop).
MAX_LOOP_LAG_S = 5.0
HEARTBEAT_PERIOD_S = 1.0


class BacklogHistory:
    """Ring buffer of (wall-clock time, ready backlog) samples."""

    def __init__(self, size: int = HISTORY_SAMPLES) -> None:
        self.samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=size)

    def add(self, wall_s: float, backlog: int) -> None:
        self.samples.append((wall_s, backlog))


class Heartbeat:
    """Measures how late the event loop runs a periodic task, for the liveness probe."""

    def __init__(self) -> None:
        self.last_lag_s = 0.0
        self.beats = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected_s = loop.time() + HEARTBEAT_PERIOD_S
            await asyncio.sleep(HEARTBEAT_PERIOD_S)
            self.last_lag_s = max(loop.time() - expected_s, 0.0)
            self.beats += 1

    @property
    def healthy(self) -> bool:
        return self.last_lag_s < MAX_LOOP_LAG_S


class AdminApp:
    """Handlers of the admin listener; `stats` returns the JSON-ready numbers of /stats."""

    def __init__(
        self,
        metrics: Metrics,
        stats: Callable[[], dict[str, Any]],
        is_ready: Callable[[], bool],
        heartbeat: Heartbeat,
        history: BacklogHistory,
    ) -> None:
        self._metrics = metrics
        self._stats = stats
        self._is_ready = is_ready
        self._heartbeat = heartbeat
        self._history = history

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)

        return app

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)

        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        lag_s = self._heartbeat.last_lag_s
        if not self._heartbeat.healthy:
            return web.json_response({"status": "stalled", "loop_lag_s": lag_s}, status=503)

        return web.json_response({"status": "ok", "loop_lag_s": lag_s})

    async def readyz(self, request: web.Request) -> web.Response:
        if not self._is_ready():
            return web.json_response({"status": "not ready"}, status=503)

        return web.json_response({"status": "ready"})

    async def stats(self, request: web.Request) -> web.Response:
        numbers = self._stats()
        numbers["backlog_history"] = list(self._history.samples)
        if request.query.get("format") == "json":
            return web.Response(body=orjson.dumps(numbers), content_type="application/json")

        return web.Response(text=render_stats_page(numbers), content_type="text/html")


def render_stats_page(numbers: dict[str, Any]) -> str:
    """Render /stats as one self-contained HTML page (inline CSS and SVG, no scripts)."""
    tiles = "".join(
        f'<div class="tile"><div class="label">{html.escape(label)}</div>'
        f'<div class="value">{html.escape(formatter(numbers.get(key)))}</div></div>'
        for key, label, formatter in _TOTALS
    )
    forwarder_rows = "".join(_forwarder_row(forwarder) for forwarder in numbers.get("forwarders", []))
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    history = numbers.get("backlog_history", [])
    current = f" (now {_format(history[-1][1])})" if history else ""

    return _PAGE.format(
        version=html.escape(str(numbers.get("version", ""))),
        generated=generated,
        tiles=tiles,
        forwarders=forwarder_rows or f'<tr><td colspan="{_FORWARDER_COLUMNS}">No forwarders configured.</td></tr>',
        current=current,
        chart=backlog_chart(history),
    )


def backlog_chart(samples: list[tuple[float, int]], width: int = 720, height: int = 160) -> str:
    """Draw the ready backlog of the last hour as an inline SVG line chart."""
    if len(samples) < 2:
        return '<p class="muted">Not enough samples yet: one is taken every 10 s.</p>'

    span_s = HISTORY_PERIOD_S * HISTORY_SAMPLES
    first_s = samples[-1][0] - span_s
    peak = max(max(backlog for _, backlog in samples), 1)
    points = " ".join(
        f"{(wall_s - first_s) / span_s * width:.1f},{height - backlog / peak * (height - 10):.1f}"
        for wall_s, backlog in samples
    )
    middle_y = height - (height - 10) / 2

    return (
        f'<svg width="{width}" height="{height + 20}" role="img" aria-label="ready backlog, last hour">'
        f'<rect x="0" y="0" width="{width}" height="{height}" class="frame"/>'
        f'<line x1="0" y1="{middle_y:.1f}" x2="{width}" y2="{middle_y:.1f}" class="grid"/>'
        f'<line x1="{width / 2:.1f}" y1="0" x2="{width / 2:.1f}" y2="{height}" class="grid"/>'
        f'<polyline points="{points}" class="line"/>'
        f'<text x="4" y="14" class="axis">{peak}</text>'
        f'<text x="4" y="{height - 4}" class="axis">0</text>'
        f'<text x="4" y="{height + 16}" class="axis">60 min ago</text>'
        f'<text x="{width / 2:.1f}" y="{height + 16}" class="axis" text-anchor="middle">30 min ago</text>'
        f'<text x="{width}" y="{height + 16}" class="axis" text-anchor="end">now</text>'
        "</svg>"
    )


def _forwarder_row(forwarder: dict[str, Any]) -> str:
    state = str(forwarder.get("state", ""))
    # Truncate before escaping, so that a cut never splits an entity such as &amp;.
    detail = str(forwarder.get("last_error") or "")
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[:MAX_DETAIL_CHARS] + "\u2026"
    until_in_s = forwarder.get("until_in_s")
    next_try = "" if until_in_s is None else f"in {_format_duration(max(until_in_s, 0))}"
    cells = [
        html.escape(str(forwarder.get("name", ""))),
        f'<span class="state {html.escape(state)}">{html.escape(state)}</span>',
        html.escape(next_try),
        html.escape(_format(forwarder.get("latency_ms"))),
        html.escape(_format(forwarder.get("success_rate"))),
        html.escape(_format(forwarder.get("interval_s"))),
        html.escape(f"{forwarder.get('succeeded', 0):,} / {forwarder.get('failed', 0):,}"),
        html.escape(str(forwarder.get("last_error_kind") or "")),
        html.escape(detail),
    ]

    # Every cell stays on one line except the free-text detail.
    row = "".join(f"<td>{cell}</td>" for cell in cells[:-1]) + f'<td class="detail">{cells[-1]}</td>'

    return f"<tr>{row}</tr>"


def _format(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"

    return str(value)


def _format_duration(value: object) -> str:
    """Format seconds as "45 s", "12 min" or "3 h 5 min"."""
    if not isinstance(value, int | float):
        return "-"

    seconds = int(value)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"

    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


# Longer last-error texts are cut in the forwarder table; /stats?format=json has them whole.
MAX_DETAIL_CHARS = 120

_TOTALS: list[tuple[str, str, Callable[[object], str]]] = [
    ("uptime_s", "Uptime", _format_duration),
    ("swarms", "Swarms", _format),
    ("peers", "Local peers", _format),
    ("seeders", "Seeders", _format),
    ("leechers", "Leechers", _format),
    ("upstream_cached_peers", "Cached upstream peers", _format),
    ("coalesced_announces", "Coalesced announces", _format),
    ("batches", "Batches", _format),
    ("ready_backlog", "Ready backlog", _format),
    ("pressure", "Pressure", _format),
    ("workers", "Workers", _format),
    ("busy_workers", "Busy workers", _format),
    ("upstream_succeeded", "Upstream OK", _format),
    ("upstream_failed", "Upstream failed", _format),
]

_FORWARDER_COLUMNS = 9

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aggregator stats</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d2330; }}
h1 {{ font-size: 1.4rem; margin-bottom: 0.2rem; }}
h2 {{ font-size: 1.1rem; margin-top: 1.4rem; }}
.muted {{ color: #6b7280; }}
.tiles {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr)); gap: 0.5rem; max-width: 72rem; }}
.tile {{ border: 1px solid #e5e7eb; border-radius: 0.4rem; padding: 0.4rem 0.7rem; }}
.tile .label {{ font-size: 0.8rem; color: #4b5563; }}
.tile .value {{ font-size: 1.2rem; font-variant-numeric: tabular-nums; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 0.25rem 0.7rem; border-bottom: 1px solid #e5e7eb; text-align: left; font-size: 0.9rem; }}
th {{ white-space: nowrap; }}
td {{ font-variant-numeric: tabular-nums; white-space: nowrap; }}
td.detail {{ white-space: normal; }}
.state {{ padding: 0.05rem 0.4rem; border-radius: 0.3rem; }}
.active {{ background: #dcfce7; }} .suspended {{ background: #fef3c7; }} .disabled {{ background: #fee2e2; }}
.frame {{ fill: #f9fafb; stroke: #d1d5db; }} .grid {{ stroke: #e5e7eb; }}
.line {{ fill: none; stroke: #2563eb; stroke-width: 2; }}
.axis {{ font-size: 11px; fill: #6b7280; }}
</style></head>
<body>
<h1>aggregator {version}</h1>
<p class="muted">Generated {generated}. JSON: <a href="?format=json">?format=json</a></p>
<h2>Totals</h2>
<div class="tiles">{tiles}</div>
<h2>Forwarders</h2>
<table><tr><th>name</th><th>state</th><th>next try</th><th>latency (ms)</th><th>success rate</th>
<th>interval (s)</th><th>ok / failed</th><th>last error</th><th>detail</th></tr>{forwarders}</table>
<h2>Ready backlog, last hour{current}</h2>
{chart}
</body></html>
"""
