"""The ingest's MQTT receive client: one persistent MQTT 5 session, PUBACKs sent by the caller.

paho-mqtt serves every other MQTT client of the platform. Here, in the one hot path, it cost
113–117 µs of CPU per message (MQTT 5, manual acks) against a budget of ≈ 20 µs for all of the
ingest's work (docs/performance.md): it reads each packet with several `recv` calls, builds
property and message objects for every PUBLISH and sends every PUBACK on its own. This client
reads the socket in large chunks, parses the PUBLISHes of a chunk into three lists (packet id,
topic, payload) and writes all PUBACKs of a committed batch in one `send`.

One network thread owns the socket. It connects (clean start off, a Session Expiry Interval,
Receive Maximum = the in-flight window: the broker keeps the rest, so memory stays bounded),
subscribes at QoS 1, hands each chunk's messages to `on_delivery`, pings, and reconnects with a
1–5 s backoff. `ack` may be called from any thread; it is ignored for messages of an earlier
connection, since a packet id only names a message on the connection that delivered it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from weijian import mqttwire as wire
from weijian.config import MqttTarget

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 20
_CONNECT_TIMEOUT_S = 10.0


class ConnectionLost(RuntimeError):
    """The broker closed the connection, refused it, or broke the protocol (the text says)."""


@dataclass(slots=True)
class Delivery:
    """The PUBLISHes of one read, in arrival order; `ids[i]` is 0 for a QoS 0 message."""

    connection: int
    received_at: float  # time.monotonic()
    ids: list[int]
    topics: list[bytes]
    payloads: list[bytes]


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What the subscriber asks of the broker."""

    client_id: str
    topic_filters: tuple[str, ...]
    session_expiry_s: int
    receive_maximum: int
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 5.0


class MqttSubscriber:
    """A persistent MQTT 5 session that delivers PUBLISHes in chunks and acknowledges on demand."""

    def __init__(
        self,
        target: MqttTarget,
        options: SessionOptions,
        *,
        on_delivery: Callable[[Delivery], None],
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
    ) -> None:
        self._target = target
        self._opts = options
        self._on_delivery = on_delivery
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._paused = False
        # Guards `_connection` and `_outbox`: an ack checks the connection and queues its bytes
        # atomically against a reconnect, which bumps the number and clears the outbox.
        self._lock = threading.Lock()
        self._connection = 0
        self._live = False
        # QoS 1 messages delivered on this connection and not acknowledged yet. Past Receive
        # Maximum the socket is not read: Mosquitto 2.0.11 stops honouring the window after
        # the first PUBACKs (docs/performance.md), so the bound is kept here as well.
        self._outstanding = 0
        self._outbox = bytearray()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{options.client_id}", daemon=True
        )

    # -- API (any thread) --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def connection(self) -> int:
        """The number of the current (or last) connection; bumped by every connection lost."""
        return self._connection

    def ack(self, connection: int, packet_ids: Sequence[int]) -> bool:
        """PUBACK these QoS 1 messages if `connection` is still the current one."""
        ids = [pid for pid in packet_ids if pid]
        if not ids:
            return True
        with self._lock:
            if connection != self._connection or not self._live:
                return False
            self._outbox += wire.pubacks(ids)
            self._outstanding -= len(ids)
        self._wake()
        return True

    def pause(self) -> None:
        """Deliver nothing more: later PUBLISHes stay unacknowledged, kept for the session."""
        self._paused = True

    def stop(self, timeout: float = 5.0) -> None:
        """Send what acks are queued, DISCONNECT (the session stays with the broker), join."""
        self._paused = True
        self._stop.set()
        self._wake()
        self._thread.join(timeout)
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        # BlockingIOError: a wake-up is pending already; OSError: closing.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- network thread ----------------------------------------------------------------------

    def _run(self) -> None:
        delay = self._opts.reconnect_min_s
        while not self._stop.is_set():
            sock: socket.socket | None = None
            try:
                sock = self._open()
                delay = self._opts.reconnect_min_s
                self._serve(sock)
            except (OSError, ConnectionLost, wire.ProtocolError) as exc:
                if not self._stop.is_set():
                    self._lost(str(exc) or type(exc).__name__)
            finally:
                if sock is not None:
                    sock.close()
                self._disconnected()
            if not self._stop.is_set():
                # Jittered, so several workers do not reconnect in step.
                self._stop.wait(delay * random.uniform(0.8, 1.0))
                delay = min(delay * 2, self._opts.reconnect_max_s)

    def _lost(self, why: str) -> None:
        log.warning("ingest %s lost the broker (%s); reconnecting", self._opts.client_id, why)
        if self._on_disconnect is not None:
            self._on_disconnect(why)

    def _disconnected(self) -> None:
        with self._lock:
            self._live = False
            self._outstanding = 0
            self.connected.clear()
            self._outbox.clear()

    def _open(self) -> socket.socket:
        """Connect, CONNECT, SUBSCRIBE; returns a non-blocking socket with the session up."""
        target, opts = self._target, self._opts
        sock = socket.create_connection((target.host, target.port), timeout=_CONNECT_TIMEOUT_S)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.tls:
                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=target.host)
            sock.sendall(
                wire.connect(
                    opts.client_id,
                    username=target.username,
                    password=target.password,
                    keepalive=opts.keepalive_s,
                    clean_start=False,
                    session_expiry_s=opts.session_expiry_s,
                    receive_maximum=opts.receive_maximum,
                )
            )
            head, body = self._read_packet(sock)
            if head != wire.CONNACK:
                raise ConnectionLost(f"expected CONNACK, got packet 0x{head:02x}")
            connack = wire.parse_connack(body)
            if connack.reason:
                text = wire.reason_text(connack.reason)
                log.error("broker refused the ingest session %s: %s", opts.client_id, text)
                raise ConnectionLost(f"CONNACK {text}")
            sock.sendall(wire.subscribe(1, opts.topic_filters))
            # Messages of the resumed session may come before the SUBACK: parse them as usual.
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self._connection += 1
            self._live = True
        log.info(
            "ingest %s connected (session present: %s)", opts.client_id, connack.session_present
        )
        return sock

    @staticmethod
    def _read_packet(sock: socket.socket) -> tuple[int, bytes]:
        """One whole packet from a blocking socket (only CONNACK is read this way)."""

        def exactly(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = sock.recv(n - len(data))
                if not chunk:
                    raise ConnectionLost("broker closed the connection")
                data += chunk
            return data

        head = exactly(1)[0]
        length = shift = 0
        for _ in range(4):
            byte = exactly(1)[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return head, exactly(length)
            shift += 7
        raise wire.ProtocolError("remaining length longer than four bytes")

    def _serve(self, sock: socket.socket) -> None:
        """Read, deliver, write acks and pings until the connection ends or `stop`."""
        keepalive = self._opts.keepalive_s
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ, "sock")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        inbox = _Inbox()
        out = bytearray()
        last_out = time.monotonic()
        ping_sent: float | None = None
        events = selectors.EVENT_READ
        try:
            while not self._stop.is_set():
                due = last_out + keepalive / 2
                if ping_sent is not None:
                    due = min(due, ping_sent + keepalive)
                for key, _ in sel.select(max(0.05, due - time.monotonic())):
                    if key.data == "wake":
                        _drain(self._wake_r)
                    elif inbox.read(sock):
                        ping_sent = None
                        data = inbox.complete()
                        if data is not None:
                            inbox.keep(data, *self._parse(data))
                self._take_outbox(out)
                now = time.monotonic()
                if not out and now - last_out >= keepalive / 2:
                    out += wire.PINGREQ
                    ping_sent = ping_sent or now
                reading = self._paused or self._outstanding < self._opts.receive_maximum
                if not reading:
                    ping_sent = None  # its answer waits in the socket with the messages
                elif ping_sent is not None and now - ping_sent > keepalive:
                    raise ConnectionLost(f"no answer to a ping for {keepalive} s")
                if out and _send_some(sock, out):
                    last_out = now
                wanted = (selectors.EVENT_READ if reading else 0) | (
                    selectors.EVENT_WRITE if out else 0
                )
                if wanted != events:
                    if events:
                        sel.unregister(sock)
                    if wanted:
                        sel.register(sock, wanted, "sock")
                    events = wanted
            self._take_outbox(out)
            self._goodbye(sock, out)
        finally:
            sel.close()

    def _take_outbox(self, out: bytearray) -> None:
        with self._lock:
            if self._outbox:
                out += self._outbox
                self._outbox.clear()

    def _goodbye(self, sock: socket.socket, out: bytearray) -> None:
        """Flush the queued acks, then DISCONNECT; the broker keeps the session."""
        out += wire.DISCONNECT
        sock.setblocking(True)
        sock.settimeout(2.0)
        try:
            sock.sendall(out)
        except OSError as exc:
            log.warning(
                "ingest %s could not say goodbye to the broker: %s", self._opts.client_id, exc
            )

    def _parse(self, data: bytes) -> tuple[int, int]:
        packets = wire.Packets.empty()
        used, need = wire.split(data, packets)
        for head, body in packets.others:
            self._control(head, body)
        if packets.ids and not self._paused:
            qos1 = len(packets.ids) - packets.ids.count(0)
            with self._lock:
                self._outstanding += qos1
            self._on_delivery(
                Delivery(
                    self._connection,
                    time.monotonic(),
                    packets.ids,
                    packets.topics,
                    packets.payloads,
                )
            )
        return used, need

    def _control(self, head: int, body: bytes) -> None:
        kind = head & 0xF0
        if kind == wire.SUBACK:
            _pid, codes = wire.parse_suback(body)
            refused = [
                f"{f}: {wire.reason_text(c)}"
                for f, c in zip(self._opts.topic_filters, codes, strict=False)
                if c >= 0x80
            ]
            if refused:
                log.error("broker refused the ingest's subscriptions: %s", "; ".join(refused))
                raise ConnectionLost("subscription refused: " + "; ".join(refused))
            self.connected.set()
            if self._on_connect is not None:
                self._on_connect(True)
        elif kind == wire.DISCONNECT_TYPE:
            code = body[0] if body else 0
            raise ConnectionLost(f"broker sent DISCONNECT: {wire.reason_text(code)}")
        elif kind not in (wire.PINGRESP, wire.PUBACK):
            raise wire.ProtocolError(f"unexpected packet 0x{head:02x} from the broker")


class _Inbox:
    """Bytes read but not parsed yet; a packet larger than one read is joined only when whole."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._held = 0
        self._need = 0  # bytes the next incomplete packet needs in all (0: not known yet)

    def read(self, sock: socket.socket) -> bool:
        """Take everything the socket has now; False if nothing came."""
        size = 0
        try:
            while True:
                chunk = sock.recv(_READ_CHUNK)
                if not chunk:
                    raise ConnectionLost("broker closed the connection")
                self._parts.append(chunk)
                size += len(chunk)
                if len(chunk) < _READ_CHUNK or size >= 2 * _READ_CHUNK:
                    break
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        self._held += size
        return size > 0

    def complete(self) -> bytes | None:
        """The buffered bytes if they may hold a whole packet."""
        if not self._held or self._held < self._need:
            return None
        parts = self._parts
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def keep(self, data: bytes, used: int, need: int) -> None:
        """`data[used:]` stays for the next read; the packet there needs `need` bytes."""
        rest = data[used:]
        self._parts = [rest] if rest else []
        self._held = len(rest)
        self._need = need


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        while sock.recv(4096):
            pass


def _send_some(sock: socket.socket, out: bytearray) -> int:
    try:
        sent = sock.send(out)
    except (BlockingIOError, ssl.SSLWantWriteError):
        return 0
    del out[:sent]
    return sent
