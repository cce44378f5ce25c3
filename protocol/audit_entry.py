"""Audit-log entries: their byte form, their signing and their verification (SPEC §13.4).

An entry crosses the wire (one per History response, SPEC §12.2), so its
format lives in the protocol; the pump's flash ring that stores entries is
``firmware_sim/audit.py``, which builds and signs each entry with
:func:`sign_entry`.  :func:`verify_entries` checks them with the same
:func:`entry_digest` and needs only the pump's audit public key, which the
remote learns from a Status response.  Keys and bounds are in ``wire.py``.

Entry: the deterministic CBOR (RFC 8949 §4.2) of::

    audit-entry = {
      1 => uint .le 4294967295,          ; seq: 0, 1, 2, ... never reused
      2 => uint,                         ; uptime_ms: pump uptime (resets at boot)
      3 => tstr .size (1..32),           ; event
      4 => { * tstr .size (1..32) => int / tstr .size (0..64) / bstr .size (0..64) / bool },
      5 => bstr .size 32,                ; prev_hash: SHA-256 of the previous entry's
    }                                    ;   bytes; 32 zero bytes before seq 0

at most :data:`~wire.MAX_AUDIT_ENTRY_LEN` (136) bytes, signed by the pump's
Ed25519 audit key over ``SHA-256(entry)`` (:func:`entry_digest`).  The *signed
form* is ``entry || signature``, at most :data:`~wire.MAX_AUDIT_SIGNED_LEN`
(200) bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import AuditVerificationError, EntryMalformed, LocalProtocolError
from .primitives import sha256
from .timebase import seconds_from_ms
from .units import pulses_to_float_units
from .wire import (
    AUDIT_KEY_EVENT,
    AUDIT_KEY_FIELDS,
    AUDIT_KEY_PREV_HASH,
    AUDIT_KEY_SEQ,
    AUDIT_KEY_UPTIME_MS,
    ED25519_PUBLIC_LEN,
    ED25519_SIGNATURE_LEN,
    HASH_LEN,
    MAX_AUDIT_ENTRY_LEN,
    MAX_AUDIT_FIELDS,
    MAX_AUDIT_NAME_LEN,
    MAX_AUDIT_SEQ,
    MAX_AUDIT_VALUE_LEN,
    UINT64_MAX,
)

__all__ = [
    "GENESIS_HASH",
    "RESERVED_NAMES",
    "AuditEntry",
    "AuditVerificationError",
    "EntryMalformed",
    "FieldValue",
    "JsonValue",
    "VerifiedLog",
    "check_fields",
    "check_name",
    "check_uint",
    "check_value",
    "decode_entry",
    "encode_entry",
    "entry_digest",
    "sign_entry",
    "verify_entries",
]

FieldValue: TypeAlias = int | str | bytes | bool
JsonValue: TypeAlias = int | float | str | bool

#: prev_hash of seq 0.
GENESIS_HASH: Final = bytes(HASH_LEN)
#: The entry map's keys, exactly these.
_ENTRY_KEYS: Final = frozenset(
    {AUDIT_KEY_SEQ, AUDIT_KEY_UPTIME_MS, AUDIT_KEY_EVENT, AUDIT_KEY_FIELDS, AUDIT_KEY_PREV_HASH}
)
#: Most negative CBOR integer (major type 1 encodes ``-1 - n``, n <= UINT64_MAX).
_MIN_CBOR_INT: Final = -1 - UINT64_MAX

#: Top-level names of :meth:`AuditEntry.to_json`; a field may not use them.
RESERVED_NAMES: Final = frozenset({"seq", "uptime_ms", "event", "prev_hash"})


@dataclass(frozen=True)
class AuditEntry:
    """One decoded entry with the exact bytes it was signed as."""

    seq: int
    uptime_ms: int
    event: str
    fields: Mapping[str, FieldValue]
    prev_hash: bytes
    #: The deterministic CBOR entry (what ``prev_hash`` of the next one hashes).
    raw: bytes
    signature: bytes

    @property
    def signed(self) -> bytes:
        """The signed form ``raw || signature`` that :func:`verify_entries` takes."""
        return self.raw + self.signature

    @property
    def digest(self) -> bytes:
        """SHA-256 of :attr:`raw`: the next entry's ``prev_hash``."""
        return entry_digest(self.raw)

    def to_json(self) -> dict[str, JsonValue]:
        """A flat JSON object: ``seq``, ``uptime_ms``, ``event``, ``prev_hash``
        (hex) and every field at top level (bytes as lower-case hex).  A field
        counting pulses (``pulses``, ``requested_pulses``) also appears in
        units (``units``, ``requested_units``), as a number."""
        out: dict[str, JsonValue] = {}
        for name, value in self.fields.items():
            out[name] = value.hex() if isinstance(value, bytes) else value
            if name.endswith("pulses") and type(value) is int:
                out[name[: -len("pulses")] + "units"] = pulses_to_float_units(value)
        out["seq"] = self.seq
        out["uptime_ms"] = self.uptime_ms
        out["event"] = self.event
        out["prev_hash"] = self.prev_hash.hex()
        return out

    def describe(self) -> str:
        """One line for people: seq, pump uptime, event and fields."""
        shown = self.to_json()
        fields = " ".join(
            f"{name}={value}"
            for name, value in shown.items()
            if name not in ("seq", "uptime_ms", "event", "prev_hash")
        )
        uptime_s = seconds_from_ms(self.uptime_ms)
        return f"{self.seq:6d} {uptime_s:10.1f}s {self.event} {fields}".rstrip()


@dataclass(frozen=True)
class VerifiedLog:
    """What :func:`verify_entries` established."""

    entries: tuple[AuditEntry, ...]
    #: Entries before the first one given (ring eviction): its seq.
    evicted_before: int
    #: SHA-256 of the last entry (the genesis hash for an empty log).
    tail_hash: bytes

    @property
    def first_seq(self) -> int | None:
        return self.entries[0].seq if self.entries else None

    @property
    def last_seq(self) -> int | None:
        return self.entries[-1].seq if self.entries else None


# --- Encoding and decoding -------------------------------------------------------


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_AUDIT_NAME_LEN:
        raise EntryMalformed(f"{what} must be text of 1..{MAX_AUDIT_NAME_LEN} characters")
    return name


def check_value(value: object) -> FieldValue:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _MIN_CBOR_INT <= value <= UINT64_MAX:
            raise EntryMalformed("integer field outside CBOR's 64-bit range")
        return value
    if isinstance(value, str | bytes):
        if len(value) > MAX_AUDIT_VALUE_LEN:
            raise EntryMalformed(f"field value longer than {MAX_AUDIT_VALUE_LEN}")
        return value
    raise EntryMalformed(
        f"field value of type {type(value).__name__} (int, text, bytes, bool only)"
    )


def check_fields(fields: object) -> dict[str, FieldValue]:
    if not isinstance(fields, Mapping) or len(fields) > MAX_AUDIT_FIELDS:
        raise EntryMalformed(f"fields must be a map of at most {MAX_AUDIT_FIELDS} entries")
    checked: dict[str, FieldValue] = {}
    for name, value in fields.items():
        if check_name(name, "field name") in RESERVED_NAMES:
            raise EntryMalformed(f"field name {name!r} is reserved")
        checked[name] = check_value(value)
    return checked


def check_uint(value: object, what: str, limit: int = UINT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise EntryMalformed(f"{what} must be an unsigned integer <= {limit}")
    return value


def encode_entry(
    seq: int, uptime_ms: int, event: str, fields: Mapping[str, FieldValue], prev_hash: bytes
) -> bytes:
    body = {
        AUDIT_KEY_SEQ: seq,
        AUDIT_KEY_UPTIME_MS: uptime_ms,
        AUDIT_KEY_EVENT: event,
        AUDIT_KEY_FIELDS: dict(fields),
        AUDIT_KEY_PREV_HASH: prev_hash,
    }
    return bytes(cbor2.dumps(body, canonical=True))


def entry_digest(raw: bytes) -> bytes:
    """SHA-256 of an entry's bytes: what its signature covers, and the next
    entry's ``prev_hash``.  Signing and verification both call this."""
    return sha256(raw)


def sign_entry(
    seq: int,
    uptime_ms: int,
    event: str,
    fields: Mapping[str, FieldValue],
    prev_hash: bytes,
    *,
    signing_key: Ed25519PrivateKey,
) -> AuditEntry:
    """Build an entry and sign it: Ed25519 by the pump's audit key over
    ``SHA-256(entry)`` (SPEC §13.4).  The pump's side of :func:`verify_entries`.

    The caller checks the contents first (:func:`check_name`,
    :func:`check_fields`, :func:`check_uint`) and the length of the result;
    this only encodes and signs.
    """
    raw = encode_entry(seq, uptime_ms, event, fields, prev_hash)
    signature = signing_key.sign(entry_digest(raw))
    return AuditEntry(seq, uptime_ms, event, dict(fields), prev_hash, raw, signature)


def decode_entry(raw: bytes, signature: bytes) -> AuditEntry:
    """Parse ``raw`` strictly: exact keys and types, deterministic encoding.

    Raises:
        EntryMalformed: anything else.
    """
    if not 1 <= len(raw) <= MAX_AUDIT_ENTRY_LEN:
        raise EntryMalformed(f"entry length {len(raw)} outside 1..{MAX_AUDIT_ENTRY_LEN}")
    try:
        body: Any = cbor2.loads(raw)
    except Exception as exc:  # cbor2 raises several types on bad input.
        raise EntryMalformed(f"not CBOR: {type(exc).__name__}") from None
    if not isinstance(body, dict) or set(body) != _ENTRY_KEYS:
        raise EntryMalformed("not an entry map with keys 1..5")
    seq = check_uint(body[AUDIT_KEY_SEQ], "seq", MAX_AUDIT_SEQ)
    uptime_ms = check_uint(body[AUDIT_KEY_UPTIME_MS], "uptime_ms")
    event = check_name(body[AUDIT_KEY_EVENT], "event")
    fields = check_fields(body[AUDIT_KEY_FIELDS])
    prev_hash = body[AUDIT_KEY_PREV_HASH]
    if not isinstance(prev_hash, bytes) or len(prev_hash) != HASH_LEN:
        raise EntryMalformed(f"prev_hash must be {HASH_LEN} bytes")
    if cbor2.dumps(body, canonical=True) != raw:
        raise EntryMalformed("entry is not deterministically encoded")
    return AuditEntry(seq, uptime_ms, event, fields, prev_hash, raw, signature)


# --- Verification (host side) ------------------------------------------------------


def verify_entries(entries_raw: Sequence[bytes], public_key_bytes: bytes) -> VerifiedLog:
    """Check a run of signed entries (``entry || signature``) from a pump's log.

    Checks, in order of the list: each entry decodes strictly, its signature
    verifies under ``public_key_bytes`` (raw 32-byte Ed25519), each seq is
    the previous one + 1, and each ``prev_hash`` is SHA-256 of the previous
    entry's bytes.  The first entry's ``prev_hash`` is checked only if its
    seq is 0 (it must then be the genesis hash, 32 zero bytes).

    Returns:
        The decoded entries and ``evicted_before`` (the first seq).

    Raises:
        AuditVerificationError: at the first entry that fails, with its seq.
        LocalProtocolError: ``public_key_bytes`` is not a 32-byte Ed25519 key
            (a caller bug: the Status decoder already checks its length).
    """
    if len(public_key_bytes) != ED25519_PUBLIC_LEN:
        raise LocalProtocolError(f"an Ed25519 public key is {ED25519_PUBLIC_LEN} bytes")
    public_key = Ed25519PublicKey.from_public_bytes(public_key_bytes)
    decoded: list[AuditEntry] = []
    previous: AuditEntry | None = None
    for index, signed in enumerate(entries_raw):
        expected = None if previous is None else previous.seq + 1
        if len(signed) <= ED25519_SIGNATURE_LEN:
            raise AuditVerificationError("shorter than a signature", seq=expected, index=index)
        raw, signature = signed[:-ED25519_SIGNATURE_LEN], signed[-ED25519_SIGNATURE_LEN:]
        try:
            entry = decode_entry(raw, signature)
        except EntryMalformed as exc:
            raise AuditVerificationError(str(exc), seq=expected, index=index) from None
        try:
            public_key.verify(signature, entry_digest(raw))
        except InvalidSignature:
            raise AuditVerificationError("bad signature", seq=entry.seq, index=index) from None
        if previous is None:
            if entry.seq == 0 and entry.prev_hash != GENESIS_HASH:
                raise AuditVerificationError(
                    "seq 0 does not start from the genesis hash", seq=0, index=index
                )
        else:
            if entry.seq != previous.seq + 1:
                raise AuditVerificationError(
                    f"seq follows {previous.seq}", seq=entry.seq, index=index
                )
            if entry.prev_hash != previous.digest:
                raise AuditVerificationError(
                    "prev_hash is not the previous entry's hash", seq=entry.seq, index=index
                )
        decoded.append(entry)
        previous = entry
    return VerifiedLog(
        entries=tuple(decoded),
        evicted_before=decoded[0].seq if decoded else 0,
        tail_hash=previous.digest if previous is not None else GENESIS_HASH,
    )
