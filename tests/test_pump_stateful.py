"""The firmware against a small reference model, one random command at a time (S3, S6-S8).

A :class:`~hypothesis.stateful.RuleBasedStateMachine` drives the real
:class:`~firmware_sim.pump.Pump` through a real :class:`~host.client.RemoteClient`
(host/inmemory.py) with random commands -- boluses of any size (over the limits too), boluses
left running by a remote that went away, cancel from the remote and at the pump, status,
the clock running on (seconds to hours), reboots, power cut at the k-th storage write,
remote bolus switched on and off at the panel, and link loss in either direction -- and
after every step checks what must always hold:

* motor pulses (the witness) == the firmware's ledger; one pulse apart only right after a
  power cut (SPEC §13.1, S8);
* every command id is delivered at most once: a final outcome never changes, no bolus
  delivers more than it asked, an outcome *in progress* is the bolus actually running, and
  the pump's bolus total is exactly the sum of its outcome records (SPEC §12.4, S7);
* nothing is delivered for a command the pump never acknowledged (SPEC §13.3);
* what the remote was told -- a :class:`~host.client.BolusResult`, a refusal, or "unknown"
  settled later by ``settle_pending()`` -- is what the pump recorded (S7);
* the rolling limits: bolus pulses committed within any 1 h (24 h) never exceed 300
  (1000), whatever the reboots (SPEC §12.5, S6); a refusal's ``detail`` is really allowed;
* basal keeps running; no (session, counter) is ever sealed twice by either side (S2).

``PumpModel`` may reboot or cut the power while a bolus runs (it guards the fix of the
settle-after-reboot bug, see tests/test_pump_crash.py); ``SteadyPumpModel`` reboots and
cuts only between boluses.  The fast variants run a few
examples without shrinking; the ``slow`` ones many more, with shrinking.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from test_pump import fast_forward, unrecorded_pulses
from test_pump_crash import assert_audit_holds_every_delivery, sealed_twice

from pumpguard.firmware_sim.flash import PowerLoss
from pumpguard.firmware_sim.panel import Button
from pumpguard.firmware_sim.pump import PumpMode
from pumpguard.host.client import BolusResult, LinkDown, OutcomeUnknown, PumpRefused
from pumpguard.host.inmemory import Rig, records_in
from pumpguard.protocol import CommandOutcome, Outcome, RecordType, RefusalCode, SecureSession, wire

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
FINAL = frozenset({Outcome.DELIVERED, Outcome.CANCELLED, Outcome.INTERRUPTED})
LIMIT_CODES = frozenset(
    {RefusalCode.OVER_SINGLE_LIMIT, RefusalCode.OVER_1H_LIMIT, RefusalCode.OVER_24H_LIMIT}
)
#: Which session sealed each record, filled by the wrapper the tests install.
SEALED_BY: dict[bytes, bytes] = {}
#: Longest a client call may keep the clock running (a bolus takes at most 400 s).
CLIENT_CALL_LIMIT_S = 3 * 3600.0

pulses_any = st.one_of(
    st.integers(1, 30), st.sampled_from([150, 199, 200, 201, 250, wire.ABSOLUTE_MAX_BOLUS_PULSES])
)


class _HostGone(Exception):
    """The remote process dies with its bolus running (raised from the progress callback)."""


class PumpModel(RuleBasedStateMachine):
    #: Reboots and power cuts may land while a bolus runs.
    cuts_mid_bolus: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        keys_dir = Path(self._tmp.name) / "keys"
        self.rig = Rig(seed="stateful")
        rig = self.rig
        self.call_started = rig.clock.now
        self.remote = rig.attach(keys_dir, seed="stateful-remote", sleep=self._sleep)
        self.link = self.remote.link
        self.journal = self.remote.journal
        self.client = self.remote.client
        self.pump_sealed: list[tuple[bytes, int]] = []
        #: When the pump acknowledged each command id (its reply left the pump).
        self.committed_at: dict[bytes, int] = {}
        #: Final outcomes seen: (outcome, requested, delivered); never changes once set.
        self.final: dict[bytes, tuple[Outcome, int, int]] = {}
        self.just_cut = False
        self.bolus_total = 0
        self.basal_total = 0
        self._attach()
        rig.pair(self.client)
        rig.press(Button.REMOTE_BOLUS_ON)  # off again by a rule now and then
        self.remote_on = True

    def teardown(self) -> None:
        self.journal.close()
        self._tmp.cleanup()

    # --- plumbing -------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        if self.rig.clock.now - self.call_started > CLIENT_CALL_LIMIT_S:
            raise AssertionError("the client keeps polling: an outcome never settles")
        self.rig.advance(seconds)

    def _start_call(self) -> None:
        self.call_started = self.rig.clock.now
        self.just_cut = False

    def _attach(self) -> None:
        pump = self.rig.pump

        def on_record(direction: str, record: bytes, verdict: str) -> None:
            if direction != "tx" or record[:1] != bytes([RecordType.DATA]):
                return
            self.pump_sealed.append((SEALED_BY[record], int.from_bytes(record[1:5], "big")))
            now_ms = int(self.rig.clock.now * 1000)
            for outcome in pump.persistent.outcomes:
                if outcome.outcome is Outcome.IN_PROGRESS:
                    self.committed_at.setdefault(outcome.command_id, now_ms)

        pump.on_record = on_record

    def _reboot(self) -> None:
        self.rig.reboot()
        self._attach()
        self.rig.advance(0.2)  # the first ticks after boot settle what the cut left

    def _may_cut_now(self) -> bool:
        return self.cuts_mid_bolus or self.rig.pump.delivery.active_bolus is None

    def _bolus(self, pulses: int, *, leave_running: bool = False, retry: bool = True) -> None:
        """One bolus through the client, judged against the model."""

        def progress(done: int, asked: int) -> None:
            if leave_running:
                raise _HostGone

        try:
            result = self.client.bolus(pulses, progress)
        except _HostGone:
            assert self.rig.pump.delivery.active_bolus is not None
            return
        except PumpRefused as refusal:
            self._check_refusal(refusal, pulses, retry=retry)
            return
        self._check_result(result, pulses)

    def _check_result(self, result: BolusResult, pulses: int) -> None:
        assert (result.outcome, result.requested_pulses, result.delivered_pulses) == (
            Outcome.DELIVERED,
            pulses,
            pulses,
        )
        record = self.rig.pump.persistent.outcome(result.command_id)
        assert record is not None
        assert (record.outcome, record.delivered) == (result.outcome, result.delivered_pulses)

    def _check_refusal(self, refusal: PumpRefused, pulses: int, *, retry: bool = True) -> None:
        if not self.remote_on:
            assert refusal.code is RefusalCode.REMOTE_BOLUS_DISABLED
            return
        assert refusal.code in LIMIT_CODES, refusal.code
        assert (refusal.code is RefusalCode.OVER_SINGLE_LIMIT) == (
            pulses > wire.FACTORY_MAX_BOLUS_PULSES
        )
        allowed = refusal.detail
        assert 0 <= allowed < pulses
        assert allowed <= wire.FACTORY_MAX_BOLUS_PULSES
        if allowed and retry:  # what the pump says it would accept, it accepts
            self._start_call()
            self._check_result(self.client.bolus(allowed), allowed)

    # --- rules ----------------------------------------------------------------------------

    @rule(pulses=pulses_any)
    def bolus(self, pulses: int) -> None:
        self._start_call()
        self._bolus(pulses)

    @rule(pulses=st.integers(1, 60))
    def bolus_left_running(self, pulses: int) -> None:
        self._start_call()
        self._bolus(pulses, leave_running=True)

    @rule()
    def cancel_from_remote(self) -> None:
        self._start_call()
        running = self.rig.pump.delivery.active_bolus
        refused: RefusalCode | None = None
        try:
            outcome = self.client.cancel()
        except PumpRefused as refusal:
            refused = refusal.code
        if refused is not None:
            assert refused is RefusalCode.NOTHING_TO_CANCEL
            assert self.rig.pump.delivery.active_bolus is None
            return
        assert isinstance(outcome, CommandOutcome)
        assert running is not None
        assert outcome.command_id == running.cmd_id
        assert outcome.outcome is Outcome.CANCELLED
        assert running.delivered <= outcome.delivered < outcome.requested

    @rule()
    def cancel_at_the_pump(self) -> None:
        self._start_call()
        self.rig.press(Button.CANCEL_BOLUS)
        assert self.rig.pump.delivery.active_bolus is None

    @rule()
    def status(self) -> None:
        self._start_call()
        status = self.client.status()
        delivery = self.rig.pump.delivery
        assert status.bolus_pulses == delivery.bolus_pulses_delivered
        assert status.basal_pulses == delivery.basal_pulses_delivered
        assert status.remote_bolus_enabled is self.remote_on
        assert (status.max_bolus_pulses, status.max_1h_pulses, status.max_24h_pulses) == (
            wire.FACTORY_MAX_BOLUS_PULSES,
            wire.FACTORY_MAX_1H_PULSES,
            wire.FACTORY_MAX_24H_PULSES,
        )

    @rule(seconds=st.sampled_from([1, 7, 60, 400, 3600, 5 * 3600]))
    def time_passes(self, seconds: int) -> None:
        self._start_call()
        basal = self.rig.pump.delivery.basal_pulses_delivered
        fast_forward(self.rig, seconds)
        made = self.rig.pump.delivery.basal_pulses_delivered - basal
        assert made >= seconds // 180 - 1, "basal keeps running (20 pulses/h)"

    @rule(on=st.booleans())
    def remote_bolus_at_the_panel(self, on: bool) -> None:
        self._start_call()
        self.rig.press(Button.REMOTE_BOLUS_ON if on else Button.REMOTE_BOLUS_OFF)
        self.remote_on = on

    @precondition(_may_cut_now)
    @rule()
    def reboot(self) -> None:
        self._start_call()
        self._reboot()

    @precondition(_may_cut_now)
    @rule(k=st.integers(1, 60), action=st.integers(0, 4), pulses=st.integers(1, 30))
    def power_cut(self, k: int, action: int, pulses: int) -> None:
        self._start_call()
        rig = self.rig
        if not self.cuts_mid_bolus:
            # Only writes that cannot land inside a bolus: basal, panel, refusals.
            k, action = 1 + (k - 1) % 6, 1 + action % 4
        wanted = not self.remote_on
        rig.flash.cut_power_at(k)
        try:
            if action == 0:
                self._bolus(pulses)
            elif action == 1:
                fast_forward(rig, 400)
            elif action == 2:
                rig.press(Button.REMOTE_BOLUS_ON if wanted else Button.REMOTE_BOLUS_OFF)
                self.remote_on = wanted
            elif action == 3:
                self._bolus(wire.FACTORY_MAX_BOLUS_PULSES + pulses, retry=self.cuts_mid_bolus)
            else:
                self.client.status()
        except PowerLoss:
            self._reboot()
            enabled = rig.pump.persistent.remote_bolus_enabled
            if action == 2:
                assert enabled in (self.remote_on, wanted), "the old setting or the new one"
            else:
                assert enabled is self.remote_on
            self.remote_on = enabled
            self.just_cut = True
        else:
            rig.flash.power_on()  # disarm: the k-th write never came

    @rule(mode=st.sampled_from(["requests", "replies", "after_commit"]), pulses=st.integers(1, 30))
    def link_loss(self, mode: str, pulses: int) -> None:
        self._start_call()
        link = self.link

        def dies_after_commit(done: int, asked: int) -> None:
            link.replies_arrive = False

        if mode == "requests":
            link.requests_arrive = False
        elif mode == "replies":
            link.replies_arrive = False
        unknown: bytes | None = None
        pending_before = self.journal.pending()
        try:
            self.client.bolus(pulses, dies_after_commit if mode == "after_commit" else None)
        except OutcomeUnknown as exc:
            unknown = exc.command_id
        except LinkDown:
            # No session yet and the handshake found no pump: the bolus was never sent,
            # and nothing was journaled for it (the handshake comes before the journal).
            assert mode != "after_commit"
            assert self.journal.pending() == pending_before
        except PumpRefused as refusal:
            # Refused before the link failed (the refusal arrived): nothing to settle.
            assert mode == "after_commit"
            self._check_refusal(refusal, pulses)
        finally:
            link.requests_arrive = link.replies_arrive = True
        if unknown is not None:
            assert unknown in {p.command_id for p in self.journal.pending()}

    @rule()
    def settle(self) -> None:
        self._start_call()
        assert self.client.settle_pending() == []
        assert self.journal.pending() == []
        assert_audit_holds_every_delivery(self.remote)

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def pump_runs_and_motor_matches_ledger(self) -> None:
        assert self.rig.pump.mode is PumpMode.RUNNING
        gap = unrecorded_pulses(self.rig)
        assert abs(gap) <= 1 if self.just_cut else gap == 0

    @invariant()
    def each_command_runs_at_most_once(self) -> None:
        pump = self.rig.pump
        active = pump.delivery.active_bolus
        now_ms = int(self.rig.clock.now * 1000)
        running = 0
        for record in pump.persistent.outcomes:
            assert 0 <= record.delivered <= record.requested
            if record.command_id not in self.committed_at:
                # Never acknowledged (the cut came before the reply): never delivered.
                assert record.delivered == 0
                self.committed_at[record.command_id] = now_ms
            if record.outcome is Outcome.IN_PROGRESS:
                assert active is not None
                assert active.cmd_id == record.command_id
                running += 1
                continue
            assert record.outcome in FINAL
            seen = (record.outcome, record.requested, record.delivered)
            assert self.final.setdefault(record.command_id, seen) == seen
        if active is not None:
            assert running == 1
            assert active.delivered <= active.requested
        total = sum(delivered for _, _, delivered in self.final.values())
        total += 0 if active is None else active.delivered
        assert pump.delivery.bolus_pulses_delivered == total
        assert pump.delivery.bolus_pulses_delivered >= self.bolus_total
        assert pump.delivery.basal_pulses_delivered >= self.basal_total
        self.bolus_total = pump.delivery.bolus_pulses_delivered
        self.basal_total = pump.delivery.basal_pulses_delivered

    @invariant()
    def what_the_remote_was_told_is_what_happened(self) -> None:
        recorded = {
            r.command_id: (r.outcome, r.requested, r.delivered)
            for r in self.rig.pump.persistent.outcomes
        }
        for settled in self.journal.settled():
            if settled.outcome is Outcome.UNKNOWN:  # refused, or never committed
                assert settled.command_id not in recorded
                assert settled.command_id not in self.final
                assert settled.delivered == 0
            else:
                seen = recorded.get(settled.command_id) or self.final[settled.command_id]
                outcome, _, delivered = seen
                assert (settled.outcome, settled.delivered) == (outcome, delivered)

    @invariant()
    def rolling_limits_hold(self) -> None:
        pump = self.rig.pump
        active = pump.delivery.active_bolus
        amounts = {cmd: delivered for cmd, (_, _, delivered) in self.final.items()}
        if active is not None:
            amounts[active.cmd_id] = active.delivered
        starts = sorted((self.committed_at[cmd], pulses) for cmd, pulses in amounts.items())
        for i, (t_i, _) in enumerate(starts):
            last_hour = sum(p for t, p in starts[: i + 1] if t_i - t <= HOUR_MS)
            last_day = sum(p for t, p in starts[: i + 1] if t_i - t <= DAY_MS)
            assert last_hour <= wire.FACTORY_MAX_1H_PULSES
            assert last_day <= wire.FACTORY_MAX_24H_PULSES

    @invariant()
    def no_nonce_is_sealed_twice(self) -> None:
        sent = [
            (SEALED_BY[record], int.from_bytes(record[1:5], "big"))
            for record in records_in(b"".join(self.rig.from_remote))
            if record[0] == RecordType.DATA
        ]
        assert sealed_twice(self.pump_sealed) == []
        assert sealed_twice(sent) == []


class SteadyPumpModel(PumpModel):
    """Reboots and power cuts only between boluses (clear of the known bug)."""

    cuts_mid_bolus = False


def _install_seal_witness(monkeypatch: pytest.MonkeyPatch) -> None:
    original = SecureSession.seal

    def seal(session: SecureSession, plaintext: bytes) -> bytes:
        record = original(session, plaintext)
        SEALED_BY[record] = session.session_hash
        return record

    monkeypatch.setattr(SecureSession, "seal", seal)


def _settings(examples: int, steps: int, *, shrink: bool) -> settings:
    phases = list(Phase) if shrink else [Phase.explicit, Phase.reuse, Phase.generate]
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=True,
        database=None,
        phases=phases,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


#: hypothesis leaves this one unannotated; give mypy --strict a typed name for it.
run_machine: Callable[..., None] = run_state_machine_as_test

FAST = _settings(20, 30, shrink=False)
SLOW = _settings(150, 50, shrink=True)


def test_steady_model(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_seal_witness(monkeypatch)
    run_machine(SteadyPumpModel, settings=FAST)


def test_model_with_cuts_mid_bolus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a bolus interrupted by a power cut is settled at the first tick after
    boot, and BolusLedger.settle raised ValueError (the reservation was restored as a
    settled entry)."""
    _install_seal_witness(monkeypatch)
    run_machine(PumpModel, settings=FAST)


@pytest.mark.slow
def test_steady_model_long(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_seal_witness(monkeypatch)
    run_machine(SteadyPumpModel, settings=SLOW)


@pytest.mark.slow
def test_model_with_cuts_mid_bolus_long(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_seal_witness(monkeypatch)
    run_machine(PumpModel, settings=SLOW)
