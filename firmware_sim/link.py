"""The pump's end of the link: frames in, authenticated messages out (SPEC §3, §6, §7).

:class:`Link` owns everything between the UART and the command table: the
frame decoder, the outbox, the handshake responder, the current session and
the pending one (a handshake answered but not yet confirmed by the remote's
first DATA record, SPEC §6.4).  It knows which keys the pump trusts
(:meth:`Link.trust`, :meth:`Link.set_remotes`) and nothing of what a command
does.

Theory of operation
-------------------

Each record is looked at according to its type:

* ``DATA`` only under the current or pending session.  An authenticated
  plaintext that decodes is handed to the pump's ``on_command``, whose
  response is sealed under the same session: every request gets exactly one
  response (SPEC §12.1).  A plaintext that is not a message is answered
  ``refused malformed-request`` here, without the pump.
* ``HANDSHAKE_INIT`` only when a remote is paired; answered here
  (SPEC §6.5), and the new session stays pending until its first DATA record.
* ``PAIR_*`` are handed to the pump (its pairing mode decides, SPEC §9.5).

Everything else is dropped without a reply (SPEC §10.2, S12).  While no key
is trusted -- before :meth:`Link.trust`, or after :meth:`Link.distrust` in the
safe state (S8) -- every record is dropped unseen; a frame that does not
decode is still reported.

What the pump learns, besides commands, comes as events through the
``on_event`` callback, synchronously, while the record is being handled:
:class:`SessionConfirmed`, :class:`PairingRecordReceived` and
:class:`InputRejected` (S9, S10: the pump counts rejections for its audit
log and display).  The callback may refuse a pairing record by raising
:class:`~protocol.errors.RemoteProtocolError`; the record's verdict for the
``on_record`` hook (``accepted`` or ``refused (...)``) is given once, after
the pump has answered, which a pull API returning events one at a time could
not do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pumpguard.protocol import (
    AuthenticationFailed,
    FrameDecoder,
    FramingError,
    HandshakeResponder,
    MalformedRecord,
    Message,
    PairedPeer,
    ProtocolError,
    RandomBytes,
    RecordType,
    RefusalCode,
    Refused,
    RemoteProtocolError,
    SecureSession,
    decode_message,
    encode_frame,
    encode_message,
    paired_peer,
    wire,
)

log = logging.getLogger("pumpguard.pump")

#: Short names for refused inputs in the audit log's aggregated entry.
_REJECTION_KINDS = {
    "FramingError": "framing",
    "MalformedRecord": "malformed",
    "AuthenticationFailed": "bad-auth",
    "ReplayRefused": "replay",
    "HandshakeRefused": "hs-replay",
    "MalformedMessage": "bad-message",
}


@dataclass(frozen=True)
class CommandReceived:
    """A DATA record that authenticated and decoded to a message."""

    request: Message
    #: The static public key of the paired remote whose session carried it.
    remote: bytes


@dataclass(frozen=True)
class SessionConfirmed:
    """The remote's first DATA record under a new session arrived (SPEC §6.4).

    The old session's keys are gone; anything the pump issued under it (a
    bolus challenge) should go too.
    """

    remote: bytes


@dataclass(frozen=True)
class PairingRecordReceived:
    """A ``PAIR_*`` record, for the pump's pairing mode."""

    record: bytes


@dataclass(frozen=True)
class InputRejected:
    """A frame or record was refused; ``kind`` names why, for the audit log."""

    kind: str


LinkEvent = SessionConfirmed | PairingRecordReceived | InputRejected


@dataclass
class _LiveSession:
    session: SecureSession
    remote_static: bytes
    last_used: float


class Link:
    """Link bytes in, events and sealed replies out.  Never raises on link input."""

    def __init__(
        self,
        *,
        random_bytes: RandomBytes,
        on_command: Callable[[CommandReceived, float], Message],
        on_event: Callable[[LinkEvent, float], None],
    ) -> None:
        self._random_bytes = random_bytes
        self._on_command = on_command
        self._on_event = on_event
        self._decoder = FrameDecoder()
        self._outbox = bytearray()
        self._static: X25519PrivateKey | None = None
        self._responder: HandshakeResponder | None = None
        self._remotes: tuple[bytes, ...] = ()
        self._peers: list[PairedPeer] = []
        self._session: _LiveSession | None = None
        self._pending: _LiveSession | None = None
        #: Called for every record in and out: ``(direction, record, verdict)``.
        #: ``pumpsim -v`` logs it with :func:`protocol.describe_record`.
        self.on_record: Callable[[str, bytes, str], None] | None = None

    # --- keys ---------------------------------------------------------------------

    def trust(self, local_static: X25519PrivateKey, remotes: Sequence[bytes]) -> None:
        """Open the link: the pump's static key and its paired remotes (at boot)."""
        self._static = local_static
        self._responder = HandshakeResponder(
            local_static=local_static, random_bytes=self._random_bytes
        )
        self.set_remotes(remotes)

    def distrust(self) -> None:
        """Close the link: no key is trusted, every session ends (the safe state, S8)."""
        self._static = None
        self._responder = None
        self._remotes = ()
        self._peers = []
        self._session = self._pending = None

    def set_remotes(self, remotes: Sequence[bytes]) -> None:
        """The paired remotes changed: handshakes are checked against these from
        now on, and the sessions of a remote no longer listed end (S11)."""
        static = self._static
        if static is None:
            raise ValueError("the link trusts no key: call trust() first")
        self._remotes = tuple(remotes)
        self._peers = [
            paired_peer(static, remote, local_is_remote=False) for remote in self._remotes
        ]
        if self._session is not None and self._session.remote_static not in self._remotes:
            self._session = None
        if self._pending is not None and self._pending.remote_static not in self._remotes:
            self._pending = None

    # --- bytes in, bytes out --------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the link, handled record by record."""
        self._decoder.receive_data(data)
        while True:
            try:
                record = self._decoder.next_record()
            except FramingError as exc:
                self._trace("rx", b"", f"dropped: {exc}")
                self._on_event(InputRejected(_REJECTION_KINDS["FramingError"]), now)
                continue
            if record is None:
                return
            self._on_record(record, now)

    def data_to_send(self) -> bytes:
        """Bytes to write to the link (empties the outbox)."""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    def send(self, record: bytes) -> None:
        """Frame an unprotected record (pairing) for the link."""
        self._trace("tx", record, "sent")
        self._outbox += encode_frame(record)

    def expire(self, now: float) -> None:
        """Drop sessions past their age or idle for ``SESSION_IDLE_TIMEOUT_S`` (SPEC §8)."""
        if self._session is not None and (
            self._session.session.expired(now)
            or now - self._session.last_used > wire.SESSION_IDLE_TIMEOUT_S
        ):
            self._session = None
        if (
            self._pending is not None
            and now - self._pending.last_used > wire.SESSION_IDLE_TIMEOUT_S
        ):
            self._pending = None

    # --- records ------------------------------------------------------------------

    def _trace(self, direction: str, record: bytes, verdict: str) -> None:
        if self.on_record is not None:
            self.on_record(direction, record, verdict)

    def _on_record(self, record: bytes, now: float) -> None:
        if self._responder is None:
            return  # no key is trusted (the safe state): nothing is looked at
        kind = record[0]
        try:
            if kind == RecordType.DATA:
                self._on_data(record, now)
            elif kind == RecordType.HANDSHAKE_INIT:
                self._on_handshake(self._responder, record, now)
            elif RecordType.PAIR_REQUEST <= kind <= RecordType.PAIR_PUMP_CONFIRM:
                self._on_event(PairingRecordReceived(record), now)
            else:
                raise MalformedRecord("unknown record type")
        except RemoteProtocolError as exc:
            if log.isEnabledFor(logging.INFO):  # refusals are the flood path: keep it cheap
                log.info(
                    "refused %s record (%d bytes): %s",
                    _type_name(kind),
                    len(record),
                    type(exc).__name__,
                )
            self._on_event(InputRejected(_REJECTION_KINDS.get(type(exc).__name__, "other")), now)
            self._trace("rx", record, f"refused ({type(exc).__name__})")
            return
        self._trace("rx", record, "accepted")

    def _on_handshake(self, responder: HandshakeResponder, record: bytes, now: float) -> None:
        if not self._peers:
            raise AuthenticationFailed("no remote is paired")
        accepted = responder.respond(record, self._peers)
        # Pending until the remote's first DATA record proves it holds the keys.
        self._pending = _LiveSession(
            SecureSession(accepted.keys, established_at=now),
            self._remotes[accepted.peer_index],
            last_used=now,
        )
        self.send(accepted.reply)

    def _on_data(self, record: bytes, now: float) -> None:
        live = self._session
        plaintext: bytes | None = None
        if live is not None and not live.session.expired(now):
            try:
                plaintext = live.session.open(record)
            except RemoteProtocolError:
                # Maybe the first record of a new handshake's session.
                if self._pending is None:
                    raise
        if plaintext is None:
            pending = self._pending
            if pending is None:
                raise AuthenticationFailed("no session")
            plaintext = pending.session.open(record)
            # Key confirmation (SPEC §6.4): promote, forget the old session's keys.
            self._session, self._pending = pending, None
            live = pending
            self._on_event(SessionConfirmed(live.remote_static), now)
        assert live is not None
        live.last_used = now
        try:
            request = decode_message(plaintext)
        except ProtocolError:
            self._seal(live, Refused(0, RefusalCode.MALFORMED_REQUEST, 0))
            return
        log.info("command %s", type(request).__name__)
        self._seal(live, self._on_command(CommandReceived(request, live.remote_static), now))

    def _seal(self, live: _LiveSession, message: Message) -> None:
        self.send(live.session.seal(encode_message(message)))


def _type_name(kind: int) -> str:
    try:
        return RecordType(kind).name
    except ValueError:
        return f"0x{kind:02x}"
