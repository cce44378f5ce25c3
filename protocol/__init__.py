"""pumpguard's protocol core: sans-I/O, no clock, no global randomness.

Bytes and events in, bytes and events out.  Time (``now``) and randomness
(``random_bytes``) are passed in by the caller.  ``firmware_sim`` and
``host`` import only the names re-exported here.  See docs/SPEC.md.
"""

from . import wire
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
    RandomBytes,
    paired_peer,
)
from .primitives import check_x25519_public, x25519_private, x25519_public_bytes
from .session import SecureSession, SessionKeys

__all__ = [
    "AuthenticationFailed",
    "CounterExhausted",
    "FrameDecoder",
    "FramingError",
    "HandshakeAccepted",
    "HandshakeInitiator",
    "HandshakeRefused",
    "HandshakeResponder",
    "LocalProtocolError",
    "MalformedRecord",
    "PairedPeer",
    "ProtocolError",
    "RandomBytes",
    "RemoteProtocolError",
    "ReplayRefused",
    "SecureSession",
    "SessionKeys",
    "check_x25519_public",
    "decode_frame",
    "encode_frame",
    "paired_peer",
    "wire",
    "x25519_private",
    "x25519_public_bytes",
]
