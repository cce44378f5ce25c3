"""The firmware's main loop: read the link, feed the pump, tick, write.

Shared by ``pumpsim`` (over a UART) and by in-process runs (the demo and
tests, over an in-memory link), so both exercise the same loop.

Theory of operation
-------------------

A pump's therapy loop outlives its link (SPEC §3.1): the link is optional,
insulin is not.  Two things keep the loop running whatever happens around it:

* :class:`LinkSupervisor` sits between the loop and the UART driver
  (:mod:`firmware_sim.uart`).  A hang-up, a vanished device or a peer that
  stops reading is a *link event*: logged in one line, counted in
  :class:`LinkStats`, and answered by closing the port and polling for it
  again with backoff, or by dropping output nobody takes.  Output waits in
  a buffer of at most :data:`MAX_PENDING_OUTPUT` bytes, so a stalled peer
  costs no memory.  Its ``read`` and ``write`` never raise.
* :func:`run_pump` contains a :class:`~firmware_sim.flash.StorageError`
  that escapes the pump, as a last line of defence: the pump is meant to
  handle storage faults itself (its safe state); if one still reaches the
  loop it is logged, counted in :class:`StorageFaults` and shown as an
  alarm, and the next tick runs, so basal goes on.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from pumpguard.protocol import wire

from .flash import StorageError
from .uart import UartError, WriteTimeout

log = logging.getLogger("pumpguard.loop")


class Firmware(Protocol):
    """What the loop drives: :class:`~firmware_sim.pump.Pump` or the legacy pump."""

    def receive_data(self, data: bytes, now: float) -> None: ...
    def tick(self, now: float) -> None: ...
    def data_to_send(self) -> bytes: ...


#: How long the loop waits for link bytes before ticking anyway.
TICK_INTERVAL_S = 0.02
#: Output waiting for a slow or stalled port, at most (a UART's transmit
#: buffer): sixteen largest frames.  Frames that do not fit are dropped whole.
MAX_PENDING_OUTPUT = 16 * (wire.MAX_ENCODED_FRAME_LEN + 1)
#: Output not all taken by the port this long after it was queued means the
#: port has stalled: the pending output is dropped and a write timeout counted.
WRITE_STALL_S = 2.0
#: Polling for a lost port: the first retry, doubling up to the last interval.
REOPEN_FIRST_S = 0.1
REOPEN_MAX_S = 1.0
#: A storage fault that keeps recurring is logged and shown at most this
#: often on the pump's clock (every occurrence is counted).
FAULT_REPORT_INTERVAL_S = 60.0


class ScaledClock:
    """The pump's monotonic clock, optionally running ``scale`` times faster.

    ``--time-scale`` speeds delivery and deadlines for testing; the pump
    still only ever sees a clock that never goes back, even when the scale
    changes (the demo pairs at 1x, as a person would, then speeds up).
    """

    def __init__(self, scale: float = 1.0, source: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._base_source = source()
        self._base_value = 0.0
        self._scale = 1.0
        self.set_scale(scale)

    def set_scale(self, scale: float) -> None:
        if not scale > 0:
            raise ValueError("time scale must be positive")
        now = self()
        self._base_source = self._source()
        self._base_value = now
        self._scale = scale

    def __call__(self) -> float:
        return self._base_value + (self._source() - self._base_source) * self._scale


# --- the link ---------------------------------------------------------------------------


class LinkState(enum.Enum):
    """What the supervised port is doing."""

    #: Open and taking output.
    UP = "up"
    #: Open, but the peer took nothing for :data:`WRITE_STALL_S`.
    STALLED = "stalled"
    #: Lost; being polled for with backoff.
    DOWN = "down"
    #: Released: the loop has stopped.
    CLOSED = "closed"


@dataclass
class LinkStats:
    """Link events since the loop started (``pumpsim status --json``: ``link``)."""

    state: LinkState = LinkState.UP
    #: The port hung up, vanished or failed.
    hangups: int = 0
    #: The port took no output for :data:`WRITE_STALL_S`.
    write_timeouts: int = 0
    #: The port came back after a hang-up.
    reopens: int = 0
    #: Output never sent: link down, buffer full, or dropped at a stall.
    dropped_bytes: int = 0
    #: Output waiting in the buffer now (at most :data:`MAX_PENDING_OUTPUT`).
    pending_bytes: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "hangups": self.hangups,
            "write_timeouts": self.write_timeouts,
            "reopens": self.reopens,
            "dropped_bytes": self.dropped_bytes,
            "pending_bytes": self.pending_bytes,
        }


@dataclass(slots=True)
class _Chunk:
    """One ``write`` still waiting for the port, in part or whole."""

    left: int
    queued_at: float


class Port(Protocol):
    """What the supervisor drives: :class:`~firmware_sim.uart.Uart`.

    ``read`` and ``write_nowait`` raise :class:`~firmware_sim.uart.UartError`
    (:class:`~firmware_sim.uart.WriteTimeout` for a stalled write).
    """

    def read(self, timeout: float) -> bytes: ...
    def write_nowait(self, data: bytes) -> int: ...
    def close(self) -> None: ...


class LinkSupervisor:
    """The loop's link: a port that comes and goes, behind calls that never raise.

    Args:
        port: the port, open.
        open_port: opens it again after it was lost (raises
            :class:`~firmware_sim.uart.UartError` while it is not there).
        name: the port's name, for log lines.
        clock, sleep: real monotonic time, injected for tests (the stall and
            the reopen backoff are properties of the wire, not of the pump's
            possibly scaled clock).
    """

    def __init__(
        self,
        port: Port,
        open_port: Callable[[], Port],
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._open_port = open_port
        self._name = name
        self._port: Port | None = port
        self._clock = clock
        self._sleep = sleep
        self.stats = LinkStats()
        self._pending = bytearray()
        # When each chunk still (partly) in ``_pending`` was queued, oldest
        # first, with its length left to send: the oldest one's age is what
        # a stall is measured by, so a port that takes a byte now and then
        # stalls as surely as one that takes none.
        self._queued: deque[_Chunk] = deque()
        # Whether the last byte written ended a frame; if not, a frame was cut
        # short and the next output starts with a delimiter (SPEC §3 rule 1).
        self._mid_frame = False
        self._resync = False
        self._backoff = REOPEN_FIRST_S
        self._reopen_at = clock()
        # One log line per episode of dropping output (until it catches up).
        self._drop_logged = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def port(self) -> Port | None:
        """The open port, or None while the link is down."""
        return self._port

    def read(self, timeout: float) -> bytes:
        """Send what is pending, then whatever arrived within ``timeout`` s.

        While the link is down this polls for the port and waits out
        ``timeout`` instead, so the loop keeps its pace.  Never raises.
        """
        self._flush()
        if self._port is None:
            self._try_reopen()
        port = self._port
        if port is None:
            self._sleep(timeout)
            return b""
        try:
            data = port.read(timeout)
        except UartError as exc:
            self._lose(exc)
            return b""
        if data:
            self._backoff = REOPEN_FIRST_S  # the port works: poll fast next time
        return data

    def write(self, data: bytes) -> None:
        """Send ``data`` (whole frames), or as much as the port takes now.

        The rest waits in the buffer; the newest frames it has no room for
        are dropped whole, and counted, as is everything while the link is
        down.  Never raises.
        """
        if not data:
            return
        if self._port is None:
            self.stats.dropped_bytes += len(data)
            return
        if self._resync:
            self._resync = False
            data = b"\x00" + data
        self._queued.append(_Chunk(len(data), self._clock()))
        self._pending += data
        self._flush()
        self._trim()
        self._update_pending()

    def _trim(self) -> None:
        """Bound the buffer: keep the oldest whole frames that fit (SPEC §3)."""
        if len(self._pending) <= MAX_PENDING_OUTPUT:
            return
        keep = self._pending.rfind(b"\x00", 0, MAX_PENDING_OUTPUT) + 1
        dropped = len(self._pending) - keep
        del self._pending[keep:]
        self.stats.dropped_bytes += dropped
        if not keep:
            # Not even the head was a whole frame: the peer may hold part of it.
            self._resync = self._resync or self._mid_frame
        while dropped:
            newest = self._queued[-1]
            taken = min(dropped, newest.left)
            newest.left -= taken
            dropped -= taken
            if not newest.left:
                self._queued.pop()
        if not self._drop_logged:
            self._drop_logged = True
            log.warning("link: %s is not taking output fast enough; frames dropped", self._name)

    def close(self) -> None:
        """Release the port for good (the loop has stopped)."""
        self._close_port()
        self.stats.state = LinkState.CLOSED

    def _close_port(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None

    def _update_pending(self) -> None:
        self.stats.pending_bytes = len(self._pending)

    def _flush(self) -> None:
        port = self._port
        if port is None or not self._pending:
            return
        try:
            sent = port.write_nowait(bytes(self._pending))
        except WriteTimeout:
            # Part of the pending output may have gone: resynchronise the peer.
            self._mid_frame = True
            self._stalled()
            return
        except UartError as exc:
            self._lose(exc)
            return
        if sent > 0:
            self._backoff = REOPEN_FIRST_S
            self._mid_frame = self._pending[sent - 1] != 0
            del self._pending[:sent]
            self._update_pending()
            while sent > 0:
                chunk = self._queued[0]
                taken = min(sent, chunk.left)
                chunk.left -= taken
                sent -= taken
                if not chunk.left:
                    self._queued.popleft()
        if not self._pending:
            self._drop_logged = False
            if self.stats.state is LinkState.STALLED:
                self.stats.state = LinkState.UP
                log.warning("link: %s takes output again", self._name)
        elif self._clock() - self._queued[0].queued_at >= WRITE_STALL_S:
            self._stalled()

    def _drop_pending(self) -> None:
        self.stats.dropped_bytes += len(self._pending)
        self._pending.clear()
        self._queued.clear()
        self._update_pending()

    def _stalled(self) -> None:
        self.stats.write_timeouts += 1
        dropped = len(self._pending)
        self._drop_pending()
        self._resync = self._resync or self._mid_frame
        if self.stats.state is not LinkState.STALLED:
            self.stats.state = LinkState.STALLED
            log.warning(
                "link: write timeout on %s (peer not reading); %d bytes of output dropped, "
                "therapy continues",
                self._name,
                dropped,
            )

    def _lose(self, exc: UartError) -> None:
        self.stats.hangups += 1
        self.stats.state = LinkState.DOWN
        self._drop_pending()
        self._close_port()
        # The backoff grows with every loss and is reset only by traffic, so
        # a port that opens and fails at once is not reopened in a spin.
        self._reopen_at = self._clock() + self._backoff
        self._backoff = min(self._backoff * 2, REOPEN_MAX_S)
        self._drop_logged = False
        log.warning("link lost: %s; therapy continues, polling for the port", exc)

    def _try_reopen(self) -> None:
        now = self._clock()
        if now < self._reopen_at:
            return
        try:
            port = self._open_port()
        except UartError:
            self._backoff = min(self._backoff * 2, REOPEN_MAX_S)
            self._reopen_at = now + self._backoff
            return
        self._port = port
        self._mid_frame = False
        # The peer may hold part of a frame from before the loss.
        self._resync = True
        self.stats.reopens += 1
        self.stats.state = LinkState.UP
        log.warning("link: %s is back (reopen %d)", self._name, self.stats.reopens)


# --- the loop ---------------------------------------------------------------------------


@dataclass
class StorageFaults:
    """Storage faults that escaped the pump into the loop (``pumpsim status``: ``loop``).

    ``alarm`` is called with a line for the pump's display when one is
    reported (the first, then at most every :data:`FAULT_REPORT_INTERVAL_S`).
    """

    alarm: Callable[[str], None] | None = None
    count: int = 0
    last: str | None = None
    _reported_at: float | None = field(default=None, repr=False)

    def contain(self, exc: StorageError, now: float) -> None:
        self.count += 1
        self.last = f"{type(exc).__name__}: {exc}"
        if self._reported_at is not None and now - self._reported_at < FAULT_REPORT_INTERVAL_S:
            return
        self._reported_at = now
        log.error(
            "STORAGE FAULT in the pump loop (%d so far): %s; basal continues", self.count, self.last
        )
        if self.alarm is not None:
            self.alarm("STORAGE FAULT: storage failing; basal continues, service the pump")

    def to_json(self) -> dict[str, object]:
        return {"storage_faults": self.count, "last_storage_fault": self.last}


def run_pump(
    pump: Firmware,
    *,
    read: Callable[[float], bytes],
    write: Callable[[bytes], None],
    clock: Callable[[], float],
    stop: threading.Event,
    faults: StorageFaults | None = None,
) -> None:
    """Run until ``stop`` is set.

    A :class:`~firmware_sim.flash.StorageError` out of the pump is contained
    (``faults``, see the module docstring); errors of ``read`` and ``write``
    propagate (``pumpsim`` hands in a :class:`LinkSupervisor`'s, which do
    not raise).
    """
    faults = StorageFaults() if faults is None else faults
    while not stop.is_set():
        data = read(TICK_INTERVAL_S)
        now = clock()
        if data:
            try:
                pump.receive_data(data, now)
            except StorageError as exc:
                faults.contain(exc, now)
        try:
            pump.tick(now)
        except StorageError as exc:
            faults.contain(exc, now)
        out = pump.data_to_send()
        if out:
            write(out)


@contextmanager
def running_in_thread(
    firmware: Firmware,
    *,
    read: Callable[[float], bytes],
    write: Callable[[bytes], None],
    clock: Callable[[], float],
) -> Iterator[None]:
    """Run :func:`run_pump` in a daemon thread for the duration of the block
    (the demo and tests run a pump beside the remote in one process)."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_pump,
        kwargs={"pump": firmware, "read": read, "write": write, "clock": clock, "stop": stop},
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
