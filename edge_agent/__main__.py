"""`edge-agent`: the gateway agent (sources, windows, durable buffer, MQTT publisher)."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edge-agent` console script."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description=__doc__,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('meterlink')}")
    parser.parse_args(argv)
    print("edge-agent: not built yet; it lands with its own issue", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
