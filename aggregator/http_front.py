"""The client-facing HTTP endpoints on aiohttp: GET /announce (BEP 3) and GET /scrape (BEP 48)."""

import dataclasses
import time
from collections.abc import Awaitable, Callable

from multidict import MultiMapping

import structlog
from aiohttp import web

from aggregator.access_log import AccessLog
from aggregator.announce import EVENT_LABELS, ID_BYTES, AnnounceLimits, AnnounceRequest, parse_announce
from aggregator.client_address import ClientAddressRules
from aggregator.errors import RequestError
from aggregator.metrics import Metrics
from aggregator.query import parse_query
from aggregator.replies import encode_announce_reply, encode_failure, encode_scrape_reply
from aggregator.tracker import AnnounceResult, FirstRoundWait, Tracker

log = structlog.get_logger("aggregator.http")

# Interval sent with a failure: long enough that a misconfigured client does not hammer us.
FAILURE_INTERVAL_S = 1800
# Socket peers whose packed address is kept; the cache is emptied when it reaches this size.
PLAIN_PEER_CACHE_SIZE = 65536
# Replies are bencode; text/plain is what trackers conventionally send and every client accepts.
CONTENT_TYPE = "text/plain"


class AnnounceHandler:
    """Parses a client announce, runs it through the tracker and encodes the reply."""

    def __init__(
        self,
        tracker: Tracker,
        limits: AnnounceLimits,
        tracker_id: bytes | None,
        address_rules: ClientAddressRules | None = None,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self._tracker = tracker
        self._metrics = metrics
        self._access_log = access_log
        self._limits = limits
        self._tracker_id = tracker_id
        # Without rules, only the socket peer address counts.
        self._address_rules = address_rules if address_rules is not None else ClientAddressRules()
        self._plain_peers: dict[str, bytes] = {}  # socket peer -> packed address, for peers no rule applies to
        self.failures = 0

    async def handle(self, request: web.Request) -> web.Response:
        """Serve /announce through aiohttp."""
        body = await self.respond(request.rel_url.raw_query_string, _peer_address(request), request.headers)

        return web.Response(body=body, content_type=CONTENT_TYPE)

    async def respond(self, raw_query: str | bytes, peer: str, headers: MultiMapping[str]) -> bytes:
        """Return the bencoded reply body to one announce from `peer`; any HTTP layer can call it."""
        reply = self.begin(raw_query, peer, headers)

        return reply if isinstance(reply, bytes) else await reply

    def begin(self, raw_query: str | bytes, peer: str, headers: MultiMapping[str]) -> bytes | Awaitable[bytes]:
        """Return the reply body now, or an awaitable of it when the announce waits for upstreams.

        Only the first announces of a new infohash wait, so an HTTP layer can reply to the others
        without starting a task.
        """
        started_s = time.perf_counter()
        try:
            announce = parse_announce(raw_query, self._limits)
            packed_ip, port = self.client_endpoint(peer, headers, announce)
        except RequestError as error:
            self.failures += 1
            return self._done(_failure_body(str(error)), "unknown", "invalid", None, peer, started_s)
        except ValueError as error:
            self.failures += 1
            log.warning("http.announce.no_client_address", error=str(error))
            body = _failure_body("internal error: the client address could not be read")
            return self._done(body, "unknown", "error", None, peer, started_s)

        if port != announce.port:
            announce = dataclasses.replace(announce, port=port)

        try:
            outcome = self._tracker.begin_announce(announce, packed_ip)
        except RequestError as error:  # a denied infohash
            return self._denied(error, announce, peer, started_s)

        if isinstance(outcome, AnnounceResult):
            return self._encode(outcome, announce, peer, started_s)

        return self._finish(outcome, announce, peer, started_s)

    async def _finish(self, wait: FirstRoundWait, announce: AnnounceRequest, peer: str, started_s: float) -> bytes:
        try:
            result = await wait.finish()
        except RequestError as error:
            return self._denied(error, announce, peer, started_s)

        return self._encode(result, announce, peer, started_s)

    def _encode(self, result: AnnounceResult, announce: AnnounceRequest, peer: str, started_s: float) -> bytes:
        event = EVENT_LABELS[announce.event]
        if result.failure_reason is not None:
            body = encode_failure(result.failure_reason, result.interval, result.retry_in_min)
            return self._done(body, event, "overloaded", announce.info_hash, peer, started_s)

        body = encode_announce_reply(result, announce.compact, announce.no_peer_id, self._tracker_id)

        return self._done(body, event, "ok", announce.info_hash, peer, started_s)

    def _denied(self, error: RequestError, announce: AnnounceRequest, peer: str, started_s: float) -> bytes:
        self.failures += 1
        event = EVENT_LABELS[announce.event]

        return self._done(_failure_body(str(error)), event, "denied", announce.info_hash, peer, started_s)

    def _done(
        self, body: bytes, event: str, outcome: str, info_hash: bytes | None, peer: str, started_s: float
    ) -> bytes:
        """Record the metrics and the access log line of one announce, and pass its body on."""
        latency_s = time.perf_counter() - started_s
        if self._metrics is not None:
            self._metrics.observe_announce("http", event, outcome, latency_s)
        if self._access_log is not None:
            self._access_log.record("http", "announce", peer, outcome, latency_s, event, info_hash)

        return body

    def client_endpoint(
        self, peer: str, headers: MultiMapping[str], announce: AnnounceRequest
    ) -> tuple[bytes, int]:
        """Return the packed address and the port to register. Raises ValueError for a bad peer."""
        packed_ip = self._plain_peers.get(peer)
        if packed_ip is not None:
            return packed_ip, announce.port

        rules = self._address_rules
        client = rules.client_address(peer, headers)
        address, port = rules.announced_endpoint(client, announce)
        if rules.is_plain_peer(peer):
            # Neither a trusted proxy nor a trusted network: headers and parameters never count
            # for this peer, so its address is the same for every announce. Bounded, as any
            # client can connect from many addresses.
            if len(self._plain_peers) >= PLAIN_PEER_CACHE_SIZE:
                self._plain_peers.clear()
            self._plain_peers[peer] = address.packed

        return address.packed, port


class ScrapeHandler:
    """Parses a BEP 48 scrape and returns the counts of each requested infohash.

    Scrape only reads: it never creates a swarm or an upstream batch, so it costs no upstream
    traffic. A denied infohash gets zeros, like an unknown one, and a full scrape leaves it out.
    """

    def __init__(
        self,
        tracker: Tracker,
        max_hashes: int,
        full_scrape: bool,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self._tracker = tracker
        self._metrics = metrics
        self._access_log = access_log
        self._max_hashes = max_hashes
        self._full_scrape = full_scrape
        self.failures = 0

    async def handle(self, request: web.Request) -> web.Response:
        """Serve /scrape through aiohttp."""
        body = self.respond(request.rel_url.raw_query_string, request.remote or "")

        return web.Response(body=body, content_type=CONTENT_TYPE)

    def respond(self, raw_query: str | bytes, peer: str) -> bytes:
        """Return the bencoded reply body to one scrape; any HTTP layer can call it."""
        started_s = time.perf_counter()
        body, outcome = self._scrape(raw_query)
        if self._metrics is not None:
            self._metrics.scrapes.labels("http", outcome).inc()
        if self._access_log is not None:
            self._access_log.record("http", "scrape", peer, outcome, time.perf_counter() - started_s)

        return body

    def _scrape(self, raw_query: str | bytes) -> tuple[bytes, str]:
        try:
            info_hashes = parse_scrape(raw_query, self._max_hashes, self._full_scrape)
        except RequestError as error:
            self.failures += 1
            return _failure_body(str(error)), "invalid"

        if info_hashes is None:
            # NOTE: a full scrape encodes every local swarm in one pass on the event loop. With very
            # many swarms it delays other requests, which is one reason it is off by default.
            is_allowed = self._tracker.is_allowed
            info_hashes = [info_hash for info_hash in self._tracker.swarms.info_hashes() if is_allowed(info_hash)]

        counts = self._tracker.scrape(info_hashes)

        return encode_scrape_reply(dict(zip(info_hashes, counts))), "ok"


def parse_scrape(raw_query: str | bytes, max_hashes: int, full_scrape: bool) -> list[bytes] | None:
    """Return the info_hash values of a scrape query in request order, or None for a full scrape.

    Raises RequestError for a value that is not 20 bytes, for more than `max_hashes` values, and
    for a query without info_hash when `full_scrape` is off. Other parameters are ignored.
    """
    info_hashes = [value for name, value in parse_query(raw_query) if name == "info_hash"]
    if not info_hashes:
        if full_scrape:
            return None
        raise RequestError("info_hash", f"missing, expected 1 to {max_hashes} values (full scrape is off)")

    if len(info_hashes) > max_hashes:
        raise RequestError("info_hash", f"expected at most {max_hashes} values in one scrape, got {len(info_hashes)}")
    for info_hash in info_hashes:
        if len(info_hash) != ID_BYTES:
            raise RequestError("info_hash", f"expected 20 bytes, got {len(info_hash)}")

    return info_hashes


def _peer_address(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    if not peer:
        raise ValueError("the connection has no peer address")

    address: str = peer[0]

    return address


def _failure_body(reason: str) -> bytes:
    return encode_failure(reason, FAILURE_INTERVAL_S)


def _failure(reason: str) -> web.Response:
    return web.Response(body=_failure_body(reason), content_type=CONTENT_TYPE)


@web.middleware
async def _no_tracebacks(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn an unexpected exception into a bencoded failure instead of a 500 with a traceback."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("http.request.crashed", path=request.path)
        return _failure("internal error")


def build_app(handler: AnnounceHandler, scrape_handler: ScrapeHandler | None = None) -> web.Application:
    app = web.Application(middlewares=[_no_tracebacks])
    app.router.add_get("/announce", handler.handle)
    if scrape_handler is not None:
        app.router.add_get("/scrape", scrape_handler.handle)

    return app
