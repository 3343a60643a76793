"""Fuzz the decoders: 100,000+ random and mutated payloads must raise nothing but WireError.

Fixed seed, so a failure reproduces; the failing payload is printed. Runs in ~10 s here.
"""

import copy
import json
import random
import zlib
from collections import Counter
from typing import Any

import orjson

from meterlink_wire import (
    Channel,
    GatewayStatus,
    Kind,
    ReadingBatch,
    Reason,
    Unit,
    WindowRow,
    WireError,
    decode,
    decode_status,
    encode,
    encode_status,
    parse_topic,
)
from meterlink_wire.codec import decode_exact, load_text

SEED = 20_251_127
ROUNDS = 100_000
T0 = 1_764_201_600_000

JUNK_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63,
    2**64 - 1,
    -(2**63) - 1,
    1.5,
    -0.0,
    1e308,
    5e-324,
    "",
    "x",
    "0",
    "1.5",
    "energy_import",
    "kWh",
    "gw/1",
    "\u0000",
    "\ud7ff",
    [],
    [0],
    [[0, 1], [2]],
    [None, True, "a"],
    {},
    {"meter": [0]},
    {"v": 1, "type": "telemetry"},
    [[[[[[[[[[[]]]]]]]]]]],
]
# Raw tokens orjson cannot produce but an attacker can: out-of-range numbers, non-JSON literals.
RAW_TOKENS = [
    b"1e400",
    b"-1e400",
    b"-0",
    b"-0.0",
    b"1e-400",
    b"18446744073709551616",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"1" + b"0" * 400,
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b"0x10",
    b"true",
    b"null",
    b'"1"',
    b"[]",
    b"{}",
    b"1e308",
    b"-1.7976931348623157e308",
    b'"\\ud800"',
]


def seeds() -> list[bytes]:
    rng = random.Random(SEED)
    out: list[bytes] = []
    for rows in (1, 2, 3, 5, 8):
        batch_rows = []
        for i in range(rows):
            lo = round(rng.uniform(-50, 5000), 3)
            hi = round(lo + rng.uniform(0, 20), 3)
            batch_rows.append(
                WindowRow(
                    f"m-{rng.randrange(4)}",
                    rng.choice(list(Channel)),
                    rng.choice(list(Unit)),
                    T0 + 60_000 * i,
                    rng.randrange(1, 61),
                    lo,
                    hi,
                    (lo + hi) / 2,
                    hi,
                )
            )
        out.append(encode(ReadingBatch.from_rows("gw-0001", rows, T0 + 61_000, 60, batch_rows)))
    events = ReadingBatch.from_rows(
        "gw-0002",
        9,
        T0,
        0,
        [
            WindowRow("e1", Channel.POWER, Unit.KW, T0, 1, 9.5, 9.5, 9.5, 9.5, "overload"),
            WindowRow(
                "e2", Channel.FLOW, Unit.L_PER_MIN, T0, 1, -1.0, -1.0, -1.0, -1.0, "reverse_flow"
            ),
        ],
        kind=Kind.EVENTS,
    )
    out.append(encode(events))
    # A counter batch with the optional delta column, so mutations reach its checks too.
    counters = [
        WindowRow("c1", Channel.ENERGY_IMPORT, Unit.KWH, T0, 60, 5.0, 5.5, 5.2, 5.5, None, 0.5),
        WindowRow("c1", Channel.POWER, Unit.KW, T0, 60, 1.0, 2.0, 1.5, 2.0),
        WindowRow("c2", Channel.VOLUME, Unit.M3, T0, 3, 7.25, 7.5, 7.4, 7.5, None, 0.25),
    ]
    out.append(encode(ReadingBatch.from_rows("gw-0004", 3, T0 + 60_500, 60, counters)))
    out.append(encode_status(GatewayStatus("gw-0003", "online", T0, "0.1.0", 5, 400, 0)))
    return out


def walk(doc: Any, rng: random.Random) -> tuple[Any, Any]:
    """Pick a random (container, key) inside doc, biased towards going deep."""
    container, key = doc, None
    while True:
        if isinstance(container, dict) and container:
            key = rng.choice(list(container))
        elif isinstance(container, list) and container:
            key = rng.randrange(len(container))
        else:
            return None, None
        child = container[key]
        if isinstance(child, dict | list) and child and rng.random() < 0.7:
            container = child
            continue
        return container, key


def mutate_document(data: bytes, rng: random.Random) -> bytes:
    doc = copy.deepcopy(orjson.loads(zlib.decompress(data) if data[0] == 0x78 else data))
    if rng.random() < 0.01:
        doc = copy.deepcopy(rng.choice(JUNK_VALUES))  # not an object at all
    for _ in range(rng.randint(1, 3)):
        container, key = walk(doc, rng)
        if container is None:
            continue
        action = rng.randrange(6)
        if action == 0:
            del container[key]
        elif action == 1:
            container[key] = copy.deepcopy(rng.choice(JUNK_VALUES))
        elif action == 2 and isinstance(container[key], list):
            container[key] = container[key] * rng.randint(0, 3)
        elif (
            action == 3
            and isinstance(container[key], int | float)
            and not isinstance(container[key], bool)
        ):
            container[key] = -container[key] if rng.random() < 0.5 else container[key] * 1e300
        elif action == 4 and isinstance(container, dict):
            container[f"extra{rng.randrange(3)}"] = copy.deepcopy(rng.choice(JUNK_VALUES))
        else:
            container[key] = [container[key]]  # nest one level
    # The stdlib writes what orjson refuses to: ints beyond 64 bits, NaN and Infinity.
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=rng.random() < 0.5).encode(
        "utf-8", "surrogatepass"
    )
    if rng.random() < 0.4:
        # Replace a random number or literal token with a raw token orjson would never write.
        positions = [i for i, c in enumerate(text) if c in b"0123456789tfn"]
        if positions:
            start = rng.choice(positions)
            end = start
            while end < len(text) and text[end] in b"0123456789.eE+-truefalsn":
                end += 1
            text = text[:start] + rng.choice(RAW_TOKENS) + text[end:]
    return text


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    action = rng.randrange(4)
    if action == 0:  # truncate
        return bytes(buffer[: rng.randrange(len(buffer))])
    if action == 1:  # flip bits
        for _ in range(rng.randint(1, 4)):
            buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
    elif action == 2:  # insert bytes
        at = rng.randrange(len(buffer) + 1)
        buffer[at:at] = rng.randbytes(rng.randint(1, 4))
    else:  # delete a range
        at = rng.randrange(len(buffer))
        del buffer[at : at + rng.randint(1, 8)]
    return bytes(buffer)


def payloads(rng: random.Random, valid: list[bytes]) -> Any:
    compressed = [zlib.compress(v) for v in valid]
    for _ in range(ROUNDS):
        roll = rng.random()
        if roll < 0.08:
            prefix = rng.choice([b"", b"{", b"\x78\x9c", b"\x78\x01", b"\x78\xda", b'{"v":1,'])
            yield prefix + rng.randbytes(rng.randrange(64))
        elif roll < 0.40:
            yield mutate_bytes(rng.choice(valid), rng)
        elif roll < 0.52:
            yield mutate_bytes(rng.choice(compressed), rng)
        elif roll < 0.90:
            yield mutate_document(rng.choice(valid), rng)
        else:
            mutated = zlib.compress(mutate_document(rng.choice(valid), rng), rng.choice([1, 6, 9]))
            yield mutate_bytes(mutated, rng) if rng.random() < 0.3 else mutated


def well_typed(data: bytes) -> bool:
    rows = orjson.loads(zlib.decompress(data) if data[0] == 0x78 else data)["rows"]
    integers = ("meter", "channel", "unit", "start_ms", "count", "reason")
    floats = ("min", "max", "mean", "last", "delta")
    return all(type(v) is int for n in integers for v in rows.get(n, [])) and all(
        type(v) in (int, float) for n in floats for v in rows.get(n, [])
    )


def check(decoder: Any, data: bytes, reasons: Counter[str], failures: list[str]) -> Any:
    try:
        result = decoder(data)
    except WireError as exc:
        reasons[exc.reason] += 1
        if "\n" in str(exc) or not isinstance(exc.reason, Reason):
            failures.append(f"malformed error {exc!r} for {data!r}")
        return None
    except Exception as exc:  # the point of the test: anything else is a bug
        failures.append(f"{type(exc).__name__}: {exc} for {data[:300]!r}")
        return None
    reasons["ok"] += 1
    return result


def exact_outcome(data: bytes) -> tuple[Any, ...]:
    """What the exact (orjson-only) path makes of a payload."""
    try:
        return ("batch", decode_exact(load_text(data)))
    except WireError as exc:
        return ("error", exc.reason, exc.detail)


def test_decoders_raise_only_wire_error():
    rng = random.Random(SEED)
    valid = seeds()
    reasons: Counter[str] = Counter()
    failures: list[str] = []
    total = 0
    for data in payloads(rng, valid):
        total += 1
        batch = check(decode, data, reasons, failures)
        # The simdjson fast path and the exact orjson path must agree on every payload.
        exact = exact_outcome(data)
        if batch is None:
            same = exact[0] == "error"
        else:
            same = exact[0] == "batch" and batch.equals(exact[1])
        if not same:
            failures.append(f"fast and exact paths differ ({exact[:3]}) for {data[:300]!r}")
        # Whatever decodes must re-encode to an equal batch and must have held only numbers of
        # the right kind: the decoder accepts nothing the encoder could not have produced.
        if batch is not None and (not decode(encode(batch)).equals(batch) or not well_typed(data)):
            failures.append(f"accepted {data!r}")
        if total % 8 == 0:
            check(decode_status, data, Counter(), failures)
        if total % 16 == 0:
            try:
                parse_topic(data.decode("latin-1"))
            except WireError:
                pass
            except Exception as exc:
                failures.append(f"parse_topic: {type(exc).__name__}: {exc}")
        if len(failures) >= 10:
            break
    print(dict(reasons.most_common()))
    assert failures == []
    assert total == ROUNDS
    # The fuzzer must reach deep into the decoder, not just bounce off the JSON parser.
    assert reasons["ok"] > 100
    hit = {r for r in reasons if r != "ok"}
    expected = set(Reason) - {Reason.BAD_TOPIC, Reason.OVERSIZE}
    assert expected <= hit, f"never provoked: {expected - hit}"
