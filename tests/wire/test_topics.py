import pytest

from meterlink_wire import (
    SUBSCRIPTION_ALL,
    SUBSCRIPTION_EVENTS,
    SUBSCRIPTION_STATUS,
    SUBSCRIPTION_TELEMETRY,
    TOPIC_ROOT,
    Kind,
    Reason,
    TopicKind,
    WireError,
    parse_topic,
    topic_for,
    validate_gateway_id,
    validate_meter_id,
)


def test_topic_layout():
    assert TOPIC_ROOT == "dt/meterlink"
    assert topic_for("gw-0001", TopicKind.TELEMETRY) == "dt/meterlink/gw-0001/telemetry"
    assert topic_for("gw-0001", TopicKind.EVENTS) == "dt/meterlink/gw-0001/events"
    assert topic_for("gw-0001", TopicKind.STATUS) == "dt/meterlink/gw-0001/status"
    assert SUBSCRIPTION_TELEMETRY == "dt/meterlink/+/telemetry"
    assert SUBSCRIPTION_EVENTS == "dt/meterlink/+/events"
    assert SUBSCRIPTION_STATUS == "dt/meterlink/+/status"
    assert SUBSCRIPTION_ALL == "dt/meterlink/+/+"


def test_topic_for_accepts_batch_kind_and_plain_strings():
    assert topic_for("gw-1", Kind.EVENTS) == "dt/meterlink/gw-1/events"
    assert topic_for("gw-1", "status") == "dt/meterlink/gw-1/status"


@pytest.mark.parametrize("kind", list(TopicKind))
def test_parse_inverts_topic_for(kind):
    gateway = "Plant_7:line-2"
    topic = topic_for(gateway, kind)
    parsed = parse_topic(topic)
    assert parsed == (gateway, kind)
    assert parsed[1] is kind


def test_topic_for_rejects_bad_gateway_and_kind():
    with pytest.raises(WireError) as info:
        topic_for("gw/1", TopicKind.TELEMETRY)
    assert info.value.reason is Reason.BAD_ID
    with pytest.raises(WireError) as info:
        topic_for("gw-1", "commands")
    assert info.value.reason is Reason.BAD_TOPIC


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "dt/meterlink",
        "dt/meterlink/",
        "dt/meterlink/gw-1",
        "dt/meterlink/gw-1/",
        "dt/meterlink//telemetry",
        "dt/meterlink/gw-1/commands",
        "dt/meterlink/gw-1/telemetry/extra",
        "dt/meterlink/gw-1/Telemetry",
        "/dt/meterlink/gw-1/telemetry",
        "dt/other/gw-1/telemetry",
        "cmd/meterlink/gw-1/telemetry",
        "dt/meterlink/+/telemetry",
        "dt/meterlink/#",
        "dt/meterlink/gw.1/telemetry",
        "dt/meterlink/-gw/telemetry",
        "dt/meterlink/" + "g" * 65 + "/telemetry",
    ],
)
def test_parse_topic_rejects(topic):
    with pytest.raises(WireError) as info:
        parse_topic(topic)
    assert info.value.reason is Reason.BAD_TOPIC
    assert "\n" not in str(info.value)


def test_parse_topic_rejects_non_string():
    with pytest.raises(WireError) as info:
        parse_topic(b"dt/meterlink/gw-1/telemetry")  # type: ignore[arg-type]
    assert info.value.reason is Reason.BAD_TOPIC


def test_longest_gateway_id_is_accepted():
    gateway = "G" + "x" * 63
    assert parse_topic(topic_for(gateway, TopicKind.STATUS)) == (gateway, TopicKind.STATUS)


@pytest.mark.parametrize("value", ["gw-0001", "A", "0", "a_b:c-d", "Z" * 64, "thing:with:colons"])
def test_valid_gateway_ids(value):
    assert validate_gateway_id(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "-gw", "_gw", "gw/1", "gw+1", "gw#1", "gw 1", "gw.1", "gw\n", "gw1\n", "Z" * 65, "gwé"],
)
def test_invalid_gateway_ids(value):
    with pytest.raises(WireError) as info:
        validate_gateway_id(value)
    assert info.value.reason is Reason.BAD_ID


@pytest.mark.parametrize("value", ["elec-000001", "water-17", "m.1", "a:b_c-d.e", "M" * 64])
def test_valid_meter_ids(value):
    assert validate_meter_id(value) == value


@pytest.mark.parametrize("value", ["", ".m", "m/1", "m 1", "m\n", "M" * 65, "mé"])
def test_invalid_meter_ids(value):
    with pytest.raises(WireError) as info:
        validate_meter_id(value)
    assert info.value.reason is Reason.BAD_ID


def test_non_string_ids_are_bad_type():
    for check in (validate_gateway_id, validate_meter_id):
        with pytest.raises(WireError) as info:
            check(17)
        assert info.value.reason is Reason.BAD_TYPE
