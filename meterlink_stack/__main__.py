"""`python -m meterlink_stack` runs the `meterlink` CLI."""

import sys

from meterlink_stack.cli import main

sys.exit(main())
