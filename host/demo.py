"""``pumpctl demo``: the whole story in one process, nothing to set up.

A simulated pumpguard pump and a remote talk over an in-memory loopback
while a recorder on the wire keeps every frame the remote sends.  The demo
pairs them (the code shown on both screens), delivers a bolus with progress,
replays the recorded bolus (refused: the motor does not move), asks for an
over-limit bolus (refused by the pump), and finally plays the same recording
trick against the recalled design (``--legacy``), where the replayed bolus is
delivered a second time.  The pump's clock runs 60 times faster so a bolus
takes a second instead of a minute.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.flash import Flash
from pumpguard.firmware_sim.legacy import LegacyPump
from pumpguard.firmware_sim.motor import Motor
from pumpguard.firmware_sim.panel import Button, PanelEvent
from pumpguard.firmware_sim.pump import Pump, PumpMode
from pumpguard.firmware_sim.runner import Firmware, ScaledClock, running_in_thread
from pumpguard.protocol import legacy, pulses_to_units, units_to_pulses

from .client import PumpRefused, RemoteClient
from .journal import Journal
from .keystore import KeyStore
from .transport import MemoryLink, RecordChannel

#: The pump's clock runs this much faster than the wall clock in the demo.
TIME_SCALE = 60.0
DEMO_BOLUS = "1"
OVER_LIMIT_BOLUS = "12"


class WireRecorder:
    """A tap on the remote-to-pump direction: keeps every chunk written."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.recording = True

    def __call__(self, data: bytes) -> list[bytes]:
        if self.recording:
            self.chunks.append(data)
        return [data]


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _say(text: str) -> None:
    print(f"   {text}", flush=True)


@contextmanager
def _running(firmware: Firmware, link: MemoryLink, clock: Callable[[], float]) -> Iterator[None]:
    with running_in_thread(firmware, read=link.read, write=link.write, clock=clock):
        yield


def run_demo() -> int:
    print("pumpguard demo: a simulated pump and its remote in one process")
    print(f"(after pairing, the pump's clock runs {TIME_SCALE:.0f}x faster than real time)")
    with tempfile.TemporaryDirectory(prefix="pumpguard-demo-") as tmp:
        secure = _secure_story(Path(tmp) / "keys")
        insecure = _legacy_story(Path(tmp) / "legacy-keys")
    _step("Result")
    _say(f"pumpguard: replayed bolus delivered {secure} U more (must be 0)")
    _say(f"recalled design: replayed bolus delivered {insecure} U more")
    return 0 if secure == "0" and insecure != "0" else 1


def _secure_story(keys_dir: Path) -> str:
    flash = Flash.in_memory(
        sector_size=config.FLASH_SECTOR_SIZE, sector_count=config.FLASH_SECTOR_COUNT
    )
    motor = Motor.in_memory()
    clock = ScaledClock(1.0)  # a person pairs in real time
    pump = Pump.boot(flash=flash, motor=motor, random_bytes=os.urandom, now=clock())
    recorder = WireRecorder()
    remote_end, pump_end = MemoryLink.pair(a_to_b=recorder)

    def person_at_pump(event: PanelEvent) -> None:
        # A careful user: opens pairing when asked, confirms only a matching code.
        if event.kind == "pairing-request" and pump.mode is PumpMode.RUNNING:
            _say("[user at pump] opens Menu > Remote > Pair")
            pump.panel.press(Button.PAIR)
        elif event.kind == "code":
            _say(f"[pump screen]  code {pump.panel.code_shown}")
        elif event.kind in ("alert", "alarm"):
            _say(f"[pump screen]  {event.text}")

    pump.panel.listeners.append(person_at_pump)
    client = RemoteClient(
        RecordChannel(remote_end), KeyStore.open(keys_dir), Journal.open(keys_dir)
    )
    with _running(pump, pump_end, clock):
        _step("1. Pairing: X25519 key agreement, 6-digit code confirmed on the pump")

        def remote_screen(code: str) -> bool:
            _say(f"[remote]       code {code}")
            # The user looks at both screens and answers on the pump.
            match = pump.panel.code_shown == code
            _say(f"[user at pump] the codes {'match: confirms' if match else 'DIFFER: rejects'}")
            pump.panel.press(Button.CONFIRM_CODE if match else Button.REJECT_CODE)
            return match

        client.pair(remote_screen)
        _say("paired: each side holds the other's authenticated public key")
        pump.panel.press(Button.REMOTE_BOLUS_ON)
        _say("[user at pump] switches remote bolus on in the menu")
        clock.set_scale(TIME_SCALE)

        _step(f"2. A {DEMO_BOLUS} U bolus, exactly once, with progress reported by the pump")
        recorder.chunks.clear()
        shown: list[int] = []

        def progress(delivered: int, requested: int) -> None:
            if not shown or delivered - shown[-1] >= 5 or delivered == requested:
                shown.append(delivered)
                _say(f"delivering {pulses_to_units(delivered)} / {pulses_to_units(requested)} U")

        result = client.bolus(units_to_pulses(DEMO_BOLUS), progress)
        _say(
            f"outcome: {result.outcome.name.lower()}, {pulses_to_units(result.delivered_pulses)} U"
        )
        recorded = list(recorder.chunks)
        recorder.recording = False

        _step("3. An attacker replays every frame recorded during that bolus")
        before = pump.delivery.bolus_pulses_delivered
        verdicts: list[str] = []
        pump.on_record = lambda direction, record, verdict: verdicts.append(verdict)
        for chunk in recorded:
            remote_end.write(chunk)
        frames = sum(chunk.count(0) for chunk in recorded)  # one delimiter per frame
        _wait_until(lambda: len(verdicts) >= frames)
        time.sleep(0.5)  # and let the pump's clock run on: nothing may start late
        pump.on_record = None
        extra = pump.delivery.bolus_pulses_delivered - before
        refused = sum(verdict.startswith("refused") for verdict in verdicts)
        _say(f"{len(recorded)} recorded frames sent again; the pump refused {refused}")
        _say(f"bolus delivered by the replay: {pulses_to_units(extra)} U")

        _step(f"4. A {OVER_LIMIT_BOLUS} U bolus: over the pump's 10 U limit")
        try:
            client.bolus(units_to_pulses(OVER_LIMIT_BOLUS))
            _say("delivered?! (this must not happen)")
        except PumpRefused as refusal:
            _say(str(refusal))
        _say(
            f"motor pulses {motor.pulses} = ledger "
            f"{pump.delivery.basal_pulses_delivered + pump.delivery.bolus_pulses_delivered}"
        )
    return pulses_to_units(extra)


def _legacy_story(keys_dir: Path) -> str:
    motor = Motor.in_memory()
    clock = ScaledClock(TIME_SCALE)
    pump = LegacyPump(motor=motor, serial=os.urandom(legacy.SERIAL_LEN), now=clock())
    recorder = WireRecorder()
    remote_end, pump_end = MemoryLink.pair(a_to_b=recorder)
    channel = RecordChannel(remote_end)
    with _running(pump, pump_end, clock):
        _step("5. The same replay against the recalled design (pumpsim --legacy)")
        _say(f"the pump's serial number is its only secret: {pump.serial.hex()}")
        bolus = legacy.encode_packet(
            pump.serial,
            legacy.LegacyOpcode.BOLUS,
            units_to_pulses(DEMO_BOLUS).to_bytes(2, "big"),
        )
        channel.send(bolus)
        _wait_for_bolus(pump, 0)
        first = pump.delivery.bolus_pulses_delivered
        _say(f"legacy remote sends a {DEMO_BOLUS} U bolus: {pulses_to_units(first)} U delivered")
        for chunk in list(recorder.chunks):
            remote_end.write(chunk)
        _wait_for_bolus(pump, first)
        extra = pump.delivery.bolus_pulses_delivered - first
        _say(f"attacker replays the recording: {pulses_to_units(extra)} U delivered AGAIN")
    return pulses_to_units(extra)


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def _wait_for_bolus(pump: LegacyPump, delivered_before: int) -> None:
    """Until a bolus has started on the legacy pump and finished (or 10 s passed)."""
    _wait_until(lambda: pump.delivery.bolus_pulses_delivered > delivered_before)
    _wait_until(lambda: pump.delivery.active_bolus is None)
