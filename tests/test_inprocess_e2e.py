"""End to end in one process: the real firmware loop and the real client.

``pumpctl demo`` and ``pumpsim`` share one firmware main loop,
:func:`firmware_sim.runner.run_pump`; here it runs in a thread against one end
of a :class:`host.transport.MemoryLink` (the in-process loopback: pyserial's
``loop://`` is one port echoing itself, not a cable between two programs) and
a :class:`host.client.RemoteClient` drives the other end on the wall clock,
with the pump's clock 50 times faster.  The remote-to-pump and pump-to-remote
directions each have a fault hook, so a test can lose the pump's replies at
an exact moment -- the moment a ``pumpctl`` would be killed or a cable pulled.

The lost-reply cases are also run on :class:`host.inmemory.Rig`'s ``DirectLink`` (one
thread, simulated clock): deterministic, and ``replies_arrive = False`` is a
link that dies after the request went out.

What these tests stop:

* the session over the real loop failing where the one-thread rig passes:
  pairing with the code compared on both screens, status, a bolus with
  progress, history verified against the pump's audit key, cancel from the
  remote mid-bolus, unpair erasing the key on both sides (SPEC §9, §12,
  S10, S11);
* a bolus whose reply is lost being reported as anything but "unknown"
  (exit status 4), being forgotten, or being delivered twice when the
  remote retries, restarts and settles it (S7, SPEC §12.4);
* a bolus settled as "not delivered" that the pump could still be made to
  deliver by replaying what the remote sent (S2, S7);
* the motor moving without the ledger knowing (S8).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.flash import Flash
from pumpguard.firmware_sim.motor import Motor
from pumpguard.firmware_sim.panel import Button, PanelEvent
from pumpguard.firmware_sim.pump import Pump, PumpMode
from pumpguard.firmware_sim.runner import ScaledClock, run_pump
from pumpguard.host.client import (
    UNASSIGNED_ID,
    LinkDown,
    NotPaired,
    OutcomeUnknown,
    PumpRefused,
    RemoteClient,
)
from pumpguard.host.inmemory import DirectLink, Rig
from pumpguard.host.journal import Journal, SettledCommand
from pumpguard.host.keystore import KEY_FILE, KeyStore
from pumpguard.host.transport import MemoryLink, RecordChannel
from pumpguard.protocol import Outcome, RefusalCode, Status, StatusRequest, wire

TIME_SCALE = 50.0
#: Short reply timeout: a lost reply is given up on in 4 x 0.25 s, twice.
REPLY_TIMEOUT_S = 0.25


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


class LivePump:
    """A real :class:`Pump` running :func:`run_pump` in a thread over a MemoryLink.

    ``replies_arrive`` drops everything the pump writes while False.  A
    careful user stands at the pump: opens pairing mode when a remote asks,
    and confirms the code only if it is the one the remote shows.
    """

    def __init__(self) -> None:
        self.flash = Flash.in_memory(
            sector_size=config.FLASH_SECTOR_SIZE, sector_count=config.FLASH_SECTOR_COUNT
        )
        self.motor = Motor.in_memory()
        self.clock = ScaledClock(TIME_SCALE)
        self.pump = Pump.boot(
            flash=self.flash, motor=self.motor, random_bytes=os.urandom, now=self.clock()
        )
        self.replies_arrive = True
        self.events: list[PanelEvent] = []
        self.remote_end, self._pump_end = MemoryLink.pair(b_to_a=self._pump_writes)
        self.pump.panel.listeners.append(self._user)
        self._stop = threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pump", daemon=True)
        self._thread.start()

    def _pump_writes(self, data: bytes) -> list[bytes]:
        return [data] if self.replies_arrive else []

    def _user(self, event: PanelEvent) -> None:
        # Runs on the pump's thread, inside the firmware: presses are queued.
        self.events.append(event)
        if event.kind == "pairing-request" and self.pump.mode is PumpMode.RUNNING:
            self.pump.panel.press(Button.PAIR)

    def _run(self) -> None:
        try:
            run_pump(
                self.pump,
                read=self._pump_end.read,
                write=self._pump_end.write,
                clock=self.clock,
                stop=self._stop,
            )
        except BaseException as exc:  # reported by stop(): the loop must not die
            self.failure = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()
        assert self.failure is None, repr(self.failure)

    def shown(self, kind: str, text: str) -> int:
        return sum(event.kind == kind and text in event.text for event in list(self.events))

    def compare_codes(self, remote_code: str) -> bool:
        """The user looks at both screens and answers on the pump."""
        wait_until(lambda: self.pump.panel.code_shown is not None)
        match = self.pump.panel.code_shown == remote_code
        self.pump.panel.press(Button.CONFIRM_CODE if match else Button.REJECT_CODE)
        return match

    @property
    def bolus_pulses(self) -> int:
        return self.pump.delivery.bolus_pulses_delivered

    def motor_matches_ledger(self) -> None:
        delivery = self.pump.delivery
        assert self.motor.pulses == (
            delivery.basal_pulses_delivered + delivery.bolus_pulses_delivered
        )


@pytest.fixture
def live() -> Iterator[LivePump]:
    pump = LivePump()
    try:
        yield pump
    finally:
        pump.stop()


def open_client(
    link: MemoryLink, keys: Path, journal: Journal, *, reply_timeout: float = REPLY_TIMEOUT_S
) -> RemoteClient:
    return RemoteClient(
        RecordChannel(link), KeyStore.open(keys), journal, reply_timeout=reply_timeout
    )


def audit_events(client: RemoteClient, event: str, cmd_id: bytes) -> list[dict[str, object]]:
    """Entries of ``event`` for ``cmd_id`` in the pump's audit log, verified (S10)."""
    entries: list[dict[str, object]] = [
        dict(entry.to_json()) for entry in client.verified_history()
    ]
    return [e for e in entries if e["event"] == event and e.get("cmd_id") == cmd_id.hex()]


# --- the whole session ------------------------------------------------------


def test_pair_status_bolus_history_cancel_unpair(live: LivePump, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    KeyStore.open(keys)
    with Journal.open(keys) as journal:
        client = open_client(live.remote_end, keys, journal, reply_timeout=1.0)

        # Pairing at 1x would take the pump's 120 s window x 1/50 = 2.4 s: plenty.
        shown: list[str] = []

        def remote_screen(code: str) -> bool:
            shown.append(code)
            return live.compare_codes(code)

        result = client.pair(remote_screen)
        assert shown == [result.code]
        assert live.pump.persistent.remotes != ()
        live.pump.panel.press(Button.REMOTE_BOLUS_ON)
        wait_until(lambda: live.pump.persistent.remote_bolus_enabled)

        status = client.status()
        assert status.remote_bolus_enabled is True
        assert status.max_bolus_pulses == 200  # factory: 10 U

        progress: list[tuple[int, int]] = []
        bolus = client.bolus(10, lambda done, of: progress.append((done, of)))
        assert bolus.outcome is Outcome.DELIVERED
        assert bolus.delivered_pulses == bolus.requested_pulses == 10
        assert progress[-1] == (10, 10)
        assert [done for done, _ in progress] == sorted(done for done, _ in progress)
        assert live.shown("alert", "REMOTE BOLUS 0.5 U started") == 1

        history = [entry.to_json() for entry in client.verified_history()]
        events = [(e["event"], e.get("cmd_id")) for e in history]
        assert ("bolus_started", bolus.command_id.hex()) in events
        assert ("bolus_delivered", bolus.command_id.hex()) in events

        # Nothing running: cancel is refused (pumpctl exit 3).
        with pytest.raises(PumpRefused) as refused:
            client.cancel()
        assert refused.value.code is RefusalCode.NOTHING_TO_CANCEL
        assert refused.value.exit_status == 3

        # Cancel from the remote while the pump counts: the remote learns what went in.
        cancelled: list[int] = []

        def cancel_once(done: int, of: int) -> None:
            if done >= 3 and not cancelled:
                cancelled.append(client.cancel().delivered)

        stopped = client.bolus(100, cancel_once)
        assert stopped.outcome is Outcome.CANCELLED
        assert 3 <= stopped.delivered_pulses < 100
        time.sleep(0.2)  # a pulse interval at 50x: the motor must have stopped
        assert live.bolus_pulses == 10 + stopped.delivered_pulses
        assert [s.outcome for s in journal.settled()] == [Outcome.DELIVERED, Outcome.CANCELLED]
        assert journal.pending() == []

        client.unpair()
        assert not (keys / KEY_FILE).exists()
        wait_until(lambda: live.pump.persistent.remotes == ())
        with pytest.raises(NotPaired):
            client.status()
    live.stop()
    live.motor_matches_ledger()


# --- lost replies: outcome unknown, then settled exactly once (S7) ----------


def test_reply_lost_after_the_pump_started_is_unknown_then_settled_once(
    live: LivePump, tmp_path: Path
) -> None:
    """The cable is pulled the instant the pump starts: the remote never hears back."""
    keys = tmp_path / "keys"
    KeyStore.open(keys)
    journal = Journal.open(keys)
    try:
        client = open_client(live.remote_end, keys, journal)
        client.pair(live.compare_codes)
        live.pump.panel.press(Button.REMOTE_BOLUS_ON)
        wait_until(lambda: live.pump.persistent.remote_bolus_enabled)

        def pull_the_cable(event: PanelEvent) -> None:
            if event.kind == "alert" and "REMOTE BOLUS" in event.text:
                live.replies_arrive = False  # before the pump writes its answer

        live.pump.panel.listeners.append(pull_the_cable)
        with pytest.raises(OutcomeUnknown) as unknown:
            client.bolus(20)
        assert unknown.value.exit_status == 4
        command_id = unknown.value.command_id
        assert "pumpctl status" in str(unknown.value)
        assert [p.command_id for p in journal.pending()] == [command_id]
        # Unsettled: a new bolus is refused without sending anything new.
        with pytest.raises(OutcomeUnknown) as again:
            client.bolus(20)
        assert again.value.command_id == command_id
        assert [p.command_id for p in journal.pending()] == [command_id]
    finally:
        journal.close()  # the remote "restarts" below

    # The remote restarts; the cable is back.
    live.pump.panel.listeners.remove(pull_the_cable)
    live.replies_arrive = True
    with Journal.open(keys) as journal:
        client = open_client(live.remote_end, keys, journal)
        assert client.settle_pending() == []
        [settled] = journal.settled()
        assert journal.pending() == []
        started = audit_events(client, "bolus_started", command_id)
    assert settled == SettledCommand(
        command_id,
        20,
        settled.recorded_at,
        Outcome.DELIVERED,
        20,
        settled.settled_at,
    )
    live.stop()
    # The commit was resent, resealed, 4 times into the dead link: one delivery.
    assert live.bolus_pulses == 20
    assert len(started) == 1
    live.motor_matches_ledger()


def rig_client(rig: Rig, keys: Path, journal: Journal) -> tuple[RemoteClient, DirectLink]:
    remote = rig.attach(keys, seed=f"remote-{len(rig.from_remote)}", journal=journal)
    return remote.client, remote.link


@pytest.fixture
def paired_rig(tmp_path: Path) -> tuple[Rig, Path]:
    rig = Rig()
    keys = tmp_path / "keys"
    KeyStore.open(keys)
    with Journal.open(keys) as journal:
        client, _ = rig_client(rig, keys, journal)
        rig.pair(client)
    rig.press(Button.REMOTE_BOLUS_ON)
    return rig, keys


def test_request_numbers_the_messages_it_is_given(paired_rig: tuple[Rig, Path]) -> None:
    """A request is built with UNASSIGNED_ID and sent under the client's next id (SPEC
    §12.1); a message numbered by its caller is a caller bug and is not sent."""
    rig, keys = paired_rig
    with Journal.open(keys) as journal:
        client, _ = rig_client(rig, keys, journal)
        first = client.request(StatusRequest(UNASSIGNED_ID))
        second = client.request(StatusRequest(UNASSIGNED_ID))
        assert isinstance(first, Status)
        assert isinstance(second, Status)
        assert second.request_id == (first.request_id + 1) % (wire.MAX_REQUEST_ID + 1)
        sent = len(rig.from_remote)
        with pytest.raises(ValueError, match="UNASSIGNED_ID"):
            client.request(StatusRequest(7))
        assert len(rig.from_remote) == sent


@pytest.mark.parametrize("lost", ["before the challenge", "after the commit"])
def test_direct_link_dead_link_is_unknown_then_the_real_outcome(
    lost: str, paired_rig: tuple[Rig, Path]
) -> None:
    """The one-thread variant on simulated time: exact, whatever the machine's speed."""
    rig, keys = paired_rig
    with Journal.open(keys) as journal:
        client, link = rig_client(rig, keys, journal)
        client.status()  # a session is up: the BOLUS_PREPARE itself goes out
        if lost == "before the challenge":
            link.replies_arrive = False
        else:

            def cut(event: PanelEvent) -> None:
                if event.kind == "alert" and "REMOTE BOLUS" in event.text:
                    link.replies_arrive = False

            rig.pump.panel.listeners.append(cut)
        with pytest.raises(OutcomeUnknown) as unknown:
            client.bolus(20)
        assert unknown.value.exit_status == 4
        command_id = unknown.value.command_id
        assert [p.command_id for p in journal.pending()] == [command_id]
        # Still dead: settling cannot learn anything, and says so.
        assert client.settle_pending() == [command_id]
        sent_while_dead = list(rig.from_remote)

    # Host restart; the link comes back.
    with Journal.open(keys) as journal:
        client, link = rig_client(rig, keys, journal)
        assert client.settle_pending() == []
        assert journal.pending() == []
        [settled] = [s for s in journal.settled() if s.command_id == command_id]
        started = audit_events(client, "bolus_started", command_id)

    expected = 0 if lost == "before the challenge" else 20
    assert settled.outcome is (Outcome.UNKNOWN if expected == 0 else Outcome.DELIVERED)
    assert settled.delivered == expected
    assert rig.pump.delivery.bolus_pulses_delivered == expected
    assert len(started) == expected // 20

    # Everything the remote sent, played again by an attacker: no bolus pulse more.
    for chunk in sent_while_dead:
        rig.inject(chunk)
    rig.advance(120)
    assert rig.pump.delivery.bolus_pulses_delivered == expected
    assert rig.motor.pulses == rig.ledger_pulses


def test_direct_link_restart_mid_bolus_follows_it_to_the_end(paired_rig: tuple[Rig, Path]) -> None:
    """Settling a bolus still in progress waits for its end and records the real total."""
    rig, keys = paired_rig
    with Journal.open(keys) as journal:
        client, link = rig_client(rig, keys, journal)

        def cut(event: PanelEvent) -> None:
            if event.kind == "alert" and "REMOTE BOLUS" in event.text:
                link.replies_arrive = False

        rig.pump.panel.listeners.append(cut)
        with pytest.raises(OutcomeUnknown) as unknown:
            client.bolus(200)  # 10 U: 400 s of pump time, far longer than the retries
        rig.pump.panel.listeners.remove(cut)
        command_id = unknown.value.command_id
    in_progress = rig.pump.delivery.bolus_pulses_delivered
    assert 0 < in_progress < 200

    with Journal.open(keys) as journal:
        client, _ = rig_client(rig, keys, journal)
        assert client.settle_pending() == []
        [settled] = [s for s in journal.settled() if s.command_id == command_id]
    assert settled.outcome is Outcome.DELIVERED
    assert settled.delivered == 200
    assert rig.pump.delivery.bolus_pulses_delivered == 200
    assert rig.motor.pulses == rig.ledger_pulses
    rig.advance(60)
    assert rig.pump.delivery.bolus_pulses_delivered == 200


def test_a_pump_that_unpaired_us_from_its_menu_accepts_nothing(
    paired_rig: tuple[Rig, Path],
) -> None:
    """S11: the pump's menu erases the remote's key; the remote's copy is then useless."""
    rig, keys = paired_rig
    rig.press(Button.UNPAIR_ALL)
    assert rig.pump.persistent.remotes == ()
    with Journal.open(keys) as journal:
        client, _ = rig_client(rig, keys, journal)
        with pytest.raises(LinkDown) as status:
            client.status()
        assert status.value.exit_status == 2
        assert "not paired with it" in str(status.value)
        # The handshake comes before the journal: refused at once, nothing to settle.
        with pytest.raises(LinkDown) as bolus:
            client.bolus(20)
        assert bolus.value.exit_status == 2
        assert journal.pending() == []
    rig.advance(60)
    assert rig.pump.delivery.bolus_pulses_delivered == 0
    assert rig.motor.pulses == rig.ledger_pulses
