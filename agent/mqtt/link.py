"""The link to the broker: the client, why a connection failed, which event it fails on, and
whether another client is taking this station's connection away.

paho's network loop catches the exception of a failed connection attempt and calls
`on_connect_fail` without it; `ReportingClient` keeps it, and `describe_connect_error`
turns it into a state (refused, unresolvable, unreachable, tls, error) and a reason. It does
not catch a callback's own exception: `guarded` does, so that the loop goes on.
"""
from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt.events import utc_seconds
from agent.mqtt.tls import TlsFiles, alert_of, der_dates

log = logging.getLogger(__name__)


CLOCK_CODES = {9, 10}  # X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED: dates, read on our clock


CLOCK_READING = re.compile(r"reads \d{4}-\d\d-\d\dT[\d:]+Z")  # (in a reason: describe_connect_error's)


def unclocked(reason: str) -> str:
    """`reason` without the clock reading it quotes (a link's reason, compared with the last one)."""
    return CLOCK_READING.sub("reads ?", reason)


CLOCK_HINT = "is this station's clock set (NTP)? A Jetson has no clock battery and boots at the time it last saved"


def _unverified() -> ssl.SSLContext:
    """A context for asking a port about TLS: nothing is verified, nothing is sent but a handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def peer_dates(host: str, port: int, timeout: float = 2.0) -> tuple[float, float] | None:
    """(not before, not after) of the broker's own certificate, read in a handshake that
    verifies nothing; None when it cannot be read."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                _unverified().wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
        return der_dates(der) if der else None
    except (OSError, ValueError):
        return None


def dates_hint(dates: tuple[float, float] | None, expired: bool) -> str:
    """What a certificate date failure points at: the broker's certificate, when its own dates
    say so by this clock, or this clock."""
    if dates is None:
        return CLOCK_HINT
    nb, na = dates
    now = time.time()
    if expired and now >= na:
        return (f"the broker's certificate expired at {utc_seconds(na)}. Renew it on the broker; or, if this clock is "
                f"wrong, set it (NTP: a Jetson has no clock battery and boots at the time it last saved)")
    if not expired and now < nb:
        return f"the broker's certificate is valid from {utc_seconds(nb)}: {CLOCK_HINT}"
    return (f"the broker's own certificate is valid from {utc_seconds(nb)} until {utc_seconds(na)}, so one of its "
            f"chain (or the CA in mqtt.tls_ca) is out of its dates: {CLOCK_HINT}")


def describe_connect_error(e: BaseException, host: str, port: int,
                           tls: TlsFiles | None = None) -> tuple[str, str]:
    """(state, reason) for an exception raised while connecting to the broker; `tls` names the
    client certificate where the broker's alert is about it."""
    where = f"{host}:{port}"
    if isinstance(e, socket.gaierror):
        return "unresolvable", f"cannot resolve the broker host {host!r} ({e.strerror or e})"
    if isinstance(e, ssl.SSLCertVerificationError):
        reason = f"TLS verification of {where} failed: {e.verify_message or e}"
        if getattr(e, "verify_code", None) in CLOCK_CODES:
            return "tls", f"{reason}, by this station's clock, which reads {utc_seconds(time.time())}: " + \
                dates_hint(peer_dates(host, port), e.verify_code == 10)
        return "tls", f"{reason} (check mqtt.tls_ca and host)"
    if isinstance(e, ssl.SSLError):
        hint = tls.hint(alert_of(str(e))) if tls is not None else ""
        return "tls", f"TLS handshake with {where} failed: {e.reason or e}" + (f"; {hint}" if hint else "")
    if isinstance(e, ConnectionRefusedError):
        return "refused", f"{where} refused the connection (is the broker running on that port?)"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "unreachable", f"{where} did not answer (timed out)"
    if isinstance(e, OSError):
        return "unreachable", f"cannot reach {where}: {e.strerror or e}"
    return "error", f"connecting to {where} failed: {type(e).__name__}: {e}"


REFUSAL_HINTS = {  # MQTT 5 CONNACK reasons for what the station sends: what to change on the broker
    "QoS not supported": "this station's Last Will and events use QoS 1, so that each event is kept until the broker "
                         "acknowledges it: the broker must take QoS 1 (mosquitto: max_qos)",
    "Retain not supported": "this station's Last Will (availability 'offline'), verdict, status and states are "
                            "retained, for readers that subscribe later: the broker must allow retained messages "
                            "(mosquitto: retain_available true)",
}


def refusal_hint(reason: str) -> str:
    """What to change for a CONNACK refusal's reason, or ''."""
    return next((f"; {h}" for r, h in REFUSAL_HINTS.items() if r.lower() in reason.lower()), "")


def speaks_tls(host: str, port: int, timeout: float = 2.0) -> bool | None:
    """Whether `port` completes a TLS handshake (nothing verified: only the protocol is asked);
    None when it cannot be reached."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    try:
        with _unverified().wrap_socket(sock, server_hostname=host):  # (the handshake, within `timeout`)
            return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        sock.close()


class ClosedHint:
    """Why a plain-MQTT connection may have been closed before a CONNACK, from asking the port
    whether it speaks TLS: a TLS port without mqtt.tls_ca, or (under MQTT 3.1.1, where mosquitto
    hangs up without a reason) a broker refusing the station's Last Will. The port is asked at
    most every KEEP_S (on paho's thread, between attempts: at most 2 s)."""

    KEEP_S = 300.0

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port, self._said = host, port, None  # (_said: when, what)

    def hint(self) -> str:
        now = time.monotonic()
        if self._said is None or now - self._said[0] > self.KEEP_S:
            tls = speaks_tls(self.host, self.port)
            if tls:
                what = "; it is a TLS port: set mqtt.tls_ca (the CA that signed the broker's certificate)"
            elif tls is False:
                what = ("; it does not speak TLS: does the broker refuse this station's Last Will (retained, QoS 1: "
                        "mosquitto's retain_available false or max_qos 0; under MQTT 5 it says which), or is it a "
                        "proxy or load balancer with no broker behind it?")
            else:
                what = "; is it a TLS port? (set mqtt.tls_ca)"
            self._said = (now, what)
        return self._said[1]


SESSION_EXPIRY_S = 7 * 24 * 3600  # MQTT 5: how long the broker keeps a station's session while it is away
# MQTT 5: the largest packet the station takes (a CONNECT property; the broker drops a larger one for
# it). What it reads is small: commands (MAX_COMMAND_BYTES), its own status, the broker's drop count.
# Unset, paho read whatever the broker passed on (mosquitto: up to 256 MB) whole, and copied it.
MAX_INCOMING_BYTES = 1 << 20


def session_properties() -> Properties:
    """The MQTT 5 CONNECT properties of a station's kept session (with clean_start False), and the
    largest packet it takes."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    props.MaximumPacketSize = MAX_INCOMING_BYTES
    return props


def make_client(s, client_id: str, protocol: str, will_topic: str,
                tls_files: TlsFiles | None = None, keep_session: bool = False) -> "ReportingClient":
    """The paho client for the `[mqtt]` settings `s`, speaking `protocol` ("5" or "3.1.1"),
    with 'offline' as its retained Last Will on `will_topic`; the caller sets the callbacks.
    `tls_files`: the TLS context's files (made from `s` when not given), kept across clients.
    `keep_session`: under 3.1.1, no clean session (the broker keeps the subscriptions, and the
    commands that come while the client is away); under 5, connect with clean_start False and
    session_properties(). Until 2026-12-06 a station's session was clean, and the commands that came
    while it was stopped, killed or cut off were dropped by the broker without a word."""
    if protocol == "5":
        client = ReportingClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        client = ReportingClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                 clean_session=not keep_session, protocol=mqtt.MQTTv311)
    client.will_set(will_topic, "offline", qos=1, retain=True)
    if s.username:
        client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
    if s.tls_ca:  # read again before each connection attempt when renewed on disk (tls.py)
        client.tls_files = tls_files or TlsFiles(s.tls_ca, s.tls_cert, s.tls_key)
        client.tls_set_context(client.tls_files.context)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


GUARD_LOG_S = 10.0
READ_BATCH = 10  # packets paho's network thread reads before it writes (ReportingClient.loop_read)
_reading = threading.local()


def reading_batch() -> bool:
    """Whether the calling thread is paho's, reading a batch whose acknowledgements are written only
    after the client's `before_write` returns (ReportingClient.loop_read): a request journal may then
    write what the batch's commands brought once, at that barrier, not once per command."""
    return getattr(_reading, "on", False)


def guarded(callback):
    """`callback` for paho, unable to stop paho's network thread: paho re-raises a callback's
    exception out of its loop, which ends the thread for good (no acknowledgements, no
    reconnects, and nothing said). It is logged instead, at most every GUARD_LOG_S."""
    next_log = 0.0

    def run(*args, **kwargs):
        nonlocal next_log
        try:
            return callback(*args, **kwargs)
        except Exception:
            now = time.monotonic()
            if now >= next_log:
                next_log = now + GUARD_LOG_S
                log.exception("MQTT: the %s callback failed (said at most every %.0f s); the network loop goes on",
                              getattr(callback, "__name__", "paho"), GUARD_LOG_S)
    return run


class ReportingClient(mqtt.Client):
    """paho's client, remembering why the last connection attempt failed (paho's loop
    catches the exception and only calls on_connect_fail, without it), and the last socket
    error it logged (a TLS alert the broker sends after the handshake, as TLS 1.3 does when it
    refuses a client certificate, surfaces only there). With TLS, the files are read again
    before each attempt when they were renewed (tls.TlsFiles)."""

    last_connect_error: BaseException | None = None
    last_socket_error: str | None = None
    tls_files: TlsFiles | None = None
    before_write: Callable[[], None] | None = None  # run after each batch read, before paho writes (loop_read)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_log = self._note_error

    def _note_error(self, client, userdata, level, buf) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self.last_socket_error = buf

    def reconnect(self):
        self.last_connect_error = self.last_socket_error = None
        if self.tls_files is not None:
            self.tls_files.refresh()
        try:
            return super().reconnect()
        except Exception as e:
            self.last_connect_error = e
            raise

    def loop_read(self, max_packets: int = 1):
        """paho's loop_read, reading at most READ_BATCH packets before its loop writes what waits, and
        then running `before_write` (paho's thread writes its queued packets only in loop_write, after
        this returns: a barrier before the batch's acknowledgements go out).
        paho read as many packets as it has messages in flight (up to the pump's WINDOW of events, and
        every state echo) before it wrote anything, and each command is taken on this thread. With a
        backlog of held commands on a disk slow to flush, nothing was written for minutes (950 held at
        30 ms a flush: ~110 s), the broker dropped the silent link (1.5 keepalives), sent every
        unacknowledged command again, and those taken over commands.RESEND_S before were answered
        twice (until 2026-12-06)."""
        if not hasattr(self, "_packet_read"):  # (a paho without the reader this relies on: its own)
            return super().loop_read(max_packets)
        _reading.on = self.before_write is not None
        try:
            for _ in range(READ_BATCH):
                if self._sock is None:
                    return mqtt.MQTT_ERR_NO_CONN
                rc = self._packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if rc == mqtt.MQTT_ERR_AGAIN:
                    return mqtt.MQTT_ERR_SUCCESS
            return mqtt.MQTT_ERR_SUCCESS
        finally:
            _reading.on = False
            if self.before_write is not None:
                try:
                    self.before_write()
                except Exception:  # (as a callback's: not the network thread's end)
                    log.exception("MQTT: the step before the acknowledgements are written failed")


POISON_S, POISON_STRIKES, HOLD_RELEASE_S = 1.0, 3, 60.0


class HoldBack:
    """Events a broker hangs up on. A message it will never take (larger than its limit:
    under MQTT 5 mosquitto says 'protocol error') makes it drop the connection again at
    every reconnect, where the oldest unacknowledged event goes first. So the oldest event
    still unacknowledged when a connection drops within POISON_S of sending it gets a strike;
    at POISON_STRIKES in a row it is held back (the publisher keeps it in the outbox and says
    so) until the link has been up HOLD_RELEASE_S, then it is tried once more."""

    def __init__(self) -> None:
        self.strikes: dict[str, int] = {}
        self.held: set[str] = set()
        self.repeated = False  # the last drop came right after the same event as the drop before

    def dropped(self, unacked: list[tuple[float, str]], now: float) -> str | None:
        """A connection dropped with `unacked` (monotonic time sent, event id) events; the id
        newly held back, if any."""
        self.repeated = False
        if not unacked:
            self.strikes.clear()
            return None
        sent_at, oldest = min(unacked)
        if now - sent_at > POISON_S:
            self.strikes.clear()
            return None
        self.strikes = {oldest: self.strikes.get(oldest, 0) + 1}
        self.repeated = self.strikes[oldest] > 1
        if self.strikes[oldest] >= POISON_STRIKES and oldest not in self.held:
            self.held.add(oldest)
            return oldest
        return None

    def release(self, stable_s: float) -> int:
        """After HOLD_RELEASE_S of a stable link, every held event gets another try; how many."""
        if not self.held or stable_s < HOLD_RELEASE_S:
            return 0
        n = len(self.held)
        self.held.clear()
        return n


FLAP_LIVED_S, FLAP_COUNT = 10.0, 3
SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason code


class Flapping:
    """Connections the broker closes soon after accepting them. Two clients with one client id
    (a second agent given this station's station_id) drop each other at every reconnect: the
    broker closes the older connection, without a reason under MQTT 3.1.1 and with 'Session
    taken over' under MQTT 5. The link flaps from FLAP_COUNT connections in a row that lived
    less than FLAP_LIVED_S (from the first 'Session taken over'), until a connection holds
    FLAP_LIVED_S; the publisher says when it starts and ends, not every drop in between. A drop
    that HoldBack lays on an event (the same one again) is the event's, and is not counted."""

    def __init__(self) -> None:
        self.short = 0          # connections in a row that lived less than FLAP_LIVED_S
        self.flapping = False

    def dropped(self, lived_s: float, taken_over: bool, events_fault: bool = False) -> bool:
        """A connection that lived `lived_s` dropped; True when this starts a flapping episode.
        `events_fault`: HoldBack blames an event for it."""
        if events_fault and not taken_over:
            return False
        self.short = self.short + 1 if lived_s < FLAP_LIVED_S else 0
        if not self.flapping and (taken_over or self.short >= FLAP_COUNT):
            self.flapping = True
            return True
        return False

    def reason(self, where: str, client_id: str, taken_over: bool) -> str:
        why = ("handed this station's session to another client" if taken_over else
               f"closed the connection {self.short} times in a row within {FLAP_LIVED_S:.0f} s of accepting it")
        return (f"{where} {why}: is another agent connected with client id {client_id!r} (a second station with "
                "this station_id)? Each one's connection drops the other's; give every station its own station_id")

    def held(self, connected_s: float) -> bool:
        """The connection has been up `connected_s`; True when this ends a flapping episode."""
        if self.flapping and connected_s >= FLAP_LIVED_S:
            self.flapping, self.short = False, 0
            return True
        return False

