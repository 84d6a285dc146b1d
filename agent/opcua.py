"""The OPC UA server (`[opcua]`, off by default; asyncua), for SCADA systems and PLCs that
speak OPC UA rather than MQTT.

One object per station under Objects, named by `station_id`:
  ExpectedClass   String, writable: the class being inspected (as MQTT's class/set)
  Trigger()       method: request one inspection (as MQTT's trigger/set); returns whether it
                  was taken (False: coalesced with one already waiting)
  TriggerPart(part_id)  method: one part, named (as trigger/set {"part_id": ...}): never
                  coalesced, answered by one event carrying the id; False when it will be
                  answered as not inspected (it came while max_pending waited, or a bad id)
  LastVerdict, LastScore, LastThreshold, LastEventId, LastSeq, LastPartId: the last event
  LastReason: why its verdict is what it is (the error; the score over its threshold, the class
  check's other class, where the damage is), "" for an ok part
  Health          String: the status heartbeat (JSON), refreshed every second
  Counters/       one Int64 per counter of `status`
Security: Basic256Sha256 (sign and encrypt) with the station's certificate and key, and the
user and password from the same secret store as MQTT (environment, .env, systemd credential
`opcua_password`). `security = "None"` only when configured so. The server runs in its own
thread and event loop; a server that cannot start (port taken, bad certificate) or stops is
logged, reported under `interfaces.opcua` in `status`, tried again every RETRY_S (30 s), and
inspection goes on without it meanwhile. A message
over MAX_MESSAGE_BYTES is refused (BadRequestTooLarge).
Connections are bounded: at most `opcua.max_clients` at once (asyncua's own bound, 1000, is
nearly the whole of the 1024 open files systemd gives a service: a client that opened that many
drove the agent to that limit, where every accept failed, and anything else that opened a file
could, and asyncio logged a traceback for each failed accept),
and one that opens no session within ACTIVATION_S is closed. So is one that announces a message
chunk larger than MAX_CHUNK_BYTES (the receive buffer this server offers): asyncua buffered it
whole, copying all it had at every read, so one connection announcing 4 GB and streaming made
inspection a hundred times slower (`_bound_chunks`). All three are counted
(`interfaces.opcua.connections_refused`, `idle_closed`, `chunks_refused`) and said at most every
REFUSED_LOG_S, not one line per connection.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from typing import Callable

from agent.mqtt.events import reason
from agent.web.bounded import RETRY_S

log = logging.getLogger(__name__)
logging.getLogger("asyncua").setLevel(logging.WARNING)  # its INFO lines would flood the journal

NAMESPACE = "urn:adgan-edge"
# The largest message a client may send or be sent (asyncua's default is 100 MB, buffered per
# connection before anyone is authenticated). This server's requests and answers are a few kB.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_CHUNK_BYTES = 65535  # the receive buffer offered to clients: no chunk of a message is larger
UPDATE_LOG_S = 10.0  # a failing update of the variables is logged at most this often
ACTIVATION_S = 10.0  # a connection that has opened no session by then is closed (asyncua's default: 30 s)
REFUSED_LOG_S = 60.0  # connections refused, or closed (idle, a chunk too large), are said at most this often


class OpcUaServer:
    def __init__(self, settings, station_id: str, on_class: Callable[[bytes], None],
                 on_trigger: Callable[..., bool], status: Callable[[], dict]) -> None:
        self.s, self.station_id = settings, station_id
        self.on_class, self.on_trigger, self.status_of = on_class, on_trigger, status
        self.state: dict = {"state": "off"}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._down = False  # it could not start, or stopped: said when it serves again

    @property
    def application_uri(self) -> str:
        return self.s.application_uri or f"urn:adgan-edge:{self.station_id}"

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.s.host}:{self.s.port}/adgan/"

    def start(self, timeout: float = 20.0) -> None:
        if not self.s.enabled:
            return
        self.state = {"state": "starting"}
        self._thread = threading.Thread(target=self._run, name="opcua", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            self.state = {"state": "error", "error": f"the OPC UA server did not start within {timeout:.0f} s"}
        if self.state["state"] == "error":
            log.error("OPC UA: %s; inspection goes on without it", self.state["error"])
        else:
            log.info("OPC UA on %s (security %s)", self.url, self.s.security)

    def _send(self, item) -> None:
        loop, queue = self._loop, self._queue
        if loop is not None and queue is not None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the server's loop has ended meanwhile
                pass

    def event(self, event: dict) -> None:
        """The last event, for LastVerdict and the others (from the agent's thread)."""
        self._send(event)

    def close(self) -> None:
        self._stopping.set()
        self._send(None)
        if self._thread is not None:
            self._thread.join(10)
        if self.state.get("state") == "serving":
            self.state = {"state": "stopped"}

    # -- the server's thread ------------------------------------------------------------------
    def _run(self) -> None:
        """Serve until closed; a server that cannot start (its port taken) or stops is tried again
        every RETRY_S (until 2026-12-07 it stayed down until the agent's next restart)."""
        said = _Refusals(self.s.max_clients, self.state)
        asyncua_server = logging.getLogger("asyncua.server.binary_server_asyncio")
        asyncua_server.addFilter(said)
        # asyncua's own traceback of a failed start, once: not at every try while the port stays taken
        starting = logging.getLogger("asyncua.server.server")
        retrying = (lambda r: not (self._down and "error starting server" in r.getMessage()))  # noqa: E731
        starting.addFilter(retrying)
        try:
            while not self._stopping.is_set():
                try:
                    asyncio.run(self._main(said))
                    return  # closed
                except Exception as e:  # any failure to serve is reported, never raised into the agent
                    serving = self.state.get("state") == "serving"
                    self.state = {"state": "error", "error": f"cannot serve {self.url}: {e}; tried again every "
                                                             f"{RETRY_S:.0f} s"}
                    if serving:  # (a failure to start is said by start(); one to start again, not at every try)
                        log.error("OPC UA server on %s stopped: %s; inspection goes on without it", self.url, e,
                                  exc_info=True)
                    else:
                        log.debug("OPC UA server failed", exc_info=True)
                    self._down = True
                finally:
                    self._loop = self._queue = None
                    self._started.set()
                self._stopping.wait(RETRY_S)
        finally:
            asyncua_server.removeFilter(said)
            starting.removeFilter(retrying)

    async def _main(self, said: _Refusals) -> None:
        from asyncua import Server, ua
        from asyncua.common.callback import CallbackType

        from asyncua.common.connection import TransportLimits
        server = Server(user_manager=_Users(self.s))
        server.iserver.max_connections = self.s.max_clients  # (asyncua 2.1 and later read both)
        server.iserver.max_pending_activation_seconds = ACTIVATION_S
        _bound_chunks()
        server.limits = TransportLimits(max_recv_buffer=MAX_CHUNK_BYTES, max_send_buffer=MAX_CHUNK_BYTES,
                                        max_chunk_count=-(-MAX_MESSAGE_BYTES // MAX_CHUNK_BYTES),
                                        max_message_size=MAX_MESSAGE_BYTES)
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name(f"adgan-edge station {self.station_id}")
        await server.set_application_uri(self.application_uri)
        if self.s.security == "None":
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await server.load_certificate(str(self.s.certificate))
            await server.load_private_key(str(self.s.private_key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        server.set_identity_tokens([ua.UserNameIdentityToken] if self.s.username else [ua.AnonymousIdentityToken])
        idx = await server.register_namespace(NAMESPACE)
        obj = await server.nodes.objects.add_object(idx, self.station_id)
        st = self.status_of()
        nodes = {
            "ExpectedClass": await obj.add_variable(idx, "ExpectedClass", st["expected_class"], ua.VariantType.String),
            "LastVerdict": await obj.add_variable(idx, "LastVerdict", "", ua.VariantType.String),
            "LastScore": await obj.add_variable(idx, "LastScore", float("nan"), ua.VariantType.Double),
            "LastThreshold": await obj.add_variable(idx, "LastThreshold", float("nan"), ua.VariantType.Double),
            "LastEventId": await obj.add_variable(idx, "LastEventId", "", ua.VariantType.String),
            "LastSeq": await obj.add_variable(idx, "LastSeq", 0, ua.VariantType.Int64),
            "LastPartId": await obj.add_variable(idx, "LastPartId", "", ua.VariantType.String),
            "LastReason": await obj.add_variable(idx, "LastReason", "", ua.VariantType.String),
            "Health": await obj.add_variable(idx, "Health", "{}", ua.VariantType.String),
        }
        await nodes["ExpectedClass"].set_writable()
        counters_folder = await obj.add_folder(idx, "Counters")
        counters = {k: await counters_folder.add_variable(idx, k, int(v), ua.VariantType.Int64)
                    for k, v in st["counters"].items()}

        def trigger(parent) -> list:
            return [ua.Variant(bool(self.on_trigger()), ua.VariantType.Boolean)]
        await obj.add_method(idx, "Trigger", trigger, [], [ua.VariantType.Boolean])

        def trigger_part(parent, part_id) -> list:
            pid = part_id.Value
            payload = json.dumps({"part_id": pid if isinstance(pid, str) else None}).encode()
            return [ua.Variant(bool(self.on_trigger(payload)), ua.VariantType.Boolean)]
        await obj.add_method(idx, "TriggerPart", trigger_part, [ua.VariantType.String], [ua.VariantType.Boolean])

        class_id = nodes["ExpectedClass"].nodeid

        async def written(event, dispatcher) -> None:
            for wv in event.request_params.NodesToWrite:
                if wv.NodeId == class_id and wv.AttributeId == ua.AttributeIds.Value:
                    value = wv.Value.Value.Value
                    if isinstance(value, str):
                        self.on_class(value.encode())
                    else:
                        log.warning("OPC UA: ExpectedClass written with %r, not a string: ignored", value)
        server.subscribe_server_callback(CallbackType.PostWrite, written)

        async with server:
            self._loop, self._queue = asyncio.get_running_loop(), asyncio.Queue()
            self.state = said.state = {"state": "serving", "url": self.url, "security": self.s.security,
                                       "max_clients": self.s.max_clients, **said.counts()}
            if self._down:
                self._down = False
                log.warning("OPC UA: serving now on %s (it could not serve before)", self.url)
            self._started.set()
            next_log = 0.0
            while True:
                try:
                    ev = await asyncio.wait_for(self._queue.get(), 1.0)
                except asyncio.TimeoutError:
                    ev = False
                if ev is None:
                    break
                try:
                    await self._update(nodes, counters, ev)
                except Exception as e:  # one update that fails must not end the server: said, and it serves on
                    now = time.monotonic()
                    if now >= next_log:
                        next_log = now + UPDATE_LOG_S
                        log.error("OPC UA: updating the station's variables failed (said at most every %.0f s): "
                                  "%s: %s; the server serves on", UPDATE_LOG_S, type(e).__name__, e)

    async def _update(self, nodes: dict, counters: dict, ev) -> None:
        """The last event (when `ev` is one), the status heartbeat and the counters to the nodes."""
        from asyncua import ua
        if ev:
            await nodes["LastVerdict"].write_value(ev["verdict"])
            for name, key in (("LastScore", "score"), ("LastThreshold", "threshold")):
                v = ev.get(key)
                await nodes[name].write_value(float("nan") if v is None else float(v),
                                              ua.VariantType.Double)
            await nodes["LastEventId"].write_value(ev["event_id"])
            await nodes["LastSeq"].write_value(int(ev["seq"]), ua.VariantType.Int64)
            await nodes["LastPartId"].write_value(ev.get("part_id") or "")
            await nodes["LastReason"].write_value(reason(ev))
        st = self.status_of()
        await nodes["Health"].write_value(json.dumps(st, default=str))
        if await nodes["ExpectedClass"].read_value() != st["expected_class"]:
            await nodes["ExpectedClass"].write_value(st["expected_class"])
        for k, node in counters.items():
            await node.write_value(int(st["counters"].get(k, 0)), ua.VariantType.Int64)


class _Refusals(logging.Filter):
    """asyncua's line for each connection refused at max_clients, or closed for opening no session,
    counted into the server's `state` and said at most every REFUSED_LOG_S instead (a client that
    opens connections without end would otherwise write one line for each)."""

    KINDS = {"Refusing connection": "connections_refused", "Closing idle connection": "idle_closed",
             "Closing oversized connection": "chunks_refused"}

    def __init__(self, limit: int, state: dict) -> None:
        super().__init__()
        self.limit, self.state = limit, state
        self.total = dict.fromkeys(self.KINDS.values(), 0)
        self._unsaid = dict.fromkeys(self.KINDS.values(), 0)
        self._next = dict.fromkeys(self.KINDS.values(), 0.0)

    def counts(self) -> dict:
        return dict(self.total)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        kind = next((k for start, k in self.KINDS.items() if msg.startswith(start)), None)
        if kind is None:
            return True
        self.total[kind] += 1
        self._unsaid[kind] += 1
        self.state[kind] = self.total[kind]
        now = time.monotonic()
        if now >= self._next[kind]:
            self._next[kind] = now + REFUSED_LOG_S
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            if kind == "connections_refused":
                log.warning("OPC UA: %d connection(s) refused, the last from %s: opcua.max_clients (%d) were open "
                            "(a client that opens connections without end, or more clients than that; said at most "
                            "every %.0f s)", self._unsaid[kind], peer, self.limit, REFUSED_LOG_S)
            elif kind == "chunks_refused":
                log.warning("OPC UA: %d connection(s) closed that sent a message chunk over %d bytes, the last from %s "
                            "(not an OPC UA client, or a hostile one; said at most every %.0f s)", self._unsaid[kind],
                            MAX_CHUNK_BYTES, peer, REFUSED_LOG_S)
            else:
                log.warning("OPC UA: %d connection(s) closed that opened no session within %.0f s, the last from %s "
                            "(said at most every %.0f s)", self._unsaid[kind], ACTIVATION_S, peer, REFUSED_LOG_S)
            self._unsaid[kind] = 0
        return False


def _bound_chunks() -> None:
    """asyncua's server reads a message chunk whole before it checks its size against the receive
    buffer, appending each read to all it holds: a header announcing 4 GB, then bytes, grew the agent
    by 200 MB in 8 s and made inspection a hundred times slower (the GIL held while copying). What it
    holds after each read is at most one incomplete chunk; more than MAX_CHUNK_BYTES closes the
    connection (said through asyncua's logger, counted by `_Refusals`). Patched once, in place."""
    from asyncua.server import binary_server_asyncio as bsa
    cls = bsa.OPCUAProtocol
    if getattr(cls.data_received, "bounded", False):
        return
    original = cls.data_received

    def data_received(self, data: bytes) -> None:
        original(self, data)
        if len(self._buffer) > MAX_CHUNK_BYTES and self.transport is not None:
            self._buffer = b""
            bsa._logger.warning("Closing oversized connection from %s: a chunk over %d bytes", self.peer_name,
                                MAX_CHUNK_BYTES)
            self.transport.close()
    data_received.bounded = True
    cls.data_received = data_received


class _Users:
    """The one configured user (password compared in constant time); anonymous only when no
    user is configured (security None)."""

    def __init__(self, settings) -> None:
        self.username = settings.username
        self.password = settings.password.get_secret_value() if settings.password else ""

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole
        if self.username is None:
            return User(role=UserRole.User)
        if username == self.username and hmac.compare_digest((password or "").encode(), self.password.encode()):
            return User(role=UserRole.User, name=username)
        return None
