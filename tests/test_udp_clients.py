"""Real BitTorrent clients against the aggregator's UDP tracker, all on 127.0.0.1.

libtorrent (the PyPI wheel) runs in this process, and aria2c runs as a subprocess. Neither
can reach another host: every tracker URL, listen address and peer is on 127.0.0.1, and
DHT, local service discovery, UPnP and NAT-PMP are off or have no node to talk to.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.realworld import (
    LOOPBACK,
    Aria2,
    OpenTracker,
    RunningService,
    http_announce,
    make_torrent,
    new_workdir,
    random_peer_id,
    sha256_of_file,
    start_aggregator,
)

pytestmark = pytest.mark.realworld

TRACKER_REPLY_TIMEOUT_S = 30.0
DOWNLOAD_TIMEOUT_S = 90.0
LISTEN_LOG_TIMEOUT_S = 15.0
OTHER_PEER_PORT = 43001


def require_libtorrent() -> ModuleType:
    """Import libtorrent, or skip the test without it; with CI=true a missing module fails the test."""
    try:
        import libtorrent
    except ImportError as error:
        message = f"Python module libtorrent is not importable ({error}); install it with: pip install libtorrent"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    return libtorrent


def free_udp_port() -> int:
    """Return a UDP port on 127.0.0.1 that was free a moment ago, for a program that cannot bind port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def udp_announce_url(service: RunningService) -> str:
    record = service.wait_for_log(
        lambda item: item.get("event") == "listening" and item.get("transport") == "udp",
        LISTEN_LOG_TIMEOUT_S,
        'the {"event": "listening", "transport": "udp"} line',
    )
    assert record["host"] == LOOPBACK, record

    return f"udp://{LOOPBACK}:{record['port']}/announce"


def libtorrent_session(lt: ModuleType) -> Any:
    """Start a libtorrent session that listens on 127.0.0.1 only and finds peers only through trackers."""
    settings = {
        "listen_interfaces": f"{LOOPBACK}:0",
        "outgoing_interfaces": LOOPBACK,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # Every peer in these tests has the address 127.0.0.1.
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert_category.error | lt.alert_category.tracker | lt.alert_category.status,
    }

    return lt.session(settings)


def wait_for_tracker_reply(lt: ModuleType, session: Any, timeout_s: float) -> Any:
    """Return the first tracker_reply_alert with at least one peer; fail on a tracker error or the deadline."""
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while (remaining_s := deadline - time.monotonic()) > 0:
        # wait_for_alert blocks until libtorrent posts an alert or the wait ends.
        session.wait_for_alert(int(min(remaining_s, 1.0) * 1000))
        for alert in session.pop_alerts():
            seen.append(f"{type(alert).__name__}: {alert.message()}")
            if isinstance(alert, lt.tracker_error_alert):
                pytest.fail(f"libtorrent reported a tracker error: {alert.message()}\n" + "\n".join(seen))
            if isinstance(alert, lt.tracker_reply_alert) and alert.num_peers >= 1:
                return alert

    pytest.fail(f"no tracker reply with peers within {timeout_s:.0f} s; libtorrent alerts:\n" + "\n".join(seen))


def test_libtorrent_gets_peer_over_udp(tmp_path: Path) -> None:
    lt = require_libtorrent()
    torrent = make_torrent(tmp_path, 256 * 1024, f"http://{LOOPBACK}:9/announce")  # the URL is replaced below

    with start_aggregator(tmp_path, {"listen": f"{LOOPBACK}:0", "udp_listen": f"{LOOPBACK}:0"}) as service:
        # The other peer announces over HTTP: both transports share one swarm.
        reply = http_announce(
            service.announce_url,
            torrent.infohash,
            peer_id=random_peer_id(),
            port=OTHER_PEER_PORT,
            left=0,
            event="started",
        )
        assert b"failure reason" not in reply, reply

        udp_url = udp_announce_url(service)
        torrent_path = torrent.with_announce(udp_url)
        session = libtorrent_session(lt)
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(str(torrent_path))
        params.save_path = str(new_workdir(tmp_path, "libtorrent"))
        handle = session.add_torrent(params)
        try:
            alert = wait_for_tracker_reply(lt, session, TRACKER_REPLY_TIMEOUT_S)
            trackers = handle.trackers()
        finally:
            session.remove_torrent(handle)

        assert alert.num_peers == 1, alert.message()
        assert alert.tracker_url() == udp_url
        # The seeders and leechers fields of the reply: the other peer is a seeder, and
        # libtorrent itself is the one leecher.
        assert [entry["url"] for entry in trackers] == [udp_url]
        assert (trackers[0]["scrape_complete"], trackers[0]["scrape_incomplete"]) == (1, 1), trackers
        print(
            f"\nlibtorrent {lt.__version__} over UDP: {alert.message()}; "
            f"seeders {trackers[0]['scrape_complete']}, leechers {trackers[0]['scrape_incomplete']}"
        )


def test_aria2c_downloads_through_udp_tracker(
    opentracker: OpenTracker, aria2: Aria2, tmp_path: Path
) -> None:
    """The seeder announces only to opentracker, and the leecher's torrent names only the aggregator's UDP URL."""
    torrent = make_torrent(tmp_path, 2 * 1024 * 1024, opentracker.announce_url)
    opentracker.allow(torrent.infohash)
    seeder = aria2.start_seeder(torrent)
    opentracker.wait_for_seeders(torrent.infohash, watched=[seeder])

    config = {
        "listen": f"{LOOPBACK}:0",
        "udp_listen": f"{LOOPBACK}:0",
        "forwarders": [{"uri": opentracker.announce_url, "name": "opentracker"}],
        "first_announce_wait_ms": 3000,
    }
    with start_aggregator(tmp_path, config) as service:
        leecher_torrent = torrent.with_announce(udp_announce_url(service))
        dht_dir = new_workdir(tmp_path, "dht")
        # aria2c 1.36 sends UDP tracker requests only with --enable-dht=true. This DHT node
        # cannot reach another host. --interface binds its socket to 127.0.0.1, and it has no
        # entry point and an empty routing table file. The seeder runs with DHT off, so no
        # peer can tell it of another node.
        dht_flags = [
            "--enable-dht=true",
            f"--dht-listen-port={free_udp_port()}",
            f"--dht-file-path={dht_dir / 'dht.dat'}",
        ]
        result = aria2.run_leecher(
            torrent,
            leecher_torrent,
            timeout_s=DOWNLOAD_TIMEOUT_S,
            watched=[service, seeder, opentracker.process],
            extra_flags=dht_flags,
        )

        assert sha256_of_file(result.downloaded_path) == torrent.content_sha256, result.process.describe()

    log_path = result.process.extra_log_path
    assert log_path is not None
    udp_lines = [line for line in log_path.read_text(errors="replace").splitlines() if "UDPT" in line]
    # aria2c 1.36 logs each reply as "UDPT received ANNOUNCE reply ... num_peers=N".
    replies = [re.search(r"ANNOUNCE reply.*num_peers=(\d+)", line) for line in udp_lines]
    peer_counts = [int(match[1]) for match in replies if match is not None]
    assert peer_counts, f"aria2c logged no UDP announce reply\n{result.process.describe()}"
    assert peer_counts[0] >= 1, f"the first UDP announce reply had no peer\n{result.process.describe()}"
    print("\naria2c UDP tracker log:\n" + "\n".join(udp_lines))
