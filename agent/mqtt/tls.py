"""TLS for the link to the broker: its context, files renewed while the agent runs, and the
client certificate's end date.

A station's client certificate (`mqtt.tls_cert`, `mqtt.tls_key`) is renewed on disk while the
agent runs: by hand once a year, or by an ACME or step-ca agent every few hours. paho reads the
files once, so a renewed certificate was only used after a restart, and once the old one had
expired every reconnect was refused, as "closed the connection before accepting it". Here
`TlsFiles.refresh` reads the files again before each connection attempt when they have changed
(inode, size, modification time) into a new context, made whole before it is used: a renewal
caught half written (a new certificate beside the old key) keeps the context made before, is
said once, and is tried again at the next attempt. paho holds one context for good
(`tls_set_context` takes one, once), so it is given a `Renewable` one, whose `wrap_socket` is
the newest whole context's: a CA added to `mqtt.tls_ca` is trusted from the next attempt, and a
CA taken out of it (a compromised one) no longer is.

The client certificate's end date is read from the file (`cert_dates`, without a dependency),
shown in `status.mqtt.tls`, and said ahead: a warning at start and once a day from WARN_DAYS
before it, and an error once it has passed, by the station's clock.
"""
from __future__ import annotations

import calendar
import logging
import re
import ssl
import time
from pathlib import Path

from agent.mqtt.events import utc_seconds

log = logging.getLogger(__name__)

WARN_DAYS = 14            # the client certificate's end date is said from this many days before
WARN_EVERY_S = 86400.0    # ... again at most this often (a day)

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class CertificateError(ValueError):
    """A file that holds no certificate that can be read."""


def _tlv(der: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at `i`."""
    if i + 2 > len(der):
        raise CertificateError("truncated certificate")
    tag, n = der[i], der[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if not 0 < k <= 4 or i + k > len(der):
            raise CertificateError("bad length in certificate")
        n = int.from_bytes(der[i:i + k], "big")
        i += k
    if i + n > len(der):
        raise CertificateError("truncated certificate")
    return tag, i, i + n


def _time(tag: int, raw: bytes) -> float:
    """An X.509 time (UTCTime 0x17 or GeneralizedTime 0x18, UTC, 'Z') as seconds since the epoch."""
    s = raw.decode("ascii")
    if not s.endswith("Z"):
        raise CertificateError(f"time {s!r} is not UTC")
    if tag == 0x17:   # YYMMDDHHMM[SS]Z; years 50-99 are 19xx (RFC 5280)
        yy = int(s[:2])
        s = ("19" if yy >= 50 else "20") + s
    elif tag != 0x18:
        raise CertificateError("no validity time in certificate")
    digits = s[:-1].split(".")[0]
    if len(digits) == 12:
        digits += "00"
    if len(digits) != 14 or not digits.isdigit():
        raise CertificateError(f"time {s!r} cannot be read")
    return float(calendar.timegm(time.strptime(digits, "%Y%m%d%H%M%S")))


def der_dates(der: bytes) -> tuple[float, float]:
    """(not before, not after), in seconds since the epoch, of one DER-encoded X.509 certificate."""
    tag, i, _ = _tlv(der, 0)            # Certificate ::= SEQUENCE
    if tag != 0x30:
        raise CertificateError("not a certificate")
    tag, i, end = _tlv(der, i)          # tbsCertificate ::= SEQUENCE
    if tag != 0x30:
        raise CertificateError("not a certificate")
    tag, s, e = _tlv(der, i)
    if tag == 0xA0:                      # [0] version, optional
        i = e
    for _ in range(3):                   # serialNumber, signature algorithm, issuer
        _, s, i = _tlv(der, i)
    tag, i, end = _tlv(der, i)           # validity ::= SEQUENCE { notBefore, notAfter }
    if tag != 0x30:
        raise CertificateError("no validity in certificate")
    t0, s0, e0 = _tlv(der, i)
    t1, s1, e1 = _tlv(der, e0)
    return _time(t0, der[s0:e0]), _time(t1, der[s1:e1])


def cert_dates(path: str | Path) -> tuple[float, float]:
    """(not before, not after) of the first certificate in a PEM file (the station's own, ahead
    of any chain)."""
    m = _PEM.search(Path(path).read_bytes())
    if m is None:
        raise CertificateError(f"{path}: no PEM certificate")
    try:
        der = ssl.PEM_cert_to_DER_cert(m.group(0).decode("ascii"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CertificateError(f"{path}: {e}") from None
    return der_dates(der)


class EncryptedKey(ValueError):
    """A key file that needs a passphrase: the agent never asks for one."""


def load_client_cert(ctx: ssl.SSLContext, cert: str | Path, key: str | Path) -> None:
    """`ctx.load_cert_chain`, without OpenSSL's passphrase prompt: with none given it asks on the
    terminal ("Enter PEM pass phrase:"), which blocks an agent run by hand (and, at a renewal,
    paho's thread) and fails as "Invalid argument" under systemd."""
    def no_passphrase():
        raise EncryptedKey(f"{key} is encrypted (it needs a passphrase), and the agent cannot ask for one: store "
                           "the key unencrypted, readable only by the agent's user (openssl pkey -in KEY -out "
                           "KEY.plain, then chmod 600)")
    ctx.load_cert_chain(str(cert), str(key), password=no_passphrase)


def expiry_words(not_after: float, now: float) -> str:
    """'expired at <date>' or 'valid until <date> (n days)', by the clock reading `now`."""
    if now >= not_after:
        return f"expired at {utc_seconds(not_after)}"
    return f"valid until {utc_seconds(not_after)} ({(not_after - now) / 86400:.1f} days)"


class Renewable(ssl.SSLContext):
    """The context paho holds: each connection is wrapped by `current`, the context made whole
    of the files last loaded (TlsFiles.refresh replaces it). Itself it verifies like `current`
    (PROTOCOL_TLS_CLIENT: certificates and host name required), which paho reads to leave the
    host name check to the handshake."""

    def __new__(cls, current: ssl.SSLContext):
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self, current: ssl.SSLContext) -> None:
        self.current = current

    def wrap_socket(self, *args, **kwargs):
        return self.current.wrap_socket(*args, **kwargs)


class TlsFiles:
    """The `[mqtt]` settings' TLS files and the context made of them (paho's, through
    `tls_set_context`). `refresh` runs on paho's thread before each connection attempt;
    `check_expiry` on the publisher's pump."""

    def __init__(self, ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None,
                 wall=time.time, mono=time.monotonic) -> None:
        self.ca, self.cert, self.key = Path(ca), Path(cert) if cert else None, Path(key) if key else None
        self.wall, self.mono = wall, mono
        self.reloads = 0                    # renewed files loaded while running
        self.refused: str | None = None     # why changed files were not loaded (until they are)
        self.not_after: float | None = None
        self._sig = self._signature()
        self._refused_sig: tuple | None = None
        self.context = Renewable(self._build())
        self._read_dates()
        self._said_at: float | None = None  # monotonic time the end date was last said
        self._said_expired = False

    def _paths(self) -> list[Path]:
        return [p for p in (self.ca, self.cert, self.key) if p is not None]

    def _signature(self) -> tuple:
        sig = []
        for p in self._paths():
            try:
                st = p.stat()
                sig.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError as e:
                sig.append(e.errno)
        return tuple(sig)

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        if self.cert is not None:
            load_client_cert(ctx, self.cert, self.key)
        return ctx

    def _read_dates(self) -> None:
        if self.cert is None:
            return
        try:
            self.not_after = cert_dates(self.cert)[1]
        except (OSError, CertificateError) as e:
            self.not_after = None
            log.warning("mqtt.tls_cert %s: its end date cannot be read (%s); it is not said ahead", self.cert, e)

    def refresh(self) -> bool:
        """Load the files again if they changed since they were loaded; True when they were.
        Files that do not load whole are said once per change and left for the next attempt."""
        sig = self._signature()
        if sig == self._sig:
            return False
        try:
            fresh = self._build()            # all of it, before it is used
        except (OSError, ssl.SSLError, ValueError) as e:
            if sig != self._refused_sig:
                self._refused_sig = sig
                self.refused = (f"the TLS files changed and do not load ({e}); the ones loaded before are used, "
                                "and they are read again at the next connection attempt")
                log.error("MQTT: %s (%s)", self.refused, ", ".join(str(p) for p in self._paths()))
            return False
        self.context.current = fresh
        self._sig, self._refused_sig, self.refused = sig, None, None
        self.reloads += 1
        self._read_dates()
        self._said_at, self._said_expired = None, False
        log.warning("MQTT: renewed TLS files loaded (%s)%s; the next connection uses them",
                    ", ".join(str(p) for p in self._paths()),
                    f": the client certificate is {expiry_words(self.not_after, self.wall())}"
                    if self.not_after is not None else "")
        return True

    def check_expiry(self) -> None:
        """Say the client certificate's end date: an error once when it has passed, a warning
        from WARN_DAYS before it, at start and then at most every WARN_EVERY_S."""
        if self.not_after is None:
            return
        now, mono = self.wall(), self.mono()
        if now >= self.not_after:
            if not self._said_expired:
                self._said_expired = True
                log.error("MQTT: the client certificate mqtt.tls_cert %s %s by this station's clock (it reads %s): "
                          "the broker refuses it at the next connection. Renew the file; the agent loads it at its "
                          "next connection attempt, without a restart", self.cert, expiry_words(self.not_after, now),
                          utc_seconds(now))
            return
        if self.not_after - now > WARN_DAYS * 86400:
            return
        if self._said_at is None or mono - self._said_at >= WARN_EVERY_S:
            self._said_at = mono
            log.warning("MQTT: the client certificate mqtt.tls_cert %s is %s: renew it before then (the agent "
                        "loads a renewed file at its next connection attempt; said once a day)", self.cert,
                        expiry_words(self.not_after, now))

    def hint(self, alert: str | None) -> str:
        """Why a broker refused the handshake, for a TLS alert's text (from the socket's error)."""
        a = (alert or "").lower()
        if self.cert is None:
            if "certificate required" in a:
                return "the broker asks for a client certificate: set mqtt.tls_cert and mqtt.tls_key"
            return ""
        if not any(w in a for w in ("certificate", "unknown ca", "access denied", "decrypt error")):
            return ""
        now = self.wall()
        if self.not_after is not None and now >= self.not_after:
            return (f"the broker refused this station's client certificate (mqtt.tls_cert {self.cert}), which "
                    f"{expiry_words(self.not_after, now)} by this station's clock (it reads {utc_seconds(now)}): "
                    "renew it; the agent loads a renewed file at its next connection attempt")
        dates = f", {expiry_words(self.not_after, now)}" if self.not_after is not None else ""
        return (f"the broker refused this station's client certificate (mqtt.tls_cert {self.cert}{dates}): is it "
                "issued by a CA in the broker's cafile, and not revoked?")

    def status(self) -> dict:
        out: dict = {"ca": str(self.ca), "reloads": self.reloads, "refused": self.refused}
        if self.cert is not None:
            out["client_cert"] = str(self.cert)
            if self.not_after is not None:
                out["not_after"] = utc_seconds(self.not_after)
                out["days_left"] = round((self.not_after - self.wall()) / 86400, 2)
        return out


def alert_of(text: str | None) -> str | None:
    """The TLS alert named in a socket error's text ('sslv3 alert certificate expired'), if any."""
    if not text:
        return None
    m = re.search(r"alert [a-z0-9 _]+", text, re.I)
    return m.group(0).strip() if m else None

