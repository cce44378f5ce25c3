"""Pairing mode on the pump: the front-panel side of SPEC §9.5.

:class:`PairingMode` runs one pairing attempt at a time, opened from the
menu, with :class:`~protocol.pairing.PairingResponder` doing the
cryptography.  Its state is one :class:`PairingPhase`:

================ ============================== ================
phase            on                             next
================ ============================== ================
CLOSED           menu: Pair                     WAITING
LOCKED_OUT       menu: Pair, lockout over       WAITING
LOCKED_OUT       lockout over (tick)            CLOSED
WAITING          PAIR_REMOTE_NONCE              COMPARING
COMPARING        user confirms                  USER_CONFIRMED
COMPARING        user confirms, remote has      CLOSED (paired)
USER_CONFIRMED   PAIR_REMOTE_CONFIRM            CLOSED (paired)
(open)           menu: Pair                     WAITING (a fresh attempt)
(open)           a check fails, user rejects,   CLOSED or LOCKED_OUT
                 timeout
================ ============================== ================

``PAIR_REQUEST`` and an early ``PAIR_REMOTE_CONFIRM`` (the remote's user
confirmed first) keep the phase.  The pairing list being full keeps the menu
closed.  The persistent part -- the failure count, the new remote -- is the
pump's: it commits the attempt's end (SPEC §13.3) and then calls
:meth:`PairingMode.close` with the count now stored, which decides the
lockout.  A record that is not for the current phase is refused without
ending the attempt; the pump ends it when :attr:`PairingMode.attempt_failed`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pumpguard.protocol import (
    AuthenticationFailed,
    PairingResponder,
    PairingResult,
    PairingState,
    RandomBytes,
    RecordType,
    wire,
)

from . import config
from .panel import FrontPanel


class PairingPhase(enum.Enum):
    """Where pairing mode is (the rows of the module's table)."""

    #: Not in pairing mode; the menu may open it.
    CLOSED = enum.auto()
    #: Not in pairing mode, and the menu will not open it before the lockout
    #: of repeated failed attempts ends (SPEC §9.5).
    LOCKED_OUT = enum.auto()
    #: Pairing mode: waiting for the remote's PAIR_REQUEST and PAIR_REMOTE_NONCE.
    WAITING = enum.auto()
    #: The comparison code is on the display; the user has not answered.
    COMPARING = enum.auto()
    #: The user confirmed the code; waiting for the remote's PAIR_REMOTE_CONFIRM.
    USER_CONFIRMED = enum.auto()


#: The phases in which the pump is in pairing mode.
OPEN_PHASES: Final = frozenset(
    {PairingPhase.WAITING, PairingPhase.COMPARING, PairingPhase.USER_CONFIRMED}
)


def lockout_seconds(failures: int) -> float:
    """How long pairing stays locked after ``failures`` failed attempts in a row (0: none)."""
    if failures < config.PAIRING_FAILURES_BEFORE_LOCKOUT:
        return 0.0
    excess = failures - config.PAIRING_FAILURES_BEFORE_LOCKOUT
    return float(min(config.PAIRING_LOCKOUT_BASE_S * 2**excess, config.PAIRING_LOCKOUT_MAX_S))


@dataclass(frozen=True)
class PairingDone:
    """Both sides confirmed: the pump stores ``result``, then calls :meth:`PairingMode.answer`."""

    result: PairingResult
    #: PAIR_PUMP_CONFIRM, to send only once the result is stored.
    reply: bytes
    #: The remote's PAIR_REMOTE_CONFIRM it answers.
    answering: bytes


class PairingMode:
    """One pairing attempt at a time, its lockout, and the repeated answers."""

    def __init__(
        self, *, panel: FrontPanel, send: Callable[[bytes], None], random_bytes: RandomBytes
    ) -> None:
        self._panel = panel
        self._send = send
        self._random_bytes = random_bytes
        self.phase = PairingPhase.CLOSED
        self._responder: PairingResponder | None = None
        self._deadline = 0.0
        self._locked_until = 0.0
        #: The remote's PAIR_REMOTE_CONFIRM of the attempt in progress.
        self._remote_confirm = b""
        #: (last pairing record received, our reply, until when to repeat it).
        self._echo: tuple[bytes, bytes, float] | None = None

    @property
    def is_open(self) -> bool:
        """The pump is in pairing mode."""
        return self.phase in OPEN_PHASES

    @property
    def attempt_failed(self) -> bool:
        """A record failed a check (key, commitment, confirmation): the attempt is over."""
        return self._responder is not None and self._responder.state is PairingState.FAILED

    def lock_out(self, failures: int, now: float) -> None:
        """Serve the lockout ``failures`` failed attempts earn, from ``now`` (none below
        ``PAIRING_FAILURES_BEFORE_LOCKOUT``).  At boot it is served again in full."""
        seconds = lockout_seconds(failures)
        if seconds:
            self._locked_until = now + seconds
            self.phase = PairingPhase.LOCKED_OUT

    def open(self, now: float, *, local_static: X25519PrivateKey, paired: int) -> None:
        """Menu > Remote > Pair: start a fresh attempt, unless locked out or full."""
        if self.phase is PairingPhase.LOCKED_OUT and now < self._locked_until:
            self._panel.show("info", f"pairing locked for {int(self._locked_until - now)} s")
            return
        if paired >= wire.MAX_REMOTES:
            self._panel.show("info", "pairing list full: unpair a remote first")
            return
        self._echo = None
        self._panel.code_shown = None
        self.phase = PairingPhase.WAITING
        self._responder = PairingResponder(local_static, self._random_bytes)
        self._deadline = now + config.PAIRING_MODE_TIMEOUT_S
        self._panel.show("pairing", "pairing mode: waiting for a remote")

    def on_record(self, record: bytes, now: float) -> PairingDone | None:
        """A ``PAIR_*`` record from the link.

        Returns:
            :class:`PairingDone` when this record completes the pairing.

        Raises:
            RemoteProtocolError: the record is refused (dropped without a reply).
        """
        echo = self._echo
        if echo is not None and echo[0] == record and now <= echo[2]:
            # The remote resent a record whose answer was lost: answer again.
            # (Also just after pairing completed, if PAIR_PUMP_CONFIRM was lost.)
            self._send(echo[1])
            return None
        responder = self._responder
        if not self.is_open or responder is None:
            self._panel.show("pairing-request", "a remote asks to pair: open Menu > Remote > Pair")
            raise AuthenticationFailed("not in pairing mode")
        kind = record[0]
        if kind == RecordType.PAIR_REQUEST and responder.state is PairingState.IDLE:
            self._answer(record, responder.receive_request(record), now)
        elif kind == RecordType.PAIR_REMOTE_NONCE:
            reply, code = responder.receive_remote_nonce(record)
            self.phase = PairingPhase.COMPARING
            self._panel.code_shown = code
            self._panel.show(
                "code", f"does the remote show {code[:3]} {code[3:]}? confirm or reject"
            )
            self._answer(record, reply, now)
        elif kind == RecordType.PAIR_REMOTE_CONFIRM:
            responder.receive_remote_confirm(record)
            self._remote_confirm = record
            if self.phase is PairingPhase.USER_CONFIRMED:
                return self._done(responder)
        elif kind == RecordType.PAIR_REQUEST:
            raise AuthenticationFailed("a pairing is already in progress")
        else:
            raise AuthenticationFailed("unexpected pairing record")
        return None

    def user_confirms(self) -> PairingDone | None:
        """The user pressed "the code matches".

        Returns:
            :class:`PairingDone` if the remote's confirmation is already in.
        """
        responder = self._responder
        if self.phase is not PairingPhase.COMPARING or responder is None:
            return None
        self.phase = PairingPhase.USER_CONFIRMED
        return self._done(responder) if responder.remote_confirmed else None

    def timed_out(self, now: float) -> bool:
        """Pairing mode has been open longer than ``PAIRING_MODE_TIMEOUT_S``."""
        return self.is_open and now > self._deadline

    def expire(self, now: float) -> None:
        if self.phase is PairingPhase.LOCKED_OUT and now >= self._locked_until:
            self.phase = PairingPhase.CLOSED

    def close(self, failures: int, now: float) -> None:
        """Leave pairing mode; ``failures`` is the failure count now stored, which
        may lock pairing out (SPEC §9.5)."""
        self._echo = None
        self._responder = None
        self._panel.code_shown = None
        self.phase = PairingPhase.CLOSED
        self.lock_out(failures, now)

    def answer(self, done: PairingDone, now: float) -> None:
        """Send PAIR_PUMP_CONFIRM, once the pump has stored the pairing."""
        self._answer(done.answering, done.reply, now)

    def _answer(self, received: bytes, reply: bytes, now: float) -> None:
        """Send a pairing reply and remember it, to answer a resent record again."""
        self._echo = (received, reply, now + config.PAIRING_MODE_TIMEOUT_S)
        self._send(reply)

    def _done(self, responder: PairingResponder) -> PairingDone:
        result, reply = responder.user_confirmed()
        return PairingDone(result, reply, self._remote_confirm)
