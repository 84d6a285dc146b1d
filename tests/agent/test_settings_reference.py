"""docs/agent-toml.md is what the settings say about themselves."""
from __future__ import annotations

from pathlib import Path

from agent.settings import AgentSettings, MqttSettings
from agent.settings_reference import settings_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent-toml.md"


def test_the_reference_is_current() -> None:
    assert DOC.read_text() == settings_reference(), \
        "docs/agent-toml.md is stale: run 'adgan agent settings-reference --out docs/agent-toml.md'"


def test_every_setting_is_in_the_reference_with_its_default() -> None:
    text = settings_reference()
    for name in AgentSettings.model_fields:
        assert f"| `{name}` |" in text or f"## `[{name}]`" in text, name
    for name, field in MqttSettings.model_fields.items():
        assert f"| `{name}` |" in text and field.description in text, name
    assert "| `port` | integer (>= 1, <= 65535) | `1883` |" in text
    assert '## `[model.backend]`, `type = "tensorrt"`' in text and "ADGAN_MQTT__<KEY>" in text
