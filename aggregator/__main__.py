"""Allow `python -m aggregator --config FILE`."""

import sys

from aggregator.cli import main

sys.exit(main())
