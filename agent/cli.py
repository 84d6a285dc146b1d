"""`adgan agent ...`: the station agent's commands."""
from __future__ import annotations

import argparse
import errno
import faulthandler
import logging
import os
import signal
import sqlite3
import ssl
import sys
from pathlib import Path

from agent.argtypes import number


def _load(a: argparse.Namespace, say: bool = False):
    """Settings, or None after printing every invalid field (exit code 2); with `say`, told to the
    station's broker too when its station_id and [mqtt] settings are good."""
    from pydantic import ValidationError

    from agent.settings import describe_errors, load_settings
    try:
        return load_settings(a.config, a.env_file)
    except ValidationError as e:
        lines = describe_errors(e)
        print(f"{a.config}: {len(lines)} invalid setting(s):", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        if say:
            from agent.mqtt.start_refused import reach
            r = reach(a.config, a.env_file)
            if r is None:
                print(f"{a.config}: the refusal was not said on MQTT: station_id or [mqtt] cannot be used either",
                      file=sys.stderr)
            else:
                _say_refusal(a, r, [f"{a.config}: {line}" for line in lines])
    except UnicodeDecodeError as e:  # (TOML is UTF-8; Notepad's "Unicode" is UTF-16)
        print(f"{a.config}: it or its --env-file ({a.env_file}) is not UTF-8 text (byte {e.start}); save it as "
              "UTF-8 (an editor may have saved it as UTF-16)", file=sys.stderr)
    except (FileNotFoundError, ValueError) as e:
        print(f"{a.config}: {e}", file=sys.stderr)
    except OSError as e:  # (a file left by an edit with sudo, unreadable by the agent's own user; a failing disk)
        from agent import durable
        print(f"{a.config}: {durable.permission_words(e)}", file=sys.stderr)
    return None


def _preflight(a: argparse.Namespace, s, say: bool = False) -> bool:
    """Run every check `run` makes before its loop; print warnings and problems (with the
    setting and the file), and with `say`, tell the station's broker as well. True when nothing
    stops the agent."""
    from agent.preflight import preflight
    report = preflight(s, a.config)
    for w in report.warnings:
        print(f"{a.config}: warning: {w}", file=sys.stderr)
    if report.problems:
        print(f"{a.config}: {len(report.problems)} setting(s) cannot be used:", file=sys.stderr)
        for line in report.lines():
            print(f"  {line}", file=sys.stderr)
        if say:
            _say_refusal(a, s, report.lines())
    return not report.problems


def _say_refusal(a: argparse.Namespace, s, problems: list[str]) -> None:
    """The refused start on the station's `start_refused` topic too (agent/mqtt/start_refused.py)."""
    from agent.mqtt.start_refused import say_refusal
    print(f"{a.config}: {say_refusal(s, problems)}", file=sys.stderr)


def cmd_validate_config(a: argparse.Namespace) -> int:
    from agent.decide.expected import start_words
    s = _load(a, say=a.mqtt)
    if s is None or not _preflight(a, s, say=a.mqtt):
        return 2
    words = start_words(s.outbox.path, s.model.expected_class, s.model.bundles)
    if words:  # a class switched over MQTT before, kept for the next start (agent/decide/expected.py)
        print(f"{a.config}: {words}", file=sys.stderr)
    print(f"{a.config}: valid (station {s.station_id}, source {s.source.type}, "
          f"{len(s.model.bundles)} bundle(s), backend {s.model.backend.type}, trigger {s.trigger.mode})")
    return 0


def _logging(level: str) -> None:
    from agent.logsink import FORMAT
    logging.basicConfig(stream=sys.stderr, format=FORMAT)
    logging.getLogger().setLevel(getattr(logging, level.upper()))


def cmd_run(a: argparse.Namespace) -> int:
    from agent.mqtt.files import OutboxInUse
    from agent.scoring.backend import BackendUnavailable
    from agent.health import stacks_on_sigusr1
    from agent.config_watch import ConfigWatch
    from agent.run_record import open_stacks
    from agent.service import Agent
    from agent import logsink
    edited = ConfigWatch([a.config, a.env_file])  # (the files as they are read: an edit from now on is said)
    s = _load(a, say=True)
    if s is None or not _preflight(a, s, say=True):
        return 2
    logsink.install(a.log_level, s.health.log_buffer_kb * 1024)  # (written by a thread: a stuck journal stops nothing)
    # Where every thread was: when systemd's watchdog kills a stuck agent (SIGABRT) or on a crash in
    # native code (SIGSEGV: an engine, a camera driver), into <outbox>.stacks, which the next start
    # logs (agent/run_record.py: stderr could hold the crashed process on a stuck journal); and on
    # demand, into the log, without stopping it: `systemctl kill -s USR1 adgan-agent` for a hang.
    stacks_on_sigusr1(logsink.output())  # (not faulthandler.register: its dump in the handler may crash it)
    for out in (open_stacks(s.outbox.path), sys.stderr, sys.__stderr__):  # (stderr where the file cannot be)
        try:
            faulthandler.enable(file=out, all_threads=True)
            break
        except (AttributeError, ValueError, OSError, RuntimeError):  # (RuntimeError: "sys.stderr is None")
            continue
    agent = Agent(s)
    # SIGHUP too (the terminal of a hand-started agent closed): a stop that finishes and flushes,
    # not the default's instant death
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, agent.request_stop)
    try:
        agent.start()
    except (OSError, sqlite3.Error, ssl.SSLError) as e:
        # preflight passed, so something changed since or cannot be foreseen: one line, exit 2
        _not_started(agent, e)
        logsink.drain(2.0)  # (the log's lines first)
        print(f"{a.config}: the agent cannot start: {type(e).__name__}: {e}", file=sys.stderr)
        if not isinstance(e, OutboxInUse):  # (the station is running: the other agent speaks for it)
            _say_refusal(a, s, [f"the agent cannot start: {type(e).__name__}: {e}"])
        return 2
    except (ValueError, FileNotFoundError, BackendUnavailable) as e:
        _not_started(agent, e)  # adgan's main prints input errors (bad bundle, stale thresholds) as one line, exit 2
        _say_refusal(a, s, [str(e)])
        raise
    except BaseException as e:
        _not_started(agent, e)
        raise
    edited.start()
    return agent.run()


def _not_started(agent, e: BaseException) -> None:
    """A start that failed: what it took is released, and its run record says why it stopped (the
    next start would otherwise say it was killed)."""
    agent._stop_cause = agent._stop_cause or f"it could not start: {type(e).__name__}: {e}"
    agent.shutdown()


def _unwritable(out: str | Path) -> str:
    """Why a file cannot be written at `out` ("" when it can): a folder there, or a folder it cannot
    be made in (its owner and the fix where it is another user's: a state folder made with sudo)."""
    from agent import durable
    from agent.mqtt.files import write_error
    out = Path(out)
    if os.path.isdir(out):  # (os.path: a folder on the way this user may not enter raised out of Path.is_dir)
        return "is a folder; give a file's path"
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return durable.permission_words(e, write=True)
    e = write_error(folder)
    return "" if e is None else durable.cannot_write(folder, e)


def cmd_capture_reference(a: argparse.Namespace) -> int:
    from agent.segment.reference import SurfaceReference
    from agent.segment.segmentation import standing_on, standing_words
    from agent.segment.station import StationSegmenter
    from agent.sources.open import open_source
    from agent.sources.base import SourceError

    s = _load(a)
    if s is None:
        return 2
    _logging(a.log_level)
    out = a.out or s.segmentation.reference
    if out is None:
        print("no output: pass --out or set segmentation.reference in the configuration", file=sys.stderr)
        return 2
    bad = _unwritable(out)
    if bad:  # (said before the empty surface is recorded, not after)
        print(f"--out {out}: {bad}", file=sys.stderr)
        return 2
    src = open_source(s.source, s.health.frame_timeout_s)
    try:
        if src.segmented:
            print(f"source {s.source.type} replays segmented samples; a reference needs raw depth frames",
                  file=sys.stderr)
            return 2
        frames = []
        print(f"recording {a.frames} frames of the EMPTY surface from {s.source.type} ...", file=sys.stderr)
        while len(frames) < a.frames:
            try:
                f = src.read()
            except SourceError as e:
                print(f"the source failed: {e}", file=sys.stderr)
                return 1
            if f is None:
                break
            frames.append(f)
    finally:
        src.close()
    if len(frames) < 1:
        print("the source gave no frames", file=sys.stderr)
        return 1
    ref = SurfaceReference.from_frames(frames, max_depth_mm=s.segmentation.max_depth_mm)
    try:
        ref.save(out)
    except OSError as e:  # (a disk that filled meanwhile; until 2026-12-07 a traceback)
        from agent import durable
        full = durable.out_of_inodes(Path(out).parent) if e.errno == errno.ENOSPC else ""
        print(f"the surface reference was not written: {durable.permission_words(e, write=True)}{full}; nothing "
              f"was written to {out}", file=sys.stderr)
        return 1
    holes = int((ref.depth == 0).sum())
    print(f"surface reference from {ref.n_frames} frames -> {out} ({ref.depth.shape[1]}x{ref.depth.shape[0]}, "
          f"{holes} pixels unknown); a running agent picks it up at its next frame")
    standing = standing_on(ref, StationSegmenter.from_settings(s.segmentation).cfg, s.trigger.min_area_px)
    if standing:
        print(f"warning: {standing_words(standing)}", file=sys.stderr)
    return 0


def cmd_capture_frames(a: argparse.Namespace) -> int:
    import threading

    from agent.capture import CaptureError, capture_frames
    from agent.segment.station import StationSegmenter
    from agent.sources.base import SourceError
    from agent.sources.open import open_source
    from agent.passage import PassageTrigger

    s = _load(a)
    if s is None:
        return 2
    if a.count < 1 or a.every < 1:
        print("--count and --every must be at least 1", file=sys.stderr)
        return 2
    if os.path.exists(a.out) and not os.path.isdir(a.out):  # (said before the camera is opened)
        print(f"--out {a.out} exists and is not a folder", file=sys.stderr)
        return 2
    _logging(a.log_level)
    passage = segmenter = None
    if a.parts:
        t = s.trigger
        passage = PassageTrigger(t.min_area_px, t.settle_frames, t.settle_tolerance, t.clear_frames)
        segmenter = StationSegmenter.from_settings(s.segmentation, t.min_area_px)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # stop after the frame being written
        signal.signal(sig, lambda *_: stop.set())
    what = "one frame per settled part" if a.parts else ("every frame" if a.every == 1 else f"one frame in {a.every}")
    try:
        src = open_source(s.source, s.health.frame_timeout_s)
    except (SourceError, OSError, ValueError) as e:
        print(f"{a.config}: the source cannot be opened: {e}", file=sys.stderr)
        return 1
    print(f"recording {a.count} frames ({what}) from {s.source.type} into {a.out}; Ctrl-C stops and keeps them",
          file=sys.stderr)

    def progress(r) -> None:
        print(f"  {len(r.written)}/{a.count} written (last frame {r.written[-1] if r.written else '-'}, "
              f"{r.frames_read} read, {r.unsettled} unsettled, {r.bad_frames} bad)", file=sys.stderr)

    try:
        report = capture_frames(src, a.out, a.count, every=a.every, passage=passage, segmenter=segmenter,
                                stop=stop, progress=progress)
    except ValueError as e:
        print(f"{a.config}: {e}", file=sys.stderr)
        return 2
    except (CaptureError, SourceError, OSError) as e:
        r = getattr(e, "report", None)
        from agent import durable
        said = durable.permission_words(e, write=True) if isinstance(e, PermissionError) else e
        print(f"the capture stopped: {said}" + (f"; kept: {r.summary()}" if r is not None else ""), file=sys.stderr)
        return 1
    finally:
        src.close()
    print(report.summary())
    if report.written:
        ref = s.segmentation.reference or "<the station's reference>"
        print(f"next: adgan dataset prepare {a.out} --reference {ref} --out data/train/<class> "
              "(with --force to prepare it again into a class folder it was prepared into before)")
    return 0 if report.written else 1


def cmd_record_exit(a: argparse.Namespace) -> int:
    """systemd's view of how the run ended, into the run record (agent/run_record.py)."""
    from agent.mqtt.files import AgentLock
    from agent.run_record import RunRecord
    ended = {k: os.environ[v] for k, v in (("result", "SERVICE_RESULT"), ("exit_code", "EXIT_CODE"),
                                           ("exit_status", "EXIT_STATUS")) if os.environ.get(v)}
    if "result" not in ended:
        print("adgan agent record-exit: $SERVICE_RESULT is not set: it is run by systemd, as ExecStopPost=",
              file=sys.stderr)
        return 2
    s = _load(a)
    if s is None:
        return 2
    holder = AgentLock(s.outbox.path).holder()
    if holder is not None:  # (a start refused because another agent runs: its record is not this run's)
        print(f"{a.config}: the outbox is in use by a running agent ({holder}): nothing recorded", file=sys.stderr)
        return 0
    why_not = RunRecord(s.outbox.path).record_exit(ended)
    if why_not is not None:
        print(f"{a.config}: nothing recorded: {why_not}", file=sys.stderr)
    return 0


def cmd_settings_reference(a) -> int:
    from agent.settings_reference import settings_reference
    text = settings_reference()
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}")
    else:
        print(text, end="")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("agent", help="the inspection agent (camera -> segment -> score -> MQTT)",
                       description="The station agent: run it, check its configuration, record the "
                                   "empty-surface reference and the station's own frames for training.")
    ag = p.add_subparsers(dest="agent_cmd", required=True, metavar="COMMAND")

    def common(q):
        q.add_argument("--config", required=True, help="agent.toml")
        q.add_argument("--env-file", default=".env", help="dotenv file to read if present (default .env)")

    q = ag.add_parser("validate-config", help="check a configuration: exit 0 if valid, 2 naming every bad field",
                      description="Load the configuration exactly as 'agent run' would (TOML file, ADGAN_* "
                                  "environment variables nested with '__', a .env file, CREDENTIALS_DIRECTORY), "
                                  "report every invalid field with its path, then make every check 'agent run' "
                                  "makes before it starts (bundle hashes, thresholds of these bundles, latent "
                                  "seed and engine, TLS files, the outbox folder, the source) without starting "
                                  "anything. Exit 2 naming the setting and the file. Usable as ExecStartPre=.")
    common(q)
    q.add_argument("--mqtt", action="store_true",
                   help="also publish the problems, retained, on the station's <prefix>/<station>/start_refused topic "
                        "(as 'run' does; the unit's ExecStartPre uses it)")
    q.set_defaults(func=cmd_validate_config)

    q = ag.add_parser("run", help="run the agent until SIGTERM (or the end of a finite replay)",
                      description="Load and verify the bundles and thresholds (refusing tampered bundles and "
                                  "thresholds calibrated on other bundles), warm the engines up, connect to the "
                                  "broker, then inspect frames and publish events. Under systemd it reports READY "
                                  "after warm-up and pings the watchdog from its loop. SIGTERM finishes the "
                                  "current frame, flushes what the broker accepts and publishes 'offline'.")
    common(q)
    q.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    q.set_defaults(func=cmd_run)

    q = ag.add_parser("capture-reference", help="record the empty-surface reference from the configured source",
                      description="Read frames of the empty table from the configured source and store their "
                                  "per-pixel median depth as the surface reference (.npz).")
    common(q)
    q.add_argument("--count", "--frames", dest="frames", type=number(int, 1), default=30,
                   help="how many frames to take the median of (default 30; '--frames' is the old spelling)")
    q.add_argument("--out", default=None, help="where to write (default: segmentation.reference)")
    q.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    q.set_defaults(func=cmd_capture_reference)

    q = ag.add_parser("capture-frames", help="record raw frames from the configured source, for training",
                      description="Record raw frames (lossless RGB, 16-bit depth, metadata: the raw layout that "
                                  "'adgan dataset prepare' reads) from the configured source into a folder: with "
                                  "--parts one frame per part, the settled frame the agent itself would inspect "
                                  "(the station's segmentation and trigger settings), else every --every-th frame. "
                                  "Numbering continues after the highest frame already in the folder; nothing "
                                  "is overwritten. SIGINT/SIGTERM stop after the frame being written. Exit 0 when "
                                  "frames were written, 1 when none were or the source or the disk failed (what "
                                  "was written is kept and said), 2 for bad settings.")
    common(q)
    q.add_argument("--out", required=True, help="raw-layout folder to write into (created if needed)")
    q.add_argument("--count", type=number(int, 1), default=100, help="how many frames to write (default 100)")
    q.add_argument("--parts", action="store_true",
                   help="one frame per part passage, on the frame where it settled (needs the reference)")
    q.add_argument("--every", type=number(int, 1), default=1,
                   help="without --parts: keep every N-th frame read (default 1)")
    q.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    q.set_defaults(func=cmd_capture_frames)

    q = ag.add_parser("record-exit", help="record how systemd saw the run end (the unit's ExecStopPost)",
                      description="Add systemd's $SERVICE_RESULT, $EXIT_CODE and $EXIT_STATUS (set for a unit's "
                                  "ExecStopPost=) to the run record beside the outbox, so that the next start says "
                                  "how the run before ended: the watchdog, the OOM killer, a crash's signal. "
                                  "Nothing is recorded while another agent holds the outbox.")
    common(q)
    q.set_defaults(func=cmd_record_exit)

    q = ag.add_parser("settings-reference", help="every agent.toml setting as Markdown (docs/agent-toml.md)",
                      description="Write the reference of every setting (type, default, limits, description, "
                                  "environment variable), generated from the settings' own definitions.")
    q.add_argument("--out", default=None, help="write to this file (default: standard output)")
    q.set_defaults(func=cmd_settings_reference)
