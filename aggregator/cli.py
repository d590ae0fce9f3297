"""Command line entry point: `aggregator --config FILE`."""

import asyncio
import sys

from aggregator.config import load_settings
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
    try:
        import uvloop  # optional: the `fast` extra; a faster event loop when installed
    except ImportError:
        asyncio.run(run_service(settings))
    else:
        uvloop.run(run_service(settings))

    return 0


if __name__ == "__main__":
    sys.exit(main())
