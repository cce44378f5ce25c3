"""``pumpctl link tap`` and ``pumpctl link replay``: the attacker on the wire, as a tool.

The BRIEF's attacker "reads, records, replays, injects, modifies, drops,
duplicates, reorders and delays any frame".  :class:`Tap` is that attacker
made reproducible: it relays between two links (two serial ports for the
CLI, two :class:`~host.transport.MemoryLink` ends in tests), records every
frame it receives in a pcap capture (:mod:`host.capture`), and applies the
faults of a seeded :class:`FaultPlan`.  :func:`replay` sends a capture's
frames again.  The same tools run against ``pumpsim`` and ``pumpsim
--legacy``: the replay succeeds against the recalled design and fails
against pumpguard (SPEC §7.3, §12.3; BRIEF S2, S3).

Frames
------

Each direction's byte stream is cut into frames after every 0x00 delimiter
(SPEC §3); a frame is the bytes up to and including its delimiter.  The tap
is store-and-forward: a frame is relayed once its delimiter has arrived, so
that it can be dropped, held or reordered as a unit.  A run of more than
:data:`~host.capture.MAX_CAPTURED_FRAME` bytes without a delimiter (no
legitimate peer sends one) is relayed in pieces of that size, and bytes of
an unfinished frame still buffered when the tap stops are relayed then.

Faults
------

For every frame, in each direction separately, the tap draws the same six
numbers from ``random.Random(f"{seed}/{direction}")`` whatever happens to
the frame, so the fate of frame *i* depends only on the seed, the direction
and *i* -- never on thread timing or on the other direction.  In order:

1. ``drop_rate``: the frame is not relayed (nothing else applies).
2. ``corrupt_rate``: one uniformly chosen bit of the frame (its delimiter
   included) is flipped.
3. ``hold_rate``: the frame is held back for ``hold_s`` and then relayed
   (a delayed release: the S3 attack).  Otherwise,
   ``reorder_rate``: the frame is held back until the next relayed frame of
   the same direction has gone, and relayed right after it (or after
   ``reorder_timeout_s`` if no other frame comes).
4. ``duplicate_rate``: the frame is relayed twice, back to back.

Every relayed frame is delayed by ``delay_s`` (a constant latency).  Faults
can be limited to one direction with ``only``.  :class:`FaultInjector` is
the sans-I/O core (bytes and ``now`` in, bytes out), usable on a simulated
clock; :class:`Tap` runs one injector per direction on threads.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

from .capture import (
    MAX_CAPTURED_FRAME,
    CapturedFrame,
    CaptureError,
    CaptureWriter,
    Direction,
    read_capture,
)
from .transport import Link, LinkError, SerialLink

__all__ = [
    "DEFAULT_REPLAY_INTERVAL_S",
    "FaultInjector",
    "FaultPlan",
    "FrameFate",
    "Tap",
    "TapSummary",
    "replay",
    "run_tap",
]

_DELIMITER: Final = 0
#: How long a tap thread waits for bytes before looking at its schedule again.
POLL_S: Final = 0.01
#: Default pause between frames sent by :func:`replay`.
DEFAULT_REPLAY_INTERVAL_S: Final = 0.05
#: Longest gap :func:`replay` reproduces when it keeps the recorded timing.
MAX_REPLAY_GAP_S: Final = 5.0

#: The actions reported in :attr:`FaultInjector.counts`.
ACTIONS: Final = ("frames", "relayed", "dropped", "corrupted", "held", "reordered", "duplicated")


def _check_rate(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number between 0 and 1, not {value!r}")


def _check_seconds(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a non-negative number of seconds, not {value!r}")


@dataclass(frozen=True)
class FaultPlan:
    """What the tap does to the frames it relays; the default relays faithfully.

    Rates are probabilities per frame (0..1), times are seconds of the tap's
    clock.  ``only`` limits the faults to one direction.

    Raises:
        ValueError: a rate outside 0..1 or a negative time.
    """

    seed: int = 0
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    delay_s: float = 0.0
    corrupt_rate: float = 0.0
    hold_rate: float = 0.0
    hold_s: float = 5.0
    reorder_timeout_s: float = 1.0
    only: Direction | None = None

    def __post_init__(self) -> None:
        for name in ("drop_rate", "duplicate_rate", "reorder_rate", "corrupt_rate", "hold_rate"):
            _check_rate(name, getattr(self, name))
        for name in ("delay_s", "hold_s", "reorder_timeout_s"):
            _check_seconds(name, getattr(self, name))
        if self.only is not None and not isinstance(self.only, Direction):
            raise ValueError("only must be a Direction or None")

    @property
    def faulty(self) -> bool:
        """True if the plan can change anything."""
        return self.delay_s > 0 or any(
            getattr(self, name) > 0
            for name in ("drop_rate", "duplicate_rate", "reorder_rate", "corrupt_rate", "hold_rate")
        )

    def applies_to(self, direction: Direction) -> bool:
        return self.only is None or self.only is direction


@dataclass(frozen=True)
class FrameFate:
    """What the tap did to one frame (for tests and the summary)."""

    index: int
    direction: Direction
    length: int
    dropped: bool = False
    #: The bit flipped, counted from the first bit (MSB) of the frame's first byte.
    corrupted_bit: int | None = None
    held: bool = False
    reordered: bool = False
    duplicated: bool = False


@dataclass(order=True)
class _Scheduled:
    release: float
    order: int
    data: bytes = field(compare=False)
    #: Link frames in ``data`` (two for a duplicated frame sent back to back).
    frames: int = field(compare=False, default=1)


class FaultInjector:
    """One direction of a tap, sans-I/O: split frames, record them, apply faults.

    Feed it what the source link delivered with :meth:`receive`; take what is
    due for the destination with :meth:`due`.  ``record`` is called with every
    frame received, before any fault, with the ``now`` passed in.

    >>> injector = FaultInjector(Direction.A_TO_B, FaultPlan(duplicate_rate=1.0))
    >>> injector.receive(b"\\x02\\x41\\x00\\x02", now=0.0)
    >>> injector.due(now=0.0)
    b'\\x02A\\x00\\x02A\\x00'
    """

    def __init__(
        self,
        direction: Direction,
        plan: FaultPlan,
        *,
        record: Callable[[Direction, bytes, float], None] | None = None,
    ) -> None:
        self.direction = direction
        self.plan = plan
        self._faulty = plan.applies_to(direction) and plan.faulty
        # Reproducible faults, not secrets: a seeded PRNG is the point.
        self._random = random.Random(f"{plan.seed}/{direction.name}")  # noqa: S311
        self._record = record
        self._partial = bytearray()
        self._queue: list[_Scheduled] = []
        self._order = itertools.count()
        #: A reordered frame waiting for its successor: (frame, copies, deadline).
        self._parked: tuple[bytes, int, float] | None = None
        self._index = 0
        #: Every frame's fate, in arrival order.
        self.fates: list[FrameFate] = []
        #: How many frames met each action (:data:`ACTIONS`).
        self.counts: Counter[str] = Counter()

    # --- input --------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the source link; complete frames are recorded and scheduled."""
        start = 0
        while True:
            end = data.find(_DELIMITER, start)
            if end < 0:
                break
            self._partial += data[start : end + 1]
            self._frame(bytes(self._partial), now)
            self._partial.clear()
            start = end + 1
        self._partial += data[start:]
        while len(self._partial) > MAX_CAPTURED_FRAME:
            piece = bytes(self._partial[:MAX_CAPTURED_FRAME])
            del self._partial[:MAX_CAPTURED_FRAME]
            self._frame(piece, now)

    def flush(self, now: float) -> None:
        """Treat buffered bytes of an unfinished frame as a frame (the tap is stopping)."""
        if self._partial:
            piece = bytes(self._partial)
            self._partial.clear()
            self._frame(piece, now)

    def _frame(self, frame: bytes, now: float) -> None:
        if self._record is not None:
            self._record(self.direction, frame, now)
        index = self._index
        self._index += 1
        self.counts["frames"] += 1
        # Always draw the same numbers, so frame i's fate depends only on i.
        u_drop, u_corrupt, u_bit, u_hold, u_reorder, u_dup = (
            self._random.random() for _ in range(6)
        )
        if not self._faulty:
            self.fates.append(FrameFate(index, self.direction, len(frame)))
            self._schedule(frame, now)
            return
        plan = self.plan
        if u_drop < plan.drop_rate:
            self.counts["dropped"] += 1
            self.fates.append(FrameFate(index, self.direction, len(frame), dropped=True))
            return
        bit: int | None = None
        if u_corrupt < plan.corrupt_rate:
            bit = min(int(u_bit * len(frame) * 8), len(frame) * 8 - 1)
            flipped = bytearray(frame)
            flipped[bit // 8] ^= 0x80 >> (bit % 8)
            frame = bytes(flipped)
            self.counts["corrupted"] += 1
        held = u_hold < plan.hold_rate
        reordered = not held and u_reorder < plan.reorder_rate
        duplicated = u_dup < plan.duplicate_rate
        copies = 2 if duplicated else 1
        if duplicated:
            self.counts["duplicated"] += 1
        self.fates.append(
            FrameFate(
                index,
                self.direction,
                len(frame),
                corrupted_bit=bit,
                held=held,
                reordered=reordered,
                duplicated=duplicated,
            )
        )
        if held:
            self.counts["held"] += 1
            self._push(frame, copies, now + plan.delay_s + plan.hold_s)
            return
        if reordered:
            self.counts["reordered"] += 1
            self._release_parked(now + plan.delay_s)  # at most one frame is parked
            self._parked = (frame, copies, now + plan.delay_s + plan.reorder_timeout_s)
            return
        self._schedule(frame, now, copies)

    def _schedule(self, frame: bytes, now: float, copies: int = 1) -> None:
        release = now + (self.plan.delay_s if self._faulty else 0.0)
        self._push(frame, copies, release)
        # A reordered frame goes right after the next frame relayed.
        self._release_parked(release)

    def _release_parked(self, release: float) -> None:
        if self._parked is not None:
            frame, copies, _deadline = self._parked
            self._parked = None
            self._push(frame, copies, release)

    def _push(self, frame: bytes, copies: int, release: float) -> None:
        item = _Scheduled(release, next(self._order), frame * copies, copies)
        heapq.heappush(self._queue, item)

    # --- output -------------------------------------------------------------------

    def next_release(self) -> float | None:
        """When something next becomes due, or ``None`` if nothing waits."""
        times = [self._queue[0].release] if self._queue else []
        if self._parked is not None:
            times.append(self._parked[2])
        return min(times) if times else None

    def due(self, now: float) -> bytes:
        """Every byte due at ``now``, in release order."""
        if self._parked is not None and self._parked[2] <= now:
            self._release_parked(self._parked[2])
        out = bytearray()
        while self._queue and self._queue[0].release <= now:
            item = heapq.heappop(self._queue)
            out += item.data
            self.counts["relayed"] += item.frames
        return bytes(out)

    def drain(self) -> bytes:
        """Everything still scheduled or parked, in order (the tap is stopping)."""
        self._release_parked(math.inf)
        out = bytearray()
        while self._queue:
            item = heapq.heappop(self._queue)
            out += item.data
            self.counts["relayed"] += item.frames
        return bytes(out)

    @property
    def waiting(self) -> int:
        """Frames scheduled or parked and not yet relayed (a duplicate counts twice)."""
        parked = 0 if self._parked is None else self._parked[1]
        return sum(item.frames for item in self._queue) + parked


@dataclass(frozen=True)
class TapSummary:
    """What a tap saw and did, per direction (``counts[direction][action]``)."""

    counts: dict[Direction, dict[str, int]]
    failure: str | None

    def describe(self) -> str:
        lines = []
        for direction, counts in self.counts.items():
            text = ", ".join(f"{counts.get(action, 0)} {action}" for action in ACTIONS)
            lines.append(f"{direction.arrow}: {text}")
        if self.failure is not None:
            lines.append(f"stopped: {self.failure}")
        return "\n".join(lines)


class Tap:
    """Relays between links ``a`` and ``b`` on two threads, recording and faulting.

    Args:
        a, b: the two links (:class:`~host.transport.Link`).
        plan: the faults to apply (default: none).
        capture: where to record every frame received, or ``None``.
        clock: monotonic seconds, for scheduling faults.
        wall_clock: Unix seconds, for capture timestamps.
        on_frame: called with every :class:`~host.capture.CapturedFrame`
            recorded (tests; ``-v`` logging).

    A link failure on either side stops the tap; :attr:`failure` says why.
    """

    def __init__(
        self,
        a: Link,
        b: Link,
        plan: FaultPlan | None = None,
        *,
        capture: CaptureWriter | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_frame: Callable[[CapturedFrame], None] | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.plan = plan if plan is not None else FaultPlan()
        self._links = {Direction.A_TO_B: (a, b), Direction.B_TO_A: (b, a)}
        self._capture = capture
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_frame = on_frame
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        #: Why the tap stopped on its own (a link or capture failure), if it did.
        self.failure: str | None = None
        self.injectors = {
            direction: FaultInjector(direction, self.plan, record=self._record)
            for direction in Direction
        }

    def _record(self, direction: Direction, frame: bytes, now: float) -> None:
        captured = CapturedFrame(self._wall_clock(), direction, frame)
        if self._capture is not None:
            self._capture.write(captured)
        if self._on_frame is not None:
            self._on_frame(captured)

    def start(self) -> Tap:
        if self._threads:
            raise RuntimeError("the tap is already running")
        for direction in Direction:
            thread = threading.Thread(
                target=self._relay, args=(direction,), name=f"tap-{direction.arrow}", daemon=True
            )
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()
        return self

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def _fail(self, why: str) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = why
        self._stop.set()

    def _relay(self, direction: Direction) -> None:
        source, destination = self._links[direction]
        injector = self.injectors[direction]
        try:
            while not self._stop.is_set():
                now = self._clock()
                upcoming = injector.next_release()
                wait = self._poll_s if upcoming is None else min(self._poll_s, upcoming - now)
                data = source.read(max(0.0, wait))
                now = self._clock()
                with self._lock:  # one injector per thread; the lock orders capture writes
                    if data:
                        injector.receive(data, now)
                    out = injector.due(now)
                if out:
                    destination.write(out)
            with self._lock:
                injector.flush(self._clock())
                out = injector.drain()
            if out:
                destination.write(out)
        except LinkError as exc:
            self._fail(f"{direction.arrow}: {exc}")
        except CaptureError as exc:
            self._fail(str(exc))

    def stop(self, timeout: float = 5.0) -> TapSummary:
        """Stop relaying, after sending whatever is still held back; return the summary."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        return self.summary()

    def summary(self) -> TapSummary:
        with self._lock:
            counts = {d: dict(self.injectors[d].counts) for d in Direction}
        return TapSummary(counts, self.failure)

    def __enter__(self) -> Tap:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_tap(
    a_port: str,
    b_port: str,
    capture_path: str | os.PathLike[str],
    plan: FaultPlan,
    stop_event: threading.Event,
    *,
    baudrate: int = 115200,
    on_frame: Callable[[CapturedFrame], None] | None = None,
) -> TapSummary:
    """``pumpctl link tap``: relay between two serial ports until ``stop_event`` is set.

    Returns when ``stop_event`` is set or either port fails (the summary's
    ``failure`` says which).

    Raises:
        LinkError: a port cannot be opened.
        CaptureError: the capture file cannot be created.
    """
    link_a = SerialLink.open(a_port, baudrate)
    try:
        link_b = SerialLink.open(b_port, baudrate)
    except LinkError:
        link_a.close()
        raise
    try:
        with CaptureWriter(capture_path) as writer:
            tap = Tap(link_a, link_b, plan, capture=writer, on_frame=on_frame).start()
            try:
                while not stop_event.wait(0.1):
                    if not tap.running:
                        break
            finally:
                # Also on KeyboardInterrupt: held frames go out, threads end
                # before the ports close.
                summary = tap.stop()
            return summary
    finally:
        link_a.close()
        link_b.close()


def replay(
    port: str | Link,
    capture_path: str | os.PathLike[str],
    direction: Direction | None = None,
    interval_s: float | None = DEFAULT_REPLAY_INTERVAL_S,
    *,
    baudrate: int = 115200,
    sleep: Callable[[float], None] = time.sleep,
    frames: Sequence[int] | None = None,
) -> int:
    """``pumpctl link replay``: send a capture's frames to ``port`` again, in order.

    Args:
        port: a port path or URL, or an open :class:`~host.transport.Link`
            (left open).
        capture_path: a capture written by :class:`Tap`.
        direction: send only the frames that went this way (``None``: all).
        interval_s: pause between frames; ``None`` keeps the recorded gaps
            (each at most :data:`MAX_REPLAY_GAP_S`).
        frames: send only these packet numbers (0-based, file order), after
            the direction filter.

    Returns:
        The number of frames sent.

    Raises:
        CaptureError: the capture is unreadable.
        LinkError: the port cannot be opened or fails.
    """
    if interval_s is not None:
        _check_seconds("interval_s", interval_s)
    captured = [
        frame
        for frame in read_capture(capture_path)
        if direction is None or frame.direction is direction
    ]
    if frames is not None:
        wanted = set(frames)
        captured = [frame for number, frame in enumerate(captured) if number in wanted]
    link = SerialLink.open(port, baudrate) if isinstance(port, str) else port
    try:
        previous: float | None = None
        for number, frame in enumerate(captured):
            if number:
                if interval_s is not None:
                    gap = interval_s
                else:
                    assert previous is not None
                    gap = min(max(0.0, frame.time - previous), MAX_REPLAY_GAP_S)
                if gap > 0:
                    sleep(gap)
            link.write(frame.frame)
            previous = frame.time
    finally:
        if isinstance(port, str):
            link.close()
    return len(captured)
