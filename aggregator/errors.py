"""Exception tree of the aggregator: one base class, one subclass per kind of bad input."""


class AggregatorError(Exception):
    """Base class of every error the aggregator raises on purpose."""


class ConfigError(AggregatorError):
    """A configuration value is missing, unknown or invalid; the message is one line for the operator."""


class RequestError(AggregatorError):
    """A client request is invalid; the message becomes the bencoded `failure reason`."""

    def __init__(self, parameter: str, problem: str, message: str | None = None) -> None:
        super().__init__(message or f"invalid {parameter}: {problem}")
        self.parameter = parameter
        self.problem = problem


class InfohashDeniedError(RequestError):
    """The infohash is on the denylist, or missing from the allowlist."""

    def __init__(self, info_hash: bytes) -> None:
        super().__init__("info_hash", "not allowed", f"info_hash {info_hash.hex()} is not allowed on this tracker")


class BencodeError(AggregatorError):
    """A byte string is not valid bencode."""
