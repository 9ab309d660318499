"""The MQTT packet codec on its own: bytes in, bytes out, no broker."""

from __future__ import annotations

import pytest

from weijian import mqttwire as wire


def split_all(data: bytes, version: int = wire.MQTT_5) -> tuple[wire.Packets, int, int]:
    packets = wire.Packets.empty()
    used, need = wire.split(data, packets, version=version)
    return packets, used, need


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_matches_the_spec_examples(n: int, encoded: bytes) -> None:
    assert wire.varint(n) == encoded


def test_varint_refuses_what_four_bytes_cannot_carry() -> None:
    with pytest.raises(ValueError, match="variable byte integer"):
        wire.varint(268_435_456)


def test_connect_v5_carries_session_expiry_receive_maximum_and_credentials() -> None:
    packet = wire.connect(
        "ingest-0",
        username="weijian",
        password="secret",
        keepalive=30,
        clean_start=False,
        session_expiry_s=1209600,
        receive_maximum=20000,
    )
    body = (
        b"\x00\x04MQTT\x05"
        + bytes([0xC0])  # user name + password, clean start off
        + b"\x00\x1e"
        + b"\x08\x11\x00\x12\x75\x00\x21\x4e\x20"  # properties: expiry 14 d, receive max
        + b"\x00\x08ingest-0\x00\x07weijian\x00\x06secret"
    )
    assert packet == b"\x10" + wire.varint(len(body)) + body


def test_connect_311_with_clean_session_and_no_properties() -> None:
    packet = wire.connect("load", username="u", password="p", keepalive=120, version=4)
    assert packet == b"\x10\x16\x00\x04MQTT\x04\xc2\x00\x78\x00\x04load\x00\x01u\x00\x01p"


def test_subscribe_v5_lists_every_filter_at_qos_1() -> None:
    packet = wire.subscribe(7, ["a/+/b", "$share/g/a/+/c"])
    body = b"\x00\x07\x00" + b"\x00\x05a/+/b\x01" + b"\x00\x0e$share/g/a/+/c\x01"
    assert packet == b"\x82" + bytes([len(body)]) + body


def test_pubacks_are_one_buffer_of_four_byte_packets() -> None:
    assert wire.pubacks([1, 0x1234, 65535]) == b"\x40\x02\x00\x01\x40\x02\x12\x34\x40\x02\xff\xff"
    assert wire.pubacks([]) == b""


def test_publish_round_trips_through_split_in_both_versions() -> None:
    for version in (wire.MQTT_311, wire.MQTT_5):
        data = wire.publish(b"r/d1/telemetry", b'{"seq":1}', 42, version=version)
        data += wire.publish(b"r/d2/status", b"{}", 0, qos=0, version=version)
        packets, used, need = split_all(data, version)
        assert (used, need) == (len(data), 0)
        assert packets.ids == [42, 0]
        assert packets.topics == [b"r/d1/telemetry", b"r/d2/status"]
        assert packets.payloads == [b'{"seq":1}', b"{}"]
        assert packets.others == []


def test_split_skips_v5_publish_properties() -> None:
    props = b"\x01\x01" + b"\x03\x00\x10application/json"  # payload format, content type
    body = b"\x00\x03a/b" + b"\x00\x09" + wire.varint(len(props)) + props + b"payload"
    data = bytes([0x32]) + wire.varint(len(body)) + body
    packets, used, _ = split_all(data)
    assert used == len(data)
    assert (packets.ids, packets.topics, packets.payloads) == ([9], [b"a/b"], [b"payload"])


def test_a_long_property_length_is_a_varint() -> None:
    props = b"\x26" + b"\x00\x01k" + b"\x00\x96" + b"v" * 150  # one user property, 156 bytes
    body = b"\x00\x01t" + b"\x00\x01" + wire.varint(len(props)) + props + b"x"
    data = bytes([0x32]) + wire.varint(len(body)) + body
    packets, _, _ = split_all(data)
    assert packets.payloads == [b"x"]


def test_large_payload_uses_a_multi_byte_remaining_length() -> None:
    payload = b"x" * 3_000_000
    data = wire.publish(b"t", payload, 1, version=wire.MQTT_5)
    assert [b & 0x80 for b in data[1:5]] == [0x80, 0x80, 0x80, 0]  # four length bytes
    packets, used, _ = split_all(data)
    assert used == len(data)
    assert packets.payloads == [payload]


def test_many_packets_of_one_read_and_control_packets_in_between() -> None:
    data = b"".join(wire.publish(f"t/{i}".encode(), b"p", i + 1, version=5) for i in range(100))
    data += b"\x90\x04\x00\x01\x00\x01"  # SUBACK: id 1, no properties, QoS 1 granted
    data += b"\xd0\x00"  # PINGRESP
    packets, used, need = split_all(data)
    assert (used, need) == (len(data), 0)
    assert packets.ids == list(range(1, 101))
    assert packets.others == [(0x90, b"\x00\x01\x00\x01"), (0xD0, b"")]
    assert wire.parse_suback(packets.others[0][1]) == (1, [1])


def test_a_packet_split_across_reads_is_parsed_once_whole() -> None:
    data = wire.publish(b"a/b", b"0123456789" * 20, 5, version=5)
    for cut in range(len(data)):
        first, used, need = split_all(data[:cut])
        assert used == 0
        assert first.ids == []
        # Once the remaining length is in, the reader knows how much to wait for.
        assert need in (0, len(data))
        rest, used, need = split_all(data[used:cut] + data[cut:])
        assert (rest.ids, rest.payloads, used, need) == ([5], [b"0123456789" * 20], len(data), 0)


def test_partial_buffer_after_whole_packets_reports_what_it_needs() -> None:
    whole = wire.publish(b"a", b"1", 1, version=5)
    partial = wire.publish(b"a", b"2" * 300, 2, version=5)
    packets, used, need = split_all(whole + partial[:10])
    assert packets.ids == [1]
    assert used == len(whole)
    assert need == len(partial)


def test_a_cut_varint_length_waits_for_more() -> None:
    data = wire.publish(b"a", b"x" * 200, 1, version=5)
    assert data[1] & 0x80  # two length bytes
    packets, used, need = split_all(data[:2])
    assert (packets.ids, used, need) == ([], 0, 0)


def test_protocol_errors_are_reported() -> None:
    with pytest.raises(wire.ProtocolError, match="four bytes"):
        split_all(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(wire.ProtocolError, match="QoS 2"):
        split_all(wire.publish(b"a", b"x", 1, qos=1, version=5).replace(b"\x32", b"\x34", 1))
    with pytest.raises(wire.ProtocolError, match="topic alias"):
        split_all(b"\x32\x06\x00\x00\x00\x01\x00x")


def test_connack_and_reason_texts() -> None:
    assert wire.parse_connack(b"\x01\x00") == wire.Connack(session_present=True, reason=0)
    assert wire.parse_connack(b"\x00\x86\x00").reason == 0x86
    assert wire.reason_text(0x86) == "bad user name or password (0x86)"
    assert wire.reason_text(0x9E) == "shared subscriptions not supported (0x9e)"
    assert wire.reason_text(5, wire.MQTT_311) == "not authorized (0x05)"
