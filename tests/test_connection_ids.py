"""Connection ids of the UDP tracker: lifetime, binding to the client, and forged ids."""

import pytest

from aggregator.udp_front import CONNECTION_ID_BUCKET_S, ConnectionIds
from tests.fake_clock import FakeClock

CLIENT_IP = bytes([192, 0, 2, 1])
CLIENT_PORT = 6881
BUCKET_START_S = 100 * CONNECTION_ID_BUCKET_S
SECRET = bytes(range(32))


@pytest.mark.parametrize(
    ("issued_after_bucket_start_s", "age_s", "valid"),
    [
        (0.0, 0.0, True),
        (0.0, 61.0, True),
        (0.0, 179.9, True),
        (0.0, 180.0, False),
        (59.9, 120.0, True),  # BEP 15: accepted for at least two minutes
        (59.9, 120.2, False),
    ],
)
def test_connection_id_lifetime(issued_after_bucket_start_s: float, age_s: float, valid: bool) -> None:
    clock = FakeClock(BUCKET_START_S + issued_after_bucket_start_s)
    ids = ConnectionIds(clock, SECRET)
    connection_id = ids.issue(CLIENT_IP, CLIENT_PORT)

    clock.advance(age_s)

    assert ids.is_valid(connection_id, CLIENT_IP, CLIENT_PORT) is valid


@pytest.mark.parametrize(
    ("issued_after_bucket_start_s", "age_s", "valid"),
    [(0.0, 179.9, True), (0.0, 180.0, False), (59.9, 120.0, True), (59.9, 120.2, False)],
)
def test_checked_id_expires_on_time(issued_after_bucket_start_s: float, age_s: float, valid: bool) -> None:
    # The id is checked at once, so the later check may use the ids remembered then.
    clock = FakeClock(BUCKET_START_S + issued_after_bucket_start_s)
    ids = ConnectionIds(clock, SECRET)
    connection_id = ids.issue(CLIENT_IP, CLIENT_PORT)
    assert ids.is_valid(connection_id, CLIENT_IP, CLIENT_PORT)

    clock.advance(age_s)

    assert ids.is_valid(connection_id, CLIENT_IP, CLIENT_PORT) is valid
    assert not ids.is_valid(connection_id, CLIENT_IP, CLIENT_PORT + 1)


@pytest.mark.parametrize("buckets_later", [256, 257, 512])
def test_connection_id_rejected_after_bucket_byte_wraps(buckets_later: int) -> None:
    # The last byte of an id repeats every 256 buckets, so only the digest can reject these.
    clock = FakeClock(BUCKET_START_S)
    ids = ConnectionIds(clock, SECRET)
    connection_id = ids.issue(CLIENT_IP, CLIENT_PORT)

    clock.advance(buckets_later * CONNECTION_ID_BUCKET_S)

    assert not ids.is_valid(connection_id, CLIENT_IP, CLIENT_PORT)


def test_connection_id_bound_to_address() -> None:
    ids = ConnectionIds(FakeClock(BUCKET_START_S), SECRET)
    connection_id = ids.issue(CLIENT_IP, CLIENT_PORT)

    assert ids.is_valid(connection_id, CLIENT_IP, CLIENT_PORT)
    assert not ids.is_valid(connection_id, CLIENT_IP, CLIENT_PORT + 1)
    assert not ids.is_valid(connection_id, bytes([192, 0, 2, 2]), CLIENT_PORT)


def test_connection_id_with_any_bit_flipped_rejected() -> None:
    clock = FakeClock(BUCKET_START_S)
    ids = ConnectionIds(clock, SECRET)
    connection_id = ids.issue(CLIENT_IP, CLIENT_PORT)
    clock.advance(CONNECTION_ID_BUCKET_S)  # one bucket old, so a changed bucket byte can still name an accepted bucket

    for bit in range(64):
        assert not ids.is_valid(connection_id ^ (1 << bit), CLIENT_IP, CLIENT_PORT), f"bit {bit} flipped"


def test_connection_ids_differ_by_secret() -> None:
    clock = FakeClock(BUCKET_START_S)
    first = ConnectionIds(clock, SECRET)
    second = ConnectionIds(clock, bytes(32))

    connection_id = first.issue(CLIENT_IP, CLIENT_PORT)

    assert second.issue(CLIENT_IP, CLIENT_PORT) != connection_id
    assert not second.is_valid(connection_id, CLIENT_IP, CLIENT_PORT)
