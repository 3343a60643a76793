"""`cloud-consumer`: the stream consumer (decode, dedupe, detect, alerts, archive).

``cloud-consumer replay --input FILE --output alerts.jsonl`` runs the detection engine over a
file of readings, for backtesting thresholds on a utility's own history.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version
from pathlib import Path

from cloud_consumer.detect.config import DetectSettings, load_detect
from cloud_consumer.replay import ORDERS, READERS, Replay, detect_format, render
from cloud_consumer.replay_input import DEFAULT_CHUNK_ROWS, ReplayInputError
from meterlink_config import ConfigError, TomlReader


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud-consumer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('meterlink')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    replay = commands.add_parser(
        "replay",
        help="run detection over a file of readings (backtest)",
        description="Run the detection engine over a file in chunks; write every alert event "
        "as JSON lines and print a summary (readings, alerts per rule, quality tiers).",
    )
    replay.add_argument("--input", required=True, type=Path, metavar="FILE")
    replay.add_argument(
        "--format", choices=sorted(READERS), help="default: from the suffix (.csv .jsonl .wire)"
    )
    replay.add_argument("--output", required=True, type=Path, metavar="ALERTS.jsonl")
    replay.add_argument(
        "--config", type=Path, metavar="F", help="consumer config; its [detect] tables apply"
    )
    replay.add_argument(
        "--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per engine batch"
    )
    replay.add_argument(
        "--order",
        choices=ORDERS,
        default="time",
        help="time: sort the readings by time first, in bounded memory, spilling sorted runs to "
        "--spill-dir (default); file: feed them in file order (a file sorted by meter is then "
        "slow: one engine step per reading of a chunk's busiest meter)",
    )
    replay.add_argument(
        "--spill-dir",
        type=Path,
        metavar="DIR",
        help="where --order time writes its temporary runs (default: the system temp directory)",
    )
    replay.add_argument(
        "--show", type=int, default=50, help="episodes and malformed rows listed at most"
    )
    return parser


def _settings(path: Path | None) -> DetectSettings:
    if path is None:
        return DetectSettings()
    return load_detect(TomlReader(path))


def replay(args: argparse.Namespace) -> int:
    """The ``replay`` command; user mistakes are one line on stderr and exit status 2."""
    try:
        fmt = detect_format(args.input, args.format)
        if args.chunk_rows < 1:
            raise ValueError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
        settings = _settings(args.config)
        if not args.input.is_file():
            problem = "not a file" if args.input.exists() else "no such file"
            raise ValueError(f"{args.input}: {problem}")
        with args.output.open("wb") as out:
            summary = Replay(settings, out).run(
                args.input, fmt, args.chunk_rows, args.order, args.spill_dir
            )
    except (ConfigError, ReplayInputError, ValueError) as exc:
        print(f"cloud-consumer replay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cloud-consumer replay: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 2
    print(render(summary, str(args.input), str(args.output), show=max(args.show, 0)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cloud-consumer` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "replay":
        try:
            return replay(args)
        except KeyboardInterrupt:
            return 130
    print(
        "cloud-consumer: the stream consumer lands with its own issue; try `replay`",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
