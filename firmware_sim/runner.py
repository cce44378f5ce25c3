"""The firmware's main loop: read the link, feed the pump, tick, write.

Shared by ``pumpsim`` (over a UART) and by in-process runs (the demo and
tests, over an in-memory link), so both exercise the same loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Firmware(Protocol):
    """What the loop drives: :class:`~firmware_sim.pump.Pump` or the legacy pump."""

    def receive_data(self, data: bytes, now: float) -> None: ...
    def tick(self, now: float) -> None: ...
    def data_to_send(self) -> bytes: ...


#: How long the loop waits for link bytes before ticking anyway.
TICK_INTERVAL_S = 0.02


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


def run_pump(
    pump: Firmware,
    *,
    read: Callable[[float], bytes],
    write: Callable[[bytes], None],
    clock: Callable[[], float],
    stop: threading.Event,
) -> None:
    """Run until ``stop`` is set.  Link errors propagate to the caller."""
    while not stop.is_set():
        data = read(TICK_INTERVAL_S)
        now = clock()
        if data:
            pump.receive_data(data, now)
        pump.tick(now)
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
