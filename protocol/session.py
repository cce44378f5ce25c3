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
# REPLAY_WINDOW is a power of two, so ``counter & _SLOT_MASK`` is ``counter % REPLAY_WINDOW``.
_SLOT_MASK: Final = REPLAY_WINDOW - 1


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
    fifth of an AES-CCM call.  It accepts exactly what the bitmap of RFC 4303
    §3.4.3 / RFC 6479 §2 accepts, stored as 64 slots instead of 64 bits:
    ``_seen[c % 64]`` is the last counter accepted with those low six bits.
    Inside the window ``(top - 64, top]`` each residue occurs once, so ``c``
    was accepted iff its slot holds ``c``; no shifting is needed, which is
    what makes it faster here (in C, a ``uint64_t`` bitmap is as good).
    """

    __slots__ = (
        "_open",
        "_receive_iv",
        "_seal",
        "_seen",
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
        self._seen = [-1] * REPLAY_WINDOW
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

    def check_counter(self, counter: int) -> None:
        """Raise :class:`ReplayRefused` unless a record with ``counter`` could be accepted.

        Read-only: it changes nothing, so it may run before the tag is checked.
        """
        top = self._top
        if counter > top:
            if counter >= self.counter_limit:
                raise ReplayRefused("counter past the limit")
        elif top - counter >= REPLAY_WINDOW:
            raise ReplayRefused("counter older than the window")
        elif self._seen[counter & _SLOT_MASK] == counter:
            raise ReplayRefused("counter already seen")

    def __copy__(self) -> SecureSession:
        # Two copies of a session would send under the same counters (nonce
        # reuse) and accept the same record twice.  There is no safe copy.
        raise LocalProtocolError("a SecureSession cannot be copied")

    def __deepcopy__(self, memo: object) -> SecureSession:
        return self.__copy__()

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
        self.check_counter(counter)
        try:
            plaintext: bytes | None = self._open(
                record[:HEADER_LEN] + self._receive_iv, record[HEADER_LEN:], None
            )
        except InvalidTag:
            plaintext = None
        if plaintext is None:
            # Raised outside the except block: no exception context to build.
            raise AuthenticationFailed("record tag did not verify")
        # Authenticated: now, and only now, move the window.
        self._seen[counter & _SLOT_MASK] = counter
        if counter > self._top:
            self._top = counter
        return plaintext
