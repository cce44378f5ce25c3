"""The tap and replay tools (host/tap.py): the BRIEF's link attacker, reproducible.

What these tests stop:

* a tap that changes, loses or reorders bytes when no fault is asked for, or
  records frames with the wrong direction, time or boundaries (SPEC §3: a
  frame ends at its 0x00 delimiter, however the bytes were chunked);
* faults that are not what they say: a "corrupted" frame must differ by
  exactly one bit, a held frame must not arrive before ``hold_s``, a
  reordered one must arrive after its successor, and so on;
* faults that cannot be reproduced: the fate of frame *i* must depend only on
  the seed, the direction and *i* (never on thread timing);
* rates that are not the configured ones (binomial bounds, 5 sigma);
* a replay that sends other frames, another direction, or in another order
  than recorded.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pumpguard.host.capture import (
    MAX_CAPTURED_FRAME,
    CapturedFrame,
    CaptureError,
    CaptureWriter,
    Direction,
    read_capture,
    write_capture,
)
from pumpguard.host.tap import FaultInjector, FaultPlan, Tap, TapSummary, replay, run_tap
from pumpguard.host.transport import LinkError, MemoryLink, SerialLink, create_vnull
from pumpguard.protocol import FramingError, decode_frame, encode_frame

A, B = Direction.A_TO_B, Direction.B_TO_A


def frames(n: int, seed: int = 0, tag: int = 0) -> list[bytes]:
    """``n`` distinct, valid link frames (the index is in the record)."""
    rng = random.Random(seed)
    return [
        encode_frame(bytes([3, tag]) + i.to_bytes(4, "big") + rng.randbytes(rng.randint(0, 60)))
        for i in range(n)
    ]


def split_frames(data: bytes) -> list[bytes]:
    out, start = [], 0
    while (end := data.find(0, start)) >= 0:
        out.append(data[start : end + 1])
        start = end + 1
    assert start == len(data), "bytes after the last delimiter"
    return out


def read_until(link: MemoryLink, count: int, timeout: float = 5.0) -> bytes:
    """Read until ``count`` bytes arrived; fail (not hang) after ``timeout`` of silence."""
    data = b""
    while len(data) < count:
        chunk = link.read(timeout)
        assert chunk, f"link went silent after {len(data)} of {count} bytes"
        data += chunk
    return data


class WallClock:
    """A deterministic, strictly increasing capture clock."""

    def __init__(self) -> None:
        self._ticks = itertools.count()
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return 1_700_000_000.0 + next(self._ticks) * 0.001


class Wire:
    """``user_a`` <-> tap <-> ``user_b`` over two MemoryLink pairs."""

    def __init__(self, plan: FaultPlan | None = None, capture: CaptureWriter | None = None):
        self.user_a, self.tap_a = MemoryLink.pair()
        self.tap_b, self.user_b = MemoryLink.pair()
        self.captured: list[CapturedFrame] = []
        self.tap = Tap(
            self.tap_a,
            self.tap_b,
            plan,
            capture=capture,
            wall_clock=WallClock(),
            on_frame=self.captured.append,
        )


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    w.tap.start()
    yield w
    w.tap.stop()


# --- faithful relay -------------------------------------------------------------------


def test_without_faults_both_directions_arrive_unchanged_and_are_recorded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.pcap"
    with CaptureWriter(path) as writer:
        w = Wire(capture=writer)
        with w.tap:
            to_b, to_a = frames(50, 1, tag=0xA), frames(50, 2, tag=0xB)
            for fa, fb in zip(to_b, to_a, strict=True):
                w.user_a.write(fa)
                w.user_b.write(fb)
            assert read_until(w.user_b, len(b"".join(to_b))) == b"".join(to_b)
            assert read_until(w.user_a, len(b"".join(to_a))) == b"".join(to_a)
        summary = w.tap.stop()
    assert summary.failure is None
    assert summary.counts[A]["frames"] == summary.counts[A]["relayed"] == 50
    recorded = read_capture(path)
    assert [f.frame for f in recorded if f.direction is A] == to_b
    assert [f.frame for f in recorded if f.direction is B] == to_a
    times = [f.time for f in recorded]
    assert times == sorted(times)  # one clock, in file order
    assert len(set(times)) == len(times)
    assert w.captured == recorded


def test_frames_are_cut_at_delimiters_however_the_bytes_are_chunked(wire: Wire) -> None:
    sent = frames(30, 3)
    stream = b"".join(sent)
    rng = random.Random(4)
    index = 0
    while index < len(stream):
        size = rng.choice([1, 2, 7, 100])
        wire.user_a.write(stream[index : index + size])
        index += size
    assert read_until(wire.user_b, len(stream)) == stream
    assert [f.frame for f in wire.captured] == sent


def test_garbage_is_relayed_as_it_came_and_long_runs_recorded_in_pieces() -> None:
    seen: list[bytes] = []
    injector = FaultInjector(A, FaultPlan(), record=lambda d, frame, now: seen.append(frame))
    junk = b"\x01" * (MAX_CAPTURED_FRAME * 2 + 5)
    injector.receive(junk, now=0.0)
    injector.receive(b"\x00\x00tail", now=0.0)
    injector.flush(now=1.0)
    assert seen == [
        b"\x01" * MAX_CAPTURED_FRAME,
        b"\x01" * MAX_CAPTURED_FRAME,
        b"\x01" * 5 + b"\x00",
        b"\x00",
        b"tail",
    ]
    assert injector.due(now=1.0) == junk + b"\x00\x00tail"


def test_a_link_failure_stops_the_tap_and_says_which_side() -> None:
    w = Wire()
    w.tap.start()
    w.tap_a.close()  # the port on the tap's A side vanishes
    deadline = time.monotonic() + 5
    while w.tap.running and time.monotonic() < deadline:
        time.sleep(0.01)
    summary = w.tap.stop()
    assert not w.tap.running
    assert summary.failure is not None
    assert "A->B" in summary.failure


# --- fault semantics (sans-I/O, on a fake clock) --------------------------------------


def run_injector(
    plan: FaultPlan, sent: list[bytes], step: float = 0.1
) -> tuple[bytes, list[tuple[float, bytes]]]:
    """Feed one frame per ``step`` seconds; return the output and ``(time, bytes)`` relayed."""
    injector = FaultInjector(A, plan)
    out: list[tuple[float, bytes]] = []
    now = 0.0
    for frame in sent:
        injector.receive(frame, now)
        out.append((now, injector.due(now)))
        now += step
    end = now + plan.hold_s + plan.reorder_timeout_s + plan.delay_s + 1
    while now < end:
        out.append((now, injector.due(now)))
        now += step
    assert injector.waiting == 0
    relayed = [(t, chunk) for t, chunk in out if chunk]
    return b"".join(chunk for _, chunk in relayed), relayed


def test_drop_all_relays_nothing_and_duplicate_all_relays_each_twice() -> None:
    sent = frames(20)
    assert run_injector(FaultPlan(drop_rate=1.0), sent)[0] == b""
    assert split_frames(run_injector(FaultPlan(duplicate_rate=1.0), sent)[0]) == [
        f for f in sent for _ in range(2)
    ]


def test_a_corrupted_frame_differs_in_exactly_one_bit_and_fails_the_crc() -> None:
    sent = frames(200, 5)
    injector = FaultInjector(A, FaultPlan(seed=9, corrupt_rate=1.0))
    for frame in sent:
        injector.receive(frame, 0.0)
    out = injector.due(0.0)
    assert len(out) == len(b"".join(sent))
    refused = 0
    offset = 0
    for frame, fate in zip(sent, injector.fates, strict=True):
        got = out[offset : offset + len(frame)]
        offset += len(frame)
        diff = int.from_bytes(got, "big") ^ int.from_bytes(frame, "big")
        assert diff.bit_count() == 1
        assert fate.corrupted_bit is not None
        assert diff == 1 << (len(frame) * 8 - 1 - fate.corrupted_bit)
        body, delimiter = got[:-1], got[-1:]
        if delimiter != b"\x00" or 0 in body:
            continue  # the flip re-cut the stream: a receiver sees other frames
        with pytest.raises(FramingError):
            decode_frame(body)
        refused += 1
    assert refused > 150  # most flips leave the frame boundaries alone


def test_a_held_frame_arrives_after_hold_s_and_not_before() -> None:
    sent = frames(10)
    plan = FaultPlan(seed=1, hold_rate=0.3, hold_s=3.0)
    injector = FaultInjector(A, plan)
    released: dict[bytes, float] = {}
    received: dict[bytes, float] = {}
    now = 0.0
    for frame in sent:
        injector.receive(frame, now)
        received[frame] = now
        for got in split_frames(injector.due(now)):
            released.setdefault(got, now)
        now += 0.1
    while injector.waiting:
        now += 0.05
        for got in split_frames(injector.due(now)):
            released.setdefault(got, now)
    held = [f for f, fate in zip(sent, injector.fates, strict=True) if fate.held]
    assert held, "seed 1 holds some frames"
    for frame in sent:
        waited = released[frame] - received[frame]
        if frame in held:
            assert 3.0 <= waited < 3.0 + 0.06
        else:
            assert waited == 0


def test_a_reordered_frame_goes_right_after_its_successor() -> None:
    sent = frames(6)
    injector = FaultInjector(A, FaultPlan(seed=2, reorder_rate=1.0))
    for frame in sent[:2]:
        injector.receive(frame, 0.0)
    # Frame 0 parked; frame 1 is also reordered: frame 0 goes, frame 1 waits.
    assert split_frames(injector.due(0.0)) == [sent[0]]
    assert injector.due(0.5) == b""
    assert split_frames(injector.due(1.0)) == [sent[1]]  # its reorder timeout

    mixed = FaultInjector(A, FaultPlan(seed=3, reorder_rate=0.5))
    for frame in sent:
        mixed.receive(frame, 0.0)
    out = split_frames(mixed.due(0.0) + mixed.drain())
    assert sorted(out) == sorted(sent)
    expected: list[bytes] = []
    parked: bytes | None = None
    for frame, fate in zip(sent, mixed.fates, strict=True):
        if fate.reordered:
            if parked is not None:
                expected.append(parked)
            parked = frame
        else:
            expected.append(frame)
            if parked is not None:
                expected.append(parked)
                parked = None
    if parked is not None:
        expected.append(parked)
    assert out == expected != sent


def test_delay_applies_to_every_frame_and_only_limits_one_direction() -> None:
    sent = frames(5)
    _, relayed = run_injector(FaultPlan(delay_s=0.5), sent, step=0.25)  # exact in binary
    assert relayed == list(zip([0.5, 0.75, 1.0, 1.25, 1.5], sent, strict=True))
    other = FaultInjector(B, FaultPlan(drop_rate=1.0, only=A))
    other.receive(b"".join(sent), 0.0)
    assert other.due(0.0) == b"".join(sent)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"drop_rate": -0.1},
        {"drop_rate": 1.5},
        {"corrupt_rate": float("nan")},
        {"hold_s": -1.0},
        {"delay_s": math.inf},
        {"only": 0},
    ],
)
def test_impossible_plans_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- the message names the field
        FaultPlan(**kwargs)  # type: ignore[arg-type]


# --- reproducibility and rates ----------------------------------------------------------

ALL_FAULTS = FaultPlan(
    seed=42,
    drop_rate=0.1,
    duplicate_rate=0.1,
    reorder_rate=0.1,
    corrupt_rate=0.1,
    hold_rate=0.05,
    hold_s=0.5,
    reorder_timeout_s=0.3,
)


def test_the_same_seed_gives_the_same_faults_and_bytes_another_seed_does_not() -> None:
    sent = frames(300, 6)
    first = run_injector(ALL_FAULTS, sent)
    assert run_injector(ALL_FAULTS, sent) == first
    other = run_injector(FaultPlan(**{**ALL_FAULTS.__dict__, "seed": 43}), sent)
    assert other[0] != first[0]


def test_a_frames_fate_does_not_depend_on_what_happened_to_earlier_frames() -> None:
    """Changing the sizes of the frames changes no decision (only the bit index scales)."""
    one = FaultInjector(A, ALL_FAULTS)
    two = FaultInjector(A, ALL_FAULTS)
    for frame in frames(200, 7):
        one.receive(frame, 0.0)
    for frame in frames(200, 8):
        two.receive(frame, 0.0)
    assert [
        (f.dropped, f.corrupted_bit is not None, f.held, f.reordered, f.duplicated)
        for f in one.fates
    ] == [
        (f.dropped, f.corrupted_bit is not None, f.held, f.reordered, f.duplicated)
        for f in two.fates
    ]


def test_threaded_taps_with_one_seed_give_each_frame_the_same_fate() -> None:
    fates = []
    for _ in range(2):
        w = Wire(ALL_FAULTS)
        with w.tap:
            for frame in frames(100, 9):
                w.user_a.write(frame)
                w.user_b.write(frame)
            deadline = time.monotonic() + 5
            while (
                sum(w.tap.injectors[d].counts["frames"] for d in Direction) < 200
                and time.monotonic() < deadline
            ):
                time.sleep(0.01)
        fates.append({d: w.tap.injectors[d].fates for d in Direction})
    assert fates[0] == fates[1]
    assert len(fates[0][A]) == len(fates[0][B]) == 100

    def decisions(d: Direction) -> list[tuple[bool, bool, bool, bool, bool]]:
        return [
            (f.dropped, f.corrupted_bit is not None, f.held, f.reordered, f.duplicated)
            for f in fates[0][d]
        ]

    assert decisions(A) != decisions(B)  # the directions draw independently


def _within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faults_happen_at_the_configured_rates(seed: int) -> None:
    n = 4000
    plan = FaultPlan(
        seed=seed, drop_rate=0.2, corrupt_rate=0.1, hold_rate=0.05, reorder_rate=0.15,
        duplicate_rate=0.08,
    )  # fmt: skip
    injector = FaultInjector(A, plan)
    for frame in frames(n, seed):
        injector.receive(frame, 0.0)
    counts = injector.counts
    kept = n - counts["dropped"]
    assert _within_binomial(counts["dropped"], n, 0.2)
    assert _within_binomial(counts["corrupted"], kept, 0.1)
    assert _within_binomial(counts["held"], kept, 0.05)
    assert _within_binomial(counts["reordered"], kept - counts["held"], 0.15)
    assert _within_binomial(counts["duplicated"], kept, 0.08)
    injector.drain()
    assert counts["relayed"] == kept + counts["duplicated"]


# --- replay -----------------------------------------------------------------------------


def _capture(tmp_path: Path) -> tuple[Path, list[CapturedFrame]]:
    recorded = [
        CapturedFrame(100.0 + i * 0.5, A if i % 3 else B, frame)
        for i, frame in enumerate(frames(9, 10))
    ]
    path = tmp_path / "c.pcap"
    write_capture(path, recorded)
    return path, recorded


def test_replay_sends_the_recorded_frames_in_order(tmp_path: Path) -> None:
    path, recorded = _capture(tmp_path)
    sender, receiver = MemoryLink.pair()
    pauses: list[float] = []
    assert replay(sender, path, interval_s=0.01, sleep=pauses.append) == 9
    assert receiver.read(1.0) == b"".join(f.frame for f in recorded)
    assert pauses == [0.01] * 8


def test_replay_of_one_direction_and_of_chosen_frames(tmp_path: Path) -> None:
    path, recorded = _capture(tmp_path)
    sender, receiver = MemoryLink.pair()
    only_a = [f.frame for f in recorded if f.direction is A]
    assert replay(sender, path, direction=A, sleep=lambda s: None) == len(only_a)
    assert receiver.read(1.0) == b"".join(only_a)
    assert replay(sender, path, direction=A, frames=[1, 3], sleep=lambda s: None) == 2
    assert receiver.read(1.0) == only_a[1] + only_a[3]


def test_replay_can_keep_the_recorded_timing(tmp_path: Path) -> None:
    path, _ = _capture(tmp_path)
    sender, _receiver = MemoryLink.pair()
    pauses: list[float] = []
    replay(sender, path, direction=B, interval_s=None, sleep=pauses.append)
    assert pauses == pytest.approx([1.5, 1.5])


def test_replay_of_a_bad_capture_sends_nothing(tmp_path: Path) -> None:
    path, _ = _capture(tmp_path)
    path.write_bytes(path.read_bytes()[:-3])
    sender, receiver = MemoryLink.pair()
    with pytest.raises(CaptureError, match="truncated"):
        replay(sender, path, sleep=lambda s: None)
    assert receiver.read(0.0) == b""


def test_replay_to_a_port_that_does_not_exist_is_a_link_error(tmp_path: Path) -> None:
    path, _ = _capture(tmp_path)
    with pytest.raises(LinkError, match="cannot open port"):
        replay(str(tmp_path / "no-such-port"), path, sleep=lambda s: None)


# --- the CLI entry point over real serial ports (pty pairs) -----------------------------


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs ptys")
def test_run_tap_relays_and_records_between_two_serial_ports(tmp_path: Path) -> None:
    a_far, a_near, cable_a = create_vnull()
    b_near, b_far, cable_b = create_vnull()
    path = tmp_path / "c.pcap"
    stop = threading.Event()
    result: list[TapSummary] = []
    thread = threading.Thread(
        target=lambda: result.append(run_tap(a_near, b_near, path, FaultPlan(), stop))
    )
    try:
        with SerialLink.open(a_far) as remote, SerialLink.open(b_far) as pump:
            thread.start()
            deadline = time.monotonic() + 5
            while not (path.exists() and path.stat().st_size >= 24):
                assert time.monotonic() < deadline, "tap did not start"
                time.sleep(0.01)
            time.sleep(0.2)  # both ports open on the tap's side
            request, answer = frames(1, 11)[0], frames(1, 12)[0]
            remote.write(request)
            got = b""
            while len(got) < len(request):
                chunk = pump.read(5.0)
                assert chunk
                got += chunk
            assert got == request
            pump.write(answer)
            got = b""
            while len(got) < len(answer):
                chunk = remote.read(5.0)
                assert chunk
                got += chunk
            assert got == answer
            stop.set()
            thread.join(10)
    finally:
        stop.set()
        cable_a.close()
        cable_b.close()
    assert [(f.direction, f.frame) for f in read_capture(path)] == [(A, request), (B, answer)]
    assert result
    assert result[0].failure is None
    assert "A->B: 1 frames, 1 relayed, 0 dropped" in result[0].describe()
