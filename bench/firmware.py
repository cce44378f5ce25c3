"""The real pump firmware and a remote, in one process, for the benchmarks.

:class:`PumpParty` is a :class:`pumpguard.host.rawremote.RawRemote` on a
:class:`pumpguard.host.inmemory.Rig` (the pump on in-memory flash,
``config.FLASH_SECTOR_SIZE`` x ``config.FLASH_SECTOR_COUNT`` as the device,
or on a flash image file), paired through the six pairing records and the
pump's front panel (SPEC §9), with a handshake (SPEC §6) made and remote
bolus switched on at the pump.  After that, :meth:`RawRemote.exchange` is
one command exchange over a direct link without the remote's client library
around it.  This module adds only the bolus the benchmarks time.

The pump's clock (``rig.clock.now``) is set by the caller and never runs by
itself; nothing here sleeps.  Randomness is seeded, so runs are repeatable.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from pumpguard.firmware_sim.panel import Button
from pumpguard.host.inmemory import Rig
from pumpguard.host.rawremote import NoAnswer, RawRemote
from pumpguard.protocol import (
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    Message,
    Outcome,
    wire,
)

#: The bolus the exchange benchmarks send: one pulse (0.05 U).
BOLUS_PULSES = 1


class PumpParty(RawRemote):
    """A pump on simulated flash and one paired remote with a live session.

    Args:
        seed: seeds the pump's and the remote's randomness.
        flash_path: a flash image file (every program and erase is written
            through and fsync'ed, as ``pumpsim`` does); ``None`` for the
            in-memory flash.
    """

    def __init__(self, seed: int = 0, *, flash_path: Path | None = None) -> None:
        rig = Rig(random_bytes=random.Random(seed).randbytes, flash_path=flash_path)
        super().__init__(rig, random_bytes=random.Random(seed + 1).randbytes)
        self._command_ids = itertools.count(1)
        self.pair()
        self.connect()
        rig.press(Button.REMOTE_BOLUS_ON)
        if not rig.pump.persistent.remote_bolus_enabled:
            raise NoAnswer("remote bolus did not switch on")

    def next_command_id(self) -> bytes:
        """``seq || 8 zero bytes``: the seq counts up per remote, as SPEC §12.4 requires."""
        seq = next(self._command_ids).to_bytes(wire.COMMAND_SEQ_LEN, "big")
        return seq + bytes(wire.COMMAND_NONCE_LEN)

    def bolus_exchange(self) -> Message:
        """BolusPrepare, then BolusCommit with the pump's challenge, under a new command id.

        Returns the pump's last answer: a :class:`CommandOutcome` saying
        IN_PROGRESS once the bolus is persisted, audited and started.
        """
        command_id = self.next_command_id()
        challenge = self.exchange(BolusPrepare(self.next_id(), command_id, BOLUS_PULSES))
        if not isinstance(challenge, BolusChallenge):
            raise NoAnswer(f"prepare answered with {challenge!r}")
        return self.exchange(
            BolusCommit(self.next_id(), command_id, BOLUS_PULSES, challenge.challenge)
        )

    def end_bolus(self) -> None:
        """Between rounds: the user cancels the bolus at the pump before its first pulse.

        The clock moves on 10 ms, so every round's audit entry has its own
        time; a cancelled bolus that delivered nothing counts against no limit.
        """
        if self.rig.pump.delivery.active_bolus is not None:
            self.rig.press(Button.CANCEL_BOLUS)
        self.rig.clock.now += 0.01

    def check_bolus_started(self, answer: Message) -> None:
        if not (
            isinstance(answer, CommandOutcome)
            and answer.outcome is Outcome.IN_PROGRESS
            and answer.requested == BOLUS_PULSES
        ):
            raise NoAnswer(f"the bolus did not start: {answer!r}")

    def close(self) -> None:
        self.rig.close()
