"""Command line entry point: `aggregator --config FILE`."""

import asyncio
import sys

from aggregator.config import Settings, load_settings
from aggregator.errors import ConfigError
from aggregator.log import configure_logging
from aggregator.service import run_service


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        print(f"aggregator: {error}", file=sys.stderr)
        return 2

    configure_logging(settings.log_level)
    # Files named by the settings (the access lists) are read at start, so a ConfigError can
    # also come from the running service.
    try:
        _run(settings)
    except ConfigError as error:
        print(f"aggregator: {error}", file=sys.stderr)
        return 2

    return 0


def _run(settings: Settings) -> None:
    try:
        import uvloop  # optional: the `fast` extra; a faster event loop when installed
    except ImportError:
        asyncio.run(run_service(settings))
    else:
        uvloop.run(run_service(settings))


if __name__ == "__main__":
    sys.exit(main())
