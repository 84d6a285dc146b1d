"""Every check `adgan agent run` makes before its loop, runnable without starting anything:
`validate-config` runs exactly these, so what it passes `run` does not refuse.

Each problem names the setting at fault and the file. Warnings (a password in the TOML
file, a password sent without TLS, a missing surface reference) do not stop the agent.
"""
from __future__ import annotations

import difflib
import errno
import importlib.util
import ipaddress
import os
import sqlite3
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6): the tomli backport, a dependency there
    import tomli as tomllib

from pydantic import BaseModel

from agent import durable, request_journal, run_record
from agent.decide import expected
from agent.decide.inspector import check_class_model, check_rivals, load_check_bundles
from agent.mounts import NETWORK_FS, mount_of, read_only_words
from agent.mqtt.files import AgentLock, write_error
from agent.mqtt.salvage import corrupt_file
from agent.mqtt.tls import WARN_DAYS, CertificateError, EncryptedKey, cert_dates, expiry_words, load_client_cert
from agent.settings import AgentSettings, SettingError


@dataclass
class Report:
    problems: list[SettingError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_models(s: AgentSettings, r: Report) -> None:
    m = s.model
    if m is None:
        r.problems.append(SettingError("model", "missing: inspecting needs a [model] section (bundles, "
                                                "expected_class, thresholds); only the capture commands work "
                                                "without one"))
        return
    checked = {}
    for cls, path in m.bundles.items():
        try:
            bundle, thr = check_class_model(cls, path, m.thresholds, m.seed, m.backend)
        except SettingError as e:
            if not any(str(p) == str(e) for p in r.problems):  # one thresholds problem, not one per class
                r.problems.append(e)
            continue
        checked[cls] = (bundle, thr)
        if bundle.parts_per_call > 1:  # the agent inspects one part per frame
            r.warnings.append(f"model.bundles.{cls}: {path} scores {bundle.parts_per_call} parts per call; the agent "
                              f"scores one part at a time, so each score pays for {bundle.parts_per_call} (export "
                              "the station's bundle without --parts-per-call)")
    try:
        extra = load_check_bundles(m.check_bundles)
    except SettingError as e:
        r.problems.append(e)
        return
    if len(checked) < len(m.bundles):
        return  # (a class check against a bundle refused above would only repeat its problem)
    for cls, (bundle, thr) in checked.items():
        try:
            check_rivals(cls, bundle, thr, {**extra, **{c: b for c, (b, _) in checked.items()}}, m.thresholds,
                         set(checked))
        except SettingError as e:
            r.problems.append(e)


def check_tls(s: AgentSettings, r: Report) -> None:
    mq = s.mqtt
    if mq.tls_ca is None:
        return
    denied = [SettingError(f"mqtt.{k}", w) for k in ("tls_ca", "tls_cert", "tls_key")
              if getattr(mq, k) is not None and (w := durable.unreadable(getattr(mq, k)))]
    if denied:  # (named with the owner and the fix: until 2026-12-07 "[Errno 13] Permission denied")
        r.problems.extend(denied)
        return
    try:
        ctx = ssl.create_default_context(cafile=str(mq.tls_ca))
    except (OSError, ssl.SSLError) as e:
        r.problems.append(SettingError("mqtt.tls_ca", f"{mq.tls_ca}: not a readable PEM CA certificate ({e})"))
        return
    if mq.tls_cert is not None:
        try:
            load_client_cert(ctx, mq.tls_cert, mq.tls_key)
        except EncryptedKey as e:
            r.problems.append(SettingError("mqtt.tls_key", str(e)))
            return
        except (OSError, ssl.SSLError) as e:
            r.problems.append(SettingError("mqtt.tls_cert", f"{mq.tls_cert} with key {mq.tls_key}: not a readable "
                                                            f"certificate and matching key ({e})"))
            return
        try:
            not_after = cert_dates(mq.tls_cert)[1]
        except (OSError, CertificateError) as e:
            r.warnings.append(f"mqtt.tls_cert {mq.tls_cert}: its end date cannot be read ({e})")
            return
        now = time.time()
        if not_after - now < WARN_DAYS * 86400:
            r.warnings.append(f"mqtt.tls_cert {mq.tls_cert} is {expiry_words(not_after, now)} by this station's "
                              f"clock: {'the broker refuses it; ' if now >= not_after else ''}renew it (the agent "
                              "loads a renewed file at its next connection attempt, without a restart)")


# the files the agent keeps beside its outbox (SQLite's, the sequence number, requests, class switch,
# run record and its stacks, lock, reserve): each must be the agent's user's to read and write
STATE_SUFFIXES = ("", "-wal", "-shm", ".seq", request_journal.SUFFIX, expected.SUFFIX, run_record.SUFFIX,
                  run_record.STACKS_SUFFIX, ".lock", ".reserve")


def check_outbox(s: AgentSettings, r: Report) -> None:
    path = Path(s.outbox.path)
    folder = existing = path.parent
    while not os.path.exists(existing) and existing != existing.parent:  # (os.path: a folder not to be entered,
        existing = existing.parent                                     # a traceback until 2026-12-07, is said)
    if not existing.is_dir():
        r.problems.append(SettingError("outbox.path", f"{path}: {existing} is not a directory"))
        return
    full = None  # the folder's file system is full: the agent runs, as on a disk that fills while it runs
    if existing == folder:
        e = write_error(folder)
        if e is not None and e.errno in (errno.ENOSPC, errno.EDQUOT):
            full = f"{e.strerror}{durable.out_of_inodes(folder)}"
            if not (path.is_file() and Path(f"{path}.seq").is_file()):  # (a new outbox: its files cannot be made)
                r.problems.append(SettingError("outbox.path", f"{path}: a new outbox cannot be made in {folder}, "
                                                              f"which is full ({full})"))
                return
            r.warnings.append(f"outbox.path: {folder} is full ({full}): the agent runs and holds what it cannot store "
                              "in memory, where a kill loses it, until there is room")
        elif e is not None:
            hint = (f"; {read_only_words(folder)}" if e.errno == errno.EROFS else
                    durable.folder_owner(folder) if e.errno in (errno.EACCES, errno.EPERM) else "")
            why = f"{e.strerror or e}{hint}"
            r.problems.append(SettingError("outbox.path", f"{path}: cannot write in {folder} ({why})"))
            return
    elif (e := write_error(existing)) is not None:  # (the folder to make: said as the one it would be made in)
        r.problems.append(SettingError("outbox.path", f"{path}: {durable.cannot_write(folder, e)}"))
        return
    check_outbox_lasts(path, existing, r)
    reserve = int(s.outbox.reserve_mb * 1e6)
    if reserve and not Path(str(path) + ".reserve").is_file():
        st = os.statvfs(existing)
        free = st.f_bavail * st.f_frsize
        if free < 2 * reserve:
            r.warnings.append(f"outbox.reserve_mb: {existing} has {free / 1e6:.1f} MB free, less than twice the "
                              f"reserve ({reserve / 1e6:.1f} MB): the agent runs without it, so a full disk would "
                              "hold events in memory only; free space, or lower outbox.reserve_mb")
    holder = AgentLock(path).holder()
    if holder is not None:  # (a warning: validate-config may be run beside the agent it checks)
        r.warnings.append(f"outbox.path: {path} is in use by a running agent ({holder}); `run` refuses to start "
                          "while it is")
    theirs = durable.not_ours([Path(f"{path}{x}") for x in STATE_SUFFIXES], f"{path}*")
    if theirs:
        r.problems.append(SettingError("outbox.path", f"{folder}: {theirs}"))
        return
    owner = folder.stat().st_uid if folder.is_dir() else 0
    if os.geteuid() == 0 and owner != 0:  # (by hand with sudo, beside a unit that runs as that user)
        who = durable.login(owner)
        r.warnings.append(f"outbox.path: this agent runs as root in {folder}, which {durable.user_name(owner)} owns "
                          "(the unit's User=): what it writes there is root's, and an agent run as that user cannot "
                          f"write it afterwards; run it as that user (`sudo -u {who} adgan agent ...`) or give the "
                          f"files back after (`chown {who}: {path}*`)")
    if path.exists():
        if not path.is_file() or not os.access(path, os.R_OK | os.W_OK):
            r.problems.append(SettingError("outbox.path", f"{path}: exists but is not a readable, writable file"))
            return
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                db.execute("SELECT name FROM sqlite_master").fetchall()
        except sqlite3.Error as e:
            if full is not None and not corrupt_file(e):  # (SQLite cannot make its -wal and -shm files)
                r.warnings.append(f"outbox.path: {path} cannot be opened while its disk is full ({e}): its events "
                                  "are sent once there is room")
            elif corrupt_file(e):  # run moves it aside
                r.warnings.append(f"outbox.path: {path} is not a readable database ({e}); the agent moves it "
                                  f"aside ({path.name}.corrupt-<time>), keeps what events it can read, and starts "
                                  "a new one")
            else:
                r.problems.append(SettingError("outbox.path", f"{path}: not an outbox database ({e})"))


def check_outbox_lasts(path: Path, folder: Path, r: Report) -> None:
    """An outbox in memory (tmpfs: /tmp on many systems, /run, /dev/shm) or in a systemd unit's
    private /tmp (PrivateTmp=yes, as this project's unit sets: removed at every stop) ran without a
    word, and lost every event kept for the broker, the sequence numbers and the requests waiting
    at the next restart of the machine (stations are switched off at the end of a shift) or of
    the service: said."""
    mount = mount_of(folder)
    if mount is None:
        return
    mnt, fstype, root = mount[:3]
    kept = "the events it keeps for the broker, its sequence numbers and the requests waiting are lost"
    if "/systemd-private-" in root:
        r.warnings.append(f"outbox.path: {path} is in this service's private {mnt} (systemd PrivateTmp=yes), "
                          f"which is removed at every stop: {kept} at each restart; put it in the unit's state "
                          "folder (/var/lib/adgan)")
    elif fstype in ("tmpfs", "ramfs"):
        r.warnings.append(f"outbox.path: {path} is on a {fstype} ({mnt}), which lives in memory: {kept} when the "
                          "machine restarts (a power cut, the end of a shift); put it on a disk (the unit's state "
                          "folder: /var/lib/adgan)")
    elif fstype in NETWORK_FS:
        r.warnings.append(f"outbox.path: {path} is on a network file system ({fstype}, {mnt}): SQLite's write-ahead "
                          "log, which the outbox uses, does not work over one (sqlite.org/wal.html), and a station "
                          "must keep its events through a network outage; put it on a local disk")


def check_source(s: AgentSettings, r: Report) -> None:
    # A source that is not there yet is retried by `run` with backoff (a camera plugged in
    # later), so it is a warning here too, not a refusal.
    src = s.source
    path = src.path if src.type == "folder" else src.recording if src.type == "realsense" else None
    denied = durable.unreadable(path, folder=src.type == "folder") if path is not None else None
    if denied:  # (until 2026-12-07 a traceback, where a folder on the way could not be entered)
        r.problems.append(SettingError(f"source.{'path' if src.type == 'folder' else 'recording'}", denied))
    elif src.type == "folder" and not Path(src.path).is_dir():
        r.warnings.append(f"source.path: {src.path} is not a folder (yet); the agent retries it with backoff")
    elif src.type == "realsense" and src.recording is not None and not Path(src.recording).is_file():
        r.warnings.append(f"source.recording: {src.recording} does not exist (yet); the agent retries it with "
                          "backoff")
    h = s.health
    if h.stall_s <= 2 * h.frame_timeout_s:  # (a camera's wait for a frame, and its reopening, are not stalls)
        r.warnings.append(f"health.stall_s ({h.stall_s:g} s) is not above twice health.frame_timeout_s "
                          f"({h.frame_timeout_s:g} s): a camera's wait for a frame would be said as a stall")
    ref = s.segmentation.reference
    denied = durable.unreadable(ref) if ref is not None else None
    if denied:
        r.warnings.append(f"segmentation.reference: {denied}; until it can, raw frames become error events")
    elif ref is not None and not Path(ref).is_file():
        r.warnings.append(f"segmentation.reference: {ref} does not exist yet; until it is recorded with "
                          "'adgan agent capture-reference', raw frames become error events")


def check_secrets(s: AgentSettings, r: Report, config: str | Path | None) -> None:
    mq = s.mqtt
    if config is not None:
        try:
            doc = tomllib.loads(Path(config).read_text())
        except (OSError, tomllib.TOMLDecodeError):
            doc = {}
        if isinstance(doc.get("mqtt"), dict) and "password" in doc["mqtt"]:
            r.warnings.append(f"mqtt.password is written in {config}: keep it out of the file, in "
                              "ADGAN_MQTT__PASSWORD or the systemd credential 'mqtt_password'")
    if mq.password is not None and mq.tls_ca is None and not _is_loopback(mq.host):
        r.warnings.append(f"mqtt.password is sent to {mq.host} without TLS (set mqtt.tls_ca): anyone on the "
                          "network path can read it")


def check_delivery(s: AgentSettings, r: Report) -> None:
    """MQTT 3.1.1 with the delivery check off: events the broker's ACL forbids would be lost unsaid."""
    mq = s.mqtt
    if mq.protocol == "3.1.1" and not mq.check_delivery:
        r.warnings.append("mqtt.protocol is 3.1.1 and mqtt.check_delivery is off: a broker acknowledges and drops "
                          "an event its ACL forbids (or one over its message size limit), and nothing would say so; "
                          "use protocol \"auto\" or \"5\" where the broker speaks MQTT 5")


def check_interfaces(s: AgentSettings, r: Report) -> None:
    """A GPIO chip that is not there, OPC UA without its library, certificate or password are
    settings at fault. A busy line or port is found only at run time and reported in status:
    taking them here would take them from the agent."""
    g = s.gpio
    if g.enabled and g.backend == "gpiod":
        from agent.gpio.lines import GpioError, GpiodChip
        try:
            GpiodChip(g.chip)
        except GpioError as e:
            r.problems.append(SettingError("gpio.chip", str(e)))
    o = s.opcua
    if not o.enabled:
        return
    if importlib.util.find_spec("asyncua") is None:
        r.problems.append(SettingError("opcua.enabled", "the asyncua package is not installed "
                                                        "(pip install 'adgan-edge[opcua]')"))
    for key in ("certificate", "private_key"):
        path = getattr(o, key)
        denied = durable.unreadable(path) if o.security != "None" and path is not None else None
        if denied or o.security != "None" and path is not None and not Path(path).is_file():
            r.problems.append(SettingError(f"opcua.{key}", denied or f"{path} does not exist"))
    if o.username is not None and o.password is None:
        r.problems.append(SettingError("opcua.password", f"user {o.username!r} has no password (ADGAN_OPCUA__PASSWORD "
                                                         "or the systemd credential 'opcua_password')"))
    if o.security == "None" and not _is_loopback(o.host):
        r.warnings.append(f"opcua.security is None on {o.host}: anyone on the network can read and write the "
                          "station's class and trigger it")


def check_environment(r: Report) -> None:
    """An `ADGAN_*` environment variable that names no setting is not read (pydantic-settings
    skips it without a word: `ADGAN_MQTT_PASSWORD`, one underscore short, left the password unset
    and the broker refused the station): said, with the setting it may have meant."""
    from agent.settings_reference import env_names
    names, free = env_names()
    for key in sorted(os.environ):
        k = key.upper()
        if k.startswith("ADGAN_") and k not in names and not k.startswith(tuple(free)):
            near = difflib.get_close_matches(k, names, 1, 0.8)
            r.warnings.append(f"environment variable {key} names no setting and is not read"
                              + (f": did you mean {near[0]}?" if near else " (nested tables are joined by __, "
                                 "e.g. ADGAN_MQTT__PORT; docs/agent-toml.md lists every setting)"))


def relative_paths(table: BaseModel, prefix: str = "", every: bool = False) -> list[tuple[str, Path]]:
    """(setting, path) of each relative path the settings hold (`every`: each path), in their tables and
    free-key tables."""
    out = []
    for name in type(table).model_fields:
        value = getattr(table, name)
        for key, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            setting = prefix + name + ("" if key is None else f".{key}")
            if isinstance(v, BaseModel):
                out += relative_paths(v, setting + ".", every)
            elif isinstance(v, Path) and (every or not v.is_absolute()):
                out.append((setting, v))
    return out


def check_private_tmp(s: AgentSettings, r: Report) -> None:
    """A file put in /tmp for the agent (bundles copied there for a try) is not there for the unit's agent:
    PrivateTmp=yes gives the service a /tmp of its own. Until 2026-12-07 only "does not exist" was said."""
    for setting, p in relative_paths(s, every=True):
        there = setting == "outbox.path" or not p.is_absolute() or os.path.exists(p)  # (the outbox: its own check)
        m = None if there else mount_of(p)
        if m is not None and "/systemd-private-" in m[2]:
            r.warnings.append(f"{setting}: {p} is in this service's private {m[0]} (systemd PrivateTmp=yes): the "
                              f"service sees a /tmp of its own, not the one it was put in; put it under /etc/adgan "
                              "or /var/lib/adgan")


def check_relative_paths(s: AgentSettings, r: Report, config: str | Path | None) -> None:
    """A relative path is read from the folder the agent runs in (`/` under systemd), not from
    the configuration's folder: a configuration tried by hand beside its files then failed under
    the unit, said as a bundle or folder that does not exist, naming no cause; and an outbox
    named so was a new, empty one, the events kept in the other never sent. Where a relative path
    does not exist from here and does beside the configuration, that is said; for the outbox it
    is a refusal."""
    relative = relative_paths(s)
    if config is None or not relative:
        return
    try:
        here, beside = Path.cwd(), Path(config).resolve().parent
    except OSError as e:  # (a shell left in a folder deleted since)
        r.warnings.append(f"the folder the agent runs in cannot be found ({e.strerror}): the relative paths "
                          f"({', '.join(name for name, _ in relative)}) cannot be read; write whole paths")
        return
    if here.resolve() == beside:
        return
    for setting, p in relative:
        if (here / p).exists() or not (beside / p).exists():
            continue
        unit = "" if here == Path("/") else "; a systemd unit runs it in /"
        why = (f"{p} is a relative path, read from the folder the agent runs in ({here}{unit}), where it does not "
               f"exist; it exists beside the configuration ({beside / p}): write the whole path")
        if setting == "outbox.path":
            r.problems.append(SettingError(setting, why + " (the events kept in that outbox would never be sent)"))
        else:
            r.warnings.append(f"{setting}: {why}")


def preflight(s: AgentSettings, config: str | Path | None = None) -> Report:
    """Every check `run` makes before it starts, without opening engines, sockets or files
    for writing."""
    r = Report()
    check_relative_paths(s, r, config)
    for check in (check_models, check_tls, check_outbox, check_source, check_interfaces, check_delivery,
                  check_private_tmp):
        check(s, r)
    check_secrets(s, r, config)
    check_environment(r)
    return r
