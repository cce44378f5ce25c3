"""Power cut at every storage write of a bolus, a pairing and a limits update (S8, SPEC §13).

Each scenario is run once cleanly to count its flash operations, then once per ``k`` with
``rig.flash.cut_power_at(k)``: the k-th program or erase is torn (as the flash's seed
decides, or completed with ``keep=1.0`` -- written, but the firmware never learned it) and
:class:`~firmware_sim.flash.PowerLoss` comes out of whatever pump call was running.  The
pump is then rebooted and the remote retries, and every run must show:

* the pump boots and runs (RUNNING, ticks without raising);
* motor pulses (the witness) equal the ledger, within one pulse right after the cut;
* each command id executed at most once: a bolus's outcome after the reboot is final,
  never grows on retry, and the pump's total bolus pulses are exactly what its outcome
  records say; a retried ``bolus-commit`` after the reboot returns the stored outcome or
  ``challenge-invalid`` (SPEC §12.3-§12.4, S7), never a second delivery;
* the remote's answer after ``settle_pending()`` is the pump's record;
* no nonce reuse (S2): every DATA record the pump ever sealed has a distinct
  ``(session, counter)`` -- sessions live in RAM, so a reboot means a new handshake -- and
  records of the sessions before the cut are refused afterwards;
* no half state: a pairing is on both sides or is simply redone; a policy is the old one or
  the new one, whole; the audit chain verifies and every delivery is in it.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_pump import (
    bolus_pulses,
    fast_forward,
    make_bench,
    prepare,
    unrecorded_pulses,
)

from pumpguard.firmware_sim.audit import AuditLog
from pumpguard.firmware_sim.flash import PowerLoss
from pumpguard.firmware_sim.panel import Button
from pumpguard.firmware_sim.pump import Pump, PumpMode
from pumpguard.host.client import UNASSIGNED_ID, PumpRefused, RemoteClient
from pumpguard.host.inmemory import Remote, Rig, records_in
from pumpguard.host.keystore import KeyStore
from pumpguard.protocol import (
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    LimitPolicy,
    Message,
    Outcome,
    RecordType,
    RefusalCode,
    SecureSession,
    audit_entry,
    encode_policy,
    sign_policy,
    x25519_public_bytes,
)

#: The bolus of the scenario: long enough to cross a delivery-store sector.
BOLUS = 20
KEEPS = [None, 1.0]
PRESCRIBER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
NEW_POLICY = LimitPolicy(1, 100, 150, 500)


# --- No nonce reuse: who sealed what -------------------------------------------------------


@dataclass
class NonceWitness:
    """Every DATA record each side sealed, as ``(session hash, counter)``.

    ``SecureSession.seal`` is wrapped to remember which session made each record; the
    pump's ``on_record`` hook (re-attached after every reboot) says which records the pump
    sent, and the rig's recording of the link which ones the remote sent.
    """

    sealed_by: dict[bytes, bytes] = field(default_factory=dict)
    pump_sent: list[tuple[bytes, int]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = SecureSession.seal
        sealed_by = self.sealed_by

        def seal(session: SecureSession, plaintext: bytes) -> bytes:
            record = original(session, plaintext)
            sealed_by[record] = session.session_hash
            return record

        monkeypatch.setattr(SecureSession, "seal", seal)

    def attach(self, pump: Pump) -> None:
        def on_record(direction: str, record: bytes, verdict: str) -> None:
            if direction == "tx" and record[:1] == bytes([RecordType.DATA]):
                self.pump_sent.append((self.sealed_by[record], _counter(record)))

        pump.on_record = on_record

    def assert_no_reuse(self, rig: Rig) -> None:
        remote_sent = [
            (self.sealed_by[record], _counter(record))
            for record in records_in(b"".join(rig.from_remote))
            if record[0] == RecordType.DATA
        ]
        assert self.pump_sent, "the pump sealed records"
        assert remote_sent, "the remote sealed records"
        assert sealed_twice(self.pump_sent) == [], "the pump reused a nonce"
        assert sealed_twice(remote_sent) == [], "the remote reused a nonce"


def sealed_twice(sealed: list[tuple[bytes, int]]) -> list[tuple[str, int]]:
    """The ``(session, counter)`` pairs that occur more than once (short session names)."""
    return [
        (session[:4].hex(), counter)
        for (session, counter), times in Counter(sealed).items()
        if times > 1
    ]


def _counter(record: bytes) -> int:
    return int.from_bytes(record[1:5], "big")


@pytest.fixture
def witness(monkeypatch: pytest.MonkeyPatch) -> NonceWitness:
    seen = NonceWitness()
    seen.install(monkeypatch)
    return seen


# --- Shared steps -------------------------------------------------------------------------


def reboot_and_run(rig: Rig, witness: NonceWitness) -> Pump:
    """Power back on, boot, and let the firmware's first ticks run."""
    rig.reboot()
    witness.attach(rig.pump)
    rig.advance(1.0)  # settles a bolus the cut interrupted (see the regression test below)
    assert rig.pump.mode is PumpMode.RUNNING
    return rig.pump


def assert_old_sessions_refused(rig: Rig, recorded: list[bytes]) -> None:
    """Replaying everything the remote sent before the cut: no DATA answer, no delivery."""
    before = (bolus_pulses(rig), rig.pump.persistent.outcomes)
    rig.to_remote.clear()
    for chunk in recorded:
        rig.inject(chunk)
    answers = records_in(bytes(rig.to_remote))
    assert all(record[0] != RecordType.DATA for record in answers)
    rig.to_remote.clear()
    fast_forward(rig, 60)
    assert (bolus_pulses(rig), rig.pump.persistent.outcomes) == before


def assert_audit_holds_every_delivery(bench: Remote) -> None:
    """The chain verifies; each bolus that delivered has its start and one end entry."""
    client, rig = bench.client, bench.rig
    log = audit_entry.verify_entries(client.history(), client.status().audit_key)
    for record in rig.pump.persistent.outcomes:
        if record.delivered == 0:
            continue
        events = [
            (entry.event, entry.fields.get("pulses"))
            for entry in log.entries
            if entry.fields.get("cmd_id") == record.command_id
        ]
        assert events == [
            ("bolus_started", record.requested),
            (f"bolus_{record.outcome.name.lower()}", record.delivered),
        ], "started once, ended once, as recorded"


def ops_of(scenario: Callable[[Rig, RemoteClient], object], setup: Callable[[Path], Remote]) -> int:
    """Flash operations the scenario performs when nothing goes wrong."""
    with tempfile.TemporaryDirectory() as directory:
        bench = setup(Path(directory))
        try:
            before = bench.rig.flash.operations
            scenario(bench.rig, bench.client)
            return bench.rig.flash.operations - before
        finally:
            bench.journal.close()


@pytest.fixture
def bench(tmp_path: Path, witness: NonceWitness) -> Iterator[Remote]:
    made = make_bench(tmp_path)  # after the witness is installed: it sees every seal
    witness.attach(made.rig.pump)
    yield made
    made.journal.close()


# --- A bolus --------------------------------------------------------------------------------


def _whole_bolus(rig: Rig, client: RemoteClient) -> None:
    client.bolus(BOLUS)


BOLUS_OPS = ops_of(_whole_bolus, make_bench)


def test_the_bolus_scenario_writes_at_every_pulse() -> None:
    # Commit (state, audit, delivery), a delivery snapshot per pulse (SPEC §13.3), settle:
    # the sweep below therefore cuts between every two pulses.
    assert BOLUS_OPS > 3 + BOLUS + 3


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("k", range(1, BOLUS_OPS + 1))
def test_power_cut_during_a_bolus(
    bench: Remote, witness: NonceWitness, k: int, keep: float | None
) -> None:
    rig, client = bench.rig, bench.client
    rig.flash.cut_power_at(k, keep=keep)
    with pytest.raises(PowerLoss):
        client.bolus(BOLUS)
    recorded = list(rig.from_remote)
    (pending,) = bench.journal.pending()
    command_id = pending.command_id

    pump = reboot_and_run(rig, witness)
    assert abs(unrecorded_pulses(rig)) <= 1
    record = pump.persistent.outcome(command_id)
    if record is not None:
        assert record.outcome is not Outcome.IN_PROGRESS, "settled at boot"
        assert record.requested == BOLUS
        assert 0 <= record.delivered <= BOLUS
    first = 0 if record is None else record.delivered
    assert bolus_pulses(rig) == first

    # The host settles the id it journaled, then the user doses what is missing.
    assert client.settle_pending() == []
    settled = bench.journal.settled()[-1]
    assert settled.command_id == command_id
    if record is None:
        assert (settled.outcome, settled.delivered) == (Outcome.UNKNOWN, 0)
    else:
        assert (settled.outcome, settled.delivered) == (record.outcome, first)
    if first < BOLUS:
        assert client.bolus(BOLUS - first).delivered_pulses == BOLUS - first
    fast_forward(rig, 120)

    assert bolus_pulses(rig) == BOLUS, "the dose went in once, in total"
    assert rig.pump.persistent.outcome(command_id) == record, "the first id ran at most once"
    assert unrecorded_pulses(rig) == 0
    assert_audit_holds_every_delivery(bench)
    witness.assert_no_reuse(rig)
    assert_old_sessions_refused(rig, recorded)


# --- A bolus commit retried at message level after the cut ------------------------------


CMD = bytes([0xC5]) * 16


def _commit_ops() -> int:
    """Flash operations from the commit (after the prepare) to the end of delivery."""
    with tempfile.TemporaryDirectory() as directory:
        bench = make_bench(Path(directory))
        try:
            challenge = prepare(bench.client, CMD, BOLUS)
            before = bench.rig.flash.operations
            bench.client.request(BolusCommit(UNASSIGNED_ID, CMD, BOLUS, challenge))
            bench.rig.advance(2 * BOLUS + 5)
            return bench.rig.flash.operations - before
        finally:
            bench.journal.close()


COMMIT_OPS = _commit_ops()


def _outcome(message: Message) -> tuple[Outcome, int]:
    assert isinstance(message, CommandOutcome)
    assert message.command_id == CMD
    return message.outcome, message.delivered


@pytest.mark.parametrize("k", range(1, COMMIT_OPS + 1))
def test_a_commit_retried_after_the_cut_never_delivers_twice(
    bench: Remote, witness: NonceWitness, k: int
) -> None:
    rig, client = bench.rig, bench.client
    challenge = prepare(client, CMD, BOLUS)

    def commit_and_deliver() -> None:
        client.request(BolusCommit(UNASSIGNED_ID, CMD, BOLUS, challenge))
        rig.advance(2 * BOLUS + 5)

    rig.flash.cut_power_at(k)
    with pytest.raises(PowerLoss):
        commit_and_deliver()
    pump = reboot_and_run(rig, witness)
    stored = pump.persistent.outcome(CMD)

    # The same commit again, as a remote that never saw the reply would send it.
    if stored is None:
        with pytest.raises(PumpRefused) as info:
            client.request(BolusCommit(UNASSIGNED_ID, CMD, BOLUS, challenge))
        assert info.value.code is RefusalCode.CHALLENGE_INVALID, "the challenge died with RAM"
    else:
        assert _outcome(client.request(BolusCommit(UNASSIGNED_ID, CMD, BOLUS, challenge))) == (
            stored.outcome,
            stored.delivered,
        )
    fast_forward(rig, 60)
    assert bolus_pulses(rig) == (0 if stored is None else stored.delivered)

    # A fresh prepare under the same id: the stored outcome, or (never committed) a new go.
    again = client.request(BolusPrepare(UNASSIGNED_ID, CMD, BOLUS))
    if stored is None:
        assert not isinstance(again, CommandOutcome)
        fresh = prepare(client, CMD, BOLUS)
        client.request(BolusCommit(UNASSIGNED_ID, CMD, BOLUS, fresh))
        fast_forward(rig, 2 * BOLUS + 5)
        final = rig.pump.persistent.outcome(CMD)
        assert final is not None
        assert (final.outcome, final.delivered) == (Outcome.DELIVERED, BOLUS)
    else:
        assert _outcome(again) == (stored.outcome, stored.delivered)
        assert rig.pump.persistent.outcome(CMD) == stored
    fast_forward(rig, 60)
    final = rig.pump.persistent.outcome(CMD)
    assert final is not None
    assert bolus_pulses(rig) == final.delivered <= BOLUS
    assert unrecorded_pulses(rig) == 0
    witness.assert_no_reuse(rig)


def test_bolus_cut_mid_delivery_is_settled_after_reboot(bench: Remote) -> None:
    """The cut lands on the delivery snapshot after a pulse, wherever that op falls.

    Regression: a bolus interrupted by the power cut is settled at the first tick after
    boot, and BolusLedger.settle raised ValueError (the reservation was restored as a
    settled entry), so the firmware loop died.
    """
    rig, client = bench.rig, bench.client
    challenge = prepare(client, CMD, BOLUS)
    client.request(BolusCommit(UNASSIGNED_ID, CMD, BOLUS, challenge))
    rig.advance(10.5)  # five pulses
    rig.flash.cut_power_at(1)
    with pytest.raises(PowerLoss):
        rig.advance(5)
    delivered = bolus_pulses(rig) + unrecorded_pulses(rig)
    assert 5 <= delivered < BOLUS
    rig.reboot()
    rig.advance(1.0)  # used to raise ValueError from BolusLedger.settle
    record = rig.pump.persistent.outcome(CMD)
    assert record is not None
    assert (record.outcome, record.delivered) == (Outcome.INTERRUPTED, delivered)
    assert bolus_pulses(rig) == delivered
    assert_audit_holds_every_delivery(bench)


@pytest.mark.parametrize("cut_after", ["state", "audit"])
def test_a_bolus_settled_just_before_the_cut_is_logged_once(
    bench: Remote, monkeypatch: pytest.MonkeyPatch, cut_after: str
) -> None:
    """The bolus's end is committed in three steps (state, audit entry, delivery
    snapshot); the cut lands right after the first or the second, wherever their flash
    operations fall.

    Regression: the first tick after boot raised ValueError from BolusLedger.settle; and a
    cut after the end entry was audited but before the delivery snapshot was committed
    made the pump settle (and audit) the same bolus a second time.
    """
    rig, client = bench.rig, bench.client

    def arm_when_done(step: Callable[..., object]) -> Callable[..., object]:
        def wrapped(*args: object) -> object:
            result = step(*args)
            record = rig.pump.persistent.outcome(CMD)
            if record is not None and record.outcome is Outcome.DELIVERED:
                rig.flash.cut_power_at(1, keep=0.0)
            return result

        return wrapped

    if cut_after == "state":
        monkeypatch.setattr(Pump, "_commit_state", arm_when_done(Pump._commit_state))
    else:
        monkeypatch.setattr(AuditLog, "append", arm_when_done(AuditLog.append))
    challenge = prepare(client, CMD, BOLUS)
    client.request(BolusCommit(UNASSIGNED_ID, CMD, BOLUS, challenge))
    with pytest.raises(PowerLoss):
        rig.advance(2 * BOLUS + 5)
    monkeypatch.undo()
    rig.reboot()
    rig.advance(1.0)
    record = rig.pump.persistent.outcome(CMD)
    assert record is not None
    assert (record.outcome, record.delivered) == (Outcome.DELIVERED, BOLUS)
    assert bolus_pulses(rig) == BOLUS
    assert_audit_holds_every_delivery(bench)


# --- A pairing commit -----------------------------------------------------------------------


def _unpaired_bench(directory: Path) -> Remote:
    return Rig().attach(directory / "keys")


PAIRING_OPS = ops_of(Rig.pair, _unpaired_bench)


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("k", range(1, PAIRING_OPS + 1))
def test_power_cut_during_pairing(
    tmp_path: Path, witness: NonceWitness, k: int, keep: float | None
) -> None:
    bench = _unpaired_bench(tmp_path)
    try:
        rig, client = bench.rig, bench.client
        witness.attach(rig.pump)
        rig.flash.cut_power_at(k, keep=keep)
        with pytest.raises(PowerLoss):
            rig.pair(client)
        # The remote made its key before sending anything.
        remote_public = x25519_public_bytes(KeyStore.open(bench.path).remote_static())
        pump = reboot_and_run(rig, witness)
        pump_side = pump.persistent.remotes
        remote_side = KeyStore.open(bench.path).pairing()
        assert pump_side in ((), (remote_public,)), "all of the pairing or none of it"
        if remote_side is not None:
            assert pump_side == (remote_public,), "the remote never holds a one-sided pairing"
            assert remote_side.pump_static == pump.static_public

        if remote_side is None:
            rig.pair(client)
        rig.press(Button.REMOTE_BOLUS_ON)
        client.status()
        assert rig.pump.persistent.remotes == (remote_public,), "listed once after the retry"
        assert client.bolus(2).delivered_pulses == 2
        assert unrecorded_pulses(rig) == 0
        audit_entry.verify_entries(client.history(), client.status().audit_key)
        witness.assert_no_reuse(rig)
    finally:
        bench.journal.close()


# --- A limits update -------------------------------------------------------------------------


def _prescribed_bench(directory: Path) -> Remote:
    made = make_bench(directory)
    made.rig.pump.panel.press(Button.ENROL_PRESCRIBER, PRESCRIBER.public_key().public_bytes_raw())
    made.rig.tick()
    return made


def _signed_policy(rig: Rig) -> tuple[bytes, bytes]:
    body = encode_policy(NEW_POLICY, for_pump=rig.pump.pump_id)
    return body, sign_policy(body, PRESCRIBER)


def _upload(rig: Rig, client: RemoteClient) -> None:
    client.upload_policy(*_signed_policy(rig))


POLICY_OPS = ops_of(_upload, _prescribed_bench)


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("k", range(1, POLICY_OPS + 1))
def test_power_cut_during_a_limits_update(
    tmp_path: Path, witness: NonceWitness, k: int, keep: float | None
) -> None:
    bench = _prescribed_bench(tmp_path)
    try:
        rig, client = bench.rig, bench.client
        witness.attach(rig.pump)
        before = rig.pump.persistent
        rig.flash.cut_power_at(k, keep=keep)
        with pytest.raises(PowerLoss):
            _upload(rig, client)
        recorded = list(rig.from_remote)
        pump = reboot_and_run(rig, witness)
        after = pump.persistent
        assert after.policy in (before.policy, NEW_POLICY), "old or new, whole"
        assert (after.remotes, after.remote_bolus_enabled, after.prescriber) == (
            before.remotes,
            before.remote_bolus_enabled,
            before.prescriber,
        )

        # Retry the same signed policy: applied now, or already in force.
        if after.policy == before.policy:
            _upload(rig, client)
        else:
            with pytest.raises(PumpRefused) as rollback:
                _upload(rig, client)
            assert (rollback.value.code, rollback.value.detail) == (
                RefusalCode.POLICY_ROLLBACK,
                NEW_POLICY.version,
            )
        assert rig.pump.persistent.policy == NEW_POLICY
        with pytest.raises(PumpRefused) as info:
            client.bolus(NEW_POLICY.max_bolus_pulses + 1)
        assert (info.value.code, info.value.detail) == (
            RefusalCode.OVER_SINGLE_LIMIT,
            NEW_POLICY.max_bolus_pulses,
        )
        assert client.bolus(NEW_POLICY.max_bolus_pulses).delivered_pulses == 100
        assert unrecorded_pulses(rig) == 0
        assert_audit_holds_every_delivery(bench)
        witness.assert_no_reuse(rig)
        assert_old_sessions_refused(rig, recorded)
    finally:
        bench.journal.close()
