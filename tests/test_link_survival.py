"""The therapy loop outlives its link ([fail-safe] 8) and a storage fault ([fail-safe] 7).

A firmware's UART never ends its main loop: the link is optional, insulin is
not (SPEC §3.1, S9, S14).  Here the loop -- :func:`firmware_sim.runner.run_pump`
behind a :class:`~firmware_sim.runner.LinkSupervisor` over the pump's own
driver :class:`~firmware_sim.uart.Uart` -- runs on a scripted pyserial port
(:class:`FakeSerial`) and one simulated clock, so every hang-up, vanished
device, failed write and stalled peer happens at a chosen tick and nothing
waits in real time.  The real :class:`~firmware_sim.pump.Pump` and its motor
give the evidence that matters: basal pulses keep coming while the link is
gone.

What these tests stop:

* a hang-up (pyserial's "device reports readiness to read but returned no
  data"), an ``OSError`` such as EIO, or a failed write ending the loop,
  and a device that comes back never being reopened ([fail-safe] 8);
* a peer that stops reading ending the loop with "Write timeout", or
  making the pump hold an unbounded amount of output ([fail-safe] 8);
* a :class:`~firmware_sim.flash.FlashError` out of the pump stopping basal
  ([fail-safe] 7).

The same outcomes over real ptys with ``pumpsim`` and ``pumpctl`` as
processes are in ``test_e2e_pty.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import serial
from rig import FakeClock, seeded_random

from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.flash import Flash, FlashError
from pumpguard.firmware_sim.motor import Motor
from pumpguard.firmware_sim.pump import Pump, PumpMode
from pumpguard.firmware_sim.runner import (
    FAULT_REPORT_INTERVAL_S,
    MAX_PENDING_OUTPUT,
    REOPEN_MAX_S,
    TICK_INTERVAL_S,
    WRITE_STALL_S,
    Firmware,
    LinkState,
    LinkSupervisor,
    ScaledClock,
    StorageFaults,
    run_pump,
)
from pumpguard.firmware_sim.uart import Uart
from pumpguard.protocol import FrameDecoder, encode_frame

#: The pump's clock runs this much faster than the wire's: one 20 ms loop
#: iteration is 20 s of pump time, so a basal pulse (every 180 s) comes every
#: 9 iterations.
PUMP_SCALE = 1000.0
#: Pump seconds per basal pulse at the factory rate.
BASAL_PERIOD_S = 3600 / config.DEFAULT_BASAL_PULSES_PER_HOUR
PORT = "/dev/ttyFAKE0"


@dataclass
class FakeWire:
    """The device behind :data:`PORT`, shared by every :class:`FakeSerial` opened on it."""

    clock: FakeClock
    #: Whether the device node exists (opening fails while it does not).
    present: bool = True
    #: Bytes the peer sent, not yet read by the pump.
    incoming: bytearray = field(default_factory=bytearray)
    #: Every byte the port took from the pump.
    sent: bytearray = field(default_factory=bytearray)
    #: Raised by the next read / every write while set.
    read_error: Exception | None = None
    write_error: Exception | None = None
    #: How many bytes a write takes (None: all): 0 is a peer that stopped reading.
    accept: int | None = None
    opened: int = 0
    attempts: int = 0


class FakeSerial:
    """Just enough of a pyserial port for :class:`~firmware_sim.uart.Uart`.

    Not a :class:`serial.Serial`, so the driver writes through ``write`` as it
    does for pyserial URL handlers.  A read that finds nothing waits out its
    timeout on the simulated clock.
    """

    def __init__(self, wire: FakeWire) -> None:
        self._wire = wire
        self.timeout = 0.0
        self.closed = False

    @property
    def in_waiting(self) -> int:
        return len(self._wire.incoming)

    def read(self, size: int) -> bytes:
        assert not self.closed
        error, self._wire.read_error = self._wire.read_error, None
        if error is not None:
            raise error
        if not self._wire.incoming:
            self._wire.clock.now += self.timeout
            return b""
        data = bytes(self._wire.incoming[:size])
        del self._wire.incoming[:size]
        return data

    def write(self, data: bytes) -> int:
        assert not self.closed
        if self._wire.write_error is not None:
            raise self._wire.write_error
        taken = len(data) if self._wire.accept is None else min(len(data), self._wire.accept)
        self._wire.sent += data[:taken]
        return taken

    def close(self) -> None:
        self.closed = True


def opener(wire: FakeWire) -> Callable[..., FakeSerial]:
    """``serial.serial_for_url`` for the fake device."""

    def open_port(url: str, **options: object) -> FakeSerial:
        wire.attempts += 1
        if not wire.present:
            raise serial.SerialException(
                f"[Errno 2] could not open port {url}: [Errno 2] No such file or directory"
            )
        wire.opened += 1
        return FakeSerial(wire)

    return open_port


class Loop:
    """``run_pump`` on the fake port, as ``pumpsim`` wires it, one iteration per read.

    ``at[i]`` runs before iteration ``i`` reads; ``watch`` after every read.
    """

    def __init__(
        self, firmware: ChattyFirmware | None = None, *, faults: StorageFaults | None = None
    ) -> None:
        self.clock = FakeClock(start=0.0)
        self.wire = FakeWire(self.clock)
        self.motor = Motor.in_memory()
        self.pump_clock = ScaledClock(PUMP_SCALE, source=self.clock)
        self.firmware: Firmware = firmware or Pump.boot(
            flash=Flash.in_memory(
                sector_size=config.FLASH_SECTOR_SIZE, sector_count=config.FLASH_SECTOR_COUNT
            ),
            motor=self.motor,
            random_bytes=seeded_random("link-survival"),
            now=self.pump_clock(),
        )
        open_port = opener(self.wire)
        self.link = LinkSupervisor(
            Uart(PORT, open_port=open_port),
            lambda: Uart(PORT, open_port=open_port),
            name=PORT,
            clock=self.clock,
            sleep=self._sleep,
        )
        self.faults = StorageFaults() if faults is None else faults
        self.at: dict[int, Callable[[], None]] = {}
        self.watch: list[Callable[[], None]] = []
        self.iteration = 0
        #: Before each iteration: the motor's pulse count and the pump's clock.
        self.pulses_at: dict[int, tuple[int, float]] = {}

    def _sleep(self, seconds: float) -> None:
        self.clock.now += seconds

    def run(self, iterations: int) -> None:
        """Run the loop for ``iterations`` reads; it must not raise, whatever the link does."""
        stop = threading.Event()

        def read(timeout: float) -> bytes:
            self.iteration += 1
            if self.iteration >= iterations:
                stop.set()
            action = self.at.pop(self.iteration, None)
            if action is not None:
                action()
            self.pulses_at[self.iteration] = (self.motor.pulses, self.pump_clock())
            data = self.link.read(timeout)
            for check in self.watch:
                check()
            return data

        run_pump(
            self.firmware,
            read=read,
            write=self.link.write,
            clock=self.pump_clock,
            stop=stop,
            faults=self.faults,
        )

    def assert_basal_between(self, first: int, last: int) -> None:
        """The motor made every basal pulse due from iteration ``first`` to ``last``."""
        (before, start), (after, end) = self.pulses_at[first], self.pulses_at[last]
        due = basal_due(end - start)
        assert due >= 5, "the window is too short to show anything"
        assert after - before >= due


def basal_due(pump_seconds: float) -> int:
    """Basal pulses due over ``pump_seconds`` of the pump's clock, at least
    (the first may fall just after the window starts)."""
    return int(pump_seconds // BASAL_PERIOD_S) - 1


class ChattyFirmware:
    """A pump stand-in for the output and fault tests: it counts ticks (its
    "basal") and has ``chatter`` bytes of frames to send after every tick."""

    def __init__(
        self, chatter: int = 0, *, fail: Callable[[int], Exception | None] = lambda _: None
    ) -> None:
        self.ticks = 0
        self.received = bytearray()
        self._frame = encode_frame(b"\x05" + bytes(range(1, 60)))
        self._chatter = chatter
        self._fail = fail

    def receive_data(self, data: bytes, now: float) -> None:
        self.received += data

    def tick(self, now: float) -> None:
        self.ticks += 1
        error = self._fail(self.ticks)
        if error is not None:
            raise error

    def data_to_send(self) -> bytes:
        frames, rest = divmod(self._chatter, len(self._frame))
        return self._frame * frames + (self._frame if rest else b"")


# --- hang-ups, vanished and returning devices -------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        serial.SerialException(
            "device reports readiness to read but returned no data "
            "(device disconnected or multiple access on port?)"
        ),
        OSError(5, "Input/output error"),
    ],
    ids=["hangup", "eio"],
)
def test_fail_safe_8_a_port_that_hangs_up_and_returns_keeps_basal_running(
    failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """[fail-safe] 8: a hang-up ends nothing; the device is polled for and reopened."""
    loop = Loop()
    wire = loop.wire

    def unplug() -> None:
        wire.read_error = failure
        wire.present = False

    def plug_in() -> None:
        wire.present = True

    loop.at[50] = unplug
    loop.at[500] = plug_in
    with caplog.at_level(logging.WARNING, logger="pumpguard.loop"):
        loop.run(700)

    stats = loop.link.stats
    assert stats.hangups == 1
    assert stats.reopens == 1
    assert stats.state is LinkState.UP
    assert wire.opened == 2  # the first open and the reopen
    # Polled with backoff while missing: a handful of attempts, not one per tick.
    outage_s = 450 * TICK_INTERVAL_S
    assert outage_s / REOPEN_MAX_S <= wire.attempts - 1 <= outage_s / REOPEN_MAX_S + 8
    # The motor kept pulsing while the port was gone, and after (S9, S14).
    loop.assert_basal_between(51, 500)
    loop.assert_basal_between(501, 700)
    # One line per event, naming the port and saying therapy continues.
    lines = [r.getMessage() for r in caplog.records]
    assert sum("lost" in line for line in lines) == 1
    assert any("therapy continues" in line and PORT in line for line in lines)
    assert sum("is back" in line for line in lines) == 1


def test_fail_safe_8_a_port_that_fails_as_soon_as_it_opens_is_polled_not_spun() -> None:
    """[fail-safe] 8: a flapping port (opens, then hangs up at once) costs a reopen per
    REOPEN_MAX_S at most, and basal runs on."""
    loop = Loop()
    wire = loop.wire

    def flap() -> None:
        wire.read_error = OSError(5, "Input/output error")

    loop.watch.append(flap)
    loop.run(500)
    stats = loop.link.stats
    elapsed_s = 500 * TICK_INTERVAL_S
    assert stats.hangups == stats.reopens + 1 or stats.hangups == stats.reopens
    assert 3 <= stats.reopens <= elapsed_s / REOPEN_MAX_S + 4
    loop.assert_basal_between(1, 500)


def test_fail_safe_8_a_write_to_a_vanished_port_is_a_hangup() -> None:
    """[fail-safe] 8: a write failing with EIO (the port went away mid-reply)."""
    loop = Loop(ChattyFirmware(chatter=100))
    wire = loop.wire

    def unplug() -> None:
        wire.write_error = serial.SerialException("write failed: [Errno 5] Input/output error")
        wire.present = False

    def plug_in() -> None:
        wire.write_error = None
        wire.present = True

    loop.at[10] = unplug
    loop.at[200] = plug_in
    loop.run(400)

    stats = loop.link.stats
    assert stats.hangups == 1
    assert stats.reopens == 1
    assert stats.state is LinkState.UP
    assert isinstance(loop.firmware, ChattyFirmware)
    assert loop.firmware.ticks == 400  # the loop never paused
    # Output produced while the port was gone was dropped, not queued.
    assert stats.dropped_bytes >= 100 * 150
    assert stats.pending_bytes == 0
    # After the reopen output flows again, starting with a delimiter so the
    # peer resynchronises (SPEC §3 rule 1), and every frame after it is whole.
    decoder = FrameDecoder()
    decoder.receive_data(bytes(wire.sent))
    records = []
    while (record := decoder.next_record()) is not None:
        records.append(record)
    assert len(records) >= 100
    assert decoder.frames_dropped == 0


def test_fail_safe_8_a_port_missing_for_good_is_polled_for_ever_without_growing() -> None:
    """[fail-safe] 8: the device never comes back: the loop runs on, output dropped."""
    loop = Loop(ChattyFirmware(chatter=300))
    wire = loop.wire

    def unplug() -> None:
        wire.read_error = OSError(19, "No such device")
        wire.present = False

    loop.at[5] = unplug
    loop.watch.append(lambda: assert_bounded(loop.link))
    loop.run(2000)

    stats = loop.link.stats
    assert stats.state is LinkState.DOWN
    assert (stats.hangups, stats.reopens) == (1, 0)
    assert stats.dropped_bytes >= 1990 * 300
    assert isinstance(loop.firmware, ChattyFirmware)
    assert loop.firmware.ticks == 2000


def assert_bounded(link: LinkSupervisor) -> None:
    assert link.stats.pending_bytes <= MAX_PENDING_OUTPUT


# --- a peer that stops reading -----------------------------------------------------------


def test_fail_safe_8_a_peer_that_never_reads_costs_bounded_memory_and_counts_timeouts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """[fail-safe] 8: the port takes nothing: output is capped, then dropped at each stall."""
    loop = Loop(ChattyFirmware(chatter=200))
    wire = loop.wire

    def stop_reading() -> None:
        wire.accept = 0

    def read_again() -> None:
        wire.accept = None

    loop.at[20] = stop_reading
    loop.at[1000] = read_again
    loop.watch.append(lambda: assert_bounded(loop.link))
    with caplog.at_level(logging.WARNING, logger="pumpguard.loop"):
        loop.run(1200)

    stats = loop.link.stats
    stalled_s = (1000 - 20) * TICK_INTERVAL_S
    assert int(stalled_s // WRITE_STALL_S) - 1 <= stats.write_timeouts <= stalled_s // WRITE_STALL_S
    assert stats.hangups == 0
    assert stats.state is LinkState.UP  # the peer reads again
    assert stats.dropped_bytes >= (980 - 20) * 200
    assert isinstance(loop.firmware, ChattyFirmware)
    assert loop.firmware.ticks == 1200
    lines = [r.getMessage() for r in caplog.records]
    # One line for the episode, not one per timeout; one when output flows again.
    assert sum("write timeout" in line for line in lines) == 1
    assert sum("takes output again" in line for line in lines) == 1
    # Frames were dropped whole: what the peer finally reads decodes cleanly.
    decoder = FrameDecoder()
    decoder.receive_data(bytes(wire.sent))
    while decoder.next_record() is not None:
        pass
    assert decoder.frames_dropped == 0


def test_fail_safe_8_a_write_timeout_from_the_port_is_counted_not_fatal() -> None:
    """[fail-safe] 8: pyserial's own "Write timeout" (URL handlers) drops the output."""
    loop = Loop(ChattyFirmware(chatter=100))
    wire = loop.wire

    def stall() -> None:
        wire.write_error = serial.SerialTimeoutException("Write timeout")

    def unstall() -> None:
        wire.write_error = None

    loop.at[10] = stall
    loop.at[13] = unstall
    loop.run(50)

    stats = loop.link.stats
    assert stats.write_timeouts == 3
    assert stats.hangups == 0
    assert stats.state is LinkState.UP
    assert stats.dropped_bytes >= 3 * 100
    # Part of a frame may have gone before the timeout: the next output
    # starts with a delimiter, so the peer loses one frame at most.
    assert wire.sent.count(b"\x00\x00") >= 1


def test_fail_safe_8_a_burst_bigger_than_the_buffer_goes_out_whole_on_a_healthy_port() -> None:
    """The buffer bounds what waits, not what a port that keeps up is handed."""
    loop = Loop(ChattyFirmware(chatter=3 * MAX_PENDING_OUTPUT))
    loop.run(20)
    stats = loop.link.stats
    assert (stats.write_timeouts, stats.dropped_bytes, stats.pending_bytes) == (0, 0, 0)
    assert len(loop.wire.sent) >= 20 * 3 * MAX_PENDING_OUTPUT


def test_fail_safe_8_a_slow_port_loses_nothing() -> None:
    """A port that takes a few bytes at a time is slow, not stalled: nothing is dropped."""
    loop = Loop(ChattyFirmware(chatter=30))
    loop.wire.accept = 40
    loop.watch.append(lambda: assert_bounded(loop.link))
    loop.run(300)
    stats = loop.link.stats
    assert (stats.write_timeouts, stats.dropped_bytes, stats.hangups) == (0, 0, 0)
    assert stats.state is LinkState.UP


# --- storage faults that reach the loop ([fail-safe] 7) ----------------------------------


def test_fail_safe_7_a_storage_error_out_of_the_pump_does_not_stop_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """[fail-safe] 7: contained as a last line of defence: logged, counted, shown."""
    alarms: list[str] = []
    firmware = ChattyFirmware(
        fail=lambda tick: FlashError("sector 3 worn out") if tick > 10 else None
    )
    loop = Loop(firmware, faults=StorageFaults(alarm=alarms.append))
    with caplog.at_level(logging.ERROR, logger="pumpguard.loop"):
        loop.run(400)

    assert firmware.ticks == 400
    assert loop.faults.count == 390
    assert loop.faults.last == "FlashError: sector 3 worn out"
    assert loop.faults.to_json() == {
        "storage_faults": 390,
        "last_storage_fault": "FlashError: sector 3 worn out",
    }
    # Reported at most once a FAULT_REPORT_INTERVAL_S of pump time, not every tick.
    pump_s = 390 * TICK_INTERVAL_S * PUMP_SCALE
    assert 1 < len(alarms) <= pump_s // FAULT_REPORT_INTERVAL_S + 1
    assert all("STORAGE FAULT" in alarm for alarm in alarms)
    assert len(caplog.records) == len(alarms)


def test_fail_safe_7_other_errors_still_propagate() -> None:
    """Only storage faults are contained: a bug is not hidden by the loop."""
    firmware = ChattyFirmware(fail=lambda tick: ValueError("a bug") if tick == 3 else None)
    loop = Loop(firmware)
    with pytest.raises(ValueError, match="a bug"):
        loop.run(10)


class WornFlash(Flash):
    """A flash whose sectors wear out: every program and erase fails once ``worn``."""

    worn = False

    def program(self, offset: int, data: bytes) -> None:
        if self.worn:
            raise FlashError(f"program at {offset} failed: sector worn out")
        super().program(offset, data)

    def erase(self, sector: int) -> None:
        if self.worn:
            raise FlashError(f"erase of sector {sector} failed: sector worn out")
        super().erase(sector)


def test_fail_safe_7_a_worn_flash_under_the_real_pump_keeps_basal_running() -> None:
    """[fail-safe] 7: the flash fails after boot; the motor witness keeps counting.

    Whether the pump handles the fault itself (its safe state) or it reaches
    the loop, the outcome is the same: basal runs on and an alarm says so.
    """
    clock = FakeClock(start=0.0)
    pump_clock = ScaledClock(PUMP_SCALE, source=clock)
    flash = WornFlash.in_memory(
        sector_size=config.FLASH_SECTOR_SIZE, sector_count=config.FLASH_SECTOR_COUNT
    )
    assert isinstance(flash, WornFlash)
    motor = Motor.in_memory()
    pump = Pump.boot(flash=flash, motor=motor, random_bytes=seeded_random("worn"), now=pump_clock())
    flash.worn = True
    faults = StorageFaults(alarm=lambda text: pump.panel.show("alarm", text))
    stop = threading.Event()
    iterations = 0

    def read(timeout: float) -> bytes:
        nonlocal iterations
        iterations += 1
        clock.now += timeout
        if iterations >= 1000:
            stop.set()
        return b""

    run_pump(pump, read=read, write=lambda data: None, clock=pump_clock, stop=stop, faults=faults)

    assert motor.pulses >= basal_due(pump_clock())
    alarms = pump.panel.shown("alarm")
    assert any("STORAGE FAULT" in alarm.upper() for alarm in alarms), alarms
    assert faults.count > 0 or pump.mode is PumpMode.SAFE_STATE
