"""Insulin delivery: basal, one bolus at a time, alarms, the ledger.

:class:`DeliveryEngine` is the pump's therapy core, written as firmware is:
an explicit state enum, one transition table, integer pulses
(``wire.PULSE_MILLIUNITS`` each, never floating-point units), bounded work
per call, and time only from the ``now`` the caller passes (monotonic
seconds, converted once to integer milliseconds by ``timebase.ms_floor``).
It drives a :class:`~firmware_sim.motor.Motor`; every pulse it makes is one
``motor.pulse()`` and one increment of exactly one ledger counter, so
``motor.pulses - motor_base == basal_pulses_delivered + bolus_pulses_delivered``
holds after every call (a motor call that raises leaves its pulse out of the
ledger; the witness may hold it, and :meth:`DeliveryEngine.restore` takes it
back in).

The engine's parts, one concept each; this module re-exports the public
names of the first two, so callers import everything from here:

* ``delivery_states.py``: the states, the triggers and the one transition
  table, :data:`TRANSITIONS`.  Basal runs in IDLE and BOLUS, nothing moves
  in the other states, and after an alarm the pump never restarts delivery
  by itself.
* ``delivery_events.py``: the events, stop reasons, alarms and errors.
* ``delivery_schedule.py``: when each basal and bolus pulse is due, and the
  catch-up bounds.
* ``delivery_snapshot.py``: the snapshot's stored form and the checks that
  decide whether one read back from flash can be trusted.

Ticks
-----

* ``tick(now)`` delivers the pulses due at or before ``now``, oldest first
  (basal before bolus on a tie), so the totals and the order of events depend
  only on ``now`` -- not on how often or how late the caller ticked --
  *as long as no tick finds more overdue pulses than the catch-up bounds*;
  beyond them a bolus slips and basal is skipped (:class:`BasalMissed`).
* **Stops win over catching up.**  ``cancel_bolus()``, ``suspend()`` and
  ``inject_occlusion()`` act at once: pulses that were due but not yet made
  because the last tick was late are not made.

Exactly once (SPEC §12.4)
-------------------------

``start_bolus()`` returns before any pulse; the caller persists "bolus
started, cmd_id, pulses" (e.g. :meth:`DeliveryEngine.snapshot`) and only then
ticks.  If persisting fails, ``cancel_bolus()`` still ends it with 0 pulses.

Reboot (SPEC §13.3, boot step 4)
--------------------------------

:meth:`DeliveryEngine.snapshot` is a flat dict of ints and bytes (CBOR-able,
no times: the monotonic clock restarts at boot).  :meth:`DeliveryEngine.restore`
rebuilds the engine.  A bolus in progress at the power cut is **not**
resumed: it ends POWER_LOSS with the pulses delivered so far, and the next
``tick()`` reports that :class:`BolusEnded`.  Resuming would deliver the rest
of a dose minutes or hours after the user asked for it, perhaps after they
ate, corrected by hand or changed their mind, and the pump told them the
bolus had started, so they can look at what was delivered and ask again.
Never more than asked, never later than expected.  Pulses the motor's
witness counted after the snapshot are first added to the ledger, so the
bolus may turn out COMPLETED (``delivery_snapshot.reconcile``).
"""

from __future__ import annotations

from collections.abc import Mapping

from pumpguard.protocol import wire
from pumpguard.protocol.timebase import ms_floor

from . import config
from .delivery_events import (
    ActiveBolus,
    Alarm,
    AlarmRaised,
    BasalMissed,
    BolusEnded,
    DeliveryError,
    DeliveryEvent,
    DeliveryRefused,
    DeliverySnapshotInvalid,
    InsufficientReservoir,
    PulsesDelivered,
    StopReason,
)
from .delivery_schedule import BasalSchedule, BolusSchedule
from .delivery_snapshot import DeliverySnapshot, decode_snapshot, encode_snapshot, reconcile
from .delivery_states import DELIVERING, TRANSITIONS, DeliveryState, Trigger
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


_S = DeliveryState
_T = Trigger


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
        self._basal = BasalSchedule(basal_pulses_per_hour, anchor_ms=self._now_ms)
        self._basal_delivered = 0
        self._bolus_delivered = 0
        self._basal_missed = 0
        self._motor_base = motor.pulses
        self._bolus: BolusSchedule | None = None
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
        return self._basal.rate

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
        self._bolus = BolusSchedule(cmd_id, pulses, anchor_ms=now_ms)
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
        self._basal = BasalSchedule(self._basal.rate, anchor_ms=now_ms)

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
        self._basal = BasalSchedule(pulses_per_hour, anchor_ms=now_ms)

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
        if self._state not in DELIVERING:
            return events
        basal_due, skipped = self._basal.due(now_ms)
        if skipped:
            self._basal_missed += skipped
            events.append(BasalMissed(skipped))
        bolus_due, slipped = ([], False) if self._bolus is None else self._bolus.due(now_ms)
        later: list[DeliveryEvent] = []
        basal_n = bolus_n = 0
        i = j = 0
        while self._state in DELIVERING and (i < len(basal_due) or j < len(bolus_due)):
            is_basal = j == len(bolus_due) or (i < len(basal_due) and basal_due[i] <= bolus_due[j])
            self._motor.pulse()
            self._reservoir -= 1
            if is_basal:
                i += 1
                basal_n += 1
                self._basal.k += 1
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
            self._bolus.slip(now_ms)
        self._basal.normalise()
        if basal_n or bolus_n:
            events.append(PulsesDelivered(basal=basal_n, bolus=bolus_n))
        events.extend(later)
        return events

    # --- persistence ----------------------------------------------------------------

    def snapshot(self) -> dict[str, int | bytes]:
        """The engine's durable state: ints and bytes only, no times
        (the schema is in ``delivery_snapshot.py``)."""
        return encode_snapshot(
            DeliverySnapshot(
                state=self._state,
                reservoir=self._reservoir,
                basal_rate=self._basal.rate,
                basal_delivered=self._basal_delivered,
                bolus_delivered=self._bolus_delivered,
                basal_missed=self._basal_missed,
                low_alarmed=self._low_alarmed,
                motor_base=self._motor_base,
                bolus=self.active_bolus,
                last_bolus=self._last_bolus,
            )
        )

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
        counted after the snapshot are added to the ledger first
        (``delivery_snapshot.reconcile``).

        Raises:
            DeliverySnapshotInvalid: malformed, inconsistent, or the motor's
                witness disagrees with the ledger (a different motor).
        """
        snap = reconcile(decode_snapshot(snapshot), motor_pulses=motor.pulses)
        engine = cls(
            motor,
            now=now,
            reservoir_pulses=snap.reservoir,
            basal_pulses_per_hour=snap.basal_rate,
            low_reservoir_pulses=low_reservoir_pulses,
        )
        # The constructor queued alarms for a low or empty reservoir; a low
        # alarm already sounded before the reboot is not repeated.
        engine._pending.clear()
        engine._low_alarmed = snap.low_alarmed
        engine._basal_delivered = snap.basal_delivered
        engine._bolus_delivered = snap.bolus_delivered
        engine._basal_missed = snap.basal_missed
        engine._motor_base = snap.motor_base
        engine._last_bolus = snap.last_bolus
        if snap.state in DELIVERING:
            engine._state = _S.IDLE if snap.reservoir > 0 else _S.EMPTY
        else:
            engine._state = snap.state if snap.reservoir > 0 else _S.EMPTY
        if snap.bolus is not None:
            # If the witness shows the last pulse went in before the cut, the
            # bolus completed; otherwise it was interrupted and is not resumed.
            b = snap.bolus
            reason = StopReason.COMPLETED if b.delivered == b.requested else StopReason.POWER_LOSS
            ended = BolusEnded(b.cmd_id, b.requested, b.delivered, reason)
            engine._last_bolus = ended
            engine._pending.append(ended)
        if engine._state is _S.EMPTY and snap.state is not _S.EMPTY:
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
