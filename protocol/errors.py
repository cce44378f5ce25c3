"""The protocol's exception hierarchy (SPEC §10).

Modelled on h11: an abstract :class:`ProtocolError` with two branches.

* :class:`LocalProtocolError` -- the caller asked for something the protocol
  forbids (sealing past the counter limit, an oversized record).  It is a bug
  or a state the caller must handle (rekey), never the peer's doing.
* :class:`RemoteProtocolError` -- bytes we were handed were refused: a frame
  from the link, or a signed body the peer produced (a policy, an audit log)
  that a higher layer passed in.  The bytes are at fault, not the caller.

Every exception class defined in ``protocol/`` is in this tree and defined in
this module (``messages.MalformedMessage`` excepted, for now); the modules that
raise them re-export them, so ``protocol.audit_entry.EntryMalformed`` and
``protocol.policy.PolicyInvalid`` import as before.  ``tests/test_errors.py``
checks every ``protocol`` module for an exception class outside the tree.

Every exception here is for the *local* log.  The peer is never told which
check failed: unauthenticated input is dropped silently (SPEC §10.2), so bad
tag, replay and malformed input are indistinguishable on the wire.

Any other exception escaping a ``protocol`` API is a bug, with one kind of
exception: helpers that convert a caller's plain values and read no bytes
(``units.units_to_pulses`` parsing typed-in doses, ``timebase``) raise
:class:`ValueError`, as ``int()`` and ``Decimal()`` do.
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


class PolicyInvalid(RemoteProtocolError):
    """A limits policy that is malformed, out of bounds, or for another pump (SPEC §12.5).

    Remote: the policy bytes came from the prescriber through the remote.  A
    policy built locally and out of bounds (``LimitPolicy.check_bounds`` before
    encoding) raises it too; the bounds are one rule whoever breaks them.
    """


class EntryMalformed(RemoteProtocolError):
    """An audit entry's bytes, or its contents, break the format (SPEC §13.4).

    Remote: the entry was read back from a pump (over History, or from its
    flash).  The firmware also uses the format's checks on what it is about to
    write, and turns this into :class:`ValueError` for its own callers.
    """


class AuditVerificationError(RemoteProtocolError):
    """An audit log did not verify (SPEC §13.4).

    Remote: the log is the pump's; the host refuses it.

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
