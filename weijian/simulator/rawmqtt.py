"""A publish-only MQTT 3.1.1 QoS 1 connection for load mode.

paho-mqtt spends most of its time building objects for each PUBACK (about 18 k messages/s on
this machine); a benchmark needs several times that from one process. This client only
CONNECTs, PUBLISHes at QoS 1 in bursts (one socket write per burst), reads PUBACKs in bulk,
pings and DISCONNECTs. The scenario publisher keeps using paho (Last Will, MQTT v5).
"""

from __future__ import annotations

import socket
import ssl
import struct
import time

from weijian.config import MqttTarget

_PUBACK = 0x40
_PINGRESP = 0xD0
_CONNACK = 0x20


class RawMqttError(RuntimeError):
    """The broker refused the connection or broke the protocol."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


class RawPublisher:
    """One connection: `publish` queues QoS 1 messages, `pump` writes and reads acknowledgements."""

    def __init__(
        self,
        target: MqttTarget,
        client_id: str,
        username: str,
        password: str,
        *,
        keepalive: int = 120,
        timeout_s: float = 10.0,
    ) -> None:
        sock = socket.create_connection((target.host, target.port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        self.sock = sock
        self.keepalive = keepalive
        flags = 0x02 | 0x80 | 0x40  # clean session, username, password
        body = (
            _str(b"MQTT")
            + bytes([4, flags])
            + struct.pack("!H", keepalive)
            + _str(client_id.encode())
            + _str(username.encode())
            + _str(password.encode())
        )
        sock.sendall(bytes([0x10]) + _varint(len(body)) + body)
        ack = self._read_exact(4)
        if ack[0] != _CONNACK or ack[3] != 0:
            raise RawMqttError(f"broker refused the connection (CONNACK return code {ack[3]})")
        sock.setblocking(False)
        self._mid = 0
        self._out = bytearray()
        self._in = bytearray()
        self.outstanding = 0
        self.acked = 0
        self._last_io = time.monotonic()

    def _read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise RawMqttError("broker closed the connection")
            data += chunk
        return data

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Queue one QoS 1 PUBLISH (written by the next `pump`)."""
        self._mid = self._mid + 1 if self._mid < 65535 else 1
        body_len = 2 + len(topic) + 2 + len(payload)
        out = self._out
        out.append(0x32)
        out += _varint(body_len)
        out += struct.pack("!H", len(topic))
        out += topic
        out += struct.pack("!H", self._mid)
        out += payload
        self.outstanding += 1

    def want_write(self) -> bool:
        return bool(self._out)

    def pump(self) -> None:
        """Write what the socket takes, read what has arrived, ping when idle."""
        if self._out:
            try:
                sent = self.sock.send(self._out)
                del self._out[:sent]
                self._last_io = time.monotonic()
            except (BlockingIOError, ssl.SSLWantWriteError):
                pass
        self.read()
        if time.monotonic() - self._last_io > self.keepalive / 2 and not self._out:
            self._out += b"\xc0\x00"

    def read(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(262144)
                if not chunk:
                    raise RawMqttError("broker closed the connection")
                self._in += chunk
                if len(chunk) < 262144:
                    break
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        self._parse()

    def _parse(self) -> None:
        buf = self._in
        i = 0
        acks = 0
        n = len(buf)
        while i + 2 <= n:
            kind, length = buf[i], buf[i + 1]
            if length & 0x80:
                raise RawMqttError(f"unexpected packet 0x{kind:02x} from the broker")
            if i + 2 + length > n:
                break
            if kind == _PUBACK:
                acks += 1
            elif kind != _PINGRESP:
                raise RawMqttError(f"unexpected packet 0x{kind:02x} from the broker")
            i += 2 + length
        del buf[:i]
        self.outstanding -= acks
        self.acked += acks

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(b"\xe0\x00")
        except OSError:
            pass
        self.sock.close()
