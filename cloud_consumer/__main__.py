"""`cloud-consumer`: the stream consumer (decode, dedupe, detect, alerts, archive)."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cloud-consumer` console script."""
    parser = argparse.ArgumentParser(
        prog="cloud-consumer",
        description=__doc__,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('meterlink')}")
    parser.parse_args(argv)
    print("cloud-consumer: not built yet; it lands with its own issue", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
