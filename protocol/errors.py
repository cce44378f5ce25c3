"""The protocol's exception hierarchy (SPEC §10).

Modelled on h11: an abstract :class:`ProtocolError` with two branches.

* :class:`LocalProtocolError` -- the caller asked for something the protocol
  forbids (sealing past the counter limit, an oversized record).  It is a bug
  or a state the caller must handle (rekey), never the peer's doing.
* :class:`RemoteProtocolError` -- bytes from the link were refused.

Every exception here is for the *local* log.  The peer is never told which
check failed: unauthenticated input is dropped silently (SPEC §10.2), so bad
tag, replay and malformed input are indistinguishable on the wire.

Any other exception escaping a ``protocol`` API is a bug.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Abstract base of every error this package raises on purpose.

    Never raised directly, nor is :class:`RemoteProtocolError`; raise a
    concrete subclass.  ``tests/test_errors.py`` enforces this on the source
    rather than with a ``__new__`` check, because refusing a replayed record
    is on the hot path and a Python-level ``__new__`` tripled its cost.
    """


class LocalProtocolError(ProtocolError):
    """The caller misused the API or must act (for example, rekey)."""


class CounterExhausted(LocalProtocolError):
    """The session's send counter reached its limit; a new handshake is due."""


class RemoteProtocolError(ProtocolError):
    """Input from the link was refused.  Never echoed to the peer."""


class FramingError(RemoteProtocolError):
    """A link frame was damaged: bad COBS, bad CRC, oversized or empty."""


class MalformedRecord(RemoteProtocolError):
    """A record's length or type is not what its position allows."""


class AuthenticationFailed(RemoteProtocolError):
    """A tag did not verify, or a public key was invalid."""


class ReplayRefused(RemoteProtocolError):
    """An authentic-looking counter was seen before, is too old, or is past the limit."""


class HandshakeRefused(RemoteProtocolError):
    """A handshake message could not be accepted in the current state."""
