"""The client-facing HTTP endpoint: GET /announce on aiohttp."""

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from aggregator.announce import AnnounceLimits, parse_announce
from aggregator.endpoints import pack_ip
from aggregator.errors import RequestError
from aggregator.replies import encode_announce_reply, encode_failure
from aggregator.tracker import Tracker

log = structlog.get_logger("aggregator.http")

# Interval sent with a failure: long enough that a misconfigured client does not hammer us.
FAILURE_INTERVAL_S = 1800
# Replies are bencode; text/plain is what trackers conventionally send and every client accepts.
CONTENT_TYPE = "text/plain"


class AnnounceHandler:
    """Parses a client announce, runs it through the tracker and encodes the reply."""

    def __init__(self, tracker: Tracker, limits: AnnounceLimits, tracker_id: bytes | None) -> None:
        self._tracker = tracker
        self._limits = limits
        self._tracker_id = tracker_id
        self.failures = 0

    async def handle(self, request: web.Request) -> web.Response:
        try:
            announce = parse_announce(request.rel_url.raw_query_string, self._limits)
            packed_ip = pack_ip(_client_address(request))
        except RequestError as error:
            self.failures += 1
            return _failure(str(error))
        except ValueError as error:
            self.failures += 1
            log.warning("http.announce.no_client_address", error=str(error))
            return _failure("internal error: the client address could not be read")

        try:
            result = await self._tracker.announce(announce, packed_ip)
        except RequestError as error:  # a denied infohash
            self.failures += 1
            return _failure(str(error))
        body = encode_announce_reply(result, announce.compact, announce.no_peer_id, self._tracker_id)

        return web.Response(body=body, content_type=CONTENT_TYPE)


def _client_address(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    if not peer:
        raise ValueError("the connection has no peer address")

    address: str = peer[0]

    return address


def _failure(reason: str) -> web.Response:
    return web.Response(body=encode_failure(reason, FAILURE_INTERVAL_S), content_type=CONTENT_TYPE)


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


def build_app(handler: AnnounceHandler) -> web.Application:
    app = web.Application(middlewares=[_no_tracebacks])
    app.router.add_get("/announce", handler.handle)

    return app
