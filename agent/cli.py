"""`adgan agent ...`: the station agent's commands."""
from __future__ import annotations

import argparse
import sys


def cmd_validate_config(a: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from agent.settings import describe_errors, load_settings
    try:
        s = load_settings(a.config, a.env_file)
    except ValidationError as e:
        lines = describe_errors(e)
        print(f"{a.config}: {len(lines)} invalid setting(s):", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"{a.config}: {e}", file=sys.stderr)
        return 2
    print(f"{a.config}: valid (station {s.station_id}, source {s.source.type}, "
          f"{len(s.model.bundles)} bundle(s), backend {s.model.backend.type}, trigger {s.trigger.mode})")
    return 0


def cmd_not_yet(a: argparse.Namespace) -> int:
    print(f"adgan agent {a.agent_cmd}: not available in this version yet (tracked in issue 6).", file=sys.stderr)
    return 2


def add_parser(sub) -> None:
    p = sub.add_parser("agent", help="the inspection agent (camera -> segment -> score -> MQTT) [issue 6]",
                       description="The station agent. validate-config checks a configuration; run and "
                                   "capture-reference come with issue 6.")
    ag = p.add_subparsers(dest="agent_cmd", required=True, metavar="COMMAND")
    q = ag.add_parser("validate-config", help="check a configuration: exit 0 if valid, 2 naming every bad field",
                      description="Load the configuration exactly as 'agent run' would (TOML file, ADGAN_* "
                                  "environment variables nested with '__', a .env file, CREDENTIALS_DIRECTORY) "
                                  "and report every invalid field with its path. Usable as ExecStartPre=.")
    q.add_argument("--config", required=True, help="agent.toml")
    q.add_argument("--env-file", default=".env", help="dotenv file to read if present (default .env)")
    q.set_defaults(func=cmd_validate_config)
    for name, text in (("run", "run the agent"), ("capture-reference", "record the empty-surface reference")):
        q = ag.add_parser(name, help=f"{text} [issue 6]", description=f"{text[0].upper()}{text[1:]}. Not available "
                                                                     "in this version yet (tracked in issue 6).")
        q.add_argument("--config", help="agent.toml")
        q.set_defaults(func=cmd_not_yet)
