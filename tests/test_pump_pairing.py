"""Pairing on the real pump firmware, through host/inmemory.py (SPEC §9.5, §9.6, §13; S4, S8, S11).

The pump (:class:`firmware_sim.pump.Pump`), its flash and its front panel are
real; remotes are real :class:`host.client.RemoteClient` objects or, where a
test must stop half-way, a :class:`protocol.PairingInitiator` driven by hand
with the remote's own key.  The person at the pump is ``rig.user``, who
opens pairing mode when the display says a remote asks, and confirms only
the code the remote showed.  What must hold, and the tests that try to
break it:

* an active man in the middle between a real remote and the real pump, who
  runs a pairing with each under keys of its own, never gets paired while
  the users compare codes; a pump user who confirms blindly
  (``trusts_blindly``, like ``pumpsim --auto-confirm``) pairs the
  attacker -- outside the protocol's control -- and even then the attacker
  cannot bolus until remote bolus is switched on at the pump; a remote
  user who confirms blindly ends up paired with the attacker posing as the
  pump (see the test below on ``pumpctl pair`` without a terminal);
* a recorded pairing replayed to the pump pairs nothing, even with a user
  who confirms blindly; a key announced by someone who does not hold it
  is never paired;
* pairing records count only in pairing mode, which only the front panel
  opens and which times out (``PAIRING_MODE_TIMEOUT_S``); low-order and
  non-canonical keys (Wycheproof) are refused;
* failed attempts lock pairing out on the schedule of SPEC §9.5, surviving
  reboot, and never disturb existing pairings, sessions or basal delivery;
* at most ``MAX_REMOTES`` remotes; unpairing from the front panel or from
  the remote erases the key, after which the old remote can neither
  handshake nor have its recorded records accepted;
* remote bolus is off until switched on at the pump;
* a power cut at every flash write of the pairing commit (and of a failed
  attempt's commit) leaves the old state or the new one, never a remote
  that holds a pairing the pump does not have; dropping any pairing record,
  or killing either side at any step, leaves both able to pair cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from vectors_util import load_vectors

from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.flash import PowerLoss
from pumpguard.firmware_sim.panel import Button, PanelEvent
from pumpguard.firmware_sim.pump import PumpMode
from pumpguard.host import cli
from pumpguard.host.client import ClientError, LinkDown, NotPaired, PumpRefused
from pumpguard.host.inmemory import DirectLink, Remote, Rig, records_in, seeded_random
from pumpguard.host.keystore import KeyStore
from pumpguard.host.rawremote import RawRemote
from pumpguard.protocol import (
    BolusPrepare,
    PairingInitiator,
    PairingResponder,
    PairingResult,
    PairingState,
    RecordType,
    RefusalCode,
    Refused,
    Status,
    StatusRequest,
    encode_frame,
    wire,
    x25519_private,
    x25519_public_bytes,
)

# --- Helpers ------------------------------------------------------------------


def from_pump(rig: Rig) -> list[bytes]:
    """Records the pump has sent and nobody has read yet."""
    return records_in(rig.take_output())


def send(rig: Rig, record: bytes) -> list[bytes]:
    """Put one record on the pump's link (as anyone may); return what it answers."""
    return rig.send(record)


def mode(rig: Rig) -> PumpMode:
    """The pump's mode now (a call, so the type checker does not pin it)."""
    return rig.pump.mode


def of_type(records: list[bytes], record_type: RecordType) -> list[bytes]:
    return [r for r in records if r[0] == record_type]


def wait(rig: Rig, seconds: float, step: float = 1.0) -> None:
    """Let time pass, ticking the pump every ``step`` (coarser than rig.advance's default)."""
    rig.advance(seconds, step)


def public(remote: Remote) -> bytes:
    """The remote's public key, as the pump lists it once paired."""
    return x25519_public_bytes(remote.keys.remote_static())


def remote(rig: Rig, keys_dir: Path, seed: str, link: DirectLink | None = None) -> Remote:
    return rig.attach(keys_dir, seed=seed, link=link)


def pair_with(rig: Rig, remote: Remote) -> str:
    """``pair`` for any remote, not only the first (rig.pair forgets the last code)."""
    return rig.pair(remote.client)


def panel_log(rig: Rig) -> list[PanelEvent]:
    """Every event the pump's display shows from now on (the display itself scrolls)."""
    events: list[PanelEvent] = []
    rig.pump.panel.listeners.append(events.append)
    return events


def texts(events: list[PanelEvent], kind: str | None = None) -> list[str]:
    return [e.text for e in events if kind is None or e.kind == kind]


def fail_attempt(rig: Rig) -> None:
    """The user opens pairing mode and cancels it: one failed attempt (SPEC §9.5)."""
    rig.press(Button.PAIR)
    assert mode(rig) is PumpMode.PAIRING
    rig.press(Button.REJECT_CODE)
    assert mode(rig) is PumpMode.RUNNING


def lockout_after(failures: int) -> float:
    """SPEC §9.5, written out: 30 s * 2^(f - 3) from the 3rd failure, at most 3600 s."""
    if failures < 3:
        return 0.0
    return float(min(30 * 2 ** (failures - 3), 3600))


def session_with_pump(
    rig: Rig, key: X25519PrivateKey, pump_static: bytes, seed: str
) -> RawRemote | None:
    """A handshake (SPEC §6) by anyone holding ``key``; None if the pump does not answer."""
    raw = RawRemote(rig, random_bytes=seeded_random(seed), static=key, pump_static=pump_static)
    return raw if raw.handshake() else None


def hand_request(rig: Rig, initiator: PairingInitiator) -> bytes:
    """Send PAIR_REQUEST (twice if the user had to open pairing mode first); the commit."""
    request = initiator.start()
    for _ in range(2):
        commits = of_type(send(rig, request), RecordType.PAIR_COMMIT)
        if commits:
            return commits[0]
    raise AssertionError("the pump did not answer PAIR_REQUEST")


# --- Remote bolus, pairing mode, timeouts --------------------------------------


def test_remote_bolus_is_off_until_switched_on_at_the_pump(tmp_path: Path) -> None:
    rig = Rig()
    assert rig.pump.persistent.remote_bolus_enabled is False
    alice = remote(rig, tmp_path / "alice", "alice")
    pair_with(rig, alice)
    assert rig.pump.persistent.remote_bolus_enabled is False
    assert alice.client.status().remote_bolus_enabled is False
    with pytest.raises(PumpRefused) as refused:
        alice.client.bolus(10)
    assert refused.value.code is RefusalCode.REMOTE_BOLUS_DISABLED
    assert rig.pump.delivery.bolus_pulses_delivered == 0
    assert rig.motor.pulses == rig.ledger_pulses
    rig.press(Button.REMOTE_BOLUS_ON)
    assert alice.client.bolus(10).delivered_pulses == 10
    assert rig.pump.delivery.bolus_pulses_delivered == 10
    rig.reboot()
    assert rig.pump.persistent.remote_bolus_enabled is True  # the user's choice persists
    rig.press(Button.REMOTE_BOLUS_OFF)
    with pytest.raises(PumpRefused):
        alice.client.bolus(10)
    assert rig.pump.delivery.bolus_pulses_delivered == 10


def test_pairing_mode_is_entered_only_from_the_front_panel(tmp_path: Path) -> None:
    """A user who does not open the menu: nothing on the link starts pairing mode."""
    rig = Rig()
    rig.user.opens_pairing = False
    sent: list[bytes] = []
    rig.pump.on_record = lambda direction, record, _verdict: (
        sent.append(record) if direction == "tx" else None
    )
    shown = panel_log(rig)
    alice = remote(rig, tmp_path / "alice", "alice")
    with pytest.raises(LinkDown):
        alice.client.pair(lambda code: True)
    # Every other pairing record, well formed, from a hand-driven remote.
    rng = seeded_random("loose")
    hand = PairingInitiator(x25519_private(rng(32)), rng)
    for record in [
        hand.start(),
        bytes((RecordType.PAIR_REMOTE_NONCE,)) + rng(16),
        bytes((RecordType.PAIR_REMOTE_CONFIRM,)) + rng(16),
        bytes((RecordType.PAIR_COMMIT,)) + rng(64),
        bytes((RecordType.PAIR_PUMP_NONCE,)) + rng(16),
        bytes((RecordType.PAIR_PUMP_CONFIRM,)) + rng(16),
    ]:
        assert send(rig, record) == []
    assert mode(rig) is PumpMode.RUNNING
    assert sent == []
    assert "pairing mode: waiting for a remote" not in texts(shown)
    assert texts(shown, "pairing-request")  # the user is told a remote asks
    assert rig.pump.persistent.remotes == ()
    assert alice.keys.pairing() is None


def test_pairing_mode_times_out() -> None:
    rig = Rig()
    rig.press(Button.PAIR)
    wait(rig, config.PAIRING_MODE_TIMEOUT_S - 0.5)
    assert mode(rig) is PumpMode.PAIRING
    wait(rig, 1.0)
    assert mode(rig) is PumpMode.RUNNING
    assert rig.pump.persistent.pairing_failures == 1
    rig.user.opens_pairing = False
    rng = seeded_random("late")
    assert send(rig, PairingInitiator(x25519_private(rng(32)), rng).start()) == []


def test_an_attempt_that_outlives_pairing_mode_pairs_nothing(tmp_path: Path) -> None:
    """The remote gets as far as the code; the user is away; the late confirmation is
    refused, nothing is sent back and the pump stays unpaired."""
    rig = Rig()
    rig.user.opens_pairing = False
    rig.press(Button.PAIR)
    alice = remote(rig, tmp_path / "alice", "alice")
    hand = PairingInitiator(alice.keys.remote_static(), seeded_random("hand"))
    nonce = hand.receive_commit(hand_request(rig, hand))
    hand.receive_pump_nonce(of_type(send(rig, nonce), RecordType.PAIR_PUMP_NONCE)[0])
    wait(rig, config.PAIRING_MODE_TIMEOUT_S + 1)
    assert mode(rig) is PumpMode.RUNNING
    rig.press(Button.CONFIRM_CODE)  # too late
    assert send(rig, hand.confirm()) == []
    assert rig.pump.persistent.remotes == ()
    assert rig.pump.persistent.pairing_failures == 1
    assert hand.state is PairingState.AWAIT_PUMP_CONFIRM


def test_reopening_pairing_mode_forgets_the_confirmation_of_the_abandoned_attempt(
    tmp_path: Path,
) -> None:
    """Regression: the user confirmed a code, then chose Pair again before the remote's
    confirmation came.  The pump kept "the user confirmed" across the fresh attempt, so an
    attacker who ran the new attempt was paired as soon as its own PAIR_REMOTE_CONFIRM
    arrived -- its code never compared by anyone (S4).  The old code also stayed on the
    display.  Now a fresh attempt starts with nothing confirmed and nothing shown."""
    rig = Rig()
    rig.user.opens_pairing = False
    rig.press(Button.PAIR)
    alice = remote(rig, tmp_path / "alice", "alice")
    hand = PairingInitiator(alice.keys.remote_static(), seeded_random("alice/hand"))
    nonce = hand.receive_commit(hand_request(rig, hand))
    hand.receive_pump_nonce(of_type(send(rig, nonce), RecordType.PAIR_PUMP_NONCE)[0])
    rig.press(Button.CONFIRM_CODE)  # the user compared alice's code and confirmed it
    rig.press(Button.PAIR)  # ... and then started over
    assert mode(rig) is PumpMode.PAIRING
    assert rig.pump.panel.code_shown is None, "no code from the abandoned attempt"
    rng = seeded_random("mallory")
    mallory = PairingInitiator(x25519_private(rng(32)), rng)
    nonce = mallory.receive_commit(hand_request(rig, mallory))
    code = mallory.receive_pump_nonce(of_type(send(rig, nonce), RecordType.PAIR_PUMP_NONCE)[0])
    assert rig.pump.panel.code_shown == code
    assert send(rig, mallory.confirm()) == [], "no PAIR_PUMP_CONFIRM: nobody confirmed this code"
    assert rig.pump.persistent.remotes == ()
    assert mode(rig) is PumpMode.PAIRING
    rig.press(Button.REJECT_CODE)  # the user sees a code no remote of theirs shows
    assert rig.pump.persistent.remotes == ()
    assert mode(rig) is PumpMode.RUNNING


# --- Lockout ------------------------------------------------------------------


def test_lockout_grows_on_the_spec_schedule_and_is_capped() -> None:
    rig = Rig()
    shown = panel_log(rig)
    for failures in range(1, 13):
        fail_attempt(rig)
        assert rig.pump.persistent.pairing_failures == failures
        lockout = lockout_after(failures)
        if lockout:
            wait(rig, lockout - 0.5, step=5.0)
            rig.press(Button.PAIR)
            assert mode(rig) is PumpMode.RUNNING, failures
            assert texts(shown)[-1].startswith("pairing locked")
            wait(rig, 0.51)
    # The schedule written out above is the firmware's constants; the cap was reached.
    assert config.PAIRING_FAILURES_BEFORE_LOCKOUT == 3
    assert lockout_after(3) == config.PAIRING_LOCKOUT_BASE_S
    assert lockout_after(10) == lockout_after(12) == config.PAIRING_LOCKOUT_MAX_S


def test_lockout_survives_reboot_in_full() -> None:
    rig = Rig()
    for _ in range(3):
        fail_attempt(rig)
    wait(rig, 30.1)
    fail_attempt(rig)  # the 4th failure: 60 s
    wait(rig, 50)
    rig.reboot()  # the monotonic clock restarts: the pump cannot know 50 s passed
    assert rig.pump.persistent.pairing_failures == 4
    wait(rig, 59)
    rig.press(Button.PAIR)
    assert mode(rig) is PumpMode.RUNNING
    wait(rig, 1.01)
    rig.press(Button.PAIR)
    assert mode(rig) is PumpMode.PAIRING


def test_failures_below_the_threshold_also_survive_reboot() -> None:
    rig = Rig()
    fail_attempt(rig)
    fail_attempt(rig)
    rig.reboot()
    assert rig.pump.persistent.pairing_failures == 2
    fail_attempt(rig)  # the 3rd, counted across the reboot
    rig.press(Button.PAIR)
    assert mode(rig) is PumpMode.RUNNING


def test_a_successful_pairing_resets_the_count(tmp_path: Path) -> None:
    rig = Rig()
    for _ in range(3):
        fail_attempt(rig)
    wait(rig, 30.1)
    pair_with(rig, remote(rig, tmp_path / "alice", "alice"))
    assert rig.pump.persistent.pairing_failures == 0
    fail_attempt(rig)
    rig.press(Button.PAIR)  # one failure: no lockout
    assert mode(rig) is PumpMode.PAIRING


@dataclass
class Day:
    motor_pulses: int
    basal_pulses: int
    bolus_delivered: int
    handshakes: int
    remotes: tuple[bytes, ...]
    failures: int
    logged_failures: int
    locked_out_seen: bool


def lockout_day(keys_dir: Path, attacked: bool) -> Day:
    """Alice is paired and talking; meanwhile (if ``attacked``) pairing keeps failing."""
    rig = Rig(seed="day")
    alice = remote(rig, keys_dir, "alice")
    pair_with(rig, alice)
    rig.press(Button.REMOTE_BOLUS_ON)
    shown = panel_log(rig)
    alice.client.status()
    del rig.from_remote[:]
    for _ in range(12):
        if attacked:
            for _ in range(3):
                rig.press(Button.PAIR)
                rig.press(Button.REJECT_CODE)
        wait(rig, 60)
        assert isinstance(alice.client.status(), Status)
    delivered = alice.client.bolus(20).delivered_pulses
    handshakes = sum(
        len(of_type(records_in(chunk), RecordType.HANDSHAKE_INIT)) for chunk in rig.from_remote
    )
    wait(rig, 600)
    logged_failures = sum(e.event == "pairing_failed" for e in alice.client.verified_history())
    return Day(
        motor_pulses=rig.motor.pulses,
        basal_pulses=rig.pump.delivery.basal_pulses_delivered,
        bolus_delivered=delivered,
        handshakes=handshakes,
        remotes=rig.pump.persistent.remotes,
        failures=rig.pump.persistent.pairing_failures,
        logged_failures=logged_failures,
        locked_out_seen=any(t.startswith("pairing locked") for t in texts(shown)),
    )


def test_lockout_leaves_pairings_sessions_and_basal_alone(tmp_path: Path) -> None:
    """The same 12 minutes with and without failed pairings: identical therapy, the same
    paired remote, and no new handshake -- the session was never dropped."""
    calm = lockout_day(tmp_path / "calm", attacked=False)
    attacked = lockout_day(tmp_path / "attacked", attacked=True)
    assert attacked.failures >= 6
    assert attacked.logged_failures == attacked.failures  # S10: each one audited
    assert attacked.locked_out_seen
    assert calm.failures == 0
    assert attacked.motor_pulses == calm.motor_pulses
    assert attacked.basal_pulses == calm.basal_pulses > 0
    assert attacked.bolus_delivered == calm.bolus_delivered == 20
    assert attacked.handshakes == calm.handshakes == 0
    assert attacked.remotes == calm.remotes
    assert len(calm.remotes) == 1


# --- How many remotes; unpairing (S11) ------------------------------------------


def test_at_most_max_remotes(tmp_path: Path) -> None:
    rig = Rig()
    remotes = [remote(rig, tmp_path / f"r{i}", f"r{i}") for i in range(wire.MAX_REMOTES)]
    for r in remotes:
        pair_with(rig, r)
    assert len(rig.pump.persistent.remotes) == wire.MAX_REMOTES == 4
    shown = panel_log(rig)
    extra = remote(rig, tmp_path / "extra", "extra")
    with pytest.raises(LinkDown):
        pair_with(rig, extra)
    assert "pairing list full: unpair a remote first" in texts(shown)
    assert mode(rig) is PumpMode.RUNNING
    assert len(rig.pump.persistent.remotes) == wire.MAX_REMOTES
    assert public(extra) not in rig.pump.persistent.remotes
    assert rig.pump.persistent.pairing_failures == 0  # a full list is not a failed attempt
    for r in remotes:
        assert isinstance(r.client.status(), Status)
    remotes[0].client.unpair()
    pair_with(rig, extra)
    assert isinstance(extra.client.status(), Status)
    assert set(rig.pump.persistent.remotes) == {public(r) for r in [*remotes[1:], extra]}


def test_pairing_the_same_remote_again_takes_no_second_slot(tmp_path: Path) -> None:
    rig = Rig()
    alice = remote(rig, tmp_path / "alice", "alice")
    pair_with(rig, alice)
    pair_with(rig, alice)
    assert rig.pump.persistent.remotes == (public(alice),)
    assert isinstance(alice.client.status(), Status)


def assert_old_remote_refused(rig: Rig, key: X25519PrivateKey, session_chunks: list[bytes]) -> None:
    """Neither a new handshake nor any recorded session record gets an answer."""
    rig.user.opens_pairing = False
    pulses = rig.motor.pulses
    assert session_with_pump(rig, key, rig.pump.static_public, "old-remote") is None
    for chunk in session_chunks:
        rig.inject(chunk)
    assert from_pump(rig) == []
    assert rig.motor.pulses == pulses


def session_records(chunks: list[bytes]) -> list[bytes]:
    """The chunks holding handshake or DATA records (not pairing records)."""
    return [
        c
        for c in chunks
        if any(r[0] in (RecordType.HANDSHAKE_INIT, RecordType.DATA) for r in records_in(c))
    ]


def test_unpair_all_on_the_front_panel_erases_every_key(tmp_path: Path) -> None:
    rig = Rig()
    alice, bob = remote(rig, tmp_path / "alice", "alice"), remote(rig, tmp_path / "bob", "bob")
    pair_with(rig, alice)
    pair_with(rig, bob)
    rig.press(Button.REMOTE_BOLUS_ON)
    alice.client.bolus(4)
    bob.client.status()
    recorded = session_records(rig.from_remote)
    rig.press(Button.UNPAIR_ALL)
    assert rig.pump.persistent.remotes == ()
    # The live sessions went with the keys: the next request is not answered.
    with pytest.raises(LinkDown):
        alice.client.status()
    with pytest.raises(LinkDown):
        bob.client.status()
    assert rig.pump.delivery.bolus_pulses_delivered == 4
    assert_old_remote_refused(rig, alice.keys.remote_static(), recorded)
    assert_old_remote_refused(rig, bob.keys.remote_static(), recorded)
    rig.reboot()  # and it stays erased
    assert rig.pump.persistent.remotes == ()
    assert_old_remote_refused(rig, alice.keys.remote_static(), recorded)


def test_unpair_from_the_remote_erases_the_key_on_both_sides(tmp_path: Path) -> None:
    rig = Rig()
    alice, bob = remote(rig, tmp_path / "alice", "alice"), remote(rig, tmp_path / "bob", "bob")
    pair_with(rig, alice)
    pair_with(rig, bob)
    alice.client.status()
    old_key = alice.keys.remote_static()
    recorded = session_records(rig.from_remote)
    alice.client.unpair()
    assert rig.pump.persistent.remotes == (public(bob),)
    assert alice.keys.pairing() is None
    assert not alice.keys.key_path.exists()
    with pytest.raises(NotPaired):
        alice.client.status()
    assert isinstance(bob.client.status(), Status)  # the other remote is untouched
    # S10: both pairings and the unpairing are in the verified audit log.
    events = [(e.event, e.fields.get("by")) for e in bob.client.verified_history()]
    assert [e for e in events if e[0] in ("paired", "unpaired")] == [
        ("paired", None),
        ("paired", None),
        ("unpaired", "remote"),
    ]
    assert_old_remote_refused(rig, old_key, recorded)
    # Alice can pair again, with a new key.
    rig.user.opens_pairing = True
    pair_with(rig, alice)
    assert public(alice) != x25519_public_bytes(old_key)
    assert set(rig.pump.persistent.remotes) == {public(bob), public(alice)}


# --- Crash consistency of the pairing commit (S8) -------------------------------


@dataclass
class CommitRun:
    rig: Rig
    alice: Remote
    bob: Remote
    writes: int
    cut: bool


def pairing_commit(
    tmp_path: Path, prefill: int, cut_at: int | None, keep: float | None = None
) -> CommitRun:
    """Alice is paired, two attempts failed; Bob pairs.  From the moment Bob's user
    agrees the codes match (so the pump's commit is next), cut power at write ``cut_at``.

    ``prefill`` extra state commits first move the commit across sector boundaries;
    ``keep`` is the flash's: None a seeded tear, 0.0 nothing written, 1.0 all written.
    """
    rig = Rig(seed="commit")
    alice = remote(rig, tmp_path / "alice", "alice")
    pair_with(rig, alice)
    for _ in range(prefill):
        rig.press(Button.REMOTE_BOLUS_ON, Button.REMOTE_BOLUS_OFF)
    fail_attempt(rig)
    fail_attempt(rig)
    bob = remote(rig, tmp_path / "bob", "bob")
    start = 0

    def confirm(code: str) -> bool:
        nonlocal start
        rig.user.remote_code = code
        start = rig.flash.operations
        if cut_at is not None:
            rig.flash.cut_power_at(cut_at, keep=keep)
        return True

    rig.user.remote_code = None
    try:
        bob.client.pair(confirm)
    except PowerLoss:
        # M_p never left, nor waits in the outbox: the remote cannot be paired alone.
        unsent = records_in(rig.pump.data_to_send())
        assert of_type(from_pump(rig) + unsent, RecordType.PAIR_PUMP_CONFIRM) == []
        rig.reboot()
        return CommitRun(rig, alice, bob, rig.flash.operations - start, cut=True)
    return CommitRun(rig, alice, bob, rig.flash.operations - start, cut=False)


#: 13: the snapshot store's commit needs a sector erase; 11: the audit entry does.
@pytest.mark.parametrize("prefill", [0, 5, 11, 13, 17, 21])
def test_power_cut_at_every_write_of_the_pairing_commit(tmp_path: Path, prefill: int) -> None:
    clean = pairing_commit(tmp_path / "clean", prefill, None)
    assert not clean.cut
    assert clean.writes >= 2
    old = ((public(clean.alice),), 2)
    new = ((public(clean.alice), public(clean.bob)), 0)
    persisted = clean.rig.pump.persistent
    assert (persisted.remotes, persisted.pairing_failures) == new
    seen = set()
    for k, keep in itertools.product(range(1, clean.writes + 1), [None, 0.0, 1.0]):
        run = pairing_commit(tmp_path / f"cut{k}-{keep}", prefill, k, keep)
        assert run.cut, k
        state = run.rig.pump.persistent
        assert mode(run.rig) is PumpMode.RUNNING, k  # storage intact, no safe state
        assert (state.remotes, state.pairing_failures) in (old, new), k
        seen.add((state.remotes, state.pairing_failures) == new)
        # Bob never learned he was paired: he holds no pairing and cannot command.
        assert run.bob.keys.pairing() is None
        with pytest.raises(NotPaired):
            run.bob.client.status()
        # Alice is untouched; Bob pairs cleanly, once.
        assert isinstance(run.alice.client.status(), Status)
        pair_with(run.rig, run.bob)
        assert run.rig.pump.persistent.remotes == new[0]
        assert isinstance(run.bob.client.status(), Status)
    assert seen == {False, True}  # both sides of the commit point were hit


def test_power_cut_at_every_write_of_a_failed_attempt(tmp_path: Path) -> None:
    """The failure count is committed atomically too: old or new, never lost as corrupt."""

    def run(cut_at: int | None) -> tuple[Rig, int]:
        rig = Rig(seed="fail")
        alice = remote(rig, tmp_path / f"alice{cut_at}", "alice")
        pair_with(rig, alice)
        fail_attempt(rig)
        fail_attempt(rig)
        rig.press(Button.PAIR)
        start = rig.flash.operations
        if cut_at is None:
            rig.press(Button.REJECT_CODE)
            return rig, rig.flash.operations - start
        rig.flash.cut_power_at(cut_at)
        with pytest.raises(PowerLoss):
            rig.press(Button.REJECT_CODE)
        rig.reboot()
        assert mode(rig) is PumpMode.RUNNING
        assert rig.pump.persistent.remotes == (public(alice),)
        assert isinstance(alice.client.status(), Status)
        return rig, 0

    _, writes = run(None)
    assert writes >= 1
    counts = set()
    for k in range(1, writes + 1):
        rig, _ = run(k)
        failures = rig.pump.persistent.pairing_failures
        assert failures in (2, 3)
        counts.add(failures)
        rig.press(Button.PAIR)
        # Locked out exactly when the third failure was stored.
        assert (mode(rig) is PumpMode.PAIRING) == (failures == 2)
    assert counts == {2, 3}


# --- Lost records, killed sides --------------------------------------------------


class FaultLink(DirectLink):
    """The rig's link, dropping the first record of one type, or rebooting the pump just
    before or just after it processes the first record of one type."""

    def __init__(
        self,
        rig: Rig,
        *,
        drop: RecordType | None = None,
        reboot_before: RecordType | None = None,
        reboot_after: RecordType | None = None,
    ) -> None:
        super().__init__(rig)
        self.drop = drop
        self.reboot_before = reboot_before
        self.reboot_after = reboot_after
        self.faults = 0

    def _dropped(self, record: bytes) -> bool:
        if self.drop is not None and record[0] == self.drop:
            self.drop = None
            self.faults += 1
            return True
        return False

    def write(self, data: bytes) -> None:
        for record in records_in(data):
            if self._dropped(record):
                continue
            if self.reboot_before is not None and record[0] == self.reboot_before:
                self.reboot_before = None
                self.faults += 1
                self.rig.reboot()
            super().write(encode_frame(record))
            if self.reboot_after is not None and record[0] == self.reboot_after:
                self.reboot_after = None
                self.faults += 1
                self.rig.reboot()

    def read(self, timeout: float) -> bytes:
        kept = [r for r in records_in(super().read(timeout)) if not self._dropped(r)]
        return b"".join(encode_frame(r) for r in kept)


def then_pair_cleanly(rig: Rig, keys_dir: Path, seed: str) -> None:
    """The invariant after any fault, then a clean pairing by the same remote."""
    keys = KeyStore.open(keys_dir)
    public = x25519_public_bytes(keys.remote_static())
    pairing = keys.pairing()
    if pairing is not None:  # the remote thinks it is paired: so does the pump
        assert public in rig.pump.persistent.remotes
        assert pairing.pump_static == rig.pump.static_public
    wait(rig, config.PAIRING_MODE_TIMEOUT_S + 1)  # whatever was left open times out
    assert mode(rig) is PumpMode.RUNNING
    assert rig.pump.persistent.pairing_failures < config.PAIRING_FAILURES_BEFORE_LOCKOUT
    again = remote(rig, keys_dir, seed + "/again")
    pair_with(rig, again)
    assert rig.pump.persistent.remotes == (public,)
    assert again.keys.pairing() is not None
    assert isinstance(again.client.status(), Status)
    again.close()


PUMP_BOUND = [RecordType.PAIR_REQUEST, RecordType.PAIR_REMOTE_NONCE, RecordType.PAIR_REMOTE_CONFIRM]
REMOTE_BOUND = [RecordType.PAIR_COMMIT, RecordType.PAIR_PUMP_NONCE, RecordType.PAIR_PUMP_CONFIRM]


def attempt_pairing(rig: Rig, keys_dir: Path, link: FaultLink) -> str:
    first = remote(rig, keys_dir, "first", link)

    def confirm(code: str) -> bool:
        rig.user.remote_code = code
        return True

    try:
        first.client.pair(confirm)
        outcome = "paired"
    except ClientError as exc:
        outcome = type(exc).__name__
    finally:
        first.close()
    assert link.faults == 1
    return outcome


@pytest.mark.parametrize("lost", PUMP_BOUND + REMOTE_BOUND, ids=lambda t: t.name)
def test_a_lost_pairing_record_then_both_pair_cleanly(tmp_path: Path, lost: RecordType) -> None:
    rig = Rig()
    attempt_pairing(rig, tmp_path / "r", FaultLink(rig, drop=lost))
    then_pair_cleanly(rig, tmp_path / "r", "r")


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("record", PUMP_BOUND, ids=lambda t: t.name)
def test_pump_killed_at_each_step_then_both_pair_cleanly(
    tmp_path: Path, record: RecordType, when: str
) -> None:
    rig = Rig()
    link = (
        FaultLink(rig, reboot_before=record)
        if when == "before"
        else FaultLink(rig, reboot_after=record)
    )
    attempt_pairing(rig, tmp_path / "r", link)
    then_pair_cleanly(rig, tmp_path / "r", "r")


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 4])
def test_remote_killed_at_each_step_then_both_pair_cleanly(tmp_path: Path, steps: int) -> None:
    """The remote's process dies after ``steps`` of: PAIR_REQUEST answered, nonce sent,
    code shown, confirmation sent (and the code confirmed at the pump, so the pump has
    stored the remote).  A new process with the same keys pairs cleanly."""
    rig = Rig()
    rig.user.opens_pairing = True
    keys = KeyStore.open(tmp_path / "r", random_bytes=seeded_random("r/key"))
    hand = PairingInitiator(keys.remote_static(), seeded_random("hand"))
    if steps >= 1:
        commit = hand_request(rig, hand)
    if steps >= 2:
        pump_nonce = of_type(send(rig, hand.receive_commit(commit)), RecordType.PAIR_PUMP_NONCE)
    if steps >= 3:
        rig.user.remote_code = hand.receive_pump_nonce(pump_nonce[0])
    if steps >= 4:
        send(rig, hand.confirm())  # the user confirms on the pump's next tick
        rig.advance(0.5)
        assert keys.remote_static() is not None
        assert x25519_public_bytes(keys.remote_static()) in rig.pump.persistent.remotes
    then_pair_cleanly(rig, tmp_path / "r", "r")


# --- Replay and key possession at the pump ----------------------------------------


@pytest.mark.parametrize("blind", [False, True], ids=["careful-user", "blind-user"])
def test_replayed_pairing_pairs_nothing(tmp_path: Path, blind: bool) -> None:
    """Alice's pairing is recorded off the wire, she is unpaired, and the recording is
    played to the pump with the user opening pairing mode when asked."""
    rig = Rig()
    alice = remote(rig, tmp_path / "alice", "alice")
    old_code = pair_with(rig, alice)
    recording = list(rig.from_remote)
    assert any(of_type(records_in(c), RecordType.PAIR_REMOTE_CONFIRM) for c in recording)
    rig.press(Button.UNPAIR_ALL)
    rig.user.trusts_blindly = blind
    shown = panel_log(rig)
    answered = []
    for chunk in recording:
        rig.inject(chunk)
        answered += from_pump(rig)
        rig.advance(0.5)
        answered += from_pump(rig)
    rig.advance(2)
    assert rig.pump.persistent.remotes == ()
    assert of_type(answered, RecordType.PAIR_PUMP_CONFIRM) == []
    codes = texts(shown, "code")
    assert codes  # the replay did start an attempt the user saw ...
    assert all(old_code[:3] + " " + old_code[3:] not in t for t in codes)  # ... with a new code
    assert rig.pump.persistent.pairing_failures >= 1
    wait(rig, config.PAIRING_MODE_TIMEOUT_S + 1)  # the user may have reopened pairing mode
    assert rig.pump.persistent.remotes == ()
    assert of_type(from_pump(rig), RecordType.PAIR_PUMP_CONFIRM) == []


def test_a_key_announced_by_someone_who_does_not_hold_it_is_never_paired(
    tmp_path: Path,
) -> None:
    """Mallory sends Alice's public key; even a user who confirms blindly pairs nothing,
    since Mallory cannot compute M_r (SPEC §9.4)."""
    rig = Rig()
    rig.user.trusts_blindly = True
    alice = remote(rig, tmp_path / "alice", "alice")
    rng = seeded_random("mallory")
    request = bytes((RecordType.PAIR_REQUEST,)) + public(alice)
    commits = of_type(send(rig, request), RecordType.PAIR_COMMIT) or of_type(
        send(rig, request), RecordType.PAIR_COMMIT
    )
    assert commits
    nonce = bytes((RecordType.PAIR_REMOTE_NONCE,)) + rng(16)
    assert of_type(send(rig, nonce), RecordType.PAIR_PUMP_NONCE)
    rig.advance(0.5)  # the user has confirmed the code on the pump
    assert send(rig, bytes((RecordType.PAIR_REMOTE_CONFIRM,)) + rng(16)) == []
    assert rig.pump.persistent.remotes == ()
    assert mode(rig) is PumpMode.RUNNING
    assert rig.pump.persistent.pairing_failures == 1


def refused_keys() -> list[bytes]:
    """One small-order key (u < p) and one non-canonical key (u >= p) from Wycheproof."""
    p = 2**255 - 19
    small, non_canonical = None, None
    for group in load_vectors("x25519_test")["testGroups"]:
        for test in group["tests"]:
            key = bytes.fromhex(test["public"])
            u = int.from_bytes(key, "little")
            if "LowOrderPublic" in test["flags"] and u < p and small is None:
                small = key
            if "NonCanonicalPublic" in test["flags"] and non_canonical is None:
                non_canonical = key
    assert small is not None
    assert non_canonical is not None
    return [small, non_canonical]


@pytest.mark.parametrize("key", refused_keys(), ids=["low-order", "non-canonical"])
def test_pump_refuses_invalid_remote_keys(key: bytes) -> None:
    rig = Rig()
    rig.user.trusts_blindly = True
    rig.press(Button.PAIR)
    assert send(rig, bytes((RecordType.PAIR_REQUEST,)) + key) == []
    assert mode(rig) is PumpMode.RUNNING  # the attempt ended
    assert rig.pump.persistent.pairing_failures == 1
    assert rig.pump.persistent.remotes == ()


@pytest.mark.parametrize("stray", ["second-request", "racing-nonce", "forged-confirm"])
def test_stray_records_during_an_attempt_never_pair_the_attacker(
    tmp_path: Path, stray: str
) -> None:
    """While Alice pairs, Mallory injects a PAIR_REQUEST of her own, races Alice with a
    nonce of her own, or forges Alice's confirmation.  Mallory's key is never paired,
    nothing Mallory sent is confirmed, and Alice pairs cleanly (now or afterwards)."""
    rig = Rig()
    keys = KeyStore.open(tmp_path / "alice", random_bytes=seeded_random("alice/key"))
    alice = x25519_public_bytes(keys.remote_static())
    hand = PairingInitiator(keys.remote_static(), seeded_random("alice/hand"))
    rng = seeded_random("mallory")
    mallory = x25519_public_bytes(x25519_private(rng(32)))
    commit = hand_request(rig, hand)
    answered: list[bytes] = []
    if stray == "second-request":
        answered += send(rig, bytes((RecordType.PAIR_REQUEST,)) + mallory)
        assert answered == []  # one attempt at a time
    if stray == "racing-nonce":
        answered += send(rig, bytes((RecordType.PAIR_REMOTE_NONCE,)) + rng(16))
    answered += send(rig, hand.receive_commit(commit))
    pump_nonces = of_type(answered, RecordType.PAIR_PUMP_NONCE)
    assert len(pump_nonces) == 1  # the pump answers one nonce, whoever sent it first
    rig.user.remote_code = hand.receive_pump_nonce(pump_nonces[0])
    if stray == "forged-confirm":
        answered += send(rig, bytes((RecordType.PAIR_REMOTE_CONFIRM,)) + rng(16))
    answered += send(rig, hand.confirm())
    rig.advance(1)
    answered += from_pump(rig)
    assert mallory not in rig.pump.persistent.remotes
    confirms = of_type(answered, RecordType.PAIR_PUMP_CONFIRM)
    if confirms:  # only ever Alice's pairing, and Alice can verify it
        assert hand.receive_pump_confirm(confirms[0]).peer_static == rig.pump.static_public
        assert rig.pump.persistent.remotes == (alice,)
    else:
        assert rig.pump.persistent.remotes == ()
    if stray == "second-request":
        assert confirms  # a stray request does not disturb the attempt in progress
    else:
        assert not confirms  # the pump's code was not Alice's, or the attempt ended
    then_pair_cleanly(rig, tmp_path / "alice", "alice")


# --- The man in the middle on the rig ---------------------------------------------


@dataclass
class Attacker:
    """Sits on the wire between a victim remote and the pump and runs two pairings,
    each under a key of its own (SPEC §9.4): as a pump towards the victim, as a remote
    towards the pump.  It confirms its own leg with the pump as soon as it can."""

    rig: Rig
    seed: str
    pump_key: X25519PrivateKey = field(init=False)
    remote_key: X25519PrivateKey = field(init=False)
    as_pump: PairingResponder = field(init=False)
    as_remote: PairingInitiator = field(init=False)
    to_victim: bytearray = field(default_factory=bytearray)
    victim_request: bytes | None = None
    victim_nonce: bytes | None = None
    pump_commit: bytes | None = None
    pump_code: str | None = None
    victim_code: str | None = None
    pump_result: PairingResult | None = None

    def __post_init__(self) -> None:
        rng = seeded_random(self.seed)
        self.pump_key = x25519_private(rng(32))
        self.remote_key = x25519_private(rng(32))
        self.as_pump = PairingResponder(self.pump_key, rng)
        self.as_remote = PairingInitiator(self.remote_key, rng)
        self._request_to_pump = b""

    def _to_pump(self, record: bytes) -> None:
        self.rig.inject(encode_frame(record))
        self.poll_pump()

    def _to_victim(self, record: bytes) -> None:
        self.to_victim += encode_frame(record)

    def from_victim(self, data: bytes) -> None:
        for record in records_in(data):
            kind = record[0]
            if kind == RecordType.PAIR_REQUEST:
                if self.as_remote.state is PairingState.IDLE:
                    self.victim_request = record
                    self._request_to_pump = self.as_remote.start()
                if self.as_remote.state is PairingState.AWAIT_COMMIT:
                    self._to_pump(self._request_to_pump)  # again, as the victim does
            elif (
                kind == RecordType.PAIR_REMOTE_NONCE
                and self.as_pump.state is PairingState.AWAIT_REMOTE_NONCE
                and self.pump_commit is not None
                and self.victim_nonce is None
            ):
                self.victim_nonce = record
                self._to_pump(self.as_remote.receive_commit(self.pump_commit))
            elif (
                kind == RecordType.PAIR_REMOTE_CONFIRM
                and self.as_pump.state is PairingState.COMPARING
            ):
                # The victim's user agreed: "the pump" confirms at once.
                self.as_pump.receive_remote_confirm(record)
                _, reply = self.as_pump.user_confirmed()
                self._to_victim(reply)

    def poll_pump(self) -> None:
        for record in from_pump(self.rig):
            kind = record[0]
            if kind == RecordType.PAIR_COMMIT and self.pump_commit is None:
                assert self.victim_request is not None
                self.pump_commit = record
                self._to_victim(self.as_pump.receive_request(self.victim_request))
            elif (
                kind == RecordType.PAIR_PUMP_NONCE
                and self.as_remote.state is PairingState.AWAIT_PUMP_NONCE
            ):
                assert self.victim_nonce is not None
                self.pump_code = self.as_remote.receive_pump_nonce(record)
                reply, self.victim_code = self.as_pump.receive_remote_nonce(self.victim_nonce)
                self._to_victim(reply)
                self._to_pump(self.as_remote.confirm())
            elif (
                kind == RecordType.PAIR_PUMP_CONFIRM
                and self.as_remote.state is PairingState.AWAIT_PUMP_CONFIRM
            ):
                self.pump_result = self.as_remote.receive_pump_confirm(record)


class MitmLink(DirectLink):
    """The victim remote's end of the wire.  Everything it sends reaches the attacker,
    and it hears only the attacker; time runs as on the rig's own link."""

    def __init__(self, rig: Rig, attacker: Attacker) -> None:
        super().__init__(rig)
        self._attacker = attacker

    def write(self, data: bytes) -> None:
        self._attacker.from_victim(data)

    def read(self, timeout: float) -> bytes:
        rig, attacker = self.rig, self._attacker
        end = rig.clock.now + timeout
        while not attacker.to_victim and rig.clock.now < end:
            rig.clock.now = min(end, rig.clock.now + 0.05)
            rig.tick()
            attacker.poll_pump()
        data = bytes(attacker.to_victim)
        attacker.to_victim.clear()
        return data

    def close(self) -> None:
        return None


def careful_remote_user(rig: Rig, shown: list[str]) -> Callable[[str], bool]:
    """The person holding the remote: shows its code to the pump's user (who compares
    it on the pump) and agrees only if the pump's display shows the same."""

    def confirm(code: str) -> bool:
        shown.append(code)
        rig.user.remote_code = code
        return rig.pump.panel.code_shown == code

    return confirm


def mitm_attempt(
    rig: Rig, keys_dir: Path, seed: str, confirm: Callable[[str], bool] | None = None
) -> tuple[Attacker, Remote, list[str], str | None]:
    """One attempt; returns the attacker, the victim, the victim's codes, and the
    code the pump displayed."""
    attacker = Attacker(rig, seed)
    victim = remote(rig, keys_dir, "victim", MitmLink(rig, attacker))
    victim_codes: list[str] = []
    pump_codes: list[str] = []
    shown = rig.pump.panel.listeners

    def listener(event: PanelEvent) -> None:
        if event.kind == "code":
            pump_codes.append(rig.pump.panel.code_shown or "")

    shown.append(listener)
    rig.user.remote_code = None
    with contextlib.suppress(ClientError):
        victim.client.pair(confirm or careful_remote_user(rig, victim_codes))
    rig.advance(2)  # the pump's user acts
    shown.remove(listener)
    victim.close()
    return attacker, victim, victim_codes, pump_codes[0] if pump_codes else None


def test_mitm_between_a_real_remote_and_the_pump_never_pairs(tmp_path: Path) -> None:
    rig = Rig()
    for attempt in range(5):
        failures = rig.pump.persistent.pairing_failures
        wait(rig, lockout_after(failures) + 1, step=5.0)
        attacker, victim, victim_codes, pump_code = mitm_attempt(
            rig, tmp_path / f"v{attempt}", f"mallory{attempt}"
        )
        # The attacker got as far as it can: both legs showed a code ...
        assert attacker.pump_code == pump_code is not None
        assert victim_codes == [attacker.victim_code]
        # ... and they differ, so both users refused.
        assert pump_code != attacker.victim_code
        assert rig.pump.persistent.remotes == ()
        assert victim.keys.pairing() is None
        assert attacker.pump_result is None
        assert attacker.as_pump.state is PairingState.COMPARING  # the victim never confirmed
        assert rig.pump.persistent.pairing_failures == failures + 1
        assert mode(rig) is PumpMode.RUNNING
    # The attacker's key is useless: no handshake.
    rig.user.opens_pairing = False
    assert session_with_pump(rig, attacker.remote_key, rig.pump.static_public, "m") is None


def test_mitm_with_a_careless_remote_user_still_leaves_the_pump_unpaired(
    tmp_path: Path,
) -> None:
    """Out of the protocol's control: a remote user who agrees without comparing makes
    the remote store the attacker's key as "the pump" (so the attacker can answer its
    requests).  The pump's careful user still rejects, so nothing reaches the pump."""
    rig = Rig()

    def careless(code: str) -> bool:
        rig.user.remote_code = code  # still shown to the pump's user
        return True

    attacker, victim, _, pump_code = mitm_attempt(rig, tmp_path / "v", "mallory", careless)
    assert pump_code is not None
    assert pump_code != attacker.victim_code
    assert rig.pump.persistent.remotes == ()
    assert attacker.pump_result is None
    stored = victim.keys.pairing()
    assert stored is not None
    assert stored.pump_static == x25519_public_bytes(attacker.pump_key)
    assert stored.pump_static != rig.pump.static_public


def test_mitm_with_a_pump_user_who_confirms_blindly(tmp_path: Path) -> None:
    """Out of the protocol's control: ``trusts_blindly`` (``pumpsim --auto-confirm``)
    pairs the attacker's key.  Remote bolus is still off, so the attacker can read status
    but cannot deliver insulin until someone switches remote bolus on at the pump."""
    rig = Rig()
    rig.user.trusts_blindly = True
    attacker, victim, _, pump_code = mitm_attempt(rig, tmp_path / "v", "mallory")
    assert pump_code != attacker.victim_code  # the codes differed; nobody looked
    result = attacker.pump_result
    assert result is not None
    assert rig.pump.persistent.remotes == (x25519_public_bytes(attacker.remote_key),)
    assert victim.keys.pairing() is None  # the careful remote user refused
    session = session_with_pump(rig, attacker.remote_key, result.peer_static, "m")
    assert session is not None
    assert isinstance(session.ask(StatusRequest(1)), Status)
    motor = rig.motor.pulses - rig.pump.delivery.basal_pulses_delivered
    refusal = session.ask(BolusPrepare(2, bytes(16), 200))
    assert isinstance(refusal, Refused)
    assert refusal.code is RefusalCode.REMOTE_BOLUS_DISABLED
    rig.advance(30)
    assert rig.motor.pulses - rig.pump.delivery.basal_pulses_delivered == motor
    assert rig.pump.delivery.bolus_pulses_delivered == 0


# --- Regressions -------------------------------------------------------------------


def test_pumpctl_pair_without_a_terminal_does_not_confirm_blindly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Confirming blindly would pair the victim remote with the attacker (SPEC §9.6)."""
    rig = Rig()
    attacker = Attacker(rig, "mallory")
    victim = remote(rig, tmp_path / "v", "victim", MitmLink(rig, attacker))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with contextlib.suppress(ClientError):
        cli._pair(victim.client, argparse.Namespace(json=True))
    rig.advance(2)
    assert rig.pump.persistent.remotes == ()
    assert victim.keys.pairing() is None


def test_rig_pair_helper_pairs_a_second_remote(tmp_path: Path) -> None:
    rig = Rig()
    rig.pair(rig.attach(tmp_path / "a", seed="a").client)
    rig.pair(rig.attach(tmp_path / "b", seed="b").client)
    assert len(rig.pump.persistent.remotes) == 2


def test_a_new_pairing_switches_remote_bolus_off(tmp_path: Path) -> None:
    """SPEC §9.5: a new remote never inherits remote bolus.  A user who confirmed a
    code without comparing it has paired a remote that still cannot deliver insulin
    until they also switch remote bolus on at the pump."""
    rig = Rig()
    first = rig.attach(tmp_path / "first", seed="first").client
    rig.pair(first)
    rig.press(Button.REMOTE_BOLUS_ON)
    assert rig.pump.persistent.remote_bolus_enabled
    second = rig.attach(tmp_path / "second", seed="second").client
    rig.pair(second)
    assert not rig.pump.persistent.remote_bolus_enabled
    assert "remote bolus is now OFF: switch it on again in the menu" in rig.pump.panel.shown("info")
    with pytest.raises(PumpRefused) as refused:
        second.bolus(20)
    assert refused.value.code is RefusalCode.REMOTE_BOLUS_DISABLED
    assert rig.pump.delivery.bolus_pulses_delivered == 0
    rig.reboot()
    assert not rig.pump.persistent.remote_bolus_enabled  # committed with the pairing
