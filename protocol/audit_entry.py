"""Audit-log entries: their byte form and their verification (SPEC §13.4).

An entry crosses the wire (one per History response, SPEC §12.2), so its
format lives in the protocol; the pump's flash ring that stores entries is
``firmware_sim/audit.py``.  :func:`verify_entries` needs only the pump's
audit public key, which the remote learns from a Status response.

Entry: the deterministic CBOR (RFC 8949 §4.2) of::

    audit-entry = {
      1 => uint .le 4294967295,          ; seq: 0, 1, 2, ... never reused
      2 => uint,                         ; uptime_ms: pump uptime (resets at boot)
      3 => tstr .size (1..32),           ; event
      4 => { * tstr .size (1..32) => int / tstr .size (0..64) / bstr .size (0..64) / bool },
      5 => bstr .size 32,                ; prev_hash: SHA-256 of the previous entry's
    }                                    ;   bytes; 32 zero bytes before seq 0

at most :data:`MAX_ENTRY_LEN` (136) bytes, signed by the pump's Ed25519 audit
key over ``SHA-256(entry)``.  The *signed form* is ``entry || signature``, at
most 200 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .units import pulses_to_float_units
from .wire import MAX_AUDIT_SIGNED_LEN

FieldValue: TypeAlias = int | str | bytes | bool
JsonValue: TypeAlias = int | float | str | bool

# --- Format constants ---------------------------------------------------------

KEY_SEQ: Final = 1
KEY_UPTIME_MS: Final = 2
KEY_EVENT: Final = 3
KEY_FIELDS: Final = 4
KEY_PREV_HASH: Final = 5
HASH_LEN: Final = 32
SIGNATURE_LEN: Final = 64
#: prev_hash of seq 0.
GENESIS_HASH: Final = bytes(HASH_LEN)
#: Largest signed form (entry || signature): one entry fits one History message.
MAX_SIGNED_LEN: Final = MAX_AUDIT_SIGNED_LEN
#: Largest entry (CBOR bytes), and bounds on what goes in it.
MAX_ENTRY_LEN: Final = MAX_SIGNED_LEN - SIGNATURE_LEN
MAX_NAME_LEN: Final = 32
MAX_VALUE_LEN: Final = 64
MAX_FIELDS: Final = 16
MAX_SEQ: Final = 0xFFFF_FFFF
_MAX_UINT: Final = (1 << 64) - 1

#: Top-level names of :meth:`AuditEntry.to_json`; a field may not use them.
RESERVED_NAMES: Final = frozenset({"seq", "uptime_ms", "event", "prev_hash"})


class AuditVerificationError(Exception):
    """An audit log did not verify.

    Attributes:
        seq: the seq of the entry where verification broke (``None`` if the
            entry could not even be decoded and no seq was expected yet).
        index: its position in the list that was checked.
    """

    def __init__(self, message: str, *, seq: int | None, index: int) -> None:
        where = f"seq {seq}" if seq is not None else "an undecodable entry"
        super().__init__(f"audit log breaks at {where} (entry #{index}): {message}")
        self.seq = seq
        self.index = index


class EntryMalformed(ValueError):
    """An entry's bytes, or an entry's contents, break the format."""


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
        return hashlib.sha256(self.raw).digest()

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
        return f"{self.seq:6d} {self.uptime_ms / 1000:10.1f}s {self.event} {fields}".rstrip()


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
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LEN:
        raise EntryMalformed(f"{what} must be text of 1..{MAX_NAME_LEN} characters")
    return name


def check_value(value: object) -> FieldValue:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -(1 << 64) <= value <= _MAX_UINT:
            raise EntryMalformed("integer field outside CBOR's 64-bit range")
        return value
    if isinstance(value, str | bytes):
        if len(value) > MAX_VALUE_LEN:
            raise EntryMalformed(f"field value longer than {MAX_VALUE_LEN}")
        return value
    raise EntryMalformed(
        f"field value of type {type(value).__name__} (int, text, bytes, bool only)"
    )


def check_fields(fields: object) -> dict[str, FieldValue]:
    if not isinstance(fields, Mapping) or len(fields) > MAX_FIELDS:
        raise EntryMalformed(f"fields must be a map of at most {MAX_FIELDS} entries")
    checked: dict[str, FieldValue] = {}
    for name, value in fields.items():
        if check_name(name, "field name") in RESERVED_NAMES:
            raise EntryMalformed(f"field name {name!r} is reserved")
        checked[name] = check_value(value)
    return checked


def check_uint(value: object, what: str, limit: int = _MAX_UINT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise EntryMalformed(f"{what} must be an unsigned integer <= {limit}")
    return value


def encode_entry(
    seq: int, uptime_ms: int, event: str, fields: Mapping[str, FieldValue], prev_hash: bytes
) -> bytes:
    body = {
        KEY_SEQ: seq,
        KEY_UPTIME_MS: uptime_ms,
        KEY_EVENT: event,
        KEY_FIELDS: dict(fields),
        KEY_PREV_HASH: prev_hash,
    }
    return bytes(cbor2.dumps(body, canonical=True))


def decode_entry(raw: bytes, signature: bytes) -> AuditEntry:
    """Parse ``raw`` strictly: exact keys and types, deterministic encoding.

    Raises:
        EntryMalformed: anything else.
    """
    if not 1 <= len(raw) <= MAX_ENTRY_LEN:
        raise EntryMalformed(f"entry length {len(raw)} outside 1..{MAX_ENTRY_LEN}")
    try:
        body: Any = cbor2.loads(raw)
    except Exception as exc:  # cbor2 raises several types on bad input.
        raise EntryMalformed(f"not CBOR: {type(exc).__name__}") from None
    if not isinstance(body, dict) or set(body) != {
        KEY_SEQ,
        KEY_UPTIME_MS,
        KEY_EVENT,
        KEY_FIELDS,
        KEY_PREV_HASH,
    }:
        raise EntryMalformed("not an entry map with keys 1..5")
    seq = check_uint(body[KEY_SEQ], "seq", MAX_SEQ)
    uptime_ms = check_uint(body[KEY_UPTIME_MS], "uptime_ms")
    event = check_name(body[KEY_EVENT], "event")
    fields = check_fields(body[KEY_FIELDS])
    prev_hash = body[KEY_PREV_HASH]
    if not isinstance(prev_hash, bytes) or len(prev_hash) != HASH_LEN:
        raise EntryMalformed("prev_hash must be 32 bytes")
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
        ValueError: ``public_key_bytes`` is not a 32-byte Ed25519 key.
    """
    if len(public_key_bytes) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    public_key = Ed25519PublicKey.from_public_bytes(public_key_bytes)
    decoded: list[AuditEntry] = []
    previous: AuditEntry | None = None
    for index, signed in enumerate(entries_raw):
        expected = None if previous is None else previous.seq + 1
        if len(signed) <= SIGNATURE_LEN:
            raise AuditVerificationError("shorter than a signature", seq=expected, index=index)
        raw, signature = signed[:-SIGNATURE_LEN], signed[-SIGNATURE_LEN:]
        try:
            entry = decode_entry(raw, signature)
        except EntryMalformed as exc:
            raise AuditVerificationError(str(exc), seq=expected, index=index) from None
        try:
            public_key.verify(signature, hashlib.sha256(raw).digest())
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
