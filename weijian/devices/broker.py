"""Per-device broker credentials and ACLs through Mosquitto's dynamic-security API.

Mosquitto 2.0.11's dynamic security does not expand `%u` in ACL topics, so every device gets a
role of its own holding the literal topics of its id.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Protocol

import orjson
import paho.mqtt.client as mqtt

from weijian.config import MqttTarget
from weijian.mqtt import new_client

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"


class BrokerError(RuntimeError):
    """The broker refused a command, or could not be reached."""


class CredentialStore(Protocol):
    """Where device credentials live (the broker's dynamic security, or the shared account)."""

    def create_device(self, device_id: str, password: str, topics: list[str]) -> None: ...

    def set_password(self, device_id: str, password: str) -> None: ...

    def delete_device(self, device_id: str) -> None: ...


def device_acls(topic_root: str, device_id: str) -> list[dict[str, Any]]:
    """The ACLs of a device: publish and subscribe only below its own topic space."""
    own = f"{topic_root}/{device_id}/#"
    return [
        {"acltype": "publishClientSend", "topic": own, "priority": 0, "allow": True},
        {"acltype": "publishClientReceive", "topic": own, "priority": 0, "allow": True},
        {"acltype": "subscribePattern", "topic": own, "priority": 0, "allow": True},
    ]


def role_name(device_id: str) -> str:
    return f"device-{device_id}"


class DynamicSecurity:
    """Sends dynamic-security commands over MQTT and waits for the broker's answers."""

    def __init__(self, target: MqttTarget, topic_root: str, timeout_s: float = 10.0) -> None:
        self._target = target
        self._topic_root = topic_root
        self._timeout = timeout_s

    def create_device(self, device_id: str, password: str, topics: list[str]) -> None:
        """Create the device's role and account. An account left over (e.g. after the
        database was reset) is taken over: its ACLs are reset and it gets the new password."""
        del topics  # the ACLs are derived from the id and the topic root
        role = role_name(device_id)
        create = [
            {
                "command": "createRole",
                "rolename": role,
                "acls": device_acls(self._topic_root, device_id),
            },
            {
                "command": "createClient",
                "username": device_id,
                "password": password,
                "roles": [{"rolename": role}],
            },
        ]
        responses = self.run([dict(c) for c in create], tolerate=("already exists",))
        if not any("already exists" in str(r.get("error", "")) for r in responses):
            return
        log.warning("the broker already had an account for %s; taking it over", device_id)
        self.delete_device(device_id)
        self.run([dict(c) for c in create])

    def set_password(self, device_id: str, password: str) -> None:
        self.run([{"command": "setClientPassword", "username": device_id, "password": password}])
        # Existing sessions keep the old credentials until they reconnect: close them now.
        self.run([{"command": "disableClient", "username": device_id}])
        self.run([{"command": "enableClient", "username": device_id}])

    def delete_device(self, device_id: str) -> None:
        self.run(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": role_name(device_id)},
            ],
            tolerate=("not found",),
        )

    def run(
        self, commands: list[dict[str, Any]], *, tolerate: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Send commands in one message; raise BrokerError naming the first refused one
        (errors containing one of the `tolerate` phrases are returned, not raised)."""
        correlation = uuid.uuid4().hex
        for i, command in enumerate(commands):
            command["correlationData"] = f"{correlation}-{i}"
        answer: dict[str, Any] = {}
        done = threading.Event()
        client = new_client(self._target, f"weijian-admin-{correlation[:12]}")

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                answer["error"] = f"broker refused the platform account: {reason}"
                done.set()
                return
            c.subscribe(RESPONSE_TOPIC, qos=1)

        def on_subscribe(c: mqtt.Client, _u: Any, _m: Any, reasons: Any, _p: Any) -> None:
            if any(r.is_failure for r in reasons):
                answer["error"] = "platform account may not use the dynamic-security API"
                done.set()
                return
            c.publish(CONTROL_TOPIC, orjson.dumps({"commands": commands}), qos=1)

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            body = orjson.loads(msg.payload)
            mine = [
                r
                for r in body.get("responses", [])
                if str(r.get("correlationData", "")).startswith(correlation)
            ]
            if mine:
                answer["responses"] = mine
                done.set()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        try:
            client.connect(self._target.host, self._target.port, keepalive=30)
        except OSError as exc:
            raise BrokerError(
                f"cannot reach the broker at {self._target.public_url}: {exc}"
            ) from exc
        client.loop_start()
        try:
            if not done.wait(self._timeout):
                raise BrokerError(
                    f"no answer from the broker's dynamic-security API in {self._timeout:g} s"
                )
        finally:
            client.disconnect()
            client.loop_stop()
        if "error" in answer:
            raise BrokerError(answer["error"])
        responses: list[dict[str, Any]] = answer["responses"]
        for response in responses:
            error = response.get("error")
            if error and not any(phrase in str(error).lower() for phrase in tolerate):
                raise BrokerError(f"broker refused {response.get('command')}: {error}")
        return responses
