"""Pairing: numeric comparison with a commitment (SPEC §9).

Six fixed-size records, remote (R) and pump (P)::

    R -> P  PAIR_REQUEST         0x10 || S_r (32)
    P -> R  PAIR_COMMIT          0x11 || S_p (32) || C_p (32)
    R -> P  PAIR_REMOTE_NONCE    0x12 || N_r (16)
    P -> R  PAIR_PUMP_NONCE      0x13 || N_p (16)
            ... both show the 6-digit code; the user compares ...
    R -> P  PAIR_REMOTE_CONFIRM  0x14 || M_r (16)
    P -> R  PAIR_PUMP_CONFIRM    0x15 || M_p (16)    (only after the user confirmed on the pump)

The pump commits to its nonce (``C_p``) before it sees the remote's, and the
remote reveals its nonce before it sees the pump's, so a man in the middle
must fix both of its nonces before learning the code either side will show:
the two codes then match with probability exactly 10^-6 (SPEC §9.4).  The
code is derived from the whole transcript hash, which includes both static
keys, so a successful comparison authenticates the exchanged keys.  ``M_r``
and ``M_p`` are key confirmations under a key derived from ``ss``: each side
proves it holds the private key it announced.

Both classes are state machines with one method per event.  A record that
fails a check (key validation, commitment, confirmation) moves them to FAILED
for good (sticky, like h11's ERROR state); a record of the wrong type for the
current state is refused without changing anything.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .errors import AuthenticationFailed, LocalProtocolError, MalformedRecord, ProtocolError
from .primitives import (
    RandomBytes,
    check_x25519_public,
    constant_time_equal,
    hkdf_sha256,
    sha256,
    x25519,
    x25519_public_bytes,
)
from .wire import (
    HASH_LEN,
    LABEL_PAIR_COMMIT,
    LABEL_PAIR_CONFIRM,
    LABEL_PAIR_SAS,
    PAIR_CONFIRM_LEN,
    PAIR_NONCE_LEN,
    SAS_DIGITS,
    SUITE_NAME,
    X25519_KEY_LEN,
    RecordType,
)

_SAS_MODULUS = 10**SAS_DIGITS
# Largest multiple of 10^6 below 2^32: values at or above it are rejected so
# the code is exactly uniform (no modulo bias).
_SAS_ACCEPT_BELOW = (2**32 // _SAS_MODULUS) * _SAS_MODULUS
_SAS_CANDIDATES = 16


class PairingState(enum.Enum):
    #: Nothing sent or received yet.
    IDLE = enum.auto()
    #: Remote: PAIR_REQUEST sent.  Pump: PAIR_COMMIT sent.
    AWAIT_COMMIT = enum.auto()
    AWAIT_REMOTE_NONCE = enum.auto()
    #: Remote: PAIR_REMOTE_NONCE sent, waiting for the pump's nonce.
    AWAIT_PUMP_NONCE = enum.auto()
    #: Both nonces known, code shown; waiting for the user / the confirmations.
    COMPARING = enum.auto()
    #: Remote: PAIR_REMOTE_CONFIRM sent.
    AWAIT_PUMP_CONFIRM = enum.auto()
    #: Pairing done; the result may be stored.
    PAIRED = enum.auto()
    #: A check failed or the user refused.  Sticky.
    FAILED = enum.auto()


@dataclass(frozen=True)
class PairingResult:
    """What each side stores: the peer's authenticated static public key."""

    peer_static: bytes
    #: The 6-digit code both sides showed, for the record (it is public by now).
    code: str


def _transcript_start() -> bytes:
    return sha256(SUITE_NAME + b" pair")


def _commitment(pump_static: bytes, remote_static: bytes, pump_nonce: bytes) -> bytes:
    """C_p = H(LABEL_PAIR_COMMIT || S_p || S_r || N_p)."""
    return sha256(LABEL_PAIR_COMMIT + pump_static + remote_static + pump_nonce)


def comparison_code(transcript_hash: bytes) -> str:
    """The 6-digit code both sides display, from the transcript hash (SPEC §9.3).

    okm = HKDF(salt=h4, ikm="", info=LABEL_PAIR_SAS, L=64); the first of its
    16 big-endian 32-bit words below 4294000000, modulo 10^6, zero-padded.

    Raises:
        AuthenticationFailed: all 16 words rejected (probability < 2^-121);
            both sides fail alike and the user pairs again.
    """
    okm = hkdf_sha256(
        salt=transcript_hash, ikm=b"", info=LABEL_PAIR_SAS, length=4 * _SAS_CANDIDATES
    )
    for offset in range(0, len(okm), 4):
        word = int.from_bytes(okm[offset : offset + 4], "big")
        if word < _SAS_ACCEPT_BELOW:
            return f"{word % _SAS_MODULUS:0{SAS_DIGITS}d}"
    raise AuthenticationFailed("no unbiased comparison code; pair again")


def _confirm_tag(shared: bytes, transcript_hash: bytes, role: bytes) -> bytes:
    """M = HMAC-SHA256(k_c, role || h4)[:16] with
    k_c = HKDF(salt=h4, ikm=ss, info=LABEL_PAIR_CONFIRM, L=32)."""
    key = hkdf_sha256(salt=transcript_hash, ikm=shared, info=LABEL_PAIR_CONFIRM, length=HASH_LEN)
    return hmac.digest(key, role + transcript_hash, "sha256")[:PAIR_CONFIRM_LEN]


def _expect(record: bytes, record_type: RecordType, length: int) -> bytes:
    """Check type and exact length; return the body."""
    if len(record) != 1 + length or record[0] != record_type:
        raise MalformedRecord(f"not a {record_type.name}")
    return record[1:]


class _PairingSide:
    """What both roles share: the transcript, the state and sticky failure."""

    def __init__(self, local_static: X25519PrivateKey, random_bytes: RandomBytes) -> None:
        self._static = local_static
        self._static_public = x25519_public_bytes(local_static)
        self._random_bytes = random_bytes
        self._hash = _transcript_start()
        self._peer_static = b""
        self._shared = b""
        self._nonce = b""
        #: Remote only: the pump's commitment C_p, opened by its nonce later.
        self._commitment = b""
        self.state = PairingState.IDLE
        #: The comparison code, once both nonces are known.
        self.code: str | None = None

    def _absorb(self, record: bytes) -> None:
        self._hash = sha256(self._hash + record)

    def _require(self, state: PairingState) -> None:
        if self.state is not state:
            if self.state is PairingState.FAILED:
                raise LocalProtocolError("pairing already failed; start a new one")
            raise MalformedRecord(f"pairing message not expected in state {self.state.name}")

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        self.state = PairingState.FAILED
        return exc

    def abort(self) -> None:
        """The user refused, or a timeout ran out."""
        self.state = PairingState.FAILED

    def _result(self) -> PairingResult:
        assert self.code is not None
        return PairingResult(peer_static=self._peer_static, code=self.code)


class PairingInitiator(_PairingSide):
    """The remote's side.

    Call :meth:`start`, feed the pump's records to :meth:`receive_commit`,
    :meth:`receive_pump_nonce` (which yields the code to show), then, once
    the user agreed the codes match, :meth:`confirm`; finally
    :meth:`receive_pump_confirm` returns the :class:`PairingResult`.
    """

    def start(self) -> bytes:
        self._require(PairingState.IDLE)
        record = bytes((RecordType.PAIR_REQUEST,)) + self._static_public
        self._absorb(record)
        self.state = PairingState.AWAIT_COMMIT
        return record

    def receive_commit(self, record: bytes) -> bytes:
        """Take PAIR_COMMIT, return PAIR_REMOTE_NONCE."""
        self._require(PairingState.AWAIT_COMMIT)
        try:
            body = _expect(record, RecordType.PAIR_COMMIT, 2 * X25519_KEY_LEN)
            pump_static = body[:X25519_KEY_LEN]
            self._shared = x25519(self._static, pump_static)
        except ProtocolError as exc:
            raise self._fail(exc) from None
        self._peer_static = pump_static
        self._commitment = body[X25519_KEY_LEN:]
        self._absorb(record)
        self._nonce = self._random_bytes(PAIR_NONCE_LEN)
        reply = bytes((RecordType.PAIR_REMOTE_NONCE,)) + self._nonce
        self._absorb(reply)
        self.state = PairingState.AWAIT_PUMP_NONCE
        return reply

    def receive_pump_nonce(self, record: bytes) -> str:
        """Take PAIR_PUMP_NONCE, check the commitment, return the code to show."""
        self._require(PairingState.AWAIT_PUMP_NONCE)
        try:
            pump_nonce = _expect(record, RecordType.PAIR_PUMP_NONCE, PAIR_NONCE_LEN)
            expected = _commitment(self._peer_static, self._static_public, pump_nonce)
            if not constant_time_equal(expected, self._commitment):
                raise AuthenticationFailed("pump nonce does not open its commitment")
            self._absorb(record)
            self.code = comparison_code(self._hash)
        except ProtocolError as exc:
            raise self._fail(exc) from None
        self.state = PairingState.COMPARING
        return self.code

    def confirm(self) -> bytes:
        """The user saw the same code on both screens: return PAIR_REMOTE_CONFIRM."""
        self._require(PairingState.COMPARING)
        self.state = PairingState.AWAIT_PUMP_CONFIRM
        tag = _confirm_tag(self._shared, self._hash, b"remote")
        return bytes((RecordType.PAIR_REMOTE_CONFIRM,)) + tag

    def receive_pump_confirm(self, record: bytes) -> PairingResult:
        """Take PAIR_PUMP_CONFIRM: the pump's user confirmed and the pump stored us."""
        self._require(PairingState.AWAIT_PUMP_CONFIRM)
        try:
            tag = _expect(record, RecordType.PAIR_PUMP_CONFIRM, PAIR_CONFIRM_LEN)
            if not constant_time_equal(tag, _confirm_tag(self._shared, self._hash, b"pump")):
                raise AuthenticationFailed("pump confirmation did not verify")
        except ProtocolError as exc:
            raise self._fail(exc) from None
        self.state = PairingState.PAIRED
        return self._result()


class PairingResponder(_PairingSide):
    """The pump's side.  Create one only when the user put the pump in pairing mode.

    :meth:`receive_request` -> PAIR_COMMIT; :meth:`receive_remote_nonce` ->
    PAIR_PUMP_NONCE and the code to display; :meth:`receive_remote_confirm`;
    then, when the user pressed "confirm" on the front panel,
    :meth:`user_confirmed` returns the result to store *before* sending the
    PAIR_PUMP_CONFIRM it also returns.
    """

    def __init__(self, local_static: X25519PrivateKey, random_bytes: RandomBytes) -> None:
        super().__init__(local_static, random_bytes)
        self._remote_confirmed = False

    @property
    def remote_confirmed(self) -> bool:
        """True once the remote's key confirmation verified."""
        return self._remote_confirmed

    def receive_request(self, record: bytes) -> bytes:
        """Take PAIR_REQUEST, return PAIR_COMMIT."""
        self._require(PairingState.IDLE)
        try:
            remote_static = _expect(record, RecordType.PAIR_REQUEST, X25519_KEY_LEN)
            check_x25519_public(remote_static)
            self._shared = x25519(self._static, remote_static)
        except ProtocolError as exc:
            raise self._fail(exc) from None
        self._peer_static = remote_static
        self._absorb(record)
        self._nonce = self._random_bytes(PAIR_NONCE_LEN)
        commitment = _commitment(self._static_public, remote_static, self._nonce)
        reply = bytes((RecordType.PAIR_COMMIT,)) + self._static_public + commitment
        self._absorb(reply)
        self.state = PairingState.AWAIT_REMOTE_NONCE
        return reply

    def receive_remote_nonce(self, record: bytes) -> tuple[bytes, str]:
        """Take PAIR_REMOTE_NONCE; return PAIR_PUMP_NONCE and the code to display."""
        self._require(PairingState.AWAIT_REMOTE_NONCE)
        try:
            _expect(record, RecordType.PAIR_REMOTE_NONCE, PAIR_NONCE_LEN)
            self._absorb(record)
            reply = bytes((RecordType.PAIR_PUMP_NONCE,)) + self._nonce
            self._absorb(reply)
            self.code = comparison_code(self._hash)
        except ProtocolError as exc:
            raise self._fail(exc) from None
        self.state = PairingState.COMPARING
        return reply, self.code

    def receive_remote_confirm(self, record: bytes) -> None:
        """Take PAIR_REMOTE_CONFIRM: the remote's user agreed and it holds its key."""
        self._require(PairingState.COMPARING)
        try:
            tag = _expect(record, RecordType.PAIR_REMOTE_CONFIRM, PAIR_CONFIRM_LEN)
            if not constant_time_equal(tag, _confirm_tag(self._shared, self._hash, b"remote")):
                raise AuthenticationFailed("remote confirmation did not verify")
        except ProtocolError as exc:
            raise self._fail(exc) from None
        self._remote_confirmed = True

    def user_confirmed(self) -> tuple[PairingResult, bytes]:
        """The user pressed "confirm" on the pump.  Store the result, then send the record.

        Raises:
            LocalProtocolError: the remote's confirmation has not verified yet.
        """
        self._require(PairingState.COMPARING)
        if not self._remote_confirmed:
            raise LocalProtocolError("remote has not confirmed yet")
        self.state = PairingState.PAIRED
        tag = _confirm_tag(self._shared, self._hash, b"pump")
        return self._result(), bytes((RecordType.PAIR_PUMP_CONFIRM,)) + tag
