"""The running service: builds the components from the settings, binds the listeners, runs until a signal."""

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from aggregator import __version__
from aggregator.access import AccessLists
from aggregator.access_log import AccessLog
from aggregator.admin import HISTORY_PERIOD_S, AdminApp, BacklogHistory, Heartbeat
from aggregator.announce import AnnounceLimits
from aggregator.batch_table import BatchTable
from aggregator.client_address import ClientAddressRules
from aggregator.config import ForwarderConfig, ListenAddress, Settings, settings_summary
from aggregator.dispatcher import Dispatcher
from aggregator.due_index import DueIndex
from aggregator.forwarder import ForwarderRegistry, ForwarderState, HealthPolicy
from aggregator.gc_policy import GcPolicy
from aggregator.http_fast import FastHttpServer
from aggregator.http_front import AnnounceHandler, ScrapeHandler, build_app
from aggregator.metrics import Metrics, ServiceState
from aggregator.overload import OverloadControl, OverloadPolicy, ScalingPolicy, WorkerScaler
from aggregator.peer_cache import PeerCache
from aggregator.snapshot import StateParts, read_snapshot, write_snapshot
from aggregator.swarm import SwarmRegistry
from aggregator.tracker import ReplyPolicy, Tracker
from aggregator.udp_front import ConnectionIds, UdpTracker
from aggregator.upstream_http import HttpTarget, HttpUpstream, UpstreamIdentity
from aggregator.upstream_udp import UdpTarget, UdpUpstream
from aggregator.worker import SendAnnounce, UpstreamWorker

log = structlog.get_logger("aggregator.service")

# How often expired local peers and upstream peer lists are swept out, at most.
MAX_SWEEP_PERIOD_S = 60.0
# How often the access-list files are checked for a changed mtime, size or inode.
ACCESS_POLL_PERIOD_S = 5.0
# How often overload control measures pressure and adjusts workers and throttling.
OVERLOAD_TICK_S = 1.0


class Service:
    """One aggregator process: client listeners, the upstream pipeline, the admin listener."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.forwarders = list(settings.forwarders)
        self.started_s = clock()
        self.ready = False  # /readyz: listeners bound and not draining

        self.metrics = Metrics()
        self.index = DueIndex()
        self.registry = _make_registry(settings, self.index, clock)
        self.overload = OverloadControl(
            _overload_policy(settings),
            WorkerScaler(_scaling_policy(settings), clock()),
            count_ready=self.count_ready,
            oldest_due_s=self.index.oldest_due_s,
            set_workers=self._set_workers,
            get_workers=self._get_workers,
            rank_forwarders=self.registry.ranked,
            set_throttle=self.registry.set_throttle,
            now_s=clock(),
        )
        max_per_infohash = settings.max_forwarders_per_infohash
        self.table = BatchTable(
            forwarder_count=len(self.forwarders),
            index=self.index,
            first_wait_s=settings.first_announce_wait_ms / 1000,
            retry_base_s=settings.retry_base_s,
            retry_max_s=settings.retry_max_s,
            max_batches=settings.max_batches,
            choose_forwarders=partial(self.registry.pick, max_per_infohash) if max_per_infohash else None,
        )
        self.swarms = SwarmRegistry(settings.peer_ttl, self._on_swarm_emptied)
        self.cache = PeerCache(settings.upstream_peer_ttl)
        self.tracker = Tracker(
            swarms=self.swarms,
            table=self.table,
            cache=self.cache,
            policy=ReplyPolicy(
                settings.announce_interval,
                settings.min_interval,
                settings.first_interval,
                retry_interval=settings.retry_interval,
                overload_failure=settings.overload_reply == "failure",
            ),
            forwarder_count=len(self.forwarders),
            clock=clock,
            metrics=self.metrics,
            admit_new=self.overload.admit_new_infohash,
        )
        self.metrics.add_state_collector(self.read_state)
        self.identity = UpstreamIdentity()
        self.udp_upstream = UdpUpstream(
            self.identity, settings.upstream_timeout_s, settings.upstream_udp_tries, settings.dns_cache_ttl_s
        )
        self.address_rules = ClientAddressRules(settings.trusted_proxies, settings.trusted_ip_param_networks)
        self.access = AccessLists(settings.infohash_denylist, settings.infohash_allowlist)
        self.access_log = AccessLog(settings.access_log, settings.access_log_sample)
        self.udp = UdpTracker(
            self.tracker,
            AnnounceLimits(settings.default_numwant, settings.max_numwant),
            ConnectionIds(clock),  # the service clock, so tests can expire connection ids
            self.metrics,
            self.access_log,
        )
        self.heartbeat = Heartbeat()
        self.gc_policy = GcPolicy(settings.gc_freeze_interval_s)
        self.history = BacklogHistory()

        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None  # the client port on aiohttp (http_server: aiohttp)
        self._fast_http: FastHttpServer | None = None  # the client port on the lean server (the default)
        self._admin_runner: web.AppRunner | None = None
        self.dispatcher: Dispatcher | None = None
        self._background: list[asyncio.Task[None]] = []
        self._access_reloads: set[asyncio.Task[None]] = set()
        self.bound: list[tuple[str, int]] = []
        self.udp_bound: list[tuple[str, int]] = []
        self.admin_bound: tuple[str, int] | None = None

    def _on_swarm_emptied(self, info_hash: bytes) -> None:
        self.table.note_swarm_emptied(info_hash, self._clock())

    def _state_parts(self) -> StateParts:
        return StateParts(self.swarms, self.table, self.cache, self.registry, self.settings.peer_ttl, self._clock)

    async def start(self) -> None:
        settings = self.settings
        log.info("service.starting", version=__version__, config=settings_summary(settings))
        if not self.forwarders:
            log.warning("config.forwarders.none", detail="running as a plain local tracker")

        # First, before anything is opened: an unreadable list file stops the start (ConfigError).
        self.access.load()
        if self.access.configured:
            self.tracker.is_allowed = self.access.is_allowed
        if settings.state_file is not None:
            self._load_snapshot(settings.state_file)

        await self._start_upstream()
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._sweep(), name="sweeper"),
            loop.create_task(self.heartbeat.run(), name="heartbeat"),
            loop.create_task(self._sample_backlog(), name="backlog-history"),
            loop.create_task(self._control_overload(), name="overload-control"),
        ]
        if self.access.configured:
            self._background.append(loop.create_task(self._poll_access_lists(), name="access-lists"))

        await self._start_admin()
        await self._start_client_listeners()
        self.gc_policy.start()
        if self.gc_policy.enabled:
            self._background.append(loop.create_task(self._freeze_long_lived(), name="gc-freeze"))
        self.ready = True
        log.info("service.ready", swarms=len(self.swarms), batches=self.table.batch_count)

    async def _start_upstream(self) -> None:
        settings = self.settings
        # One session for every upstream: its connection pool is shared by all workers.
        self._session = aiohttp.ClientSession(
            # Sized for the most workers scaling can reach, so no announce waits for a pooled connection.
            connector=aiohttp.TCPConnector(
                limit=max(settings.max_workers, settings.workers), ttl_dns_cache=int(settings.dns_cache_ttl_s)
            ),
            headers={"User-Agent": f"aggregator/{__version__}"},
        )
        http = HttpUpstream(
            self._session,
            self.identity,
            settings.upstream_timeout_s,
            settings.upstream_max_body_bytes,
            connect_timeout_s=settings.upstream_connect_timeout_s,
        )
        if any(f.uri.startswith("udp://") for f in self.forwarders):
            await self.udp_upstream.start()

        self.worker = UpstreamWorker(
            table=self.table,
            cache=self.cache,
            senders=[self._sender(forwarder, http) for forwarder in self.forwarders],
            registry=self.registry,
            numwant=settings.upstream_numwant,
            upstream_port=settings.upstream_port,
            clock=self._clock,
            metrics=self.metrics,
        )
        self.dispatcher = Dispatcher(
            self.index,
            self.worker.run_batch,
            min(max(settings.workers, settings.min_workers), settings.max_workers),
            self._clock,
            admit=self.registry.admit,
            observe_lag=self.metrics.flush_lag.observe,
        )
        self.dispatcher.start()

    def _sender(self, forwarder: ForwarderConfig, http: HttpUpstream) -> SendAnnounce:
        if forwarder.uri.startswith("udp://"):
            if forwarder.ip is not None or forwarder.host is not None:
                log.warning("config.forwarder.options_ignored", forwarder=forwarder.name, detail="ip and host are HTTP only")
            return partial(self.udp_upstream.announce, UdpTarget.from_uri(forwarder.uri))

        return partial(http.announce, HttpTarget(forwarder.uri, forwarder.ip, forwarder.host))

    async def _start_admin(self) -> None:
        address = self.settings.admin_listen
        if address is None:
            return

        admin = AdminApp(self.metrics, self.stats, lambda: self.ready, self.heartbeat, self.history)
        self._admin_runner = web.AppRunner(admin.build(), access_log=None, handle_signals=False)
        await self._admin_runner.setup()
        sock = _bind(address)
        await web.SockSite(self._admin_runner, sock).start()
        host, port = sock.getsockname()[:2]
        self.admin_bound = (host, port)
        log.info("listening", transport="admin", host=host, port=port)

    async def _start_client_listeners(self) -> None:
        settings = self.settings
        tracker_id = settings.tracker_id.encode() if settings.tracker_id else None
        limits = AnnounceLimits(settings.default_numwant, settings.max_numwant)
        handler = AnnounceHandler(self.tracker, limits, tracker_id, self.address_rules, self.metrics, self.access_log)
        scrape_handler = ScrapeHandler(
            self.tracker, settings.max_scrape_hashes, settings.full_scrape, self.metrics, self.access_log
        )
        if settings.http_server == "aiohttp":
            # In-flight client requests get the drain time to finish (a first announce waits for upstreams).
            self._runner = web.AppRunner(
                build_app(handler, scrape_handler),
                access_log=None,
                handle_signals=False,
                shutdown_timeout=settings.drain_timeout_s,
            )
            await self._runner.setup()
        else:
            self._fast_http = FastHttpServer(handler, scrape_handler)

        for address in settings.listen:
            sock = _bind(address)
            if self._runner is not None:
                await web.SockSite(self._runner, sock).start()
            else:
                assert self._fast_http is not None
                await self._fast_http.listen(sock)
            host, port = sock.getsockname()[:2]
            self.bound.append((host, port))
            log.info("listening", transport="http", host=host, port=port)
        for address in settings.udp_listen:
            host, port = await self.udp.listen(address)
            self.udp_bound.append((host, port))
            log.info("listening", transport="udp", host=host, port=port)

    async def stop(self) -> None:
        """Drain: stop accepting, let requests and upstream announces finish, save the state, close."""
        started_s = time.monotonic()
        self.ready = False
        busy = self.dispatcher.busy_workers if self.dispatcher is not None else 0
        log.info("drain.started", upstream_in_flight=busy, swarms=len(self.swarms), peers=self.swarms.peer_count)

        # One deadline for the whole drain, so it ends within drain_timeout_s (plus the cancelling).
        deadline_s = started_s + self.settings.drain_timeout_s

        # Clients first, while the dispatcher still runs: a first announce may wait for batches
        # that are not yet sent. The HTTP runner's own shutdown timeout is drain_timeout_s.
        client_drains = [self.udp.close(grace_s=self.settings.drain_timeout_s)]
        if self._runner is not None:
            client_drains.append(self._runner.cleanup())
        if self._fast_http is not None:
            client_drains.append(self._fast_http.close(grace_s=self.settings.drain_timeout_s))
        await asyncio.gather(*client_drains)

        finished = True
        cancelled = 0
        if self.dispatcher is not None:
            await self.dispatcher.stop_dispatching()
            finished = await self.dispatcher.drain(max(deadline_s - time.monotonic(), 0.0))
            cancelled = self.dispatcher.busy_workers
            await self.dispatcher.stop()

        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, *self._access_reloads, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await self.udp_upstream.close()

        snapshot_bytes = self._save_snapshot()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        self.gc_policy.stop()

        log.info(
            "drain.finished",
            upstream_drained=finished,
            upstream_cancelled=cancelled,
            snapshot_bytes=snapshot_bytes,
            duration_s=round(time.monotonic() - started_s, 3),
            swarms=len(self.swarms),
            peers=self.swarms.peer_count,
            batches=self.table.batch_count,
        )

    def _load_snapshot(self, path: str) -> None:
        counts = read_snapshot(path, self._state_parts())
        if counts is not None:
            log.info(
                "snapshot.loaded",
                path=path,
                peers=counts.peers,
                swarms=counts.swarms,
                batches=counts.batches,
                cached_infohashes=counts.cached_infohashes,
            )

    def _save_snapshot(self) -> int | None:
        path = self.settings.state_file
        if path is None:
            return None

        try:
            size = write_snapshot(path, self._state_parts())
        except OSError as error:
            log.error("snapshot.write_failed", path=path, error=str(error))
            return None

        log.info("snapshot.written", path=path, bytes=size, swarms=len(self.swarms), batches=self.table.batch_count)

        return size

    async def _sweep(self) -> None:
        period_s = min(max(self.settings.peer_ttl / 16, 1.0), MAX_SWEEP_PERIOD_S)
        while True:
            await asyncio.sleep(period_s)
            self.sweep_expired()

    def sweep_expired(self) -> None:
        """Drop expired local peers and upstream peer lists; emptied swarms queue upstream `stopped`."""
        now_s = self._clock()
        self.swarms.expire(now_s)
        self.cache.expire(now_s)
        self.registry.flush_summaries(now_s)

    async def _freeze_long_lived(self) -> None:
        while True:
            await asyncio.sleep(self.gc_policy.freeze_interval_s)
            self.gc_policy.tick()

    async def _control_overload(self) -> None:
        while True:
            await asyncio.sleep(OVERLOAD_TICK_S)
            now_s = self._clock()
            self.overload.tick(now_s)
            self.registry.release_waiting(now_s)

    def count_ready(self, now_s: float) -> int:
        """Count the ready backlog: batches past their due time, in the index or waiting for a forwarder slot."""
        waiting = sum(len(health.waiting) for health in self.registry.forwarders)

        return self.index.count_due(now_s) + waiting

    def _set_workers(self, count: int) -> None:
        if self.dispatcher is not None:
            self.dispatcher.set_workers(count)

    def _get_workers(self) -> int:
        return self.dispatcher.target_workers if self.dispatcher is not None else self.settings.workers

    async def _sample_backlog(self) -> None:
        while True:
            self.history.add(time.time(), self.count_ready(self._clock()))
            await asyncio.sleep(HISTORY_PERIOD_S)

    def reload_access_lists(self) -> asyncio.Task[None] | None:
        """Start reloading the access-list files in a worker thread, changed or not (SIGHUP).

        Returns the reload task, or None when no list is configured.
        """
        if not self.access.configured:
            log.info("access.reload.skipped", detail="neither infohash_denylist nor infohash_allowlist is set")
            return None

        task = asyncio.get_running_loop().create_task(self._reload_access_lists(), name="access-reload")
        self._access_reloads.add(task)
        task.add_done_callback(self._access_reloads.discard)

        return task

    async def _reload_access_lists(self) -> None:
        await asyncio.to_thread(self.access.reload)
        self.drop_denied_swarms()

    async def _poll_access_lists(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_POLL_PERIOD_S)
            try:
                # A thread, so that reading a large list does not stall client requests.
                if await asyncio.to_thread(self.access.reload_if_changed):
                    self.drop_denied_swarms()
            except Exception:
                log.exception("access.poll.crashed")

    def drop_denied_swarms(self) -> int:
        """Forget every swarm whose infohash the access lists now reject; return how many.

        Its batches are retired without an upstream `stopped`: a torrent denied as private must
        not reach public trackers again, not even to say goodbye.
        """
        denied = [info_hash for info_hash in self.swarms.info_hashes() if not self.tracker.is_allowed(info_hash)]
        denied += [t.info_hash for t in self.table.torrents() if not self.tracker.is_allowed(t.info_hash)]
        for info_hash in set(denied):
            self.swarms.drop_swarm(info_hash)
            self.table.retire_infohash(info_hash)
            self.cache.drop(info_hash)

        if denied:
            log.info("access.swarms.dropped", count=len(set(denied)))

        return len(set(denied))

    def read_state(self) -> ServiceState:
        """Count the state for /metrics and /stats; costs O(swarms + cached infohashes)."""
        dispatcher = self.dispatcher
        ready_backlog = self.count_ready(self._clock())
        seeders = self.swarms.seeder_count()

        return ServiceState(
            swarms=len(self.swarms),
            peers=self.swarms.peer_count,
            seeders=seeders,
            leechers=self.swarms.peer_count - seeders,
            batches=self.table.batch_count,
            ready_backlog=ready_backlog,
            pressure=ready_backlog / self.settings.backlog_capacity,
            workers=self._get_workers(),
            busy_workers=dispatcher.busy_workers if dispatcher is not None else 0,
            coalesced_announces=self.tracker.coalesced,
            throttled_batches=self.registry.throttled,
            deferred_batches=self.registry.deferred,
            refused_pairs=self.table.refused_pairs,
            upstream_cached_peers=self.cache.peer_count(),
            forwarder_states=[(health.name, health.state.value) for health in self.registry.forwarders],
            state_values=tuple(state.value for state in ForwarderState),
        )

    def stats(self) -> dict[str, Any]:
        """Numbers of the /stats page."""
        state = self.read_state()
        now_s = self._clock()
        worker = getattr(self, "worker", None)
        numbers: dict[str, Any] = {
            "version": __version__,
            "uptime_s": round(now_s - self.started_s, 1),
            "ready": self.ready,
            "swarms": state.swarms,
            "peers": state.peers,
            "seeders": state.seeders,
            "leechers": state.leechers,
            "batches": state.batches,
            "ready_backlog": state.ready_backlog,
            "pressure": round(state.pressure, 4),
            "workers": state.workers,
            "busy_workers": state.busy_workers,
            "coalesced_announces": state.coalesced_announces,
            "upstream_cached_peers": state.upstream_cached_peers,
            "upstream_succeeded": worker.succeeded if worker is not None else 0,
            "upstream_failed": worker.failed if worker is not None else 0,
        }
        numbers["forwarders"] = [
            {
                "name": health.name,
                "state": health.state.value,
                "until_in_s": round(health.until_s - now_s, 1) if health.state is not ForwarderState.ACTIVE else None,
                "reason": health.reason or None,
                "latency_ms": None if health.ema_latency_s is None else round(health.ema_latency_s * 1000, 1),
                "success_rate": round(health.ema_success, 3),
                "interval_s": health.last_interval_s,
                "inflight": health.inflight,
                "succeeded": health.succeeded,
                "failed": health.failed,
                "last_error_kind": health.last_failure_kind.value if health.last_failure_kind else None,
                "last_error": health.last_failure_detail or None,
                "last_error_age_s": None if health.last_failure_s is None else round(now_s - health.last_failure_s, 1),
            }
            for health in self.registry.forwarders
        ]

        return numbers


def _make_registry(settings: Settings, index: DueIndex, clock: Callable[[], float]) -> ForwarderRegistry:
    policy = HealthPolicy(
        max_inflight=settings.forwarder_max_inflight,
        suspend_s=settings.suspend_s,
        disable_after_failures=settings.disable_after_failures,
        probe_base_s=settings.probe_base_s,
        probe_max_s=settings.probe_max_s,
        throttle_defer_s=settings.throttle_defer_s,
    )

    return ForwarderRegistry([forwarder.name for forwarder in settings.forwarders], policy, index, clock)


def _overload_policy(settings: Settings) -> OverloadPolicy:
    return OverloadPolicy(
        backlog_capacity=settings.backlog_capacity,
        throttle_threshold=settings.throttle_threshold,
        throttle_top_n=settings.throttle_top_n,
        rate_limit_threshold=settings.rate_limit_threshold,
        rate_limit_per_s=settings.rate_limit_per_s,
        rate_limit_burst=settings.rate_limit_burst,
    )


def _scaling_policy(settings: Settings) -> ScalingPolicy:
    return ScalingPolicy(
        min_workers=settings.min_workers,
        max_workers=settings.max_workers,
        up_threshold=settings.scale_up_threshold,
        down_threshold=settings.scale_down_threshold,
        up_lag_s=settings.scale_up_lag_s,
        cooldown_s=settings.scale_cooldown_s,
    )


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
    """Run until SIGTERM or SIGINT, then drain and exit; SIGHUP reloads the access lists."""
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
