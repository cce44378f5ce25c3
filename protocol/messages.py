"""Application messages: CBOR inside DATA records (SPEC §12).

Every message is a CBOR array ``[type, request_id, fields...]`` in
deterministic encoding (RFC 8949 §4.2).  The decoder is strict: exact types,
bounded integers and byte strings, and the input must be the deterministic
encoding of what it decodes to, so every message has exactly one valid byte
form.  Anything else raises :class:`MalformedMessage`, a
:class:`~protocol.errors.RemoteProtocolError`; no other exception escapes.

The schema is given in CDDL in SPEC §12.2; each dataclass below names its
rule there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final, TypeAlias

import cbor2

from .errors import LocalProtocolError, RemoteProtocolError
from .wire import (
    CHALLENGE_LEN,
    COMMAND_ID_LEN,
    ED25519_PUBLIC_LEN,
    ED25519_SIGNATURE_LEN,
    MAX_AUDIT_SIGNED_LEN,
    MAX_PLAINTEXT_LEN,
    MAX_POLICY_LEN,
    MAX_REQUEST_ID,
    PUMP_ID_LEN,
    UINT32_MAX,
    UINT64_MAX,
    MessageType,
    Outcome,
    RefusalCode,
)


class MalformedMessage(RemoteProtocolError):
    """An authenticated plaintext that is not a valid message."""


# Field kinds: (name, low, high).
#   "uint":            an integer in low..high;
#   "bytes":           a byte string of low..high bytes;
#   "bytes-or-empty":  a byte string of 0 bytes or of low..high bytes
#                      (CDDL ``bstr .size (0 / 16)``);
#   "bool":            true or false (low, high unused);
#   "outcome", "refusal": an integer that is a member of the enum (low, high
#                      are its smallest and largest members, for reading only:
#                      membership is the check).
_Kind = tuple[str, int, int]
_U16: Final[_Kind] = ("uint", 0, MAX_REQUEST_ID)
_U32: Final[_Kind] = ("uint", 0, UINT32_MAX)
_U64: Final[_Kind] = ("uint", 0, UINT64_MAX)
_CMD_ID: Final[_Kind] = ("bytes", COMMAND_ID_LEN, COMMAND_ID_LEN)
_CHALLENGE: Final[_Kind] = ("bytes", CHALLENGE_LEN, CHALLENGE_LEN)
_OUTCOME: Final[_Kind] = ("outcome", min(Outcome), max(Outcome))
_REFUSAL: Final[_Kind] = ("refusal", min(RefusalCode), max(RefusalCode))


class Message:
    """Base of every message dataclass."""

    TYPE: ClassVar[MessageType]
    #: One kind per field after ``request_id``, in wire order.
    SCHEMA: ClassVar[tuple[_Kind, ...]]
    request_id: int


@dataclass(frozen=True)
class StatusRequest(Message):
    """``status-request = [1, request-id]``"""

    TYPE = MessageType.STATUS_REQUEST
    SCHEMA = ()
    request_id: int


@dataclass(frozen=True)
class BolusPrepare(Message):
    """``bolus-prepare = [2, request-id, command-id, pulses]``"""

    TYPE = MessageType.BOLUS_PREPARE
    SCHEMA = (_CMD_ID, _U32)
    request_id: int
    command_id: bytes
    pulses: int


@dataclass(frozen=True)
class BolusCommit(Message):
    """``bolus-commit = [3, request-id, command-id, pulses, challenge]``"""

    TYPE = MessageType.BOLUS_COMMIT
    SCHEMA = (_CMD_ID, _U32, _CHALLENGE)
    request_id: int
    command_id: bytes
    pulses: int
    challenge: bytes


@dataclass(frozen=True)
class CommandQuery(Message):
    """``command-query = [4, request-id, command-id]``"""

    TYPE = MessageType.COMMAND_QUERY
    SCHEMA = (_CMD_ID,)
    request_id: int
    command_id: bytes


@dataclass(frozen=True)
class BolusCancel(Message):
    """``bolus-cancel = [5, request-id]``"""

    TYPE = MessageType.BOLUS_CANCEL
    SCHEMA = ()
    request_id: int


@dataclass(frozen=True)
class HistoryRequest(Message):
    """``history-request = [6, request-id, from-seq]``"""

    TYPE = MessageType.HISTORY_REQUEST
    SCHEMA = (_U64,)
    request_id: int
    from_seq: int


@dataclass(frozen=True)
class PolicyUpload(Message):
    """``policy-upload = [7, request-id, policy: bstr .size (0..96), signature: bstr .size 64]``"""

    TYPE = MessageType.POLICY_UPLOAD
    SCHEMA = (("bytes", 0, MAX_POLICY_LEN), ("bytes", ED25519_SIGNATURE_LEN, ED25519_SIGNATURE_LEN))
    request_id: int
    policy: bytes
    signature: bytes


@dataclass(frozen=True)
class Unpair(Message):
    """``unpair = [8, request-id]``"""

    TYPE = MessageType.UNPAIR
    SCHEMA = ()
    request_id: int


#: Every message a remote sends (types below 0x80): what the pump's command
#: table dispatches and what ``RemoteClient.request`` takes.
Request: TypeAlias = (
    StatusRequest
    | BolusPrepare
    | BolusCommit
    | CommandQuery
    | BolusCancel
    | HistoryRequest
    | PolicyUpload
    | Unpair
)


@dataclass(frozen=True)
class Status(Message):
    """``status = [0x81, request-id, remote-bolus-enabled: bool, state: u32,
    bolus-pulses: uint, basal-pulses: uint, reservoir-pulses: uint,
    active-command-id: bstr .size (0 / 16), active-requested: uint, active-delivered: uint,
    alarms: uint (bit set), limits-version: uint, max-bolus: uint, max-1h: uint,
    max-24h: uint, pump-id: bstr .size 8, audit-key: bstr .size 32, audit-next-seq: uint]``
    """

    TYPE = MessageType.STATUS
    SCHEMA = (
        ("bool", 0, 1),
        _U32,
        _U64,
        _U64,
        _U32,
        ("bytes-or-empty", COMMAND_ID_LEN, COMMAND_ID_LEN),
        _U32,
        _U32,
        _U32,
        _U32,
        _U32,
        _U32,
        _U32,
        ("bytes", PUMP_ID_LEN, PUMP_ID_LEN),
        ("bytes", ED25519_PUBLIC_LEN, ED25519_PUBLIC_LEN),
        _U64,
    )
    request_id: int
    remote_bolus_enabled: bool
    state: int
    bolus_pulses: int
    basal_pulses: int
    reservoir_pulses: int
    active_command_id: bytes
    active_requested: int
    active_delivered: int
    alarms: int
    limits_version: int
    max_bolus_pulses: int
    max_1h_pulses: int
    max_24h_pulses: int
    pump_id: bytes
    audit_key: bytes
    audit_next_seq: int


@dataclass(frozen=True)
class BolusChallenge(Message):
    """``bolus-challenge = [0x82, request-id, command-id, challenge, ttl-ms: uint]``"""

    TYPE = MessageType.BOLUS_CHALLENGE
    SCHEMA = (_CMD_ID, _CHALLENGE, _U32)
    request_id: int
    command_id: bytes
    challenge: bytes
    ttl_ms: int


@dataclass(frozen=True)
class CommandOutcome(Message):
    """``command-outcome = [0x83, request-id, command-id, outcome, requested, delivered]``"""

    TYPE = MessageType.COMMAND_OUTCOME
    SCHEMA = (_CMD_ID, _OUTCOME, _U32, _U32)
    request_id: int
    command_id: bytes
    outcome: Outcome
    requested: int
    delivered: int


@dataclass(frozen=True)
class History(Message):
    """``history = [0x84, request-id, entry: bstr .size (0..200), next-seq: uint]``

    One signed audit entry per response (an empty ``entry`` means none left).
    """

    TYPE = MessageType.HISTORY
    SCHEMA = (("bytes", 0, MAX_AUDIT_SIGNED_LEN), _U64)
    request_id: int
    entry: bytes
    next_seq: int


@dataclass(frozen=True)
class Ok(Message):
    """``ok = [0x85, request-id]``"""

    TYPE = MessageType.OK
    SCHEMA = ()
    request_id: int


@dataclass(frozen=True)
class Refused(Message):
    """``refused = [0xFF, request-id, code: uint, detail: uint]``

    ``detail`` is code-specific: for the limit codes, the pulses still allowed.
    """

    TYPE = MessageType.REFUSED
    SCHEMA = (_REFUSAL, _U32)
    request_id: int
    code: RefusalCode
    detail: int


_BY_TYPE: Final[dict[int, type[Message]]] = {
    cls.TYPE: cls
    for cls in (
        StatusRequest,
        BolusPrepare,
        BolusCommit,
        CommandQuery,
        BolusCancel,
        HistoryRequest,
        PolicyUpload,
        Unpair,
        Status,
        BolusChallenge,
        CommandOutcome,
        History,
        Ok,
        Refused,
    )
}


def encode_message(message: Message) -> bytes:
    """Deterministic CBOR of ``message``.

    Raises:
        LocalProtocolError: a field is out of its schema's bounds, or the
            encoding would not fit in one DATA record.
    """
    values = [
        int(value) if isinstance(value, enum.IntEnum) else value
        for value in (getattr(message, f.name) for f in fields(message))  # type: ignore[arg-type]
    ]
    try:
        _check(values[0], _U16)
        for value, kind in zip(values[1:], message.SCHEMA, strict=True):
            _check(value, kind)
    except MalformedMessage as exc:
        raise LocalProtocolError(f"{type(message).__name__}: {exc}") from None
    encoded = cbor2.dumps([int(message.TYPE), *values], canonical=True)
    if len(encoded) > MAX_PLAINTEXT_LEN:
        raise LocalProtocolError(f"{type(message).__name__} does not fit in one record")
    return encoded


def decode_message(data: bytes) -> Message:
    """Parse one message: the deterministic CBOR of one row of SPEC §12.2.

    Input that is empty, longer than ``MAX_PLAINTEXT_LEN``, or does not start
    with the head of a definite-length array of at most 23 items is refused
    before any CBOR parsing.

    Raises:
        MalformedMessage: anything else than exactly the deterministic
            encoding of a valid message.  No other exception escapes.
    """
    if not data or len(data) > MAX_PLAINTEXT_LEN:
        raise MalformedMessage("message empty or too long")
    # Only a definite-length array of at most 23 items may start a message;
    # checking the first byte keeps cbor2 from parsing anything else at the
    # top level (tags, maps, indefinite lengths).  Items inside the array
    # still go through cbor2 and are held to the schema and the re-encoding
    # check below.
    if data[0] & 0xE0 != 0x80 or data[0] & 0x1F > 23:
        raise MalformedMessage("message is not a short CBOR array")
    try:
        items = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types; all mean "malformed"
        raise MalformedMessage(f"undecodable CBOR ({type(exc).__name__})") from None
    # ``items`` is a list: the first byte is a definite-length array's head.
    if len(items) < 2:
        raise MalformedMessage("message must be an array of at least two items")
    cls = _BY_TYPE.get(items[0]) if type(items[0]) is int else None
    if cls is None:
        raise MalformedMessage("unknown message type")
    if len(items) != 2 + len(cls.SCHEMA):
        raise MalformedMessage(f"{cls.__name__} has the wrong number of fields")
    _check(items[1], _U16)
    for value, kind in zip(items[2:], cls.SCHEMA, strict=True):
        _check(value, kind)
    # The schema admits one value per item; this admits one byte form per
    # value (no trailing bytes, shortest integers and lengths, no tags).
    if cbor2.dumps(items, canonical=True) != data:
        raise MalformedMessage("not the deterministic encoding")
    args: list[Any] = list(items[1:])
    for index, kind in enumerate(cls.SCHEMA, start=1):
        if kind[0] == "outcome":
            args[index] = Outcome(args[index])
        elif kind[0] == "refusal":
            args[index] = RefusalCode(args[index])
    return cls(*args)


def _check(value: object, kind: _Kind) -> None:
    """Raise :class:`MalformedMessage` unless ``value`` is of ``kind`` (see ``_Kind``).

    Types are compared exactly: ``True`` is not the integer 1 here, ``1.0``
    is not an integer, a text string is not a byte string.
    """
    name, low, high = kind
    if name == "bool":
        if type(value) is not bool:
            raise MalformedMessage("expected a bool")
    elif name in ("bytes", "bytes-or-empty"):
        if type(value) is not bytes:
            raise MalformedMessage("expected a byte string")
        if not low <= len(value) <= high and not (name == "bytes-or-empty" and not value):
            raise MalformedMessage(f"expected {low}..{high} bytes")
    elif type(value) is not int:
        raise MalformedMessage("expected an integer")
    elif name == "outcome":
        if value not in Outcome._value2member_map_:
            raise MalformedMessage("unknown outcome")
    elif name == "refusal":
        if value not in RefusalCode._value2member_map_:
            raise MalformedMessage("unknown refusal code")
    elif not low <= value <= high:
        raise MalformedMessage(f"expected an integer in {low}..{high}")
