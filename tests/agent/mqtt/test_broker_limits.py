"""A broker that cannot take what a station sends (retained messages, QoS 1) says what to change
on the broker, under MQTT 5 and 3.1.1; a plain port that hangs up is told apart from a TLS port."""
from __future__ import annotations

import os
import time

import pytest

from agent.mqtt.outbox import Outbox
from agent.mqtt.publisher import Publisher
from agent.settings import MqttSettings
from tests.agent.conftest import Broker, free_port


def link_of(tmp_path, conf_line: str, protocol: str, tls: str = "") -> dict:
    port = free_port()
    b = Broker(tmp_path, port)
    b.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{conf_line}\n{tls}"
                      + ("user root\n" if os.geteuid() == 0 and tls else ""))
    b.start()
    pub = Publisher("st1", Outbox(tmp_path / f"o-{time.monotonic_ns()}.sqlite"),
                    MqttSettings(port=port, protocol=protocol))
    pub.start()
    try:
        deadline = time.monotonic() + 15
        while pub.link["state"] in ("connecting",) or "trying MQTT" in pub.link["reason"]:
            assert time.monotonic() < deadline, pub.link
            time.sleep(0.05)
        time.sleep(0.5)
        return dict(pub.link)
    finally:
        pub.stop(1)
        b.stop()


@pytest.mark.parametrize("protocol", ["5", "auto"])
@pytest.mark.parametrize("conf_line, words", [
    ("max_qos 0", ("QoS not supported", "max_qos", "QoS 1")),
    ("retain_available false", ("Retain not supported", "retain_available", "retained")),
])
def test_mqtt5_refusals_name_what_to_change_on_the_broker(tmp_path, protocol, conf_line, words):
    link = link_of(tmp_path, conf_line, protocol)
    assert link["state"] == "refused" and all(w in link["reason"] for w in words), link


@pytest.mark.parametrize("conf_line", ["max_qos 0", "retain_available false"])
def test_a_311_hang_up_on_a_plain_port_is_not_called_a_tls_port(tmp_path, conf_line):
    """Under MQTT 3.1.1 mosquitto hangs up on a CONNECT whose Last Will it refuses, without a
    CONNACK. That read "is it a TLS port? (set mqtt.tls_ca)"; the port is now asked."""
    link = link_of(tmp_path, conf_line, "3.1.1")
    assert link["state"] == "closed" and "does not speak TLS" in link["reason"], link
    assert "Last Will" in link["reason"] and "retain_available" in link["reason"], link
    assert "set mqtt.tls_ca" not in link["reason"], link


def test_a_tls_port_spoken_to_in_plain_mqtt_is_named(tmp_path):
    import shutil
    import subprocess
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed (make install)")
    d = tmp_path / "tls"
    d.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
                    "-days", "2", "-subj", "/CN=127.0.0.1"], cwd=d, check=True, capture_output=True)
    for protocol in ("3.1.1", "auto"):
        link = link_of(tmp_path, "", protocol, tls=f"certfile {d / 'c.pem'}\nkeyfile {d / 'k.pem'}\n")
        assert link["state"] == "closed" and "it is a TLS port: set mqtt.tls_ca" in link["reason"], link
