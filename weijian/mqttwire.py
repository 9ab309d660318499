"""MQTT packets as bytes, for the two hot paths that do without paho-mqtt.

The ingest's receive client (weijian/ingest/subscriber.py) and the load generator's publisher
(weijian/simulator/rawmqtt.py) encode and parse packets here. Pure functions, no I/O; MQTT 3.1.1
(protocol level 4) and 5. Only what those two clients use is here: CONNECT, CONNACK, PUBLISH at
QoS 0/1, PUBACK, SUBSCRIBE, SUBACK, PINGREQ/PINGRESP and DISCONNECT.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

MQTT_311 = 4
MQTT_5 = 5

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82  # the fixed header's low bits are 0b0010 for SUBSCRIBE
SUBACK = 0x90
PINGRESP = 0xD0
DISCONNECT_TYPE = 0xE0

PINGREQ = b"\xc0\x00"
# MQTT 5 allows a DISCONNECT without a reason code: 0x00, normal disconnection (session kept).
DISCONNECT = b"\xe0\x00"

_MAX_LENGTH = 268_435_455  # the largest remaining length four varint bytes can carry

# MQTT 5 reason codes a CONNACK or SUBACK may carry (and the MQTT 3.1.1 CONNACK return codes).
REASONS = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x8F: "topic filter invalid",
    0x91: "packet identifier in use",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}
_V311_CONNACK = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class ProtocolError(RuntimeError):
    """Bytes that are not the MQTT the client expects from its broker."""


def reason_text(code: int, version: int = MQTT_5) -> str:
    """A reason (or MQTT 3.1.1 return) code as words, with its number."""
    table = REASONS if version == MQTT_5 else _V311_CONNACK
    return f"{table.get(code, 'unknown reason')} (0x{code:02x})"


# -- encoding -----------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (remaining lengths, property lengths)."""
    if not 0 <= n <= _MAX_LENGTH:
        raise ValueError(f"{n} does not fit an MQTT variable byte integer")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(value: str | bytes) -> bytes:
    """A length-prefixed string."""
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) > 0xFFFF:
        raise ValueError("an MQTT string is at most 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 60,
    clean_start: bool = True,
    version: int = MQTT_5,
    session_expiry_s: int = 0,
    receive_maximum: int = 0,
) -> bytes:
    """CONNECT. MQTT 5 properties: Session Expiry Interval, Receive Maximum (0: not sent)."""
    flags = 0x02 if clean_start else 0
    if username is not None:
        flags |= 0x80
        if password is not None:
            flags |= 0x40
    body = utf8(b"MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == MQTT_5:
        props = b""
        if session_expiry_s:
            props += b"\x11" + struct.pack("!I", session_expiry_s)
        if receive_maximum:
            props += b"\x21" + struct.pack("!H", receive_maximum)
        body += varint(len(props)) + props
    body += utf8(client_id)
    if username is not None:
        body += utf8(username)
        if password is not None:
            body += utf8(password)
    return _packet(CONNECT, body)


def subscribe(
    packet_id: int, filters: Sequence[str], *, qos: int = 1, version: int = MQTT_5
) -> bytes:
    """SUBSCRIBE to `filters`, each at `qos` (MQTT 5: no properties, default options)."""
    body = struct.pack("!H", packet_id)
    if version == MQTT_5:
        body += b"\x00"
    for topic_filter in filters:
        body += utf8(topic_filter) + bytes([qos])
    return _packet(SUBSCRIBE, body)


def publish_into(
    out: bytearray,
    topic: bytes,
    payload: bytes,
    packet_id: int,
    *,
    qos: int = 1,
    version: int = MQTT_311,
) -> None:
    """Append one PUBLISH (QoS 0 or 1, no properties) to `out`."""
    props = version == MQTT_5
    length = 2 + len(topic) + (2 if qos else 0) + props + len(payload)
    out.append(PUBLISH | (qos << 1))
    out += varint(length)
    out += struct.pack("!H", len(topic))
    out += topic
    if qos:
        out += struct.pack("!H", packet_id)
    if props:
        out.append(0)
    out += payload


def publish(
    topic: bytes, payload: bytes, packet_id: int, *, qos: int = 1, version: int = MQTT_311
) -> bytes:
    """One PUBLISH packet."""
    out = bytearray()
    publish_into(out, topic, payload, packet_id, qos=qos, version=version)
    return bytes(out)


def pubacks(packet_ids: Sequence[int]) -> bytes:
    """A PUBACK (success) for each packet id, as one write: 0x40 0x02 id-high id-low."""
    return struct.pack(f"!{len(packet_ids)}I", *[0x4002_0000 | pid for pid in packet_ids])


# -- decoding -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason: int


def parse_connack(body: bytes) -> Connack:
    """The CONNACK's body (after the fixed header); the same two leading bytes in 3.1.1 and 5."""
    if len(body) < 2:
        raise ProtocolError("CONNACK too short")
    return Connack(bool(body[0] & 0x01), body[1])


def parse_suback(body: bytes, *, version: int = MQTT_5) -> tuple[int, list[int]]:
    """(packet id, one reason code per filter) of a SUBACK body; properties are skipped."""
    if len(body) < 3:
        raise ProtocolError("SUBACK too short")
    packet_id = (body[0] << 8) | body[1]
    pos = 2
    if version == MQTT_5:
        length, pos = _read_varint(body, pos)
        pos += length
    return packet_id, list(body[pos:])


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); ProtocolError when longer than four bytes or cut short."""
    value = shift = 0
    for _ in range(4):
        if pos >= len(data):
            raise ProtocolError("variable byte integer cut short")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ProtocolError("variable byte integer longer than four bytes")


@dataclass(slots=True)
class Packets:
    """What `split` found in a buffer: PUBLISHes as three parallel lists (packet id, 0 for
    QoS 0; topic; payload) — no object per message — and every other packet as (first byte,
    body)."""

    ids: list[int]
    topics: list[bytes]
    payloads: list[bytes]
    others: list[tuple[int, bytes]]

    @classmethod
    def empty(cls) -> Packets:
        return cls([], [], [], [])


def split(data: bytes, packets: Packets, *, version: int = MQTT_5) -> tuple[int, int]:
    """Parse the complete packets at the start of `data` into `packets`.

    Returns (bytes consumed, bytes the next incomplete packet needs in all, or 0 when even its
    length is not in yet). The caller keeps `data[consumed:]` and reads more. Inbound PUBLISH
    must be QoS 0 or 1 with its topic in full (no topic alias: the client never offers one).
    """
    ids, topics, payloads, others = packets.ids, packets.topics, packets.payloads, packets.others
    v5 = version == MQTT_5
    n = len(data)
    i = 0
    while i + 2 <= n:
        head = data[i]
        length = data[i + 1]
        j = i + 2
        if length & 0x80:
            length &= 0x7F
            shift = 7
            while True:
                if j >= n:
                    return i, 0
                byte = data[j]
                j += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise ProtocolError("remaining length longer than four bytes")
        end = j + length
        if end > n:
            return i, end - i
        if head & 0xF0 == PUBLISH:
            k = j + 2 + ((data[j] << 8) | data[j + 1])
            if k == j + 2:
                raise ProtocolError("PUBLISH without a topic (a topic alias was never offered)")
            topics.append(data[j + 2 : k])
            qos = (head >> 1) & 0x03
            if qos:
                if qos > 1:
                    raise ProtocolError("PUBLISH at QoS 2, but every subscription asked for 1")
                ids.append((data[k] << 8) | data[k + 1])
                k += 2
            else:
                ids.append(0)
            if v5:
                props = data[k]
                if props & 0x80:
                    props, k = _read_varint(data, k)
                    k += props
                else:
                    k += 1 + props
            if k > end:
                raise ProtocolError("PUBLISH shorter than its headers")
            payloads.append(data[k:end])
        else:
            others.append((head, data[j:end]))
        i = end
    return i, 0
