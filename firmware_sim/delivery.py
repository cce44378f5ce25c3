"""Insulin delivery: basal schedule, one bolus at a time, alarms, the ledger.

:class:`DeliveryEngine` is the pump's therapy core, written as firmware is:
an explicit state enum, one transition table, integer pulses
(``wire.PULSE_MILLIUNITS`` each, never floating-point units), bounded work
per call, and time only from the ``now`` the caller passes (monotonic
seconds, converted once to integer milliseconds).  It drives a
:class:`~firmware_sim.motor.Motor`; every pulse it makes is one
``motor.pulse()`` and one increment of exactly one ledger counter, so
``motor.pulses - motor_base == basal_pulses_delivered + bolus_pulses_delivered``
holds after every call (a motor call that raises leaves its pulse out of the
ledger; the witness may hold it, and :meth:`DeliveryEngine.restore` takes it
back in).

State machine
-------------

Basal runs in IDLE and BOLUS; nothing moves in the other states.  Every
transition is in :data:`TRANSITIONS`; a trigger absent from it for the current
state raises :class:`DeliveryRefused` and changes nothing.

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
bolus that was stopped is over (its :class:`BolusEnded` was reported) and is
never resumed -- the user decides afresh.

Schedules (integer milliseconds)
--------------------------------

* **Basal** at ``r`` pulses per hour: pulse ``k`` after the anchor (the
  moment basal last (re)started) is due at ``anchor + ceil(k * 3_600_000 / r)``.
* **Bolus**: pulse ``j`` is due at ``start + j * BOLUS_PULSE_INTERVAL_MS``, so
  ``start_bolus()`` never pulses and a bolus of ``N`` pulses is complete
  exactly ``N * BOLUS_PULSE_INTERVAL_S`` seconds after it started.
* ``tick(now)`` delivers the pulses due at or before ``now``, oldest first
  (basal before bolus on a tie), so the totals and the order of events depend
  only on ``now`` -- not on how often or how late the caller ticked --
  *as long as no tick finds more overdue pulses than the catch-up bounds*:
* **Catch-up bounds.**  A tick that finds more than ``BOLUS_MAX_CATCHUP_PULSES``
  bolus pulses overdue (the loop was held up for more than ~10 s) delivers
  that many and lets the rest of the bolus *slip*: it continues at the
  nominal interval from this tick.  A bolus therefore never runs ahead of its
  schedule and a stall never becomes a burst of more than 0.25 U.  Overdue
  basal pulses beyond ``BASAL_MAX_CATCHUP_PULSES`` are skipped and reported
  as :class:`BasalMissed`: after a long gap the pump does not dump the missed
  basal in one go.
* **Stops win over catching up.**  ``cancel_bolus()``, ``suspend()`` and
  ``inject_occlusion()`` act at once: pulses that were due but not yet made
  because the last tick was late are not made.

Exactly once
------------

``start_bolus()`` returns before any pulse; the caller persists "bolus
started, cmd_id, pulses" (e.g. :meth:`DeliveryEngine.snapshot`) and only then
ticks.  If persisting fails, ``cancel_bolus()`` still ends it with 0 pulses.

Reboot
------

:meth:`DeliveryEngine.snapshot` is a flat dict of ints and bytes (CBOR-able,
no times: the monotonic clock restarts at boot).  :meth:`DeliveryEngine.restore`
rebuilds the engine.  A bolus in progress at the power cut is **not**
resumed: it ends POWER_LOSS with the pulses delivered so far, and the next
``tick()`` reports that :class:`BolusEnded`.  Resuming would deliver the rest
of a dose minutes or hours after the user asked for it, perhaps after they
ate, corrected by hand or changed their mind, and the pump told them the
bolus had started, so they can look at what was delivered and ask again.
Never more than asked, never later than expected.

Pulses the motor's witness counted after the snapshot was taken (the
process died between a pulse and the next persist) are added to the ledger
at restore: to the interrupted bolus first, up to what it asked for, then to
basal.  That may overstate the bolus by the few basal pulses of one tick, but
never understates what went in, so a user is never told to re-dose for
insulin they already have.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from pumpguard.protocol import wire
from pumpguard.protocol.timebase import ms_floor

from . import config
from .motor import Motor

__all__ = [
    "TRANSITIONS",
    "ActiveBolus",
    "Alarm",
    "AlarmRaised",
    "BasalMissed",
    "BolusEnded",
    "DeliveryEngine",
    "DeliveryError",
    "DeliveryEvent",
    "DeliveryRefused",
    "DeliverySnapshotInvalid",
    "DeliveryState",
    "InsufficientReservoir",
    "PulsesDelivered",
    "StopReason",
    "Trigger",
]


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
#: assigns the state (except :meth:`DeliveryEngine.restore`, which maps a
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
_DELIVERING: Final = frozenset({_S.IDLE, _S.BOLUS})


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
    """Base of this module's errors."""


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
    """A snapshot is not one :meth:`DeliveryEngine.snapshot` could have made,
    or disagrees with the motor's witness.  The caller must go to its safe
    state; it must not start from defaults."""


# --- The engine -------------------------------------------------------------------


@dataclass(slots=True)
class _Bolus:
    cmd_id: bytes
    requested: int
    delivered: int
    #: Schedule: pulse ``delivered - base + i`` is due at
    #: ``anchor_ms + (delivered - base + i) * BOLUS_PULSE_INTERVAL_MS``.
    anchor_ms: int
    base: int


_SNAPSHOT_VERSION: Final = 1
_SNAPSHOT_KEYS: Final = frozenset(
    {
        "v",
        "state",
        "reservoir",
        "basal_rate",
        "basal_delivered",
        "bolus_delivered",
        "basal_missed",
        "low_alarmed",
        "motor_base",
        "bolus_cmd_id",
        "bolus_requested",
        "bolus_so_far",
        "last_cmd_id",
        "last_requested",
        "last_delivered",
        "last_reason",
    }
)


def _check_cmd_id(cmd_id: bytes) -> None:
    if not isinstance(cmd_id, bytes) or len(cmd_id) != wire.COMMAND_ID_LEN:
        raise ValueError(f"cmd_id must be {wire.COMMAND_ID_LEN} bytes")


def _check_count(name: str, value: int, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}")


class DeliveryEngine:
    """The pump's delivery state machine (see the module docstring).

    Args:
        motor: the hardware; every pulse goes through ``motor.pulse()``.
        now: the monotonic clock, seconds; basal starts here.
        reservoir_pulses: what the reservoir holds (0 starts EMPTY).
        basal_pulses_per_hour: basal rate, ``0..MAX_BASAL_PULSES_PER_HOUR``.
        low_reservoir_pulses: the low-reservoir alarm threshold.
    """

    def __init__(
        self,
        motor: Motor,
        *,
        now: float,
        reservoir_pulses: int = config.RESERVOIR_CAPACITY_PULSES,
        basal_pulses_per_hour: int = config.DEFAULT_BASAL_PULSES_PER_HOUR,
        low_reservoir_pulses: int = config.LOW_RESERVOIR_PULSES,
    ) -> None:
        _check_count("reservoir_pulses", reservoir_pulses, 0, config.RESERVOIR_CAPACITY_PULSES)
        _check_count(
            "basal_pulses_per_hour", basal_pulses_per_hour, 0, config.MAX_BASAL_PULSES_PER_HOUR
        )
        _check_count(
            "low_reservoir_pulses", low_reservoir_pulses, 0, config.RESERVOIR_CAPACITY_PULSES
        )
        self._motor = motor
        self._now_ms = ms_floor(now)
        self._state = _S.IDLE if reservoir_pulses > 0 else _S.EMPTY
        self._reservoir = reservoir_pulses
        self._low_threshold = low_reservoir_pulses
        self._low_alarmed = False
        self._basal_rate = basal_pulses_per_hour
        self._basal_anchor_ms = self._now_ms
        self._basal_k = 0
        self._basal_delivered = 0
        self._bolus_delivered = 0
        self._basal_missed = 0
        self._motor_base = motor.pulses
        self._bolus: _Bolus | None = None
        self._last_bolus: BolusEnded | None = None
        #: Events found outside a tick (boot, refill), reported by the next
        #: tick.  At most three: an interrupted bolus and two alarms.
        self._pending: list[DeliveryEvent] = []
        if self._state is _S.EMPTY:
            self._pending.append(AlarmRaised(Alarm.RESERVOIR_EMPTY))
        self._check_low(self._pending)

    # --- read-only view --------------------------------------------------------------

    @property
    def state(self) -> DeliveryState:
        return self._state

    @property
    def reservoir_pulses(self) -> int:
        return self._reservoir

    @property
    def basal_pulses_per_hour(self) -> int:
        return self._basal_rate

    @property
    def basal_pulses_delivered(self) -> int:
        """Basal pulses made over the ledger's life (never decreases)."""
        return self._basal_delivered

    @property
    def bolus_pulses_delivered(self) -> int:
        """Bolus pulses made over the ledger's life (never decreases)."""
        return self._bolus_delivered

    @property
    def basal_pulses_missed(self) -> int:
        """Basal pulses skipped by the catch-up bound (not delivered)."""
        return self._basal_missed

    @property
    def motor_base(self) -> int:
        """The motor's count when this ledger was at zero: the motor's count
        minus this is always ``basal + bolus`` delivered."""
        return self._motor_base

    @property
    def active_bolus(self) -> ActiveBolus | None:
        b = self._bolus
        return None if b is None else ActiveBolus(b.cmd_id, b.requested, b.delivered)

    @property
    def last_bolus(self) -> BolusEnded | None:
        """How the most recent bolus ended (kept across reboots)."""
        return self._last_bolus

    @property
    def low_reservoir(self) -> bool:
        return self._reservoir < self._low_threshold

    # --- commands ----------------------------------------------------------------------

    def start_bolus(self, cmd_id: bytes, pulses: int, now: float) -> ActiveBolus:
        """Accept a bolus of ``pulses``; the first pulse is due one interval later.

        Nothing moves before the next ``tick()``, so the caller can persist
        the start first.  Limits are not checked here (``limits.py`` is).

        Raises:
            ValueError: ``cmd_id`` is not ``COMMAND_ID_LEN`` bytes, or
                ``pulses`` is not in ``1..ABSOLUTE_MAX_BOLUS_PULSES``.
            DeliveryRefused: not IDLE (a bolus is running, or suspended,
                occluded, empty).
            InsufficientReservoir: more pulses than the reservoir holds.
        """
        _check_cmd_id(cmd_id)
        _check_count("pulses", pulses, 1, wire.ABSOLUTE_MAX_BOLUS_PULSES)
        now_ms = self._clock(now)
        nxt = self._next(_T.START_BOLUS)
        if pulses > self._reservoir:
            raise InsufficientReservoir(
                self._state, _T.START_BOLUS, f"bolus of {pulses} > reservoir {self._reservoir}"
            )
        self._bolus = _Bolus(cmd_id, pulses, 0, anchor_ms=now_ms, base=0)
        self._state = nxt
        return ActiveBolus(cmd_id, pulses, 0)

    def cancel_bolus(self) -> BolusEnded:
        """Stop the bolus now.  Returns what it delivered.

        Raises:
            DeliveryRefused: no bolus is running.
        """
        return self._end_bolus(_T.CANCEL_BOLUS, StopReason.CANCELLED)

    def suspend(self) -> list[DeliveryEvent]:
        """Stop basal and any bolus.  Returns the bolus's end, if one ran.

        Raises:
            DeliveryRefused: not IDLE or BOLUS.
        """
        if self._state is _S.BOLUS:
            return [self._end_bolus(_T.SUSPEND, StopReason.SUSPENDED)]
        self._state = self._next(_T.SUSPEND)
        return []

    def resume(self, now: float) -> None:
        """Restart basal from ``now`` (its first pulse one interval later).

        Raises:
            DeliveryRefused: not SUSPENDED.
        """
        now_ms = self._clock(now)
        self._state = self._next(_T.RESUME)
        self._restart_basal(now_ms)

    def inject_occlusion(self) -> list[DeliveryEvent]:
        """The pressure sensor reports an occlusion: stop, alarm.

        Returns the bolus's end (if one ran) and the alarm.

        Raises:
            DeliveryRefused: the motor is not running (not IDLE or BOLUS).
        """
        events: list[DeliveryEvent] = []
        if self._state is _S.BOLUS:
            events.append(self._end_bolus(_T.OCCLUSION, StopReason.OCCLUSION))
        else:
            self._state = self._next(_T.OCCLUSION)
        events.append(AlarmRaised(Alarm.OCCLUSION))
        return events

    def clear_occlusion(self) -> None:
        """The user cleared the occlusion at the pump; delivery stays suspended.

        Raises:
            DeliveryRefused: not OCCLUDED.
        """
        self._state = self._next(_T.CLEAR_OCCLUSION)

    def refill(self, reservoir_pulses: int) -> None:
        """A new reservoir holding ``reservoir_pulses`` is in; delivery stays
        suspended.  The low-reservoir alarm re-arms (and sounds at the next
        tick if the new reservoir is already low).

        Raises:
            ValueError: not in ``1..RESERVOIR_CAPACITY_PULSES``.
            DeliveryRefused: not SUSPENDED or EMPTY.
        """
        _check_count("reservoir_pulses", reservoir_pulses, 1, config.RESERVOIR_CAPACITY_PULSES)
        self._state = self._next(_T.REFILL)
        self._reservoir = reservoir_pulses
        self._low_alarmed = False
        self._check_low(self._pending)

    def set_basal_rate(self, pulses_per_hour: int, now: float) -> None:
        """Change the basal rate; the new schedule starts at ``now``.

        Allowed in every state.  Tick first: pulses the old schedule had due
        before ``now`` and not yet made are dropped.

        Raises:
            ValueError: not in ``0..MAX_BASAL_PULSES_PER_HOUR``.
        """
        _check_count("pulses_per_hour", pulses_per_hour, 0, config.MAX_BASAL_PULSES_PER_HOUR)
        now_ms = self._clock(now)
        self._basal_rate = pulses_per_hour
        self._restart_basal(now_ms)

    # --- the clock ---------------------------------------------------------------------

    def tick(self, now: float) -> list[DeliveryEvent]:
        """Deliver every pulse due at or before ``now`` (within the catch-up
        bounds), oldest first, and report what happened.

        Returns, in order: events found since the last tick (boot, refill),
        :class:`BasalMissed` if basal was skipped, one :class:`PulsesDelivered`
        if anything moved, then :class:`BolusEnded` / :class:`AlarmRaised` in
        the order they happened.  Work is bounded by
        ``BASAL_MAX_CATCHUP_PULSES + BOLUS_MAX_CATCHUP_PULSES`` pulses.

        An earlier ``now`` than already seen is taken as the latest seen (a
        monotonic clock does not go back; if it seems to, nothing is due).

        Raises:
            OSError, MotorError: from the motor; the pulse in flight is not
                in the ledger (the witness may hold it, see restore).
        """
        now_ms = self._clock(now)
        events, self._pending = self._pending, []
        if self._state not in _DELIVERING:
            return events
        basal_due = self._due_basal(now_ms, events)
        bolus_due, slipped = self._due_bolus(now_ms)
        later: list[DeliveryEvent] = []
        basal_n = bolus_n = 0
        i = j = 0
        while self._state in _DELIVERING and (i < len(basal_due) or j < len(bolus_due)):
            is_basal = j == len(bolus_due) or (i < len(basal_due) and basal_due[i] <= bolus_due[j])
            self._motor.pulse()
            self._reservoir -= 1
            if is_basal:
                i += 1
                basal_n += 1
                self._basal_k += 1
                self._basal_delivered += 1
            else:
                j += 1
                bolus_n += 1
                bolus = self._bolus
                assert bolus is not None
                bolus.delivered += 1
                self._bolus_delivered += 1
                if bolus.delivered == bolus.requested:
                    later.append(self._end_bolus(_T.BOLUS_COMPLETE, StopReason.COMPLETED))
            self._check_low(later)
            if self._reservoir == 0:
                if self._state is _S.BOLUS:
                    later.append(self._end_bolus(_T.RESERVOIR_EMPTY, StopReason.RESERVOIR_EMPTY))
                else:
                    self._state = self._next(_T.RESERVOIR_EMPTY)
                later.append(AlarmRaised(Alarm.RESERVOIR_EMPTY))
        if slipped and self._bolus is not None:
            # Overdue beyond the bound: the rest continues from now.
            self._bolus.anchor_ms = now_ms
            self._bolus.base = self._bolus.delivered
        self._normalise_basal_anchor()
        if basal_n or bolus_n:
            events.append(PulsesDelivered(basal=basal_n, bolus=bolus_n))
        events.extend(later)
        return events

    # --- persistence ----------------------------------------------------------------

    def snapshot(self) -> dict[str, int | bytes]:
        """The engine's durable state: ints and bytes only, no times."""
        b = self._bolus
        last = self._last_bolus
        return {
            "v": _SNAPSHOT_VERSION,
            "state": self._state.value,
            "reservoir": self._reservoir,
            "basal_rate": self._basal_rate,
            "basal_delivered": self._basal_delivered,
            "bolus_delivered": self._bolus_delivered,
            "basal_missed": self._basal_missed,
            "low_alarmed": int(self._low_alarmed),
            "motor_base": self._motor_base,
            "bolus_cmd_id": b"" if b is None else b.cmd_id,
            "bolus_requested": 0 if b is None else b.requested,
            "bolus_so_far": 0 if b is None else b.delivered,
            "last_cmd_id": b"" if last is None else last.cmd_id,
            "last_requested": 0 if last is None else last.requested,
            "last_delivered": 0 if last is None else last.delivered,
            "last_reason": 0 if last is None else last.reason.value,
        }

    @classmethod
    def restore(
        cls,
        snapshot: Mapping[str, object],
        *,
        motor: Motor,
        now: float,
        low_reservoir_pulses: int = config.LOW_RESERVOIR_PULSES,
    ) -> DeliveryEngine:
        """Rebuild the engine after a reboot from :meth:`snapshot`'s output.

        IDLE and BOLUS come back IDLE with basal restarting at ``now``; a
        bolus in progress ends POWER_LOSS (reported by the next tick).
        SUSPENDED, OCCLUDED and EMPTY stay as they were.  Pulses the motor
        counted after the snapshot are added to the ledger (module docstring).

        Raises:
            DeliverySnapshotInvalid: malformed, inconsistent, or the motor
                counted fewer pulses than the ledger (a different motor).
        """
        s = _SnapshotReader(snapshot)
        state_value = s.integer("state", 1, len(DeliveryState))
        state = DeliveryState(state_value)
        reservoir = s.integer("reservoir", 0, config.RESERVOIR_CAPACITY_PULSES)
        basal_rate = s.integer("basal_rate", 0, config.MAX_BASAL_PULSES_PER_HOUR)
        basal_delivered = s.integer("basal_delivered", 0)
        bolus_delivered = s.integer("bolus_delivered", 0)
        basal_missed = s.integer("basal_missed", 0)
        low_alarmed = s.integer("low_alarmed", 0, 1)
        motor_base = s.integer("motor_base", 0)
        if (reservoir == 0) != (state is _S.EMPTY):
            raise DeliverySnapshotInvalid("reservoir is empty exactly when the state is EMPTY")

        bolus: _Bolus | None = None
        if state is _S.BOLUS:
            requested = s.integer("bolus_requested", 1, wire.ABSOLUTE_MAX_BOLUS_PULSES)
            so_far = s.integer("bolus_so_far", 0, requested - 1)
            if so_far > bolus_delivered:
                raise DeliverySnapshotInvalid("bolus delivered more than the ledger holds")
            bolus = _Bolus(s.cmd_id("bolus_cmd_id"), requested, so_far, anchor_ms=0, base=0)
        else:
            s.none("bolus_cmd_id", "bolus_requested", "bolus_so_far")

        last: BolusEnded | None = None
        last_reason = s.integer("last_reason", 0, len(StopReason))
        if last_reason:
            last_requested = s.integer("last_requested", 1, wire.ABSOLUTE_MAX_BOLUS_PULSES)
            last_delivered = s.integer("last_delivered", 0, last_requested)
            reason = StopReason(last_reason)
            if reason is StopReason.COMPLETED and last_delivered != last_requested:
                raise DeliverySnapshotInvalid("a completed bolus delivered less than asked")
            last = BolusEnded(s.cmd_id("last_cmd_id"), last_requested, last_delivered, reason)
        else:
            s.none("last_cmd_id", "last_requested", "last_delivered")

        # Reconcile with the motor's witness: pulses it made after the
        # snapshot are real and go into the ledger (never undercount).
        unrecorded = motor.pulses - motor_base - basal_delivered - bolus_delivered
        if not 0 <= unrecorded <= reservoir:
            raise DeliverySnapshotInvalid(
                f"motor witness disagrees with the ledger by {unrecorded} pulses"
            )
        if bolus is not None:
            extra = min(unrecorded, bolus.requested - bolus.delivered)
            bolus.delivered += extra
            bolus_delivered += extra
            basal_delivered += unrecorded - extra
        else:
            basal_delivered += unrecorded
        reservoir -= unrecorded

        engine = cls(
            motor,
            now=now,
            reservoir_pulses=reservoir,
            basal_pulses_per_hour=basal_rate,
            low_reservoir_pulses=low_reservoir_pulses,
        )
        # The constructor queued alarms for a low or empty reservoir; a low
        # alarm already sounded before the reboot is not repeated.
        engine._pending.clear()
        engine._low_alarmed = bool(low_alarmed)
        engine._basal_delivered = basal_delivered
        engine._bolus_delivered = bolus_delivered
        engine._basal_missed = basal_missed
        engine._motor_base = motor_base
        engine._last_bolus = last
        if state in _DELIVERING:
            engine._state = _S.IDLE if reservoir > 0 else _S.EMPTY
        else:
            engine._state = state if reservoir > 0 else _S.EMPTY
        if bolus is not None:
            # If the witness shows the last pulse went in before the cut, the
            # bolus completed; otherwise it was interrupted and is not resumed.
            complete = bolus.delivered == bolus.requested
            reason = StopReason.COMPLETED if complete else StopReason.POWER_LOSS
            ended = BolusEnded(bolus.cmd_id, bolus.requested, bolus.delivered, reason)
            engine._last_bolus = ended
            engine._pending.append(ended)
        if engine._state is _S.EMPTY and state is not _S.EMPTY:
            engine._pending.append(AlarmRaised(Alarm.RESERVOIR_EMPTY))
        engine._check_low(engine._pending)
        return engine

    # --- internals -------------------------------------------------------------------

    def _clock(self, now: float) -> int:
        now_ms = max(ms_floor(now), self._now_ms)
        self._now_ms = now_ms
        return now_ms

    def _next(self, trigger: Trigger) -> DeliveryState:
        """The state ``trigger`` leads to, or :class:`DeliveryRefused`."""
        try:
            return TRANSITIONS[(self._state, trigger)]
        except KeyError:
            raise DeliveryRefused(self._state, trigger) from None

    def _end_bolus(self, trigger: Trigger, reason: StopReason) -> BolusEnded:
        nxt = self._next(trigger)
        bolus = self._bolus
        assert bolus is not None  # every transition out of BOLUS comes here
        ended = BolusEnded(bolus.cmd_id, bolus.requested, bolus.delivered, reason)
        self._bolus = None
        self._last_bolus = ended
        self._state = nxt
        return ended

    def _check_low(self, events: list[DeliveryEvent]) -> None:
        if not self._low_alarmed and self._reservoir < self._low_threshold:
            self._low_alarmed = True
            events.append(AlarmRaised(Alarm.LOW_RESERVOIR))

    def _restart_basal(self, now_ms: int) -> None:
        self._basal_anchor_ms = now_ms
        self._basal_k = 0

    def _normalise_basal_anchor(self) -> None:
        # ``rate`` pulses take exactly one hour, so whole hours can move from
        # the pulse index into the anchor without moving any due time.  Keeps
        # both numbers bounded (a C port stores them in 32/64-bit words).
        if self._basal_rate:
            hours, self._basal_k = divmod(self._basal_k, self._basal_rate)
            self._basal_anchor_ms += hours * config.MS_PER_HOUR

    def _due_basal(self, now_ms: int, events: list[DeliveryEvent]) -> list[int]:
        """Due times of the basal pulses to make now (at most the bound)."""
        rate = self._basal_rate
        if rate == 0:
            return []
        due_total = (now_ms - self._basal_anchor_ms) * rate // config.MS_PER_HOUR
        overdue = due_total - self._basal_k
        if overdue > config.BASAL_MAX_CATCHUP_PULSES:
            skipped = overdue - config.BASAL_MAX_CATCHUP_PULSES
            self._basal_k += skipped
            self._basal_missed += skipped
            events.append(BasalMissed(skipped))
            overdue = config.BASAL_MAX_CATCHUP_PULSES
        # ceil(k * H / rate) in integers.
        return [
            self._basal_anchor_ms + -(-(self._basal_k + i) * config.MS_PER_HOUR // rate)
            for i in range(1, overdue + 1)
        ]

    def _due_bolus(self, now_ms: int) -> tuple[list[int], bool]:
        """Due times of the bolus pulses to make now, and whether it slips."""
        b = self._bolus
        if b is None:
            return [], False
        interval = config.BOLUS_PULSE_INTERVAL_MS
        done = b.delivered - b.base
        overdue = (now_ms - b.anchor_ms) // interval - done
        n = min(overdue, b.requested - b.delivered)
        slipped = n > config.BOLUS_MAX_CATCHUP_PULSES
        n = min(n, config.BOLUS_MAX_CATCHUP_PULSES)
        return [b.anchor_ms + (done + i) * interval for i in range(1, n + 1)], slipped


class _SnapshotReader:
    """Typed, range-checked reads from an untrusted snapshot mapping."""

    def __init__(self, snapshot: Mapping[str, object]) -> None:
        if not isinstance(snapshot, Mapping):
            raise DeliverySnapshotInvalid("snapshot is not a map")
        keys = set(snapshot)
        if keys != _SNAPSHOT_KEYS:
            raise DeliverySnapshotInvalid(
                f"snapshot keys differ: missing {sorted(_SNAPSHOT_KEYS - keys)}, "
                f"unexpected {sorted(map(repr, keys - _SNAPSHOT_KEYS))}"
            )
        self._snap = snapshot
        if self.integer("v", 0) != _SNAPSHOT_VERSION:
            raise DeliverySnapshotInvalid("unknown snapshot version")

    def integer(self, key: str, lo: int, hi: int | None = None) -> int:
        value = self._snap[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise DeliverySnapshotInvalid(f"{key} is not an integer")
        if value < lo or (hi is not None and value > hi):
            raise DeliverySnapshotInvalid(f"{key} out of range")
        return value

    def cmd_id(self, key: str) -> bytes:
        value = self._snap[key]
        if not isinstance(value, bytes) or len(value) != wire.COMMAND_ID_LEN:
            raise DeliverySnapshotInvalid(f"{key} is not a command id")
        return value

    def none(self, *keys: str) -> None:
        """The fields of an absent bolus must be exactly ``0`` or ``b""``."""
        for key in keys:
            value = self._snap[key]
            if not ((type(value) is int and value == 0) or value == b""):
                raise DeliverySnapshotInvalid(f"{key} set without a bolus")
