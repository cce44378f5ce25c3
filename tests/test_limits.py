"""S6 enforcement: single, rolling 1 h and 24 h bolus limits on the monotonic clock.

Every limit is tried at its edge (max accepted, max + 1 refused), every
window at its edge (still closed at exactly 3600 s, open just after), and
the ledger's two lossy operations -- coalescing when full and restoring
after a reboot -- are checked against an exact reference that keeps every
bolus: they may overcount, never undercount.
"""

from __future__ import annotations

import doctest
from dataclasses import dataclass

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pumpguard.firmware_sim.limits as limits_module
from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.limits import (
    BolusLedger,
    LedgerBusy,
    LedgerSnapshotInvalid,
    LimitExceeded,
    LimitKind,
    LimitPolicy,
    PolicyInvalid,
    PolicyRollback,
    validate_policy,
)
from pumpguard.protocol import wire

H = 3600.0
DAY = 86_400.0
W1 = config.LIMIT_WINDOW_1H_MS
W24 = config.LIMIT_WINDOW_24H_MS
FACTORY = LimitPolicy.factory()
#: As loose as the absolute bounds allow, for tests of the ledger itself.
LOOSE = LimitPolicy(
    1, wire.ABSOLUTE_MAX_BOLUS_PULSES, wire.ABSOLUTE_MAX_24H_PULSES, wire.ABSOLUTE_MAX_24H_PULSES
)


def cmd(n: int) -> bytes:
    return n.to_bytes(16, "big")


def bolus(ledger: BolusLedger, n: int, pulses: int, start: float, end: float | None = None) -> None:
    """Commit, then settle having delivered everything (at ``end``)."""
    ledger.commit(cmd(n), pulses, now=start)
    ledger.settle(cmd(n), pulses, now=start if end is None else end)


def refused(ledger: BolusLedger, pulses: int, now: float) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as info:
        ledger.check(pulses, now)
    return info.value


# --- The policy ------------------------------------------------------------------


def test_factory_policy_is_the_wire_constants() -> None:
    from_wire = LimitPolicy(
        0, wire.FACTORY_MAX_BOLUS_PULSES, wire.FACTORY_MAX_1H_PULSES, wire.FACTORY_MAX_24H_PULSES
    )
    assert from_wire == FACTORY
    assert FACTORY.max_bolus_pulses * wire.PULSE_MILLIUNITS == 10_000  # the brief: 10 U
    assert validate_policy(FACTORY) is FACTORY


@pytest.mark.parametrize(
    "policy",
    [
        LimitPolicy(1, 0, 300, 1000),
        LimitPolicy(1, wire.ABSOLUTE_MAX_BOLUS_PULSES + 1, 4000, 4000),
        LimitPolicy(1, 200, 199, 1000),  # a single bolus above the hourly cap
        LimitPolicy(1, 200, 300, 299),
        LimitPolicy(1, 200, 300, wire.ABSOLUTE_MAX_24H_PULSES + 1),
        LimitPolicy(-1, 200, 300, 1000),
        LimitPolicy(1, 200.5, 300, 1000),  # type: ignore[arg-type]
        LimitPolicy(True, 200, 300, 1000),
    ],
)
def test_policies_outside_absolute_bounds_are_invalid(policy: LimitPolicy) -> None:
    with pytest.raises(PolicyInvalid):
        validate_policy(policy)
    with pytest.raises(PolicyInvalid):
        BolusLedger(policy)


def test_policy_versions_only_go_up() -> None:
    ledger = BolusLedger(FACTORY)
    tighter = LimitPolicy(3, 100, 150, 500)
    ledger.set_policy(tighter)
    assert ledger.policy == tighter
    for old in (LimitPolicy(3, 200, 300, 1000), LimitPolicy(2, 200, 300, 1000), FACTORY):
        with pytest.raises(PolicyRollback):
            ledger.set_policy(old)
    assert ledger.policy == tighter
    with pytest.raises(PolicyInvalid):
        ledger.set_policy(LimitPolicy(4, 600, 600, 600))
    assert ledger.policy == tighter


def test_new_policy_keeps_what_was_counted() -> None:
    ledger = BolusLedger(FACTORY)
    bolus(ledger, 1, 150, 0.0)
    ledger.set_policy(LimitPolicy(1, 100, 150, 500))
    assert refused(ledger, 1, 1.0).which is LimitKind.HOUR


# --- Single bolus ------------------------------------------------------------------


@pytest.mark.parametrize("policy", [FACTORY, LOOSE, LimitPolicy(7, 1, 1, 1)])
def test_single_limit_edge(policy: LimitPolicy) -> None:
    top = policy.max_bolus_pulses
    ledger = BolusLedger(policy)
    if top > 1:
        ledger.check(top - 1, 0.0)
    ledger.check(top, 0.0)
    error = refused(ledger, top + 1, 0.0)
    assert error.which is LimitKind.SINGLE
    assert error.which.value == "single"
    assert error.allowed_pulses == top
    ledger.commit(cmd(1), top, 0.0)  # the maximum itself is accepted


def test_check_validates_pulses() -> None:
    ledger = BolusLedger(FACTORY)
    for bad in (0, -3, True):
        with pytest.raises(ValueError, match="pulses"):
            ledger.check(bad, 0.0)
    with pytest.raises(ValueError, match="cmd_id"):
        ledger.commit(b"short", 1, 0.0)


def test_single_is_reported_before_window_limits() -> None:
    ledger = BolusLedger(FACTORY)
    bolus(ledger, 1, 200, 0.0)
    error = refused(ledger, 201, 1.0)
    assert error.which is LimitKind.SINGLE
    assert error.allowed_pulses == 100  # what would fit right now


# --- Rolling hour -------------------------------------------------------------------


def test_boluses_under_max_are_refused_at_the_hourly_cap() -> None:
    ledger = BolusLedger(FACTORY)  # 200 per bolus, 300 per hour
    bolus(ledger, 1, 150, 0.0, 300.0)
    bolus(ledger, 2, 100, 400.0, 600.0)
    error = refused(ledger, 51, 700.0)
    assert (error.which, error.allowed_pulses) == (LimitKind.HOUR, 50)
    assert error.which.refusal is wire.RefusalCode.OVER_1H_LIMIT
    bolus(ledger, 3, 50, 700.0, 800.0)  # exactly the cap: accepted
    error = refused(ledger, 1, 900.0)
    assert (error.which, error.allowed_pulses) == (LimitKind.HOUR, 0)
    assert ledger.used(W1, 900.0) == 300


def test_hour_window_reopens_after_3600_s_not_before() -> None:
    ledger = BolusLedger(FACTORY)
    bolus(ledger, 1, 200, 900.0, 1000.0)
    bolus(ledger, 2, 100, 1100.0, 1200.0)
    assert refused(ledger, 1, 1000.0 + H - 1.0).which is LimitKind.HOUR
    assert refused(ledger, 1, 1000.0 + H).which is LimitKind.HOUR  # exactly 3600 s: still in
    assert ledger.allowed(1000.0 + H + 0.5) == 200
    assert refused(ledger, 201, 1000.0 + H + 0.5).which is LimitKind.SINGLE
    ledger.check(200, 1000.0 + H + 0.5)
    assert refused(ledger, 201, 1200.0 + H).which is LimitKind.SINGLE
    assert ledger.allowed(1200.0 + H) == 200
    assert ledger.allowed(1200.0 + H + 0.5) == 200


def test_entry_is_stamped_when_the_bolus_ended() -> None:
    """A 200-pulse bolus takes 400 s; the hour counts from its last pulse."""
    ledger = BolusLedger(FACTORY)
    bolus(ledger, 1, 200, 0.0, 400.0)
    bolus(ledger, 2, 100, 500.0, 700.0)
    assert ledger.allowed(H + 1.0) == 0
    assert ledger.allowed(400.0 + H) == 0
    assert ledger.allowed(400.0 + H + 0.5) == 200


def test_reservation_counts_fully_from_commit_and_never_ages() -> None:
    ledger = BolusLedger(FACTORY)
    ledger.commit(cmd(1), 200, 0.0)
    assert ledger.reserved == (cmd(1), 200)
    assert refused(ledger, 101, 0.0).which is LimitKind.HOUR
    assert ledger.allowed(10 * H) == 100  # still delivering, still counted
    with pytest.raises(LedgerBusy):
        ledger.commit(cmd(2), 1, 10 * H)


def test_cancelled_bolus_counts_what_it_delivered() -> None:
    ledger = BolusLedger(FACTORY)
    ledger.commit(cmd(1), 200, 0.0)
    with pytest.raises(ValueError, match="reservation"):
        ledger.settle(cmd(2), 10, 20.0)
    with pytest.raises(ValueError, match="delivered"):
        ledger.settle(cmd(1), 201, 20.0)
    ledger.settle(cmd(1), 10, 20.0)
    assert ledger.reserved is None
    assert ledger.used(W1, 20.0) == 10
    assert ledger.allowed(20.0) == 200
    ledger.commit(cmd(2), 5, 30.0)
    ledger.settle(cmd(2), 0, 31.0)  # cancelled before any pulse: nothing counted
    assert ledger.used(W24, 31.0) == 10
    assert len(ledger) == 1


# --- Rolling 24 hours -----------------------------------------------------------------


def test_day_cap_and_reopening() -> None:
    ledger = BolusLedger(FACTORY)  # 1000 per 24 h
    for i in range(5):
        bolus(ledger, i, 200, i * (H + 401), i * (H + 401) + 400.0)
    now = 5 * (H + 401)
    assert ledger.used(W1, now) == 0
    error = refused(ledger, 1, now)
    assert (error.which, error.allowed_pulses) == (LimitKind.DAY, 0)
    assert error.which.refusal is wire.RefusalCode.OVER_24H_LIMIT
    first_end = 400.0
    assert ledger.allowed(first_end + DAY) == 0
    assert ledger.allowed(first_end + DAY + 0.5) == 200


def test_clock_going_back_never_reopens_a_window() -> None:
    """Only the monotonic clock counts; an earlier ``now`` is the latest seen."""
    ledger = BolusLedger(FACTORY)
    bolus(ledger, 1, 200, 5000.0, 5400.0)
    bolus(ledger, 2, 100, 5500.0, 5600.0)
    assert ledger.allowed(0.0) == 0
    assert ledger.allowed(-1e9) == 0
    assert ledger.allowed(5600.0) == 0
    with pytest.raises(ValueError, match="finite"):
        ledger.allowed(float("inf"))


# --- Reboot ------------------------------------------------------------------------------


def reboot(ledger: BolusLedger, snapshot_at: float, boot_at: float) -> BolusLedger:
    stored = cbor2.loads(cbor2.dumps(ledger.snapshot(snapshot_at)))
    return BolusLedger.restore(stored, policy=ledger.policy, now=boot_at)


def test_snapshot_stores_ages_not_times() -> None:
    ledger = BolusLedger(FACTORY)
    bolus(ledger, 1, 100, 1000.0, 1100.0)
    bolus(ledger, 2, 50, 2000.0, 2100.0)
    assert ledger.snapshot(2500.0) == ((1_400_000, 100), (400_000, 50))


def test_reboot_keeps_ages_as_if_no_time_passed() -> None:
    ledger = BolusLedger(FACTORY)
    bolus(ledger, 1, 200, 10_000.0, 10_400.0)
    bolus(ledger, 2, 100, 10_500.0, 10_600.0)
    # Power lost at 11_000 (age 600 s / 400 s); the new boot's clock reads 2.0.
    restored = reboot(ledger, 11_000.0, 2.0)
    assert restored.used(W1, 2.0) == 300
    # The first entry had 3000 s left in its hour, the second 3200 s: not
    # a moment less.
    assert restored.allowed(2.0 + 3000.0) == 0
    assert restored.used(W1, 2.0 + 3000.0) == 300
    assert restored.used(W1, 2.0 + 3000.5) == 100
    assert restored.used(W1, 2.0 + 3200.0) == 100
    assert restored.used(W1, 2.0 + 3200.5) == 0
    assert restored.used(W24, 2.0 + DAY - 400.0) == 100


def test_reboot_with_open_reservation_counts_it_all_at_boot() -> None:
    ledger = BolusLedger(FACTORY)
    bolus(ledger, 1, 50, 0.0, 100.0)
    ledger.commit(cmd(2), 200, 2000.0)
    assert ledger.snapshot(2010.0)[-1] == (0, 200)
    restored = reboot(ledger, 2010.0, 0.0)
    assert restored.reserved is None
    assert restored.used(W1, 0.0) == 250
    assert restored.allowed(H) == 100  # the interrupted bolus still counts
    assert refused(restored, 101, H).which is LimitKind.HOUR
    assert restored.allowed(H + 0.5) == 200
    restored.commit(cmd(3), 1, H + 0.5)  # and nothing is left open


def test_restore_drops_only_what_is_older_than_a_day() -> None:
    restored = BolusLedger.restore([[W24 + 1, 200], [W24, 300]], policy=LOOSE, now=0.0)
    assert restored.used(W24, 0.0) == 300
    assert len(restored) == 1


@pytest.mark.parametrize(
    "stored",
    [
        {"a": 1},
        "entries",
        [[1, 2, 3]],
        [[1]],
        [[-1, 5]],
        [[5, 0]],
        [[5, wire.ABSOLUTE_MAX_24H_PULSES + 1]],
        [[5, True]],
        [[5.0, 5]],
        [[0, 1]] * 200,
    ],
)
def test_corrupt_ledger_is_refused(stored: object) -> None:
    with pytest.raises(LedgerSnapshotInvalid):
        BolusLedger.restore(stored, policy=FACTORY, now=0.0)


def test_assume_full_refuses_everything_for_a_day() -> None:
    ledger = BolusLedger.assume_full(FACTORY, now=50.0)
    for t in (50.0, 50.0 + H, 50.0 + DAY):
        assert ledger.allowed(t) == 0
        assert refused(ledger, 1, t).which in (LimitKind.HOUR, LimitKind.DAY)
    assert ledger.allowed(50.0 + DAY + 0.5) == FACTORY.max_bolus_pulses


# --- Lossy operations against an exact reference ------------------------------------


@dataclass
class Exact:
    """Every settled bolus, kept forever: what the ledger approximates."""

    entries: list[tuple[float, int]]

    def used(self, window_s: float, now: float) -> int:
        return sum(p for t, p in self.entries if now - t <= window_s)


#: Times in eighths of a second are exact in binary floating point.
eighths = st.integers(min_value=0, max_value=4 * 86_400 * 8).map(lambda n: n / 8)


@settings(max_examples=80, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=6 * 3600 * 8), min_size=1, max_size=60),
    sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=60, max_size=60),
    recent=st.integers(min_value=1, max_value=6),
    queries=st.lists(st.integers(min_value=0, max_value=30 * 3600 * 8), min_size=1, max_size=8),
)
def test_coalescing_never_undercounts(
    gaps: list[int], sizes: list[int], recent: int, queries: list[int]
) -> None:
    ledger = BolusLedger(LOOSE, recent_entries=recent)
    exact = Exact([])
    now = 0.0
    for i, (gap, size) in enumerate(zip(gaps, sizes, strict=False)):
        now += gap / 8
        if ledger.allowed(now) < size or exact.used(DAY, now) + size > LOOSE.max_24h_pulses:
            continue
        bolus(ledger, i, size, now)
        exact.entries.append((now, size))
        assert len(ledger) <= ledger.max_entries
        for window_ms in (W1, W24):
            window = window_ms / 1000
            got = ledger.used(window_ms, now)
            assert exact.used(window, now) <= got
    for q in sorted(queries):
        t = now + q / 8
        for window_ms in (W1, W24):
            window = window_ms / 1000
            got = ledger.used(window_ms, t)
            assert exact.used(window, t) <= got, "the ledger undercounts"
            # ... and overcounts only by what coalescing allows: one bucket.
            slack = config.LEDGER_BUCKET_MS / 1000
            assert got <= exact.used(window + slack, t)


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(st.tuples(eighths, st.integers(min_value=1, max_value=80)), max_size=40),
    snapshot_after=st.integers(min_value=0, max_value=2 * 86_400 * 8),
    boot_at=eighths,
    later=st.lists(st.integers(min_value=0, max_value=30 * 3600 * 8), min_size=1, max_size=10),
)
def test_restore_across_reboot_never_undercounts(
    events: list[tuple[float, int]], snapshot_after: int, boot_at: float, later: list[int]
) -> None:
    """After a reboot, at every age the restored ledger counts at least what
    the original would have counted at the same time after the snapshot."""
    ledger = BolusLedger(LOOSE, recent_entries=4)
    now = 0.0
    for i, (t, size) in enumerate(sorted(events)):
        now = t
        if ledger.allowed(now) >= size:
            bolus(ledger, i, size, now)
    snapshot_at = now + snapshot_after / 8
    restored = reboot(ledger, snapshot_at, boot_at)
    for d in sorted(later):
        for window_ms in (W1, W24):
            before = ledger.used(window_ms, snapshot_at + d / 8)
            after = restored.used(window_ms, boot_at + d / 8)
            assert after >= before, "restore undercounts"


def test_bounded_under_many_small_boluses() -> None:
    ledger = BolusLedger(LOOSE)
    exact = Exact([])
    for i in range(2000):
        t = i * 150.0  # a 1-pulse bolus every 150 s for 83 hours
        bolus(ledger, i, 1, t)
        exact.entries.append((t, 1))
        assert len(ledger) <= ledger.max_entries
        # 24 boluses an hour fit the exact part: the hour is exact ...
        assert ledger.used(W1, t) == exact.used(H, t)
        # ... and the day overcounts by at most one bucket's worth.
        assert exact.used(DAY, t) <= ledger.used(W24, t) <= exact.used(DAY + H, t)
    end = 1999 * 150.0
    assert ledger.coalesced > 0
    assert len(ledger.snapshot(end)) <= ledger.max_entries


def test_limit_kind_values_are_the_documented_strings() -> None:
    assert [k.value for k in LimitKind] == ["single", "1h", "24h"]
    assert str(LimitExceeded(LimitKind.DAY, 3)) == "24h limit: at most 3 pulses now"


def test_module_doctests() -> None:
    result = doctest.testmod(limits_module, report=False)
    assert result.attempted > 0
    assert result.failed == 0
