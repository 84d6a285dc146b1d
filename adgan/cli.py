"""`adgan`: the command line. Each subcommand's module is imported only when it runs,
so `adgan agent ...` on a Jetson never imports torch."""
from __future__ import annotations

import argparse
import logging
import sys

from adgan import __version__

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adgan",
        description="adgan-edge: RGB-D visual inspection with GAN latent-search anomaly detection. "
                    "Workstation: dataset, train, export, score, calibrate, evaluate. "
                    "Station: agent. Everything end to end: demo.")
    p.add_argument("--version", action="version", version=f"adgan-edge {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from adgan import dataset, demo
    from adgan import score
    from agent import cli as agent_cli
    from calibration import calibrate, evaluate
    from export import cli as export_cli
    from training import cli as training_cli
    dataset.add_parser(sub)
    training_cli.add_parser(sub)
    training_cli.add_encoder_parser(sub)
    export_cli.add_parser(sub)
    score.add_parser(sub)
    calibrate.add_parser(sub)
    evaluate.add_parser(sub)
    agent_cli.add_parser(sub)
    demo.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from agent.scoring.backend import BackendUnavailable

    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, BackendUnavailable) as e:
        # User-facing input errors: one clear line, no traceback (-vv shows it).
        logging.getLogger("adgan").debug("error", exc_info=True)
        print(f"adgan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
