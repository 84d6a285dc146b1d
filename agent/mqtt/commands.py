"""Commands on `<base>/<feature>/set` (DESIGN.md): subscribed to on every connection, routed
to their handler, or refused.

A command is an action, not a state: a retained one is refused (it would come back on every
reconnect), and so is one larger than MAX_COMMAND_BYTES. Refusals are counted and logged at
most once per LOG_EVERY_S per feature, so a flood cannot fill the journal. A live command that
is refused (too large) is also handed to the feature's `on_refused` handler, where it has one:
a refused trigger/set is a request, and is answered (until 2026-12-06 only the log said it).

The station's session is kept by the broker (link.make_client): what the broker took for it
while it was away (stopped, killed, its link down) comes on the next connection, where it was
dropped before 2026-12-06. A feature with an `on_held` handler (trigger/set: by then the part
has left the camera) hands those to it, not to its handler: to tell them from new commands, the
station sends itself a fence on the feature's topic as it connects, and what comes before the
fence comes back was held. Held commands come back to back, as fast as the station takes them
(the broker sends more as it is acknowledged), and the fence right after them: however slowly the
station takes them (a journal on a disk slow to flush), the fence is waited for while they come,
for FENCE_S after the last of them (until 2026-12-06: after it was sent, so on a slow disk the held
commands still coming were taken as new ones, and inspected), and FENCE_MAX_S in all. A fence that
does not come back (an ACL that forbids the station to publish there; under MQTT 5 the broker's
PUBACK says so at once, `fence_refused`, and the held commands' stream ends at its first pause of
BACK_TO_BACK_S) is said, and what comes after is taken as new. A command that comes after a pause
while the fence is awaited is handed to on_held, but only the stream (back to back) keeps the fence
awaited longer (until 2026-12-07 each did: under 3.1.1, which acknowledges and drops a fence its ACL
forbids, parts every few seconds were answered as held for FENCE_MAX_S after every connection); once
a fence was given up, the next ones are taken as refused until one comes back. A message the broker
sends again (its DUP flag: the acknowledgement was lost with the link, or with a kill) that was
taken already (or by a killed run: `seed`) is dropped, so it is not answered twice: one taken within
RESEND_S, or on a connection that ended within RESEND_S (until 2026-12-06 counted from its taking
only: a link that went silent, found dead a keepalive or more later, had the resend answered again).
The same fence is sent after the station's process did not run for a while (agent/mqtt/frozen.py:
commands that came meanwhile waited in its socket, read as if just sent; since 2026-12-07).
"""
from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from typing import Callable

import paho.mqtt.client as mqtt

from agent.mqtt.frozen import FLOOR_S, FROZEN_S, FreezeWatch

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 256
LOG_EVERY_S = 10.0
FENCE_S = 10.0      # a fence not back this long after it was sent, or after the last held command, is given up
FENCE_MAX_S = 120.0  # ... and one not back this long after it was sent, whatever came (said)
QOS0_SAY_S = 600.0  # a command at QoS 0 is said at most this often (a PLC sends them all so)
BACK_TO_BACK_S = 0.5  # a command that comes this soon after the last held one was taken is of the same stream
KEEP_TAKEN = 1000   # (message id, payload) of the last commands taken, to drop the broker's resends...
RESEND_S = 60.0     # ... of those taken this recently, or on a connection that ended this recently (a broker
                    # may reuse a message id once acknowledged)

FROZE = ("the station's process did not run for {:.0f} s (stopped, frozen, or the machine suspended) and its "
         "trigger/set came meanwhile; by now the part has left the camera")

Handler = Callable[[bytes], None]


def message_key(mid: int, payload: bytes) -> str:
    """A command message's identity across the broker's resends: its id and a digest of its payload."""
    return f"{mid}:{hashlib.sha1(bytes(payload)).hexdigest()[:16]}"


class Commands:
    """The features a station takes commands for. `counters` is the publisher's counter dict
    (its "commands_refused" entry is counted here)."""

    def __init__(self, base: str, handlers: dict[str, Handler] | None, counters: dict[str, int]) -> None:
        self.base, self.handlers, self.counters = base, dict(handlers or {}), counters
        for name in ("commands_held", "commands_resent", "sessions_lost", "freezes", "commands_qos0"):  # (held while
            counters.setdefault(name, 0)  # away; sent again, taken already: dropped; see `subscribe`; frozen.py's
                                          # freezes; sent at QoS 0: `handle`)
        self._qos0_said = 0.0               # when a command at QoS 0 was last said
        self.ran_before = False             # this station connected in a run before (the service: its outbox)
        self._refusal_logged: dict[str, float] = {}
        self.on_refused: dict[str, Callable[[str], None]] = {}  # feature -> told why a live command was refused
        self.ready = threading.Event()      # every command subscription granted, this connection
        self._subacks: dict[int, str] = {}  # subscribe message id -> command topic, awaiting its SUBACK
        self._sub_failed = False            # a command subscription failed on this connection
        self.on_held: dict[str, Handler] = {}  # feature -> its commands the broker held while the station was away
        self._fence = ""                    # this connection's fence token, while one is not back
        self._fence_at = 0.0                # monotonic time it was sent
        self._drained = 0.0                 # when the last held command was taken (back to back from the fence on)
        self._refused = False               # the broker refused this connection's fence (MQTT 5 PUBACK)
        self._fence_lost = False            # an earlier connection's fence did not come back (given up)
        self._sent: list[str] = []          # the last fences sent by this process
        self._held = 0                      # commands held, handed to on_held, on this connection
        self._taken: OrderedDict[str, float] = OrderedDict()  # message_key -> when taken; newest last
        self._since = 0.0                   # when this connection began (monotonic)
        self._message = threading.local()   # the command being taken on this thread (`taking`)
        self.barrier: Callable[[], None] | None = None  # before_write's work (the service: its request journal's)
        self._batch_held = False            # a held command was taken in the batch paho's thread is reading
        self._publish: Callable[..., bool] | None = None  # this connection's, for a fence after a freeze
        self._fence_lock = threading.Lock()  # the fence's state (a freeze's fence is sent by the watch's thread)
        self.held_why: str | None = None    # why this fence's held commands are not taken (None: held while away)
        self.freeze = FreezeWatch(self._froze)
        self.fence_s = FROZEN_S             # a freeze this long or more is fenced (trigger.max_wait_s; 0: never)

    def subscribe(self, client, resumed: bool = False, publish: Callable[..., bool] | None = None) -> None:
        """Subscribe to every command topic (on paho's thread, from on_connect: no SUBACK can be
        handled before this returns). `resumed`: the broker kept the session, and what it held
        comes first; a fence is sent with `publish` (topic, payload, qos) on each on_held topic."""
        self._fence, self._held, self._publish, self.held_why = "", 0, publish, None
        if self.on_held:
            self.freeze.start()
        now = time.monotonic()  # (what the connection that ended took: its acknowledgements may have died with it,
        for key, at in self._taken.items():  # so a resend is known for RESEND_S from now, not from the taking)
            if at >= self._since:
                self._taken[key] = now
        self._since = now
        if not resumed and self.handlers and (self.counters.get("connects", 0) > 1 or self.ran_before):
            self.counters["sessions_lost"] += 1
            log.warning("the broker kept no session for this station (restarted without persistence? mosquitto: "
                        "persistence true; or the session was cleared, or expired, or this is its first connection "
                        "with one): commands sent to it while it was away, if any, are lost, unanswered")
        self.ready.clear()
        self._subacks.clear()
        self._sub_failed = False
        for topic in self.topics():
            rc, mid = client.subscribe(topic, qos=1)
            if rc == mqtt.MQTT_ERR_SUCCESS:
                self._subacks[mid] = topic
            else:
                self._sub_failed = True
                log.error("subscribing to %s failed: %s; commands on it do not reach this station until "
                          "the next connection", topic, mqtt.error_string(rc))
        if not self._subacks and not self._sub_failed:
            self.ready.set()
        if resumed and publish is not None and self.on_held:  # (after the SUBSCRIBEs: the broker takes them in turn,
            self._send_fence(publish)                           # so a subscription new to the session catches it)

    def _send_fence(self, publish: Callable[..., bool], why: str | None = None) -> None:
        """A fence on each on_held topic: what comes before it comes back was held while the station was
        away, or (`why`) came while its process did not run."""
        token = secrets.token_hex(8)
        fenced = [publish(f"{self.base}/{f}/set", json.dumps({"fence": token}), qos=1) for f in self.on_held]
        if all(fenced):
            with self._fence_lock:
                # (one that did not come back before will not now: the ACL of a 3.1.1 broker that drops it)
                self._fence, self._fence_at, self.held_why = token, time.monotonic(), why
                self._refused = self._fence_lost
                self._drained = self._fence_at
                self._sent = [*self._sent[-9:], token]
        else:
            log.warning("the fence on %s could not be sent: commands %s are taken as new ones",
                        ", ".join(f"{self.base}/{f}/set" for f in self.on_held),
                        "that came while the process did not run" if why else
                        "the broker held while this station was away")

    def close(self) -> None:
        self.freeze.close()

    def _froze(self, seconds: float) -> bool:
        """The process did not run for `seconds` (frozen.py; on the watch's thread, or paho's reading a
        command): counted, and a fence sent at once, while the commands' subscriptions stand (after a
        link lost meanwhile, the next connection's fence tells what the broker held). Shorter than
        `fence_s`, it is counted only: what came meanwhile is taken. Returns whether it is fenced."""
        self.counters["freezes"] += 1
        if not self.fence_s or seconds < self.fence_s:
            return False
        if self.on_held and self._publish is not None and self.ready.is_set():
            self._send_fence(self._publish, FROZE.format(seconds))
        return True

    def wait_at_most(self, seconds: float) -> None:
        """Fence freezes of `seconds` or more (trigger.max_wait_s: a request that cannot begin within it
        is not inspected; 0: none), and watch for gaps that long where shorter than FROZEN_S (FLOOR_S at least)."""
        self.fence_s = seconds
        self.freeze.frozen_s = max(min(FROZEN_S, seconds), FLOOR_S) if seconds else FROZEN_S

    def subscribed(self, mid: int, reason_codes) -> None:
        """A SUBACK: `ready` once every command subscription is granted; a refusal is said."""
        topic = self._subacks.pop(mid, None)
        if topic is None:
            return
        refused = [rc for rc in reason_codes if getattr(rc, "is_failure", False)]
        if refused:
            self._sub_failed = True
            self.counters["subscriptions_refused"] += 1
            log.error("the broker refused the subscription to %s (%s): commands on it do not reach this "
                      "station; is this client allowed to read it (the broker's ACL)?", topic, refused[0])
        elif not self._subacks and not self._sub_failed:
            self.ready.set()

    def topics(self) -> list[str]:
        """What to subscribe to (again on every connect)."""
        return [f"{self.base}/{feature}/set" for feature in self.handlers]

    def handle(self, topic: str, payload: bytes, retain: bool, mid: int = 0, dup: bool = False, qos: int = 1) -> None:
        """Call the feature's handler (on paho's network thread), or its on_held handler for what the
        broker held (before this connection's fence), or refuse the command. `mid`, `dup`: the
        message's id and DUP flag (a resend of one taken already is dropped); `qos`: as delivered."""
        prefix, suffix = self.base + "/", "/set"
        feature = topic[len(prefix):-len(suffix)] if topic.startswith(prefix) and topic.endswith(suffix) else None
        handler = self.handlers.get(feature) if feature else None
        if handler is None or self._fenced(feature, payload):
            return
        if qos == 0 and not retain:
            self._sent_at_qos0(topic)
        self.freeze.check()  # (a freeze this read is the first to see: its fence is sent before the command is taken)
        key = message_key(mid, payload) if mid and not retain else None
        if key is not None and not self._take(key, dup, topic):
            return
        stream = False
        with self._fence_lock:
            if self._fence and feature in self.on_held:
                now = time.monotonic()
                if self._waiting(now):
                    handler = self.on_held[feature]
                    stream = now - self._drained < BACK_TO_BACK_S  # (one after a pause does not hold the fence longer)
                    self._held += 1
                    self.counters["commands_held"] += 1
                elif self._refused:  # (said when the broker refused it)
                    self._fence = ""
                    log.info("the commands the broker held for this station came before %s paused: what comes now "
                             "is taken as new", topic)
                else:
                    self._fence, self._fence_lost = "", True
                    log.warning("this station's fence on %s did not come back (%.0f s after it was sent; may the "
                                "station publish there? the broker's ACL): commands %s are taken as new ones; the next "
                                "fences on it are taken as refused until one comes back (the held commands end at "
                                "their first pause of %.1f s)", topic, time.monotonic() - self._fence_at,
                                "that came while its process did not run" if self.held_why else
                                "the broker held while it was away", BACK_TO_BACK_S)
        self._message.key = key
        try:
            self._route(feature, topic, payload, retain, handler)
        finally:
            self._message.key = None
            if stream:
                self._drained, self._batch_held = time.monotonic(), True

    def _sent_at_qos0(self, topic: str) -> None:
        """A command sent at QoS 0 (taken as any): counted, and said at most every QOS0_SAY_S. The broker
        keeps none of those for a station that is away (mosquitto: queue_qos0_messages false, its
        default), and a kill before it is journaled loses it: either way unanswered, and nobody told
        (until 2026-12-07 not even this)."""
        self.counters["commands_qos0"] += 1
        now = time.monotonic()
        if now >= self._qos0_said:
            self._qos0_said = now + QOS0_SAY_S
            log.warning("a command on %s came at QoS 0 (%d so far; said at most every %.0f s): taken, but one sent "
                        "at QoS 0 while this station is away (restarting, cut off) is not kept by the broker, and "
                        "is lost without an answer: send commands at QoS 1", topic, self.counters["commands_qos0"],
                        QOS0_SAY_S)

    def _waiting(self, now: float) -> bool:
        """Whether this connection's fence is still to come at `now`: a command of the stream of held
        ones (back to back with the last), or (unless the broker refused the fence) within FENCE_S of
        the fence or of the stream's last; FENCE_MAX_S after the fence in all."""
        if not self._fence or now - self._fence_at >= FENCE_MAX_S:
            return False
        if now - self._drained < BACK_TO_BACK_S:
            return True
        return not self._refused and now - max(self._fence_at, self._drained) < FENCE_S

    def fence_refused(self, topic: str, why: str) -> bool:
        """The broker refused a message on `topic` that this station sent (MQTT 5 PUBACK): True if it
        was this connection's fence, which then cannot come back (said; held commands still coming
        back to back are taken as held)."""
        if not self._fence or topic not in {f"{self.base}/{f}/set" for f in self.on_held}:
            return False
        self._refused = True
        log.warning("the broker refused this station's fence on %s (%s): may the station publish there (the "
                    "broker's ACL)? The commands it held while the station was away come back to back: once they "
                    "pause for %.1f s, what comes is taken as new", topic, why, BACK_TO_BACK_S)
        return True

    def _route(self, feature: str, topic: str, payload: bytes, retain: bool, handler: Handler) -> None:
        if retain:
            self._refuse(feature, "it is retained; commands must be sent without the retain flag "
                                  "(clear it: mosquitto_pub -r -n -t " + topic + ")")
            return
        if len(payload) > MAX_COMMAND_BYTES:
            why = f"{len(payload)} bytes, more than {MAX_COMMAND_BYTES}"
            self._refuse(feature, why)
            if feature in self.on_refused:
                try:
                    self.on_refused[feature](why)
                except Exception:  # (as a handler's: not the network thread's end)
                    log.exception("answering the refused command on %s failed", topic)
            return
        try:
            handler(bytes(payload))
        except Exception:  # a bad command must not kill the network thread
            log.exception("command on %s failed", topic)

    def _take(self, key: str, dup: bool, topic: str) -> bool:
        """False for the broker's resend (DUP) of a message taken within RESEND_S (or left by the
        run before: `seed`); else the message is remembered as taken."""
        now = time.monotonic()
        if dup and now - self._taken.get(key, -RESEND_S) < RESEND_S:
            self.counters["commands_resent"] += 1
            log.info("command on %s sent again by the broker (its acknowledgement was lost): taken already, "
                     "dropped", topic)
            return False
        self._taken[key] = now
        self._taken.move_to_end(key)
        while len(self._taken) > KEEP_TAKEN:
            self._taken.popitem(last=False)
        return True

    def seed(self, keys) -> None:
        """Messages (message_key) the run before took (agent/request_journal.py: those left unanswered,
        and the last answered): the broker sends again one whose acknowledgement a kill cut off (paho
        sends it after its reading, which a slow disk can hold up past the answer), and it is dropped."""
        for key in keys:
            self._taken[key] = time.monotonic()

    @property
    def fencing(self) -> bool:
        """Whether this connection's fence is out: a command coming now is taken as held."""
        return self._waiting(time.monotonic())

    def before_write(self) -> None:
        """Run by paho's network thread after each batch of messages it read, before it writes their
        acknowledgements (link.ReportingClient.loop_read): the `barrier`, where one is set (the service's
        request journal writes there, once, what the batch's commands brought)."""
        if self.barrier is not None:
            self.barrier()
        if self._batch_held:  # (the held stream's pace is the barrier's: a batch taken ends after it)
            self._batch_held, self._drained = False, time.monotonic()

    def taking(self) -> str | None:
        """The message_key of the command the calling thread's handler is taking (None elsewhere:
        OPC UA's thread, the GPIO watch, a retained or QoS 0 command)."""
        return getattr(self._message, "key", None)

    def _fenced(self, feature: str, payload: bytes) -> bool:
        """Whether `payload` is a fence (this station's own: not a command): this connection's
        ends what the broker held; an earlier one's (sent on a connection that dropped) is dropped."""
        if len(payload) > MAX_COMMAND_BYTES or not payload.startswith(b'{"fence"') or feature not in self.on_held:
            return False  # (a fence is ~30 bytes: a larger payload is refused as any command is)
        try:
            token = json.loads(payload).get("fence")
        except (ValueError, AttributeError, RecursionError):
            return False
        with self._fence_lock:
            back = bool(self._fence) and token == self._fence
            if back:
                self._fence, self._fence_lost = "", False
        if back:
            log.log(logging.WARNING if self._held else logging.DEBUG, "%d commands %s came before its fence: "
                    "each is answered as held", self._held, "that came while this station's process did not run"
                    if self.held_why else "the broker held for this station while it was away")
        elif token in self._sent:
            log.debug("a fence from an earlier connection came back: dropped")
        else:  # (a run before's, killed before its fence came back; or someone else's: said, counted)
            self._refuse(feature, "it is a fence this process did not send (from a run before, or not this "
                                  "station's): {\"fence\": ...} is never a request")
        return True

    def _refuse(self, feature: str, why: str) -> None:
        self.counters["commands_refused"] += 1
        now = time.monotonic()
        if now >= self._refusal_logged.get(feature, 0.0):
            self._refusal_logged[feature] = now + LOG_EVERY_S
            log.warning("command on %s/%s/set refused: %s (%d refused so far; logged at most every %.0f s)",
                        self.base, feature, why, self.counters["commands_refused"], LOG_EVERY_S)
