"""The running service: builds the components from the settings, binds the listeners, runs until a signal."""

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from functools import partial

import aiohttp
import structlog
from aiohttp import web

from aggregator import __version__
from aggregator.access import AccessLists
from aggregator.announce import AnnounceLimits
from aggregator.batch_table import BatchTable
from aggregator.client_address import ClientAddressRules
from aggregator.config import ListenAddress, Settings, settings_summary
from aggregator.dispatcher import Dispatcher
from aggregator.due_index import DueIndex
from aggregator.forwarder import ForwarderRegistry, HealthPolicy
from aggregator.http_front import AnnounceHandler, ScrapeHandler, build_app
from aggregator.peer_cache import PeerCache
from aggregator.swarm import SwarmRegistry
from aggregator.tracker import ReplyPolicy, Tracker
from aggregator.udp_front import ConnectionIds, UdpTracker
from aggregator.upstream_http import HttpTarget, HttpUpstream, UpstreamIdentity
from aggregator.worker import UpstreamWorker

log = structlog.get_logger("aggregator.service")

# How often expired local peers and upstream peer lists are swept out, at most.
MAX_SWEEP_PERIOD_S = 60.0
# How often the access-list files are checked for a changed mtime, size or inode.
ACCESS_POLL_PERIOD_S = 5.0


class Service:
    """One aggregator process: client listeners, the upstream pipeline and the expiry sweeper."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock

        self.forwarders = [f for f in settings.forwarders if not f.uri.startswith("udp://")]
        skipped = [f.name for f in settings.forwarders if f.uri.startswith("udp://")]
        if skipped:
            # TODO: announce to udp:// forwarders (BEP 15 client); until then they are left out.
            log.warning("config.forwarders.udp_unsupported", skipped=skipped)

        self.index = DueIndex()
        self.table = BatchTable(
            forwarder_count=len(self.forwarders),
            index=self.index,
            first_wait_s=settings.first_announce_wait_ms / 1000,
            retry_base_s=settings.retry_base_s,
            retry_max_s=settings.retry_max_s,
        )
        self.swarms = SwarmRegistry(settings.peer_ttl, self._on_swarm_emptied)
        self.cache = PeerCache(settings.upstream_peer_ttl)
        self.tracker = Tracker(
            swarms=self.swarms,
            table=self.table,
            cache=self.cache,
            policy=ReplyPolicy(settings.announce_interval, settings.min_interval, settings.first_interval),
            forwarder_count=len(self.forwarders),
            clock=clock,
        )
        self.registry = ForwarderRegistry(
            [f.name for f in self.forwarders],
            HealthPolicy(
                max_inflight=settings.forwarder_max_inflight,
                suspend_s=settings.suspend_s,
                disable_after_failures=settings.disable_after_failures,
                probe_base_s=settings.probe_base_s,
                probe_max_s=settings.probe_max_s,
            ),
            self.index,
            clock,
        )
        self.identity = UpstreamIdentity()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.dispatcher: Dispatcher | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.bound: list[tuple[str, int]] = []
        self.address_rules = ClientAddressRules(settings.trusted_proxies, settings.trusted_ip_param_networks)
        self.access = AccessLists(settings.infohash_denylist, settings.infohash_allowlist)
        self._access_poller: asyncio.Task[None] | None = None
        self._access_reloads: set[asyncio.Task[None]] = set()
        self.udp = UdpTracker(
            self.tracker,
            AnnounceLimits(settings.default_numwant, settings.max_numwant),
            ConnectionIds(clock),  # the service clock, so tests can expire connection ids
        )
        self.udp_bound: list[tuple[str, int]] = []

    def _on_swarm_emptied(self, info_hash: bytes) -> None:
        self.table.note_swarm_emptied(info_hash, self._clock())

    async def start(self) -> None:
        settings = self.settings
        log.info("service.starting", version=__version__, config=settings_summary(settings))
        if not self.forwarders:
            log.warning("config.forwarders.none", detail="running as a plain local tracker")

        # First, before anything is opened: an unreadable list file stops the start (ConfigError).
        self.access.load()
        if self.access.configured:
            # TODO: after a reload denies an infohash that has a local swarm, its upstream batches
            # keep refreshing until the swarm expires. Dropping that swarm would retire them at once.
            self.tracker.is_allowed = self.access.is_allowed
            loop = asyncio.get_running_loop()
            self._access_poller = loop.create_task(self._poll_access_lists(), name="access-lists")

        # One session for every upstream: its connection pool is shared by all workers.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(settings.workers, 1), ttl_dns_cache=int(settings.dns_cache_ttl_s)),
            headers={"User-Agent": f"aggregator/{__version__}"},
        )
        http = HttpUpstream(
            self._session,
            self.identity,
            settings.upstream_timeout_s,
            settings.upstream_max_body_bytes,
            connect_timeout_s=settings.upstream_connect_timeout_s,
        )
        senders = [partial(http.announce, HttpTarget(f.uri, f.ip, f.host)) for f in self.forwarders]
        worker = UpstreamWorker(
            table=self.table,
            cache=self.cache,
            senders=senders,
            registry=self.registry,
            numwant=settings.upstream_numwant,
            upstream_port=settings.upstream_port,
            clock=self._clock,
        )
        self.worker = worker
        self.dispatcher = Dispatcher(
            self.index, worker.run_batch, settings.workers, self._clock, admit=self.registry.admit
        )
        self.dispatcher.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="sweeper")

        tracker_id = settings.tracker_id.encode() if settings.tracker_id else None
        handler = AnnounceHandler(
            self.tracker, AnnounceLimits(settings.default_numwant, settings.max_numwant), tracker_id, self.address_rules
        )
        scrape_handler = ScrapeHandler(self.tracker, settings.max_scrape_hashes, settings.full_scrape)
        self._runner = web.AppRunner(build_app(handler, scrape_handler), access_log=None, handle_signals=False)
        await self._runner.setup()
        for address in settings.listen:
            sock = _bind(address)
            await web.SockSite(self._runner, sock).start()
            host, port = sock.getsockname()[:2]
            self.bound.append((host, port))
            log.info("listening", transport="http", host=host, port=port)
        for address in settings.udp_listen:
            host, port = await self.udp.listen(address)
            self.udp_bound.append((host, port))
            log.info("listening", transport="udp", host=host, port=port)

    async def stop(self) -> None:
        log.info("service.stopping")
        if self._runner is not None:
            await self._runner.cleanup()
        await self.udp.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._access_poller is not None:
            self._access_poller.cancel()
            await asyncio.gather(self._access_poller, *self._access_reloads, return_exceptions=True)
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self._session is not None:
            await self._session.close()

        log.info(
            "service.stopped",
            swarms=len(self.swarms),
            peers=self.swarms.peer_count,
            batches=self.table.batch_count,
        )

    async def _sweep(self) -> None:
        period_s = min(max(self.settings.peer_ttl / 16, 1.0), MAX_SWEEP_PERIOD_S)
        while True:
            await asyncio.sleep(period_s)
            self.sweep_expired()

    def reload_access_lists(self) -> asyncio.Task[None] | None:
        """Start reloading the access-list files in a worker thread, changed or not (SIGHUP).

        Returns the reload task, or None when no list is configured.
        """
        if not self.access.configured:
            log.info("access.reload.skipped", detail="neither infohash_denylist nor infohash_allowlist is set")
            return None

        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.access.reload), name="access-reload")
        self._access_reloads.add(task)
        task.add_done_callback(self._access_reloads.discard)

        return task

    async def _poll_access_lists(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_POLL_PERIOD_S)
            try:
                # A thread, so that reading a large list does not stall client requests.
                await asyncio.to_thread(self.access.reload_if_changed)
            except Exception:
                log.exception("access.poll.crashed")

    def sweep_expired(self) -> None:
        """Drop expired local peers and upstream peer lists; emptied swarms queue upstream `stopped`."""
        now_s = self._clock()
        self.swarms.expire(now_s)
        self.cache.expire(now_s)
        self.registry.flush_summaries(now_s)


def _bind(address: ListenAddress) -> socket.socket:
    """Bind a listening TCP socket ourselves, so the bound port is known even for port 0."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address.host, address.port))
    sock.listen(1024)
    sock.setblocking(False)

    return sock


async def run_service(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly; SIGHUP reloads the access lists."""
    service = Service(settings)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload_access_lists)

    try:
        await service.start()
        await stop_requested.wait()
    finally:
        await service.stop()
