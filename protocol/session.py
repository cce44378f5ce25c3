"""Protected records under established session keys (SPEC §7).

A DATA record is::

    type (1) = 0x03 || counter (4, big-endian) || AES-CCM ciphertext || tag (8)
    nonce = type || counter || iv (8)         -- 13 bytes

The header *is* the first five bytes of the nonce, so it is authenticated
without associated data: change a header bit and the nonce changes and the
tag fails.  Keys and IVs are per direction and per session (SPEC §6.4), so
a record is bound to its session and its direction by its key alone; a
record reflected back to its sender, or replayed into another session,
fails authentication.

This is the per-frame hot path.  It does the minimum in Python: one struct
operation, one concatenation for the nonce, the AEAD call, and the replay
window.  The AEAD objects are built once per session.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag

from .errors import (
    AuthenticationFailed,
    CounterExhausted,
    LocalProtocolError,
    MalformedRecord,
    ReplayRefused,
)
from .primitives import aead
from .wire import (
    AEAD_KEY_LEN,
    COUNTER_LIMIT,
    HASH_LEN,
    HEADER_LEN,
    IV_LEN,
    MAX_PLAINTEXT_LEN,
    REKEY_AFTER_RECORDS,
    REPLAY_WINDOW,
    SESSION_MAX_AGE_S,
    SESSION_REKEY_AFTER_S,
    TAG_LEN,
    RecordType,
)

_HEADER: Final = struct.Struct(">BI")
_DATA: Final = int(RecordType.DATA)
_MIN_RECORD_LEN: Final = HEADER_LEN + TAG_LEN
_WINDOW_MASK: Final = (1 << REPLAY_WINDOW) - 1


@dataclass(frozen=True, repr=False)
class SessionKeys:
    """What a completed handshake yields for one side (SPEC §6.4).

    ``repr`` is suppressed so keys never reach a log by accident.
    """

    send_key: bytes
    send_iv: bytes
    receive_key: bytes
    receive_iv: bytes
    #: Transcript hash: a public, unique name for the session (for logs).
    session_hash: bytes

    def __post_init__(self) -> None:
        if not (
            len(self.send_key) == len(self.receive_key) == AEAD_KEY_LEN
            and len(self.send_iv) == len(self.receive_iv) == IV_LEN
            and len(self.session_hash) == HASH_LEN
        ):
            raise LocalProtocolError("session key material has the wrong sizes")

    def __repr__(self) -> str:
        return f"SessionKeys(session={self.session_hash[:4].hex()})"


class SecureSession:
    """Seals outgoing and opens incoming DATA records for one session.

    Args:
        keys: from :mod:`protocol.handshake`.
        established_at: the caller's monotonic clock when the handshake completed.
        counter_limit: refuse counters at or above this; may only be *lower*
            than :data:`~protocol.wire.COUNTER_LIMIT` (tests use this to reach
            exhaustion quickly; lowering a limit only ever refuses more).

    The anti-replay window (SPEC §7.3) lives here rather than in a class of
    its own because it is on the hot path and a Python method call costs a
    third of an AES-CCM call.  It is the bitmap of RFC 4303 §3.4.3 / RFC 6479
    §2: ``_top`` is the highest counter accepted, bit ``i`` of ``_bitmap``
    says whether ``_top - i`` was accepted.  With a 64-counter window the
    bitmap is one ``uint64_t`` in C, so RFC 6479's ring of blocks (which
    avoids shifting very wide windows) is not needed.
    """

    __slots__ = (
        "_bitmap",
        "_open",
        "_receive_iv",
        "_seal",
        "_send_counter",
        "_send_iv",
        "_top",
        "counter_limit",
        "established_at",
        "session_hash",
    )

    def __init__(
        self, keys: SessionKeys, *, established_at: float, counter_limit: int = COUNTER_LIMIT
    ) -> None:
        if not 0 < counter_limit <= COUNTER_LIMIT:
            raise LocalProtocolError("counter_limit may only lower the protocol's limit")
        self._seal = aead(keys.send_key).encrypt
        self._open = aead(keys.receive_key).decrypt
        self._send_iv = keys.send_iv
        self._receive_iv = keys.receive_iv
        self._send_counter = 0
        # -1: nothing accepted yet, so counter 0 is "newer than top".
        self._top = -1
        self._bitmap = 0
        self.counter_limit = counter_limit
        self.established_at = established_at
        self.session_hash = keys.session_hash

    @property
    def records_sent(self) -> int:
        return self._send_counter

    @property
    def highest_received(self) -> int:
        """Highest counter accepted so far, or -1."""
        return self._top

    def needs_rekey(self, now: float) -> bool:
        """True once this session should be replaced by a new handshake (SPEC §8)."""
        return (
            self._send_counter >= min(REKEY_AFTER_RECORDS, self.counter_limit // 2)
            or now - self.established_at >= SESSION_REKEY_AFTER_S
        )

    def expired(self, now: float) -> bool:
        """True once this session must no longer be used at all (SPEC §8)."""
        return now - self.established_at >= SESSION_MAX_AGE_S

    def seal(self, plaintext: bytes) -> bytes:
        """Protect ``plaintext`` as the next DATA record.

        Raises:
            CounterExhausted: no counter is left; run a new handshake.
            LocalProtocolError: plaintext longer than MAX_PLAINTEXT_LEN.
        """
        counter = self._send_counter
        if counter >= self.counter_limit:
            raise CounterExhausted("send counter exhausted; rekey")
        if len(plaintext) > MAX_PLAINTEXT_LEN:
            raise LocalProtocolError("plaintext too long for one record")
        # Advance before sealing: a counter is never used twice, even if the
        # AEAD call were to raise after consuming it.
        self._send_counter = counter + 1
        header = _HEADER.pack(_DATA, counter)
        return header + self._seal(header + self._send_iv, plaintext, None)

    def open(self, record: bytes) -> bytes:
        """Authenticate and decrypt one DATA record; return its plaintext.

        A refused record changes no state: the window is *consulted* before
        the tag check, to drop replays without an AEAD call (RFC 4303
        §3.4.3), and *changed* only after the tag verified.

        Raises:
            MalformedRecord: too short, or not a DATA record.
            ReplayRefused: counter seen before, older than the window, or at
                or past the limit.
            AuthenticationFailed: the tag did not verify.
        """
        if len(record) < _MIN_RECORD_LEN or record[0] != _DATA:
            raise MalformedRecord("not a DATA record")
        counter = _HEADER.unpack_from(record)[1]
        top = self._top
        if counter > top:
            if counter >= self.counter_limit:
                raise ReplayRefused("counter past the limit")
        else:
            offset = top - counter
            if offset >= REPLAY_WINDOW:
                raise ReplayRefused("counter older than the window")
            if (self._bitmap >> offset) & 1:
                raise ReplayRefused("counter already seen")
        try:
            plaintext = self._open(
                record[:HEADER_LEN] + self._receive_iv, record[HEADER_LEN:], None
            )
        except InvalidTag:
            raise AuthenticationFailed("record tag did not verify") from None
        # Authenticated: now, and only now, move the window.
        if counter > top:
            shift = counter - top
            self._bitmap = (
                ((self._bitmap << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
            )
            self._top = counter
        else:
            self._bitmap |= 1 << (top - counter)
        return plaintext
