"""A start the agent refuses, said on MQTT as well as in the journal.

A bad setting, a tampered bundle or thresholds calibrated on another bundle stop `adgan agent
run` (and the unit's `validate-config --mqtt`) with exit code 2. Until 2026-12-06 that was said
only in the station's own journal: the plant's SCADA saw the retained `availability` go (or stay)
`offline`, and the retained `status` of the last run that worked, with no reason. Now the
problems also go, retained and QoS 1, to `<prefix>/<station>/start_refused`:

    {"station": "line1-st3", "time": "2026-12-06T10:00:00.000Z", "exit_code": 2,
     "problems": ["model.thresholds: ... calibrated on another bundle ..."]}

through the configured broker (its TLS and password), by a client of its own
(`adgan-<station>-start-refused`: a running agent of the same station is never disconnected), waiting
at most a few seconds. An agent that starts clears it (an empty retained message on its first
connection). A file with bad settings elsewhere is said through its `station_id` and `[mqtt]`
alone (`reach`). Nothing can be said when those themselves are bad, or the broker cannot be
reached: the log then says that it was not said.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from agent.mqtt.events import utc_iso
from agent.mqtt.link import make_client

TOPIC = "start_refused"
WAIT_S = 5.0


def reach(config, env_file):
    """The station's name and `[mqtt]` settings alone, read as `load_settings` reads the whole
    (the file, the environment, a .env file, the credential 'mqtt_password'): enough to say why a
    file whose other settings are bad is refused. None when they are bad too."""
    from pydantic import Field
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from agent.settings import AgentSettings, MqttSettings, topic_level, with_credentials

    class Reach(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="ADGAN_", env_nested_delimiter="__", extra="ignore",
                                          allow_inf_nan=False, toml_file=Path(config) if config else None)
        station_id: str
        mqtt: MqttSettings = Field(default_factory=MqttSettings)

        # the same sources in the same order as the whole (the file lowest)
        settings_customise_sources = classmethod(AgentSettings.settings_customise_sources.__func__)

    try:
        env = Path(env_file) if env_file and Path(env_file).is_file() else None
        r = with_credentials(Reach(_env_file=env), ("mqtt",))
        topic_level(r.station_id)
    except Exception:  # (whatever stops these settings, the refusal is in the log already)
        return None
    return r


def refusal_document(station: str, problems: list[str], exit_code: int = 2) -> bytes:
    return json.dumps({"station": station, "time": utc_iso(time.time()), "exit_code": exit_code,
                       "problems": [str(p) for p in problems]}).encode()


def say_refusal(s, problems: list[str], timeout: float = WAIT_S) -> str:
    """Publish `problems` retained on the station's `start_refused` topic; one line for the log: where it
    was said, or why not. `s` is the AgentSettings (its station_id and [mqtt])."""
    m = s.mqtt
    base = f"{m.topic_prefix}/{s.station_id}"
    where = f"{m.host}:{m.port}"
    deadline = time.monotonic() + timeout
    answered, outcome = threading.Event(), {}

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        outcome["connack"] = reason_code
        answered.set()

    try:
        client = make_client(m, f"adgan-{s.station_id}-start-refused", "5" if m.protocol == "5" else "3.1.1",
                             f"{base}/availability")
    except Exception as e:  # (TLS files that cannot be read: the refusal may be about them)
        return f"the refusal was not said on MQTT: {type(e).__name__}: {e}"
    client.will_clear()  # (this client is not the station: no Last Will of its own)
    client.on_connect = on_connect
    try:
        client.connect_async(m.host, m.port, m.keepalive_s)
        client.loop_start()
    except Exception as e:
        return f"the refusal was not said on MQTT ({where}): {type(e).__name__}: {e}"
    try:
        while not answered.wait(0.05):  # (paho tries again after a failed attempt: one is enough here)
            failed = client.last_connect_error or client.last_socket_error
            if failed or time.monotonic() >= deadline:
                return f"the refusal was not said on MQTT ({where}): {failed or f'no answer within {timeout:g} s'}"
        if outcome["connack"].is_failure:
            return f"the refusal was not said on MQTT: {where} refused the connection ({outcome['connack']})"
        info = client.publish(f"{base}/{TOPIC}", refusal_document(s.station_id, problems), qos=1, retain=True)
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        if not info.is_published():
            return f"the refusal was not said on MQTT ({where}): the broker did not acknowledge it within {timeout:g} s"
        return f"the refusal was said on MQTT ({where}, {base}/{TOPIC}, retained)"
    except Exception as e:
        return f"the refusal was not said on MQTT ({where}): {type(e).__name__}: {e}"
    finally:
        client.disconnect()
        client.loop_stop()
