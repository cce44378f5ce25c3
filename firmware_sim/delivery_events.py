"""What the delivery engine tells its caller, and how it refuses.

The vocabulary shared by the engine (``delivery.py``), its snapshot
(``delivery_snapshot.py``) and the pump (``pump.py``):

* why a bolus ended, :class:`StopReason`, and the wire outcome a remote is
  told for it (SPEC §12.4);
* the alarms, :class:`Alarm`;
* the frozen events that ``DeliveryEngine.tick()`` and the commands return,
  :data:`DeliveryEvent`, and the bolus in progress, :class:`ActiveBolus`;
* one small error hierarchy under :class:`DeliveryError`.  A refusal carries
  the refused state and trigger, from which a caller can pick its refusal
  code (SPEC §12.2); a snapshot that does not read back is
  :class:`DeliverySnapshotInvalid`, which sends the pump to its safe state
  (SPEC §13.3, boot step 4).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from pumpguard.protocol import wire

from .delivery_states import DeliveryState, Trigger

__all__ = [
    "ActiveBolus",
    "Alarm",
    "AlarmRaised",
    "BasalMissed",
    "BolusEnded",
    "DeliveryError",
    "DeliveryEvent",
    "DeliveryRefused",
    "DeliverySnapshotInvalid",
    "InsufficientReservoir",
    "PulsesDelivered",
    "StopReason",
]


class StopReason(enum.Enum):
    """Why a bolus ended.  Values are stored in snapshots."""

    #: Every requested pulse was delivered.
    COMPLETED = 1
    #: ``cancel_bolus()``.
    CANCELLED = 2
    #: ``suspend()`` stopped it.
    SUSPENDED = 3
    #: The occlusion alarm stopped it.
    OCCLUSION = 4
    #: The reservoir ran out.
    RESERVOIR_EMPTY = 5
    #: Power was lost; found at restore.
    POWER_LOSS = 6

    @property
    def outcome(self) -> wire.Outcome:
        """The wire outcome a remote is told (SPEC §12.4)."""
        if self is StopReason.COMPLETED:
            return wire.Outcome.DELIVERED
        if self is StopReason.CANCELLED:
            return wire.Outcome.CANCELLED
        return wire.Outcome.INTERRUPTED


class Alarm(enum.Enum):
    """Alarms the pump sounds (the caller shows them and logs them)."""

    LOW_RESERVOIR = 1
    RESERVOIR_EMPTY = 2
    OCCLUSION = 3


# --- Events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PulsesDelivered:
    """Pulses made by one ``tick()`` (at most one such event per tick)."""

    basal: int
    bolus: int


@dataclass(frozen=True, slots=True)
class BolusEnded:
    """A bolus is over, for ``reason``; ``delivered`` pulses went in."""

    cmd_id: bytes
    requested: int
    delivered: int
    reason: StopReason

    @property
    def outcome(self) -> wire.Outcome:
        return self.reason.outcome


@dataclass(frozen=True, slots=True)
class BasalMissed:
    """Overdue basal pulses skipped by the catch-up bound (never delivered)."""

    pulses: int


@dataclass(frozen=True, slots=True)
class AlarmRaised:
    """An alarm started (each is reported once per occurrence)."""

    alarm: Alarm


DeliveryEvent: TypeAlias = PulsesDelivered | BolusEnded | BasalMissed | AlarmRaised


@dataclass(frozen=True, slots=True)
class ActiveBolus:
    """The bolus in progress: ``delivered`` of ``requested`` pulses so far."""

    cmd_id: bytes
    requested: int
    delivered: int


# --- Errors ---------------------------------------------------------------------


class DeliveryError(Exception):
    """Base of the delivery engine's errors."""


class DeliveryRefused(DeliveryError):
    """The request is not allowed in the current state; nothing changed.

    ``state`` and ``trigger`` let the caller pick the refusal code (a
    START_BOLUS refused in BOLUS is "busy", a CANCEL_BOLUS outside BOLUS is
    "nothing to cancel", anything else "delivery unavailable").
    """

    def __init__(self, state: DeliveryState, trigger: Trigger, detail: str = "") -> None:
        self.state = state
        self.trigger = trigger
        super().__init__(detail or f"{trigger.name} not allowed in {state.name}")


class InsufficientReservoir(DeliveryRefused):
    """The bolus asks for more pulses than the reservoir holds."""


class DeliverySnapshotInvalid(DeliveryError, ValueError):
    """A snapshot is not one ``DeliveryEngine.snapshot()`` could have made,
    or disagrees with the motor's witness.  The caller must go to its safe
    state; it must not start from defaults."""
