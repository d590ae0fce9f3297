import re
from pathlib import Path

from aggregator.faults import VERDICTS, Verdict, classify
from aggregator.upstream_reply import FailureKind, UpstreamFailure

DOC = Path(__file__).resolve().parents[1] / "docs" / "upstream.md"

# Words in the doc's forwarder column for each verdict.
DOC_WORDS = {
    Verdict.RETRY: "failure counted",
    Verdict.SUSPEND: "suspended",
    Verdict.DISABLE: "disabled",
    Verdict.DEFER_PAIR: "stays healthy",
}


def doc_rows() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `([a-z_]+)` \|[^|]*\| ([^|]*) \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_every_kind_has_a_verdict() -> None:
    assert set(VERDICTS) == set(FailureKind)


def test_doc_table_matches_code() -> None:
    rows = doc_rows()

    assert set(rows) == {kind.value for kind in FailureKind}
    for kind, verdict in VERDICTS.items():
        assert DOC_WORDS[verdict] in rows[kind.value], kind


def test_retry_in_never_stops_pair() -> None:
    failure = UpstreamFailure(FailureKind.TRACKER_FAILURE, "unregistered torrent", retry_in_min=-1)

    assert classify(failure) is Verdict.STOP_PAIR
