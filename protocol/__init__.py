"""pumpguard's protocol core: sans-I/O, no clock, no global randomness.

Bytes and events in, bytes and events out.  Time (``now``) and randomness
(``random_bytes``) are passed in by the caller.  ``firmware_sim`` and
``host`` import only the names re-exported here.  See docs/SPEC.md.
"""

from . import audit_entry, legacy, wire
from .errors import (
    AuthenticationFailed,
    CounterExhausted,
    FramingError,
    HandshakeRefused,
    LocalProtocolError,
    MalformedRecord,
    ProtocolError,
    RemoteProtocolError,
    ReplayRefused,
)
from .framing import FrameDecoder, decode_frame, encode_frame
from .handshake import (
    HandshakeAccepted,
    HandshakeInitiator,
    HandshakeResponder,
    PairedPeer,
    paired_peer,
)
from .messages import (
    BolusCancel,
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    CommandQuery,
    History,
    HistoryRequest,
    MalformedMessage,
    Message,
    Ok,
    PolicyUpload,
    Refused,
    Request,
    Status,
    StatusRequest,
    Unpair,
    decode_message,
    encode_message,
)
from .pairing import (
    PairingInitiator,
    PairingResponder,
    PairingResult,
    PairingState,
    comparison_code,
)
from .policy import LimitPolicy, PolicyInvalid, encode_policy, pump_id, sign_policy, verify_policy
from .primitives import (
    RandomBytes,
    check_x25519_public,
    constant_time_equal,
    x25519_private,
    x25519_public_bytes,
)
from .session import SecureSession, SessionKeys
from .trace import describe_record
from .units import pulses_to_float_units, pulses_to_units, units_to_pulses
from .wire import MessageType, Outcome, RecordType, RefusalCode

__all__ = [
    "AuthenticationFailed",
    "BolusCancel",
    "BolusChallenge",
    "BolusCommit",
    "BolusPrepare",
    "CommandOutcome",
    "CommandQuery",
    "CounterExhausted",
    "FrameDecoder",
    "FramingError",
    "HandshakeAccepted",
    "HandshakeInitiator",
    "HandshakeRefused",
    "HandshakeResponder",
    "History",
    "HistoryRequest",
    "LimitPolicy",
    "LocalProtocolError",
    "MalformedMessage",
    "MalformedRecord",
    "Message",
    "MessageType",
    "Ok",
    "Outcome",
    "PairedPeer",
    "PairingInitiator",
    "PairingResponder",
    "PairingResult",
    "PairingState",
    "PolicyInvalid",
    "PolicyUpload",
    "ProtocolError",
    "RandomBytes",
    "RecordType",
    "RefusalCode",
    "Refused",
    "RemoteProtocolError",
    "ReplayRefused",
    "Request",
    "SecureSession",
    "SessionKeys",
    "Status",
    "StatusRequest",
    "Unpair",
    "audit_entry",
    "check_x25519_public",
    "comparison_code",
    "constant_time_equal",
    "decode_frame",
    "decode_message",
    "describe_record",
    "encode_frame",
    "encode_message",
    "encode_policy",
    "legacy",
    "paired_peer",
    "pulses_to_float_units",
    "pulses_to_units",
    "pump_id",
    "sign_policy",
    "units_to_pulses",
    "verify_policy",
    "wire",
    "x25519_private",
    "x25519_public_bytes",
]
