"""Measure bencode round trips (encode + decode) of a 50-peer announce reply with each codec.

Run: python bench/bencode_codecs.py [--seconds 1.0] [--rounds 5]
Prints round trips per second per codec and round, then the median of each.
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import bencode2
import bencodepy

REPLY = {
    b"complete": 120,
    b"incomplete": 31,
    b"interval": 1800,
    b"min interval": 900,
    b"peers": os.urandom(6 * 50),
}

_bencodepy = bencodepy.Bencode(encoding=None, encoding_fallback=None, dict_ordered=False)


def round_trip_bencode2(value: Any) -> Any:
    return bencode2.bdecode(bencode2.bencode(value))


def round_trip_bencodepy(value: Any) -> Any:
    return _bencodepy.decode(_bencodepy.encode(value))


def measure(round_trip: Callable[[Any], Any], seconds: float) -> float:
    count = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            round_trip(REPLY)
        count += 100

    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of one measurement, in seconds")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per codec")
    args = parser.parse_args()

    codecs = {"bencode2": round_trip_bencode2, "bencode.py": round_trip_bencodepy}
    for name, round_trip in codecs.items():
        assert round_trip(REPLY) == REPLY, f"{name} does not round-trip the reply"

    results: dict[str, list[float]] = {name: [] for name in codecs}
    for round_number in range(1, args.rounds + 1):
        for name, round_trip in codecs.items():
            rate = measure(round_trip, args.seconds)
            results[name].append(rate)
            print(f"round {round_number}  {name:<11} {rate:>12,.0f} round trips/s")

    print()
    print(f"{'codec':<11} {'median round trips/s':>22}")
    for name, rates in results.items():
        print(f"{name:<11} {statistics.median(rates):>22,.0f}")
    ratio = statistics.median(results["bencode2"]) / statistics.median(results["bencode.py"])
    print(f"bencode2 / bencode.py: {ratio:.1f}x")


if __name__ == "__main__":
    main()
