"""Allow `python -m monitor` as well as the `channel-monitor` console script."""

import sys

from monitor.cli import main

sys.exit(main())
