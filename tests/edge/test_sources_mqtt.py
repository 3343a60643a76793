"""The local MQTT source against a real mosquitto: mapping, bad payloads, ack-after-durable."""

from __future__ import annotations

import itertools
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.errors import RejectedReadingError, RejectReason
from edge_agent.metrics import AgentMetrics, value
from edge_agent.reading import Reading
from edge_agent.sources.mqtt import FieldMapping, LocalMqttSettings, LocalMqttSource
from meterlink_stack import pki
from meterlink_wire import Channel, Unit
from tests.edge.sources_helpers import Mosquitto, RecordingIntake, give_to_broker, wait_until

pytestmark = pytest.mark.integration

TS = 1764201600
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    mosq = Mosquitto().start()
    yield mosq
    mosq.cleanup()


@pytest.fixture
def names() -> tuple[str, str]:
    """A client id and topic root of the test's own (the broker is shared by the module)."""
    n = next(_ids)
    return f"agent-test-{n}", f"test{n}"


@pytest.fixture
def metrics() -> AgentMetrics:
    return AgentMetrics()


def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish with QoS 1 and wait for every PUBACK, as a device on the gateway would."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def settings(broker: Mosquitto, client_id: str, topic: str, **kwargs: Any) -> LocalMqttSettings:
    return LocalMqttSettings(
        host="127.0.0.1", port=broker.port, topic=topic, client_id=client_id, **kwargs
    )


def started(
    s: LocalMqttSettings, metrics: AgentMetrics, intake: RecordingIntake
) -> LocalMqttSource:
    source = LocalMqttSource(s, metrics)
    source.start(intake)
    assert source.subscribed.wait(10), "no SUBACK"
    return source


def doc(meter: str = "elec-000001", v: float = 1.0, **fields: object) -> dict[str, object]:
    d: dict[str, object] = {"meter": meter, "channel": "power", "value": v, "unit": "kW", "ts": TS}
    d.update(fields)
    return d


def rejected(metrics: AgentMetrics, reason: str) -> float:
    return value(metrics.readings_rejected, source="mqtt", reason=reason)


# -- mapping ----------------------------------------------------------------------------------


def test_fields_from_topic_levels_json_paths_and_constants(
    broker: Mosquitto, names: tuple[str, str], metrics: AgentMetrics
) -> None:
    client_id, root = names
    mapping = FieldMapping(
        meter="topic:2",
        channel="topic:3",
        unit="const:kWh",
        value="json:data.reading.v",
        ts="json:data.t",
    )
    intake = RecordingIntake()
    source = started(settings(broker, client_id, f"{root}/+/+/+", mapping=mapping), metrics, intake)
    try:
        publish(
            broker.port,
            [
                (
                    f"{root}/site1/elec-000001/energy_import",
                    b'{"data":{"reading":{"v":12.5},"t":%d}}' % TS,
                ),
                (
                    f"{root}/site1/elec-000002/energy_export",
                    b'{"data":{"reading":{"v":3},"t":%d}}' % (TS + 1),
                ),
            ],
        )
        wait_until(lambda: len(intake.readings) == 2, what="two readings")
        assert intake.readings == [
            Reading("elec-000001", Channel.ENERGY_IMPORT, Unit.KWH, TS * 1000, 12.5),
            Reading("elec-000002", Channel.ENERGY_EXPORT, Unit.KWH, (TS + 1) * 1000, 3.0),
        ]
        assert {s.source for s in intake.submissions} == {"mqtt"}
    finally:
        source.stop()
        intake.close()


def test_array_payload_maps_every_item_and_counts_the_bad_ones(
    broker: Mosquitto, names: tuple[str, str], metrics: AgentMetrics
) -> None:
    client_id, root = names
    intake = RecordingIntake()
    source = started(settings(broker, client_id, f"{root}/#"), metrics, intake)
    try:
        items = [
            doc("elec-000001", 1.0),
            doc("elec-000002", 2.0),
            {"meter": "elec-000003", "channel": "power", "unit": "kW", "ts": TS},  # no value
            "not an object",
            doc("elec-000004", 4.0, unit="parsec"),
            doc("wat-000005", 5.0, channel="flow", unit="L/min"),
        ]
        publish(broker.port, [(f"{root}/batch", orjson.dumps(items))])
        wait_until(lambda: source.acked == 1, what="the message acked")
        assert intake.readings == [
            Reading("elec-000001", Channel.POWER, Unit.KW, TS * 1000, 1.0),
            Reading("elec-000002", Channel.POWER, Unit.KW, TS * 1000, 2.0),
            Reading("wat-000005", Channel.FLOW, Unit.L_PER_MIN, TS * 1000, 5.0),
        ]
        assert intake.rejected == 3
        assert rejected(metrics, "missing_field") == 1
        assert rejected(metrics, "not_object") == 1
        assert rejected(metrics, "unknown_unit") == 1
        assert value(metrics.readings_in, source="mqtt") == 6
    finally:
        source.stop()
        intake.close()


def test_bad_payloads_are_counted_acked_and_do_not_block_good_ones(
    broker: Mosquitto, names: tuple[str, str], metrics: AgentMetrics
) -> None:
    client_id, root = names
    intake = RecordingIntake()
    source = started(
        settings(broker, client_id, f"{root}/#", max_payload_bytes=1000), metrics, intake
    )
    try:
        publish(
            broker.port,
            [
                (f"{root}/a", b"\xff\xfe not json"),
                (f"{root}/a", b""),
                (f"{root}/a", orjson.dumps(doc("elec-000001", 1.0))),
                (f"{root}/a", b"[" + b"1," * 1000 + b"1]"),
                (f"{root}/a", b"[]"),
                (f"{root}/a", orjson.dumps(doc("bad meter id"))),
                (f"{root}/a", orjson.dumps(doc("elec-000002", 2.0))),
            ],
        )
        wait_until(lambda: source.acked == 7, what="all seven messages acked")
        assert [r.meter_id for r in intake.readings] == ["elec-000001", "elec-000002"]
        assert rejected(metrics, "not_json") == 2
        assert rejected(metrics, "too_long") == 1
        assert rejected(metrics, "bad_meter_id") == 1
        assert value(metrics.readings_rejected, source="mqtt") == 4
        assert intake.rejected == 4
    finally:
        source.stop()
        intake.close()


def test_whole_payload_as_value_and_receive_time_as_ts(
    broker: Mosquitto, names: tuple[str, str], metrics: AgentMetrics
) -> None:
    client_id, root = names
    mapping = FieldMapping(
        meter="topic:1", channel="const:voltage", unit="const:V", value="json:", ts="now"
    )
    intake = RecordingIntake()
    source = started(settings(broker, client_id, f"{root}/#", mapping=mapping), metrics, intake)
    try:
        before = int(time.time() * 1000)
        # The second topic has no level 1, so it has no meter.
        publish(broker.port, [(f"{root}/elec-000042", b"230.5"), (f"{root}", b"1.0")])
        wait_until(lambda: source.acked == 2, what="both messages acked")
        after = int(time.time() * 1000)
        (reading,) = intake.readings
        assert reading[:3] == ("elec-000042", Channel.VOLTAGE, Unit.V)
        assert reading.value == 230.5
        assert before <= reading.ts_ms <= after
        assert rejected(metrics, "missing_field") == 1
    finally:
        source.stop()
        intake.close()


def test_topic_with_too_few_levels_is_missing_field(metrics: AgentMetrics) -> None:
    mapping = FieldMapping(meter="topic:5")
    with pytest.raises(RejectedReadingError) as info:
        mapping.reading(["a", "b"], doc(), 0.0)
    assert info.value.reason is RejectReason.MISSING_FIELD


def test_topic_level_as_number_and_const_number() -> None:
    mapping = FieldMapping(meter="topic:0", value="topic:1", ts="const:1764201600", unit="const:W")
    assert mapping.reading(["elec-000001", "42"], {"channel": "power"}, 0.0) == Reading(
        "elec-000001", Channel.POWER, Unit.W, TS * 1000, 42.0
    )


@pytest.mark.parametrize(
    ("field", "spec"),
    [
        ("meter", "topic:x"),
        ("meter", "topic:-1"),
        ("channel", "json:a..b"),
        ("unit", "now"),
        ("value", "yaml:v"),
        ("ts", "json"),
    ],
)
def test_bad_mapping_specs_name_the_field(field: str, spec: str) -> None:
    with pytest.raises(ValueError, match=rf"^mapping\.{field}: "):
        FieldMapping(**{field: spec})


# -- acknowledgement only after durable -------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_unacked_messages_are_redelivered_and_acked_ones_are_not(
    broker: Mosquitto, names: tuple[str, str], metrics: AgentMetrics, protocol: str
) -> None:
    client_id, root = names
    s = settings(broker, client_id, f"{root}/#", protocol=protocol)
    sent = [doc(f"elec-{n:06d}", float(n)) for n in range(1, 6)]
    expected = [
        Reading(f"elec-{n:06d}", Channel.POWER, Unit.KW, TS * 1000, float(n)) for n in range(1, 6)
    ]

    # 1. The agent takes the messages but never makes them durable, then goes away.
    held = RecordingIntake(hold=True)
    first = started(s, metrics, held)
    publish(broker.port, [(f"{root}/m", orjson.dumps(d)) for d in sent])
    wait_until(lambda: held.readings == expected, what="first delivery")
    first.stop(timeout_s=0.5)
    assert first.acked == 0
    held.close()

    # 2. The same client id again: the broker redelivers all five; this time they are durable.
    acking = RecordingIntake()
    second = started(s, AgentMetrics(), acking)
    wait_until(lambda: second.acked == 5, what="redelivery acked")
    assert acking.readings == expected
    second.stop()
    acking.close()

    # 3. Once more: nothing is redelivered. A sentinel published after the (re)subscription
    # arrives after anything the session still held, so it alone proves the session was empty.
    third_intake = RecordingIntake()
    third = started(s, AgentMetrics(), third_intake)
    try:
        publish(broker.port, [(f"{root}/m", orjson.dumps(doc("elec-009999", 9.0)))])
        wait_until(lambda: third.acked == 1, what="sentinel")
        assert [r.meter_id for r in third_intake.readings] == ["elec-009999"]
    finally:
        third.stop()
        third_intake.close()


def test_refused_messages_are_not_acked_and_are_submitted_again(
    broker: Mosquitto, names: tuple[str, str], metrics: AgentMetrics
) -> None:
    client_id, root = names
    intake = RecordingIntake(refuse=True)
    source = started(settings(broker, client_id, f"{root}/#"), metrics, intake)
    try:
        publish(broker.port, [(f"{root}/m", orjson.dumps([doc("elec-000001"), "junk"]))])
        wait_until(lambda: intake.refused >= 3, what="refusals")
        assert source.acked == 0
        assert intake.readings == []
        intake.refuse = False
        wait_until(lambda: source.acked == 1, what="acked once accepted")
        assert [r.meter_id for r in intake.readings] == ["elec-000001"]
        # The rejected item is reported with the first attempt only.
        assert intake.rejected == 1
        assert rejected(metrics, "not_object") == 1
    finally:
        source.stop()
        intake.close()


def test_acks_wait_for_a_slow_pipeline(
    broker: Mosquitto, names: tuple[str, str], metrics: AgentMetrics
) -> None:
    client_id, root = names
    intake = RecordingIntake(hold=True)
    source = started(settings(broker, client_id, f"{root}/#"), metrics, intake)
    try:
        publish(broker.port, [(f"{root}/m", orjson.dumps(doc(v=float(n)))) for n in range(50)])
        # Unacknowledged, the broker stops at its in-flight window (mosquitto: 20 per client).
        wait_until(lambda: len(intake.readings) >= 20, what="the first window")
        assert source.acked == 0
        intake.release()
        wait_until(lambda: source.acked == 50, what="all acked")
        assert [r.value for r in intake.readings] == [float(n) for n in range(50)]
        # Messages that queued up while a submit was pending went in together.
        assert len(intake.submissions) < 50
    finally:
        source.stop()
        intake.close()


# -- username, password and TLS ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_broker() -> Iterator[tuple[Mosquitto, Path]]:
    """A second mosquitto: TLS only, no anonymous clients, one user `agent` / `s3cret`."""
    mosq = Mosquitto()
    # Replace the plain listener: only the TLS one below may exist.
    layout = pki.init_pki(mosq.folder / "pki")
    for name in ("ca.crt", "server.crt", "server.key"):
        target = mosq.folder / name
        shutil.copy(layout.root / name, target)
        give_to_broker(target)
    passwd = mosq.folder / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "agent", "s3cret"], check=True)
    give_to_broker(passwd)
    mosq.config.write_text(
        f"listener {mosq.port} 127.0.0.1\n"
        "persistence false\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"cafile {mosq.folder / 'ca.crt'}\n"
        f"certfile {mosq.folder / 'server.crt'}\n"
        f"keyfile {mosq.folder / 'server.key'}\n"
        "tls_version tlsv1.2\n"
        "log_dest stderr\n"
    )
    mosq.start()
    yield mosq, mosq.folder / "ca.crt"
    mosq.cleanup()


def test_tls_with_username_and_password(
    tls_broker: tuple[Mosquitto, Path],
    metrics: AgentMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mosq, ca = tls_broker
    intake = RecordingIntake()
    good = LocalMqttSettings(
        host="127.0.0.1",
        port=mosq.port,
        topic="meters/#",
        client_id="agent-tls",
        username="agent",
        password="s3cret",
        ca_file=ca,
    )
    source = started(good, metrics, intake)
    try:
        publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="device-tls")
        publisher.username_pw_set("agent", "s3cret")
        publisher.tls_set(ca_certs=str(ca))
        publisher.connect("127.0.0.1", mosq.port)
        publisher.loop_start()
        publisher.publish(
            "meters/x", orjson.dumps(doc("elec-000001", 7.0)), qos=1
        ).wait_for_publish(10)
        publisher.disconnect()
        publisher.loop_stop()
        wait_until(lambda: source.acked == 1, what="the reading over TLS")
        assert [r.value for r in intake.readings] == [7.0]
    finally:
        source.stop()

    caplog.set_level(logging.ERROR, logger="edge_agent.sources.mqtt")
    bad = LocalMqttSettings(
        host="127.0.0.1",
        port=mosq.port,
        topic="meters/#",
        client_id="agent-tls-bad",
        username="agent",
        password="wrong",
        ca_file=ca,
    )
    refused = LocalMqttSource(bad, AgentMetrics())
    refused.start(intake)
    try:
        wait_until(
            lambda: any("mqtt_connect_refused" in r.getMessage() for r in caplog.records),
            what="the refusal logged",
        )
        assert not refused.connected.is_set()
    finally:
        refused.stop(timeout_s=1)
        intake.close()
