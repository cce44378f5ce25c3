"""Exactly once over a hostile link: a bolus soak through the tap's faults (S7, S3, S2).

Boluses go from a :class:`~host.client.RemoteClient` to the pump through
:class:`~host.tap.FaultInjector` (the tap's core) with seeded drop,
duplicate, reorder, corrupt and hold faults in both directions.  Whatever
the link does, each bolus must be delivered at most once, and once the link
is clean again and :meth:`~host.client.RemoteClient.settle_pending` has run,
the host's final answer for every command id must add up to what the motor
did (SPEC §12.3, §12.4):

    sum(delivered pulses the host was told, per command id)
        == motor pulses - basal pulses due (20/h from boot)
        == the pump's bolus ledger

Held frames are released after ``hold_s`` > the 30 s challenge lifetime, so a
late commit must be refused (S3), and duplicates and reorders replay frames
inside the session (S2).

* :func:`test_bolus_soak_fast` (30 boluses) and the ``slow`` 300-bolus soak
  run on the rig's simulated clock through a fault wire built on the same
  :class:`FaultInjector` the threaded tap uses: fully deterministic.
* :func:`test_bolus_soak_through_the_threaded_tap` runs the real
  :class:`~host.tap.Tap` between real threads (``run_pump`` with a scaled
  clock): not deterministic in timing, the invariant must hold anyway.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pumpguard.firmware_sim.panel import Button
from pumpguard.firmware_sim.runner import ScaledClock, running_in_thread
from pumpguard.host.capture import CapturedFrame, CaptureWriter, Direction, read_capture
from pumpguard.host.client import OutcomeUnknown, PumpRefused, RemoteClient
from pumpguard.host.inmemory import TICK_S, DirectLink, Rig
from pumpguard.host.journal import Journal, SettledCommand
from pumpguard.host.keystore import KeyStore
from pumpguard.host.tap import FaultInjector, FaultPlan, Tap
from pumpguard.host.transport import MemoryLink, RecordChannel
from pumpguard.protocol import LimitPolicy, Outcome, encode_policy, sign_policy

BASAL_PULSES_PER_HOUR = 20
MS_PER_HOUR = 3_600_000

#: Faults on both directions; held frames come back after the challenge died.
SOAK_FAULTS = FaultPlan(
    seed=2024,
    drop_rate=0.08,
    duplicate_rate=0.08,
    reorder_rate=0.08,
    corrupt_rate=0.05,
    hold_rate=0.03,
    hold_s=35.0,
    reorder_timeout_s=0.5,
)
#: Enough loss that requests run out of retries: outcomes become unknown
#: and are settled only after the link heals.
HARSH_FAULTS = FaultPlan(
    seed=99,
    drop_rate=0.3,
    duplicate_rate=0.1,
    reorder_rate=0.1,
    corrupt_rate=0.1,
    hold_rate=0.1,
    hold_s=35.0,
    reorder_timeout_s=0.5,
)


class RecordingJournal(Journal):
    """The journal, also remembering every final answer the host recorded."""

    answers: dict[bytes, tuple[Outcome, int]]

    def settle(self, command_id: bytes, outcome: Outcome, delivered: int) -> SettledCommand:
        settled = super().settle(command_id, outcome, delivered)
        if not hasattr(self, "answers"):
            self.answers = {}
        assert command_id not in self.answers, "a command settled twice"
        self.answers[command_id] = (outcome, delivered)
        return settled


class FaultWire(DirectLink):
    """The remote's link to the rig's pump through two fault injectors, on the rig's clock.

    Implements :class:`host.transport.Link`.  Time passes only in
    :meth:`read` and :meth:`advance` (the client's sleep), one pump tick at a
    time, and held frames are released on that same clock.
    """

    def __init__(self, rig: Rig, capture: CaptureWriter | None = None) -> None:
        super().__init__(rig)
        self._capture = capture
        self._inbox = bytearray()
        self.up = FaultInjector(Direction.A_TO_B, FaultPlan(), record=self._record)
        self.down = FaultInjector(Direction.B_TO_A, FaultPlan(), record=self._record)

    def set_plan(self, plan: FaultPlan) -> None:
        """New faults from now on (what the old injectors still hold is delivered first)."""
        self._deliver(self.up.drain(), self.down.drain())
        self.up = FaultInjector(Direction.A_TO_B, plan, record=self._record)
        self.down = FaultInjector(Direction.B_TO_A, plan, record=self._record)

    def _record(self, direction: Direction, frame: bytes, now: float) -> None:
        if self._capture is not None:
            self._capture.write(CapturedFrame(1_700_000_000.0 + now, direction, frame))

    def _deliver(self, to_pump: bytes, to_remote: bytes) -> None:
        if to_pump:
            self.rig.pump.receive_data(to_pump, self.rig.clock.now)
        self._inbox += to_remote

    def _step(self) -> None:
        rig = self.rig
        now = rig.clock.now
        self._deliver(self.up.due(now), b"")
        rig.tick()
        from_pump = bytes(rig.to_remote)
        rig.to_remote.clear()
        if from_pump:
            self.down.receive(from_pump, now)
        self._deliver(b"", self.down.due(now))

    def advance(self, seconds: float) -> None:
        clock = self.rig.clock
        end = clock.now + seconds
        while clock.now < end:
            clock.now = min(end, clock.now + TICK_S)
            self._step()

    def write(self, data: bytes) -> None:
        self.up.receive(data, self.rig.clock.now)
        self._step()

    def read(self, timeout: float) -> bytes:
        clock = self.rig.clock
        end = clock.now + max(0.0, timeout)
        self._step()
        while not self._inbox and clock.now < end:
            clock.now = min(end, clock.now + TICK_S)
            self._step()
        data = bytes(self._inbox)
        self._inbox.clear()
        return data

    def close(self) -> None:
        return None


def _open_limits(rig: Rig, client: RemoteClient) -> None:
    """A prescriber policy with room for a long soak (the limits are not under test here)."""
    prescriber = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    rig.pump.panel.press(Button.ENROL_PRESCRIBER, prescriber.public_key().public_bytes_raw())
    rig.tick()
    body = encode_policy(LimitPolicy(1, 200, 2000, 4000), for_pump=client.status().pump_id)
    client.upload_policy(body, sign_policy(body, prescriber))


@dataclass
class Soak:
    rig: Rig
    wire: FaultWire
    client: RemoteClient
    journal: RecordingJournal
    motor_start: int
    boot_ms: int

    def bolus_by_witness(self) -> int:
        basal = (
            (math.floor(self.rig.clock.now * 1000) - self.boot_ms)
            * BASAL_PULSES_PER_HOUR
            // MS_PER_HOUR
        )
        return self.rig.motor.pulses - self.motor_start - basal


@pytest.fixture
def soak(tmp_path: Path) -> Iterator[Soak]:
    rig = Rig(seed="soak")
    boot_ms = math.floor(rig.clock.now * 1000)
    wire = FaultWire(rig, CaptureWriter(tmp_path / "soak.pcap"))
    keys_dir = tmp_path / "keys"
    KeyStore.open(keys_dir)  # the directory, before the journal in it
    journal = RecordingJournal.open(keys_dir)
    assert isinstance(journal, RecordingJournal)
    journal.answers = {}
    client = rig.attach(keys_dir, seed="soak client", link=wire, journal=journal).client
    rig.pair(client)
    rig.press(Button.REMOTE_BOLUS_ON)
    _open_limits(rig, client)
    try:
        yield Soak(rig, wire, client, journal, rig.motor.pulses, boot_ms)
    finally:
        journal.close()


@dataclass
class Tally:
    delivered_calls: int = 0
    refused: int = 0
    unknown: int = 0
    #: Command ids the client reported (delivered or unknown).
    command_ids: list[bytes] = field(default_factory=list)


def run_boluses(client: RemoteClient, count: int, rng: random.Random) -> Tally:
    tally = Tally()
    for _ in range(count):
        try:
            result = client.bolus(rng.randint(1, 6))
        except PumpRefused:
            tally.refused += 1  # e.g. a challenge that expired while a frame was held
        except OutcomeUnknown as exc:
            tally.unknown += 1  # settled later
            tally.command_ids.append(exc.command_id)
        else:
            assert result.delivered_pulses == result.requested_pulses
            tally.delivered_calls += 1
            tally.command_ids.append(result.command_id)
    return tally


def settle_everything(client: RemoteClient, journal: Journal) -> None:
    for _ in range(5):
        if not client.settle_pending():
            break
    assert journal.pending() == []


def check_ledger(soak: Soak) -> int:
    """The host's answers add up to the motor; return the pulses delivered."""
    answers = soak.journal.answers
    host_total = sum(delivered for _, delivered in answers.values())
    assert host_total == soak.bolus_by_witness()
    assert host_total == soak.rig.pump.delivery.bolus_pulses_delivered
    assert all(outcome in (Outcome.DELIVERED, Outcome.UNKNOWN) for outcome, _ in answers.values())
    return host_total


def _soak(
    soak: Soak, count: int, seed: int, plan: FaultPlan = SOAK_FAULTS
) -> tuple[Tally, Counter[str]]:
    """``count`` boluses through the faults, then heal the link, settle and check."""
    soak.wire.set_plan(plan)
    up, down = soak.wire.up, soak.wire.down
    tally = run_boluses(soak.client, count, random.Random(seed))
    soak.wire.set_plan(FaultPlan())  # the link heals
    settle_everything(soak.client, soak.journal)
    soak.wire.advance(30)  # a bolus still running ends; nothing new may start
    check_ledger(soak)
    assert set(tally.command_ids) <= set(soak.journal.answers)
    assert len(soak.journal.answers) <= count
    return tally, up.counts + down.counts


def test_bolus_soak_fast(soak: Soak, tmp_path: Path) -> None:
    tally, counts = _soak(soak, 30, seed=1)
    for action in ("dropped", "duplicated", "reordered", "corrupted", "held"):
        assert counts[action] > 0, f"the soak never {action} a frame"
    assert tally.delivered_calls >= 15, tally  # the faults must not stop everything
    _check_pump_log(soak, tmp_path)


def test_bolus_soak_harsh_settles_every_unknown_outcome(soak: Soak, tmp_path: Path) -> None:
    tally, _ = _soak(soak, 30, seed=3, plan=HARSH_FAULTS)
    assert tally.unknown > 0, tally  # the settle path was exercised ...
    outcomes = Counter(outcome for outcome, _ in soak.journal.answers.values())
    assert outcomes[Outcome.DELIVERED] > tally.delivered_calls  # ... and found real deliveries
    assert outcomes[Outcome.UNKNOWN] > 0  # ... and commands that never ran
    _check_pump_log(soak, tmp_path)


def _check_pump_log(soak: Soak, tmp_path: Path) -> None:
    """At most once, by the pump's own signed log: one start per command id."""
    started = [
        entry.fields["cmd_id"]
        for entry in soak.client.verified_history()
        if entry.event == "bolus_started"
    ]
    assert started
    assert len(started) == len(set(started))
    assert set(started) <= set(soak.journal.answers)
    # The capture saw frames in both directions.
    frames = read_capture(tmp_path / "soak.pcap")
    assert {f.direction for f in frames} == set(Direction)


def test_the_fast_soak_is_deterministic(tmp_path: Path) -> None:
    """Same seeds, same simulated clock: the same answers, pulse for pulse."""
    runs = []
    for run in range(2):
        rig = Rig(seed="det")
        wire = FaultWire(rig)
        keys_dir = tmp_path / f"keys{run}"
        KeyStore.open(keys_dir)
        journal = RecordingJournal.open(keys_dir)
        assert isinstance(journal, RecordingJournal)
        journal.answers = {}
        client = rig.attach(keys_dir, seed="det client", link=wire, journal=journal).client
        try:
            rig.pair(client)
            rig.press(Button.REMOTE_BOLUS_ON)
            wire.set_plan(SOAK_FAULTS)
            run_boluses(client, 10, random.Random(5))
            wire.set_plan(FaultPlan())
            settle_everything(client, journal)
        finally:
            journal.close()
        runs.append((dict(journal.answers), rig.motor.pulses, rig.clock.now))
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_bolus_soak_slow(soak: Soak) -> None:
    tally, counts = _soak(soak, 300, seed=2)
    assert tally.delivered_calls >= 150, tally
    assert counts["held"] > 0


# --- the real tap, on threads -------------------------------------------------------------

THREAD_SCALE = 25.0


@contextlib.contextmanager
def pump_thread(rig: Rig, link: MemoryLink) -> Iterator[ScaledClock]:
    """The rig's pump, handed to ``run_pump`` on a clock that continues the rig's."""
    base = rig.clock.now
    scaled = ScaledClock(THREAD_SCALE)
    with running_in_thread(
        rig.pump, read=link.read, write=link.write, clock=lambda: base + scaled()
    ):
        yield scaled


def test_bolus_soak_through_the_threaded_tap(tmp_path: Path) -> None:
    rig = Rig(seed="threaded")
    keys_dir = tmp_path / "keys"
    keys = KeyStore.open(keys_dir)
    journal = RecordingJournal.open(keys_dir)
    assert isinstance(journal, RecordingJournal)
    journal.answers = {}
    try:
        # Pair on the rig (deterministic), then move the pump onto a thread.
        paired = rig.attach(keys_dir, seed="threaded pairing", journal=journal).client
        rig.pair(paired)
        rig.press(Button.REMOTE_BOLUS_ON)
        motor_start = rig.motor.pulses
        basal_start = rig.pump.delivery.basal_pulses_delivered
        remote_end, tap_a = MemoryLink.pair()
        tap_b, pump_end = MemoryLink.pair()
        client = RemoteClient(RecordChannel(remote_end), keys, journal, reply_timeout=0.2)
        plan = FaultPlan(
            seed=7,
            drop_rate=0.05,
            duplicate_rate=0.05,
            reorder_rate=0.05,
            corrupt_rate=0.03,
            hold_rate=0.03,
            hold_s=1.5,  # 37 s of pump time: past the challenge's life
            reorder_timeout_s=0.05,
        )
        with pump_thread(rig, pump_end) as scaled:
            with CaptureWriter(tmp_path / "threaded.pcap") as writer:
                tap = Tap(tap_a, tap_b, plan, capture=writer).start()
                try:
                    run_boluses(client, 5, random.Random(3))
                finally:
                    summary = tap.stop()
                assert summary.failure is None
                with Tap(tap_a, tap_b, capture=writer):  # the link heals
                    settle_everything(client, journal)
            pump_seconds = scaled()
        motor = rig.motor.pulses - motor_start
        basal = rig.pump.delivery.basal_pulses_delivered - basal_start
        host_total = sum(delivered for _, delivered in journal.answers.values())
        assert motor == host_total + basal
        assert basal <= math.ceil(pump_seconds * BASAL_PULSES_PER_HOUR / 3600) + 1
        assert host_total == rig.pump.delivery.bolus_pulses_delivered
        assert len(read_capture(tmp_path / "threaded.pcap")) > 0
    finally:
        journal.close()
