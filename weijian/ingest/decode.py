"""Decoding and validating device messages (docs/protocol.md); pure, no I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from weijian.devices.kinds import KINDS, DeviceKind, WasteCategory
from weijian.telemetry import Event, Reading

CHANNELS = ("telemetry", "events", "status")
_CATEGORIES = {c.value for c in WasteCategory}
# Metric names of each kind, built once (`KindSpec.metric_names` builds a new set per call).
METRIC_NAMES: dict[DeviceKind, frozenset[str]] = {k: spec.metric_names for k, spec in KINDS.items()}
# A reading as the ingest COPYs it: (ts, device_id, metric, value, seq, received_at).
ReadingRow = tuple[datetime, str, str, float, int | None, datetime | None]


class Rejected(ValueError):
    """A message, or one item of it, that cannot be stored; the text is the dead-letter reason."""


@dataclass(frozen=True, slots=True)
class Topic:
    device_id: str
    channel: str


@dataclass(slots=True)
class Decoded:
    """What one MQTT message yields: rows to store, items rejected, and presence."""

    readings: list[Reading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # (reason, raw item bytes) of items of an array that were rejected on their own.
    rejected: list[tuple[str, bytes]] = field(default_factory=list)
    online: bool | None = None
    max_seq: int | None = None


def parse_topic(topic: str, root: str) -> Topic:
    """`{root}/{device_id}/{channel}` → Topic, or Rejected."""
    prefix = root + "/"
    if not topic.startswith(prefix):
        raise Rejected(f"topic {topic!r} is outside {root}/")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 2 or not parts[0]:
        raise Rejected(f"topic {topic!r} is not {root}/{{device_id}}/{{channel}}")
    device_id, channel = parts
    if channel not in CHANNELS:
        raise Rejected(f"unknown channel {channel!r}; one of {', '.join(CHANNELS)}")
    return Topic(device_id, channel)


def parse_ts(value: Any, received_at: datetime, max_offset: timedelta) -> datetime:
    """Device time: epoch milliseconds (UTC) or RFC 3339 with an offset."""
    if isinstance(value, bool):
        raise Rejected("ts must be epoch milliseconds or an RFC 3339 string, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise Rejected("ts is not a finite number")
        try:
            ts = datetime.fromtimestamp(value / 1000.0, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise Rejected(f"ts {value!r} is not a valid epoch-milliseconds time") from None
    elif isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            raise Rejected(f"ts {value!r} is not RFC 3339") from None
        if ts.tzinfo is None:
            raise Rejected(f"ts {value!r} has no UTC offset")
    else:
        raise Rejected("ts is missing or not a number/string")
    if abs(ts - received_at) > max_offset:
        raise Rejected(
            f"ts {ts.isoformat()} is more than {max_offset.days} days from the receive time"
        )
    return ts


def _seq(item: Mapping[str, Any]) -> int:
    seq = item.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise Rejected("seq is missing or not an integer")
    if seq < 0:
        raise Rejected("seq is negative")
    return seq


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, int | float):
        raise Rejected(f"metric {name!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise Rejected(f"metric {name!r} is not finite")
    return number


def _check_device_field(item: Mapping[str, Any], device_id: str) -> None:
    claimed = item.get("device_id")
    if claimed is not None and claimed != device_id:
        raise Rejected(f"payload device_id {claimed!r} is not the topic's {device_id!r}")


def _reading_item(
    item: Any, device_id: str, kind: DeviceKind, received_at: datetime, max_offset: timedelta
) -> list[Reading]:
    if not isinstance(item, dict):
        raise Rejected("a reading must be a JSON object")
    _check_device_field(item, device_id)
    seq = _seq(item)
    ts = parse_ts(item.get("ts"), received_at, max_offset)
    metrics = item.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise Rejected("metrics is missing or not a non-empty object")
    allowed = METRIC_NAMES[kind]
    rows = []
    for name, raw in metrics.items():
        if name not in allowed:
            raise Rejected(
                f"unknown metric {name!r} for a {kind.value}; one of {', '.join(sorted(allowed))}"
            )
        rows.append(Reading(ts, device_id, name, _number(name, raw), seq, received_at))
    return rows


def _check_event_data(event_type: str, data: dict[str, Any]) -> None:
    def need_str(key: str) -> None:
        if not isinstance(data.get(key), str) or not data[key]:
            raise Rejected(f"{event_type} needs a non-empty string {key!r}")

    def need_weight() -> None:
        weight = data.get("weight_kg")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise Rejected(f"{event_type} needs a non-negative number 'weight_kg'")

    if event_type == "bag_in":
        need_str("bag_id")
        need_weight()
        if data.get("category") not in _CATEGORIES:
            raise Rejected(f"bag_in category must be one of {', '.join(sorted(_CATEGORIES))}")
    elif event_type == "bag_out":
        bag_ids = data.get("bag_ids")
        if not isinstance(bag_ids, list) or not all(isinstance(b, str) and b for b in bag_ids):
            raise Rejected("bag_out needs 'bag_ids', a list of bag ids")
        need_weight()
    elif event_type in ("basket_in", "basket_out"):
        need_str("basket_id")


def _event_item(
    item: Any, device_id: str, kind: DeviceKind, received_at: datetime, max_offset: timedelta
) -> Event:
    if not isinstance(item, dict):
        raise Rejected("an event must be a JSON object")
    _check_device_field(item, device_id)
    seq = _seq(item)
    ts = parse_ts(item.get("ts"), received_at, max_offset)
    event_type = item.get("type")
    allowed = KINDS[kind].events
    if not isinstance(event_type, str) or event_type not in allowed:
        valid = ", ".join(allowed) or "none"
        raise Rejected(f"event type {event_type!r} is not one a {kind.value} sends ({valid})")
    data = item.get("data", {})
    if not isinstance(data, dict):
        raise Rejected("event data must be a JSON object")
    _check_event_data(event_type, data)
    return Event(ts, device_id, event_type, data, seq, received_at)


def decode(
    topic: Topic, kind: DeviceKind, payload: bytes, received_at: datetime, max_offset: timedelta
) -> Decoded:
    """Decode one message. Raises Rejected when the whole message is bad; items of an array
    that are bad on their own are returned in `rejected` while the good ones are kept."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Rejected(f"not valid JSON: {exc}") from None
    out = Decoded()
    if topic.channel == "status":
        if not isinstance(body, dict) or not isinstance(body.get("online"), bool):
            raise Rejected('status must be {"online": true|false}')
        out.online = body["online"]
        return out
    items = body if isinstance(body, list) else [body]
    if not items:
        raise Rejected("empty array")
    for item in items:
        try:
            if topic.channel == "telemetry":
                rows = _reading_item(item, topic.device_id, kind, received_at, max_offset)
                out.readings.extend(rows)
                seq = rows[0].seq
            else:
                event = _event_item(item, topic.device_id, kind, received_at, max_offset)
                out.events.append(event)
                seq = event.seq
        except Rejected as exc:
            if len(items) == 1:
                raise
            out.rejected.append((str(exc), orjson.dumps(item)))
            continue
        if seq is not None and (out.max_seq is None or seq > out.max_seq):
            out.max_seq = seq
    return out


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Epoch milliseconds a fast-path reading's ts must lie strictly inside: the accepted clock
    offset narrowed by a second, so that rounding never decides; the full decoder judges
    anything near the edges."""

    low_ms: int
    high_ms: int

    @classmethod
    def around(cls, received_at: datetime, max_offset: timedelta) -> TimeWindow:
        at_ms = int(received_at.timestamp() * 1000)
        span_ms = int(max_offset.total_seconds() * 1000) - 1000
        return cls(at_ms - span_ms, at_ms + span_ms)


def reading_rows(
    payload: bytes,
    device_id: str,
    *,
    allowed: frozenset[str],
    received_at: datetime,
    window: TimeWindow,
    out: list[ReadingRow],
) -> tuple[int, datetime] | None:
    """The fast path for the common telemetry message: one reading object with an integer
    `seq`, epoch-millisecond `ts` and numeric metrics of the kind, no `device_id`.

    Appends its rows to `out` and returns (seq, ts); returns None, appending nothing, for
    anything else — `decode` then judges the message with the full rules and reasons. Whatever
    this accepts, `decode` accepts with the same rows.
    """
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict or "device_id" in body:
        return None
    seq = body.get("seq")
    ts_ms = body.get("ts")
    metrics = body.get("metrics")
    if (
        type(seq) is not int
        or seq < 0
        or type(ts_ms) is not int
        or not window.low_ms < ts_ms < window.high_ms
        or type(metrics) is not dict
        or not metrics
    ):
        return None
    ts = datetime.fromtimestamp(ts_ms / 1000.0, tz=UTC)
    rows: list[ReadingRow] = []
    for name, value in metrics.items():
        number = type(value)
        if name not in allowed or (number is not float and number is not int):
            return None
        if number is float and not math.isfinite(value):
            return None
        rows.append((ts, device_id, name, float(value), seq, received_at))
    out += rows
    return seq, ts
