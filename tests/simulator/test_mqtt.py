"""Against the real broker (127.0.0.1:1884, platform account): every message arrives."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.simulator.helpers import hospital, plant, scenario
from weijian.simulator.engine import Simulation
from weijian.simulator.load import LoadGenerator
from weijian.simulator.provision import DeviceCredentials, StaticProvisioner
from weijian.simulator.publisher import MqttPublisher, PublishError

HOST, PORT = "127.0.0.1", 1884


def _broker_up() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    not _broker_up(), reason="no broker on 127.0.0.1:1884 (make services)"
)


class Subscriber:
    """Collects every message under a topic root (and clears retained ones at the end)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"t-sub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set("weijian", "weijian")

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            with self.lock:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

        self.client.on_message = on_message
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_connect = lambda c, *_: c.subscribe(f"{root}/#", qos=1)
        self.client.connect(HOST, PORT)
        self.client.loop_start()
        assert ready.wait(10)

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        topics = {t for t, _, _ in self.messages if t.endswith("/status")}
        for topic in topics:
            self.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def root() -> str:
    return f"t{uuid.uuid4().hex}/weijian/v1"


@pytest.fixture
def subscriber(root: str) -> Iterator[Subscriber]:
    sub = Subscriber(root)
    yield sub
    sub.close()


def test_accelerated_scenario_reaches_the_broker(root: str, subscriber: Subscriber) -> None:
    sc = scenario(
        [plant(devices=[{"key": "steam-1", "kind": "steam_cabinet"}]), hospital()],
        [
            {
                "type": "offline",
                "at": "20m",
                "site": "h",
                "device": "env-1",
                "params": {"duration": "15m"},
            }
        ],
        duration="1h",
    )
    creds = StaticProvisioner(topic_root=root, prefix=uuid.uuid4().hex[:8]).provision(sc)
    sim = Simulation(sc, sink=MqttPublisher(creds), speed=1800, progress=False)
    stats = sim.run()
    expected = stats.messages + 1  # + the Last Will the broker publishes
    subscriber.wait_for(expected)
    got = subscriber.messages
    assert len(got) == expected
    env = creds["h/env-1"]
    statuses = [p for t, p, _ in got if t == env.topic("status")]
    assert statuses == [b'{"online":true}', b'{"online":false}', b'{"online":true}']
    steam = creds["p/steam-1"]
    seqs = [orjson.loads(p)["seq"] for t, p, _ in got if t == steam.topic("telemetry")]
    assert len(seqs) == 360
    assert seqs == sorted(seqs)
    backlog = [p for t, p, _ in got if t == env.topic("telemetry") and p.startswith(b"[")]
    assert len(backlog) == 1
    assert 14 <= len(orjson.loads(backlog[0])) <= 16


def test_refused_device_is_reported(root: str) -> None:
    bad = DeviceCredentials(
        f"t-{uuid.uuid4().hex[:8]}", "nobody", "wrong", f"mqtt://{HOST}:{PORT}", root
    )
    publisher = MqttPublisher({"s/d": bad}, timeout_s=5)
    with pytest.raises(PublishError, match="refused"):
        publisher.connect("s/d")


def test_load_generator_delivers_every_message_once(root: str, subscriber: Subscriber) -> None:
    generator = LoadGenerator(50, rate=0, topic_root=root, connections=2)
    result = generator.run(messages=5000)
    assert (result.sent, result.acked) == (5000, 5000)
    subscriber.wait_for(5000)
    received = [(t.split("/")[-2], orjson.loads(p)["seq"]) for t, p, _ in subscriber.messages]
    assert len(received) == len(set(received)) == 5000
    assert set(received) == {(d, s) for d, s, _ in result.records()}
    body = orjson.loads(subscriber.messages[0][1])
    assert set(body["metrics"]) == {
        "wash_temp_c",
        "rinse_temp_c",
        "conveyor_speed_m_min",
        "running",
    }
    assert result.rate > 1000
    assert result.summary()["acked"] == 5000


def test_load_generator_paces_to_a_rate(root: str) -> None:
    result = LoadGenerator(10, rate=2000, topic_root=root).run(duration_s=1.0)
    assert 1500 <= result.acked <= 2300
