"""HTTP scrape (BEP 48): parsing, counts, limits and the encoder, against the in-process service."""

from typing import Any

import bencode2
from hypothesis import given
from hypothesis import strategies as st

from aggregator.replies import encode_scrape_reply
from aggregator.tracker import ScrapeCounts
from tests.fake_tracker import compact_peer
from tests.service_harness import announce_query, fake_trackers, get_bencoded, scrape_query, serving, settings_for

HIGH_HASH = bytes(range(0x80, 0x94))  # every byte >= 0x80: a UTF-8 round trip would double its length
PLAIN_HASH = bytes(range(0x20, 0x34))  # contains 0x20 and 0x2B, the bytes that '+' handling breaks
UNKNOWN_HASH = b"\x01" * 20


def files_of(reply: dict[bytes, Any]) -> dict[bytes, dict[bytes, int]]:
    assert b"failure reason" not in reply, reply
    files = reply[b"files"]
    assert isinstance(files, dict)

    return files


async def test_scrape_key_is_raw_20_bytes() -> None:
    async with serving(settings_for([])) as (service, session, url):
        await get_bencoded(session, f"{url}/announce?{announce_query(7001, HIGH_HASH)}")

        status, reply = await get_bencoded(session, f"{url}/scrape?{scrape_query(HIGH_HASH)}")

    assert status == 200
    files = files_of(reply)
    assert list(files) == [HIGH_HASH]
    assert all(len(key) == 20 for key in files)
    assert files[HIGH_HASH] == {b"complete": 0, b"downloaded": 0, b"incomplete": 1}


async def test_scrape_several_hashes() -> None:
    async with serving(settings_for([])) as (service, session, url):
        await get_bencoded(session, f"{url}/announce?{announce_query(7001, HIGH_HASH, left='0')}")
        await get_bencoded(session, f"{url}/announce?{announce_query(7002, PLAIN_HASH)}")
        await get_bencoded(session, f"{url}/announce?{announce_query(7003, PLAIN_HASH)}")

        status, reply = await get_bencoded(session, f"{url}/scrape?{scrape_query(HIGH_HASH, PLAIN_HASH, UNKNOWN_HASH)}")

    assert status == 200
    files = files_of(reply)
    assert set(files) == {HIGH_HASH, PLAIN_HASH, UNKNOWN_HASH}
    assert files[HIGH_HASH] == {b"complete": 1, b"downloaded": 0, b"incomplete": 0}
    assert files[PLAIN_HASH] == {b"complete": 0, b"downloaded": 0, b"incomplete": 2}


async def test_scrape_unknown_hash_gets_zeros() -> None:
    async with serving(settings_for([])) as (service, session, url):
        status, reply = await get_bencoded(session, f"{url}/scrape?{scrape_query(UNKNOWN_HASH)}")

    assert status == 200
    assert files_of(reply) == {UNKNOWN_HASH: {b"complete": 0, b"downloaded": 0, b"incomplete": 0}}


async def test_scrape_over_cap_fails() -> None:
    hashes = [bytes([number]) * 20 for number in range(4)]
    async with serving(settings_for([], max_scrape_hashes=3)) as (service, session, url):
        status, at_cap = await get_bencoded(session, f"{url}/scrape?{scrape_query(*hashes[:3])}")
        status, over_cap = await get_bencoded(session, f"{url}/scrape?{scrape_query(*hashes)}")

    assert status == 200
    assert len(files_of(at_cap)) == 3
    assert over_cap[b"failure reason"] == b"invalid info_hash: expected at most 3 values in one scrape, got 4"
    assert b"files" not in over_cap


async def test_scrape_bad_length_fails() -> None:
    async with serving(settings_for([])) as (service, session, url):
        status, reply = await get_bencoded(session, f"{url}/scrape?{scrape_query(PLAIN_HASH, b'x' * 19)}")

    assert status == 200
    assert reply[b"failure reason"] == b"invalid info_hash: expected 20 bytes, got 19"


async def test_scrape_plus_is_literal() -> None:
    # '+' (0x2B) sent unescaped must stay 0x2B, not become a space.
    info_hash = b"+" * 20
    async with serving(settings_for([])) as (service, session, url):
        status, reply = await get_bencoded(session, f"{url}/scrape?info_hash={'+' * 20}")

    assert status == 200
    assert list(files_of(reply)) == [info_hash]


async def test_full_scrape_off_fails() -> None:
    async with serving(settings_for([])) as (service, session, url):
        await get_bencoded(session, f"{url}/announce?{announce_query(7001, PLAIN_HASH)}")

        status, reply = await get_bencoded(session, f"{url}/scrape")

    assert status == 200
    assert reply[b"failure reason"] == b"invalid info_hash: missing, expected 1 to 64 values (full scrape is off)"
    assert b"files" not in reply


async def test_full_scrape_on_lists_local_swarms() -> None:
    async with serving(settings_for([], full_scrape=True)) as (service, session, url):
        status, empty = await get_bencoded(session, f"{url}/scrape")
        await get_bencoded(session, f"{url}/announce?{announce_query(7001, PLAIN_HASH)}")
        await get_bencoded(session, f"{url}/announce?{announce_query(7002, HIGH_HASH, left='0')}")

        status, reply = await get_bencoded(session, f"{url}/scrape")

    assert status == 200
    assert files_of(empty) == {}
    assert files_of(reply) == {
        PLAIN_HASH: {b"complete": 0, b"downloaded": 0, b"incomplete": 1},
        HIGH_HASH: {b"complete": 1, b"downloaded": 0, b"incomplete": 0},
    }


async def test_scrape_creates_no_swarm_or_batch() -> None:
    async with fake_trackers(1) as trackers, serving(settings_for(trackers, full_scrape=True)) as (
        service,
        session,
        url,
    ):
        await get_bencoded(session, f"{url}/scrape?{scrape_query(PLAIN_HASH, HIGH_HASH)}")
        await get_bencoded(session, f"{url}/scrape")

        assert len(service.swarms) == 0
        assert service.table.batch_count == 0
        assert len(service.index) == 0
        assert len(service.cache) == 0
        assert trackers[0].announces == []


async def test_scrape_adds_upstream_counts_and_downloads() -> None:
    async with fake_trackers(2) as trackers:
        trackers[0].reply = {
            b"interval": 1800,
            b"complete": 10,
            b"incomplete": 20,
            b"downloaded": 30,
            b"peers": compact_peer("10.1.1.1", 6000),
        }
        trackers[1].reply = {b"interval": 1800, b"complete": 4, b"incomplete": 25, b"downloaded": 3, b"peers": b""}

        async with serving(settings_for(trackers)) as (service, session, url):
            await get_bencoded(session, f"{url}/announce?{announce_query(7001, PLAIN_HASH)}")
            await get_bencoded(session, f"{url}/announce?{announce_query(7002, PLAIN_HASH)}")
            completed = announce_query(7002, PLAIN_HASH, event="completed", left="0")
            await get_bencoded(session, f"{url}/announce?{completed}")
            assert service.dispatcher is not None
            await service.dispatcher.wait_until_idle()
            for tracker in trackers:
                await tracker.wait_for_announces(1)

            status, reply = await get_bencoded(session, f"{url}/scrape?{scrape_query(PLAIN_HASH)}")

    assert status == 200
    counts = files_of(reply)[PLAIN_HASH]
    # Local swarm (1 seeder, 1 leecher, 1 completed) plus the largest count any forwarder reported.
    assert counts[b"complete"] == 1 + 10
    assert counts[b"incomplete"] == 1 + 25
    assert counts[b"downloaded"] == 1 + 30


async def test_scrape_denied_hash_gets_zeros() -> None:
    async with serving(settings_for([], full_scrape=True)) as (service, session, url):
        await get_bencoded(session, f"{url}/announce?{announce_query(7001, PLAIN_HASH)}")
        await get_bencoded(session, f"{url}/announce?{announce_query(7002, HIGH_HASH)}")
        service.tracker.is_allowed = lambda info_hash: info_hash != PLAIN_HASH

        status, requested = await get_bencoded(session, f"{url}/scrape?{scrape_query(PLAIN_HASH)}")
        status, full = await get_bencoded(session, f"{url}/scrape")

    assert files_of(requested) == {PLAIN_HASH: {b"complete": 0, b"downloaded": 0, b"incomplete": 0}}
    assert list(files_of(full)) == [HIGH_HASH]


# Encoder properties

info_hashes = st.binary(min_size=20, max_size=20)
counts = st.builds(
    ScrapeCounts,
    complete=st.integers(min_value=0, max_value=2**63 - 1),
    incomplete=st.integers(min_value=0, max_value=2**63 - 1),
    downloaded=st.integers(min_value=0, max_value=2**63 - 1),
)


@given(st.dictionaries(info_hashes, counts, max_size=50))
def test_scrape_encoder_round_trips(files: dict[bytes, ScrapeCounts]) -> None:
    # bencode2 rejects unsorted keys, so a successful decode also checks the key order.
    decoded = bencode2.bdecode(encode_scrape_reply(files))

    assert set(decoded) == {b"files"}
    assert set(decoded[b"files"]) == set(files)
    for info_hash, entry in decoded[b"files"].items():
        assert len(info_hash) == 20
        expected = files[info_hash]
        assert entry == {
            b"complete": expected.complete,
            b"downloaded": expected.downloaded,
            b"incomplete": expected.incomplete,
        }



@given(st.dictionaries(info_hashes, counts, min_size=1, max_size=20))
def test_scrape_encoder_writes_raw_keys(files: dict[bytes, ScrapeCounts]) -> None:
    body = encode_scrape_reply(files)

    for info_hash in files:
        assert b"20:" + info_hash in body
