"""A publish-only MQTT 3.1.1 QoS 1 connection for load mode.

paho-mqtt spends most of its time building objects for each PUBACK (about 18 k messages/s on
this machine); a benchmark needs several times that from one process. This client only
CONNECTs, PUBLISHes at QoS 1 in bursts (one socket write per burst), reads PUBACKs in bulk,
pings and DISCONNECTs; its packets come from weijian/mqttwire.py, which the ingest's receive
client shares. The scenario publisher keeps using paho (Last Will, MQTT v5).
"""

from __future__ import annotations

import socket
import ssl
import time

from weijian import mqttwire as wire
from weijian.config import MqttTarget


class RawMqttError(RuntimeError):
    """The broker refused the connection or broke the protocol."""


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
        sock.sendall(
            wire.connect(
                client_id,
                username=username,
                password=password,
                keepalive=keepalive,
                version=wire.MQTT_311,
            )
        )
        ack = self._read_exact(4)
        if ack[0] != wire.CONNACK or ack[3] != 0:
            why = wire.reason_text(ack[3], wire.MQTT_311)
            raise RawMqttError(f"broker refused the connection: {why}")
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
        wire.publish_into(self._out, topic, payload, self._mid)
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
            self._out += wire.PINGREQ

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
        packets = wire.Packets.empty()
        used, _need = wire.split(bytes(self._in), packets, version=wire.MQTT_311)
        del self._in[:used]
        acks = 0
        for kind, _body in packets.others:
            if kind == wire.PUBACK:
                acks += 1
            elif kind != wire.PINGRESP:
                raise RawMqttError(f"unexpected packet 0x{kind:02x} from the broker")
        if packets.ids:
            raise RawMqttError("unexpected PUBLISH from the broker")
        self.outstanding -= acks
        self.acked += acks

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(wire.DISCONNECT)
        except OSError:
            pass
        self.sock.close()
