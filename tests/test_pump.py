"""The pump firmware driven by a real remote client, over the rig's direct link.

Every test runs :class:`firmware_sim.pump.Pump` against :class:`host.client.RemoteClient`
on one simulated clock (host/inmemory.py) and judges what can be observed: the motor's own
pulse count (the independent witness), the firmware's ledger, the refusal codes that come
back, the front panel, and the audit log read straight from flash.

* Commands (SPEC §12.1-§12.3): a bolus is delivered pulse for pulse, announced on the
  pump's display (S10) and can be cancelled from the remote or at the pump; remote bolus is
  off until enabled at the pump (S4) and, when off, nothing is delivered.
* Limits (SPEC §12.5, S6): the single-bolus limit at max-1 / max / max+1, and the rolling
  1 h and 24 h caps reached by boluses split under the single limit -- refused at the cap
  with ``detail`` = what is still allowed, across reboots, and a window never reopens early.
* Exactly once (SPEC §12.4, S7): retried prepare/commit return the stored outcome and
  deliver nothing; a reused id with another dose is a conflict; outcomes survive reboot;
  querying an unknown id voids its challenge; a lost reply or a restarted host still
  learns the real outcome.
* Freshness (SPEC §12.3, S3): a commit after ``BOLUS_CHALLENGE_TTL_S`` on the pump's
  clock, after a reboot, or not matching the challenge's id, dose and value, is refused.
* Policy (SPEC §12.5, S6): only a policy signed by the prescriber enrolled at the front
  panel, for this pump, with a higher version, changes the limits; the remote's own keys
  cannot make one.
* Audit (SPEC §13, S10): ``bolus_started`` is on flash before the in-progress reply
  leaves the pump, and the chain verifies with ``protocol.audit_entry.verify_entries``.
* Safe state (SPEC §13, S8): corrupt storage leads to SAFE_STATE -- remote bolus off, no
  handshake answered, alarm shown, basal only -- never to permissive defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.audit import AuditLog
from pumpguard.firmware_sim.panel import Button
from pumpguard.firmware_sim.pump import PumpMode
from pumpguard.firmware_sim.store import SnapshotStore
from pumpguard.host.client import (
    UNASSIGNED_ID,
    LinkDown,
    OutcomeUnknown,
    PumpRefused,
    RemoteClient,
)
from pumpguard.host.inmemory import Remote, Rig, records_in
from pumpguard.host.keystore import KeyStore
from pumpguard.protocol import (
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    CommandQuery,
    LimitPolicy,
    Message,
    Outcome,
    RecordType,
    RefusalCode,
    audit_entry,
    encode_policy,
    sign_policy,
    wire,
)
from pumpguard.protocol.audit_entry import AuditEntry

HOUR = 3600.0
DAY = 86_400.0
PRESCRIBER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PRESCRIBER_PUBLIC = PRESCRIBER.public_key().public_bytes_raw()


# --- The bench: a paired pump and remote ------------------------------------------------


def make_bench(tmp_path: Path, *, remote_bolus: bool = True) -> Remote:
    bench = Rig().paired_remote(tmp_path / "keys", remote_bolus=remote_bolus)
    bench.client.status()  # a session, and the audit key pinned
    return bench


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Remote]:
    made = make_bench(tmp_path)
    yield made
    made.rig.close()


@pytest.fixture
def bench_off(tmp_path: Path) -> Iterator[Remote]:
    """Paired, remote bolus left as the factory set it (off)."""
    made = make_bench(tmp_path, remote_bolus=False)
    yield made
    made.rig.close()


def cid(n: int) -> bytes:
    return bytes([n]) * wire.COMMAND_ID_LEN


def unrecorded_pulses(rig: Rig) -> int:
    """Motor pulses (the witness) minus the firmware's ledger: 0 when they agree."""
    return rig.motor.pulses - rig.pump.delivery.motor_base - rig.ledger_pulses


def bolus_pulses(rig: Rig) -> int:
    return rig.pump.delivery.bolus_pulses_delivered


def fast_forward(rig: Rig, seconds: float, step: float = 1.0) -> None:
    """Let time pass in 1 s ticks (within every catch-up bound, 20x cheaper than advance)."""
    rig.advance(seconds, step)


def refused(call: Callable[[], object]) -> PumpRefused:
    with pytest.raises(PumpRefused) as info:
        call()
    return info.value


def prepare(client: RemoteClient, command_id: bytes, pulses: int) -> bytes:
    response = client.request(BolusPrepare(UNASSIGNED_ID, command_id, pulses))
    assert isinstance(response, BolusChallenge)
    assert response.command_id == command_id
    return response.challenge


def commit(client: RemoteClient, command_id: bytes, pulses: int, challenge: bytes) -> Message:
    return client.request(BolusCommit(UNASSIGNED_ID, command_id, pulses, challenge))


def outcome_of(message: Message) -> tuple[Outcome, int, int]:
    assert isinstance(message, CommandOutcome)
    return message.outcome, message.requested, message.delivered


def flash_audit(rig: Rig) -> list[AuditEntry]:
    """The audit log as flash holds it right now (a fresh reader: nothing from RAM)."""
    key = Ed25519PrivateKey.from_private_bytes(rig.pump.persistent.audit_key)
    return AuditLog(rig.flash, *config.FLASH_AUDIT, signing_key=key).entries()


def events_for(entries: list[AuditEntry], command_id: bytes) -> list[tuple[str, object]]:
    return [
        (e.event, e.fields.get("pulses")) for e in entries if e.fields.get("cmd_id") == command_id
    ]


# --- Commands -----------------------------------------------------------------------------


def test_bolus_is_delivered_pulse_for_pulse_and_announced(bench: Remote) -> None:
    rig = bench.rig
    progress: list[tuple[int, int]] = []
    result = bench.client.bolus(20, lambda done, asked: progress.append((done, asked)))
    assert (result.outcome, result.requested_pulses, result.delivered_pulses) == (
        Outcome.DELIVERED,
        20,
        20,
    )
    assert bolus_pulses(rig) == 20
    assert unrecorded_pulses(rig) == 0
    record = rig.pump.persistent.outcome(result.command_id)
    assert record is not None
    assert (record.outcome, record.requested, record.delivered) == (Outcome.DELIVERED, 20, 20)
    assert progress[-1] == (20, 20)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert any("REMOTE BOLUS 1 U started" in text for text in rig.pump.panel.shown("alert"))
    fast_forward(rig, 600)
    assert bolus_pulses(rig) == 20  # nothing after the end


def test_remote_cancels_a_bolus_in_progress(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    challenge = prepare(client, cid(1), 100)
    assert outcome_of(commit(client, cid(1), 100, challenge))[0] is Outcome.IN_PROGRESS
    assert rig.pump.panel.shown("alert"), "the pump announces the remote bolus"
    rig.advance(11)
    cancelled = client.cancel()
    assert cancelled.outcome is Outcome.CANCELLED
    assert 1 <= cancelled.delivered < 100
    fast_forward(rig, 600)
    assert bolus_pulses(rig) == cancelled.delivered
    assert outcome_of(client.request(CommandQuery(UNASSIGNED_ID, cid(1)))) == (
        Outcome.CANCELLED,
        100,
        cancelled.delivered,
    )
    assert unrecorded_pulses(rig) == 0


def test_cancel_at_the_pump_ends_the_remote_bolus(bench: Remote) -> None:
    rig = bench.rig

    def user_cancels_at_five(done: int, asked: int) -> None:
        if done >= 5:
            rig.pump.panel.press(Button.CANCEL_BOLUS)

    result = bench.client.bolus(100, user_cancels_at_five)
    assert result.outcome is Outcome.CANCELLED
    assert 5 <= result.delivered_pulses < 100
    fast_forward(rig, 600)
    assert bolus_pulses(rig) == result.delivered_pulses


def test_cancel_with_no_bolus_running_is_refused(bench: Remote) -> None:
    assert refused(bench.client.cancel).code is RefusalCode.NOTHING_TO_CANCEL


def test_status_reports_the_pumps_own_counts(bench: Remote) -> None:
    rig = bench.rig
    bench.client.bolus(10)
    fast_forward(rig, 400)
    status = bench.client.status()
    assert status.bolus_pulses == bolus_pulses(rig) == 10
    assert status.basal_pulses == rig.pump.delivery.basal_pulses_delivered > 0
    assert status.remote_bolus_enabled is True
    assert (status.max_bolus_pulses, status.max_1h_pulses, status.max_24h_pulses) == (
        wire.FACTORY_MAX_BOLUS_PULSES,
        wire.FACTORY_MAX_1H_PULSES,
        wire.FACTORY_MAX_24H_PULSES,
    )


def test_remote_bolus_is_off_after_pairing(bench_off: Remote) -> None:
    rig = bench_off.rig
    assert rig.pump.persistent.remote_bolus_enabled is False
    assert refused(lambda: bench_off.client.bolus(10)).code is RefusalCode.REMOTE_BOLUS_DISABLED
    fast_forward(rig, 120)
    assert bolus_pulses(rig) == 0
    assert rig.pump.persistent.outcomes == ()


def test_remote_bolus_switched_off_at_the_panel_refuses_and_delivers_nothing(bench: Remote) -> None:
    rig = bench.rig
    bench.client.bolus(4)
    rig.press(Button.REMOTE_BOLUS_OFF)
    assert refused(lambda: bench.client.bolus(10)).code is RefusalCode.REMOTE_BOLUS_DISABLED
    assert any("remote bolus is off" in text for text in rig.pump.panel.shown("alert"))
    fast_forward(rig, 120)
    assert bolus_pulses(rig) == 4
    rig.press(Button.REMOTE_BOLUS_ON)
    assert bench.client.bolus(10).delivered_pulses == 10


def test_remote_bolus_switched_off_between_prepare_and_commit(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    challenge = prepare(client, cid(2), 10)
    rig.press(Button.REMOTE_BOLUS_OFF)
    assert (
        refused(lambda: commit(client, cid(2), 10, challenge)).code
        is RefusalCode.REMOTE_BOLUS_DISABLED
    )
    fast_forward(rig, 120)
    assert bolus_pulses(rig) == 0
    assert rig.pump.persistent.outcome(cid(2)) is None


# --- Limits (S6) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pulses", [wire.FACTORY_MAX_BOLUS_PULSES - 1, wire.FACTORY_MAX_BOLUS_PULSES]
)
def test_single_limit_accepts_up_to_the_max(bench: Remote, pulses: int) -> None:
    result = bench.client.bolus(pulses)
    assert (result.outcome, result.delivered_pulses) == (Outcome.DELIVERED, pulses)
    assert bolus_pulses(bench.rig) == pulses


def test_single_limit_refuses_one_pulse_more(bench: Remote) -> None:
    rig = bench.rig
    over = wire.FACTORY_MAX_BOLUS_PULSES + 1
    refusal = refused(lambda: bench.client.bolus(over))
    assert refusal.code is RefusalCode.OVER_SINGLE_LIMIT
    assert refusal.detail == wire.FACTORY_MAX_BOLUS_PULSES
    assert any("over single limit" in text for text in rig.pump.panel.shown("alert"))
    # Counted in an aggregated "refusals" entry, the first of a run at once ([fail-safe] 5).
    assert ("refusals", 1) in [(e.event, e.fields.get("over_limit")) for e in flash_audit(rig)]
    fast_forward(rig, 60)
    assert bolus_pulses(rig) == 0
    assert rig.pump.persistent.outcomes == ()


def test_hourly_cap_refuses_split_boluses_at_the_cap_across_reboots(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    assert client.bolus(150).delivered_pulses == 150
    rig.reboot()
    assert client.bolus(100).delivered_pulses == 100
    rig.reboot()
    refusal = refused(lambda: client.bolus(60))
    assert (refusal.code, refusal.detail) == (RefusalCode.OVER_1H_LIMIT, 50)
    assert client.bolus(50).delivered_pulses == 50  # exactly the cap
    rig.reboot()
    refusal = refused(lambda: client.bolus(1))
    assert (refusal.code, refusal.detail) == (RefusalCode.OVER_1H_LIMIT, 0)
    fast_forward(rig, 60)
    assert bolus_pulses(rig) == wire.FACTORY_MAX_1H_PULSES
    assert unrecorded_pulses(rig) == 0


def test_hourly_window_reopens_only_after_an_hour(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    client.bolus(150)
    first_end = rig.clock.now  # the bolus ended at most one poll before this
    client.bolus(150)
    rig.reboot()  # right after the ledger was stored: restoring it loses no time
    fast_forward(rig, first_end + HOUR - 10 - rig.clock.now)
    refusal = refused(lambda: client.bolus(1))
    assert (refusal.code, refusal.detail) == (RefusalCode.OVER_1H_LIMIT, 0)
    fast_forward(rig, first_end + HOUR + 5 - rig.clock.now)
    refusal = refused(lambda: client.bolus(151))
    assert (refusal.code, refusal.detail) == (RefusalCode.OVER_1H_LIMIT, 150)
    assert client.bolus(150).delivered_pulses == 150


def test_daily_cap_refuses_at_the_cap_across_reboots(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    first_end = 0.0
    for n in range(4):
        assert client.bolus(200).delivered_pulses == 200
        if n == 0:
            first_end = rig.clock.now
        rig.reboot()
        fast_forward(rig, HOUR + 60)
    assert client.bolus(150).delivered_pulses == 150  # 950 in 24 h
    refusal = refused(lambda: client.bolus(100))
    assert (refusal.code, refusal.detail) == (RefusalCode.OVER_24H_LIMIT, 50)
    assert client.bolus(50).delivered_pulses == 50  # exactly 1000
    rig.reboot()
    fast_forward(rig, HOUR + 60)  # the hourly window is clear again
    refusal = refused(lambda: client.bolus(1))
    assert (refusal.code, refusal.detail) == (RefusalCode.OVER_24H_LIMIT, 0)
    fast_forward(rig, first_end + DAY - 30 - rig.clock.now)
    assert refused(lambda: client.bolus(1)).code is RefusalCode.OVER_24H_LIMIT
    fast_forward(rig, 60)
    assert client.bolus(200).delivered_pulses == 200  # the first bolus left the window
    assert bolus_pulses(rig) == wire.FACTORY_MAX_24H_PULSES + 200


def test_time_the_pump_was_off_does_not_reopen_a_window(bench: Remote) -> None:
    """The monotonic clock restarts at boot: the pump must count the outage as zero."""
    rig, client = bench.rig, bench.client
    client.bolus(200)
    client.bolus(100)
    rig.clock.now += 2 * HOUR  # the pump is off for two hours: no tick, no write
    rig.reboot()
    refusal = refused(lambda: client.bolus(1))
    assert (refusal.code, refusal.detail) == (RefusalCode.OVER_1H_LIMIT, 0)


# --- Exactly once (S7) ------------------------------------------------------------------


def test_retried_commit_and_prepare_return_the_stored_outcome(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    challenge = prepare(client, cid(3), 20)
    first = commit(client, cid(3), 20, challenge)
    assert outcome_of(first)[0] is Outcome.IN_PROGRESS
    again = commit(client, cid(3), 20, challenge)
    assert outcome_of(again)[:2] == (Outcome.IN_PROGRESS, 20)
    rig.advance(60)
    assert outcome_of(commit(client, cid(3), 20, challenge)) == (Outcome.DELIVERED, 20, 20)
    assert outcome_of(client.request(BolusPrepare(UNASSIGNED_ID, cid(3), 20))) == (
        Outcome.DELIVERED,
        20,
        20,
    )
    fast_forward(rig, 120)
    assert bolus_pulses(rig) == 20
    assert [o.command_id for o in rig.pump.persistent.outcomes] == [cid(3)]


def test_same_id_with_another_dose_is_a_conflict(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    challenge = prepare(client, cid(4), 20)
    commit(client, cid(4), 20, challenge)
    rig.advance(60)
    for call in (
        lambda: client.request(BolusPrepare(UNASSIGNED_ID, cid(4), 21)),
        lambda: commit(client, cid(4), 19, challenge),
    ):
        assert refused(call).code is RefusalCode.COMMAND_ID_CONFLICT
    fast_forward(rig, 120)
    assert bolus_pulses(rig) == 20


def test_outcome_is_queryable_across_reboot(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    result = client.bolus(12)
    rig.reboot()
    assert outcome_of(client.request(CommandQuery(UNASSIGNED_ID, result.command_id))) == (
        Outcome.DELIVERED,
        12,
        12,
    )
    challenge_after_reboot = client.request(BolusPrepare(UNASSIGNED_ID, result.command_id, 12))
    assert outcome_of(challenge_after_reboot) == (Outcome.DELIVERED, 12, 12)
    fast_forward(rig, 60)
    assert bolus_pulses(rig) == 12


def test_query_of_an_unknown_id_voids_its_challenge(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    challenge = prepare(client, cid(5), 10)
    assert outcome_of(client.request(CommandQuery(UNASSIGNED_ID, cid(5)))) == (
        Outcome.UNKNOWN,
        0,
        0,
    )
    assert refused(lambda: commit(client, cid(5), 10, challenge)).code is (
        RefusalCode.CHALLENGE_INVALID
    )
    fast_forward(rig, 60)
    assert bolus_pulses(rig) == 0
    assert rig.pump.persistent.outcome(cid(5)) is None


def test_a_lost_reply_is_settled_to_the_real_outcome(bench: Remote) -> None:
    rig, client, link = bench.rig, bench.client, bench.link

    def link_dies(done: int, asked: int) -> None:
        link.replies_arrive = False

    with pytest.raises(OutcomeUnknown) as info:
        client.bolus(30, link_dies)
    command_id = info.value.command_id
    assert [p.command_id for p in bench.journal.pending()] == [command_id]
    rig.advance(90)
    link.replies_arrive = True
    assert client.settle_pending() == []
    settled = bench.journal.settled()[-1]
    assert (settled.command_id, settled.outcome, settled.delivered) == (
        command_id,
        Outcome.DELIVERED,
        30,
    )
    record = rig.pump.persistent.outcome(command_id)
    assert record is not None
    assert (record.outcome, record.delivered) == (Outcome.DELIVERED, 30)
    assert bolus_pulses(rig) == 30


def test_a_bolus_whose_prepare_never_arrived_is_settled_as_not_delivered(bench: Remote) -> None:
    rig, client, link = bench.rig, bench.client, bench.link
    link.requests_arrive = False
    with pytest.raises(OutcomeUnknown) as info:
        client.bolus(10)
    link.requests_arrive = True
    assert client.settle_pending() == []
    settled = bench.journal.settled()[-1]
    assert (settled.command_id, settled.outcome, settled.delivered) == (
        info.value.command_id,
        Outcome.UNKNOWN,
        0,
    )
    fast_forward(rig, 60)
    assert bolus_pulses(rig) == 0


def test_a_restarted_host_settles_from_its_journal(tmp_path: Path) -> None:
    made = make_bench(tmp_path)
    rig = made.rig

    class HostKilled(Exception):
        """The remote process dies with the bolus running."""

    def host_killed(done: int, asked: int) -> None:
        raise HostKilled

    with pytest.raises(HostKilled):
        made.client.bolus(40, host_killed)
    made.close()
    restarted = rig.attach(made.path, seed="restarted")
    client, journal = restarted.client, restarted.journal
    try:
        (pending,) = journal.pending()
        assert client.settle_pending() == []
        settled = journal.settled()[-1]
        assert (settled.command_id, settled.outcome, settled.delivered) == (
            pending.command_id,
            Outcome.DELIVERED,
            40,
        )
        assert client.bolus(5).delivered_pulses == 5
        assert bolus_pulses(rig) == 45
    finally:
        journal.close()


def test_replayed_bolus_records_deliver_nothing(bench: Remote) -> None:
    rig = bench.rig
    bench.client.bolus(10)
    recorded = list(rig.from_remote)
    for reboot_first in (False, True):
        if reboot_first:
            rig.reboot()
        rig.to_remote.clear()
        for chunk in recorded:
            rig.inject(chunk)
        # Nothing of the replay is answered with DATA: every record is refused.
        assert all(record[0] != RecordType.DATA for record in records_in(bytes(rig.to_remote)))
    fast_forward(rig, 120)
    assert bolus_pulses(rig) == 10
    assert len(rig.pump.persistent.outcomes) == 1


# --- Freshness (S3) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wait", "accepted"),
    [(wire.BOLUS_CHALLENGE_TTL_S - 0.5, True), (wire.BOLUS_CHALLENGE_TTL_S + 0.5, False)],
)
def test_commit_is_refused_after_the_challenge_ttl(
    bench: Remote, wait: float, accepted: bool
) -> None:
    rig, client = bench.rig, bench.client
    challenge = prepare(client, cid(6), 10)
    rig.advance(wait)
    if accepted:
        assert outcome_of(commit(client, cid(6), 10, challenge))[0] is Outcome.IN_PROGRESS
    else:
        refusal = refused(lambda: commit(client, cid(6), 10, challenge))
        assert refusal.code is RefusalCode.CHALLENGE_INVALID
    fast_forward(rig, 60)
    assert bolus_pulses(rig) == (10 if accepted else 0)


def test_a_challenge_does_not_survive_reboot(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    challenge = prepare(client, cid(7), 10)
    rig.reboot()
    refusal = refused(lambda: commit(client, cid(7), 10, challenge))
    assert refusal.code is RefusalCode.CHALLENGE_INVALID
    fast_forward(rig, 60)
    assert bolus_pulses(rig) == 0
    assert rig.pump.persistent.outcome(cid(7)) is None


@pytest.mark.parametrize("change", ["command_id", "pulses", "challenge"])
def test_the_challenge_is_bound_to_id_dose_and_value(bench: Remote, change: str) -> None:
    rig, client = bench.rig, bench.client
    challenge = prepare(client, cid(8), 10)
    command_id, pulses = cid(8), 10
    if change == "command_id":
        command_id = cid(9)
    elif change == "pulses":
        pulses = 11
    else:
        challenge = bytes([challenge[0] ^ 1]) + challenge[1:]
    refusal = refused(lambda: commit(client, command_id, pulses, challenge))
    assert refusal.code is RefusalCode.CHALLENGE_INVALID
    fast_forward(rig, 60)
    assert bolus_pulses(rig) == 0
    assert rig.pump.persistent.outcomes == ()


# --- Policy (S6) --------------------------------------------------------------------------


def enrol_prescriber(rig: Rig, public: bytes = PRESCRIBER_PUBLIC) -> None:
    rig.pump.panel.press(Button.ENROL_PRESCRIBER, public)
    rig.tick()


def signed(
    policy: LimitPolicy, rig: Rig, key: Ed25519PrivateKey = PRESCRIBER
) -> tuple[bytes, bytes]:
    body = encode_policy(policy, for_pump=rig.pump.pump_id)
    return body, sign_policy(body, key)


TIGHTER = LimitPolicy(1, 100, 150, 500)
LOOSER = LimitPolicy(2, 240, 400, 1200)


def test_a_policy_needs_an_enrolled_prescriber(bench: Remote) -> None:
    body, signature = signed(TIGHTER, bench.rig)
    refusal = refused(lambda: bench.client.upload_policy(body, signature))
    assert refusal.code is RefusalCode.NO_PRESCRIBER
    assert bench.rig.pump.persistent.policy == LimitPolicy.factory()


def _remote_derived_key(bench: Remote) -> Ed25519PrivateKey:
    """The best the remote can do: an Ed25519 key made from its own secret."""
    static = KeyStore.open(bench.path).remote_static()
    return Ed25519PrivateKey.from_private_bytes(static.private_bytes_raw())


@pytest.mark.parametrize(
    "forgery", ["unsigned", "wrong_key", "remote_key", "other_pump", "out_of_bounds"]
)
def test_forged_policies_are_refused(bench: Remote, forgery: str) -> None:
    rig = bench.rig
    enrol_prescriber(rig)
    body = encode_policy(LOOSER, for_pump=rig.pump.pump_id)
    signature = sign_policy(body, PRESCRIBER)
    if forgery == "unsigned":
        signature = bytes(wire.ED25519_SIGNATURE_LEN)
    elif forgery == "wrong_key":
        signature = sign_policy(body, Ed25519PrivateKey.from_private_bytes(bytes(32)))
    elif forgery == "remote_key":
        signature = sign_policy(body, _remote_derived_key(bench))
    elif forgery == "other_pump":
        body = encode_policy(LOOSER, for_pump=bytes(wire.PUMP_ID_LEN))
        signature = sign_policy(body, PRESCRIBER)
    else:  # authentic, but beyond the absolute maxima
        body = cbor2.dumps(
            {1: rig.pump.pump_id, 2: 3, 3: wire.ABSOLUTE_MAX_BOLUS_PULSES + 1, 4: 4000, 5: 4000},
            canonical=True,
        )
        signature = sign_policy(body, PRESCRIBER)
    refusal = refused(lambda: bench.client.upload_policy(body, signature))
    assert refusal.code is RefusalCode.POLICY_INVALID
    assert rig.pump.persistent.policy == LimitPolicy.factory()
    assert ("refusals", 1) in [(e.event, e.fields.get("bad_policy")) for e in flash_audit(rig)]
    over = refused(lambda: bench.client.bolus(wire.FACTORY_MAX_BOLUS_PULSES + 1))
    assert over.code is RefusalCode.OVER_SINGLE_LIMIT


def test_a_valid_policy_changes_the_limits_and_survives_reboot(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    enrol_prescriber(rig)
    client.upload_policy(*signed(LOOSER, rig))
    status = client.status()
    assert (status.limits_version, status.max_bolus_pulses) == (2, 240)
    rig.reboot()
    refusal = refused(lambda: client.bolus(241))
    assert (refusal.code, refusal.detail) == (RefusalCode.OVER_SINGLE_LIMIT, 240)
    assert client.bolus(240).delivered_pulses == 240
    assert ("policy", 2) in [(e.event, e.fields.get("version")) for e in flash_audit(rig)]


def test_a_tighter_policy_is_enforced_at_its_edge(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    enrol_prescriber(rig)
    client.upload_policy(*signed(TIGHTER, rig))
    refusal = refused(lambda: client.bolus(101))
    assert (refusal.code, refusal.detail) == (RefusalCode.OVER_SINGLE_LIMIT, 100)
    assert client.bolus(100).delivered_pulses == 100
    refusal = refused(lambda: client.bolus(51))
    assert (refusal.code, refusal.detail) == (RefusalCode.OVER_1H_LIMIT, 50)


@pytest.mark.parametrize("reboot", [False, True])
def test_policy_rollback_is_refused(bench: Remote, reboot: bool) -> None:
    rig, client = bench.rig, bench.client
    enrol_prescriber(rig)
    client.upload_policy(*signed(LOOSER, rig))
    if reboot:
        rig.reboot()
    for older in (TIGHTER, LimitPolicy(2, 100, 150, 500), LimitPolicy(0, 100, 150, 500)):
        body, signature = signed(older, rig)
        with pytest.raises(PumpRefused) as info:
            client.upload_policy(body, signature)
        assert (info.value.code, info.value.detail) == (RefusalCode.POLICY_ROLLBACK, 2)
    assert rig.pump.persistent.policy == LOOSER


# --- Audit (S10) --------------------------------------------------------------------------


def test_bolus_started_is_on_flash_before_the_reply_leaves(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    challenge = prepare(client, cid(10), 8)
    on_flash_at_reply: list[list[AuditEntry]] = []

    def at_send(direction: str, record: bytes, verdict: str) -> None:
        if direction == "tx" and record[:1] == bytes([RecordType.DATA]):
            on_flash_at_reply.append(flash_audit(rig))

    rig.pump.on_record = at_send
    reply = commit(client, cid(10), 8, challenge)
    rig.pump.on_record = None
    assert outcome_of(reply)[0] is Outcome.IN_PROGRESS
    assert bolus_pulses(rig) == 0  # acknowledged before the first pulse
    assert on_flash_at_reply, "the pump sent its reply"
    assert events_for(on_flash_at_reply[0], cid(10)) == [("bolus_started", 8)]
    public = rig.pump.audit_public_key
    audit_entry.verify_entries([e.signed for e in on_flash_at_reply[0]], public)


def test_history_verifies_and_holds_every_delivery(bench: Remote) -> None:
    rig, client = bench.rig, bench.client
    delivered = client.bolus(6)
    challenge = prepare(client, cid(11), 50)
    commit(client, cid(11), 50, challenge)
    rig.advance(9)
    cancelled = client.cancel()
    signed_entries = client.history()
    log = audit_entry.verify_entries(signed_entries, client.status().audit_key)
    assert log.evicted_before == 0
    assert events_for(list(log.entries), delivered.command_id) == [
        ("bolus_started", 6),
        ("bolus_delivered", 6),
    ]
    assert events_for(list(log.entries), cid(11)) == [
        ("bolus_started", 50),
        ("bolus_cancelled", cancelled.delivered),
    ]
    assert [e.signed for e in flash_audit(rig)] == signed_entries
    assert client.verified_history() == log.entries


# --- Safe state (S8) ----------------------------------------------------------------------


def _corrupt(rig: Rig, how: str) -> None:
    size = config.FLASH_SECTOR_SIZE
    if how == "main_zeroed":
        first, count = config.FLASH_MAIN_STORE
        rig.flash.tamper(first * size, bytes(count * size))
    elif how == "main_garbage":
        first, count = config.FLASH_MAIN_STORE
        garbage = bytes((i * 37 + 11) % 256 for i in range(count * size))
        rig.flash.tamper(first * size, garbage)
    elif how == "main_state_invalid":
        # A well-formed snapshot whose payload is not a pump state.
        SnapshotStore(rig.flash, *config.FLASH_MAIN_STORE).commit(cbor2.dumps([1, "junk"]))
    else:  # delivery_garbage
        first, count = config.FLASH_DELIVERY_STORE
        rig.flash.tamper(first * size, bytes(count * size))


@pytest.mark.parametrize(
    "how",
    [
        "main_zeroed",
        "main_garbage",
        "main_state_invalid",
        "delivery_garbage",
    ],
)
def test_corrupt_storage_means_safe_state(bench: Remote, how: str) -> None:
    """Regression (delivery_garbage): in SAFE_STATE after a corrupt delivery store, the first
    basal pulse's tick called persist_delivery() into the corrupt store and StorageCorrupt
    escaped Pump.tick (the firmware loop died).  In the safe state nothing is written to
    flash at all; a bolus into the silent pump fails before anything is journaled."""
    rig, client = bench.rig, bench.client
    client.bolus(5)
    sent = records_in(b"".join(rig.from_remote))
    assert {record[0] for record in sent} >= {RecordType.HANDSHAKE_INIT, RecordType.DATA}
    _corrupt(rig, how)
    rig.reboot()
    pump = rig.pump
    flash_operations = rig.flash.operations
    assert pump.mode is PumpMode.SAFE_STATE
    assert pump.persistent.remote_bolus_enabled is False
    assert pump.persistent.remotes == ()
    assert pump.panel.shown("alarm")
    for chunk in rig.from_remote:  # every handshake and command ever sent
        rig.inject(chunk)
    assert rig.to_remote == bytearray(), "nothing is answered in the safe state"
    with pytest.raises(LinkDown):
        client.status()
    with pytest.raises(LinkDown):  # the handshake fails first: the bolus was never sent
        client.bolus(5)
    assert bench.journal.pending() == []
    motor_before = rig.motor.pulses
    fast_forward(rig, 2 * HOUR)
    assert rig.pump.delivery.bolus_pulses_delivered == 0
    assert rig.motor.pulses - motor_before == rig.pump.delivery.basal_pulses_delivered >= 30
    assert unrecorded_pulses(rig) == 0
    assert rig.flash.operations == flash_operations, "the safe state never writes to flash"


def test_reset_storage_leaves_the_safe_state_with_nothing_permitted(bench: Remote) -> None:
    rig = bench.rig
    _corrupt(rig, "main_garbage")
    rig.reboot()
    assert rig.pump.mode is PumpMode.SAFE_STATE
    rig.press(Button.REMOTE_BOLUS_ON)  # ignored in the safe state
    rig.press(Button.RESET_STORAGE)
    pump = rig.pump
    assert pump.mode is PumpMode.RUNNING
    assert pump.persistent.remotes == ()
    assert pump.persistent.remote_bolus_enabled is False
    assert pump.persistent.policy == LimitPolicy.factory()
    with pytest.raises(LinkDown):
        bench.client.status()  # the old pairing is gone; re-pair at the pump
