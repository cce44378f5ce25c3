"""A remote on a :class:`~pumpguard.host.inmemory.Rig` without the client library.

:class:`RawRemote` speaks the protocol one record at a time: no retries, no
journal, no session management.  Testers use it for what the client would
never send (a record sealed now and released later, altered copies of its
own records, a request in a mode that refuses it); the benchmarks use it to
time an exchange with nothing around the two endpoints: the remote encodes,
seals and frames, the pump unframes, opens, dispatches, persists and
answers, and the remote unframes, opens and decodes.

The pump's main loop is not run between records (:meth:`RawRemote.send_frame`
calls no ``tick``), so the clock stands still unless the caller moves it
(``rig.clock.now``, ``rig.advance``, ``rig.press``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pumpguard.firmware_sim.panel import Button
from pumpguard.protocol import (
    FrameDecoder,
    HandshakeInitiator,
    History,
    HistoryRequest,
    Message,
    PairingInitiator,
    RandomBytes,
    SecureSession,
    Status,
    StatusRequest,
    audit_entry,
    decode_message,
    encode_frame,
    encode_message,
    paired_peer,
    wire,
    x25519_private,
)

from .inmemory import Rig
from .keystore import KeyStore

__all__ = ["NoAnswer", "RawRemote"]

#: The first request id: a 16-bit value, as the client's random start, so
#: requests are as long in CBOR as the client's (3 bytes for the id).
_FIRST_REQUEST_ID = 0x1234


class NoAnswer(AssertionError):
    """The pump did not answer a record the way the caller expects."""


class RawRemote:
    """A remote's static key, and a session once :meth:`handshake` made one.

    Args:
        rig: the pump to talk to.
        random_bytes: the remote's randomness (a new key's, pairing's, handshakes').
        static: the remote's key; ``None`` makes one from ``random_bytes``.
        pump_static: the paired pump's public key, known after :meth:`pair`.
    """

    def __init__(
        self,
        rig: Rig,
        *,
        random_bytes: RandomBytes,
        static: X25519PrivateKey | None = None,
        pump_static: bytes | None = None,
    ) -> None:
        self.rig = rig
        self.random = random_bytes
        self.static = static or x25519_private(random_bytes(wire.X25519_KEY_LEN))
        self.pump_static = pump_static
        self._live: SecureSession | None = None
        self._decoder = FrameDecoder()
        self._request_ids = itertools.count(_FIRST_REQUEST_ID)
        #: Bytes that crossed the link each way so far (frames, delimiters included).
        self.bytes_to_pump = 0
        self.bytes_from_pump = 0
        #: Requests made so far with :meth:`exchange`.
        self.exchanges = 0

    @classmethod
    def from_keys(cls, rig: Rig, path: Path, *, random_bytes: RandomBytes) -> RawRemote:
        """The remote whose keys directory, paired by a client, is ``path``."""
        keys = KeyStore.open(path)
        pairing = keys.pairing()
        if pairing is None:
            raise ValueError(f"{path} holds no pairing")
        return cls(
            rig,
            random_bytes=random_bytes,
            static=keys.remote_static(),
            pump_static=pairing.pump_static,
        )

    # --- the link ---------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> bytes:
        """Bytes into the pump; return every byte it answers with."""
        pump = self.rig.pump
        pump.receive_data(frame, self.rig.clock.now)
        reply = pump.data_to_send()
        self.bytes_to_pump += len(frame)
        self.bytes_from_pump += len(reply)
        return reply

    def send(self, record: bytes) -> list[bytes]:
        """Frame ``record`` and send it; return every record that comes back."""
        self._decoder.receive_data(self.send_frame(encode_frame(record)))
        return list(iter(self._decoder.next_record, None))

    def send_record(self, record: bytes) -> bytes:
        """Send ``record``; return the one record that comes back."""
        replies = self.send(record)
        if len(replies) != 1:
            raise NoAnswer(f"{len(replies)} replies to a record of type 0x{record[0]:02x}")
        return replies[0]

    # --- pairing and handshake (SPEC §9, §6) --------------------------------------------

    def pair(self) -> str:
        """Pair through the six pairing records, the user at the pump comparing codes.

        The user opens pairing mode first (as the client's first request
        would make them); returns the code both sides showed.
        """
        self.rig.press(Button.PAIR)
        initiator = PairingInitiator(self.static, self.random)
        nonce = initiator.receive_commit(self.send_record(initiator.start()))
        code = initiator.receive_pump_nonce(self.send_record(nonce))
        self.rig.user.remote_code = code
        self.rig.tick()  # the user compares and confirms
        result = initiator.receive_pump_confirm(self.send_record(initiator.confirm()))
        self.pump_static = result.peer_static
        return code

    def handshake(self) -> bool:
        """A new session; False if the pump does not answer (the old session is kept)."""
        if self.pump_static is None:
            raise ValueError("not paired: no pump key to handshake with")
        peer = paired_peer(self.static, self.pump_static, local_is_remote=True)
        initiator = HandshakeInitiator(
            local_static=self.static, peer=peer, random_bytes=self.random
        )
        replies = self.send(initiator.start())
        if not replies:
            return False
        (reply,) = replies
        self._live = SecureSession(initiator.finish(reply), established_at=self.rig.clock.now)
        return True

    def connect(self) -> SecureSession:
        """A handshake, then a status exchange so the pump promotes the session (SPEC §8)."""
        if not self.handshake():
            raise NoAnswer("no answer to the handshake")
        self.status()
        return self.session

    # --- requests ---------------------------------------------------------------------

    @property
    def session(self) -> SecureSession:
        """The session of the last :meth:`handshake` (the pump may have dropped it since)."""
        if self._live is None:
            raise ValueError("no session: call handshake() first")
        return self._live

    def next_id(self) -> int:
        """A request id not used before in this session."""
        return next(self._request_ids) % (wire.MAX_REQUEST_ID + 1)

    def seal(self, message: Message) -> bytes:
        """``message`` as a DATA record of the session, not sent (the attacker holds it)."""
        return self.seal_plaintext(encode_message(message))

    def seal_plaintext(self, plaintext: bytes) -> bytes:
        return self.session.seal(plaintext)

    def open(self, records: list[bytes]) -> Message:
        """The message in the one DATA record of ``records``."""
        (record,) = records
        return decode_message(self.session.open(record))

    def ask(self, message: Message) -> Message | None:
        """Send ``message`` sealed; the pump's one answer, or None if it sent nothing."""
        replies = self.send(self.seal(message))
        return self.open(replies) if replies else None

    def exchange(self, message: Message) -> Message:
        """One request and its response, both sides, framing included.

        The benchmarks time this: it does no more than the two endpoints must.
        """
        self.exchanges += 1
        session = self.session
        self._decoder.receive_data(
            self.send_frame(encode_frame(session.seal(encode_message(message))))
        )
        reply = self._decoder.next_record()
        if reply is None:
            raise NoAnswer(f"no reply to {type(message).__name__}")
        return decode_message(session.open(reply))

    def status(self) -> Status:
        status = self.exchange(StatusRequest(self.next_id()))
        if not isinstance(status, Status):
            raise NoAnswer(f"status answered with {status!r}")
        return status

    def history(self, from_seq: int) -> list[audit_entry.AuditEntry]:
        """The audit entries from ``from_seq`` on, read over the session and verified."""
        audit_key = self.status().audit_key
        signed: list[bytes] = []
        while True:
            answer = self.exchange(HistoryRequest(self.next_id(), from_seq))
            if not isinstance(answer, History):
                raise NoAnswer(f"history answered with {answer!r}")
            if not answer.entry:
                break
            signed.append(answer.entry)
            from_seq = answer.next_seq
        return list(audit_entry.verify_entries(signed, audit_key).entries)
