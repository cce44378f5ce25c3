"""Application messages: the CBOR layer inside DATA records (SPEC §12).

SPEC §12.1: "Every message is a CBOR array in deterministic encoding (RFC 8949
§4.2).  The decoder refuses anything that is not exactly the deterministic
encoding of a valid message, so every message has one byte form."  SPEC §10.1:
a refused message raises a :class:`~pumpguard.protocol.RemoteProtocolError`
(here :class:`~pumpguard.protocol.MalformedMessage`); "any other exception
escaping a ``protocol`` API is a bug".

What these tests pin down, and what each would catch:

* golden bytes both ways for every message type, written out by hand from
  the CDDL of SPEC §12.2 and the encoding rules of RFC 8949 §3 and §4.2.1:
  a change of wire format, field order or integer width;
* every byte form that is *not* deterministic -- non-minimal integers and
  lengths, indefinite lengths, tags, floats or booleans where integers are
  due, trailing bytes -- is refused: a second byte form for a message;
* every field at its bounds (minimum, maximum, one past each) in both
  directions: the encoder refuses what the decoder would refuse;
* unknown message types, wrong field counts, wrong field types;
* whole input, every prefix, trailing data (STYLE §6, h11's ``tr()``);
* Hypothesis: for *any* bytes, ``decode_message`` returns a message that
  re-encodes to exactly those bytes, or raises ``MalformedMessage``.

The CBOR encoder the expectations use (``tests/cbor_reference.py``) is
written from RFC 8949, not with cbor2, so the expected bytes do not come from
the library under test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Final

import cbor2
import pytest
from cbor_reference import Tag, cbor, cbor_items, head
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pumpguard.protocol import (
    BolusCancel,
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    CommandQuery,
    History,
    HistoryRequest,
    LocalProtocolError,
    MalformedMessage,
    Message,
    MessageType,
    Ok,
    Outcome,
    PolicyUpload,
    RefusalCode,
    Refused,
    RemoteProtocolError,
    Status,
    StatusRequest,
    Unpair,
    decode_message,
    encode_message,
)
from pumpguard.protocol.wire import MAX_PLAINTEXT_LEN

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_reference_encoder_agrees_with_rfc8949_appendix_a() -> None:
    """The encoder the expectations rest on (tests/cbor_reference.py), against RFC 8949 App. A."""
    table: list[tuple[object, str]] = [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (100, "1864"),
        (1000, "1903e8"),
        (1000000, "1a000f4240"),
        (18446744073709551615, "1bffffffffffffffff"),
        (18446744073709551616, "c249010000000000000000"),
        (-18446744073709551617, "c349010000000000000000"),
        (-1, "20"),
        (-1000, "3903e7"),
        (0.0, "f90000"),
        (-0.0, "f98000"),
        (1.0, "f93c00"),
        (100000.0, "fa47c35000"),
        (1.1, "fb3ff199999999999a"),
        (float("inf"), "f97c00"),
        (False, "f4"),
        (True, "f5"),
        (None, "f6"),
        (b"", "40"),
        (b"\x01\x02\x03\x04", "4401020304"),
        ("IETF", "6449455446"),
        ([1, [2, 3], [4, 5]], "8301820203820405"),
        ({1: 2, 3: 4}, "a201020304"),
        (Tag(1, 1363896240), "c11a514b67b0"),
    ]
    for value, expected in table:
        assert cbor(value).hex() == expected, value
    assert head(0, 0, width=1).hex() == "1800"  # a forced, non-minimal form


# --- SPEC §12.2, field by field -----------------------------------------------------------

U16: Final = 0xFFFF  # request-id = uint .le 65535
U32: Final = 0xFFFF_FFFF  # pulses = uint .le 4294967295
U64: Final = 0xFFFF_FFFF_FFFF_FFFF  # uint: a major-type-0 argument, at most 8 bytes


@dataclasses.dataclass(frozen=True)
class Field:
    """One field after ``request-id`` in SPEC §12.2's CDDL, with its bounds.

    ``kind`` is ``uint`` (``low..high``), ``bytes`` (length ``low..high``),
    ``bytes-0-or-16`` (``bstr .size (0 / 16)``: empty or exactly 16),
    ``bool``, ``outcome`` or ``refusal`` (the enumerations of SPEC §12.2).
    """

    name: str
    kind: str
    low: int = 0
    high: int = 0


def uint(name: str, high: int) -> Field:
    return Field(name, "uint", 0, high)


def bstr(name: str, low: int, high: int | None = None) -> Field:
    return Field(name, "bytes", low, low if high is None else high)


COMMAND_ID = bstr("command_id", 16)  # command-id = bstr .size 16
CHALLENGE = bstr("challenge", 16)  # challenge = bstr .size 16

#: SPEC §12.2 as data: (type number, fields after request-id), in wire order.
#: Where SPEC writes a bare ``uint`` the implementation bounds some fields to
#: 32 bits (marked "u32"; every value the pump produces fits), the rest to
#: CBOR's 64 bits.  The tests check the implementation's bounds.
SCHEMA: Final[dict[type[Message], tuple[int, tuple[Field, ...]]]] = {
    StatusRequest: (1, ()),
    BolusPrepare: (2, (COMMAND_ID, uint("pulses", U32))),
    BolusCommit: (3, (COMMAND_ID, uint("pulses", U32), CHALLENGE)),
    CommandQuery: (4, (COMMAND_ID,)),
    BolusCancel: (5, ()),
    HistoryRequest: (6, (uint("from_seq", U64),)),
    PolicyUpload: (7, (bstr("policy", 0, 96), bstr("signature", 64))),
    Unpair: (8, ()),
    Status: (
        0x81,
        (
            Field("remote_bolus_enabled", "bool"),
            uint("state", U32),  # delivery-state: uint (u32)
            uint("bolus_pulses", U64),
            uint("basal_pulses", U64),
            uint("reservoir_pulses", U32),  # uint (u32)
            Field("active_command_id", "bytes-0-or-16", 0, 16),
            uint("active_requested", U32),
            uint("active_delivered", U32),
            uint("alarms", U32),  # uint (u32)
            uint("limits_version", U32),  # uint (u32)
            uint("max_bolus_pulses", U32),
            uint("max_1h_pulses", U32),
            uint("max_24h_pulses", U32),
            bstr("pump_id", 8),
            bstr("audit_key", 32),
            uint("audit_next_seq", U64),
        ),
    ),
    BolusChallenge: (0x82, (COMMAND_ID, CHALLENGE, uint("ttl_ms", U32))),  # ttl-ms: uint (u32)
    CommandOutcome: (
        0x83,
        (
            COMMAND_ID,
            Field("outcome", "outcome"),
            uint("requested", U32),
            uint("delivered", U32),
        ),
    ),
    History: (0x84, (bstr("entry", 0, 200), uint("next_seq", U64))),
    Ok: (0x85, ()),
    Refused: (0xFF, (Field("code", "refusal"), uint("detail", U32))),  # detail: uint (u32)
}
CLASSES: Final = list(SCHEMA)


def test_the_schema_table_matches_the_message_classes() -> None:
    """This file's copy of SPEC §12.2 names every message type and every field in order."""
    assert {number for number, _ in SCHEMA.values()} == set(MessageType)
    for cls, (number, schema) in SCHEMA.items():
        assert number == cls.TYPE
        assert field_names(cls) == ["request_id", *(field.name for field in schema)], cls


def field_names(message_or_class: Any) -> list[str]:
    """The dataclass fields of a message (class), in wire order after the type."""
    return [f.name for f in dataclasses.fields(message_or_class)]


def construct(cls: type[Message], request_id: object, values: list[object]) -> Message:
    """``cls(request_id, *values)``; values may be out of bounds on purpose."""
    factory: Any = cls
    message: Message = factory(request_id, *values)
    return message


def wire_list(message: Message) -> list[object]:
    """``[type, request-id, fields...]`` as plain CBOR values (enums as ints)."""
    values = [getattr(message, name) for name in field_names(message)]
    return [
        int(message.TYPE),
        *(int(v) if isinstance(v, Outcome | RefusalCode) else v for v in values),
    ]


def minimal_value(field: Field) -> object:
    """The smallest valid value of ``field``."""
    if field.kind == "bool":
        return False
    if field.kind == "outcome":
        return Outcome.UNKNOWN
    if field.kind == "refusal":
        return RefusalCode.MALFORMED_REQUEST
    if field.kind in ("bytes", "bytes-0-or-16"):
        return bytes(field.low)
    return field.low


def minimal(cls: type[Message]) -> Message:
    return construct(cls, 0, [minimal_value(f) for f in SCHEMA[cls][1]])


def refuse(data: bytes) -> None:
    """``data`` is refused with MalformedMessage, and nothing else (SPEC §10.1, §12.1)."""
    with pytest.raises(MalformedMessage):
        decode_message(data)


# --- Golden vectors (SPEC §12.2; RFC 8949 §3, §4.2.1) ------------------------------------
#
# Each hex string was written by hand from the CDDL: array head 0x80 + n
# (n <= 23 items, §3.1 major type 4), type and request-id as uints (0x00-0x17
# inline, 0x18 xx, 0x19 xxxx, 0x1a xxxxxxxx, 0x1b + 8 bytes), byte strings as
# 0x40 + len (0x58 ll above 23), false/true as 0xf4/0xf5.

CID = bytes(range(16))
GOLDEN: Final[list[tuple[Message, str]]] = [
    (StatusRequest(0), "82 01 00"),
    (StatusRequest(0xFFFF), "82 01 19ffff"),
    (BolusPrepare(24, CID, 200), "84 02 1818 50" + CID.hex() + "18c8"),
    (BolusPrepare(23, CID, 0), "84 02 17 50" + CID.hex() + "00"),
    (
        BolusCommit(256, b"\xaa" * 16, U32, b"\x55" * 16),
        "85 03 190100 50" + "aa" * 16 + "1affffffff 50" + "55" * 16,
    ),
    (CommandQuery(255, b"\x11" * 16), "83 04 18ff 50" + "11" * 16),
    (BolusCancel(1), "82 05 01"),
    (HistoryRequest(2, U64), "83 06 02 1bffffffffffffffff"),
    (HistoryRequest(3, 1 << 32), "83 06 03 1b0000000100000000"),
    (HistoryRequest(4, 0xFFFF_FFFF), "83 06 04 1affffffff"),
    (PolicyUpload(7, b"", b"\x5a" * 64), "84 07 07 40 5840" + "5a" * 64),
    (
        PolicyUpload(8, bytes(range(24)), b"\x01" * 64),
        "84 07 08 5818" + bytes(range(24)).hex() + "5840" + "01" * 64,
    ),
    (PolicyUpload(9, bytes(96), bytes(64)), "84 07 09 5860" + "00" * 96 + "5840" + "00" * 64),
    (Unpair(65535), "82 08 19ffff"),
    (
        Status(
            request_id=0x1234,
            remote_bolus_enabled=True,
            state=2,
            bolus_pulses=1 << 32,
            basal_pulses=1000,
            reservoir_pulses=6000,
            active_command_id=b"\x01" * 16,
            active_requested=100,
            active_delivered=37,
            alarms=0,
            limits_version=1,
            max_bolus_pulses=200,
            max_1h_pulses=300,
            max_24h_pulses=1000,
            pump_id=bytes(range(8)),
            audit_key=b"\x33" * 32,
            audit_next_seq=65536,
        ),
        "92 1881 191234 f5 02 1b0000000100000000 1903e8 191770 50"
        + "01" * 16
        + "1864 1825 00 01 18c8 19012c 1903e8 48 0001020304050607 5820"
        + "33" * 32
        + "1a00010000",
    ),
    (
        Status(0, False, 0, 0, 0, 0, b"", 0, 0, 0, 0, 0, 0, 0, bytes(8), bytes(32), 0),
        "92 1881 00 f4 00 00 00 00 40 00 00 00 00 00 00 00 48"
        + "00" * 8
        + "5820"
        + "00" * 32
        + "00",
    ),
    (
        BolusChallenge(9, b"\x01" * 16, b"\x02" * 16, 30000),
        "85 1882 09 50" + "01" * 16 + "50" + "02" * 16 + "197530",
    ),
    (
        CommandOutcome(10, b"\x03" * 16, Outcome.CANCELLED, 200, 57),
        "86 1883 0a 50" + "03" * 16 + "03 18c8 1839",
    ),
    (
        CommandOutcome(11, CID, Outcome.IN_PROGRESS, U32, 0),
        "86 1883 0b 50" + CID.hex() + "01 1affffffff 00",
    ),
    (History(12, b"", 0), "84 1884 0c 40 00"),
    (History(13, bytes(range(200)), 500), "84 1884 0d 58c8" + bytes(range(200)).hex() + "1901f4"),
    (Ok(0x85), "82 1885 1885"),
    (Refused(14, RefusalCode.OVER_1H_LIMIT, 20), "84 18ff 0e 04 14"),
    (Refused(0, RefusalCode.NOTHING_TO_CANCEL, U32), "84 18ff 00 0e 1affffffff"),
    (Refused(1, RefusalCode.MALFORMED_REQUEST, 0), "84 18ff 01 01 00"),
]


def golden_id(case: tuple[Message, str]) -> str:
    return f"{type(case[0]).__name__}-{case[1].replace(' ', '')[:24]}"


def test_golden_vectors_cover_every_message_type() -> None:
    assert {message.TYPE for message, _ in GOLDEN} == set(MessageType)


@pytest.mark.parametrize(("message", "hex_bytes"), GOLDEN, ids=[golden_id(case) for case in GOLDEN])
def test_golden_bytes_both_ways(message: Message, hex_bytes: str) -> None:
    """SPEC §12.2: encode gives exactly these bytes; these bytes decode to the same message."""
    wire = bytes.fromhex(hex_bytes)
    assert encode_message(message) == wire
    assert cbor(wire_list(message)) == wire  # the hand-written hex is deterministic CBOR
    decoded = decode_message(wire)
    assert decoded == message
    # Equality alone would let an int pass for an Outcome or RefusalCode.
    for name in field_names(message):
        assert type(getattr(decoded, name)) is type(getattr(message, name)), name


@pytest.mark.parametrize(("message", "hex_bytes"), GOLDEN, ids=[golden_id(case) for case in GOLDEN])
def test_every_prefix_and_every_extension_is_refused(message: Message, hex_bytes: str) -> None:
    """STYLE §6: the input whole, cut short anywhere, and with trailing data (SPEC §12.1)."""
    wire = bytes.fromhex(hex_bytes)
    for cut in range(len(wire)):
        refuse(wire[:cut])
    for tail in (b"\x00", b"\xff", b"\x80", wire):
        refuse(wire + tail)


def test_the_largest_message_of_each_type_fits_one_data_record() -> None:
    """SPEC §7.1: every message, at its largest, fits in MAX_PLAINTEXT_LEN (243) bytes."""

    def largest(field: Field) -> object:
        if field.kind == "bool":
            return True
        if field.kind == "outcome":
            return max(Outcome)
        if field.kind == "refusal":
            return max(RefusalCode)
        if field.kind in ("bytes", "bytes-0-or-16"):
            return bytes(field.high)
        return field.high

    for cls, (_, schema) in SCHEMA.items():
        message = construct(cls, U16, [largest(f) for f in schema])
        encoded = encode_message(message)
        assert len(encoded) <= MAX_PLAINTEXT_LEN, cls
        assert decode_message(encoded) == message


# --- Bounds of every field (SPEC §12.2) ---------------------------------------------------


def field_cases() -> Iterator[Any]:
    """(class, field name, value, accepted?) at every edge of every field."""
    for cls, (_, schema) in SCHEMA.items():
        for rid, ok in ((0, True), (U16, True), (U16 + 1, False), (-1, False)):
            yield pytest.param(cls, "request_id", rid, ok, id=f"{cls.__name__}.request_id={rid}")
        for field in schema:
            edges: list[tuple[object, bool]]
            if field.kind == "uint":
                edges = [(0, True), (field.high, True), (field.high + 1, False), (-1, False)]
            elif field.kind == "bytes":
                edges = [(bytes(field.low), True), (bytes(field.high), True)]
                edges.append((bytes(field.high + 1), False))
                if field.low:
                    edges.append((bytes(field.low - 1), False))
            elif field.kind == "bytes-0-or-16":
                edges = [(bytes(n), n in (0, 16)) for n in (0, 1, 15, 16, 17)]
            elif field.kind == "bool":
                edges = [(False, True), (True, True)]
            elif field.kind == "outcome":
                edges = [(v, True) for v in Outcome] + [(-1, False), (max(Outcome) + 1, False)]
            else:
                edges = [(v, True) for v in RefusalCode]
                edges += [(min(RefusalCode) - 1, False), (max(RefusalCode) + 1, False)]
            for value, ok in edges:
                shown = f"len{len(value)}" if isinstance(value, bytes) else repr(value)
                yield pytest.param(
                    cls, field.name, value, ok, id=f"{cls.__name__}.{field.name}={shown}"
                )


@pytest.mark.parametrize(("cls", "name", "value", "ok"), list(field_cases()))
def test_field_bounds_both_ways(cls: type[Message], name: str, value: object, ok: bool) -> None:
    """Each field at min and max is accepted; one past either end is refused.

    The encoder refuses with LocalProtocolError (the caller's mistake), the
    decoder with MalformedMessage (the peer's), SPEC §10.1.
    """
    base: Any = minimal(cls)
    message: Message = dataclasses.replace(base, **{name: value})
    wire = cbor(wire_list(message))
    if ok:
        assert encode_message(message) == wire
        assert decode_message(wire) == message
    else:
        refuse(wire)
        with pytest.raises(LocalProtocolError):
            encode_message(message)


# --- Types, counts, unknown messages (SPEC §12.2) -----------------------------------------

#: Values of every CBOR kind, for putting the wrong one in each slot.
OTHER_KINDS: Final[dict[str, list[object]]] = {
    "uint": [True, False, 1.0, 0.0, -0.0, b"\x01", "1", None, [1], {1: 1}, Tag(2, b"\x01")],
    "bytes": ["x", 0, 1, None, True, [0], {0: 0}, Tag(24, b"")],
    "bool": [0, 1, None, 1.0, "true", b"\x01", [True]],
}


def wrong_type_cases() -> Iterator[Any]:
    for cls, (_, schema) in SCHEMA.items():
        slots: list[tuple[str, int, str]] = [("type", 0, "uint"), ("request_id", 1, "uint")]
        for index, field in enumerate(schema):
            kind = {"bytes-0-or-16": "bytes", "outcome": "uint", "refusal": "uint"}.get(field.kind)
            slots.append((field.name, index + 2, kind or field.kind))
        for name, slot, kind in slots:
            for bad in OTHER_KINDS[kind]:
                yield pytest.param(cls, slot, bad, id=f"{cls.__name__}.{name}={bad!r}")
        # A text string of exactly the right length where bytes are due.
        for index, field in enumerate(schema):
            if field.kind in ("bytes", "bytes-0-or-16") and field.high:
                yield pytest.param(
                    cls, index + 2, "a" * field.high, id=f"{cls.__name__}.{field.name}=text"
                )


@pytest.mark.parametrize(("cls", "slot", "bad"), list(wrong_type_cases()))
def test_wrong_field_types_are_refused(cls: type[Message], slot: int, bad: object) -> None:
    """SPEC §12.2: ints are uints, never bool/float/bignum; bstr is never tstr; bool is bool.

    ``true`` equals 1 and ``1.0`` hashes like 1 in Python; the decoder must
    not let them stand for a message type, request id, count or code.
    """
    items = wire_list(minimal(cls))
    items[slot] = bad
    refuse(cbor(items))
    if slot:  # the encoder checks field types too
        with pytest.raises(LocalProtocolError):
            encode_message(construct(cls, items[1], items[2:]))


UNKNOWN_TYPES: Final = [0, 9, 0x7F, 0x80, 0x86, 0xFE, 0x100, 0x181, U64, -1, -0x81]


@pytest.mark.parametrize("number", UNKNOWN_TYPES)
def test_unknown_message_types_are_refused(number: int) -> None:
    """SPEC §12.2 lists every message type; any other number is refused, whatever follows."""
    for rest in ([], [0], [0, 0], [0, bytes(16), 1], [0, bytes(16), 1, bytes(16)]):
        refuse(cbor([number, *rest]))


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_wrong_field_counts_are_refused(cls: type[Message]) -> None:
    """SPEC §12.2: each message has exactly its fields; one more or one fewer is refused."""
    items = wire_list(minimal(cls))
    refuse(cbor(items[:-1]))
    refuse(cbor([*items, 0]))
    refuse(cbor([*items, b""]))
    refuse(cbor(items[:1]))


@pytest.mark.parametrize(
    "data",
    [b"\x80", b"\x81\x01", b"\x81\x00", b"\x80\x00"],
    ids=["empty-array", "type-only", "type-0-only", "empty-array-then-byte"],
)
def test_arrays_without_a_request_id_are_refused(data: bytes) -> None:
    """SPEC §12.2: every message is ``[type, request-id, ...]``."""
    refuse(data)


# --- Only the deterministic encoding (SPEC §12.1, RFC 8949 §4.2.1) -----------------------

#: A valid BolusPrepare, written out: [2, 24, h'000102...0f', 200].
PREPARE: Final = bytes.fromhex("84 02 1818 50" + CID.hex() + "18c8")

#: A Status of zeros after its remote-bolus-enabled flag (see GOLDEN).
MINIMAL_STATUS_TAIL: Final = (
    "00 00 00 00 40 00 00 00 00 00 00 00 48" + "00" * 8 + "5820" + "00" * 32 + "00"
)

NON_DETERMINISTIC: Final[dict[str, str]] = {
    # Integers in a longer form than needed (§4.2.1: "preferred serialization").
    "type-in-1-byte": "82 1801 00",
    "type-in-2-bytes": "82 190001 00",
    "request-id-0-in-1-byte": "82 01 1800",
    "request-id-0-in-2-bytes": "82 01 190000",
    "request-id-0-in-4-bytes": "82 01 1a00000000",
    "request-id-0-in-8-bytes": "82 01 1b0000000000000000",
    "request-id-24-in-2-bytes": "82 01 190018",
    "request-id-255-in-2-bytes": "82 01 1900ff",
    "pulses-in-2-bytes": "84 02 1818 50" + CID.hex() + "1900c8",
    "from-seq-2^32-1-in-8-bytes": "83 06 00 1b00000000ffffffff",
    "type-0x81-in-2-bytes": "92 190081 00 f4" + MINIMAL_STATUS_TAIL,
    # Lengths in a longer form than needed.
    "array-length-in-1-byte": "9802 01 00",
    "array-length-in-2-bytes": "990002 01 00",
    "bstr-length-in-1-byte": "84 02 1818 5810" + CID.hex() + "18c8",
    "empty-bstr-length-in-1-byte": "84 1884 00 5800 00",
    # Indefinite lengths (§4.2.1: "Indefinite-length items must be made definite").
    "indefinite-array": "9f 01 00 ff",
    "indefinite-array-of-prepare": "9f 02 1818 50" + CID.hex() + "18c8 ff",
    "indefinite-bstr-one-chunk": "84 02 1818 5f50" + CID.hex() + "ff 18c8",
    "indefinite-bstr-two-chunks": "84 02 1818 5f48"
    + CID[:8].hex()
    + "48"
    + CID[8:].hex()
    + "ff 18c8",
    "indefinite-empty-bstr": "84 1884 00 5fff 00",
    # Tags, on the message or on a field (a bignum is not a uint here).
    "tagged-message": "c0 82 01 00",
    "self-described-cbor": "d9d9f7 82 01 00",
    "shareable-message": "d81c 82 01 00",
    "shareable-field": "82 01 d81c00",
    "bignum-request-id": "82 01 c24105",
    "bignum-type": "82 c24101 00",
    "bignum-2^64-from-seq": "83 06 00 c249010000000000000000",
    "tagged-command-id": "84 02 1818 d840 50" + CID.hex() + "18c8",
    # Floats where integers are due (encoded in their shortest form, so only
    # the type check can refuse them).
    "half-float-type": "82 f93c00 00",
    "half-float-request-id": "82 01 f90000",
    "single-float-request-id": "82 01 fa3f800000",
    "double-float-request-id": "82 01 fb3ff0000000000000",
    "negative-zero-request-id": "82 01 f98000",
    # Booleans and other simple values where integers are due.
    "true-type": "82 f5 00",
    "false-request-id": "82 01 f4",
    "null-request-id": "82 01 f6",
    "undefined-request-id": "82 01 f7",
    "simple-32-request-id": "82 01 f820",
    "two-byte-simple-false": "92 1881 00 f814" + MINIMAL_STATUS_TAIL,
    # Maps, sorted or not, duplicate keys or not: a message is never a map.
    "map": "a2 00 01 01 00",
    "map-unsorted-keys": "a2 01 00 00 01",
    "map-duplicate-keys": "a2 00 01 00 01",
    "map-in-a-field": "83 06 00 a0",
    # Text where a message or bytes are due.
    "text-message": "62 8201",
    "text-command-id": "84 02 1818 70" + "61" * 16 + "18c8",
    # Trailing bytes after a complete message.
    "trailing-zero": "82 01 00 00",
    "trailing-break": "82 01 00 ff",
    "two-messages": "82 01 00 82 01 00",
    "prepare-then-byte": PREPARE.hex() + "00",
    # Malformed CBOR (§3: reserved values, a break outside an indefinite item).
    "reserved-ai-28": "82 01 1c",
    "reserved-ai-30": "82 01 1e",
    "lone-break": "ff",
    "break-in-array": "82 01 ff",
    "truncated-uint": "82 01 19ff",
    "truncated-bstr": "84 02 1818 50" + CID[:15].hex(),
    "array-of-24-items": "98 18" + "00" * 24,
    "invalid-utf8-text": "84 02 1818 50" + CID.hex() + "61ff",
}


@pytest.mark.parametrize("hex_bytes", list(NON_DETERMINISTIC.values()), ids=list(NON_DETERMINISTIC))
def test_non_deterministic_and_malformed_cbor_is_refused(hex_bytes: str) -> None:
    """SPEC §12.1: anything but the one deterministic encoding is refused."""
    refuse(bytes.fromhex(hex_bytes))


def test_a_refusal_is_a_remote_protocol_error() -> None:
    """SPEC §10.1: input from the link that is refused raises a RemoteProtocolError."""
    assert issubclass(MalformedMessage, RemoteProtocolError)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        PREPARE + bytes(MAX_PLAINTEXT_LEN + 1 - len(PREPARE)),  # 244 bytes, array head first
        b"\x98\x02\x01\x00",  # array with a 1-byte length
        b"\x9f\x01\x00\xff",  # indefinite array
        b"\xa2\x00\x01\x01\x00",  # map
        b"\xc0\x82\x01\x00",  # tag
        b"\xd8\x1c\x82\x01\x00",  # shareable tag (cbor2 would give a list)
        b"\x62\x82\x01",  # text
        b"\x42\x82\x01",  # bytes
        b"\x01",  # uint
        b"\xf5",  # simple value
    ],
    ids=[
        "empty",
        "too-long",
        "array-1-byte-len",
        "indefinite",
        "map",
        "tag",
        "shareable",
        "text",
        "bytes",
        "uint",
        "true",
    ],
)
def test_input_refused_by_its_size_or_head_is_never_parsed(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``decode_message`` refuses, before any CBOR parsing, input that is empty, longer
    than MAX_PLAINTEXT_LEN (SPEC §7.1), or does not start with the head of a
    definite-length array of at most 23 items (every message is one, SPEC §12.2).

    Parsing costs time and runs cbor2's tag decoders; input that cannot be a
    message is refused for the price of two comparisons (S9).
    """
    parsed: list[bytes] = []
    real_loads = cbor2.loads

    def spy(raw: bytes, *args: Any, **kwargs: Any) -> Any:
        parsed.append(raw)
        return real_loads(raw, *args, **kwargs)

    monkeypatch.setattr(cbor2, "loads", spy)
    decode_message(encode_message(StatusRequest(1)))
    assert parsed, "the spy must see a message that is parsed"  # the check below can fail
    parsed.clear()
    refuse(data)
    assert parsed == []


# --- Properties (SPEC §10.1, §12.1; h11's fuzz invariant, STYLE §6) -----------------------


def field_strategy(field: Field) -> st.SearchStrategy[Any]:
    if field.kind == "uint":
        return st.one_of(
            st.integers(0, field.high),
            st.sampled_from(sorted({0, 23, 24, 255, 256, 0xFFFF, 0x10000, U32, field.high})).filter(
                lambda v: v <= field.high
            ),
        )
    if field.kind == "bytes":
        return st.binary(min_size=field.low, max_size=field.high)
    if field.kind == "bytes-0-or-16":
        return st.sampled_from([0, 16]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    if field.kind == "bool":
        return st.booleans()
    if field.kind == "outcome":
        return st.sampled_from(Outcome)
    return st.sampled_from(RefusalCode)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    cls = draw(st.sampled_from(CLASSES))
    request_id = draw(st.integers(0, U16))
    return construct(cls, request_id, [draw(field_strategy(f)) for f in SCHEMA[cls][1]])


@FUZZ
@given(messages())
def test_every_valid_message_round_trips_through_its_deterministic_encoding(
    message: Message,
) -> None:
    """SPEC §12.1: encode is the deterministic CBOR of the CDDL array; decode inverts it."""
    wire = encode_message(message)
    assert wire == cbor(wire_list(message))
    assert decode_message(wire) == message


@st.composite
def message_like(draw: st.DrawFn) -> bytes:
    """An array that starts like a message: a known (or nearby) type, about its
    number of items, each a valid value for its field or any CBOR item."""
    cls = draw(st.sampled_from(CLASSES))
    number = draw(st.sampled_from([SCHEMA[cls][0]] * 4 + [0, 9, 0x80, 0x86, 0xFE]))
    slots = [Field("request_id", "uint", 0, U16), *SCHEMA[cls][1]]
    count = max(0, len(slots) + draw(st.sampled_from([0, 0, 0, -1, 1])))
    items = [
        cbor(draw(field_strategy(slots[i])))
        if i < len(slots) and draw(st.booleans())
        else draw(cbor_items())
        for i in range(count)
    ]
    return head(4, count + 1) + cbor(number) + b"".join(items)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid encoding with a few bytes flipped, inserted, deleted or truncated."""
    data = bytearray(encode_message(draw(messages())))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip" and where < len(data):
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data.insert(where, draw(st.integers(0, 255)))
        elif action == "delete" and where < len(data):
            del data[where]
        else:
            del data[where:]
    return bytes(data)


ANY_BYTES: Final = st.one_of(
    st.binary(max_size=MAX_PLAINTEXT_LEN + 8), cbor_items(), message_like(), mutated()
)


def check_decoder_invariant(data: bytes) -> None:
    try:
        message = decode_message(data)
    except MalformedMessage:
        return
    assert encode_message(message) == data, "an accepted message has another byte form"


@FUZZ
@given(ANY_BYTES)
@example(bytes.fromhex("82 01 00"))
@example(bytes.fromhex("82 f5 00"))
@example(bytes.fromhex("d81c 82 01 00"))
def test_any_bytes_decode_to_their_one_message_or_raise_malformed(data: bytes) -> None:
    """SPEC §10.1 and §12.1: for *any* input, ``decode_message`` either returns a
    message whose encoding is exactly the input, or raises MalformedMessage --
    never any other exception."""
    check_decoder_invariant(data)


def test_the_byte_strategies_reach_both_outcomes() -> None:
    """The property above is not vacuous: its inputs include accepted and refused ones."""
    seen: dict[bool, int] = {True: 0, False: 0}

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.one_of(message_like(), mutated()))
    def probe(data: bytes) -> None:
        try:
            decode_message(data)
        except MalformedMessage:
            seen[False] += 1
        else:
            seen[True] += 1

    probe()
    assert seen[True] > 0
    assert seen[False] > 0
