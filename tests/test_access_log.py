import pytest
import structlog

from tests.service_harness import announce_query, get_bencoded, scrape_query, serving, settings_for

INFO_HASH = b"\x61" * 20


async def access_records(**overrides: object) -> list[dict[str, object]]:
    with structlog.testing.capture_logs() as records:
        async with serving(settings_for([], **overrides)) as (service, session, url):
            for port in range(7001, 7011):
                await get_bencoded(session, f"{url}/announce?{announce_query(port, INFO_HASH)}")
            await get_bencoded(session, f"{url}/scrape?{scrape_query(INFO_HASH)}")
            await get_bencoded(session, f"{url}/announce?info_hash=short")

    return [record for record in records if record["event"] == "access"]


async def test_access_log_off_by_default() -> None:
    assert await access_records() == []


async def test_access_log_records_every_request() -> None:
    records = await access_records(access_log=True)

    assert len(records) == 12
    first = records[0]
    assert first["transport"] == "http"
    assert first["request"] == "announce"
    assert first["client"] == "127.0.0.1"
    assert first["outcome"] == "ok"
    assert first["bt_event"] == "none"
    assert first["info_hash"] == INFO_HASH.hex()
    assert isinstance(first["latency_ms"], float)
    assert records[10]["request"] == "scrape"
    assert records[11]["outcome"] == "invalid"
    assert records[11]["info_hash"] is None


@pytest.mark.parametrize(("sample", "expected"), [(0.0, 0), (1.0, 12)])
async def test_access_log_sample_bounds(sample: float, expected: int) -> None:
    records = await access_records(access_log=True, access_log_sample=sample)

    assert len(records) == expected


