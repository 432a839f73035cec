#!/usr/bin/env python3
"""One paho-mqtt 2.x client, driven by tests/mqtt_clients.rs.

Commands arrive on stdin, one JSON object a line; events leave on stdout, one JSON object a
line, flushed at once. The client never reconnects by itself: a test that wants the same
client id again starts another driver.

Commands ("op"):
  connect    host, port, version (3 = MQTT 3.1.1, 5 = MQTT 5.0), client_id, clean (bool),
             expiry (v5 session expiry interval, s), keepalive (s),
             will ({topic, payload, qos, retain}), username, password,
             tls ({ca, cert, key}: TLS with that CA, and that client certificate if given)
             -> event connack {rc, session_present}, or connect_failed {what} when the
             connection (its TLS handshake included) could not be made
  subscribe  topic, qos -> event suback {mid, codes}
  publish    topic, payload (text), qos, retain, response_topic, correlation, tag,
             user ([[name, value], ...]), content_type, payload_format (0 or 1),
             message_expiry (s), topic_alias (v5 properties)
             -> event queued {mid, tag}, then acked {mid, tag, rc} once PUBACK (QoS 1),
             PUBCOMP (QoS 2) arrived or the packet was written (QoS 0)
  publish_range  topic, qos, start, count: payloads str(start) .. str(start + count - 1),
             tags equal to the payloads; events as for publish
  disconnect -> a clean DISCONNECT, then event closed
  abort      the process ends at once: the socket closes without DISCONNECT
Events ("ev") also: message {topic, payload, qos, retain, dup, response_topic, correlation,
user, content_type, payload_format, message_expiry} (the v5 properties as sent above; null or
[] when absent),
lost {rc} when the connection ended without a DISCONNECT from this side, error {what}.
"""

import json
import os
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

out_lock = threading.Lock()


def emit(**event):
    line = json.dumps(event)
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def code(rc):
    """A reason code (paho's ReasonCode, or an int) as an int."""
    return getattr(rc, "value", rc)


def text(data):
    if data is None:
        return None
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


class Driver:
    def __init__(self):
        self.client = None
        # Tags of publications awaiting their acknowledgement, by message id; acknowledgements
        # that came before publish() returned their message id, by message id.
        self.tags = {}
        self.early = {}
        self.tags_lock = threading.Lock()
        self.closing = False
        self.v5 = True

    def on_connect(self, client, userdata, flags, reason_code, properties):
        emit(ev="connack", rc=code(reason_code), session_present=bool(flags.session_present))

    def on_subscribe(self, client, userdata, mid, reason_codes, properties):
        emit(ev="suback", mid=mid, codes=[code(rc) for rc in reason_codes])

    def on_publish(self, client, userdata, mid, reason_code, properties):
        with self.tags_lock:
            if mid not in self.tags:
                self.early[mid] = code(reason_code)
                return
            tag = self.tags.pop(mid)
        emit(ev="acked", mid=mid, tag=tag, rc=code(reason_code))

    def on_message(self, client, userdata, msg):
        props = msg.properties
        emit(
            ev="message",
            topic=msg.topic,
            payload=text(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            dup=bool(msg.dup),
            response_topic=getattr(props, "ResponseTopic", None) if props else None,
            correlation=text(getattr(props, "CorrelationData", None)) if props else None,
            user=[list(p) for p in getattr(props, "UserProperty", [])] if props else [],
            content_type=getattr(props, "ContentType", None) if props else None,
            payload_format=getattr(props, "PayloadFormatIndicator", None) if props else None,
            message_expiry=getattr(props, "MessageExpiryInterval", None) if props else None,
        )

    def on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.closing:
            emit(ev="closed", rc=code(reason_code))
        else:
            emit(ev="lost", rc=code(reason_code))

    def connect(self, cmd):
        v5 = cmd.get("version", 5) == 5
        self.v5 = v5
        kwargs = {}
        if not v5:
            kwargs["clean_session"] = cmd.get("clean", True)
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=cmd.get("client_id", ""),
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
            **kwargs,
        )
        # The hub acknowledges once a message is on disk: keep many in flight, as a real
        # publisher streaming readings would.
        client.max_inflight_messages_set(cmd.get("inflight", 100))
        client.max_queued_messages_set(0)
        client.on_connect = self.on_connect
        client.on_subscribe = self.on_subscribe
        client.on_publish = self.on_publish
        client.on_message = self.on_message
        client.on_disconnect = self.on_disconnect
        will = cmd.get("will")
        if will:
            client.will_set(
                will["topic"], will.get("payload", ""), will.get("qos", 0), will.get("retain", False)
            )
        if cmd.get("username") is not None:
            client.username_pw_set(cmd["username"], cmd.get("password"))
        tls = cmd.get("tls")
        if tls:
            client.tls_set(ca_certs=tls["ca"], certfile=tls.get("cert"), keyfile=tls.get("key"))
        self.client = client
        connect_kwargs = {}
        if v5:
            connect_kwargs["clean_start"] = cmd.get("clean", True)
            if cmd.get("expiry") is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = cmd["expiry"]
                connect_kwargs["properties"] = props
        try:
            client.connect(cmd.get("host", "127.0.0.1"), cmd["port"], cmd.get("keepalive", 60), **connect_kwargs)
        except Exception as e:  # refused, or the TLS handshake failed
            emit(ev="connect_failed", what="%s: %s" % (type(e).__name__, e))
            return
        client.loop_start()

    def publish(self, topic, payload, qos, retain=False, response_topic=None, correlation=None, tag=None, extra=None):
        extra = extra or {}
        props = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation.encode("utf-8")
        for name, value in extra.get("user") or []:
            props.UserProperty = (name, value)
        if extra.get("content_type") is not None:
            props.ContentType = extra["content_type"]
        if extra.get("payload_format") is not None:
            props.PayloadFormatIndicator = extra["payload_format"]
        if extra.get("message_expiry") is not None:
            props.MessageExpiryInterval = extra["message_expiry"]
        if extra.get("topic_alias") is not None:
            props.TopicAlias = extra["topic_alias"]
        if not self.v5 or props.isEmpty():
            props = None
        # The network thread may see the acknowledgement before publish() returns (and paho holds
        # its own locks while calling on_publish, so ours is not held across publish()).
        info = self.client.publish(topic, payload.encode("utf-8"), qos, retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            emit(ev="error", what="publish: %s" % mqtt.error_string(info.rc), tag=tag)
            return
        with self.tags_lock:
            emit(ev="queued", mid=info.mid, tag=tag)
            if info.mid in self.early:
                emit(ev="acked", mid=info.mid, tag=tag, rc=self.early.pop(info.mid))
            else:
                self.tags[info.mid] = tag

    def handle(self, cmd):
        op = cmd["op"]
        if op == "connect":
            self.connect(cmd)
        elif op == "subscribe":
            self.client.subscribe(cmd["topic"], cmd.get("qos", 0))
        elif op == "publish":
            self.publish(
                cmd["topic"],
                cmd.get("payload", ""),
                cmd.get("qos", 0),
                cmd.get("retain", False),
                cmd.get("response_topic"),
                cmd.get("correlation"),
                cmd.get("tag"),
                cmd,
            )
        elif op == "publish_range":
            for i in range(cmd["start"], cmd["start"] + cmd["count"]):
                self.publish(cmd["topic"], str(i), cmd.get("qos", 1), tag=str(i))
        elif op == "disconnect":
            self.closing = True
            self.client.disconnect()
            self.client.loop_stop()
        elif op == "abort":
            os._exit(0)
        else:
            emit(ev="error", what="unknown op %r" % op)


def main():
    driver = Driver()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            driver.handle(json.loads(line))
        except Exception as e:  # reported to the test, which fails on it
            emit(ev="error", what="%s: %s" % (type(e).__name__, e))
    # stdin closed: the test is done with this client (or died); end without DISCONNECT.
    os._exit(0)


if __name__ == "__main__":
    main()
