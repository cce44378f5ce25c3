"""[fail-safe] 4: a delivered bolus is never reported "not delivered" (S7, SPEC §12.4).

The bug: the pump kept the last 64 outcomes of *all* remotes together, so
remote B's commands evicted remote A's outcome; A's query then got *unknown*,
which means "never executed", and A settled its delivered 2 U bolus as not
delivered -- free to send it again.

What these tests hold the fix to:

* outcomes are kept per remote: any number of B's commands leave A's outcome
  in place, and A settles its bolus as delivered;
* an id the pump may have executed and forgotten (its seq at or below what
  the pump evicted for that remote) answers *evicted*, never *unknown*; a
  retried prepare of it executes nothing;
* the remote keeps an evicted bolus unsettled (no new bolus, exit status 4,
  "run 'pumpctl history'") until the pump's audit log settles it;
* an id the pump never saw still answers *unknown* and voids its challenge;
  a stale seq is refused and the remote continues after the pump's mark;
* the outcome tables survive encoding, refuse malformed bytes, tombstone an
  unpaired remote's table and never lose the "forgotten" knowledge.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from failsafe_helpers import (
    Remote,
    attach,
    command_id,
    fast_forward,
    outcome_of,
    paired,
    raw_bolus,
)
from rig import DirectLink, Rig, seeded_random

from pumpguard.firmware_sim.panel import Button
from pumpguard.firmware_sim.state import (
    MAX_OUTCOME_TABLES,
    OUTCOME_CAPACITY_PER_REMOTE,
    Known,
    OutcomeRecord,
    PersistentState,
    StateInvalid,
    decode_state,
    encode_state,
)
from pumpguard.host import cli
from pumpguard.host.client import (
    UNASSIGNED_ID,
    OutcomeEvicted,
    OutcomeUnknown,
    PumpRefused,
    RemoteClient,
)
from pumpguard.host.journal import JOURNAL_FILE, Journal
from pumpguard.host.transport import RecordChannel
from pumpguard.protocol import (
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    CommandQuery,
    Outcome,
    RefusalCode,
    Refused,
    decode_message,
    encode_message,
    wire,
)

#: A 2 U bolus: the dose of the issue.
TWO_UNITS = 40


@pytest.fixture
def two_remotes(tmp_path: Path) -> Iterator[tuple[Rig, Remote, Remote]]:
    rig = Rig(seed="fail-safe-4")
    a = paired(rig, tmp_path / "a", "remote-a")
    b = paired(rig, tmp_path / "b", "remote-b")
    rig.press(Button.REMOTE_BOLUS_ON)  # each pairing switched it off
    yield rig, a, b
    a.journal.close()
    b.journal.close()


def bolus_pulses(rig: Rig) -> int:
    return rig.pump.delivery.bolus_pulses_delivered


def delivered_with_lost_reply(rig: Rig, remote: Remote) -> bytes:
    """``remote`` boluses 2 U; the link dies mid-bolus, so its journal keeps it
    pending; the pump delivers all of it.  Returns the command id."""

    def link_dies(done: int, asked: int) -> None:
        remote.link.replies_arrive = False

    with pytest.raises(OutcomeUnknown) as info:
        remote.client.bolus(TWO_UNITS, link_dies)
    fast_forward(rig, 120)
    remote.link.replies_arrive = True
    record = rig.pump.persistent.outcome(info.value.command_id)
    assert record is not None
    assert (record.outcome, record.delivered) == (Outcome.DELIVERED, TWO_UNITS)
    assert [p.command_id for p in remote.journal.pending()] == [info.value.command_id]
    return info.value.command_id


def evict_own_outcome(rig: Rig, remote: Remote, first_seq: int = 1000) -> list[bytes]:
    """``remote`` commits OUTCOME_CAPACITY_PER_REMOTE newer ids by hand (as a
    remote whose journal lost them would), pushing its oldest record out."""
    ids = []
    for n in range(OUTCOME_CAPACITY_PER_REMOTE):
        cid = command_id(first_seq + n)
        assert outcome_of(raw_bolus(remote.client, cid, 1))[0] is Outcome.IN_PROGRESS
        fast_forward(rig, 5)
        ids.append(cid)
    return ids


def query(remote: Remote, cid: bytes) -> CommandOutcome:
    answer = remote.client.request(CommandQuery(UNASSIGNED_ID, cid))
    assert isinstance(answer, CommandOutcome)
    return answer


# --- The bug: another remote's commands ---------------------------------------------------


def test_fail_safe_4_other_remotes_commands_never_make_a_delivered_bolus_not_delivered(
    two_remotes: tuple[Rig, Remote, Remote],
) -> None:
    """[fail-safe] 4: B's 64+ commands, then A settles: delivered, never "not delivered"."""
    rig, a, b = two_remotes
    cid = delivered_with_lost_reply(rig, a)
    for _ in range(70):  # more than the 64 outcomes the pump kept for all remotes
        assert b.client.bolus(1).outcome is Outcome.DELIVERED
    answer = query(a, cid)
    assert (answer.outcome, answer.requested, answer.delivered) == (
        Outcome.DELIVERED,
        TWO_UNITS,
        TWO_UNITS,
    ), "B's commands evicted A's outcome"
    assert a.client.settle_pending() == []
    settled = a.journal.settled()[-1]
    assert (settled.command_id, settled.outcome, settled.delivered) == (
        cid,
        Outcome.DELIVERED,
        TWO_UNITS,
    )
    assert bolus_pulses(rig) == TWO_UNITS + 70


# --- An id the pump forgot --------------------------------------------------------------


def test_fail_safe_4_a_forgotten_id_answers_evicted_and_is_never_settled_as_not_delivered(
    two_remotes: tuple[Rig, Remote, Remote],
) -> None:
    """[fail-safe] 4: EVICTED, not UNKNOWN; kept unsettled, no new bolus; the log settles it."""
    rig, a, _ = two_remotes
    cid = delivered_with_lost_reply(rig, a)
    evict_own_outcome(rig, a)
    assert rig.pump.persistent.outcome(cid) is None, "the pump forgot it"
    assert query(a, cid).outcome is Outcome.EVICTED
    # A retried prepare of it executes nothing: it may have run already.
    pulses = bolus_pulses(rig)
    retried = a.client.request(BolusPrepare(UNASSIGNED_ID, cid, TWO_UNITS))
    assert outcome_of(retried) == (Outcome.EVICTED, 0, 0)
    fast_forward(rig, 30)
    assert bolus_pulses(rig) == pulses

    # The remote: unsettled (never "not delivered"), and no new bolus until settled.
    assert a.client.settle_pending() == [cid]
    (pending,) = a.journal.pending()
    assert (pending.command_id, pending.evicted) == (cid, True)
    assert all(s.command_id != cid for s in a.journal.settled())
    with pytest.raises(OutcomeEvicted) as refused:
        a.client.bolus(1)
    assert refused.value.exit_status == 4
    assert "pumpctl history" in str(refused.value)
    assert bolus_pulses(rig) == pulses
    with pytest.raises(ValueError, match="not delivered"):
        a.journal.settle(cid, Outcome.UNKNOWN, 0)

    # The pump's log still holds its end: settled from there, as delivered.
    settled = a.client.settle_from_history(a.client.verified_history())
    assert [(s.command_id, s.outcome, s.delivered) for s in settled] == [
        (cid, Outcome.DELIVERED, TWO_UNITS)
    ]
    assert a.journal.pending() == []
    assert a.client.bolus(1).outcome is Outcome.DELIVERED


def test_fail_safe_4_a_never_seen_id_still_answers_unknown_and_voids_its_challenge(
    two_remotes: tuple[Rig, Remote, Remote],
) -> None:
    """[fail-safe] 4: beside a forgotten id, a never-seen one is still UNKNOWN (never executed)."""
    rig, a, _ = two_remotes
    forgotten = delivered_with_lost_reply(rig, a)
    newer = evict_own_outcome(rig, a)
    high_water = int.from_bytes(newer[-1][: wire.COMMAND_SEQ_LEN], "big")
    assert query(a, forgotten).outcome is Outcome.EVICTED

    never = command_id(high_water + 1, tail=0x5A)
    challenge = a.client.request(BolusPrepare(UNASSIGNED_ID, never, 10))
    assert query(a, never).outcome is Outcome.UNKNOWN
    pulses = bolus_pulses(rig)
    assert not isinstance(challenge, CommandOutcome)
    commit = BolusCommit(UNASSIGNED_ID, never, 10, challenge.challenge)  # type: ignore[attr-defined]
    with pytest.raises(PumpRefused) as voided:
        a.client.request(commit)
    assert voided.value.code is RefusalCode.CHALLENGE_INVALID
    fast_forward(rig, 60)
    assert bolus_pulses(rig) == pulses
    assert rig.pump.persistent.outcome(never) is None

    # A seq the pump passed without committing it: never executed, and never will be.
    stale = command_id(high_water - 3, tail=0x77)
    assert query(a, stale).outcome is Outcome.UNKNOWN
    with pytest.raises(PumpRefused) as refused:
        a.client.request(BolusPrepare(UNASSIGNED_ID, stale, 10))
    assert (refused.value.code, refused.value.detail) == (RefusalCode.COMMAND_ID_STALE, high_water)
    # Still held: answered from the table.
    assert query(a, newer[-1]).outcome is Outcome.DELIVERED


def test_fail_safe_4_another_remote_cannot_read_or_settle_a_remotes_outcomes(
    two_remotes: tuple[Rig, Remote, Remote],
) -> None:
    """[fail-safe] 4: tables are per remote; B asking about A's id learns nothing of it."""
    rig, a, b = two_remotes
    cid = delivered_with_lost_reply(rig, a)
    assert b.client.bolus(1).outcome is Outcome.DELIVERED
    answer = query(b, cid)
    assert (answer.outcome, answer.requested, answer.delivered) == (Outcome.UNKNOWN, 0, 0)
    assert query(a, cid).outcome is Outcome.DELIVERED


def test_fail_safe_4_a_remote_with_a_replaced_journal_continues_after_the_pumps_mark(
    tmp_path: Path,
) -> None:
    """[fail-safe] 4: a stale seq is refused (nothing delivered); the client moves on, once."""
    rig = Rig(seed="fail-safe-4-stale")
    a = paired(rig, tmp_path / "a", "remote-a")
    rig.press(Button.REMOTE_BOLUS_ON)
    for _ in range(3):
        assert a.client.bolus(2).outcome is Outcome.DELIVERED
    a.journal.close()
    (tmp_path / "a" / JOURNAL_FILE).unlink()  # restored from an old backup, say
    again = attach(rig, tmp_path / "a", "remote-a-after")
    assert again.journal.next_seq == 1
    pulses = bolus_pulses(rig)
    result = again.client.bolus(2)
    assert (result.outcome, result.delivered_pulses) == (Outcome.DELIVERED, 2)
    assert bolus_pulses(rig) == pulses + 2, "delivered exactly once"
    assert int.from_bytes(result.command_id[: wire.COMMAND_SEQ_LEN], "big") == 4
    refused, delivered = again.journal.settled()
    assert (refused.outcome, refused.delivered) == (Outcome.UNKNOWN, 0)
    assert (delivered.command_id, delivered.outcome) == (result.command_id, Outcome.DELIVERED)
    again.journal.close()


# --- pumpctl ---------------------------------------------------------------------------


def pumpctl(
    rig: Rig, keys: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``pumpctl`` in this process, its port the rig's link and its clock the rig's."""
    with pytest.MonkeyPatch.context() as patch:

        class _Port:
            @staticmethod
            def open(port: str) -> DirectLink:
                return DirectLink(rig)

        patch.setattr(cli, "SerialLink", _Port)
        patch.setattr(
            cli,
            "RecordChannel",
            lambda link, on_frame=None: RecordChannel(link, on_frame=on_frame, clock=rig.clock),
        )
        patch.setattr(
            cli,
            "RemoteClient",
            lambda channel, keys, journal: RemoteClient(
                channel,
                keys,
                journal,
                clock=rig.clock,
                sleep=rig.advance,
                random_bytes=seeded_random("pumpctl"),
            ),
        )
        capsys.readouterr()
        status = cli.main(["--port", "rig", "--keys", str(keys), *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_fail_safe_4_pumpctl_says_to_read_the_history_and_exits_4(
    two_remotes: tuple[Rig, Remote, Remote], capsys: pytest.CaptureFixture[str]
) -> None:
    """[fail-safe] 4: pumpctl refuses to bolus (exit 4, one line), 'history' settles it."""
    rig, a, _ = two_remotes
    cid = delivered_with_lost_reply(rig, a)
    evict_own_outcome(rig, a)
    a.journal.close()  # pumpctl opens it now
    pulses = bolus_pulses(rig)

    status, out, err = pumpctl(rig, a.keys_dir, ["bolus", "0.05"], capsys)
    assert status == 4, err
    assert err.count("\n") == 1
    assert cid.hex()[:8] in err
    assert "pumpctl history" in err
    assert "not delivered" not in err
    assert bolus_pulses(rig) == pulses

    status, out, err = pumpctl(rig, a.keys_dir, ["status"], capsys)
    assert status == 0
    assert "pumpctl history" in err, "every command says what to do"

    status, out, err = pumpctl(rig, a.keys_dir, ["history"], capsys)
    assert status == 0, err
    assert "bolus_delivered" in out
    assert (
        f"earlier bolus {cid.hex()[:8]} settled from the pump's log: delivered, 2 U of 2 U" in err
    )

    status, _, err = pumpctl(rig, a.keys_dir, ["bolus", "0.05"], capsys)
    assert status == 0, err
    assert bolus_pulses(rig) == pulses + 1


def test_fail_safe_4_history_that_no_longer_holds_it_settles_as_unknown_never_not_delivered(
    tmp_path: Path,
) -> None:
    """[fail-safe] 4: a bolus gone from outcomes and log is settled "evicted" (unknown)."""
    journal = Journal.open(tmp_path)
    pending = journal.new_command(40, seeded_random("j"))
    journal.mark_evicted(pending.command_id)
    journal.close()
    journal = Journal.open(tmp_path)  # the mark is durable
    assert [p.evicted for p in journal.pending()] == [True]
    settled = journal.settle(pending.command_id, Outcome.EVICTED, 0)
    assert settled.outcome is Outcome.EVICTED
    journal.close()
    journal = Journal.open(tmp_path)
    assert journal.settled()[-1].outcome is Outcome.EVICTED
    assert journal.next_seq == 2
    journal.close()


def test_fail_safe_4_the_journal_counter_survives_reopen_compaction_and_advances(
    tmp_path: Path,
) -> None:
    journal = Journal.open(tmp_path)
    rng = seeded_random("counter")
    seqs = []
    for _ in range(150):  # enough settled entries to compact
        command = journal.new_command(1, rng)
        seqs.append(int.from_bytes(command.command_id[: wire.COMMAND_SEQ_LEN], "big"))
        journal.settle(command.command_id, Outcome.DELIVERED, 1)
    assert seqs == list(range(1, 151))
    journal.advance_seq(1000)
    journal.advance_seq(10)  # never backwards
    kept = journal.new_command(1, rng)
    journal.close()
    journal = Journal.open(tmp_path)
    assert journal.next_seq == 1001
    assert [p.command_id for p in journal.pending()] == [kept.command_id]
    journal.close()


# --- Messages ----------------------------------------------------------------------------


def test_fail_safe_4_evicted_and_stale_cross_the_wire() -> None:
    """[fail-safe] 4: SPEC §12.2 outcome 5 and refusal code 15 decode; 6 and 16 do not."""
    cid = command_id(7)
    evicted = CommandOutcome(3, cid, Outcome.EVICTED, 0, 0)
    encoded = encode_message(evicted)
    assert encoded == bytes.fromhex("86 1883 03 50") + cid + bytes.fromhex("05 00 00")
    assert decode_message(encoded) == evicted
    stale = Refused(4, RefusalCode.COMMAND_ID_STALE, 1000)
    assert decode_message(encode_message(stale)) == stale
    from pumpguard.protocol import MalformedMessage

    with pytest.raises(MalformedMessage):
        decode_message(encoded[:-3] + bytes.fromhex("06 00 00"))
    with pytest.raises(MalformedMessage):
        decode_message(encode_message(stale)[:-4] + bytes.fromhex("10 1903e8"))


# --- The outcome tables (firmware_sim/state.py) -----------------------------------------

REMOTE_A = bytes([0xA0]) * wire.X25519_KEY_LEN
REMOTE_B = bytes([0xB0]) * wire.X25519_KEY_LEN


def state_with(*remotes: bytes) -> PersistentState:
    return PersistentState(
        pump_static=bytes(wire.X25519_KEY_LEN),
        audit_key=bytes(wire.ED25519_SEED_LEN),
        remotes=remotes,
    )


def delivered(seq: int, tail: int = 0xA5) -> OutcomeRecord:
    return OutcomeRecord(command_id(seq, tail), 4, Outcome.DELIVERED, 4)


def test_fail_safe_4_tables_classify_evict_per_remote_and_round_trip() -> None:
    state = state_with(REMOTE_A, REMOTE_B)
    state = state.with_outcome(delivered(1), REMOTE_A)
    for seq in range(1, 200):
        state = state.with_outcome(delivered(seq, 0xB0), REMOTE_B)
    assert state.lookup(REMOTE_A, command_id(1)) == delivered(1), "B evicted A's outcome"
    for seq in range(2, 2 + OUTCOME_CAPACITY_PER_REMOTE):
        state = state.with_outcome(delivered(seq), REMOTE_A)
    assert state.lookup(REMOTE_A, command_id(1)) is Known.EVICTED
    assert state.lookup(REMOTE_A, command_id(1, 0x11)) is Known.EVICTED
    assert state.lookup(REMOTE_A, command_id(2)) == delivered(2)
    assert state.lookup(REMOTE_A, command_id(5, 0x11)) is Known.STALE
    assert state.lookup(REMOTE_A, command_id(0)) is Known.STALE
    assert state.lookup(REMOTE_A, command_id(10_000)) is Known.NEVER_SEEN
    with pytest.raises(ValueError, match="high-water"):
        state.with_outcome(delivered(5, 0x11), REMOTE_A)
    assert decode_state(encode_state(state)) == state
    assert len(encode_state(state)) < 4096 - 12, "fits one snapshot"


def test_fail_safe_4_an_unpaired_remotes_table_is_tombstoned_never_forgotten_silently() -> None:
    state = state_with(REMOTE_A)
    state = state.with_outcome(delivered(1), REMOTE_A)
    others = [bytes([n]) * wire.X25519_KEY_LEN for n in range(1, 40)]
    for n, other in enumerate(others):
        # A is unpaired; one remote after another pairs, boluses and is unpaired.
        state = replace(state, remotes=(other,)).with_outcome(delivered(1, n), other)
        if n == 0:
            assert state.lookup(REMOTE_A, command_id(1)) == delivered(1), "kept while room"
    assert len(state.outcome_tables.tables) <= MAX_OUTCOME_TABLES
    # A (re-paired with the same key) may have had its table dropped: then
    # every query of it is "evicted", never "unknown".
    assert state.lookup(REMOTE_A, command_id(1)) is Known.EVICTED
    assert state.lookup(REMOTE_A, command_id(77)) is Known.EVICTED
    assert decode_state(encode_state(state)) == state


@pytest.mark.parametrize(
    "tables",
    [
        [[], 0],  # not a bool
        [[[REMOTE_A, 1, 2, []]], False],  # forgotten above high water
        [[[REMOTE_A, 5, 0, [[command_id(6), 4, 2, 4]]]], False],  # above high water
        [[[REMOTE_A, 5, 2, [[command_id(2), 4, 2, 4]]]], False],  # at or below forgotten
        [[[REMOTE_A, 5, 0, [[command_id(3), 4, 2, 4], [command_id(2), 4, 2, 4]]]], False],
        [[[REMOTE_A, 5, 0, [[command_id(3), 4, 5, 0]]]], False],  # EVICTED is never stored
        [[[REMOTE_A, 5, 0, []], [REMOTE_A, 6, 0, []]], False],  # one remote twice
    ],
)
def test_fail_safe_4_malformed_outcome_tables_are_refused(tables: list[object]) -> None:
    import cbor2

    good = cbor2.loads(encode_state(state_with(REMOTE_A)))
    good[7] = tables
    with pytest.raises(StateInvalid):
        decode_state(cbor2.dumps(good, canonical=True))
