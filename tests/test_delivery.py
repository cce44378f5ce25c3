"""The therapy core: motor witness, basal and bolus schedules, alarms, reboot.

The invariant checked after every tick, everywhere in this module: the pulses
the motor counted equal the firmware's ledger, basal + bolus.  Times are
seconds of a fake monotonic clock; nothing here sleeps.
"""

from __future__ import annotations

import doctest
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pumpguard.firmware_sim.delivery as delivery_module
import pumpguard.firmware_sim.delivery_events as delivery_events_module
import pumpguard.firmware_sim.delivery_schedule as delivery_schedule_module
import pumpguard.firmware_sim.delivery_snapshot as delivery_snapshot_module
import pumpguard.firmware_sim.delivery_states as delivery_states_module
import pumpguard.firmware_sim.motor as motor_module
from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.delivery import (
    TRANSITIONS,
    Alarm,
    AlarmRaised,
    BasalMissed,
    BolusEnded,
    DeliveryEngine,
    DeliveryEvent,
    DeliveryRefused,
    DeliverySnapshotInvalid,
    DeliveryState,
    InsufficientReservoir,
    PulsesDelivered,
    StopReason,
    Trigger,
)
from pumpguard.firmware_sim.motor import (
    FILE_LEN,
    SLOT_LEN,
    Motor,
    MotorBusy,
    MotorError,
    WitnessCorrupt,
)
from pumpguard.protocol import wire

REPO = Path(__file__).resolve().parent.parent
CMD = bytes(range(16))
CMD2 = bytes(range(16, 32))
INTERVAL = config.BOLUS_PULSE_INTERVAL_S
BASAL_INTERVAL = 3600 / config.DEFAULT_BASAL_PULSES_PER_HOUR  # 180 s


def engine_at(now: float = 0.0, **kwargs: int) -> tuple[DeliveryEngine, Motor]:
    motor = Motor.in_memory()
    return DeliveryEngine(motor, now=now, **kwargs), motor


def assert_witness(engine: DeliveryEngine, motor: Motor) -> None:
    assert motor.pulses - engine.motor_base == (
        engine.basal_pulses_delivered + engine.bolus_pulses_delivered
    ), "motor witness and firmware ledger disagree"


def run(engine: DeliveryEngine, motor: Motor, times: Iterable[float]) -> list[DeliveryEvent]:
    """Tick at each time, checking the witness invariant after every tick."""
    events: list[DeliveryEvent] = []
    for t in times:
        events.extend(engine.tick(t))
        assert_witness(engine, motor)
    return events


def steps(start: float, stop: float, step: float) -> list[float]:
    """``start + step, start + 2 step, ...`` up to and including ``stop``."""
    n = round((stop - start) / step)
    return [start + i * step for i in range(1, n)] + [stop]


def state_of(engine: DeliveryEngine) -> DeliveryState:
    """The state, read afresh (mypy would keep an earlier narrowing)."""
    return engine.state


def non_pulse(events: Iterable[DeliveryEvent]) -> list[DeliveryEvent]:
    return [e for e in events if not isinstance(e, PulsesDelivered)]


def pulses_in(events: Iterable[DeliveryEvent]) -> tuple[int, int]:
    basal = sum(e.basal for e in events if isinstance(e, PulsesDelivered))
    bolus = sum(e.bolus for e in events if isinstance(e, PulsesDelivered))
    return basal, bolus


# --- The state machine table ------------------------------------------------------


def test_docstring_table_is_the_transition_table() -> None:
    """The table a reviewer reads in delivery_states must be TRANSITIONS exactly."""
    doc = delivery_states_module.__doc__
    assert doc is not None
    rows = set()
    for line in doc.splitlines():
        words = line.split()
        if (
            len(words) >= 3
            and words[0] in DeliveryState.__members__
            and words[1] in Trigger.__members__
        ):
            rows.add((DeliveryState[words[0]], Trigger[words[1]], DeliveryState[words[2]]))
    assert rows == {(s, t, n) for (s, t), n in TRANSITIONS.items()}
    assert len(rows) == 13


def test_every_state_has_a_way_out() -> None:
    for state in DeliveryState:
        assert any(s is state for s, _ in TRANSITIONS), state


def test_refused_trigger_changes_nothing() -> None:
    engine, _ = engine_at()
    with pytest.raises(DeliveryRefused) as info:
        engine.resume(1.0)
    assert info.value.state is DeliveryState.IDLE
    assert info.value.trigger is Trigger.RESUME
    assert state_of(engine) is DeliveryState.IDLE
    with pytest.raises(DeliveryRefused) as info:
        engine.cancel_bolus()
    assert info.value.trigger is Trigger.CANCEL_BOLUS


# --- Basal --------------------------------------------------------------------------


def test_basal_default_rate_is_evenly_spaced() -> None:
    engine, motor = engine_at(now=1000.0)
    assert engine.basal_pulses_per_hour == 20
    run(engine, motor, [1000.0 + BASAL_INTERVAL - 0.001])
    assert motor.pulses == 0
    run(engine, motor, [1000.0 + BASAL_INTERVAL])
    assert motor.pulses == 1
    run(engine, motor, steps(1000.0 + BASAL_INTERVAL, 1000.0 + 3600.0, 10.0))
    assert engine.basal_pulses_delivered == 20
    assert engine.bolus_pulses_delivered == 0
    assert motor.pulses == 20


def test_basal_rate_change_restarts_schedule() -> None:
    engine, motor = engine_at()
    run(engine, motor, steps(0.0, 360.0, 1.0))
    assert motor.pulses == 2
    engine.set_basal_rate(600, now=360.0)  # one pulse per 6 s
    run(engine, motor, steps(360.0, 420.0, 1.0))
    assert motor.pulses == 2 + 10
    engine.set_basal_rate(0, now=420.0)
    run(engine, motor, steps(420.0, 7200.0, 60.0))
    assert motor.pulses == 12
    with pytest.raises(ValueError, match="pulses_per_hour"):
        engine.set_basal_rate(config.MAX_BASAL_PULSES_PER_HOUR + 1, now=7200.0)


def test_basal_catch_up_after_long_gap_is_bounded() -> None:
    engine, motor = engine_at()
    events = run(engine, motor, [36_000.0])  # ten hours without a tick
    assert motor.pulses == config.BASAL_MAX_CATCHUP_PULSES
    assert BasalMissed(200 - config.BASAL_MAX_CATCHUP_PULSES) in events
    assert engine.basal_pulses_missed == 200 - config.BASAL_MAX_CATCHUP_PULSES
    # The grid is unchanged: pulse 201 is due at 201 * 180 s.
    run(engine, motor, [201 * BASAL_INTERVAL - 0.001])
    assert motor.pulses == config.BASAL_MAX_CATCHUP_PULSES
    run(engine, motor, [201 * BASAL_INTERVAL])
    assert motor.pulses == config.BASAL_MAX_CATCHUP_PULSES + 1


def test_clock_going_back_delivers_nothing_twice() -> None:
    engine, motor = engine_at()
    run(engine, motor, [540.0])
    assert motor.pulses == 3
    run(engine, motor, [0.0, 500.0, 540.0])
    assert motor.pulses == 3
    with pytest.raises(ValueError, match="finite"):
        engine.tick(float("nan"))


# --- Bolus --------------------------------------------------------------------------


@pytest.mark.parametrize("pulses", [1, 2, 7, 200, wire.ABSOLUTE_MAX_BOLUS_PULSES])
def test_bolus_of_n_pulses_takes_n_intervals(pulses: int) -> None:
    engine, motor = engine_at(basal_pulses_per_hour=0)
    start = 50.0
    engine.start_bolus(CMD, pulses, now=start)
    end = start + pulses * INTERVAL
    events = run(engine, motor, [*steps(start, end - 0.5, 0.5), end - 0.001])
    assert motor.pulses == pulses - 1
    assert state_of(engine) is DeliveryState.BOLUS
    events = run(engine, motor, [end])
    assert motor.pulses == pulses
    assert events[-1] == BolusEnded(CMD, pulses, pulses, StopReason.COMPLETED)
    assert state_of(engine) is DeliveryState.IDLE
    assert engine.active_bolus is None
    assert engine.last_bolus is not None
    assert engine.last_bolus.outcome is wire.Outcome.DELIVERED
    run(engine, motor, steps(end, end + 100.0, 1.0))
    assert engine.bolus_pulses_delivered == pulses == motor.pulses


def test_start_bolus_never_pulses_before_next_tick() -> None:
    engine, motor = engine_at(basal_pulses_per_hour=0)
    active = engine.start_bolus(CMD, 10, now=7.0)
    assert (active.cmd_id, active.requested, active.delivered) == (CMD, 10, 0)
    assert motor.pulses == 0
    assert run(engine, motor, [7.0]) == []
    assert motor.pulses == 0
    run(engine, motor, [9.0])
    assert engine.active_bolus is not None
    assert engine.active_bolus.delivered == 1


def test_bolus_runs_beside_basal() -> None:
    engine, motor = engine_at()
    engine.start_bolus(CMD, 100, now=0.0)
    run(engine, motor, steps(0.0, 360.0, 1.0))
    assert engine.bolus_pulses_delivered == 100
    assert engine.basal_pulses_delivered == 2
    assert motor.pulses == 102


def test_cancel_midway_reports_delivered_and_stops() -> None:
    engine, motor = engine_at(basal_pulses_per_hour=0)
    engine.start_bolus(CMD, 40, now=0.0)
    run(engine, motor, steps(0.0, 21.0, 0.5))
    ended = engine.cancel_bolus()
    assert ended == BolusEnded(CMD, 40, 10, StopReason.CANCELLED)
    assert ended.outcome is wire.Outcome.CANCELLED
    assert state_of(engine) is DeliveryState.IDLE
    run(engine, motor, steps(21.0, 200.0, 0.5))
    assert motor.pulses == 10 == engine.bolus_pulses_delivered


def test_cancel_before_first_tick_delivers_nothing() -> None:
    engine, motor = engine_at(basal_pulses_per_hour=0)
    engine.start_bolus(CMD, 5, now=0.0)
    assert engine.cancel_bolus().delivered == 0
    run(engine, motor, [100.0])
    assert motor.pulses == 0


def test_one_bolus_at_a_time() -> None:
    engine, _ = engine_at()
    engine.start_bolus(CMD, 10, now=0.0)
    with pytest.raises(DeliveryRefused) as info:
        engine.start_bolus(CMD2, 1, now=1.0)
    assert info.value.state is DeliveryState.BOLUS
    assert info.value.trigger is Trigger.START_BOLUS
    assert engine.active_bolus is not None
    assert engine.active_bolus.cmd_id == CMD


@pytest.mark.parametrize(
    ("cmd_id", "pulses"),
    [
        (CMD[:15], 1),
        (CMD + b"\x00", 1),
        (CMD, 0),
        (CMD, -1),
        (CMD, wire.ABSOLUTE_MAX_BOLUS_PULSES + 1),
        (CMD, True),
    ],
)
def test_bad_bolus_arguments_refused(cmd_id: bytes, pulses: int) -> None:
    engine, _ = engine_at()
    with pytest.raises(ValueError, match=r"cmd_id|pulses"):
        engine.start_bolus(cmd_id, pulses, now=0.0)
    assert state_of(engine) is DeliveryState.IDLE


def test_late_ticks_never_make_a_bolus_fast() -> None:
    engine, motor = engine_at(basal_pulses_per_hour=0)
    engine.start_bolus(CMD, 100, now=0.0)
    run(engine, motor, [1000.0])  # the firmware loop stalled for 1000 s
    assert motor.pulses == config.BOLUS_MAX_CATCHUP_PULSES
    # The rest slips: it continues at the nominal interval from the stall.
    run(engine, motor, [1000.0 + INTERVAL - 0.001])
    assert motor.pulses == config.BOLUS_MAX_CATCHUP_PULSES
    run(engine, motor, [1000.0 + INTERVAL])
    assert motor.pulses == config.BOLUS_MAX_CATCHUP_PULSES + 1
    events = run(engine, motor, steps(1000.0 + INTERVAL, 1200.0, 0.5))
    assert motor.pulses == 100
    assert BolusEnded(CMD, 100, 100, StopReason.COMPLETED) in events


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=500.0), min_size=1, max_size=30))
def test_bolus_never_runs_ahead_of_schedule(stalls: list[float]) -> None:
    """Whatever the tick pattern, delivered <= pulses due since the start."""
    engine, motor = engine_at(basal_pulses_per_hour=0)
    engine.start_bolus(CMD, 200, now=0.0)
    now = 0.0
    for gap in stalls:
        now += gap
        run(engine, motor, [now])
        assert motor.pulses <= int(now // INTERVAL)


# --- Suspend, occlusion, reservoir ---------------------------------------------------


def test_suspend_stops_basal_and_bolus_resume_restarts_basal_only() -> None:
    engine, motor = engine_at()
    engine.start_bolus(CMD, 50, now=0.0)
    run(engine, motor, steps(0.0, 10.0, 1.0))
    assert motor.pulses == 5
    events = engine.suspend()
    assert events == [BolusEnded(CMD, 50, 5, StopReason.SUSPENDED)]
    assert isinstance(events[0], BolusEnded)
    assert events[0].outcome is wire.Outcome.INTERRUPTED
    assert state_of(engine) is DeliveryState.SUSPENDED
    run(engine, motor, steps(10.0, 7200.0, 5.0))
    assert motor.pulses == 5  # two hours: no basal, no bolus
    engine.resume(now=7200.0)
    assert state_of(engine) is DeliveryState.IDLE
    assert engine.active_bolus is None
    run(engine, motor, [7200.0 + BASAL_INTERVAL - 0.001])
    assert motor.pulses == 5
    run(engine, motor, steps(7200.0, 7200.0 + 3600.0, 1.0))
    assert engine.bolus_pulses_delivered == 5  # the bolus never resumed
    assert engine.basal_pulses_delivered == 20
    with pytest.raises(DeliveryRefused):
        engine.resume(now=11_000.0)


def test_suspended_pump_refuses_bolus() -> None:
    engine, _ = engine_at()
    assert engine.suspend() == []
    with pytest.raises(DeliveryRefused) as info:
        engine.start_bolus(CMD, 1, now=1.0)
    assert info.value.state is DeliveryState.SUSPENDED


def test_occlusion_stops_everything_until_cleared_and_resumed() -> None:
    engine, motor = engine_at()
    engine.start_bolus(CMD, 50, now=0.0)
    run(engine, motor, steps(0.0, 20.0, 1.0))
    events = engine.inject_occlusion()
    assert events == [
        BolusEnded(CMD, 50, 10, StopReason.OCCLUSION),
        AlarmRaised(Alarm.OCCLUSION),
    ]
    assert state_of(engine) is DeliveryState.OCCLUDED
    run(engine, motor, steps(20.0, 3600.0, 10.0))
    assert motor.pulses == 10
    for refused in (lambda: engine.resume(3600.0), lambda: engine.start_bolus(CMD2, 1, 3600.0)):
        with pytest.raises(DeliveryRefused):
            refused()
    engine.clear_occlusion()
    assert state_of(engine) is DeliveryState.SUSPENDED
    run(engine, motor, steps(3600.0, 4000.0, 10.0))
    assert motor.pulses == 10
    engine.resume(now=4000.0)
    run(engine, motor, [4000.0 + BASAL_INTERVAL])
    assert motor.pulses == 11


def test_occlusion_without_bolus() -> None:
    engine, motor = engine_at()
    assert engine.inject_occlusion() == [AlarmRaised(Alarm.OCCLUSION)]
    run(engine, motor, [3600.0])
    assert motor.pulses == 0
    with pytest.raises(DeliveryRefused):
        engine.inject_occlusion()


def test_reservoir_low_alarm_once_then_empty_stops() -> None:
    engine, motor = engine_at(
        reservoir_pulses=25, low_reservoir_pulses=20, basal_pulses_per_hour=600
    )
    events = run(engine, motor, steps(0.0, 600.0, 1.0))
    assert motor.pulses == 25
    assert engine.reservoir_pulses == 0
    assert state_of(engine) is DeliveryState.EMPTY
    assert non_pulse(events) == [
        AlarmRaised(Alarm.LOW_RESERVOIR),
        AlarmRaised(Alarm.RESERVOIR_EMPTY),
    ]
    # The low alarm sounded as the reservoir went below 20: after pulse 6.
    assert engine.low_reservoir
    with pytest.raises(DeliveryRefused):
        engine.start_bolus(CMD, 1, now=600.0)
    engine.refill(1000)
    assert state_of(engine) is DeliveryState.SUSPENDED
    assert not engine.low_reservoir
    engine.resume(now=600.0)
    run(engine, motor, steps(600.0, 660.0, 1.0))
    assert motor.pulses == 35
    assert engine.reservoir_pulses == 990


def test_low_alarm_position() -> None:
    engine, motor = engine_at(
        reservoir_pulses=25, low_reservoir_pulses=20, basal_pulses_per_hour=600
    )
    run(engine, motor, steps(0.0, 30.0, 1.0))
    assert engine.reservoir_pulses == 20
    assert run(engine, motor, steps(30.0, 35.9, 0.1)) == []
    assert non_pulse(run(engine, motor, [36.0])) == [AlarmRaised(Alarm.LOW_RESERVOIR)]


def test_reservoir_runs_out_during_bolus() -> None:
    engine, motor = engine_at(reservoir_pulses=12, basal_pulses_per_hour=600)
    engine.start_bolus(CMD, 12, now=0.0)
    events = run(engine, motor, steps(0.0, 60.0, 0.5))
    assert motor.pulses == 12
    ended = [e for e in events if isinstance(e, BolusEnded)]
    assert ended == [BolusEnded(CMD, 12, engine.bolus_pulses_delivered, StopReason.RESERVOIR_EMPTY)]
    assert engine.bolus_pulses_delivered < 12
    assert state_of(engine) is DeliveryState.EMPTY


def test_bolus_larger_than_reservoir_refused() -> None:
    engine, _ = engine_at(reservoir_pulses=30)
    with pytest.raises(InsufficientReservoir):
        engine.start_bolus(CMD, 31, now=0.0)
    assert state_of(engine) is DeliveryState.IDLE
    engine.start_bolus(CMD, 30, now=0.0)


def test_empty_at_start_and_refill_rules() -> None:
    engine, motor = engine_at(reservoir_pulses=0)
    assert state_of(engine) is DeliveryState.EMPTY
    assert run(engine, motor, [1000.0]) == [
        AlarmRaised(Alarm.RESERVOIR_EMPTY),
        AlarmRaised(Alarm.LOW_RESERVOIR),
    ]
    assert motor.pulses == 0
    with pytest.raises(ValueError, match="reservoir"):
        engine.refill(config.RESERVOIR_CAPACITY_PULSES + 1)
    engine.refill(10)  # still low: the re-armed alarm sounds again
    assert run(engine, motor, [1001.0]) == [AlarmRaised(Alarm.LOW_RESERVOIR)]
    engine.resume(1001.0)
    with pytest.raises(DeliveryRefused):
        engine.refill(100)  # only while suspended or empty


# --- Tick partitions: the schedule depends on ``now`` only -----------------------


@st.composite
def partitions(draw: st.DrawFn, end: float, must: float) -> list[float]:
    """Tick times in (0, end], gaps below 9.9 s, always containing ``must`` and ``end``."""
    gaps = draw(st.lists(st.floats(min_value=0.0, max_value=9.9), min_size=1, max_size=400))
    times, now = [], 0.0
    for gap in gaps:
        now += gap
        if now >= end:
            break
        times.append(now)
    # Fill the rest evenly so no gap exceeds the catch-up bounds.
    while now + 9.0 < end:
        now += 9.0
        times.append(now)
    times.extend([must, end])
    return sorted(times)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    rate=st.integers(min_value=0, max_value=config.MAX_BASAL_PULSES_PER_HOUR),
    bolus=st.integers(min_value=1, max_value=200),
    reservoir=st.integers(min_value=1, max_value=400),
    start=st.floats(min_value=0.0, max_value=300.0),
    end=st.floats(min_value=1.0, max_value=900.0),
)
def test_any_partition_of_time_gives_identical_delivery(
    data: st.DataObject, rate: int, bolus: int, reservoir: int, start: float, end: float
) -> None:
    start = min(start, end)

    def simulate(times: list[float]) -> tuple[int, int, int, bool, list[DeliveryEvent]]:
        engine, motor = engine_at(
            reservoir_pulses=reservoir, basal_pulses_per_hour=rate, low_reservoir_pulses=100
        )
        events: list[DeliveryEvent] = []
        started = refused = False
        for t in times:
            if not started and t >= start:
                events.extend(run(engine, motor, [start]))
                started = True
                try:
                    engine.start_bolus(CMD, bolus, now=start)
                except DeliveryRefused:  # reservoir too low, or already empty
                    refused = True
            events.extend(run(engine, motor, [t]))
        assert not any(isinstance(e, BasalMissed) for e in events)
        basal = engine.basal_pulses_delivered
        return motor.pulses, basal, engine.reservoir_pulses, refused, non_pulse(events)

    reference = simulate(steps(0.0, end, end / max(1, round(end / 0.25))))
    drawn = simulate(data.draw(partitions(end, start)))
    assert drawn == reference
    # And against the schedule in closed form (times are floored to whole
    # milliseconds once, as the engine does) when the reservoir is ample.
    if reservoir >= bolus + rate:
        end_ms, start_ms = math.floor(end * 1000), math.floor(start * 1000)
        expected_basal = end_ms * rate // 3_600_000
        expected_bolus = min(bolus, (end_ms - start_ms) // config.BOLUS_PULSE_INTERVAL_MS)
        assert reference[0] == expected_basal + expected_bolus
        assert reference[1] == expected_basal


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=255), min_size=1, max_size=300))
def test_byte_sized_ms_steps_equal_one_tick_per_second(gaps_ms: list[int]) -> None:
    """Ticks every few milliseconds deliver what ticks every second do."""
    total_ms = sum(gaps_ms)
    fine_engine, fine_motor = engine_at(basal_pulses_per_hour=600)
    fine_engine.start_bolus(CMD, 30, now=0.0)
    t = 0
    for gap in gaps_ms:
        t += gap
        run(fine_engine, fine_motor, [t / 1000])
    coarse_engine, coarse_motor = engine_at(basal_pulses_per_hour=600)
    coarse_engine.start_bolus(CMD, 30, now=0.0)
    run(coarse_engine, coarse_motor, [*range(1, total_ms // 1000 + 1), total_ms / 1000])
    assert fine_motor.pulses == coarse_motor.pulses
    assert fine_engine.bolus_pulses_delivered == min(30, total_ms // 2000)
    assert fine_engine.basal_pulses_delivered == total_ms // 6000


# --- Snapshot and reboot -------------------------------------------------------------


def reboot(engine: DeliveryEngine, motor: Motor, now: float) -> DeliveryEngine:
    """Persist through CBOR as the firmware would, and restore on a new clock."""
    stored = cbor2.loads(cbor2.dumps(engine.snapshot()))
    return DeliveryEngine.restore(stored, motor=motor, now=now)


def test_snapshot_is_ints_and_bytes_only() -> None:
    engine, motor = engine_at()
    engine.start_bolus(CMD, 9, now=0.0)
    run(engine, motor, [10.0])
    snap = engine.snapshot()
    assert all(type(v) in (int, bytes) for v in snap.values())
    assert cbor2.loads(cbor2.dumps(snap)) == snap


def test_snapshot_decoder_reads_back_what_the_encoder_wrote() -> None:
    engine, motor = engine_at()
    engine.start_bolus(CMD, 9, now=0.0)
    run(engine, motor, [10.0])
    engine.cancel_bolus()
    engine.start_bolus(CMD2, 4, now=10.0)
    snap = engine.snapshot()
    decoded = delivery_snapshot_module.decode_snapshot(snap)
    assert decoded.bolus == engine.active_bolus
    assert decoded.last_bolus == BolusEnded(CMD, 9, 5, StopReason.CANCELLED)
    assert delivery_snapshot_module.encode_snapshot(decoded) == snap


def test_bolus_in_progress_at_power_loss_is_not_resumed() -> None:
    engine, motor = engine_at(basal_pulses_per_hour=0)
    engine.start_bolus(CMD, 50, now=100.0)
    run(engine, motor, steps(100.0, 120.0, 1.0))
    assert motor.pulses == 10
    restored = reboot(engine, motor, now=3.0)  # the monotonic clock restarted
    assert state_of(restored) is DeliveryState.IDLE
    assert restored.active_bolus is None
    interrupted = BolusEnded(CMD, 50, 10, StopReason.POWER_LOSS)
    assert restored.last_bolus == interrupted
    assert interrupted.outcome is wire.Outcome.INTERRUPTED
    events = run(restored, motor, steps(3.0, 500.0, 1.0))
    assert events == [interrupted]
    assert motor.pulses == 10 == restored.bolus_pulses_delivered


def test_pulses_after_last_snapshot_are_recovered_from_the_witness() -> None:
    engine, motor = engine_at()
    engine.start_bolus(CMD, 50, now=0.0)
    run(engine, motor, steps(0.0, 20.0, 1.0))
    stored = cbor2.dumps(engine.snapshot())  # last persist: 10 bolus pulses
    run(engine, motor, steps(20.0, 370.0, 1.0))  # 40 more bolus, 2 basal, then power lost
    assert motor.pulses == 52
    restored = DeliveryEngine.restore(cbor2.loads(stored), motor=motor, now=0.0)
    assert_witness(restored, motor)
    assert restored.bolus_pulses_delivered == 50
    assert restored.basal_pulses_delivered == 2
    assert restored.reservoir_pulses == config.RESERVOIR_CAPACITY_PULSES - 52
    # The witness shows every pulse of the bolus went in: it completed.
    assert restored.last_bolus == BolusEnded(CMD, 50, 50, StopReason.COMPLETED)


def test_restore_never_undercounts_partial_bolus() -> None:
    engine, motor = engine_at(basal_pulses_per_hour=600)
    engine.start_bolus(CMD, 100, now=0.0)
    run(engine, motor, steps(0.0, 10.0, 1.0))
    stored = cbor2.dumps(engine.snapshot())
    run(engine, motor, steps(10.0, 30.0, 1.0))
    truth_bolus = engine.bolus_pulses_delivered
    restored = DeliveryEngine.restore(cbor2.loads(stored), motor=motor, now=0.0)
    assert_witness(restored, motor)
    assert restored.bolus_pulses_delivered >= truth_bolus
    assert restored.last_bolus is not None
    assert restored.last_bolus.delivered >= truth_bolus
    assert restored.last_bolus.reason is StopReason.POWER_LOSS


@pytest.mark.parametrize("stop", ["suspend", "inject_occlusion"])
def test_stopped_states_survive_reboot(stop: str) -> None:
    engine, motor = engine_at()
    getattr(engine, stop)()
    before = state_of(engine)
    assert before in (DeliveryState.SUSPENDED, DeliveryState.OCCLUDED)
    restored = reboot(engine, motor, now=0.0)
    assert state_of(restored) is before
    run(restored, motor, [7200.0])
    assert motor.pulses == 0


def test_empty_survives_reboot_without_repeating_alarm() -> None:
    engine, motor = engine_at(reservoir_pulses=3, basal_pulses_per_hour=600)
    run(engine, motor, steps(0.0, 60.0, 1.0))
    assert state_of(engine) is DeliveryState.EMPTY
    restored = reboot(engine, motor, now=0.0)
    assert state_of(restored) is DeliveryState.EMPTY
    assert run(restored, motor, [100.0]) == []


def test_restore_refuses_a_different_motor() -> None:
    engine, motor = engine_at()
    run(engine, motor, [3600.0])
    with pytest.raises(DeliverySnapshotInvalid, match="witness"):
        DeliveryEngine.restore(engine.snapshot(), motor=Motor.in_memory(), now=0.0)


def _corrupt(change: dict[str, object], remove: str = "") -> dict[str, object]:
    engine, _ = engine_at()
    engine.start_bolus(CMD, 5, now=0.0)
    snap: dict[str, object] = dict(engine.snapshot())
    snap.update(change)
    snap.pop(remove, None)
    return snap


@pytest.mark.parametrize(
    "snapshot",
    [
        _corrupt({}, remove="reservoir"),
        _corrupt({"extra": 1}),
        _corrupt({"v": 2}),
        _corrupt({"state": 9}),
        _corrupt({"state": 0}),
        _corrupt({"reservoir": 1.5}),
        _corrupt({"reservoir": True}),
        _corrupt({"reservoir": -1}),
        _corrupt({"reservoir": 0}),
        _corrupt({"basal_rate": config.MAX_BASAL_PULSES_PER_HOUR + 1}),
        _corrupt({"bolus_cmd_id": b"short"}),
        _corrupt({"bolus_so_far": 5}),
        _corrupt({"bolus_so_far": 1}),  # more than the ledger's bolus total
        _corrupt({"state": DeliveryState.IDLE.value}),  # bolus fields without a bolus
        _corrupt({"last_reason": 1, "last_cmd_id": CMD, "last_requested": 5, "last_delivered": 4}),
        _corrupt({"last_reason": 7}),
        _corrupt({"low_alarmed": 2}),
    ],
)
def test_corrupt_snapshots_are_refused(snapshot: dict[str, object]) -> None:
    with pytest.raises(DeliverySnapshotInvalid):
        DeliveryEngine.restore(snapshot, motor=Motor.in_memory(), now=0.0)


def test_restore_rejects_non_mapping() -> None:
    with pytest.raises(DeliverySnapshotInvalid):
        DeliveryEngine.restore([1, 2], motor=Motor.in_memory(), now=0.0)  # type: ignore[arg-type]


# --- The motor and its witness -----------------------------------------------------------


def test_in_memory_motor_counts() -> None:
    motor = Motor.in_memory()
    for _ in range(7):
        motor.pulse()
    assert motor.pulses == 7
    assert not motor.durable
    motor.close()
    with pytest.raises(MotorError):
        motor.pulse()


def test_witness_file_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "motor.witness"
    assert Motor.read_count(path) == 0
    with Motor.open(path) as motor:
        assert motor.durable
        for _ in range(5):
            motor.pulse()
        assert Motor.read_count(path) == 5  # readable while running
    assert Motor.read_count(path) == 5
    assert path.stat().st_size == FILE_LEN
    with Motor.open(path) as motor:
        assert motor.pulses == 5
        motor.pulse()
    assert Motor.read_count(path) == 6
    assert path.stat().st_size == FILE_LEN  # bounded for ever


def test_witness_has_one_driver(tmp_path: Path) -> None:
    path = tmp_path / "motor.witness"
    with Motor.open(path), pytest.raises(MotorBusy):
        Motor.open(path)
    with Motor.open(path) as motor:
        assert motor.pulses == 0


def test_engine_on_durable_motor_matches_witness(tmp_path: Path) -> None:
    path = tmp_path / "motor.witness"
    with Motor.open(path) as motor:
        engine = DeliveryEngine(motor, now=0.0, basal_pulses_per_hour=600)
        engine.start_bolus(CMD, 20, now=0.0)
        run(engine, motor, steps(0.0, 60.0, 1.0))
    assert (
        Motor.read_count(path)
        == 30
        == (engine.basal_pulses_delivered + engine.bolus_pulses_delivered)
    )


_CHILD = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from pumpguard.firmware_sim.motor import Motor
motor = Motor.open(sys.argv[2])
limit = int(sys.argv[3])
while limit < 0 or motor.pulses < limit:
    motor.pulse()
    print(motor.pulses, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _child(path: Path, limit: int) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 -- our own interpreter and script
        [sys.executable, "-c", _CHILD, str(REPO), str(path), str(limit)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_witness_survives_sigkill_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "motor.witness"
    child = _child(path, 25)
    out, _ = child.communicate(timeout=20)
    assert child.returncode == -signal.SIGKILL
    assert out.split()[-1] == "25"
    assert Motor.read_count(path) == 25
    child = _child(path, 30)  # carries on from 25
    child.communicate(timeout=20)
    assert Motor.read_count(path) == 30


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_witness_killed_at_a_random_instant(tmp_path: Path) -> None:
    """SIGKILL while pulsing: the count is the last reported or one more."""
    path = tmp_path / "motor.witness"
    child = _child(path, -1)
    assert child.stdout is not None
    seen = 0
    for line in child.stdout:
        seen = int(line)
        if seen >= 40:
            break
    os.kill(child.pid, signal.SIGKILL)
    rest = child.stdout.read()  # through the same buffer the loop used
    child.wait(timeout=20)
    last = int(rest.split()[-1]) if rest.split() else seen
    assert Motor.read_count(path) in (last, last + 1)
    with Motor.open(path) as motor:  # and the motor can carry on
        motor.pulse()
        assert Motor.read_count(path) == motor.pulses


def test_each_pulse_is_durable_before_the_plunger_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync per pulse, and the record precedes the move (an upper bound)."""
    path = tmp_path / "motor.witness"
    synced: list[tuple[int, int]] = []
    with Motor.open(path) as motor:
        real_fsync = os.fsync

        def spy(fd: int) -> None:
            real_fsync(fd)
            synced.append((Motor.read_count(path), motor.pulses))

        monkeypatch.setattr(os, "fsync", spy)
        for _ in range(3):
            motor.pulse()
    # At each fsync the file already holds the new count; the motor has not
    # yet counted the move.
    assert synced == [(1, 0), (2, 1), (3, 2)]


def test_tie_between_basal_and_bolus_goes_to_basal() -> None:
    """Both due at 6 s with one pulse left: basal first, the bolus ends empty."""
    engine, motor = engine_at(reservoir_pulses=3, basal_pulses_per_hour=600, low_reservoir_pulses=0)
    engine.start_bolus(CMD, 3, now=0.0)
    events = run(engine, motor, [6.0])
    assert events[0] == PulsesDelivered(basal=1, bolus=2)
    assert BolusEnded(CMD, 3, 2, StopReason.RESERVOIR_EMPTY) in events


def _slot(count: int) -> bytes:
    return motor_module._encode_slot(count)


@pytest.mark.parametrize(
    ("data", "count"),
    [
        (b"", 0),
        (bytes(FILE_LEN), 0),
        (bytes(SLOT_LEN) + _slot(1), 1),
        (_slot(2) + _slot(1), 2),
        (_slot(2) + _slot(3), 3),
        # A torn write of the newer count: the older one stands.
        (_slot(2) + _slot(3)[:7] + bytes(SLOT_LEN - 7), 2),
        (_slot(4)[:9] + b"\xff" * 7 + _slot(3), 3),
        # The very first pulse's write was cut.
        (bytes(SLOT_LEN) + b"PGM1\x00\x00", 0),
    ],
)
def test_witness_slots_decode(tmp_path: Path, data: bytes, count: int) -> None:
    path = tmp_path / "w"
    path.write_bytes(data)
    assert Motor.read_count(path) == count


@pytest.mark.parametrize(
    "data",
    [
        _slot(2) + _slot(5),  # not consecutive
        _slot(2),  # slot 1 missing beside a count of 2
        _slot(2) + bytes(SLOT_LEN),
        b"\x01" * FILE_LEN,  # both torn
        _slot(1) + _slot(2),  # wrong parity for the position
        _slot(2) + _slot(1) + b"\x00",  # too long
    ],
)
def test_witness_corruption_is_never_zero(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "w"
    path.write_bytes(data)
    with pytest.raises(WitnessCorrupt):
        Motor.read_count(path)
    with pytest.raises(WitnessCorrupt):
        Motor.open(path)


@pytest.mark.parametrize(
    "module",
    [
        motor_module,
        delivery_module,
        delivery_events_module,
        delivery_schedule_module,
        delivery_snapshot_module,
        delivery_states_module,
    ],
)
def test_module_doctests(module: object) -> None:
    result = doctest.testmod(module, report=False)  # type: ignore[arg-type]
    assert result.failed == 0


def test_constants_are_integers_where_the_ledger_uses_them() -> None:
    # The flash layout constants are (first sector, count) pairs of integers.
    for name in dir(config):
        if re.fullmatch(r"[A-Z0-9_]+", name) and not name.endswith("_S"):
            value = getattr(config, name)
            if name.startswith("FLASH_") and type(value) is tuple:
                assert all(type(part) is int for part in value), name
            else:
                assert type(value) is int, name
