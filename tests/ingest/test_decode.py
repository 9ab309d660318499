"""Pure tests of message decoding and validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from weijian.devices.kinds import DeviceKind
from weijian.ingest.decode import Decoded, Rejected, Topic, decode, parse_topic, parse_ts

NOW = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
MAX = timedelta(days=30)
TEL = Topic("stm-1", "telemetry")
EVT = Topic("wsc-1", "events")


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def tel(payload: object, kind: DeviceKind = DeviceKind.STEAM_CABINET) -> Decoded:
    return decode(TEL, kind, orjson.dumps(payload), NOW, MAX)


def test_parse_topic() -> None:
    assert parse_topic("weijian/v1/stm-1/telemetry", "weijian/v1") == Topic("stm-1", "telemetry")
    with pytest.raises(Rejected, match="unknown channel"):
        parse_topic("weijian/v1/stm-1/config", "weijian/v1")
    with pytest.raises(Rejected, match="outside"):
        parse_topic("other/stm-1/telemetry", "weijian/v1")
    with pytest.raises(Rejected, match="is not"):
        parse_topic("weijian/v1/a/b/telemetry", "weijian/v1")


def test_reading_becomes_one_row_per_metric() -> None:
    out = tel({"seq": 5, "ts": ms(NOW), "metrics": {"temp_c": 101.4, "door_open": 0}})
    assert [(r.metric, r.value, r.seq) for r in out.readings] == [
        ("temp_c", 101.4, 5),
        ("door_open", 0.0, 5),
    ]
    assert out.readings[0].ts == NOW
    assert out.readings[0].received_at == NOW
    assert out.max_seq == 5


def test_rfc3339_with_offset_is_accepted() -> None:
    out = tel({"seq": 1, "ts": "2026-11-23T08:00:00+08:00", "metrics": {"temp_c": 20}})
    assert out.readings[0].ts == NOW


def test_booleans_count_as_flags() -> None:
    out = tel({"seq": 1, "ts": ms(NOW), "metrics": {"door_open": True}})
    assert out.readings[0].value == 1.0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"ts": 1, "metrics": {"temp_c": 1}}, "seq is missing"),
        ({"seq": "7", "ts": 1, "metrics": {"temp_c": 1}}, "seq is missing or not an integer"),
        ({"seq": -1, "ts": 1, "metrics": {"temp_c": 1}}, "negative"),
        ({"seq": 1, "metrics": {"temp_c": 1}}, "ts is missing"),
        ({"seq": 1, "ts": "yesterday", "metrics": {"temp_c": 1}}, "not RFC 3339"),
        ({"seq": 1, "ts": "2026-11-23T08:00:00", "metrics": {"temp_c": 1}}, "no UTC offset"),
        ({"seq": 1, "ts": 1, "metrics": {"temp_c": 1}}, "days from the receive time"),
        ({"seq": 1, "ts": 10**17, "metrics": {"temp_c": 1}}, "not a valid epoch"),
        ({"seq": 1, "ts": True, "metrics": {"temp_c": 1}}, "not a boolean"),
        ({"seq": 1, "ts": None, "metrics": {}}, "ts is missing"),
        ({"seq": 1, "ts": "NOW", "metrics": {"temp_c": "hot"}}, "not RFC 3339"),
        ({"seq": 1, "metrics": []}, "ts is missing"),
        ([], "empty array"),
        ("text", "a reading must be a JSON object"),
    ],
)
def test_bad_readings_are_rejected_with_a_reason(payload: object, reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        tel(payload)


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"temp_c": "hot"}, "not a number"),
        ({"temp_c": None}, "not a number"),
        ({"rpm": 5}, "unknown metric 'rpm'"),
        ({}, "non-empty object"),
    ],
)
def test_bad_metrics_are_rejected(metrics: dict[str, object], reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        tel({"seq": 1, "ts": ms(NOW), "metrics": metrics})


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_not_json(literal: bytes) -> None:
    raw = b'{"seq": 1, "ts": %d, "metrics": {"temp_c": %s}}' % (ms(NOW), literal)
    with pytest.raises(Rejected, match="not valid JSON"):
        decode(TEL, DeviceKind.STEAM_CABINET, raw, NOW, MAX)


def test_huge_float_is_not_finite() -> None:
    raw = b'{"seq": 1, "ts": %d, "metrics": {"temp_c": 1e999}}' % ms(NOW)
    with pytest.raises(Rejected):
        decode(TEL, DeviceKind.STEAM_CABINET, raw, NOW, MAX)


def test_device_id_in_payload_must_match_topic() -> None:
    with pytest.raises(Rejected, match="not the topic's"):
        tel({"device_id": "stm-2", "seq": 1, "ts": ms(NOW), "metrics": {"temp_c": 1}})
    assert tel({"device_id": "stm-1", "seq": 1, "ts": ms(NOW), "metrics": {"temp_c": 1}}).readings


def test_backlog_array_keeps_good_items_and_rejects_bad_ones() -> None:
    good = [
        {"seq": i, "ts": ms(NOW - timedelta(seconds=10 * i)), "metrics": {"temp_c": 90 + i}}
        for i in range(3)
    ]
    out = tel([*good, {"seq": 9, "ts": ms(NOW), "metrics": {"temp_c": "x"}}])
    assert len(out.readings) == 3
    assert len(out.rejected) == 1
    assert "not a number" in out.rejected[0][0]
    assert orjson.loads(out.rejected[0][1])["seq"] == 9
    assert out.max_seq == 2


def test_events_are_validated_per_kind() -> None:
    ok = decode(
        EVT,
        DeviceKind.WASTE_SCALE,
        orjson.dumps(
            {
                "seq": 3,
                "ts": ms(NOW),
                "type": "bag_in",
                "data": {
                    "bag_id": "B1",
                    "category": "infectious",
                    "weight_kg": 2.5,
                    "dept": "内科",
                },
            }
        ),
        NOW,
        MAX,
    )
    assert ok.events[0].type == "bag_in"
    assert ok.events[0].data["bag_id"] == "B1"
    with pytest.raises(Rejected, match="not one a waste_scale sends"):
        decode(
            EVT,
            DeviceKind.WASTE_SCALE,
            orjson.dumps({"seq": 1, "ts": ms(NOW), "type": "batch_start"}),
            NOW,
            MAX,
        )
    with pytest.raises(Rejected, match="category"):
        decode(
            EVT,
            DeviceKind.WASTE_SCALE,
            orjson.dumps(
                {
                    "seq": 1,
                    "ts": ms(NOW),
                    "type": "bag_in",
                    "data": {"bag_id": "B1", "category": "glass", "weight_kg": 1},
                }
            ),
            NOW,
            MAX,
        )
    with pytest.raises(Rejected, match="bag_ids"):
        decode(
            EVT,
            DeviceKind.WASTE_SCALE,
            orjson.dumps(
                {
                    "seq": 1,
                    "ts": ms(NOW),
                    "type": "bag_out",
                    "data": {"bag_ids": "B1", "weight_kg": 1},
                }
            ),
            NOW,
            MAX,
        )
    with pytest.raises(Rejected, match="weight_kg"):
        decode(
            EVT,
            DeviceKind.WASTE_SCALE,
            orjson.dumps(
                {
                    "seq": 1,
                    "ts": ms(NOW),
                    "type": "bag_out",
                    "data": {"bag_ids": ["B1"], "weight_kg": -2},
                }
            ),
            NOW,
            MAX,
        )


def test_status_messages() -> None:
    status = Topic("stm-1", "status")
    assert decode(status, DeviceKind.STEAM_CABINET, b'{"online": false}', NOW, MAX).online is False
    with pytest.raises(Rejected, match="status must be"):
        decode(status, DeviceKind.STEAM_CABINET, b'{"online": "yes"}', NOW, MAX)


def test_parse_ts_epoch_ms() -> None:
    assert parse_ts(ms(NOW), NOW, MAX) == NOW
    assert parse_ts(float(ms(NOW)), NOW, MAX) == NOW
