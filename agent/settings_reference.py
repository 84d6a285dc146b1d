"""docs/agent-toml.md, generated from the settings' own types, defaults and descriptions
(`adgan agent settings-reference`); a test keeps the file equal to what this writes."""
from __future__ import annotations

import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from agent.settings import AgentSettings

HEADER = """# agent.toml: every setting

Generated from `agent/settings.py` by `adgan agent settings-reference`; do not edit by hand
(`tests/agent/test_settings_reference.py` fails when it is stale).

The agent reads, highest precedence first: `ADGAN_*` environment variables (nested tables
joined by `__`, e.g. `ADGAN_MQTT__PORT=1884`), a `.env` file (`--env-file`), systemd
credentials (the secret `mqtt_password`), and the TOML file (`--config`). Unknown keys are
refused; an `ADGAN_*` environment variable that names no setting is said (`validate-config`,
`run`). `adgan agent validate-config --config agent.toml` checks a configuration and names
every setting at fault (exit 2). `systemd/agent.example.toml` is a complete example.
A relative path is read from the folder the agent runs in (`/` under systemd), not from the
configuration's folder: write whole paths.
"""


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _union_args(t: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(t) is typing.Annotated:
        t = typing.get_args(t)[0]
    if typing.get_origin(t) in (Union, types.UnionType):
        return typing.get_args(t)
    return None


def _models_of(t: Any) -> list:
    """The settings tables a field holds: its model, or each model of a union (a `type`-tagged choice)."""
    return [a for a in (_union_args(t) or ()) if _is_model(a)] or ([t] if _is_model(t) else [])


def type_name(t: Any) -> str:
    """A TOML user's name for a type."""
    if typing.get_origin(t) is typing.Annotated:
        t = typing.get_args(t)[0]
    args = _union_args(t)
    if args is not None:
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" (optional)" if type(None) in args else "")
    origin = typing.get_origin(t)
    if origin is Literal:
        values = typing.get_args(t)
        return ("" if len(values) == 1 else "one of ") + ", ".join(f"`{json.dumps(v)}`" for v in values)
    if origin in (list, tuple):
        inner = typing.get_args(t)
        if origin is tuple and inner and Ellipsis not in inner:
            return f"array of {len(inner)} {type_name(inner[0])}"
        return f"array of {type_name(inner[0])}" if inner else "array"
    if origin is dict:
        k, v = typing.get_args(t)
        return f"table of {type_name(v)} by {type_name(k)}"
    return {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path",
            SecretStr: "string (secret)"}.get(t, getattr(t, "__name__", str(t)))


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        v = field.default
    elif field.default_factory is not None:
        v = field.default_factory()
        if isinstance(v, BaseModel):
            return "(table)"
    else:
        return "**required**"
    if v is None:
        return "unset"
    if isinstance(v, Enum):
        v = v.value
    if isinstance(v, Path):
        v = str(v)
    return f"`{json.dumps(v)}`"


def _limits(field) -> str:
    out = []
    for m in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >=")):
            if getattr(m, attr, None) is not None:
                out.append(f"{sym} {getattr(m, attr)}")
    return f" ({', '.join(out)})" if out else ""


def _table(model: type[BaseModel], path: str, note: str = "", variant: str = "") -> list[str]:
    env = "ADGAN_" + "__".join(p.upper() for p in path.split(".")) + "__" if path else "ADGAN_"
    lines = [(f"## `[{path}]`" if path else "## Top level") + variant, ""]
    if note:
        lines += [note, ""]
    lines += [f"Environment: `{env}<KEY>`.", "", "| key | type | default | what |", "|---|---|---|---|"]
    nested: list[tuple[str, Any, str]] = []
    for name, field in model.model_fields.items():
        t = field.annotation
        if _models_of(t):
            nested.append((name, t, field.description or ""))
            continue
        desc = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {type_name(t)}{_limits(field)} | {_default(field)} | {desc} |")
    lines.append("")
    for name, t, desc in nested:
        sub = f"{path}.{name}" if path else name
        variants = _models_of(t)
        for v in variants:
            kind = v.model_fields.get("type")
            which = f", `type = {json.dumps(kind.default)}`" if kind is not None and len(variants) > 1 else ""
            lines += _table(v, sub, f"{desc[:1].upper()}{desc[1:]}.", which)
    return lines


def env_names(model: type[BaseModel] = AgentSettings, prefix: str = "ADGAN_") -> tuple[set[str], set[str]]:
    """(the environment variables that name a setting or a whole table, the prefixes of those
    below a table of free keys: `ADGAN_MODEL__BUNDLES__<CLASS>`)."""
    names, open_prefixes = set(), set()
    for name, field in model.model_fields.items():
        env = prefix + name.upper()
        names.add(env)
        t = field.annotation
        for v in _models_of(t):
            below, free = env_names(v, env + "__")
            names |= below
            open_prefixes |= free
        if typing.get_origin(t) is dict or any(typing.get_origin(a) is dict for a in _union_args(t) or ()):
            open_prefixes.add(env + "__")
    return names, open_prefixes


def settings_reference() -> str:
    return "\n".join([HEADER, *_table(AgentSettings, "")]).rstrip() + "\n"
