"""`adgan`: the command line. Each subcommand's module is imported only when it runs,
so `adgan agent ...` on a Jetson never imports torch."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from adgan import __version__


class DefaultsHelp(argparse.HelpFormatter):
    """Help that shows every option's default, unless its text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default is None or default is False or default is argparse.SUPPRESS
                or not action.option_strings
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"default: {shown}"


class RawDefaultsHelp(DefaultsHelp, argparse.RawDescriptionHelpFormatter):
    """DefaultsHelp with the description as written (line breaks kept)."""


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command's help shows its defaults."""
    raw = issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
    parser.formatter_class = RawDefaultsHelp if raw else DefaultsHelp
    for action in parser._actions:
        if action.help is None and action.option_strings and action.default is not None and action.default is not False:
            action.help = "default: %(default)s"
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adgan",
        description="adgan-edge: RGB-D visual inspection with GAN latent-search anomaly detection. "
                    "Workstation: dataset, train, export, score, calibrate, evaluate. "
                    "Station: agent. Everything end to end: demo.")
    p.add_argument("--version", action="version", version=f"adgan-edge {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from adgan import bundle, dataset, demo
    from adgan import score
    from agent import cli as agent_cli
    from calibration import calibrate, evaluate
    from export import cli as export_cli
    from training import cli as training_cli
    dataset.add_parser(sub)
    training_cli.add_parser(sub)
    training_cli.add_encoder_parser(sub)
    export_cli.add_parser(sub)
    bundle.add_parser(sub)
    score.add_parser(sub)
    calibrate.add_parser(sub)
    evaluate.add_parser(sub)
    agent_cli.add_parser(sub)
    demo.add_parser(sub)
    _show_defaults(p)
    return p


def standard_streams() -> None:
    """Standard input, output and error closed at the start (`2>&-`, a wrapper that closes them)
    are opened on /dev/null. Until 2026-12-07 `adgan agent run 2>&-` exited 1 without a word
    (faulthandler refuses a missing stderr), and in any command the first file opened took a
    closed stream's number, so that whatever writes to that stream by number (faulthandler, a
    library) would write into it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_RDWR)
            except OSError:  # (no /dev/null in a bare container: left as it was)
                return
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        if getattr(sys, name) is None:  # (Python makes it None when its descriptor was closed at the start)
            setattr(sys, name, open(fd, "w", buffering=1, errors="backslashreplace", closefd=False))


# Address space (ulimit -v, a unit's LimitAS=) below which the command fails, mostly without saying why;
# measured on 2026-12-07 (agent run, one bundle, ONNX Runtime on 2 cores): at 439 MiB `import cv2` dies of
# SIGSEGV, at 586 MiB no thread starts, at 879 MiB OpenCV's worker threads fail; at 977 MiB it ran with
# 11 MiB to spare (it maps ~1.4 GiB with ~120 MiB in memory when nothing limits it).
ADDRESS_SPACE_FLOOR = 1 << 30


def address_space(limit: int) -> tuple[str, bool] | None:
    """What to say of the process's address-space limit `limit` (bytes; RLIM_INFINITY: none), and
    whether to refuse to start: the libraries loaded (OpenCV, ONNX Runtime, CUDA) reserve much more
    address space than they use, so such a limit breaks them where a memory limit would not."""
    import resource
    if limit == resource.RLIM_INFINITY or limit < 0:
        return None
    mb = limit / (1 << 20)
    fix = ("Bound memory with MemoryMax= in the unit (it counts what is used) and remove LimitAS= (or "
           "'ulimit -v')")
    if limit < ADDRESS_SPACE_FLOOR:
        return (f"this process may map at most {mb:.0f} MiB of address space (LimitAS= or 'ulimit -v'), less "
                f"than its libraries need ({ADDRESS_SPACE_FLOOR >> 20} MiB at least: OpenCV dies at its import at "
                f"439 MiB, no thread starts at 586 MiB, OpenCV's threads fail at 879 MiB): not started. {fix}"), True
    return (f"this process may map at most {mb:.0f} MiB of address space (LimitAS= or 'ulimit -v'): its "
            f"libraries reserve more than they use (ONNX Runtime on the CPU ~1.4 GiB for ~120 MiB used; CUDA and "
            f"TensorRT far more), so a thread, an engine or a request may fail later. {fix}"), False


def main(argv: list[str] | None = None) -> int:
    standard_streams()
    import resource
    said = address_space(resource.getrlimit(resource.RLIMIT_AS)[0])
    if said is not None:  # (before anything is imported: under a low limit OpenCV's import dies of SIGSEGV)
        print(f"adgan: {'error' if said[1] else 'warning'}: {said[0]}", file=sys.stderr)
        if said[1]:
            return 2
    from agent.logsink import FORMAT
    from agent.scoring.backend import BackendUnavailable
    from agent.scoring.tensorrt import EngineBuildFailed

    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format=FORMAT)  # (the agent's log writer keeps it: agent/logsink.py)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, BackendUnavailable) as e:
        # User-facing input errors: one clear line, no traceback (-vv shows it).
        logging.getLogger("adgan").debug("error", exc_info=True)
        from pydantic import ValidationError
        if isinstance(e, ValidationError):  # (pydantic's own text spans lines and names its internals)
            from agent.records import describe
            e = f"{e.title}: {describe(e)}"
        print(f"adgan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except EngineBuildFailed as e:  # (the machine's too: TensorRT said no; no traceback says more)
        logging.getLogger("adgan").debug("error", exc_info=True)
        print(f"adgan {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        # The machine's failure, not the input's (a full disk, an I/O error, a folder not writable):
        # one line that says what and where, exit 1. The agent keeps its traceback: it says its own
        # start failures (agent/cli.py), and anything later is a fault to find.
        if args.command == "agent" and args.agent_cmd != "settings-reference":  # (that one writes a document)
            raise
        logging.getLogger("adgan").debug("error", exc_info=True)
        print(f"adgan {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def describe_os_error(e: OSError) -> str:
    """An OSError as a user reads it: what failed, on which file, and for a full or read-only
    disk what to do."""
    text = e.strerror or str(e)
    if e.filename is not None and str(e.filename) not in text:
        text += f": {e.filename}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and "free space" not in text:
        text += " (the disk is full: free space or write elsewhere, and run again)"
    elif e.errno == errno.EROFS:
        text += " (the file system is read-only)"
    return text


if __name__ == "__main__":
    sys.exit(main())
