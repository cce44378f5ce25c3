"""The delivery state machine: its states, its triggers and its one table.

Every way the pump's delivery can change state is in :data:`TRANSITIONS`, so
a reviewer audits one table (STYLE §2).  The engine (``DeliveryEngine`` in
``delivery.py``) fires the triggers; a trigger absent from the table for the
current state raises ``DeliveryRefused`` and changes nothing.
A state's value is what the ``status`` message carries as
``delivery-state`` (SPEC §12.2) and what a delivery snapshot stores
(SPEC §13.1), so the values never change.

Basal runs in IDLE and BOLUS (:data:`DELIVERING`); nothing moves in the
other states.

=========== ================= =========== =========================================
state       trigger           next        caused by
=========== ================= =========== =========================================
IDLE        START_BOLUS       BOLUS       ``start_bolus()``
IDLE        SUSPEND           SUSPENDED   ``suspend()``
IDLE        OCCLUSION         OCCLUDED    ``inject_occlusion()`` (pressure sensor)
IDLE        RESERVOIR_EMPTY   EMPTY       ``tick()``: last pulse of the reservoir
BOLUS       BOLUS_COMPLETE    IDLE        ``tick()``: last pulse of the bolus
BOLUS       CANCEL_BOLUS      IDLE        ``cancel_bolus()``
BOLUS       SUSPEND           SUSPENDED   ``suspend()``: the bolus ends SUSPENDED
BOLUS       OCCLUSION         OCCLUDED    ``inject_occlusion()``: the bolus ends
BOLUS       RESERVOIR_EMPTY   EMPTY       ``tick()``: the bolus ends RESERVOIR_EMPTY
SUSPENDED   RESUME            IDLE        ``resume()``: basal restarts, no bolus
SUSPENDED   REFILL            SUSPENDED   ``refill()``
OCCLUDED    CLEAR_OCCLUSION   SUSPENDED   ``clear_occlusion()`` (user at the pump)
EMPTY       REFILL            SUSPENDED   ``refill()``
=========== ================= =========== =========================================

``set_basal_rate()`` is allowed in every state and changes none.  After an
alarm the pump never restarts delivery by itself: the user clears or refills,
which leaves it SUSPENDED, and resumes.  ``resume()`` restarts basal only; a
bolus that was stopped is over (its ``BolusEnded`` was reported) and is
never resumed -- the user decides afresh.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

__all__ = ["DELIVERING", "TRANSITIONS", "DeliveryState", "Trigger"]


class DeliveryState(enum.Enum):
    """What the pump's delivery is doing.  Values are stored in snapshots."""

    #: Basal on schedule, no bolus.
    IDLE = 1
    #: A bolus is being delivered; basal continues beside it.
    BOLUS = 2
    #: Stopped by the user; ``resume()`` restarts basal.
    SUSPENDED = 3
    #: Occlusion alarm: nothing moves until the user clears it at the pump.
    OCCLUDED = 4
    #: The reservoir is empty: nothing moves until it is refilled.
    EMPTY = 5


class Trigger(enum.Enum):
    """What can move the state machine (rows of :data:`TRANSITIONS`)."""

    START_BOLUS = enum.auto()
    BOLUS_COMPLETE = enum.auto()
    CANCEL_BOLUS = enum.auto()
    SUSPEND = enum.auto()
    RESUME = enum.auto()
    OCCLUSION = enum.auto()
    CLEAR_OCCLUSION = enum.auto()
    RESERVOIR_EMPTY = enum.auto()
    REFILL = enum.auto()


_S = DeliveryState
_T = Trigger

#: The whole state machine: ``(state, trigger) -> next state``.  Nothing else
#: assigns the state (except ``DeliveryEngine.restore()``, which maps a
#: stored BOLUS to IDLE).  The module docstring's table is this table;
#: tests/test_delivery.py checks that they agree.
TRANSITIONS: Final[Mapping[tuple[DeliveryState, Trigger], DeliveryState]] = {
    (_S.IDLE, _T.START_BOLUS): _S.BOLUS,
    (_S.IDLE, _T.SUSPEND): _S.SUSPENDED,
    (_S.IDLE, _T.OCCLUSION): _S.OCCLUDED,
    (_S.IDLE, _T.RESERVOIR_EMPTY): _S.EMPTY,
    (_S.BOLUS, _T.BOLUS_COMPLETE): _S.IDLE,
    (_S.BOLUS, _T.CANCEL_BOLUS): _S.IDLE,
    (_S.BOLUS, _T.SUSPEND): _S.SUSPENDED,
    (_S.BOLUS, _T.OCCLUSION): _S.OCCLUDED,
    (_S.BOLUS, _T.RESERVOIR_EMPTY): _S.EMPTY,
    (_S.SUSPENDED, _T.RESUME): _S.IDLE,
    (_S.SUSPENDED, _T.REFILL): _S.SUSPENDED,
    (_S.OCCLUDED, _T.CLEAR_OCCLUSION): _S.SUSPENDED,
    (_S.EMPTY, _T.REFILL): _S.SUSPENDED,
}

#: States in which the motor runs.
DELIVERING: Final = frozenset({_S.IDLE, _S.BOLUS})
