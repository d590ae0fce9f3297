"""The admin listener of an in-process service: /metrics, /stats, /healthz and /readyz over real HTTP."""

import asyncio
import re
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from aggregator.admin import MAX_DETAIL_CHARS, render_stats_page
from aggregator.announce import Event
from aggregator.config import ForwarderConfig, ListenAddress, Settings
from aggregator.service import Service
from tests.fake_tracker import FakeTracker, compact_peer
from tests.service_harness import announce_query, get_bencoded, scrape_query
from tests.test_deploy import EXPORTED_METRICS, HISTOGRAM_SUFFIXES
from tests.test_udp_front import udp_client

METRICS_DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
HTTP_INFO_HASH = bytes(range(0x10, 0x24))
UDP_INFO_HASH = bytes(range(0x90, 0xA4))
HTTP_TIMEOUT_S = 5.0
# The readiness probe must flip within this time once the drain starts.
READY_FLIP_TIMEOUT_S = 5.0


@dataclass
class AdminService:
    service: Service
    session: aiohttp.ClientSession
    client_url: str  # base URL of the HTTP tracker listener
    admin_url: str  # base URL of the admin listener
    trackers: list[FakeTracker]
    stopped: bool = False  # set by a test that stops the service itself


def admin_settings(trackers: list[FakeTracker], **overrides: Any) -> Settings:
    """Settings with HTTP, UDP and admin listeners on OS-chosen ports of 127.0.0.1."""
    forwarders = (
        ForwarderConfig(uri=trackers[0].announce_url, name="healthy", ip=None, host=None),
        ForwarderConfig(uri=trackers[1].announce_url, name="broken", ip=None, host=None),
    )
    settings = Settings(
        listen=(ListenAddress("127.0.0.1", 0),),
        udp_listen=(ListenAddress("127.0.0.1", 0),),
        admin_listen=ListenAddress("127.0.0.1", 0),
        forwarders=forwarders,
        first_announce_wait_ms=3000,
    )

    return replace(settings, **overrides)


@asynccontextmanager
async def admin_service(**overrides: Any) -> AsyncIterator[AdminService]:
    """Run a service with two forwarders: "healthy" returns one peer, "broken" returns HTTP 502."""
    healthy = FakeTracker(reply={b"interval": 1200, b"peers": compact_peer("10.9.9.9", 6881)})
    broken = FakeTracker(reply=lambda recorded: web.Response(status=502, text="bad gateway"))
    trackers = [healthy, broken]
    for tracker in trackers:
        await tracker.start()

    service = Service(admin_settings(trackers, **overrides))
    running: AdminService | None = None
    try:
        await service.start()
        assert service.admin_bound is not None
        admin_host, admin_port = service.admin_bound
        client_host, client_port = service.bound[0]
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            running = AdminService(
                service,
                session,
                f"http://{client_host}:{client_port}",
                f"http://{admin_host}:{admin_port}",
                trackers,
            )
            yield running
    finally:
        if running is None or not running.stopped:
            await service.stop()
        for tracker in trackers:
            await tracker.stop()


async def send_traffic(running: AdminService) -> None:
    """Announce over HTTP (started, regular, completed) and UDP, scrape once, and wait for the upstreams."""
    announce_url = f"{running.client_url}/announce"
    for query in (
        announce_query(7001, HTTP_INFO_HASH, event="started"),
        announce_query(7002, HTTP_INFO_HASH),
        announce_query(7002, HTTP_INFO_HASH, event="completed", left="0"),
    ):
        status, reply = await get_bencoded(running.session, f"{announce_url}?{query}")
        assert status == 200
        assert b"failure reason" not in reply, reply

    status, reply = await get_bencoded(running.session, f"{announce_url}?info_hash=short")
    assert b"failure reason" in reply

    status, reply = await get_bencoded(running.session, f"{running.client_url}/scrape?{scrape_query(HTTP_INFO_HASH)}")
    assert status == 200
    assert HTTP_INFO_HASH in reply[b"files"]

    udp_host, udp_port = running.service.udp_bound[0]
    async with udp_client(udp_host, udp_port) as client:
        connection_id = await client.connect()
        await client.announce(connection_id, 7003, info_hash=UDP_INFO_HASH, event=Event.STARTED, left=100)

    # "healthy" gets two `started` and one `completed`; "broken" fails both `started`.
    await running.trackers[0].wait_for_announces(3)
    await running.trackers[1].wait_for_announces(2)
    dispatcher = running.service.dispatcher
    assert dispatcher is not None
    await dispatcher.wait_until_idle()


async def fetch_metrics(running: AdminService) -> dict[str, list[Sample]]:
    """GET /metrics and return its samples by metric family name, as the exposition names them."""
    async with running.session.get(f"{running.admin_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()

    families: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        # The parser strips _total from counter family names; the exported names keep it.
        name = f"{family.name}_total" if family.type == "counter" else family.name
        families[name] = list(family.samples)

    return families


def sample_value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """Return the value of the sample with this name and exactly these labels, or None."""
    for sample in samples:
        if sample.name == name and sample.labels == labels:
            return float(sample.value)

    return None


async def test_metrics_exports_every_dashboard_metric() -> None:
    async with admin_service() as running:
        await send_traffic(running)
        families = await fetch_metrics(running)

    for name, (kind, labels) in EXPORTED_METRICS.items():
        assert name in families, f"{name} is missing from /metrics"
        series_names = {sample.name for sample in families[name]}
        if kind == "histogram":
            assert series_names == {name + suffix for suffix in HISTOGRAM_SUFFIXES}, name
        else:
            assert series_names == {name}, name
        for sample in families[name]:
            label_names = set(sample.labels) - ({"le"} if sample.name.endswith("_bucket") else set())
            assert label_names == labels, f"{sample.name} has labels {sorted(label_names)}, expected {sorted(labels)}"


async def test_metrics_doc_lists_every_metric() -> None:
    async with admin_service() as running:
        await send_traffic(running)
        exported = set(await fetch_metrics(running))

    documented = set(re.findall(r"^\| `(aggregator_[a-z_]+)` \|", METRICS_DOC.read_text(encoding="utf-8"), re.MULTILINE))

    assert exported - documented == set(), "exported but not in docs/metrics.md"
    assert documented - exported == set(), "in docs/metrics.md but not exported"


async def test_metrics_count_announces_by_label() -> None:
    async with admin_service() as running:
        await send_traffic(running)
        families = await fetch_metrics(running)

    announces = families["aggregator_announces_total"]
    name = "aggregator_announces_total"
    assert sample_value(announces, name, transport="http", event="started", outcome="ok") == 1
    assert sample_value(announces, name, transport="http", event="none", outcome="ok") == 1
    assert sample_value(announces, name, transport="http", event="completed", outcome="ok") == 1
    assert sample_value(announces, name, transport="http", event="unknown", outcome="invalid") == 1
    assert sample_value(announces, name, transport="udp", event="started", outcome="ok") == 1

    scrapes = families["aggregator_scrapes_total"]
    assert sample_value(scrapes, "aggregator_scrapes_total", transport="http", outcome="ok") == 1

    latency = families["aggregator_reply_latency_seconds"]
    assert sample_value(latency, "aggregator_reply_latency_seconds_count", transport="http") == 4
    assert sample_value(latency, "aggregator_reply_latency_seconds_count", transport="udp") == 1


async def test_metrics_state_and_upstream_values() -> None:
    async with admin_service() as running:
        await send_traffic(running)
        families = await fetch_metrics(running)
        workers = running.service.settings.workers

    def gauge(name: str) -> float | None:
        return sample_value(families[name], name)

    assert gauge("aggregator_swarms") == 2
    assert gauge("aggregator_peers") == 3
    assert gauge("aggregator_seeders") == 1
    assert gauge("aggregator_leechers") == 2
    assert gauge("aggregator_batches") == 4  # two infohashes, two forwarders
    assert gauge("aggregator_workers") == workers
    assert gauge("aggregator_busy_workers") == 0
    assert gauge("aggregator_upstream_cached_peers") == 2  # one peer from "healthy" per infohash
    assert gauge("aggregator_coalesced_announces_total") == 1  # the regular announce of port 7002

    requests = families["aggregator_upstream_requests_total"]
    name = "aggregator_upstream_requests_total"
    assert sample_value(requests, name, forwarder="healthy", outcome="ok") == 3
    assert sample_value(requests, name, forwarder="broken", outcome="server_error") == 2
    upstream_count = families["aggregator_upstream_latency_seconds"]
    assert sample_value(upstream_count, "aggregator_upstream_latency_seconds_count", forwarder="healthy") == 3

    states = families["aggregator_forwarder_state"]
    for forwarder in ("healthy", "broken"):
        assert sample_value(states, "aggregator_forwarder_state", forwarder=forwarder, state="active") == 1
        assert sample_value(states, "aggregator_forwarder_state", forwarder=forwarder, state="suspended") == 0
        assert sample_value(states, "aggregator_forwarder_state", forwarder=forwarder, state="disabled") == 0

    admission = families["aggregator_admission_decisions_total"]
    assert sample_value(admission, "aggregator_admission_decisions_total", decision="admitted") == 2

    flush_lag = families["aggregator_flush_lag_seconds"]
    assert sample_value(flush_lag, "aggregator_flush_lag_seconds_count") == 5


async def test_metrics_labels_carry_no_infohash() -> None:
    async with admin_service() as running:
        await send_traffic(running)
        families = await fetch_metrics(running)

    forbidden = [HTTP_INFO_HASH.hex(), UDP_INFO_HASH.hex(), HTTP_INFO_HASH.hex().upper()]
    label_values = {value for samples in families.values() for sample in samples for value in sample.labels.values()}
    for value in label_values:
        for infohash in forbidden:
            assert infohash not in value, f"label value {value!r} carries an infohash"
        # A percent-encoded or raw 20-byte value would not look like a short identifier.
        assert len(value) <= 40, f"label value {value!r} is too long to be a bounded label"


async def test_stats_json_totals_and_forwarders() -> None:
    async with admin_service() as running:
        await send_traffic(running)
        async with running.session.get(f"{running.admin_url}/stats", params={"format": "json"}) as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            stats = await response.json()

    assert stats["ready"] is True
    assert stats["swarms"] == 2
    assert stats["peers"] == 3
    assert stats["seeders"] == 1
    assert stats["batches"] == 4
    assert stats["upstream_succeeded"] == 3
    assert stats["upstream_failed"] == 2
    assert stats["upstream_cached_peers"] == 2
    assert stats["uptime_s"] >= 0
    assert isinstance(stats["backlog_history"], list)

    forwarders = {forwarder["name"]: forwarder for forwarder in stats["forwarders"]}
    assert list(forwarders) == ["healthy", "broken"]

    healthy = forwarders["healthy"]
    assert healthy["state"] == "active"
    assert healthy["latency_ms"] is not None and healthy["latency_ms"] > 0
    assert healthy["success_rate"] == 1.0
    assert healthy["interval_s"] == 1200
    assert healthy["last_error"] is None
    assert healthy["succeeded"] == 3

    broken = forwarders["broken"]
    assert broken["state"] == "active"
    assert broken["success_rate"] < 1.0
    assert broken["last_error_kind"] == "server_error"
    assert "502" in broken["last_error"]
    assert broken["interval_s"] is None
    assert broken["failed"] == 2


async def test_stats_html_table_and_chart() -> None:
    async with admin_service() as running:
        await send_traffic(running)
        stats_url = f"{running.admin_url}/stats"
        # The service takes one backlog sample at start, which is not enough for a line.
        assert len(running.service.history.samples) == 1
        async with running.session.get(stats_url) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            first_page = await response.text()

        now_s = time.time()
        running.service.history.add(now_s + 10, 7)
        running.service.history.add(now_s + 20, 3)
        async with running.session.get(stats_url) as response:
            second_page = await response.text()

    assert "<svg" not in first_page
    assert "Not enough samples yet" in first_page

    assert "<h2>Forwarders</h2>" in second_page
    forwarder_rows = re.findall(r"<tr><td>(healthy|broken)</td>", second_page)
    assert forwarder_rows == ["healthy", "broken"]
    assert "server_error" in second_page
    assert "<svg" in second_page
    points = re.search(r'<polyline points="([^"]+)"', second_page)
    assert points is not None
    assert len(points.group(1).split()) == 3
    assert ">7<" in second_page  # the peak backlog labels the y axis


async def test_healthz_ok() -> None:
    async with admin_service() as running:
        async with running.session.get(f"{running.admin_url}/healthz") as response:
            assert response.status == 200
            body = await response.json()

    assert body["status"] == "ok"
    assert body["loop_lag_s"] < 5.0


async def test_readyz_turns_503_when_stop_starts() -> None:
    async with admin_service(first_announce_wait_ms=0) as running:
        readyz_url = f"{running.admin_url}/readyz"
        async with running.session.get(readyz_url) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ready"

        # Hold one upstream reply, so that the drain lasts until the test releases it.
        gate = asyncio.Event()
        running.trackers[0].hold = gate
        query = announce_query(7001, HTTP_INFO_HASH)
        await get_bencoded(running.session, f"{running.client_url}/announce?{query}&event=started")
        await running.trackers[0].wait_for_announces(1)

        running.stopped = True
        stopping = asyncio.create_task(running.service.stop())
        statuses = []
        deadline_s = time.monotonic() + READY_FLIP_TIMEOUT_S
        while time.monotonic() < deadline_s:
            async with running.session.get(readyz_url) as response:
                statuses.append(response.status)
                if response.status == 503:
                    body = await response.json()
                    break

        assert statuses[-1] == 503, statuses
        assert body["status"] == "not ready"
        assert not stopping.done(), "stop() finished while an upstream announce was held"

        gate.set()
        await asyncio.wait_for(stopping, HTTP_TIMEOUT_S)
        assert running.service.ready is False


class _CellText(HTMLParser):
    """Collects the text of every <td class="detail"> cell, with entities decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.details: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "td" and ("class", "detail") in attrs:
            self._inside = True
            self.details.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.details[-1] += data


def test_stats_page_cuts_detail_before_escaping() -> None:
    # "<" sits across the cut: escaping first and cutting after would leave a broken "&l".
    detail = "a" * (MAX_DETAIL_CHARS - 1) + "<b> & more"
    forwarder = {"name": "f", "state": "active", "last_error": detail, "succeeded": 0, "failed": 1}
    page = render_stats_page({"version": "test", "forwarders": [forwarder], "backlog_history": []})

    parser = _CellText()
    parser.feed(page)

    assert parser.details == [detail[:MAX_DETAIL_CHARS] + "\u2026"]


async def test_stats_html_shows_next_try() -> None:
    async with admin_service() as running:
        running.trackers[1].reply = lambda recorded: web.Response(status=429, headers={"Retry-After": "900"})
        query = announce_query(7001, HTTP_INFO_HASH, event="started")
        await get_bencoded(running.session, f"{running.client_url}/announce?{query}")
        await running.trackers[1].wait_for_announces(1)
        assert running.service.dispatcher is not None
        await running.service.dispatcher.wait_until_idle()
        async with running.session.get(f"{running.admin_url}/stats") as response:
            page = await response.text()

    row = re.search(r"<tr><td>broken</td>(.*?)</tr>", page)
    assert row is not None
    assert '<span class="state suspended">suspended</span>' in row.group(1)
    assert "<td>in 14 min</td>" in row.group(1) or "<td>in 15 min</td>" in row.group(1)
